//! Where sources hand their events: the durable asynchronous queue behind
//! an interface, so sources can be tested alone and never link the
//! runtime. The server implements it on its invocation queue; tests use an
//! in-memory fake.

use async_trait::async_trait;
use wisp_core::Target;
use wisp_events::Event;

/// One event to queue for a trigger's function.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event; the function receives it in binary mode.
    pub event: Event,
    /// Invocations sharing a key run one at a time, in order.
    pub partition_key: Option<String>,
    /// Set to deduplicate: an event with a key seen within the function's
    /// idempotency window is accepted once (cron ticks use this).
    pub idempotency_key: Option<String>,
}

impl Delivery {
    /// An unordered, undeduplicated delivery of `event`.
    pub fn new(event: Event) -> Self {
        Delivery {
            event,
            partition_key: None,
            idempotency_key: None,
        }
    }
}

/// How a batch of an ordered stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    /// The function succeeded with the whole batch.
    Succeeded,
    /// The function failed with it, after the function's retries; the
    /// invocation is in the dead-letter queue under `invocation_id`.
    Failed {
        /// The failed invocation, now a dead letter.
        invocation_id: String,
        /// The last attempt's error.
        error: String,
    },
}

/// Why the sink could not take events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The target function does not exist (or its qualifier does not resolve).
    #[error("the target function is unavailable: {0}")]
    Target(String),
    /// The function's queue is at its depth limit.
    #[error("the function's queue is full")]
    Full,
    /// Anything else (the queue's storage failed, shutting down, ...).
    #[error("the event could not be queued: {0}")]
    Unavailable(String),
}

/// The durable queue, as sources see it.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Queues every delivery for `target`, each as an asynchronous
    /// invocation under the function's policy, and returns once all are on
    /// disk. On `Err` none or some were queued; the source redelivers and
    /// the queue's idempotency keys (where set) absorb the repeats.
    async fn enqueue(&self, target: &Target, deliveries: Vec<Delivery>) -> Result<(), SinkError>;

    /// Queues `events` as one CloudEvents batch request
    /// (`application/cloudevents-batch+json`) in partition `key` and waits
    /// until it has finished, retries included.
    async fn run_batch(
        &self,
        target: &Target,
        key: &str,
        events: Vec<Event>,
    ) -> Result<BatchOutcome, SinkError>;

    /// Deletes a dead letter left by a failed batch that was then split and
    /// delivered in parts, so that each event is dead-lettered at most once.
    async fn forget_dead_letter(&self, invocation_id: &str) -> Result<(), SinkError>;
}

/// Durable per-trigger positions, for sources whose broker keeps none (cron).
#[async_trait]
pub trait CursorStore: Send + Sync + 'static {
    /// The cursor last saved for `trigger`.
    async fn load_cursor(&self, trigger: &str) -> Result<Option<String>, SinkError>;
    /// Saves `trigger`'s cursor; durable on return.
    async fn save_cursor(&self, trigger: &str, cursor: &str) -> Result<(), SinkError>;
}
