//! The data-plane runtime of Wisp: validates and compiles `wasi:http/proxy`
//! components at deploy time ([`Preparer`]), caches the compiled form on
//! disk keyed by digest and engine, and runs each invocation in an instance
//! from wasmtime's pooling allocator ([`Invoker`]), with the function's
//! memory limit, timeout and concurrency enforced and requests over the
//! limit queued briefly, then refused.
//!
//! Components are loaded on first use and unloaded when idle or when the
//! loaded set exceeds its caps; versions with `min_instances` stay loaded.
//!
//! ```no_run
//! # async fn demo(artifacts: std::sync::Arc<dyn wisp_core::ArtifactSource>,
//! #               sink: std::sync::Arc<dyn wisp_core::InvocationSink>) -> Result<(), wisp_runtime::RuntimeError> {
//! use wisp_runtime::{Runtime, RuntimeConfig};
//!
//! let runtime = Runtime::new(RuntimeConfig::new("/var/lib/wisp/compiled"), artifacts, sink)?;
//! // `runtime` implements `wisp_core::Preparer`, `Invoker` and `RuntimeState`.
//! # Ok(()) }
//! ```

mod cache;
mod capture;
pub mod compile;
mod host;
mod invoke;
mod lanes;
mod pool;
mod response_body;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wisp_core::PrepareError as PE;
use wisp_core::{
    ArtifactSource, BoxFuture, CompileSlot, Digest, InvocationSink, PrepareError, Preparer,
};

pub use cache::tag_compiled;
pub use compile::{ChildCompiler, Compiler};
pub use host::Host;

/// Errors setting up the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// wasmtime refused the engine configuration.
    #[error("could not configure the WebAssembly engine: {0}")]
    Engine(String),
    /// The compiled-code cache directory may be written by others, or its
    /// key could not be read or made.
    #[error("could not use the compiled-code cache: {0}")]
    Files(#[from] wisp_core::files::FilesError),
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
    /// Most memory, in MiB, that the limits of all live instances may add up to.
    pub max_instance_memory_mib: u32,
    /// Interval of the epoch ticker: a running guest yields its lane at
    /// every tick, so this is the longest slice of CPU it takes before
    /// another function's invocation may run.
    pub epoch_tick: Duration,
    /// Bytes of stdout, and of stderr, kept per invocation.
    pub log_limit: usize,
    /// A loaded component (or idle reusable instance) unused this long is unloaded.
    pub idle_timeout: Duration,
    /// Most components loaded at once; least recently used go first.
    pub max_loaded_components: usize,
    /// Most bytes of compiled code loaded at once.
    pub max_loaded_bytes: usize,
    /// Requests that may wait per version when it is at `max_concurrency`.
    pub queue_depth: u32,
    /// Longest a request waits for a slot before it is refused with 429.
    pub queue_timeout: Duration,
    /// Bytes of each freed linear memory kept resident and reset in place
    /// rather than returned to the kernel.
    pub keep_resident_bytes: usize,
    /// Where components are compiled: in this process, or in a child.
    pub compiler: Compiler,
}

impl RuntimeConfig {
    /// Defaults with the given cache directory.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        RuntimeConfig {
            cache_dir: cache_dir.into(),
            max_instances: 1000,
            max_instance_memory_mib: 64 * 1024,
            epoch_tick: Duration::from_millis(1),
            log_limit: wisp_core::limits::MAX_LOG_BYTES_PER_STREAM,
            idle_timeout: Duration::from_secs(300),
            max_loaded_components: 1000,
            max_loaded_bytes: 2 << 30,
            queue_depth: 100,
            queue_timeout: Duration::from_secs(1),
            keep_resident_bytes: 4 << 20,
            compiler: Compiler::InProcess,
        }
    }
}

pub(crate) struct Inner {
    engine: Engine,
    linker: Linker<Host>,
    cache: cache::CompiledCache,
    artifacts: Arc<dyn ArtifactSource>,
    sink: Arc<dyn InvocationSink>,
    pool: pool::Pool,
    config: RuntimeConfig,
    /// Compiles at once: one per core, so that a burst of deploys queues
    /// rather than running a compiler (and its memory) per upload. Uploads
    /// take their slot before their body is read ([`Preparer::reserve`]).
    compiles: Arc<tokio::sync::Semaphore>,
    /// Guests run only while holding one of these: one per worker thread,
    /// shared fairly between functions (see [`lanes`]).
    lanes: Arc<lanes::Lanes>,
}

/// The wasmtime runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

fn engine_config(max_instances: u32, keep_resident: usize, compiles_here: bool) -> Config {
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
        .table_elements(100_000)
        // Reset a freed slot's dirty pages in place (found with the
        // PAGEMAP_SCAN ioctl where the kernel has it, else by memset of the
        // low bytes) instead of madvise: the pages stay resident, so the
        // next instance takes no page faults and no TLB shootdown. Measured
        // about 30% less server CPU per request for `hello`.
        .linear_memory_keep_resident(keep_resident)
        .table_keep_resident(64 << 10)
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut config = compile::base_config();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    if !compiles_here {
        // Compiles run in a child: without a compiler of its own the
        // server's engine never builds Cranelift's target description, so
        // none of Cranelift's code is paged in. Compiled components load
        // the same way: wasmtime checks each one's compile settings against
        // this host whether or not the engine could compile.
        config.enable_compiler(false);
    }
    config
}

/// `wasi:cli/environment` as Wisp serves it: from the store's per-request
/// context, so reused instances see the current request's context.
fn link_environment(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut env = linker.instance("wasi:cli/environment@0.2.12")?;
    env.func_wrap(
        "get-environment",
        |store: wasmtime::StoreContextMut<'_, Host>, (): ()| Ok((store.data().context.env(),)),
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

impl Runtime {
    /// Builds the engine, the linker with the whole WASI 0.2 set, and starts
    /// the epoch ticker and the idle sweeper. Must be called inside a tokio
    /// runtime.
    pub fn new(
        config: RuntimeConfig,
        artifacts: Arc<dyn ArtifactSource>,
        sink: Arc<dyn InvocationSink>,
    ) -> Result<Self, RuntimeError> {
        let engine_err = |e: wasmtime::Error| RuntimeError::Engine(format!("{e:?}"));
        let engine = Engine::new(&engine_config(
            config.max_instances,
            config.keep_resident_bytes,
            matches!(config.compiler, Compiler::InProcess),
        ))
        .map_err(engine_err)?;
        let mut linker = Linker::new(&engine);
        // The whole WASI 0.2 set, so components from real SDKs link; the
        // capabilities behind it (files, sockets, outbound HTTP) are denied
        // per store. Imports at older 0.2.x minors resolve to these by semver.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_err)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(engine_err)?;
        link_environment(&mut linker).map_err(engine_err)?;
        let cache = cache::CompiledCache::open(&config.cache_dir, &engine)?;
        let inner = Arc::new(Inner {
            engine,
            linker,
            cache,
            artifacts,
            sink,
            pool: pool::Pool::new(&config),
            config: config.clone(),
            compiles: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
            lanes: Arc::new(lanes::Lanes::new(
                tokio::runtime::Handle::try_current()
                    .map(|h| h.metrics().num_workers())
                    .unwrap_or_else(|_| {
                        std::thread::available_parallelism().map_or(1, |n| n.get())
                    }),
            )),
        });
        start_epoch_ticker(Arc::downgrade(&inner), config.epoch_tick);
        pool::start_sweeper(Arc::downgrade(&inner));
        Ok(Runtime { inner })
    }

    /// Number of components currently loaded in memory.
    pub fn loaded_components(&self) -> usize {
        self.inner.pool.loaded_count()
    }

    /// Removes from the cache of compiled code every component whose digest
    /// is not in `keep` (the artifacts still stored) and that was compiled
    /// more than `grace` ago (an upload compiles before it stores), and
    /// earlier engine builds' code (blocking file I/O). Code removed and
    /// needed after all is compiled again from its artifact.
    pub fn sweep_compiled(
        &self,
        keep: &std::collections::HashSet<Digest>,
        grace: Duration,
    ) -> std::io::Result<wisp_core::Swept> {
        self.inner.cache.sweep(keep, grace)
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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

/// The checks that need no compiler: is this a component at all.
fn check_header(bytes: &[u8]) -> Result<(), PrepareError> {
    if bytes.len() < 8 || bytes[..4] != *b"\0asm" {
        return Err(PE::Invalid(
            "not a WebAssembly binary (it does not start with \\0asm)".into(),
        ));
    }
    if is_core_module(bytes) {
        return Err(PE::Invalid(
            "this is a core WebAssembly module, not a component; build for the \
             wasm32-wasip2 target or wrap it with `wasm-tools component new`"
                .into(),
        ));
    }
    Ok(())
}

/// Runs blocking work (file reads, mapping compiled code, linking) off the
/// async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PrepareError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| PE::Internal(format!("a runtime task failed: {e}")))
}

impl Inner {
    /// Waits for a compile slot.
    async fn compile_slot(&self) -> Result<CompileSlot, PrepareError> {
        let permit = self
            .compiles
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PE::Internal("the runtime is shutting down".into()))?;
        Ok(CompileSlot::new(permit))
    }

    /// Compiles `bytes` (which validates them) with the configured
    /// [`Compiler`] and puts the compiled form in the cache, in `slot` or
    /// else in a slot it waits for.
    async fn compile_into_cache(
        self: &Arc<Self>,
        digest: &Digest,
        bytes: bytes::Bytes,
        slot: Option<CompileSlot>,
    ) -> Result<Component, PrepareError> {
        check_header(&bytes)?;
        let _turn = match slot {
            Some(slot) => slot,
            None => self.compile_slot().await?,
        };
        let (me, d) = (self.clone(), digest.clone());
        match &self.config.compiler {
            Compiler::InProcess => {
                blocking(move || {
                    let component = Component::new(&me.engine, &bytes)
                        .map_err(|e| PE::Invalid(format!("invalid component: {e:#}")))?;
                    me.cache
                        .store(&d, &component)
                        .map_err(|e| PE::Internal(format!("caching the compiled code: {e}")))?;
                    Ok(component)
                })
                .await?
            }
            Compiler::Child(child) => {
                let out = self.cache.temp_file(digest);
                compile::in_child(child, bytes, out.path())
                    .await
                    .map_err(|e| match e {
                        compile::ChildError::Invalid(m) => PE::Invalid(m),
                        e @ (compile::ChildError::OutOfMemory { .. }
                        | compile::ChildError::Timeout(_)) => PE::CompileLimit(e.to_string()),
                        e @ compile::ChildError::Failed(_) => PE::Internal(e.to_string()),
                    })?;
                blocking(move || {
                    me.cache
                        .install(out, &d)
                        .map_err(|e| PE::Internal(format!("caching the compiled code: {e}")))?;
                    me.cache.load(&me.engine, &d).ok_or_else(|| {
                        PE::Internal(
                            "the compiler process wrote code this server cannot load \
                             (see the server log)"
                                .into(),
                        )
                    })
                })
                .await?
            }
        }
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

    /// The compiled component of `digest` from the cache, if it has it.
    async fn cached(self: &Arc<Self>, digest: &Digest) -> Result<Option<Component>, PrepareError> {
        let (me, d) = (self.clone(), digest.clone());
        blocking(move || me.cache.load(&me.engine, &d)).await
    }

    /// The compiled component from the cache, or compiled from its
    /// artifact (and cached) when the cache does not have it; then linked.
    async fn load(self: Arc<Self>, digest: Digest) -> Result<pool::Loaded, String> {
        let cached = self.cached(&digest).await.map_err(|e| e.to_string())?;
        let component = match cached {
            Some(component) => component,
            None => {
                let (me, d) = (self.clone(), digest.clone());
                let bytes = blocking(move || me.artifacts.read(&d))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("cannot read artifact {digest}: {e}"))?;
                self.compile_into_cache(&digest, bytes.into(), None)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        blocking(move || {
            let range = component.image_range();
            let bytes = (range.end as usize).saturating_sub(range.start as usize);
            let pre = self.link(&component)?;
            Ok(pool::Loaded { pre, bytes })
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

impl Preparer for Runtime {
    fn reserve(&self) -> BoxFuture<'_, Result<CompileSlot, PrepareError>> {
        Box::pin(self.inner.compile_slot())
    }

    fn prepare(
        &self,
        slot: CompileSlot,
        digest: Digest,
        bytes: bytes::Bytes,
    ) -> BoxFuture<'_, Result<(), PrepareError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            // Compiled before by this engine build: it was validated then;
            // only the link check depends on this server.
            let component = match inner.cached(&digest).await? {
                Some(component) => component,
                None => inner.compile_into_cache(&digest, bytes, Some(slot)).await?,
            };
            blocking(move || inner.link(&component).map(drop).map_err(PE::Invalid)).await?
        })
    }
}
