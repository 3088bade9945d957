//! The one error type of queue operations.

use crate::limits::*;
use wisp_core::{FunctionName, ValidationError};

/// What went wrong in a queue operation. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A field of the input is invalid; `field` names it.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// An `enqueue` call carried too many invocations.
    #[error(
        "an enqueue call carries at most {MAX_BATCH_LEN} invocations, this one has {len}; split the batch"
    )]
    BatchTooLarge {
        /// How many it carried.
        len: usize,
    },
    /// A request body, or the bodies of one batch together, are over the limit.
    #[error(
        "invocation {index} of the batch brings the request bodies to {size} bytes; an asynchronous invocation carries at most {MAX_BODY_BYTES} bytes and one enqueue call at most {MAX_BATCH_BYTES}"
    )]
    BodyTooLarge {
        /// The position in the batch of the invocation that went over.
        index: usize,
        /// Its body size, or the running total when the batch went over.
        size: usize,
    },
    /// The function's queue is at its depth limit.
    #[error(
        "the queue of function `{function}` is full ({limit} invocations are queued, retrying or running); retry later"
    )]
    Full {
        /// The function.
        function: FunctionName,
        /// The depth limit.
        limit: u64,
    },
    /// No dead letter with that id.
    #[error("no dead letter with id `{id}`")]
    DeadLetterNotFound {
        /// The id asked for.
        id: String,
    },
    /// The lease expired and the invocation was redelivered, finished or
    /// released since; the call changed nothing.
    #[error(
        "the lease on invocation `{id}` is no longer held (it expired and the invocation was redelivered or settled); the result was discarded, so lease with a longer visibility timeout"
    )]
    LeaseLost {
        /// The invocation.
        id: String,
    },
    /// An at-most-once invocation that has started cannot be handed back:
    /// it would run twice.
    #[error(
        "invocation `{id}` is at-most-once and has started, so it cannot be released to run again; complete it instead"
    )]
    AlreadyStarted {
        /// The invocation.
        id: String,
    },
    /// The database failed.
    #[error("queue database error: {0}")]
    Database(String),
    /// The file system failed.
    #[error("queue storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The queue's writer has stopped (the queue is shutting down, or a
    /// previous failure stopped it); nothing was written.
    #[error("the invocation queue is shut down; nothing was written")]
    Closed,
}

impl QueueError {
    /// Whether the call that failed with this error is known to have
    /// written nothing: the input was refused, or what it needed (a lease,
    /// a dead letter, room in the queue) was not there. Storage errors are
    /// not: they may strike halfway through a write.
    pub fn wrote_nothing(&self) -> bool {
        matches!(
            self,
            QueueError::Invalid(_)
                | QueueError::BatchTooLarge { .. }
                | QueueError::BodyTooLarge { .. }
                | QueueError::Full { .. }
                | QueueError::DeadLetterNotFound { .. }
                | QueueError::LeaseLost { .. }
                | QueueError::AlreadyStarted { .. }
        )
    }
}

impl From<rusqlite::Error> for QueueError {
    fn from(e: rusqlite::Error) -> Self {
        QueueError::Database(e.to_string())
    }
}

impl From<serde_json::Error> for QueueError {
    fn from(e: serde_json::Error) -> Self {
        QueueError::Database(format!("corrupt stored JSON: {e}"))
    }
}
