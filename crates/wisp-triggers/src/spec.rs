//! A trigger: one source connected to one function qualifier, with
//! filters. The definition users write (JSON over the API, TOML in
//! `wisp.toml`) and its validation.

use crate::TriggerError;
use crate::filter::{self, Filter};
use crate::sources;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use wisp_core::Target;

/// Longest trigger description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 256;
/// Longest broker URL, subject, topic, queue or key, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// A trigger as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Trigger {
    /// Unique name: 1 to 63 lowercase letters, digits and `-`, starting
    /// with a letter (the same rule as function names).
    pub name: String,
    /// Its definition.
    pub spec: TriggerSpec,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its definition last changed.
    pub updated_at: DateTime<Utc>,
}

/// What a user writes to define a trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// `NAME[:QUALIFIER]` of the function the events go to; the qualifier
    /// (a version, an alias or `latest`, the default) is resolved for each
    /// event.
    pub target: String,
    /// A disabled trigger keeps its definition but consumes nothing.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Every filter must match for an event to be delivered; none means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// Where the events come from.
    pub source: SourceConfig,
}

fn yes() -> bool {
    true
}

/// The source of a trigger, by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceConfig {
    /// A schedule.
    Cron(sources::cron::CronConfig),
    /// An HTTP endpoint per trigger, `POST /hooks/{trigger}`.
    Webhook(sources::webhook::WebhookConfig),
    /// NATS core subjects or a JetStream durable consumer.
    Nats(sources::nats::NatsConfig),
    /// A RabbitMQ (AMQP 0-9-1) queue.
    Rabbitmq(sources::rabbitmq::RabbitMqConfig),
    /// MQTT 3.1.1 or 5 topic filters, QoS 1.
    Mqtt(sources::mqtt::MqttConfig),
    /// Redis pub/sub channels or a stream with a consumer group.
    Redis(sources::redis::RedisConfig),
}

impl SourceConfig {
    /// The `kind` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Cron(_) => "cron",
            SourceConfig::Webhook(_) => "webhook",
            SourceConfig::Nats(_) => "nats",
            SourceConfig::Rabbitmq(_) => "rabbitmq",
            SourceConfig::Mqtt(_) => "mqtt",
            SourceConfig::Redis(_) => "redis",
        }
    }

    /// The same configuration with secrets (passwords in URLs, webhook
    /// secrets) replaced by `***`, for showing.
    pub fn redacted(&self) -> SourceConfig {
        let mut c = self.clone();
        match &mut c {
            SourceConfig::Cron(_) => {}
            SourceConfig::Webhook(w) => {
                if w.secret.is_some() {
                    w.secret = Some("***".into());
                }
            }
            SourceConfig::Nats(n) => n.url = redact_url(&n.url),
            SourceConfig::Rabbitmq(r) => r.url = redact_url(&r.url),
            SourceConfig::Mqtt(m) => m.url = redact_url(&m.url),
            SourceConfig::Redis(r) => r.url = redact_url(&r.url),
        }
        c
    }
}

/// `scheme://user:secret@host/...` with the secret replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{path}")
            } else {
                format!("{scheme}://***@{host}{path}")
            }
        }
        None => url.to_string(),
    }
}

/// Ordered stream mode: events delivered in order, in batches, and the
/// position advanced only after the function succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OrderedConfig {
    /// Most events in one batch (1 to 1000, default 100).
    pub max_events: u32,
    /// Longest wait to fill a batch, in milliseconds (1 to 60000, default 100).
    pub max_wait_ms: u64,
    /// What to do with a batch that failed after the function's retries.
    pub on_failure: OrderedFailure,
}

impl Default for OrderedConfig {
    fn default() -> Self {
        OrderedConfig {
            max_events: 100,
            max_wait_ms: 100,
            on_failure: OrderedFailure::Bisect,
        }
    }
}

/// Handling of a failed ordered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderedFailure {
    /// Split it in halves and run each (in order), down to single events;
    /// a single event that still fails is dead-lettered.
    Bisect,
    /// Dead-letter the whole batch and move on.
    DeadLetter,
}

impl OrderedConfig {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), TriggerError> {
        if !(1..=1000).contains(&self.max_events) {
            return Err(TriggerError::invalid(
                "max_events",
                "must be from 1 to 1000",
            ));
        }
        if !(1..=60_000).contains(&self.max_wait_ms) {
            return Err(TriggerError::invalid(
                "max_wait_ms",
                "must be from 1 to 60000",
            ));
        }
        Ok(())
    }
}

/// Checks that `value` is a non-empty string of at most [`MAX_NAME_BYTES`]
/// without control characters.
pub fn check_text(field: &str, value: &str) -> Result<(), TriggerError> {
    if value.is_empty() {
        return Err(TriggerError::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(TriggerError::invalid(
            field,
            format!("must be at most {MAX_NAME_BYTES} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(TriggerError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Checks that `url` is a URL with one of `schemes`.
pub fn check_url(field: &str, url: &str, schemes: &[&str]) -> Result<(), TriggerError> {
    check_text(field, url)?;
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some(s) if schemes.contains(&s) => Ok(()),
        _ => Err(TriggerError::invalid(
            field,
            format!(
                "must be a URL starting with {}",
                schemes
                    .iter()
                    .map(|s| format!("`{s}://`"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        )),
    }
}

impl TriggerSpec {
    /// Checks every field; the error names the first one at fault.
    pub fn validate(&self) -> Result<Target, TriggerError> {
        if self.description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(TriggerError::invalid(
                "description",
                format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
            ));
        }
        let target: Target = self
            .target
            .parse()
            .map_err(|e| TriggerError::invalid("target", format!("{e}")))?;
        filter::validate(&self.filters)?;
        let source = match &self.source {
            SourceConfig::Cron(c) => c.validate(),
            SourceConfig::Webhook(c) => c.validate(),
            SourceConfig::Nats(c) => c.validate(),
            SourceConfig::Rabbitmq(c) => c.validate(),
            SourceConfig::Mqtt(c) => c.validate(),
            SourceConfig::Redis(c) => c.validate(),
        };
        source.map_err(|e| e.under("source"))?;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("redis://:pw@h:6379"), "redis://:***@h:6379");
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("nats://token@h"), "nats://***@h");
    }

    #[test]
    fn spec_json_round_trip_and_errors() {
        let spec: TriggerSpec = serde_json::from_str(
            r#"{"target": "orders:live", "source": {"kind": "cron", "schedule": "*/5 * * * * *"}}"#,
        )
        .unwrap();
        assert!(spec.enabled);
        assert_eq!(spec.validate().unwrap().to_string(), "orders:live");
        let bad: TriggerSpec = serde_json::from_str(
            r#"{"target": "Orders", "source": {"kind": "cron", "schedule": "* * * * *"}}"#,
        )
        .unwrap();
        assert_eq!(bad.validate().unwrap_err().field(), "target");
        assert!(
            serde_json::from_str::<TriggerSpec>(r#"{"target": "a", "source": {"kind": "kafka"}}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<TriggerSpec>(
            r#"{"target": "a", "extra": 1, "source": {"kind": "cron", "schedule": "* * * * *"}}"#
        )
        .is_err());
    }
}
