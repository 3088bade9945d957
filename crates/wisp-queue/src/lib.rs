//! The durable invocation queue behind asynchronous invocation: the
//! broker-shaped [`InvocationQueue`] interface (enqueue, lease, ack, nack
//! with backoff, dead-letter) and its embedded SQLite backend,
//! [`sqlite::SqliteQueue`].
//!
//! Every method that changes the queue returns only once the change is on
//! disk, so an invocation answered with an id survives a kill -9. Delivery
//! is at-least-once by default: an executor *leases* invocations for a
//! visibility timeout and *completes* each one; a lease that runs out
//! (the executor died) is redelivered. Failed attempts are retried with
//! exponential backoff and full jitter, and an invocation out of attempts,
//! or older than its `max_event_age`, goes to the dead-letter queue with
//! its request and every attempt's error, to be inspected, deleted or
//! replayed. Invocations that share a partition key run one at a time, in
//! enqueue order; the rest are unordered.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), wisp_queue::QueueError> {
//! use std::time::Duration;
//! use wisp_queue::sqlite::SqliteQueue;
//! use wisp_queue::{Completion, Enqueued, InvocationQueue, NewInvocation, Status, StoredRequest, StoredResponse};
//!
//! # let dir = tempfile::tempdir()?;
//! let queue = SqliteQueue::open(dir.path().join("queue.db"))?;
//! let request = StoredRequest {
//!     method: "POST".into(),
//!     path_and_query: "/".into(),
//!     headers: vec![("ce-type".into(), "order.created".into())],
//!     body: b"{}".to_vec(),
//! };
//! let accepted = queue
//!     .enqueue(vec![NewInvocation::new("orders".parse().unwrap(), "latest", request)])
//!     .await?;
//! let Enqueued::Accepted { id } = &accepted[0] else { unreachable!() };
//!
//! // An executor takes it, runs it, and reports back.
//! let leased = queue.lease(10, Duration::from_secs(60)).await?;
//! assert_eq!(&leased[0].invocation.id, id);
//! let response = StoredResponse::capped(200, vec![], b"done".to_vec());
//! let status = queue.complete(&leased[0].lease, Completion::Succeeded { response }).await?;
//! assert_eq!(status, Status::Succeeded);
//! assert_eq!(queue.get(id).await?.unwrap().result.unwrap().body, b"done");
//! # Ok(()) }
//! ```

pub mod clock;
pub mod error;
pub mod id;
pub mod limits;
pub mod model;
pub mod policy;
pub mod sqlite;

pub use clock::Clock;
pub use error::QueueError;
pub use id::is_valid_id;
pub use model::{
    Attempt, Completion, DeadLetter, Enqueued, Invocation, LeaseToken, Leased, NewInvocation,
    QueueLimits, Retention, Status, StoredRequest, StoredResponse, UnknownStatus, check_batch,
};
pub use policy::{AsyncPolicy, Semantics};

use async_trait::async_trait;
use id::IdGenerator;
use std::time::Duration;
use wisp_core::FunctionName;

/// A durable queue of asynchronous invocations, shaped like a message
/// broker so that it can sit on an embedded database or on a broker such
/// as NATS JetStream: enqueue, lease with a visibility timeout, ack
/// ([`complete`](Self::complete) with success), nack with backoff
/// (`complete` with a retryable failure), release, and a dead-letter queue.
///
/// Every method that writes returns `Ok` only once the write is durable,
/// and each call's writes are atomic. Ids are the invocation ids, 32 lowercase
/// hex digits; a malformed id finds nothing.
#[async_trait]
pub trait InvocationQueue: Send + Sync {
    /// Enqueues up to [`limits::MAX_BATCH_LEN`] invocations; answers each,
    /// in order: accepted with a new id, a duplicate of the invocation
    /// accepted earlier with the same idempotency key (within the policy's
    /// window), or refused because the function's queue is full. Invalid
    /// input (a bad policy, a body over [`limits::MAX_BODY_BYTES`], ...)
    /// fails the whole call and enqueues nothing.
    async fn enqueue(&self, batch: Vec<NewInvocation>) -> Result<Vec<Enqueued>, QueueError>;

    /// Hands out up to `max` (at most [`limits::MAX_LEASE_BATCH`]) runnable
    /// invocations, those waiting longest first, each now `running` and held
    /// for `visibility`. On the way it redelivers invocations whose lease
    /// ran out (counting an attempt with outcome `lease expired`; an
    /// at-most-once invocation that had started becomes `failed` instead)
    /// and dead-letters invocations older than their `max_event_age`. An
    /// invocation with a partition key is never leased while an earlier one
    /// with the same function and key is unfinished.
    async fn lease(&self, max: usize, visibility: Duration) -> Result<Vec<Leased>, QueueError>;

    /// Records that the leased attempt is about to execute. At-most-once
    /// executors must call it, and succeed, before running the function:
    /// once marked, the invocation never runs again. Fails with `LeaseLost`
    /// if the lease ran out.
    async fn mark_started(&self, lease: &LeaseToken) -> Result<(), QueueError>;

    /// Records how the leased attempt ended and returns the new status:
    /// `succeeded`; `retrying` after a backoff for a retryable failure with
    /// attempts left (never for at-most-once); else `dead`. A lease that
    /// is no longer held fails with [`QueueError::LeaseLost`] and changes
    /// nothing.
    async fn complete(&self, lease: &LeaseToken, outcome: Completion)
    -> Result<Status, QueueError>;

    /// Records how each of up to [`limits::MAX_LEASE_BATCH`] leased
    /// attempts ended, as [`complete`](Self::complete) does for one, and
    /// answers each entry in order. An executor that finishes many
    /// invocations at once should prefer it: one write carries them all.
    /// An entry whose lease is no longer held fails alone, with
    /// [`QueueError::LeaseLost`], and changes nothing; the others are
    /// recorded. An `Err` of the whole call recorded none of them. The
    /// default calls `complete` for each entry.
    async fn complete_many(
        &self,
        batch: Vec<(LeaseToken, Completion)>,
    ) -> Result<Vec<Result<Status, QueueError>>, QueueError> {
        let mut out = Vec::with_capacity(batch.len());
        for (lease, outcome) in batch {
            out.push(self.complete(&lease, outcome).await);
        }
        Ok(out)
    }

    /// Hands a leased invocation back without counting the attempt (the
    /// executor could not run it, for example at its concurrency limit or
    /// shutting down); it becomes runnable after `delay` (at most 6 h). A
    /// started at-most-once invocation cannot be released.
    async fn release(&self, lease: &LeaseToken, delay: Duration) -> Result<(), QueueError>;

    /// The invocation with this id, with its result.
    async fn get(&self, id: &str) -> Result<Option<Invocation>, QueueError>;

    /// `function`'s invocations, newest first, optionally of one status:
    /// up to `limit` (1 to [`limits::MAX_LIST_LIMIT`]) older than the id
    /// `before`. Results are left out (`result` is `None`); `get` has them.
    async fn list(
        &self,
        function: &FunctionName,
        status: Option<Status>,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Vec<Invocation>, QueueError>;

    /// The dead letters, of one function or all, of one named dead-letter
    /// queue or all (see [`AsyncPolicy::dead_letter_queue`]), newest first,
    /// paged like [`list`](Self::list). Requests are left out;
    /// [`dead_letter`](Self::dead_letter) has them. A malformed queue name
    /// is `Invalid`, naming the field `queue`.
    async fn dead_letters(
        &self,
        function: Option<&FunctionName>,
        queue: Option<&str>,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Vec<Invocation>, QueueError>;

    /// One dead letter with its original request and policy.
    async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, QueueError>;

    /// Deletes a dead letter with its request; false if there was none.
    async fn delete_dead(&self, id: &str) -> Result<bool, QueueError>;

    /// Re-enqueues a dead letter's request as a new invocation, with the
    /// same policy and partition key, to `qualifier` or its own; returns
    /// the new id. In the same transaction the dead letter leaves the
    /// dead-letter queue (it stays readable, `dead`, with `replayed_as`).
    /// Fails with `DeadLetterNotFound` or, at the depth limit, `Full`.
    async fn replay(&self, id: &str, qualifier: Option<String>) -> Result<String, QueueError>;

    /// Replays `function`'s dead letters, oldest first, in transactions of
    /// 100; returns how many. Letters that die while it runs are left for
    /// the next call. Stops early at the depth limit (`Full` if it could
    /// replay none).
    async fn replay_all(
        &self,
        function: &FunctionName,
        qualifier: Option<String>,
    ) -> Result<usize, QueueError>;

    /// Ends every outstanding lease at once, so the next `lease` redelivers
    /// (or, for started at-most-once invocations, fails) them. A server
    /// that is the queue's only executor calls this at start: no executor
    /// from before the restart is alive. Returns how many leases ended.
    async fn expire_leases(&self) -> Result<u64, QueueError>;

    /// Queued, retrying and running invocations of `function`: what the
    /// depth limit counts.
    async fn depth(&self, function: &FunctionName) -> Result<u64, QueueError>;

    /// How many invocations each function has in each status (zero counts
    /// left out), for metrics.
    async fn counts(&self) -> Result<Vec<(FunctionName, Status, u64)>, QueueError>;
}
