//! The data-plane runtime of Wisp: validates and compiles `wasi:http/proxy`
//! components at deploy time ([`Preparer`]), caches the compiled form on
//! disk keyed by digest and engine, and runs each invocation in a fresh
//! instance from wasmtime's pooling allocator ([`Invoker`]), with the
//! function's memory limit, timeout and concurrency enforced.
//!
//! ```no_run
//! # async fn demo(artifacts: std::sync::Arc<dyn wisp_core::ArtifactSource>,
//! #               sink: std::sync::Arc<dyn wisp_core::InvocationSink>) -> Result<(), wisp_runtime::RuntimeError> {
//! use wisp_runtime::{Runtime, RuntimeConfig};
//!
//! let runtime = Runtime::new(RuntimeConfig::new("/var/lib/wisp/compiled"), artifacts, sink)?;
//! // `runtime` implements `wisp_core::Preparer` and `wisp_core::Invoker`.
//! # Ok(()) }
//! ```

mod cache;
mod capture;
mod host;
mod invoke;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{OnceCell, Semaphore};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wisp_core::{ArtifactSource, BoxFuture, Digest, InvocationSink, PrepareError, Preparer};

pub use host::Host;

/// Errors setting up the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// wasmtime refused the engine configuration.
    #[error("could not configure the WebAssembly engine: {0}")]
    Engine(String),
    /// The compiled-artifact cache directory is unusable.
    #[error("could not use the compiled-artifact cache at {path}: {source}")]
    Cache {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Tunables of the runtime. Defaults are documented in `docs/limits.md`.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Directory for compiled artifacts; a subdirectory per engine build is used.
    pub cache_dir: PathBuf,
    /// Most instances alive at once across all functions (pool size).
    pub max_instances: u32,
    /// Interval of the epoch ticker that lets long-running guests be
    /// interrupted.
    pub epoch_tick: Duration,
    /// Bytes of stdout, and of stderr, kept per invocation.
    pub log_limit: usize,
}

impl RuntimeConfig {
    /// Defaults with the given cache directory.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        RuntimeConfig {
            cache_dir: cache_dir.into(),
            max_instances: 1000,
            epoch_tick: Duration::from_millis(10),
            log_limit: wisp_core::limits::MAX_LOG_BYTES_PER_STREAM,
        }
    }
}

type Loaded = Arc<OnceCell<Result<ProxyPre<Host>, String>>>;

pub(crate) struct Inner {
    engine: Engine,
    linker: Linker<Host>,
    cache: cache::CompiledCache,
    artifacts: Arc<dyn ArtifactSource>,
    sink: Arc<dyn InvocationSink>,
    loaded: Mutex<HashMap<Digest, Loaded>>,
    concurrency: Mutex<HashMap<String, (u32, Arc<Semaphore>)>>,
    instances: Arc<Semaphore>,
    log_limit: usize,
}

/// The wasmtime runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

fn engine_config(max_instances: u32) -> Config {
    let mut pool = PoolingAllocationConfig::new();
    let n = max_instances.max(1);
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(8))
        .total_stacks(n)
        .max_memory_size(wisp_core::limits::MAX_MEMORY_MIB as usize * 1024 * 1024)
        // Components built by real toolchains carry several core modules
        // (the program plus adapter and shim modules), with large
        // component-level state.
        .max_component_instance_size(4 << 20)
        .max_core_instance_size(4 << 20)
        .table_elements(100_000);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

impl Runtime {
    /// Builds the engine, the linker with the whole WASI 0.2 set, and starts
    /// the epoch ticker. Must be called inside a tokio runtime.
    pub fn new(
        config: RuntimeConfig,
        artifacts: Arc<dyn ArtifactSource>,
        sink: Arc<dyn InvocationSink>,
    ) -> Result<Self, RuntimeError> {
        let engine = Engine::new(&engine_config(config.max_instances))
            .map_err(|e| RuntimeError::Engine(format!("{e:?}")))?;
        let mut linker = Linker::new(&engine);
        // The whole WASI 0.2 set, so components from real SDKs link; the
        // capabilities behind it (files, sockets, outbound HTTP) are denied
        // per store. Imports at older 0.2.x minors resolve to these by semver.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("{e:?}")))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("{e:?}")))?;
        let cache = cache::CompiledCache::open(&config.cache_dir, &engine)?;
        let inner = Arc::new(Inner {
            engine,
            linker,
            cache,
            artifacts,
            sink,
            loaded: Mutex::new(HashMap::new()),
            concurrency: Mutex::new(HashMap::new()),
            instances: Arc::new(Semaphore::new(config.max_instances.max(1) as usize)),
            log_limit: config.log_limit,
        });
        start_epoch_ticker(Arc::downgrade(&inner), config.epoch_tick);
        Ok(Runtime { inner })
    }

    /// Number of components currently loaded in memory.
    pub fn loaded_components(&self) -> usize {
        lock(&self.inner.loaded).len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn start_epoch_ticker(inner: Weak<Inner>, tick: Duration) {
    std::thread::Builder::new()
        .name("wisp-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match inner.upgrade() {
                    Some(inner) => inner.engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .expect("spawning the epoch thread");
}

/// A core module starts with `\0asm` and version 1; a component with the
/// same magic and a different version/layer word.
fn is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

impl Inner {
    /// Compiles, links and checks the proxy world: everything that can be
    /// known about a component without running it.
    fn compile(&self, bytes: &[u8]) -> Result<(Component, ProxyPre<Host>), PrepareError> {
        if bytes.len() < 8 || bytes[..4] != *b"\0asm" {
            return Err(PrepareError::Invalid(
                "not a WebAssembly binary (it does not start with \\0asm)".into(),
            ));
        }
        if is_core_module(bytes) {
            return Err(PrepareError::Invalid(
                "this is a core WebAssembly module, not a component; build for the \
                 wasm32-wasip2 target or wrap it with `wasm-tools component new`"
                    .into(),
            ));
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| PrepareError::Invalid(format!("invalid component: {e:#}")))?;
        let pre = self.link(&component).map_err(PrepareError::Invalid)?;
        Ok((component, pre))
    }

    fn link(&self, component: &Component) -> Result<ProxyPre<Host>, String> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| format!("the component imports something Wisp does not provide: {e:#}"))?;
        ProxyPre::new(pre).map_err(|e| {
            format!(
                "the component does not export `wasi:http/incoming-handler@0.2.x`, \
                 so it is not a wasi:http/proxy component: {e:#}"
            )
        })
    }

    /// Loads a component for the request path: from the compiled cache when
    /// present, else by compiling the artifact (and caching it). Single-flight
    /// per digest. Returns the pre-linked component and, when this call did
    /// the loading, how long it took.
    async fn load(
        self: &Arc<Self>,
        digest: &Digest,
    ) -> Result<(ProxyPre<Host>, Option<Duration>), String> {
        let cell = lock(&self.loaded)
            .entry(digest.clone())
            .or_default()
            .clone();
        let mut did_load = None;
        let result = cell
            .get_or_init(|| async {
                let started = Instant::now();
                let inner = self.clone();
                let digest = digest.clone();
                let result = tokio::task::spawn_blocking(move || inner.load_blocking(&digest))
                    .await
                    .unwrap_or_else(|e| Err(format!("loading task failed: {e}")));
                did_load = Some(started.elapsed());
                result
            })
            .await;
        match result {
            Ok(pre) => Ok((pre.clone(), did_load)),
            Err(e) => {
                // Do not cache failures: the next request tries again.
                let message = e.clone();
                lock(&self.loaded).remove(digest);
                Err(message)
            }
        }
    }

    fn load_blocking(&self, digest: &Digest) -> Result<ProxyPre<Host>, String> {
        if let Some(component) = self.cache.load(&self.engine, digest) {
            return self.link(&component);
        }
        let bytes = self
            .artifacts
            .read(digest)
            .map_err(|e| format!("cannot read artifact {digest}: {e}"))?;
        let (component, pre) = self.compile(&bytes).map_err(|e| e.to_string())?;
        if let Err(e) = self.cache.store(digest, &component) {
            tracing::warn!(%digest, error = %e, "could not cache compiled component");
        }
        Ok(pre)
    }
}

impl Preparer for Runtime {
    fn prepare(
        &self,
        digest: Digest,
        bytes: bytes::Bytes,
    ) -> BoxFuture<'_, Result<(), PrepareError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                // Compiled before by this engine build: it was validated
                // then; only the link check depends on this server.
                if let Some(component) = inner.cache.load(&inner.engine, &digest) {
                    return inner
                        .link(&component)
                        .map(drop)
                        .map_err(PrepareError::Invalid);
                }
                let (component, _pre) = inner.compile(&bytes)?;
                inner
                    .cache
                    .store(&digest, &component)
                    .map_err(|e| PrepareError::Internal(format!("caching the compiled code: {e}")))
            })
            .await
            .map_err(|e| PrepareError::Internal(format!("compile task failed: {e}")))?
        })
    }
}
