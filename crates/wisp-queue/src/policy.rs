//! The per-function asynchronous invocation policy: retries, backoff,
//! event age and execution semantics.

use crate::limits::*;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use wisp_core::ValidationError;
use wisp_core::destination::{DEFAULT_DEAD_LETTER_QUEUE, check_queue_name};

/// How often an asynchronous invocation may run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Semantics {
    /// Runs at least once: retried on failure and redelivered when its
    /// executor dies. The default.
    #[default]
    AtLeastOnce,
    /// Runs at most once: never retried, and never re-run once it has
    /// started, even if its executor dies (it is marked failed instead).
    AtMostOnce,
    /// At least once, and an invocation whose idempotency key was seen
    /// within `idempotency_window` is accepted only once.
    EffectivelyOnce,
}

/// What happens to an asynchronous invocation of one function: how often
/// it is retried and how long it may wait. Every field has a default, so
/// `{}` is a valid policy; durations are whole milliseconds in JSON.
///
/// ```
/// use wisp_queue::AsyncPolicy;
///
/// let policy: AsyncPolicy = serde_json::from_str(r#"{"max_retries": 5}"#).unwrap();
/// assert_eq!(policy.max_retries, 5);
/// assert_eq!(policy.backoff_min, std::time::Duration::from_secs(1));
/// policy.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AsyncPolicy {
    /// Retries after the first failed attempt, 0 to 10 (default 2).
    /// At-most-once invocations are never retried, whatever this says.
    pub max_retries: u32,
    /// Shortest wait before a retry (default 1 s, at most 1 h).
    #[serde(rename = "backoff_min_ms", with = "millis")]
    pub backoff_min: Duration,
    /// Longest wait before a retry (default 5 min, at least `backoff_min`,
    /// at most 6 h).
    #[serde(rename = "backoff_max_ms", with = "millis")]
    pub backoff_max: Duration,
    /// An invocation not started this long after it was enqueued is
    /// dead-lettered instead of run (default 6 h, 1 s to 7 days).
    #[serde(rename = "max_event_age_ms", with = "millis")]
    pub max_event_age: Duration,
    /// How often the invocation may run.
    pub semantics: Semantics,
    /// How long an idempotency key is remembered (default 24 h, 1 s to 7 days).
    #[serde(rename = "idempotency_window_ms", with = "millis")]
    pub idempotency_window: Duration,
    /// Whether a 4xx answer from the function is retried (default false:
    /// a 4xx is a failure that goes straight to the dead-letter queue).
    pub retry_on_4xx: bool,
    /// The named dead-letter queue a dead invocation is kept in (default
    /// `None`: the queue named [`DEFAULT_DEAD_LETTER_QUEUE`]). Absent from
    /// the JSON when `None`, so policies stored before it existed read the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_queue: Option<String>,
}

impl Default for AsyncPolicy {
    fn default() -> Self {
        AsyncPolicy {
            max_retries: 2,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(5 * 60),
            max_event_age: Duration::from_secs(6 * 3600),
            semantics: Semantics::AtLeastOnce,
            idempotency_window: Duration::from_secs(24 * 3600),
            retry_on_4xx: false,
            dead_letter_queue: None,
        }
    }
}

impl AsyncPolicy {
    /// Checks every field against the limits in [`crate::limits`]; the first
    /// failing field is reported by its JSON name.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.max_retries > MAX_RETRIES {
            return Err(ValidationError::new(
                "max_retries",
                format!("must be from 0 to {MAX_RETRIES}"),
            ));
        }
        if self.backoff_min > MAX_BACKOFF_MIN {
            return Err(ValidationError::new(
                "backoff_min_ms",
                format!("must be at most {} (1 hour)", MAX_BACKOFF_MIN.as_millis()),
            ));
        }
        if self.backoff_max < self.backoff_min || self.backoff_max > MAX_BACKOFF_MAX {
            return Err(ValidationError::new(
                "backoff_max_ms",
                format!(
                    "must be from backoff_min_ms ({}) to {} (6 hours)",
                    self.backoff_min.as_millis(),
                    MAX_BACKOFF_MAX.as_millis()
                ),
            ));
        }
        if !(MIN_EVENT_AGE..=MAX_EVENT_AGE).contains(&self.max_event_age) {
            return Err(ValidationError::new(
                "max_event_age_ms",
                format!(
                    "must be from {} (1 second) to {} (7 days)",
                    MIN_EVENT_AGE.as_millis(),
                    MAX_EVENT_AGE.as_millis()
                ),
            ));
        }
        if !(MIN_IDEMPOTENCY_WINDOW..=MAX_IDEMPOTENCY_WINDOW).contains(&self.idempotency_window) {
            return Err(ValidationError::new(
                "idempotency_window_ms",
                format!(
                    "must be from {} (1 second) to {} (7 days)",
                    MIN_IDEMPOTENCY_WINDOW.as_millis(),
                    MAX_IDEMPOTENCY_WINDOW.as_millis()
                ),
            ));
        }
        if let Some(queue) = &self.dead_letter_queue {
            check_queue_name(queue)
                .map_err(|e| ValidationError::new("dead_letter_queue", e.to_string()))?;
        }
        Ok(())
    }

    /// The name of the dead-letter queue a dead invocation is kept in.
    pub fn dead_letter_queue_name(&self) -> &str {
        self.dead_letter_queue
            .as_deref()
            .unwrap_or(DEFAULT_DEAD_LETTER_QUEUE)
    }

    /// Whether a failed attempt number `attempt` (1-based) may be followed
    /// by another.
    pub fn may_retry(&self, attempt: u32) -> bool {
        self.semantics != Semantics::AtMostOnce && attempt <= self.max_retries
    }

    /// The wait before the retry that follows failed attempt `attempt`
    /// (1-based): exponential (`backoff_min * 2^(attempt-1)`, capped at
    /// `backoff_max`) with full jitter, so a uniform pick between
    /// `backoff_min` and that ceiling.
    pub fn backoff(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let min = self.backoff_min.as_millis() as u64;
        let max = self.backoff_max.as_millis() as u64;
        let shift = attempt.saturating_sub(1).min(32);
        // A zero minimum still grows: from 1 ms.
        let ceiling = min
            .max(1)
            .saturating_mul(1u64 << shift)
            .clamp(min, max.max(min));
        Duration::from_millis(rng.random_range(min..=ceiling))
    }
}

/// Serde for a `Duration` as whole milliseconds.
mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_json_names() {
        let p: AsyncPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, AsyncPolicy::default());
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "max_retries": 2,
                "backoff_min_ms": 1000,
                "backoff_max_ms": 300000,
                "max_event_age_ms": 21600000,
                "semantics": "at_least_once",
                "idempotency_window_ms": 86400000,
                "retry_on_4xx": false,
            })
        );
        let back: AsyncPolicy = serde_json::from_value(json).unwrap();
        assert_eq!(back, p);
        let e = serde_json::from_str::<AsyncPolicy>(r#"{"retries": 1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `retries`"), "{e}");
        let p: AsyncPolicy =
            serde_json::from_str(r#"{"semantics": "effectively_once", "backoff_min_ms": 5}"#)
                .unwrap();
        assert_eq!(p.semantics, Semantics::EffectivelyOnce);
        assert_eq!(p.backoff_min, Duration::from_millis(5));
        assert_eq!(p.dead_letter_queue_name(), "default");
        // A named dead-letter queue round-trips; unnamed, it is left out.
        let named: AsyncPolicy =
            serde_json::from_str(r#"{"dead_letter_queue": "payments"}"#).unwrap();
        assert_eq!(named.dead_letter_queue.as_deref(), Some("payments"));
        assert_eq!(named.dead_letter_queue_name(), "payments");
        let json = serde_json::to_value(&named).unwrap();
        assert_eq!(json["dead_letter_queue"], "payments");
        assert_eq!(serde_json::from_value::<AsyncPolicy>(json).unwrap(), named);
    }

    #[test]
    fn validation_names_the_field() {
        let field = |p: AsyncPolicy| p.validate().unwrap_err().field;
        let base = AsyncPolicy::default();
        assert_eq!(
            field(AsyncPolicy {
                max_retries: 11,
                ..base.clone()
            }),
            "max_retries"
        );
        assert!(
            AsyncPolicy {
                max_retries: 10,
                ..base.clone()
            }
            .validate()
            .is_ok()
        );
        assert_eq!(
            field(AsyncPolicy {
                backoff_min: Duration::from_secs(3601),
                backoff_max: Duration::from_secs(4000),
                ..base.clone()
            }),
            "backoff_min_ms"
        );
        assert_eq!(
            field(AsyncPolicy {
                backoff_min: Duration::from_secs(10),
                backoff_max: Duration::from_secs(5),
                ..base.clone()
            }),
            "backoff_max_ms"
        );
        assert_eq!(
            field(AsyncPolicy {
                max_event_age: Duration::from_millis(999),
                ..base.clone()
            }),
            "max_event_age_ms"
        );
        assert_eq!(
            field(AsyncPolicy {
                idempotency_window: Duration::from_secs(8 * 24 * 3600),
                ..base.clone()
            }),
            "idempotency_window_ms"
        );
        assert_eq!(
            field(AsyncPolicy {
                dead_letter_queue: Some("Not Valid".into()),
                ..base.clone()
            }),
            "dead_letter_queue"
        );
        assert!(
            AsyncPolicy {
                dead_letter_queue: Some("payments".into()),
                ..base.clone()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn backoff_is_exponential_with_full_jitter() {
        let p = AsyncPolicy {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            ..Default::default()
        };
        let mut rng = rand::rng();
        for _ in 0..200 {
            let first = p.backoff(1, &mut rng);
            assert_eq!(first, Duration::from_millis(100));
            let third = p.backoff(3, &mut rng);
            assert!((100..=400).contains(&third.as_millis()), "{third:?}");
            let late = p.backoff(30, &mut rng);
            assert!((100..=1000).contains(&late.as_millis()), "{late:?}");
            let huge = p.backoff(u32::MAX, &mut rng);
            assert!(huge <= p.backoff_max);
        }
        // The jitter actually spreads.
        let picks: std::collections::HashSet<_> =
            (0..100).map(|_| p.backoff(10, &mut rng)).collect();
        assert!(picks.len() > 10);
        assert!(!p.may_retry(3));
        assert!(p.may_retry(2));
        let amo = AsyncPolicy {
            semantics: Semantics::AtMostOnce,
            ..p
        };
        assert!(!amo.may_retry(1));
    }
}
