//! The user-settable configuration of a function version and its validation.

use crate::limits::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// A rejected field: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The JSON path of the field, such as `memory_mib` or `env.PATH`.
    pub field: String,
    /// What is wrong with it and what would be accepted.
    pub message: String,
}

impl ValidationError {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Configuration shared by `latest` and every published version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FunctionConfig {
    /// Free text, at most 256 characters.
    pub description: String,
    /// Labels for filtering lists: at most 32, keys and values at most 63 bytes.
    pub labels: BTreeMap<String, String>,
    /// Environment variables the function sees, besides the `WISP_*` context.
    pub env: BTreeMap<String, String>,
    /// Memory limit in MiB (1 to 4096).
    pub memory_mib: u32,
    /// Wall-clock limit per invocation in milliseconds (1 to 900000).
    pub timeout_ms: u64,
    /// Most invocations of this version running at once (1 to 10000).
    pub max_concurrency: u32,
    /// Instances of this version kept ready even when idle (0 to 1000): the
    /// version is loaded at start and deploy, never unloaded, and this many
    /// instances are pre-instantiated. 0 scales to zero.
    #[serde(default)]
    pub min_instances: u32,
    /// Requests one instance may serve in sequence before it is discarded
    /// (1 to 100000). 1, the default, is a fresh instance per request; more
    /// lets a function keep caches and connections between requests.
    #[serde(default = "default_requests_per_instance")]
    pub max_requests_per_instance: u32,
    /// How asynchronous invocations and events of this version are retried,
    /// aged out and deduplicated.
    #[serde(default)]
    pub async_policy: AsyncConfig,
    /// Who may invoke this version through the data plane (`/fn/`):
    /// `private`, the default, needs the server's token wherever `/v1`
    /// does; `public` lets anyone invoke it synchronously. Queuing work
    /// (`x-wisp-invocation-type: async`) needs the token whenever the
    /// server requires one, whatever this says.
    #[serde(default)]
    pub invoke_auth: InvokeAuth,
}

/// Request header that carries the server's token on the data plane, as an
/// alternative to `Authorization: Bearer`, so that a function's own
/// `Authorization` header passes through untouched. The server removes it
/// before the function sees the request.
pub const KEY_HEADER: &str = "x-wisp-key";

/// Who may invoke a function through the data plane; see
/// [`FunctionConfig::invoke_auth`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvokeAuth {
    /// Callers need the server's token when the server requires one
    /// (`Authorization: Bearer <token>` or `x-wisp-key: <token>`).
    #[default]
    Private,
    /// Synchronous invocations need no credential.
    Public,
}

impl InvokeAuth {
    /// The lowercase name, as in JSON and the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            InvokeAuth::Private => "private",
            InvokeAuth::Public => "public",
        }
    }
}

impl std::fmt::Display for InvokeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for InvokeAuth {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "private" => Ok(InvokeAuth::Private),
            "public" => Ok(InvokeAuth::Public),
            other => Err(ValidationError::new(
                "invoke_auth",
                format!(
                    "`{other}` is not an access mode; use `private` (the default: the server's token is needed wherever /v1 needs it) or `public` (anyone may invoke synchronously)"
                ),
            )),
        }
    }
}

/// Delivery guarantee of asynchronous invocations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Semantics {
    /// Retried until it succeeds or its retries run out; may run twice
    /// after a crash.
    #[default]
    AtLeastOnce,
    /// Marked started before it runs; never retried, never re-run.
    AtMostOnce,
    /// At least once, and a request whose idempotency key was seen within
    /// the window is accepted only once.
    EffectivelyOnce,
}

/// A function's asynchronous-invocation policy. Every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AsyncConfig {
    /// Retries after the first attempt (0 to 10).
    pub max_retries: u32,
    /// Smallest backoff before a retry, in milliseconds.
    pub backoff_min_ms: u64,
    /// Largest backoff before a retry, in milliseconds.
    pub backoff_max_ms: u64,
    /// An invocation older than this is dead-lettered instead of run (ms).
    pub max_event_age_ms: u64,
    /// Delivery guarantee.
    pub semantics: Semantics,
    /// How long an idempotency key is remembered (ms).
    pub idempotency_window_ms: u64,
    /// Retry when the function answers 4xx (by default a 4xx is final).
    pub retry_on_4xx: bool,
    /// Where an event goes after each success: the function's reply event
    /// if it answered with one, else a `wisp.invocation.succeeded` event
    /// carrying the response. A function (`NAME[:QUALIFIER]` or
    /// `function:NAME[:QUALIFIER]`) or a broker URL (`nats://`, `amqp://`,
    /// `mqtt://`, `redis://`); see [`crate::destination`].
    pub on_success: Option<String>,
    /// Where a `wisp.invocation.failed` event goes for each invocation
    /// that ends failed or dead (it is dead-lettered as well): a function
    /// or a broker URL as for `on_success`, or `dlq:QUEUE`, which keeps the
    /// dead invocation in the named dead-letter queue instead of `default`.
    pub on_failure: Option<String>,
}

impl Default for AsyncConfig {
    fn default() -> Self {
        AsyncConfig {
            max_retries: 2,
            backoff_min_ms: 1000,
            backoff_max_ms: 300_000,
            max_event_age_ms: 6 * 3600 * 1000,
            semantics: Semantics::AtLeastOnce,
            idempotency_window_ms: 24 * 3600 * 1000,
            retry_on_4xx: false,
            on_success: None,
            on_failure: None,
        }
    }
}

impl AsyncConfig {
    /// Checks every field against the documented ranges.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let field = |f: &str| format!("async_policy.{f}");
        if self.max_retries > MAX_ASYNC_RETRIES {
            return Err(ValidationError::new(
                field("max_retries"),
                format!("must be from 0 to {MAX_ASYNC_RETRIES}"),
            ));
        }
        if !(1..=MAX_BACKOFF_MS).contains(&self.backoff_min_ms) {
            return Err(ValidationError::new(
                field("backoff_min_ms"),
                format!("must be from 1 to {MAX_BACKOFF_MS}"),
            ));
        }
        if !(self.backoff_min_ms..=MAX_BACKOFF_MS).contains(&self.backoff_max_ms) {
            return Err(ValidationError::new(
                field("backoff_max_ms"),
                format!("must be from backoff_min_ms to {MAX_BACKOFF_MS}"),
            ));
        }
        if !(1000..=MAX_EVENT_AGE_MS).contains(&self.max_event_age_ms) {
            return Err(ValidationError::new(
                field("max_event_age_ms"),
                format!("must be from 1000 to {MAX_EVENT_AGE_MS}"),
            ));
        }
        for (name, dest) in [
            ("on_success", &self.on_success),
            ("on_failure", &self.on_failure),
        ] {
            let Some(d) = dest else { continue };
            let parsed = d.parse::<crate::Destination>().map_err(|e| {
                ValidationError::new(
                    field(name),
                    format!(
                        "`{}` is not a destination: {e}",
                        crate::destination::redact(d)
                    ),
                )
            })?;
            if name == "on_success" && parsed.dead_letter_queue().is_some() {
                return Err(ValidationError::new(
                    field(name),
                    format!(
                        "`{d}` is a dead-letter queue, which holds failures: use it as on_failure; on_success takes a function (NAME[:QUALIFIER]; `function:{d}` for a function named `dlq`) or a nats://, amqp://, mqtt:// or redis:// URL"
                    ),
                ));
            }
        }
        if !(1000..=MAX_IDEMPOTENCY_WINDOW_MS).contains(&self.idempotency_window_ms) {
            return Err(ValidationError::new(
                field("idempotency_window_ms"),
                format!("must be from 1000 to {MAX_IDEMPOTENCY_WINDOW_MS}"),
            ));
        }
        Ok(())
    }
}

fn default_requests_per_instance() -> u32 {
    1
}

impl Default for FunctionConfig {
    fn default() -> Self {
        FunctionConfig {
            description: String::new(),
            labels: BTreeMap::new(),
            env: BTreeMap::new(),
            memory_mib: DEFAULT_MEMORY_MIB,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            min_instances: 0,
            max_requests_per_instance: 1,
            async_policy: AsyncConfig::default(),
            invoke_auth: InvokeAuth::Private,
        }
    }
}

fn label_part_ok(s: &str, allow_empty: bool) -> bool {
    if s.is_empty() {
        return allow_empty;
    }
    let b = s.as_bytes();
    s.len() <= MAX_LABEL_LEN
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'/'))
}

/// A label key (and a non-empty label value) as a pattern without anchors:
/// what `label_part_ok` accepts.
macro_rules! label_part {
    () => {
        "[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?"
    };
}

/// A label key as an ECMA-262 pattern.
pub const LABEL_KEY_PATTERN: &str = concat!("^", label_part!(), "$");

/// A label value (which may be empty) as an ECMA-262 pattern.
pub const LABEL_VALUE_PATTERN: &str = concat!("^(", label_part!(), ")?$");

/// An environment variable's name as an ECMA-262 pattern: 1 to 128
/// letters, digits and `_`, not starting with a digit, and not starting
/// with the reserved prefix `WISP_` in any case.
pub const ENV_NAME_PATTERN: &str = "^(?![Ww][Ii][Ss][Pp]_)[A-Za-z_][A-Za-z0-9_]{0,127}$";

/// An environment variable's value: anything but NUL.
pub const ENV_VALUE_PATTERN: &str = "^[^\\u0000]*$";

/// A label selector (`GET /v1/functions?label=`) as an ECMA-262 pattern:
/// `key=value` pairs, each checked like a stored label, separated by
/// commas (empty parts are skipped).
pub const LABEL_SELECTOR_PATTERN: &str = concat!(
    "^,*(",
    label_part!(),
    "=(",
    label_part!(),
    ")?(,+",
    label_part!(),
    "=(",
    label_part!(),
    ")?)*)?,*$"
);

/// Checks a label selector's key and value the same way as stored labels.
pub fn validate_label(key: &str, value: &str) -> Result<(), ValidationError> {
    if !label_part_ok(key, false) {
        return Err(ValidationError::new(
            format!("labels.{key}"),
            format!(
                "label keys are 1 to {MAX_LABEL_LEN} bytes of letters, digits, '-', '_', '.', '/', starting and ending with a letter or digit"
            ),
        ));
    }
    if !label_part_ok(value, true) {
        return Err(ValidationError::new(
            format!("labels.{key}"),
            format!(
                "label values are 0 to {MAX_LABEL_LEN} bytes of letters, digits, '-', '_', '.', '/', starting and ending with a letter or digit"
            ),
        ));
    }
    Ok(())
}

impl FunctionConfig {
    /// Checks every field against the limits in [`crate::limits`]; the first
    /// failing field is reported.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(ValidationError::new(
                "description",
                format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
            ));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(ValidationError::new(
                "labels",
                format!("at most {MAX_LABELS} labels are allowed"),
            ));
        }
        for (k, v) in &self.labels {
            validate_label(k, v)?;
        }
        if self.env.len() > MAX_ENV_VARS {
            return Err(ValidationError::new(
                "env",
                format!("at most {MAX_ENV_VARS} variables are allowed"),
            ));
        }
        let mut total = 0;
        for (k, v) in &self.env {
            let field = format!("env.{k}");
            let b = k.as_bytes();
            let charset_ok = !b.is_empty()
                && (b[0].is_ascii_alphabetic() || b[0] == b'_')
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
            if !charset_ok || k.len() > MAX_ENV_NAME_LEN {
                return Err(ValidationError::new(
                    field,
                    format!(
                        "variable names are 1 to {MAX_ENV_NAME_LEN} letters, digits and '_', not starting with a digit"
                    ),
                ));
            }
            if k.to_ascii_uppercase().starts_with(RESERVED_ENV_PREFIX) {
                return Err(ValidationError::new(
                    field,
                    format!(
                        "names starting with {RESERVED_ENV_PREFIX} are reserved for Wisp's context variables"
                    ),
                ));
            }
            if v.contains('\0') {
                return Err(ValidationError::new(field, "values cannot contain NUL"));
            }
            total += k.len() + v.len();
        }
        if total > MAX_ENV_TOTAL_BYTES {
            return Err(ValidationError::new(
                "env",
                format!(
                    "names and values add up to {total} bytes; the limit is {MAX_ENV_TOTAL_BYTES}"
                ),
            ));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ValidationError::new(
                "memory_mib",
                format!("must be from {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} MiB"),
            ));
        }
        if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(ValidationError::new(
                "timeout_ms",
                format!("must be from {MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS} milliseconds"),
            ));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.max_concurrency) {
            return Err(ValidationError::new(
                "max_concurrency",
                format!("must be from 1 to {MAX_CONCURRENCY}"),
            ));
        }
        if self.min_instances > MAX_MIN_INSTANCES {
            return Err(ValidationError::new(
                "min_instances",
                format!("must be from 0 to {MAX_MIN_INSTANCES}"),
            ));
        }
        if self.min_instances > self.max_concurrency {
            return Err(ValidationError::new(
                "min_instances",
                "cannot be more than max_concurrency",
            ));
        }
        self.async_policy.validate()?;
        if !(1..=MAX_REQUESTS_PER_INSTANCE).contains(&self.max_requests_per_instance) {
            return Err(ValidationError::new(
                "max_requests_per_instance",
                format!(
                    "must be from 1 (a fresh instance per request) to {MAX_REQUESTS_PER_INSTANCE}"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, s: &str) -> bool {
        jsonschema::validator_for(&serde_json::json!({"type": "string", "pattern": pattern}))
            .unwrap()
            .is_valid(&serde_json::json!(s))
    }

    #[test]
    fn documented_label_and_env_patterns_accept_exactly_what_validation_accepts() {
        let long = "a".repeat(63);
        let too_long = "a".repeat(64);
        let env_long = "A".repeat(128);
        let env_too_long = "A".repeat(129);
        let cases = [
            "",
            "a",
            "A1",
            "a.b/c-d_e",
            "-a",
            "a-",
            ".a",
            "a b",
            "a=b",
            "é",
            "wisp_x",
            "WISP_X",
            "Wisp_",
            "WISPX",
            "_x",
            "1x",
            "x1",
            "a\u{0}b",
            &long,
            &too_long,
            &env_long,
            &env_too_long,
        ];
        for s in cases {
            assert_eq!(
                matches(LABEL_KEY_PATTERN, s),
                validate_label(s, "v").is_ok(),
                "label key {s:?}"
            );
            assert_eq!(
                matches(LABEL_VALUE_PATTERN, s),
                validate_label("k", s).is_ok(),
                "label value {s:?}"
            );
            let mut config = FunctionConfig::default();
            config.env.insert(s.to_string(), "v".into());
            assert_eq!(
                matches(ENV_NAME_PATTERN, s),
                config.validate().is_ok(),
                "env name {s:?}"
            );
            let mut config = FunctionConfig::default();
            config.env.insert("K".into(), s.to_string());
            assert_eq!(
                matches(ENV_VALUE_PATTERN, s),
                config.validate().is_ok(),
                "env value {s:?}"
            );
        }
    }

    fn field_of(c: FunctionConfig) -> String {
        c.validate().unwrap_err().field
    }

    #[test]
    fn defaults_are_valid() {
        FunctionConfig::default().validate().unwrap();
    }

    #[test]
    fn each_bad_field_is_named() {
        let d = FunctionConfig::default;
        assert_eq!(
            field_of(FunctionConfig {
                memory_mib: 0,
                ..d()
            }),
            "memory_mib"
        );
        assert_eq!(
            field_of(FunctionConfig {
                memory_mib: 5000,
                ..d()
            }),
            "memory_mib"
        );
        assert_eq!(
            field_of(FunctionConfig {
                timeout_ms: 0,
                ..d()
            }),
            "timeout_ms"
        );
        assert_eq!(
            field_of(FunctionConfig {
                max_concurrency: 0,
                ..d()
            }),
            "max_concurrency"
        );
        assert_eq!(
            field_of(FunctionConfig {
                description: "x".repeat(257),
                ..d()
            }),
            "description"
        );
        let mut c = d();
        c.async_policy.max_retries = 11;
        assert_eq!(field_of(c), "async_policy.max_retries");
        let mut c = d();
        c.async_policy.backoff_max_ms = 10;
        assert_eq!(field_of(c), "async_policy.backoff_max_ms");
        let mut c = d();
        c.env.insert("WISP_FUNCTION_NAME".into(), "x".into());
        assert_eq!(field_of(c), "env.WISP_FUNCTION_NAME");
        let mut c = d();
        c.env.insert("1BAD".into(), "x".into());
        assert_eq!(field_of(c), "env.1BAD");
        let mut c = d();
        c.env.insert("BIG".into(), "x".repeat(5000));
        assert_eq!(field_of(c), "env");
        let mut c = d();
        c.labels.insert("ok".into(), "bad value!".into());
        assert_eq!(field_of(c), "labels.ok");
        assert_eq!(
            field_of(FunctionConfig {
                min_instances: 1001,
                max_concurrency: 5000,
                ..d()
            }),
            "min_instances"
        );
        assert_eq!(
            field_of(FunctionConfig {
                min_instances: 5,
                max_concurrency: 4,
                ..d()
            }),
            "min_instances"
        );
        assert_eq!(
            field_of(FunctionConfig {
                max_requests_per_instance: 0,
                ..d()
            }),
            "max_requests_per_instance"
        );
        let mut c = d();
        c.labels.insert("tier".into(), "".into());
        c.validate().unwrap();
    }

    #[test]
    fn destinations_are_validated_by_field() {
        let with = |success: Option<&str>, failure: Option<&str>| AsyncConfig {
            on_success: success.map(str::to_string),
            on_failure: failure.map(str::to_string),
            ..AsyncConfig::default()
        };
        for ok in [
            "sink",
            "sink:prod",
            "function:sink:2",
            "nats://127.0.0.1:4222/orders.done",
            "amqp://guest:guest@127.0.0.1:5672/%2f?exchange=&routing_key=orders",
            "mqtt://127.0.0.1:1883/orders/done",
            "redis://127.0.0.1:6379/?channel=orders",
            "redis://127.0.0.1:6379/?stream=orders",
        ] {
            with(Some(ok), None).validate().unwrap();
            with(None, Some(ok)).validate().unwrap();
        }
        with(None, Some("dlq:payments")).validate().unwrap();

        let e = with(Some("dlq:payments"), None).validate().unwrap_err();
        assert_eq!(e.field, "async_policy.on_success");
        assert!(e.message.contains("holds failures"), "{e}");
        assert!(e.message.contains("on_failure"), "{e}");

        let e = with(None, Some("dlq:Payments")).validate().unwrap_err();
        assert_eq!(e.field, "async_policy.on_failure");
        assert!(e.message.contains("1 to 63 characters"), "{e}");

        let e = with(Some("Not Valid"), None).validate().unwrap_err();
        assert_eq!(e.field, "async_policy.on_success");
        assert!(e.message.contains("is not a destination"), "{e}");

        // The password never appears in the message.
        let e = with(None, Some("amqp://u:hunter2@h/%2f?exchange=x&bogus=1"))
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "async_policy.on_failure");
        assert!(e.message.contains("`bogus`"), "{e}");
        assert!(!e.message.contains("hunter2"), "{e}");
    }
}
