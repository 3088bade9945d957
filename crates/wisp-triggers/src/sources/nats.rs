//! NATS: core subjects (optionally in a queue group) or a JetStream
//! durable pull consumer, optionally in ordered stream mode.

use crate::TriggerError;
use crate::source::{Source, SourceContext, SourceError};
use crate::spec::{OrderedConfig, check_text, check_url};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A NATS trigger's source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL (default `nats://127.0.0.1:4222`).
    #[serde(default = "default_url")]
    pub url: String,
    /// Subject to subscribe to; wildcards `*` and `>` work. With
    /// JetStream, the consumer's filter subject.
    pub subject: String,
    /// Core NATS queue group: the members share the messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_group: Option<String>,
    /// Consume through a JetStream durable consumer instead of core NATS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<JetStreamConfig>,
}

/// A JetStream durable consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JetStreamConfig {
    /// The stream (it must exist).
    pub stream: String,
    /// The durable consumer's name (default `wisp-<trigger>`); created if
    /// missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable: Option<String>,
    /// How long the server waits for an ack before redelivering, in ms
    /// (1000 to 3600000, default 30000).
    #[serde(default = "default_ack_wait_ms")]
    pub ack_wait_ms: u64,
    /// Ordered stream mode: batches in stream order, acked after success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered: Option<OrderedConfig>,
}

fn default_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_ack_wait_ms() -> u64 {
    30_000
}

impl NatsConfig {
    /// Checks URL, subject, queue group and the JetStream settings.
    pub fn validate(&self) -> Result<(), TriggerError> {
        check_url("url", &self.url, &["nats", "tls"])?;
        check_text("subject", &self.subject)?;
        if self.subject.contains(' ') {
            return Err(TriggerError::invalid("subject", "must not contain spaces"));
        }
        if let Some(q) = &self.queue_group {
            check_text("queue_group", q)?;
            if self.jetstream.is_some() {
                return Err(TriggerError::invalid(
                    "queue_group",
                    "applies to core NATS only; JetStream consumers share work by their durable name",
                ));
            }
        }
        if let Some(js) = &self.jetstream {
            check_text("jetstream.stream", &js.stream)?;
            if let Some(d) = &js.durable {
                check_text("jetstream.durable", d)?;
            }
            if !(1000..=3_600_000).contains(&js.ack_wait_ms) {
                return Err(TriggerError::invalid(
                    "jetstream.ack_wait_ms",
                    "must be from 1000 to 3600000",
                ));
            }
            if let Some(o) = &js.ordered {
                o.validate().map_err(|e| e.under("jetstream.ordered"))?;
            }
        }
        Ok(())
    }
}

/// Consumes a NATS subject or JetStream consumer.
pub struct NatsSource {
    config: NatsConfig,
    trigger: String,
}

impl NatsSource {
    /// A source for `config` (already validated) of trigger `trigger`.
    pub fn new(config: NatsConfig, trigger: &str) -> Self {
        NatsSource {
            config,
            trigger: trigger.to_string(),
        }
    }
}

#[async_trait]
impl Source for NatsSource {
    async fn session(&self, _ctx: &SourceContext) -> Result<(), SourceError> {
        let _ = (&self.config, &self.trigger);
        Err(SourceError::Config(
            "the NATS source is not built yet".into(),
        ))
    }
}
