//! Every size, count and time the queue bounds, in one place.
//!
//! Sizes a caller controls (batch length, body, headers, keys) are
//! rejected when over the limit; text the function or the executor
//! produces (errors, outcomes, results) is truncated instead, so a failure
//! is always recorded.

use std::time::Duration;

/// Most invocations in one `enqueue` call.
pub const MAX_BATCH_LEN: usize = 1000;
/// Largest request body of one asynchronous invocation, in bytes (6 MiB).
pub const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;
/// Largest sum of the request bodies in one `enqueue` call, in bytes (32 MiB).
pub const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;
/// Most request headers of one invocation.
pub const MAX_HEADERS: usize = 128;
/// Largest sum of header names and values of one request, in bytes (64 KiB).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Longest request method, in bytes.
pub const MAX_METHOD_BYTES: usize = 32;
/// Longest request path and query, in bytes (8 KiB).
pub const MAX_PATH_BYTES: usize = 8 * 1024;
/// Longest partition key, in bytes.
pub const MAX_PARTITION_KEY_BYTES: usize = 256;
/// Longest idempotency key, in bytes (room for a CloudEvents `source` + `id`).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 1024;

/// Largest stored result body, in bytes (256 KiB); longer bodies are cut
/// and flagged `truncated`.
pub const MAX_RESULT_BYTES: usize = 256 * 1024;
/// Largest sum of stored result header names and values, in bytes (16 KiB);
/// headers past it are dropped and the result flagged `truncated`.
pub const MAX_RESULT_HEADER_BYTES: usize = 16 * 1024;
/// Longest stored error message, in bytes; longer ones are cut.
pub const MAX_ERROR_BYTES: usize = 4 * 1024;
/// Longest stored attempt outcome, in bytes; longer ones are cut.
pub const MAX_OUTCOME_BYTES: usize = 256;

/// Most invocations returned by one `list` or `dead_letters` call.
pub const MAX_LIST_LIMIT: u32 = 1000;
/// Most invocations handed out by one `lease` call.
pub const MAX_LEASE_BATCH: usize = 1000;
/// Longest lease visibility timeout (24 h).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(24 * 3600);

/// Default most queued, retrying and running invocations per function.
pub const DEFAULT_MAX_DEPTH_PER_FUNCTION: u64 = 10_000;
/// Default time finished invocations are kept (7 days).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default most invocations kept; past it the oldest finished ones are pruned.
pub const DEFAULT_MAX_RETAINED: u64 = 1_000_000;

/// `max_retries` upper bound.
pub const MAX_RETRIES: u32 = 10;
/// Longest `backoff_min` (1 h).
pub const MAX_BACKOFF_MIN: Duration = Duration::from_secs(3600);
/// Longest `backoff_max` (6 h).
pub const MAX_BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);
/// Shortest `max_event_age` (1 s).
pub const MIN_EVENT_AGE: Duration = Duration::from_secs(1);
/// Longest `max_event_age` (7 days).
pub const MAX_EVENT_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest `idempotency_window` (1 s).
pub const MIN_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(1);
/// Longest `idempotency_window` (7 days).
pub const MAX_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
