//! The composition root of Wisp: picks the backends (SQLite metadata, a
//! local artifact directory, the wasmtime runtime), binds the listener,
//! serves the API and data plane, and shuts down gracefully.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wisp_server::ServerError> {
//! let config = wisp_server::ServerConfig::new("/var/lib/wisp");
//! wisp_server::run(config, wisp_server::shutdown_signal()).await
//! # }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
/// Compiling components, in a child process of the `wisp` binary.
pub use wisp_runtime::compile;

/// Default listen address: loopback only, so no token is needed.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default time in-flight requests get to finish after a shutdown signal.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);
/// Default time an artifact nothing refers to is kept after it was last
/// uploaded or referred to (a day, so that code uploaded ahead of the
/// function that will use it survives a slow pipeline).
pub const DEFAULT_ARTIFACT_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Default interval between sweeps of unreferenced artifacts.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);
/// Shortest interval between sweeps (a smaller one is raised to it).
pub const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// Name of the token file in the data directory.
pub const TOKEN_FILE: &str = "token";

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory (or a file the server keeps in it) is unusable,
    /// or others may write to it.
    #[error("cannot use the data directory: {0}")]
    Files(#[from] wisp_core::files::FilesError),
    /// The data directory is unusable.
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The metadata store could not be opened.
    #[error("cannot open the metadata store: {0}")]
    Store(#[from] wisp_store::StoreError),
    /// The invocation queue could not be opened.
    #[error("cannot open the invocation queue: {0}")]
    Queue(String),
    /// The runtime could not be set up.
    #[error(transparent)]
    Runtime(#[from] wisp_runtime::RuntimeError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// How to run the server. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where metadata, artifacts, compiled code and the token live.
    pub data_dir: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Time in-flight requests get after a shutdown signal.
    pub grace_period: Duration,
    /// Most instances alive at once across all functions.
    pub max_instances: u32,
    /// Most memory (MiB) the limits of all live instances may add up to.
    pub max_instance_memory_mib: u32,
    /// Idle time after which a loaded component is unloaded.
    pub idle_timeout: Duration,
    /// Most components loaded at once.
    pub max_loaded_components: usize,
    /// Most compiled code loaded at once, in MiB.
    pub max_loaded_mib: usize,
    /// Requests that may wait per version at its concurrency limit.
    pub queue_depth: u32,
    /// Longest wait for a slot before a 429.
    pub queue_timeout: Duration,
    /// Most queued, retrying and running asynchronous invocations per
    /// function; past it an enqueue is refused with 429.
    pub async_queue_depth: u64,
    /// KiB of each freed instance memory kept resident and reset in place.
    pub keep_resident_kib: usize,
    /// Largest request body forwarded to a function.
    pub max_invoke_body: usize,
    /// Require the bearer token even on a loopback address.
    pub require_token: bool,
    /// Where compiled code is cached; `<data_dir>/compiled` when `None`.
    /// Entries are keyed by digest and engine build and authenticated with
    /// the key kept in the cache directory itself, so servers may share
    /// one (and trust each other's code); a cache given here must not be
    /// writable by its group or others, and is never swept (another
    /// server's code may be in it).
    pub cache_dir: Option<PathBuf>,
    /// How long an artifact (and its compiled code) that nothing refers to
    /// is kept after it was last uploaded or referred to.
    pub artifact_grace: Duration,
    /// How often unreferenced artifacts are swept.
    pub sweep_interval: Duration,
    /// Where components are compiled (in this process unless a compiler
    /// child is given; the `wisp` binary gives itself).
    pub compiler: wisp_runtime::Compiler,
    /// Called once when start-up is over and the listener is bound, on the
    /// thread that ran start-up (the `wisp` binary gives the memory that
    /// start-up freed back to the system here). `None` by default.
    pub after_start: Option<fn()>,
}

impl ServerConfig {
    /// Defaults with the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let defaults = wisp_runtime::RuntimeConfig::new("");
        ServerConfig {
            data_dir: data_dir.into(),
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            grace_period: DEFAULT_GRACE_PERIOD,
            max_instances: defaults.max_instances,
            max_instance_memory_mib: defaults.max_instance_memory_mib,
            idle_timeout: defaults.idle_timeout,
            max_loaded_components: defaults.max_loaded_components,
            max_loaded_mib: defaults.max_loaded_bytes >> 20,
            queue_depth: defaults.queue_depth,
            queue_timeout: defaults.queue_timeout,
            async_queue_depth: wisp_queue::limits::DEFAULT_MAX_DEPTH_PER_FUNCTION,
            keep_resident_kib: defaults.keep_resident_bytes >> 10,
            max_invoke_body: wisp_core::limits::DEFAULT_MAX_INVOKE_BODY_BYTES,
            require_token: false,
            cache_dir: None,
            artifact_grace: DEFAULT_ARTIFACT_GRACE,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            compiler: defaults.compiler,
            after_start: None,
        }
    }
}

/// The default data directory (the CLI lets `--data-dir`/`WISP_DATA_DIR` override it):
/// `$XDG_DATA_HOME/wisp`, else `~/.local/share/wisp`, else `./wisp-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("wisp");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".local/share/wisp");
    }
    PathBuf::from("wisp-data")
}

/// Reads the token from the data directory, creating a random one (mode
/// 0600) on first start.
pub fn load_or_create_token(data_dir: &Path) -> Result<String, wisp_core::files::FilesError> {
    wisp_core::files::load_or_create_secret(&data_dir.join(TOKEN_FILE))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Runs the server until `shutdown` resolves, then lets in-flight requests
/// finish for up to the grace period.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let data_dir = config.data_dir.clone();
    let dir_err = |source| ServerError::DataDir {
        path: data_dir.clone(),
        source,
    };
    wisp_core::files::check_private_dir(&data_dir)?;
    let token = load_or_create_token(&data_dir)?;
    let sqlite = Arc::new(wisp_store::sqlite::SqliteStore::open(
        data_dir.join("wisp.db"),
    )?);
    let store: Arc<dyn wisp_store::MetadataStore> = sqlite.clone();
    let trigger_store: Arc<dyn wisp_store::TriggerStore> = sqlite;
    let artifacts = Arc::new(
        wisp_store::artifacts::ArtifactDir::open(data_dir.join("artifacts")).map_err(dir_err)?,
    );
    let telemetry = wisp_api::Telemetry::new(store.clone());
    let cache_dir = match &config.cache_dir {
        // A directory given is the operator's: the runtime refuses it if
        // others may write to it.
        Some(dir) => dir.clone(),
        None => {
            let own = data_dir.join("compiled");
            wisp_core::files::private_dir(&own).map_err(dir_err)?;
            own
        }
    };
    let mut runtime_config = wisp_runtime::RuntimeConfig::new(cache_dir);
    runtime_config.max_instances = config.max_instances;
    runtime_config.max_instance_memory_mib = config.max_instance_memory_mib;
    runtime_config.idle_timeout = config.idle_timeout;
    runtime_config.max_loaded_components = config.max_loaded_components;
    runtime_config.max_loaded_bytes = config.max_loaded_mib << 20;
    runtime_config.queue_depth = config.queue_depth;
    runtime_config.queue_timeout = config.queue_timeout;
    runtime_config.keep_resident_bytes = config.keep_resident_kib << 10;
    runtime_config.compiler = config.compiler.clone();
    let runtime = wisp_runtime::Runtime::new(runtime_config, artifacts.clone(), telemetry.clone())?;
    // Only a cache of this server's own is swept of compiled code.
    let own_cache = config.cache_dir.is_none().then(|| runtime.clone());

    // Versions with min_instances are loaded before their first request.
    let warm_store = store.clone();
    let warm_runtime = runtime.clone();
    tokio::spawn(async move {
        match warm_store.warm_deployments().await {
            Ok(deployments) => {
                for d in deployments {
                    let (f, v) = (d.function.clone(), d.version);
                    if let Err(e) = wisp_core::Invoker::warm(&warm_runtime, d).await {
                        tracing::warn!(function = %f, version = %v, error = %e, "could not warm");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not list versions to warm"),
        }
    });

    let queue: Arc<dyn wisp_queue::InvocationQueue> = Arc::new(
        wisp_queue::sqlite::SqliteQueue::open_with(
            data_dir.join("queue.db"),
            wisp_queue::sqlite::QueueOptions {
                limits: wisp_queue::QueueLimits {
                    max_depth_per_function: config.async_queue_depth,
                },
                ..Default::default()
            },
        )
        .map_err(|e| ServerError::Queue(e.to_string()))?,
    );
    let needs_token = config.require_token || !config.listen.ip().is_loopback();
    let app = Arc::new_cyclic(|weak: &std::sync::Weak<wisp_api::App>| wisp_api::App {
        triggers: wisp_triggers::Manager::new(
            Arc::new(wisp_api::triggers::QueueSink(weak.clone())),
            Arc::new(wisp_api::triggers::QueueSink(weak.clone())),
        ),
        trigger_store,
        store,
        artifacts: wisp_api::Artifacts::new(artifacts),
        preparer: Arc::new(runtime.clone()),
        invoker: Arc::new(runtime.clone()),
        runtime_state: Arc::new(runtime),
        queue,
        dispatcher_wake: tokio::sync::Notify::new(),
        telemetry,
        token: needs_token.then_some(token),
        max_invoke_body: config.max_invoke_body,
    });

    // This server is the queue's only executor: leases held before a
    // restart belong to nobody now, so their invocations run again (an
    // at-most-once invocation that had started is failed, never re-run).
    match app.queue.expire_leases().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            invocations = n,
            "redelivering invocations leased before the restart"
        ),
        Err(e) => tracing::warn!(error = %e, "could not expire old leases"),
    }
    wisp_api::asynchronous::Dispatcher::start(app.clone());
    start_triggers(&app).await;
    start_sweeper(
        app.clone(),
        own_cache,
        config.sweep_interval,
        config.artifact_grace,
    );

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(ServerError::Serve)?;
    if let Some(hook) = config.after_start {
        hook();
    }
    // Tests and scripts read this line to find an ephemeral port.
    println!("wisp listening on http://{local}");
    tracing::info!(%local, data_dir = %data_dir.display(), token_required = needs_token, "wisp server started");
    let addr_file = data_dir.join("address");
    let _ = wisp_core::files::replace_private(&addr_file, format!("http://{local}\n").as_bytes());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut graceful = stop_rx.clone();
    let app_for_stop = app.clone();
    // No Nagle delay: a streamed response's later small writes would
    // otherwise wait for the client's (delayed) acknowledgement of the
    // first, up to 40 ms each on Linux.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let serve = axum::serve(listener, wisp_api::Surface::new(app).into_make_service())
        .with_graceful_shutdown(async move {
            let _ = graceful.wait_for(|stop| *stop).await;
            tracing::info!("shutting down: no new connections, finishing in-flight requests");
        });
    let mut deadline = stop_rx;
    let grace = config.grace_period;
    let result = tokio::select! {
        r = serve => r.map_err(ServerError::Serve),
        _ = async move {
            let _ = deadline.wait_for(|stop| *stop).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_secs = grace.as_secs_f64(), "grace period over; dropping unfinished requests");
            Ok(())
        }
    };
    let _ = std::fs::remove_file(&addr_file);
    app_for_stop.triggers.shutdown().await;
    tracing::info!("wisp server stopped");
    result
}

/// Every `interval` (the first time one interval after start), removes the
/// artifacts nothing refers to any more, and their compiled code from
/// `own_cache`, once they are older than `grace`.
fn start_sweeper(
    app: wisp_api::AppState,
    own_cache: Option<wisp_runtime::Runtime>,
    interval: Duration,
    grace: Duration,
) {
    let interval = interval.max(MIN_SWEEP_INTERVAL);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Counted on /metrics and logged.
        let report = |what: &str, swept: wisp_core::Swept| {
            app.artifacts.record_swept(swept);
            if swept.files > 0 {
                tracing::info!(
                    files = swept.files,
                    bytes = swept.bytes,
                    "removed {what} nothing refers to"
                );
            }
        };
        loop {
            tick.tick().await;
            // Compiled code goes with its artifact.
            let stored = match app.artifacts.sweep(app.store.as_ref(), grace).await {
                Ok((stored, swept)) => {
                    report("artifacts", swept);
                    stored
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sweep of unreferenced artifacts failed; will retry");
                    continue;
                }
            };
            let Some(runtime) = own_cache.clone() else {
                continue;
            };
            let swept = tokio::task::spawn_blocking(move || runtime.sweep_compiled(&stored, grace))
                .await
                .map_err(std::io::Error::other)
                .and_then(|swept| swept);
            match swept {
                Ok(swept) => report("compiled code", swept),
                Err(e) => tracing::warn!(error = %e, "sweep of compiled code failed; will retry"),
            }
        }
    });
}

/// Starts the source of every stored trigger. A trigger whose definition
/// no longer parses is logged and left stopped.
async fn start_triggers(app: &wisp_api::AppState) {
    let stored = match app.trigger_store.list_triggers().await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "could not list triggers; none started");
            return;
        }
    };
    for t in stored {
        match serde_json::from_str::<wisp_triggers::TriggerSpec>(&t.spec) {
            Ok(spec) => app.triggers.apply(wisp_triggers::Trigger {
                name: t.name,
                spec,
                created_at: t.created_at,
                updated_at: t.updated_at,
            }),
            Err(e) => {
                tracing::error!(trigger = %t.name, error = %e, "stored trigger is unreadable; not started")
            }
        }
    }
}
