//! The commands that drive a server through [`wisp_client::Client`]: each
//! prints text, or with `--json` the server's JSON answer.

use crate::output::{self, line};
use crate::{AliasSetArgs, ConfigFlags, CreateArgs, Ctx, Failure, UpdateArgs, parse};
use chrono::{SecondsFormat, Utc};
use clap::Args;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use wisp_client::header::{HeaderName, HeaderValue};
use wisp_client::{HeaderMap, LogsQuery, Method};
use wisp_core::{
    Alias, AliasInput, AliasRouting, Function, FunctionInput, FunctionName, FunctionVersion,
    LogRecord, Qualifier, Target, VersionStats,
};

/// A function name, checked before anything is sent.
pub fn function_name(s: &str) -> Result<FunctionName, Failure> {
    s.parse()
        .map_err(|e| Failure::usage(format!("invalid function name `{s}`: {e}")))
}

fn target(s: &str) -> Result<Target, Failure> {
    s.parse().map_err(|e| {
        Failure::usage(format!(
            "invalid target `{s}`: {e} (expected NAME, NAME:VERSION or NAME:ALIAS)"
        ))
    })
}

/// Reads a component from disk.
pub fn read_wasm(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .map_err(|e| Failure::usage(format!("cannot read component {}: {e}", path.display())))
}

/// The fields of a create/update request that the flags give.
fn config_input(flags: &ConfigFlags) -> Result<FunctionInput, Failure> {
    let map = |flag, pairs: &[(String, String)]| {
        if pairs.is_empty() {
            Ok(None)
        } else {
            parse::into_map(flag, pairs)
                .map(Some)
                .map_err(Failure::usage)
        }
    };
    Ok(FunctionInput {
        description: flags.description.clone(),
        labels: map("--label", &flags.labels)?,
        env: map("--env", &flags.env)?,
        memory_mib: flags.memory,
        timeout_ms: flags.timeout,
        max_concurrency: flags.concurrency,
        min_instances: flags.min_instances,
        max_requests_per_instance: flags.reuse,
        invoke_auth: flags.invoke_auth,
        ..Default::default()
    })
}

/// Uploads the component at `path`, naming the file in any error.
async fn upload(ctx: &Ctx, path: &Path) -> Result<String, Failure> {
    let wasm = read_wasm(path)?;
    let info = ctx
        .client
        .upload_artifact(wasm)
        .await
        .map_err(|e| Failure::from(e).context(format!("uploading {}", path.display())))?;
    Ok(info.digest.to_string())
}

fn print_function(ctx: &Ctx, verb: &str, f: &Function) {
    if ctx.json {
        output::json(f);
    } else {
        line(format!(
            "{verb} {} ({}, latest)",
            f.latest.name, f.latest.code_digest
        ));
    }
}

/// `wisp create`.
pub async fn create(ctx: &Ctx, args: CreateArgs) -> Result<(), Failure> {
    let name = function_name(&args.name)?;
    let mut input = config_input(&args.config)?;
    input.name = Some(name.to_string());
    input.code_digest = Some(upload(ctx, &args.wasm).await?);
    let f = ctx.client.create_function(&input).await?;
    print_function(ctx, "created", &f);
    Ok(())
}

/// `wisp update`.
pub async fn update(ctx: &Ctx, args: UpdateArgs) -> Result<(), Failure> {
    let name = function_name(&args.name)?;
    let mut input = config_input(&args.config)?;
    if args.wasm.is_none() && input == FunctionInput::default() {
        return Err(Failure::usage(
            "nothing to update: give --wasm or a configuration flag (see `wisp update --help`)",
        ));
    }
    if let Some(path) = &args.wasm {
        input.code_digest = Some(upload(ctx, path).await?);
    }
    let f = ctx.client.patch_function(name.as_str(), &input).await?;
    print_function(ctx, "updated", &f);
    Ok(())
}

fn version_fields(v: &FunctionVersion) -> Vec<(&'static str, String)> {
    let c = &v.config;
    vec![
        ("name", v.name.to_string()),
        ("version", v.version.to_string()),
        ("code_digest", v.code_digest.to_string()),
        ("code_size", format!("{} bytes", v.code_size)),
        ("description", output::or_dash(&c.description)),
        ("labels", output::map(&c.labels)),
        ("env", output::map(&c.env)),
        ("memory_mib", c.memory_mib.to_string()),
        ("timeout_ms", c.timeout_ms.to_string()),
        ("max_concurrency", c.max_concurrency.to_string()),
        ("min_instances", c.min_instances.to_string()),
        (
            "max_requests_per_instance",
            c.max_requests_per_instance.to_string(),
        ),
        ("invoke_auth", c.invoke_auth.to_string()),
        ("created_at", output::time(&v.created_at)),
        ("updated_at", output::time(&v.updated_at)),
    ]
}

fn routing(r: &Option<AliasRouting>) -> String {
    match r {
        Some(r) => format!("{} to version {}", output::percent(r.weight), r.version),
        None => "-".into(),
    }
}

fn alias_summary(a: &Alias) -> String {
    match &a.routing {
        Some(_) => format!("{} -> {} ({})", a.name, a.version, routing(&a.routing)),
        None => format!("{} -> {}", a.name, a.version),
    }
}

/// `wisp get`.
pub async fn get(ctx: &Ctx, target_str: &str) -> Result<(), Failure> {
    let t = target(target_str)?;
    let name = t.name.as_str();
    match &t.qualifier {
        Qualifier::Latest => {
            let f = ctx.client.get_function(name).await?;
            if ctx.json {
                output::json(&f);
                return Ok(());
            }
            let mut fields = version_fields(&f.latest);
            let published = f
                .published_versions
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            fields.push(("published_versions", output::or_dash(&published)));
            let aliases = f.aliases.iter().map(alias_summary).collect::<Vec<_>>();
            fields.push(("aliases", output::or_dash(&aliases.join(", "))));
            line(output::fields(&fields));
        }
        Qualifier::Version(n) => {
            let v = ctx.client.get_version(name, *n).await?;
            if ctx.json {
                output::json(&v);
                return Ok(());
            }
            line(output::fields(&version_fields(&v)));
        }
        Qualifier::Alias(alias) => alias_get(ctx, name, alias.as_str()).await?,
    }
    Ok(())
}

/// `wisp list`.
pub async fn list(ctx: &Ctx, labels: &[(String, String)]) -> Result<(), Failure> {
    parse::into_map("--label", labels).map_err(Failure::usage)?;
    let list = ctx.client.list_functions(labels).await?;
    if ctx.json {
        output::json(&list);
        return Ok(());
    }
    if list.functions.is_empty() {
        line("no functions");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .functions
        .iter()
        .map(|f| {
            vec![
                f.name.to_string(),
                output::short_digest(&f.code_digest),
                format!("{} MiB", f.config.memory_mib),
                format!("{} ms", f.config.timeout_ms),
                output::map(&f.config.labels),
                output::time(&f.updated_at),
                output::or_dash(&f.config.description),
            ]
        })
        .collect();
    line(output::table(
        &[
            "NAME",
            "CODE",
            "MEMORY",
            "TIMEOUT",
            "LABELS",
            "UPDATED",
            "DESCRIPTION",
        ],
        &rows,
    ));
    Ok(())
}

/// `wisp delete NAME` or `wisp delete NAME:VERSION`.
pub async fn delete(ctx: &Ctx, target_str: &str) -> Result<(), Failure> {
    let t = target(target_str)?;
    let name = t.name.as_str();
    match (&t.qualifier, target_str.contains(':')) {
        (Qualifier::Latest, false) => {
            ctx.client.delete_function(name).await?;
            if !ctx.json {
                line(format!("deleted {name}"));
            }
        }
        (Qualifier::Version(n), _) => {
            ctx.client.delete_version(name, *n).await?;
            if !ctx.json {
                line(format!("deleted {name} version {n}"));
            }
        }
        _ => {
            return Err(Failure::usage(format!(
                "`{target_str}`: give NAME to delete the function or NAME:VERSION with a version \
                 number to delete one version (aliases are deleted with `wisp alias delete`)"
            )));
        }
    }
    Ok(())
}

/// `wisp publish`.
pub async fn publish(ctx: &Ctx, name: &str) -> Result<(), Failure> {
    let name = function_name(name)?;
    let (v, created) = ctx.client.publish(name.as_str()).await?;
    if ctx.json {
        output::json(&v);
    } else if created {
        line(format!("published {name} version {}", v.version));
    } else {
        line(format!(
            "{name} version {} unchanged (latest has not changed since it was published)",
            v.version
        ));
    }
    Ok(())
}

/// `wisp versions`.
pub async fn versions(ctx: &Ctx, name: &str) -> Result<(), Failure> {
    let name = function_name(name)?;
    let list = ctx.client.list_versions(name.as_str()).await?;
    if ctx.json {
        output::json(&list);
        return Ok(());
    }
    if list.versions.is_empty() {
        line(format!(
            "{name} has no published versions; publish one with `wisp publish {name}`"
        ));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .versions
        .iter()
        .map(|v| {
            vec![
                v.version.to_string(),
                output::short_digest(&v.code_digest),
                format!("{} MiB", v.config.memory_mib),
                format!("{} ms", v.config.timeout_ms),
                output::time(&v.created_at),
                output::or_dash(&v.config.description),
            ]
        })
        .collect();
    line(output::table(
        &[
            "VERSION",
            "CODE",
            "MEMORY",
            "TIMEOUT",
            "CREATED",
            "DESCRIPTION",
        ],
        &rows,
    ));
    Ok(())
}

/// `wisp alias create` and `wisp alias update`.
pub async fn alias_set(ctx: &Ctx, args: AliasSetArgs, create: bool) -> Result<(), Failure> {
    let name = function_name(&args.name)?;
    let split = match (args.routing_version, args.weight) {
        (Some(version), Some(weight)) => Some(AliasRouting { version, weight }),
        _ => None,
    };
    let input = AliasInput {
        name: Some(args.alias.clone()),
        version: Some(args.version),
        routing: split,
    };
    let (verb, alias) = if create {
        (
            "created",
            ctx.client.create_alias(name.as_str(), &input).await?,
        )
    } else {
        let alias = ctx
            .client
            .update_alias(name.as_str(), &args.alias, &input)
            .await?;
        ("updated", alias)
    };
    if ctx.json {
        output::json(&alias);
    } else {
        let split = match &alias.routing {
            Some(_) => format!(" ({})", routing(&alias.routing)),
            None => String::new(),
        };
        line(format!(
            "{verb} alias {}:{} -> version {}{split}",
            alias.function, alias.name, alias.version
        ));
    }
    Ok(())
}

/// `wisp alias delete`.
pub async fn alias_delete(ctx: &Ctx, name: &str, alias: &str) -> Result<(), Failure> {
    let name = function_name(name)?;
    ctx.client.delete_alias(name.as_str(), alias).await?;
    if !ctx.json {
        line(format!("deleted alias {name}:{alias}"));
    }
    Ok(())
}

/// `wisp alias list`.
pub async fn alias_list(ctx: &Ctx, name: &str) -> Result<(), Failure> {
    let name = function_name(name)?;
    let list = ctx.client.list_aliases(name.as_str()).await?;
    if ctx.json {
        output::json(&list);
        return Ok(());
    }
    if list.aliases.is_empty() {
        line(format!("{name} has no aliases"));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .aliases
        .iter()
        .map(|a| {
            vec![
                a.name.to_string(),
                a.version.to_string(),
                routing(&a.routing),
                output::time(&a.updated_at),
            ]
        })
        .collect();
    line(output::table(
        &["ALIAS", "VERSION", "ROUTING", "UPDATED"],
        &rows,
    ));
    Ok(())
}

/// `wisp alias get`.
pub async fn alias_get(ctx: &Ctx, name: &str, alias: &str) -> Result<(), Failure> {
    let name = function_name(name)?;
    let a = ctx.client.get_alias(name.as_str(), alias).await?;
    if ctx.json {
        output::json(&a);
        return Ok(());
    }
    line(output::fields(&[
        ("function", a.function.to_string()),
        ("alias", a.name.to_string()),
        ("version", a.version.to_string()),
        ("routing", routing(&a.routing)),
        ("created_at", output::time(&a.created_at)),
        ("updated_at", output::time(&a.updated_at)),
    ]));
    Ok(())
}

/// Flags of `wisp invoke`.
#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// NAME, NAME:VERSION or NAME:ALIAS
    pub target: String,
    /// Path and query string the function sees
    #[arg(long, value_name = "/PATH?QUERY", default_value = "/")]
    pub path: String,
    /// HTTP method [default: GET, or POST when a body is given]
    #[arg(short = 'X', long, value_name = "METHOD")]
    pub method: Option<String>,
    /// Request body
    #[arg(
        short = 'd',
        long,
        value_name = "STRING",
        allow_hyphen_values = true,
        conflicts_with_all = ["data_file", "data_stdin"]
    )]
    pub data: Option<String>,
    /// Read the request body from a file
    #[arg(long, value_name = "PATH", conflicts_with = "data_stdin")]
    pub data_file: Option<PathBuf>,
    /// Read the request body from stdin
    #[arg(long)]
    pub data_stdin: bool,
    /// A request header (repeatable)
    #[arg(short = 'H', long = "header", value_name = "'NAME: VALUE'", value_parser = parse::header)]
    pub headers: Vec<(String, String)>,
    /// Print the status line and response headers before the body
    #[arg(short = 'i', long)]
    pub include: bool,
    /// Queue the invocation and return at once with its id (POST to --path)
    #[arg(long = "async", conflicts_with = "include")]
    pub asynchronous: bool,
}

/// `wisp invoke`: exit code 0 for a 2xx answer, 1 for any other.
pub async fn invoke(ctx: &Ctx, args: InvokeArgs) -> Result<ExitCode, Failure> {
    let t = target(&args.target)?;
    let body = if let Some(d) = &args.data {
        Some(d.clone().into_bytes())
    } else if let Some(path) = &args.data_file {
        Some(std::fs::read(path).map_err(|e| {
            Failure::usage(format!("cannot read --data-file {}: {e}", path.display()))
        })?)
    } else if args.data_stdin {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
        Some(buf)
    } else {
        None
    };
    let method = match &args.method {
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| Failure::usage(format!("`{m}` is not an HTTP method")))?,
        None if body.is_some() => Method::POST,
        None => Method::GET,
    };
    let mut headers = HeaderMap::new();
    for (k, v) in &args.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| Failure::usage(format!("`{k}` is not a valid header name")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| Failure::usage(format!("the value of header `{k}` is not valid")))?;
        headers.append(name, value);
    }
    let path = if args.path.starts_with('/') {
        args.path.clone()
    } else {
        format!("/{}", args.path)
    };
    if args.asynchronous {
        let accepted = ctx
            .client
            .invoke_async(
                t.name.as_str(),
                &t.qualifier.to_string(),
                &path,
                headers,
                body.unwrap_or_default(),
            )
            .await?;
        if ctx.json {
            output::json(&accepted);
        } else {
            let id = accepted["id"].as_str().unwrap_or_default();
            let dup = if accepted["duplicate"] == true {
                " (duplicate of an earlier request)"
            } else {
                ""
            };
            println!("queued {id}{dup}; status: wisp invocations {}", t.name);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let res = ctx
        .client
        .invoke(&t, method, &path, headers, body.unwrap_or_default())
        .await?;
    if args.include {
        let mut head = res.status_line();
        head.push('\n');
        for (k, v) in &res.headers {
            head.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        head.push('\n');
        output::raw(head.as_bytes());
    }
    output::raw(&res.body);
    Ok(if res.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Flags of `wisp logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Function name
    pub name: String,
    /// Only this invocation (see the x-wisp-request-id response header)
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,
    /// Only invocations since this RFC 3339 time or this long ago (30s, 10m, 2h, 1d)
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Print at most this many records
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Keep printing new records as they arrive (Ctrl-C ends)
    #[arg(long, short = 'f')]
    pub follow: bool,
}

fn print_record(ctx: &Ctx, r: &LogRecord) {
    if ctx.json {
        return output::json_line(r);
    }
    let prefix = format!(
        "{} {} {} {}",
        r.timestamp.to_rfc3339_opts(SecondsFormat::Millis, true),
        r.request_id,
        r.version,
        r.stream.as_str()
    );
    let mut text = String::new();
    for l in r.message.lines() {
        text.push_str(&format!("{prefix}: {l}\n"));
    }
    if r.truncated {
        text.push_str(&format!("{prefix}: ... [output truncated]\n"));
    }
    output::raw(text.as_bytes());
}

/// `wisp logs`: pages through the records; with `--follow`, polls for new ones.
pub async fn logs(ctx: &Ctx, args: LogsArgs) -> Result<(), Failure> {
    let name = function_name(&args.name)?;
    let since = args
        .since
        .as_deref()
        .map(|s| parse::since(s, Utc::now()))
        .transpose()
        .map_err(|e| Failure::usage(format!("--since: {e}")))?
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true));
    let follow = args.follow;
    let work = async {
        let limit = args.limit.map(u64::from);
        let mut printed: u64 = 0;
        let mut after = None;
        loop {
            let remaining = limit.map_or(u64::MAX, |l| l - printed);
            let page_size = remaining.min(u64::from(wisp_core::limits::MAX_LOG_QUERY_LIMIT));
            let query = LogsQuery {
                request_id: args.request_id.clone(),
                since: since.clone(),
                after,
                limit: Some(page_size as u32),
            };
            let page = ctx.client.logs(name.as_str(), &query).await?;
            for r in &page.records {
                print_record(ctx, r);
            }
            printed += page.records.len() as u64;
            after = Some(page.next_after);
            if limit.is_some_and(|l| printed >= l) {
                return Ok(());
            }
            if page.records.is_empty() {
                if !follow {
                    return Ok(());
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    };
    if follow {
        tokio::select! {
            r = work => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    } else {
        work.await
    }
}

/// `wisp stats`.
/// `wisp invocations NAME`: recent asynchronous invocations.
pub async fn invocations(ctx: &Ctx, name: &str) -> Result<(), Failure> {
    let name = function_name(name)?;
    let list = ctx.client.invocations(name.as_str()).await?;
    if ctx.json {
        output::json(&list);
        return Ok(());
    }
    println!(
        "{:<34} {:<10} {:>8}  {:<25} ERROR",
        "ID", "STATUS", "ATTEMPTS", "ENQUEUED"
    );
    for inv in list["invocations"].as_array().into_iter().flatten() {
        println!(
            "{:<34} {:<10} {:>8}  {:<25} {}",
            inv["id"].as_str().unwrap_or("-"),
            inv["status"].as_str().unwrap_or("-"),
            inv["attempts"].as_array().map_or(0, Vec::len),
            inv["enqueued_at"].as_str().unwrap_or("-"),
            inv["error"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub async fn stats(ctx: &Ctx, name: &str) -> Result<(), Failure> {
    let name = function_name(name)?;
    let stats = ctx.client.stats(name.as_str()).await?;
    if ctx.json {
        output::json(&stats);
        return Ok(());
    }
    let window = if stats.window_seconds % 60 == 0 {
        format!("{}m", stats.window_seconds / 60)
    } else {
        format!("{}s", stats.window_seconds)
    };
    if stats.versions.is_empty() {
        line(format!("no invocations of {name} in the last {window}"));
        return Ok(());
    }
    let row = |s: &VersionStats| {
        vec![
            s.version.clone(),
            s.invocations.to_string(),
            s.errors.to_string(),
            s.timeouts.to_string(),
            s.throttles.to_string(),
            s.cold_starts.to_string(),
            format!("{:.1}", s.duration_ms.p50),
            format!("{:.1}", s.duration_ms.p90),
            format!("{:.1}", s.duration_ms.p99),
        ]
    };
    let mut rows: Vec<Vec<String>> = stats.versions.iter().map(row).collect();
    if stats.versions.len() > 1 {
        rows.push(row(&stats.total));
    }
    line(format!("{name}, last {window}:"));
    line(output::table(
        &[
            "VERSION",
            "INVOCATIONS",
            "ERRORS",
            "TIMEOUTS",
            "THROTTLES",
            "COLD STARTS",
            "P50 MS",
            "P90 MS",
            "P99 MS",
        ],
        &rows,
    ));
    Ok(())
}

/// `wisp dlq ...`: the dead-letter queue.
#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters, newest first: of one function, or of all
    List {
        /// Only this function's dead letters
        name: Option<String>,
        /// Only this dead-letter queue's: `default`, or one named by an `on_failure = "dlq:QUEUE"`
        #[arg(long, value_name = "QUEUE")]
        queue: Option<String>,
        /// Print at most this many
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
        /// Only dead letters older than this id (the id a previous listing says to continue from)
        #[arg(long, value_name = "ID")]
        before: Option<String>,
    },
    /// Show one dead letter: every attempt's error, the original request and the policy
    Get {
        /// Dead letter id
        id: String,
    },
    /// Delete a dead letter and its request
    Delete {
        /// Dead letter id
        id: String,
    },
    /// Queue a dead letter's original request again as a new invocation
    Replay {
        /// Dead letter id
        id: String,
        /// Run it under this version, alias or `latest` [default: the one it ran under]
        #[arg(long, short = 'q', value_name = "QUALIFIER")]
        qualifier: Option<String>,
    },
    /// Replay every dead letter of a function, oldest first
    ReplayAll {
        /// Function name
        name: String,
        /// Run them under this version, alias or `latest` [default: each one's own]
        #[arg(long, short = 'q', value_name = "QUALIFIER")]
        qualifier: Option<String>,
    },
}

/// `wisp dlq`.
pub async fn dlq(ctx: &Ctx, cmd: DlqCommand) -> Result<(), Failure> {
    match cmd {
        DlqCommand::List {
            name,
            queue,
            limit,
            before,
        } => {
            dlq_list(
                ctx,
                name.as_deref(),
                queue.as_deref(),
                limit,
                before.as_deref(),
            )
            .await
        }
        DlqCommand::Get { id } => dlq_get(ctx, &id).await,
        DlqCommand::Delete { id } => {
            ctx.client.delete_dead_letter(&id).await?;
            if !ctx.json {
                line(format!("deleted dead letter {id}"));
            }
            Ok(())
        }
        DlqCommand::Replay { id, qualifier } => {
            let answer = ctx
                .client
                .replay_dead_letter(&id, qualifier.as_deref())
                .await?;
            if ctx.json {
                output::json(&answer);
            } else {
                line(format!(
                    "replayed {id} as {} ({}:{}); status: wisp invocations {}",
                    text(&answer["id"]),
                    text(&answer["function"]),
                    text(&answer["qualifier"]),
                    text(&answer["function"]),
                ));
            }
            Ok(())
        }
        DlqCommand::ReplayAll { name, qualifier } => {
            let name = function_name(&name)?;
            let answer = ctx
                .client
                .replay_dead_letters(name.as_str(), qualifier.as_deref())
                .await?;
            if ctx.json {
                output::json(&answer);
            } else {
                let n = answer["replayed"].as_u64().unwrap_or(0);
                let noun = if n == 1 {
                    "dead letter"
                } else {
                    "dead letters"
                };
                line(format!(
                    "replayed {n} {noun} of {name}; status: wisp invocations {name}"
                ));
            }
            Ok(())
        }
    }
}

/// A JSON string as text, `-` for anything else.
fn text(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| "-".into(), output::or_dash)
}

/// An RFC 3339 timestamp from the server, to the second; `-` if absent.
fn timestamp(v: &serde_json::Value) -> String {
    v.as_str()
        .and_then(|s| s.parse::<chrono::DateTime<Utc>>().ok())
        .map_or_else(|| text(v), |t| output::time(&t))
}

/// The first line of an error, cut to `max` characters, for tables.
fn first_line(s: &str, max: usize) -> String {
    let first = s.lines().next().unwrap_or("");
    if first.chars().count() > max {
        let cut: String = first.chars().take(max.saturating_sub(3)).collect();
        format!("{cut}...")
    } else {
        first.to_string()
    }
}

/// `wisp dlq list`.
async fn dlq_list(
    ctx: &Ctx,
    name: Option<&str>,
    queue: Option<&str>,
    limit: Option<u32>,
    before: Option<&str>,
) -> Result<(), Failure> {
    let name = name.map(function_name).transpose()?;
    let page = ctx
        .client
        .dead_letters(
            name.as_ref().map(FunctionName::as_str),
            queue,
            limit,
            before,
        )
        .await?;
    if ctx.json {
        output::json(&page);
        return Ok(());
    }
    let letters = page["deadletters"].as_array().cloned().unwrap_or_default();
    if letters.is_empty() {
        let of_queue = queue.map(|q| format!(" in queue {q}")).unwrap_or_default();
        match &name {
            Some(n) => line(format!("no dead letters of {n}{of_queue}")),
            None => line(format!("no dead letters{of_queue}")),
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|d| {
            vec![
                text(&d["id"]),
                text(&d["function"]),
                text(&d["qualifier"]),
                text(&d["queue"]),
                d["attempts"].as_array().map_or(0, Vec::len).to_string(),
                timestamp(&d["updated_at"]),
                first_line(d["error"].as_str().unwrap_or(""), 80),
            ]
        })
        .collect();
    line(output::table(
        &[
            "ID",
            "FUNCTION",
            "QUALIFIER",
            "QUEUE",
            "ATTEMPTS",
            "DIED",
            "ERROR",
        ],
        &rows,
    ));
    if let Some(next) = page["next_before"].as_str() {
        let of = name.map(|n| format!(" {n}")).unwrap_or_default();
        let in_queue = queue.map(|q| format!(" --queue {q}")).unwrap_or_default();
        line(format!("more: wisp dlq list{of}{in_queue} --before {next}"));
    }
    Ok(())
}

/// `wisp dlq get`.
async fn dlq_get(ctx: &Ctx, id: &str) -> Result<(), Failure> {
    let d = ctx.client.dead_letter(id).await?;
    if ctx.json {
        output::json(&d);
        return Ok(());
    }
    let mut fields = vec![
        ("id", text(&d["id"])),
        ("function", text(&d["function"])),
        ("qualifier", text(&d["qualifier"])),
        ("status", text(&d["status"])),
        ("enqueued_at", timestamp(&d["enqueued_at"])),
        ("died_at", timestamp(&d["updated_at"])),
        ("error", first_line(d["error"].as_str().unwrap_or("-"), 200)),
    ];
    for key in ["partition_key", "idempotency_key", "replayed_from"] {
        if let Some(v) = d[key].as_str() {
            fields.push((key, v.to_string()));
        }
    }
    fields.push(("policy", d["policy"].to_string()));
    line(output::fields(&fields));
    line("attempts:");
    for (i, a) in d["attempts"].as_array().into_iter().flatten().enumerate() {
        line(format!(
            "  {}. {} to {}, {}",
            i + 1,
            timestamp(&a["started_at"]),
            timestamp(&a["finished_at"]),
            text(&a["outcome"]),
        ));
        if let Some(e) = a["error"].as_str() {
            for l in e.lines() {
                line(format!("     {l}"));
            }
        }
    }
    let r = &d["request"];
    line(format!(
        "request:\n  {} {}",
        text(&r["method"]),
        text(&r["path_and_query"])
    ));
    for h in r["headers"].as_array().into_iter().flatten() {
        line(format!(
            "  {}: {}",
            text(&h[0]),
            h[1].as_str().unwrap_or("")
        ));
    }
    let body = r["body"].as_str().unwrap_or("");
    if !body.is_empty() {
        line("");
        line(body);
    }
    Ok(())
}
