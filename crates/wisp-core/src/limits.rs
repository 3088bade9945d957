//! Every caller-controlled size, count and time, in one place. `docs/limits.md`
//! documents each of these; keep the two in step.

/// Largest component upload, in bytes (50 MiB).
pub const MAX_ARTIFACT_BYTES: usize = 50 * 1024 * 1024;
/// Longest a component upload waits for a compile slot (one per CPU core)
/// before its body is read, in seconds; then 503 `compiler_busy`.
pub const COMPILE_SLOT_WAIT_SECS: u64 = 30;
/// Largest JSON body accepted by the control API, in bytes (1 MiB).
pub const MAX_API_BODY_BYTES: usize = 1024 * 1024;
/// Default largest request body forwarded to a function, in bytes (16 MiB).
pub const DEFAULT_MAX_INVOKE_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 256;
/// Most labels on one function.
pub const MAX_LABELS: usize = 32;
/// Longest label key or value, in bytes.
pub const MAX_LABEL_LEN: usize = 63;
/// Most environment variables on one function.
pub const MAX_ENV_VARS: usize = 64;
/// Longest environment variable name, in bytes.
pub const MAX_ENV_NAME_LEN: usize = 128;
/// Largest total size of all env names and values, in bytes (4 KiB, as Lambda).
pub const MAX_ENV_TOTAL_BYTES: usize = 4096;
/// Prefix of the context variables Wisp sets; users cannot set these.
pub const RESERVED_ENV_PREFIX: &str = "WISP_";

/// Smallest memory limit, in MiB.
pub const MIN_MEMORY_MIB: u32 = 1;
/// Largest memory limit, in MiB (the 32-bit wasm address space).
pub const MAX_MEMORY_MIB: u32 = 4096;
/// Memory limit when none is given, in MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 128;

/// Smallest timeout, in milliseconds.
pub const MIN_TIMEOUT_MS: u64 = 1;
/// Largest timeout, in milliseconds (15 minutes, as Lambda).
pub const MAX_TIMEOUT_MS: u64 = 15 * 60 * 1000;
/// Timeout when none is given, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// Largest per-function concurrency.
pub const MAX_CONCURRENCY: u32 = 10_000;
/// Per-function concurrency when none is given.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 100;

/// Largest `min_instances` (versions kept warm).
pub const MAX_MIN_INSTANCES: u32 = 1000;
/// Largest `max_requests_per_instance` (opt-in instance reuse).
pub const MAX_REQUESTS_PER_INSTANCE: u32 = 100_000;

/// Most retries of an asynchronous invocation.
pub const MAX_ASYNC_RETRIES: u32 = 10;
/// Longest backoff between retries, in milliseconds (1 hour).
pub const MAX_BACKOFF_MS: u64 = 3_600_000;
/// Longest max event age, in milliseconds (6 hours, as Lambda).
pub const MAX_EVENT_AGE_MS: u64 = 6 * 3_600_000;
/// Longest idempotency window, in milliseconds (7 days).
pub const MAX_IDEMPOTENCY_WINDOW_MS: u64 = 7 * 24 * 3_600_000;

/// Captured stdout, and separately stderr, per invocation, in bytes (64 KiB).
pub const MAX_LOG_BYTES_PER_STREAM: usize = 64 * 1024;
/// Most log records returned by one logs query.
pub const MAX_LOG_QUERY_LIMIT: u32 = 1000;
/// Most aliases per function.
pub const MAX_ALIASES_PER_FUNCTION: usize = 100;

/// Largest in-memory size of one `wasi:http` `fields` resource (a header or
/// trailer map) a function makes, in bytes (64 KiB): its names, values and
/// the map around them. A larger one is refused to the guest with
/// `header-error.size-exceeded`.
pub const MAX_FIELDS_BYTES: usize = 64 * 1024;
/// Largest chunk of a response body the host takes from a function at once,
/// in bytes (64 KiB); a body holds at most [`OUTGOING_BODY_BUFFER_CHUNKS`]
/// more of them while the client reads.
pub const OUTGOING_BODY_CHUNK_BYTES: usize = 64 * 1024;
/// Chunks of a response body buffered beyond the one being written.
pub const OUTGOING_BODY_BUFFER_CHUNKS: usize = 1;
/// Most host memory one entry of an instance's resource table can make
/// the host hold, in bytes: a full `fields`, or an outgoing body with its
/// buffer full.
pub const MAX_HOST_RESOURCE_BYTES: usize = {
    let body = OUTGOING_BODY_CHUNK_BYTES * (OUTGOING_BODY_BUFFER_CHUNKS + 1);
    if body > MAX_FIELDS_BYTES {
        body
    } else {
        MAX_FIELDS_BYTES
    }
};
/// Fewest host resources an instance may hold at once, whatever its
/// `memory_mib`.
pub const MIN_HOST_RESOURCES: usize = 64;
/// Largest `wasi:random` request, in bytes (1 MiB): the host allocates the
/// bytes before the guest receives them.
pub const MAX_RANDOM_BYTES: u64 = 1024 * 1024;

/// Most host resources (`wasi:http` fields, requests, responses, bodies,
/// streams, pollables, ...) an instance with `memory_mib` may hold at once:
/// its memory limit divided by [`MAX_HOST_RESOURCE_BYTES`], at least
/// [`MIN_HOST_RESOURCES`]. So the host memory an instance can make the
/// server hold is bounded by `max(memory_mib, 8)` MiB, on top of its own
/// linear memory, its captured output and the request body in flight.
pub const fn max_host_resources(memory_mib: u32) -> usize {
    let by_memory = memory_mib as usize * 1024 * 1024 / MAX_HOST_RESOURCE_BYTES;
    if by_memory > MIN_HOST_RESOURCES {
        by_memory
    } else {
        MIN_HOST_RESOURCES
    }
}
