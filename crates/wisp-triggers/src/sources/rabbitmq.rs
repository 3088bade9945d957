//! RabbitMQ (AMQP 0-9-1): a queue consumer with prefetch; each message is
//! acked once its event is queued in Wisp, and requeued or rejected (to
//! the queue's dead-letter exchange, if any) as configured when Wisp
//! cannot take it.

use crate::TriggerError;
use crate::source::{Source, SourceContext, SourceError};
use crate::spec::{check_text, check_url};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A RabbitMQ trigger's source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqConfig {
    /// Broker URL (default `amqp://guest:guest@127.0.0.1:5672/%2f`).
    #[serde(default = "default_url")]
    pub url: String,
    /// The queue to consume.
    pub queue: String,
    /// Declare the queue (durable) if it does not exist (default true).
    #[serde(default = "yes")]
    pub declare: bool,
    /// Bind the queue to this exchange with `routing_key` (after declaring it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<Binding>,
    /// Unacknowledged messages in flight (1 to 10000, default 32).
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// A message Wisp cannot queue (its function's queue is full, the
    /// function is gone) is requeued (the default) or rejected.
    #[serde(default)]
    pub on_failure: RabbitMqFailure,
}

/// An exchange binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// The exchange (it must exist).
    pub exchange: String,
    /// The routing key (default `#`... as the exchange type allows).
    #[serde(default)]
    pub routing_key: String,
}

/// What happens to a message that could not be queued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RabbitMqFailure {
    /// Back to the queue, to be redelivered.
    #[default]
    Requeue,
    /// Rejected without requeue: dead-lettered by the broker if the queue
    /// has a dead-letter exchange, else dropped by the broker.
    Reject,
}

fn default_url() -> String {
    "amqp://guest:guest@127.0.0.1:5672/%2f".into()
}
fn default_prefetch() -> u16 {
    32
}
fn yes() -> bool {
    true
}

impl RabbitMqConfig {
    /// Checks URL, queue, binding and prefetch.
    pub fn validate(&self) -> Result<(), TriggerError> {
        check_url("url", &self.url, &["amqp", "amqps"])?;
        check_text("queue", &self.queue)?;
        if let Some(b) = &self.bind {
            check_text("bind.exchange", &b.exchange)?;
        }
        if !(1..=10_000).contains(&self.prefetch) {
            return Err(TriggerError::invalid("prefetch", "must be from 1 to 10000"));
        }
        Ok(())
    }
}

/// Consumes a RabbitMQ queue.
pub struct RabbitMqSource {
    config: RabbitMqConfig,
    trigger: String,
}

impl RabbitMqSource {
    /// A source for `config` (already validated) of trigger `trigger`.
    pub fn new(config: RabbitMqConfig, trigger: &str) -> Self {
        RabbitMqSource {
            config,
            trigger: trigger.to_string(),
        }
    }
}

#[async_trait]
impl Source for RabbitMqSource {
    async fn session(&self, _ctx: &SourceContext) -> Result<(), SourceError> {
        let _ = (&self.config, &self.trigger);
        Err(SourceError::Config(
            "the RabbitMQ source is not built yet".into(),
        ))
    }
}
