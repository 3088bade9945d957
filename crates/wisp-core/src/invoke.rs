//! The interface between the data plane and the runtime: a resolved,
//! immutable [`Deployment`], the [`Invoker`] that runs it, the [`Preparer`]
//! that validates and compiles code at deploy time, and the
//! [`InvocationSink`] that receives one [`InvocationRecord`] per invocation.
//!
//! Control-plane crates depend on these traits only; the composition root
//! plugs in the wasmtime runtime.

use crate::digest::Digest;
use crate::model::VersionId;
use crate::names::FunctionName;
use crate::spec::FunctionConfig;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::combinators::UnsyncBoxBody;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Boxed error used in bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A streaming HTTP body, for requests into and responses out of functions.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything the runtime needs to run one version of a function. Immutable:
/// a change to `latest` produces a new `Deployment`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// The function.
    pub function: FunctionName,
    /// The version that runs.
    pub version: VersionId,
    /// The code.
    pub code_digest: Digest,
    /// Its configuration.
    pub config: FunctionConfig,
}

/// Why an invocation produced no response from the function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// The function is already running `limit` invocations.
    #[error(
        "function is at its concurrency limit of {limit}; retry later or raise max_concurrency"
    )]
    Throttled {
        /// The function's `max_concurrency`.
        limit: u32,
    },
    /// The server is at its instance or instance-memory capacity and no
    /// slot freed up in time.
    #[error("the server is at its {resource} capacity; retry later")]
    Overloaded {
        /// Which capacity: `instance` or `instance memory`.
        resource: String,
    },
    /// The invocation ran past its timeout and was stopped.
    #[error("function timed out after {timeout_ms} ms (its timeout_ms limit)")]
    Timeout {
        /// The function's `timeout_ms`.
        timeout_ms: u64,
    },
    /// The function tried to grow its memory past its limit.
    #[error("function exceeded its memory limit of {memory_mib} MiB (memory_mib)")]
    MemoryLimit {
        /// The function's `memory_mib`.
        memory_mib: u32,
    },
    /// The function made the host hold more than it may: more resources
    /// at once than its memory limit allows (see
    /// [`crate::limits::max_host_resources`]), or a header map over
    /// [`crate::limits::MAX_FIELDS_BYTES`].
    #[error("{message}")]
    HostLimit {
        /// Which limit, and what to do about it.
        message: String,
    },
    /// The function trapped.
    #[error("function trapped: {message}")]
    Trapped {
        /// The trap and its backtrace, as wasmtime reports it.
        message: String,
    },
    /// The function returned without setting a response.
    #[error("function returned without sending a response: {message}")]
    NoResponse {
        /// Details.
        message: String,
    },
    /// The component could not be loaded or instantiated.
    #[error("function could not be started: {message}")]
    Unavailable {
        /// Details.
        message: String,
    },
}

/// Runs deployments. Implemented by the wasmtime runtime; the data plane
/// and triggers depend only on this.
pub trait Invoker: Send + Sync + 'static {
    /// Runs `request` on `deployment`. The response head arrives when the
    /// function sets it; its body streams while the function keeps running.
    fn invoke(
        &self,
        deployment: Arc<Deployment>,
        request_id: String,
        request: http::Request<Body>,
    ) -> BoxFuture<'_, Result<http::Response<Body>, InvokeError>>;

    /// Loads `deployment` and keeps it ready ahead of its first request, for
    /// versions with `min_instances`. Runtimes without warm capacity do
    /// nothing.
    fn warm(&self, deployment: Arc<Deployment>) -> BoxFuture<'_, Result<(), InvokeError>> {
        let _ = deployment;
        Box::pin(async { Ok(()) })
    }

    /// Forgets what the runtime keeps for a deleted version (`Some`) or a
    /// whole deleted function (`None`): warm pins and admission state.
    fn release(&self, function: &FunctionName, version: Option<VersionId>) {
        let _ = (function, version);
    }
}

/// Why a component was rejected at deploy time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    /// Not a valid component, or not one Wisp can run.
    #[error("{0}")]
    Invalid(String),
    /// Compiling it needed more memory or time than the compiler may use.
    #[error("{0}")]
    CompileLimit(String),
    /// Wisp could not compile or cache it for a reason of its own.
    #[error("could not prepare the component: {0}")]
    Internal(String),
}

/// One of a [`Preparer`]'s compile slots, from [`Preparer::reserve`]: as
/// many exist as components are compiled at once. Held from before an
/// upload's body is read until its compile is over, so that no more
/// uploads are held in memory than can be compiled. Dropping it frees the
/// slot.
pub struct CompileSlot {
    _guard: Box<dyn Send + Sync>,
}

impl CompileSlot {
    /// A slot that stays taken until `guard` (a semaphore permit, say) is
    /// dropped with it.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        CompileSlot {
            _guard: Box::new(guard),
        }
    }
}

impl std::fmt::Debug for CompileSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompileSlot")
    }
}

/// Validates and compiles a component at deploy time, so that the request
/// path never compiles.
pub trait Preparer: Send + Sync + 'static {
    /// Waits for a compile slot (for as long as it takes; callers bound the
    /// wait). Fails only when the preparer is shutting down.
    fn reserve(&self) -> BoxFuture<'_, Result<CompileSlot, PrepareError>>;

    /// Checks that `bytes` is a `wasi:http/proxy` component Wisp can link,
    /// compiles it in `slot` (one from this preparer's
    /// [`reserve`](Preparer::reserve)) and caches the compiled form under
    /// `digest`.
    fn prepare(
        &self,
        slot: CompileSlot,
        digest: Digest,
        bytes: Bytes,
    ) -> BoxFuture<'_, Result<(), PrepareError>>;
}

/// Captured output of one stream of one invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogCapture {
    /// The first bytes written, up to the per-invocation cap.
    pub bytes: Vec<u8>,
    /// Whether more was written than kept.
    pub truncated: bool,
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvocationOutcome {
    /// The function sent a response with this status.
    Completed {
        /// HTTP status the function chose.
        status: u16,
    },
    /// The function failed; see the error.
    Failed(InvokeError),
}

/// One invocation, reported once when it has completely finished.
#[derive(Debug, Clone)]
pub struct InvocationRecord {
    /// The request id.
    pub request_id: String,
    /// The function.
    pub function: FunctionName,
    /// The version that ran.
    pub version: VersionId,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// From start to the end of the response body (or the failure).
    pub duration: Duration,
    /// Whether the component had to be loaded first.
    pub cold_start: bool,
    /// How long loading took, for cold starts.
    pub init_duration: Option<Duration>,
    /// How long creating the instance took, when this request created one
    /// (not for a reused instance, nor for a request refused before).
    pub instantiate_duration: Option<Duration>,
    /// How it ended.
    pub outcome: InvocationOutcome,
    /// Captured stdout.
    pub stdout: LogCapture,
    /// Captured stderr.
    pub stderr: LogCapture,
}

/// Receives invocation records (stats, logs). Must not block.
pub trait InvocationSink: Send + Sync + 'static {
    /// Takes one record.
    fn record(&self, record: InvocationRecord);
}

/// Reads uploaded component bytes by digest (the runtime's view of the artifact store).
pub trait ArtifactSource: Send + Sync + 'static {
    /// The bytes of the artifact.
    fn read(&self, digest: &Digest) -> std::io::Result<Vec<u8>>;
}

/// Live gauges of one version in the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionGauges {
    /// The function.
    pub function: FunctionName,
    /// The version.
    pub version: VersionId,
    /// Invocations running now.
    pub in_use: u64,
    /// Requests waiting for a concurrency slot.
    pub queued: u64,
}

/// A point-in-time view of the runtime, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeSnapshot {
    /// Components loaded in memory.
    pub loaded_components: u64,
    /// Bytes of compiled code those components map.
    pub loaded_bytes: u64,
    /// Instances alive now, across all functions (including idle reusable ones).
    pub instances: u64,
    /// Sum of the memory limits of the instances alive now, in bytes.
    pub instance_memory_bytes: u64,
    /// Versions the runtime tracks admission for (recently invoked ones).
    pub versions: Vec<VersionGauges>,
}

/// Read-only view of the runtime's state.
pub trait RuntimeState: Send + Sync + 'static {
    /// The current gauges.
    fn snapshot(&self) -> RuntimeSnapshot;
}
