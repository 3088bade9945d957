//! What the queue stores and hands out: invocations, their requests,
//! attempts and results, and the answers of queue operations.

use crate::error::QueueError;
use crate::limits::*;
use crate::policy::AsyncPolicy;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use wisp_core::{FunctionName, Qualifier, ValidationError};

/// The HTTP request an asynchronous invocation delivers to its function.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredRequest {
    /// The method, such as `POST`.
    pub method: String,
    /// The path and query the function sees, such as `/orders?x=1`.
    pub path_and_query: String,
    /// Header names and values, in order; names may repeat.
    pub headers: Vec<(String, String)>,
    /// The body, at most [`MAX_BODY_BYTES`].
    pub body: Vec<u8>,
}

impl StoredRequest {
    /// Checks the sizes a caller controls; the error's field is that of
    /// invocation `index` of a batch.
    fn check(&self, index: usize) -> Result<(), QueueError> {
        let field = format_args!("batch[{index}].request");
        let m = self.method.as_bytes();
        let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
        if m.is_empty() || m.len() > MAX_METHOD_BYTES || !m.iter().all(token) {
            return Err(ValidationError::new(
                format!("{field}.method"),
                format!("must be an HTTP method: 1 to {MAX_METHOD_BYTES} token characters"),
            )
            .into());
        }
        if !self.path_and_query.starts_with('/') || self.path_and_query.len() > MAX_PATH_BYTES {
            return Err(ValidationError::new(
                format!("{field}.path_and_query"),
                format!("must start with '/' and be at most {MAX_PATH_BYTES} bytes"),
            )
            .into());
        }
        let header_bytes: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        if self.headers.len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
            return Err(ValidationError::new(
                format!("{field}.headers"),
                format!(
                    "at most {MAX_HEADERS} headers of at most {MAX_HEADER_BYTES} bytes together are kept with an asynchronous invocation"
                ),
            )
            .into());
        }
        if self.body.len() > MAX_BODY_BYTES {
            return Err(QueueError::BodyTooLarge {
                index,
                size: self.body.len(),
            });
        }
        Ok(())
    }
}

/// A function's answer, as stored with a succeeded invocation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredResponse {
    /// The HTTP status code.
    pub status: u16,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, at most [`MAX_RESULT_BYTES`].
    pub body: Vec<u8>,
    /// Whether the body or headers were cut to fit the limits.
    pub truncated: bool,
}

impl StoredResponse {
    /// A response cut to [`MAX_RESULT_BYTES`] of body and
    /// [`MAX_RESULT_HEADER_BYTES`] of headers, flagged `truncated` if
    /// anything was cut.
    pub fn capped(status: u16, headers: Vec<(String, String)>, mut body: Vec<u8>) -> Self {
        let mut truncated = false;
        if body.len() > MAX_RESULT_BYTES {
            body.truncate(MAX_RESULT_BYTES);
            truncated = true;
        }
        let mut kept = Vec::with_capacity(headers.len());
        let mut total = 0;
        for (k, v) in headers {
            total += k.len() + v.len();
            if total > MAX_RESULT_HEADER_BYTES {
                truncated = true;
                break;
            }
            kept.push((k, v));
        }
        StoredResponse {
            status,
            headers: kept,
            body,
            truncated,
        }
    }

    /// This response with the caps of [`StoredResponse::capped`] applied.
    pub(crate) fn into_capped(self) -> Self {
        let mut r = StoredResponse::capped(self.status, self.headers, self.body);
        r.truncated |= self.truncated;
        r
    }
}

/// An invocation to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInvocation {
    /// The function to run.
    pub function: FunctionName,
    /// `latest`, a version number or an alias; resolved when the
    /// invocation runs, not when it is enqueued.
    pub qualifier: String,
    /// The request the function receives.
    pub request: StoredRequest,
    /// Invocations of one function with the same partition key run one at
    /// a time, in enqueue order. `None` is unordered.
    pub partition_key: Option<String>,
    /// An invocation of the same function with the same key, enqueued
    /// within the policy's `idempotency_window`, makes this one a
    /// duplicate. `None` never deduplicates.
    pub idempotency_key: Option<String>,
    /// Retries, backoff, event age and semantics.
    pub policy: AsyncPolicy,
}

impl NewInvocation {
    /// An invocation of `function:qualifier` with the default policy.
    pub fn new(
        function: FunctionName,
        qualifier: impl Into<String>,
        request: StoredRequest,
    ) -> Self {
        NewInvocation {
            function,
            qualifier: qualifier.into(),
            request,
            partition_key: None,
            idempotency_key: None,
            policy: AsyncPolicy::default(),
        }
    }

    /// Checks every caller-controlled field; `index` is the position in the batch.
    fn check(&self, index: usize) -> Result<(), QueueError> {
        // Formatted only for an error: this runs for every event.
        let field = format_args!("batch[{index}]");
        check_qualifier(&self.qualifier).map_err(|mut e| {
            e.field = format!("{field}.{}", e.field);
            e
        })?;
        self.request.check(index)?;
        if let Some(k) = &self.partition_key
            && (k.is_empty() || k.len() > MAX_PARTITION_KEY_BYTES)
        {
            return Err(ValidationError::new(
                format!("{field}.partition_key"),
                format!("must be 1 to {MAX_PARTITION_KEY_BYTES} bytes"),
            )
            .into());
        }
        if let Some(k) = &self.idempotency_key
            && (k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_BYTES)
        {
            return Err(ValidationError::new(
                format!("{field}.idempotency_key"),
                format!("must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes"),
            )
            .into());
        }
        self.policy.validate().map_err(|mut e| {
            e.field = format!("{field}.policy.{}", e.field);
            QueueError::Invalid(e)
        })
    }
}

/// Checks a whole `enqueue` batch: its length, every invocation, and the
/// sum of the bodies. Returns that sum.
pub fn check_batch(batch: &[NewInvocation]) -> Result<usize, QueueError> {
    if batch.len() > MAX_BATCH_LEN {
        return Err(QueueError::BatchTooLarge { len: batch.len() });
    }
    let mut total = 0;
    for (index, inv) in batch.iter().enumerate() {
        inv.check(index)?;
        total += inv.request.body.len();
        if total > MAX_BATCH_BYTES {
            return Err(QueueError::BodyTooLarge { index, size: total });
        }
    }
    Ok(total)
}

/// Checks that `q` is `latest`, a version number or an alias name.
pub(crate) fn check_qualifier(q: &str) -> Result<(), ValidationError> {
    q.parse::<Qualifier>().map(|_| ()).map_err(|e| {
        ValidationError::new(
            "qualifier",
            format!("`latest`, a version number or an alias name: {e}"),
        )
    })
}

/// Where an invocation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for its first attempt.
    Queued,
    /// Leased to an executor.
    Running,
    /// Failed, waiting for its next attempt.
    Retrying,
    /// Finished with a response.
    Succeeded,
    /// Finished without a result and not dead-lettered: an at-most-once
    /// invocation whose executor stopped while it ran.
    Failed,
    /// Failed every attempt it was allowed (or expired) and went to the
    /// dead-letter queue.
    Dead,
}

impl Status {
    /// Every status, in life order.
    pub const ALL: [Status; 6] = [
        Status::Queued,
        Status::Running,
        Status::Retrying,
        Status::Succeeded,
        Status::Failed,
        Status::Dead,
    ];

    /// The snake_case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Retrying => "retrying",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Dead => "dead",
        }
    }

    /// Whether the invocation will not run again (unless replayed).
    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Dead)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown status name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status `{0}`; expected queued, running, retrying, succeeded, failed or dead")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, UnknownStatus> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

/// One attempt to run an invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it was leased, or marked started if the executor did so.
    pub started_at: DateTime<Utc>,
    /// When it finished; `None` while it runs.
    pub finished_at: Option<DateTime<Utc>>,
    /// `running` while it runs, then what happened: the response status
    /// (`200`), `timeout`, `trap: ...`, `lease expired`, ...
    pub outcome: String,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// An invocation as the queue knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Time-ordered, unique, URL-safe id: 32 lowercase hex digits.
    pub id: String,
    /// The function.
    pub function: FunctionName,
    /// The qualifier it runs under, resolved at each attempt.
    pub qualifier: String,
    /// Where it is in its life.
    pub status: Status,
    /// Every attempt so far, oldest first; the last one may be running.
    pub attempts: Vec<Attempt>,
    /// When it was accepted.
    pub enqueued_at: DateTime<Utc>,
    /// When its status last changed.
    pub updated_at: DateTime<Utc>,
    /// When it becomes runnable, while queued or retrying.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The function's answer, once succeeded (never filled by list calls).
    pub result: Option<StoredResponse>,
    /// The last error, if an attempt failed.
    pub error: Option<String>,
    /// Its partition key, if ordered.
    pub partition_key: Option<String>,
    /// Its idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// The dead letter this invocation replays, if it is a replay.
    pub replayed_from: Option<String>,
    /// The invocation that replays this dead one, once replayed.
    pub replayed_as: Option<String>,
    /// The dead-letter queue it is kept in once dead: its policy's
    /// `dead_letter_queue`, else `default`.
    pub dead_letter_queue: String,
}

/// The answer for one invocation of an `enqueue` batch, in batch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Durably queued under a new id.
    Accepted {
        /// The new invocation's id.
        id: String,
    },
    /// Its idempotency key was seen within the window; nothing was queued.
    Duplicate {
        /// The id of the invocation that was accepted with that key.
        id: String,
    },
    /// The function's queue is at its depth limit; nothing was queued.
    Full {
        /// The function.
        function: FunctionName,
    },
}

impl Enqueued {
    /// The id for `Accepted` and `Duplicate`.
    pub fn id(&self) -> Option<&str> {
        match self {
            Enqueued::Accepted { id } | Enqueued::Duplicate { id } => Some(id),
            Enqueued::Full { .. } => None,
        }
    }
}

/// Proof that an executor holds an invocation, for `mark_started`,
/// `complete` and `release`. Opaque apart from the invocation id.
#[derive(Clone, PartialEq, Eq)]
pub struct LeaseToken {
    /// The leased invocation.
    pub id: String,
    pub(crate) token: String,
}

impl LeaseToken {
    /// A token for a backend that keeps its own; `token` is opaque to callers.
    pub fn new(id: impl Into<String>, token: impl Into<String>) -> Self {
        LeaseToken {
            id: id.into(),
            token: token.into(),
        }
    }

    /// The backend's opaque part.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseToken({})", self.id)
    }
}

/// An invocation handed to an executor by `lease`.
#[derive(Debug, Clone)]
pub struct Leased {
    /// The invocation, now `running`.
    pub invocation: Invocation,
    /// The request to deliver.
    pub request: StoredRequest,
    /// Its policy (the dispatcher needs `retry_on_4xx` and `semantics`).
    pub policy: AsyncPolicy,
    /// What proves the lease to `complete`.
    pub lease: LeaseToken,
    /// This attempt's number, from 1.
    pub attempt: u32,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// The function answered and the answer counts as success.
    Succeeded {
        /// Its answer; capped to the result limits when stored.
        response: StoredResponse,
    },
    /// The attempt failed.
    Failed {
        /// Why, for people.
        error: String,
        /// What happened, short: `500`, `timeout`, `trap: ...`.
        outcome: String,
        /// Whether another attempt may help (the dispatcher decides: a 4xx
        /// is retryable only with `retry_on_4xx`).
        retryable: bool,
    },
}

/// A dead-lettered invocation with the request it carried.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The invocation, with every attempt's error and timestamps.
    pub invocation: Invocation,
    /// The original request, as enqueued.
    pub request: StoredRequest,
    /// The policy it ran under; a replay reuses it.
    pub policy: AsyncPolicy,
}

/// Bounds that keep the queue's memory and disk flat under a flood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most queued, retrying and running invocations per function; past it
    /// `enqueue` answers [`Enqueued::Full`] (default 10,000).
    pub max_depth_per_function: u64,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_depth_per_function: DEFAULT_MAX_DEPTH_PER_FUNCTION,
        }
    }
}

/// How long finished invocations are kept. Dead letters are kept until
/// deleted or replayed, whatever this says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Succeeded, failed and replayed-dead invocations older than this
    /// (since they finished) are pruned (default 7 days).
    pub max_age: Duration,
    /// Past this many invocations in all, the oldest finished ones are
    /// pruned (default 1,000,000).
    pub max_rows: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: DEFAULT_RETENTION,
            max_rows: DEFAULT_MAX_RETAINED,
        }
    }
}
