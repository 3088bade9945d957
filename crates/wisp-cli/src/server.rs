//! `wisp server`: logging, the tokio runtime and [`wisp_server::run`].

use crate::parse;
use clap::Args;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Where metadata, artifacts, compiled code and the token live
    /// [default: $XDG_DATA_HOME/wisp, else ~/.local/share/wisp]
    #[arg(long, env = "WISP_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on; off loopback the control API requires the token
    #[arg(long, env = "WISP_LISTEN", value_name = "ADDR", default_value = wisp_server::DEFAULT_LISTEN, value_parser = parse::listen)]
    pub listen: SocketAddr,
    /// Seconds in-flight requests get to finish after SIGTERM or Ctrl-C
    #[arg(long, env = "WISP_GRACE_PERIOD", value_name = "SECS", default_value = "30", value_parser = parse::seconds)]
    pub grace_period: Duration,
    /// Most function instances alive at once
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_instances: u32,
    /// Most memory, in MiB, the limits of all live instances may add up to
    #[arg(long, value_name = "MIB", default_value_t = 65536)]
    pub max_instance_memory_mib: u32,
    /// Seconds a loaded component may sit unused before it is unloaded
    #[arg(long, env = "WISP_IDLE_TIMEOUT", value_name = "SECS", default_value = "300", value_parser = parse::seconds)]
    pub idle_timeout: Duration,
    /// Most components loaded in memory at once (least recently used go first)
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_loaded: usize,
    /// Most compiled code loaded in memory at once, in MiB
    #[arg(long, value_name = "MIB", default_value_t = 2048)]
    pub max_loaded_mib: usize,
    /// Requests that may wait per function version at its concurrency limit
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub queue_depth: u32,
    /// Milliseconds a request may wait for a slot before a 429
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub queue_timeout_ms: u64,
    /// Most queued, retrying and running asynchronous invocations per
    /// function (1 to 1000000); past it new events are refused with 429
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub async_queue_depth: u64,
    /// KiB of each freed instance memory kept resident and reset in place
    /// (faster reuse of the slot; costs at most this much RSS per slot)
    #[arg(long, value_name = "KIB", default_value_t = 4096)]
    pub keep_resident_kib: usize,
    /// Most memory, in MiB, one compile of an uploaded component may use
    /// (components are compiled in a child process; 16 to 1048576)
    #[arg(long, value_name = "MIB", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(16..=1_048_576))]
    pub compile_memory_mib: u64,
    /// Seconds one compile of an uploaded component may take (1 to 3600)
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub compile_timeout_secs: u64,
    /// Where compiled code is cached [default: DATA_DIR/compiled]
    #[arg(long, env = "WISP_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Seconds an uploaded component that no function or version refers to
    /// (and its compiled code) is kept after it was last uploaded or
    /// referred to; then the sweep removes it
    #[arg(long, env = "WISP_ARTIFACT_GRACE", value_name = "SECS", default_value = "86400", value_parser = parse::seconds)]
    pub artifact_grace: Duration,
    /// Seconds between sweeps of unreferenced components (at least 0.1)
    #[arg(long, value_name = "SECS", default_value = "3600", value_parser = parse::seconds)]
    pub sweep_interval: Duration,
    /// Require the bearer token even on a loopback address
    #[arg(long)]
    pub require_token: bool,
}

/// Components are compiled by this same binary in a child process
/// (`wisp compile-component`), so the compiler's memory never joins the
/// server's and a compiler failure cannot end the server.
fn compiler(memory_limit_mib: u64, timeout_secs: u64) -> wisp_server::compile::Compiler {
    use wisp_server::compile::{ChildCompiler, Compiler};
    let program = match wisp_server::compile::this_binary() {
        Ok(program) => program,
        Err(e) => {
            eprintln!("wisp: cannot open this program ({e}); compiling in the server process");
            return Compiler::InProcess;
        }
    };
    Compiler::Child(ChildCompiler {
        program,
        args: vec![crate::COMPILE_COMMAND.into()],
        memory_limit_mib,
        // mimalloc reserves address space 1 GiB at a time, which the
        // child's data-size limit would count as used: take it in small
        // steps so that the limit measures what the compiler uses.
        env: vec![("MIMALLOC_ARENA_RESERVE".into(), "8MiB".into())],
        timeout: Duration::from_secs(timeout_secs),
    })
}

/// Runs the server until SIGTERM or Ctrl-C.
pub fn run(args: ServerArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let data_dir = args.data_dir.unwrap_or_else(wisp_server::default_data_dir);
    let mut config = wisp_server::ServerConfig::new(data_dir.clone());
    config.listen = args.listen;
    config.grace_period = args.grace_period;
    config.max_instances = args.max_instances;
    config.max_instance_memory_mib = args.max_instance_memory_mib;
    config.idle_timeout = args.idle_timeout;
    config.max_loaded_components = args.max_loaded;
    config.max_loaded_mib = args.max_loaded_mib;
    config.queue_depth = args.queue_depth;
    config.queue_timeout = Duration::from_millis(args.queue_timeout_ms);
    config.async_queue_depth = args.async_queue_depth;
    config.keep_resident_kib = args.keep_resident_kib;
    config.require_token = args.require_token;
    config.cache_dir = args.cache_dir;
    config.artifact_grace = args.artifact_grace;
    config.sweep_interval = args.sweep_interval;
    config.compiler = compiler(args.compile_memory_mib, args.compile_timeout_secs);
    config.after_start = Some(crate::alloc::release_free_memory);

    if args.require_token || !args.listen.ip().is_loopback() {
        eprintln!(
            "wisp: the control API requires a bearer token; it is in {} \
             (give it to the CLI with --token or WISP_TOKEN)",
            data_dir.join(wisp_server::TOKEN_FILE).display()
        );
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(wisp_server::run(config, wisp_server::shutdown_signal()));
    // Background tasks (log writer, blocking I/O) get a moment, not forever.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
