//! `wisp`: runs the Wisp server (`wisp server`) and drives one over its REST
//! API (create, update, publish, invoke, logs, deploy, ...).
//!
//! Exit codes: 0 on success, 1 when the server refused the request (or an
//! invoked function answered with a non-2xx status), 2 for usage and
//! connection errors.

mod alloc;
mod commands;
mod config;
mod deploy;
mod manifest;
mod output;
mod parse;
mod server;
mod triggers;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use wisp_client::{Client, ClientError};

/// mimalloc rather than the system allocator: see the dependency's note in
/// `Cargo.toml` (and bench/analysis/throughput.md for the measurement).
#[global_allocator]
static ALLOCATOR: alloc::MiMalloc = alloc::MiMalloc;

/// Run and drive a Wisp server.
#[derive(Debug, Parser)]
#[command(name = "wisp", version)]
struct Cli {
    /// URL of the Wisp server [default: `server` in the config file, else http://127.0.0.1:8080]
    #[arg(long, global = true, env = "WISP_SERVER", value_name = "URL")]
    server: Option<String>,
    /// Bearer token for the control API [default: `token` in the config file]
    #[arg(
        long,
        global = true,
        env = "WISP_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Print the server's JSON responses instead of text
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// The hidden subcommand the server runs to compile in a child process.
const COMPILE_COMMAND: &str = "compile-component";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: control API, data plane and runtime in one process
    Server(server::ServerArgs),
    /// Compile a component read from stdin (the server runs this itself,
    /// in a child process, for every upload it compiles)
    #[command(name = COMPILE_COMMAND, hide = true)]
    CompileComponent {
        /// Where to write the compiled form
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Most memory, in MiB, the compile may use
        #[arg(long, value_name = "MIB")]
        memory_limit_mib: u64,
    },
    /// Upload a component and create a function running it
    Create(CreateArgs),
    /// Change a function's code or configuration (only the given fields)
    Update(UpdateArgs),
    /// Show a function (NAME), a published version (NAME:N) or an alias (NAME:ALIAS)
    Get {
        /// NAME[:VERSION|:ALIAS]
        target: String,
    },
    /// List functions
    List {
        /// Only functions with this label (repeat to require several)
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse::key_value)]
        labels: Vec<(String, String)>,
    },
    /// Delete a function (NAME) or one published version (NAME:VERSION)
    Delete {
        /// NAME or NAME:VERSION
        target: String,
    },
    /// Publish `latest` as a new immutable version
    Publish {
        /// Function name
        name: String,
    },
    /// List a function's published versions
    Versions {
        /// Function name
        name: String,
    },
    /// Manage aliases: named pointers at versions, with weighted routing
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Send an HTTP request to a function and print its response body
    Invoke(commands::InvokeArgs),
    /// Print a function's captured stdout and stderr
    Logs(commands::LogsArgs),
    /// List a function's recent asynchronous invocations (from `invoke --async`)
    Invocations {
        /// Function name
        name: String,
    },
    /// Inspect, delete and replay dead letters: asynchronous invocations that failed every attempt
    #[command(subcommand)]
    Dlq(commands::DlqCommand),
    /// Manage triggers: event sources (cron, webhooks, NATS, RabbitMQ, MQTT, Redis) connected to functions
    #[command(subcommand)]
    Trigger(triggers::TriggerCommand),
    /// Show invocation counts and latencies over the last 15 minutes
    Stats {
        /// Function name
        name: String,
    },
    /// Apply a wisp.toml manifest: build, upload, create or update, publish
    Deploy {
        /// The manifest, or a directory holding a wisp.toml
        #[arg(long, short = 'f', value_name = "PATH", default_value = "wisp.toml")]
        file: PathBuf,
        /// Publish a version of each function after applying it
        #[arg(long)]
        publish: bool,
    },
}

/// Configuration flags shared by `create` and `update`.
#[derive(Debug, Args)]
pub struct ConfigFlags {
    /// Free-text description
    #[arg(long)]
    pub description: Option<String>,
    /// A label (repeatable; given labels replace all existing ones)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse::key_value)]
    pub labels: Vec<(String, String)>,
    /// An environment variable (repeatable; given variables replace all existing ones)
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse::key_value)]
    pub env: Vec<(String, String)>,
    /// Memory limit in MiB
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u32>,
    /// Timeout per invocation in milliseconds
    #[arg(long, value_name = "MS")]
    pub timeout: Option<u64>,
    /// Most invocations running at once
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
    /// Instances kept warm even when idle (0 scales to zero)
    #[arg(long, value_name = "N")]
    pub min_instances: Option<u32>,
    /// Requests one instance may serve before a fresh one is made (1 = always fresh)
    #[arg(long, value_name = "N")]
    pub reuse: Option<u32>,
    /// Who may invoke through /fn/: `private` (the default; the server's token
    /// wherever /v1 needs it) or `public` (synchronous calls need no token)
    #[arg(long, value_name = "MODE")]
    pub invoke_auth: Option<wisp_core::InvokeAuth>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Function name
    pub name: String,
    /// The component (.wasm) to run
    #[arg(long, value_name = "PATH")]
    pub wasm: PathBuf,
    #[command(flatten)]
    pub config: ConfigFlags,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Function name
    pub name: String,
    /// A new component (.wasm) to run
    #[arg(long, value_name = "PATH")]
    pub wasm: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigFlags,
}

#[derive(Debug, Subcommand)]
enum AliasCommand {
    /// Create an alias pointing at a published version
    Create(AliasSetArgs),
    /// Repoint an alias (its version and routing are replaced)
    Update(AliasSetArgs),
    /// Delete an alias
    Delete {
        /// Function name
        name: String,
        /// Alias name
        alias: String,
    },
    /// List a function's aliases
    List {
        /// Function name
        name: String,
    },
    /// Show one alias
    Get {
        /// Function name
        name: String,
        /// Alias name
        alias: String,
    },
}

#[derive(Debug, Args)]
pub struct AliasSetArgs {
    /// Function name
    pub name: String,
    /// Alias name
    pub alias: String,
    /// The published version the alias points at
    #[arg(long, value_name = "N")]
    pub version: u32,
    /// A second version that gets a share of the traffic
    #[arg(long, value_name = "M", requires = "weight")]
    pub routing_version: Option<u32>,
    /// The share of traffic the routing version gets, from 0.0 to 1.0
    #[arg(long, value_name = "W", requires = "routing_version")]
    pub weight: Option<f64>,
}

/// Why a command failed, and the exit code that says so.
#[derive(Debug)]
pub struct Failure {
    /// 1 for errors the server reported, 2 for usage and connection errors,
    /// or a failed build's own exit code.
    pub code: u8,
    /// The message printed after `error: `.
    pub message: String,
}

impl Failure {
    /// A usage error (exit code 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: message.into(),
        }
    }

    /// Prefixes the message with what was being done.
    pub fn context(mut self, what: impl std::fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match e {
            ClientError::Api { .. } | ClientError::Decode { .. } => 1,
            _ => 2,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

/// What a command run needs: the client and the output mode.
pub struct Ctx {
    /// Client for the configured server.
    pub client: Client,
    /// Print JSON instead of text.
    pub json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server(args) => return server::run(args),
        Command::CompileComponent {
            out,
            memory_limit_mib,
        } => {
            return ExitCode::from(wisp_server::compile::child_main(
                &out,
                memory_limit_mib,
                wisp_core::limits::MAX_ARTIFACT_BYTES,
            ));
        }
        command => run_client(cli.server, cli.token, cli.json, command),
    };
    match result {
        Ok(code) => code,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Resolves the server and token (flag or environment, then config file,
/// then default) and runs a client command on a single-threaded runtime.
fn run_client(
    server: Option<String>,
    token: Option<String>,
    json: bool,
    command: Command,
) -> Result<ExitCode, Failure> {
    let nonempty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
    let (server, token) = match (nonempty(server), nonempty(token)) {
        (Some(s), Some(t)) => (s, Some(t)),
        (server, token) => {
            let file = match config::path() {
                Some(p) => config::load(&p).map_err(Failure::usage)?,
                None => config::Config::default(),
            };
            (
                server
                    .or(nonempty(file.server))
                    .unwrap_or_else(|| config::DEFAULT_SERVER.into()),
                token.or(nonempty(file.token)),
            )
        }
    };
    let server = if server.contains("://") {
        server
    } else {
        format!("http://{server}")
    };
    let ctx = Ctx {
        client: Client::new(server, token.map(|t| t.trim().to_string())),
        json,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::usage(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(dispatch(&ctx, command))
}

async fn dispatch(ctx: &Ctx, command: Command) -> Result<ExitCode, Failure> {
    use commands as c;
    match command {
        Command::Server(_) | Command::CompileComponent { .. } => unreachable!("handled in main"),
        Command::Create(args) => c::create(ctx, args).await?,
        Command::Update(args) => c::update(ctx, args).await?,
        Command::Get { target } => c::get(ctx, &target).await?,
        Command::List { labels } => c::list(ctx, &labels).await?,
        Command::Delete { target } => c::delete(ctx, &target).await?,
        Command::Publish { name } => c::publish(ctx, &name).await?,
        Command::Versions { name } => c::versions(ctx, &name).await?,
        Command::Alias(a) => match a {
            AliasCommand::Create(args) => c::alias_set(ctx, args, true).await?,
            AliasCommand::Update(args) => c::alias_set(ctx, args, false).await?,
            AliasCommand::Delete { name, alias } => c::alias_delete(ctx, &name, &alias).await?,
            AliasCommand::List { name } => c::alias_list(ctx, &name).await?,
            AliasCommand::Get { name, alias } => c::alias_get(ctx, &name, &alias).await?,
        },
        Command::Invoke(args) => return c::invoke(ctx, args).await,
        Command::Logs(args) => c::logs(ctx, args).await?,
        Command::Stats { name } => c::stats(ctx, &name).await?,
        Command::Invocations { name } => c::invocations(ctx, &name).await?,
        Command::Dlq(cmd) => c::dlq(ctx, cmd).await?,
        Command::Trigger(cmd) => triggers::run(ctx, cmd).await?,
        Command::Deploy { file, publish } => deploy::run(ctx, &file, publish).await?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse_where_documented() {
        let cli = Cli::try_parse_from([
            "wisp",
            "create",
            "hello",
            "--wasm",
            "h.wasm",
            "--label",
            "tier=demo",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
            "--memory",
            "64",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Create(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.config.labels, [("tier".into(), "demo".into())]);
        assert_eq!(args.config.env[1], ("B".into(), "x=y".into()));
        assert!(Cli::try_parse_from(["wisp", "list", "--label", "oops"]).is_err());
        assert!(
            Cli::try_parse_from([
                "wisp",
                "alias",
                "create",
                "f",
                "a",
                "--version",
                "1",
                "--weight",
                "0.5"
            ])
            .is_err(),
            "--weight needs --routing-version"
        );
        assert!(
            Cli::try_parse_from(["wisp", "invoke", "f", "-d", "x", "--data-stdin"]).is_err(),
            "one body source at a time"
        );
    }
}
