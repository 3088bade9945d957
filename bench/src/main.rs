//! Wisp's benchmark harness. Run from the repository root:
//!
//! ```sh
//! cargo run --release -p wisp-bench                       # every section
//! cargo run --release -p wisp-bench -- throughput cold    # some sections (the others'
//!                                                         # results in latest.json are kept)
//! cargo run --release -p wisp-bench -- --quick            # smaller counts, shorter points
//! cargo run --release -p wisp-bench -- --report-only      # only rewrite the markdown
//! ```
//!
//! The analysis under a missed target is written by hand in
//! `bench/analysis/<section>.md` (`throughput`, `cold`, `burst`,
//! `density`, `async`, `triggers`) and included in the report, so regenerating it loses nothing.
//!
//! It builds the release `wisp` binary, the examples and the hyper
//! baseline, installs its load generator (`oha`, else `wrk`) and `wasmtime
//! serve` (pinned to the wasmtime Wisp links) into a cache outside the
//! repository, runs real servers on loopback only, and writes
//! `bench/results/latest.json` and `docs/benchmarks.md`. Every figure is
//! measured in the same run as its baseline; nothing here is part of the
//! test suite.
//!
//! Sections: `throughput` ([`baselines`]), `cold` ([`cold`]), `density`
//! ([`density`]), `burst` ([`burst`]), `async` ([`asynchronous`]), `triggers`
//! ([`triggers`]; it needs NATS, RabbitMQ, Mosquitto and Redis on
//! 127.0.0.1, and reports a broker it cannot reach as not measured), `soak`
//! ([`soak`]; 10 minutes of mixed load, 2 with `--quick`).

mod asynchronous;
mod baselines;
mod burst;
mod cold;
mod density;
mod load;
mod report;
mod soak;
mod tools;
mod triggers;
mod util;

use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use util::progress;
use wisp_testkit::{Server, example, example_bytes, repo_root};

/// The sections, in the order they run.
const SECTIONS: [&str; 7] = [
    "throughput",
    "cold",
    "burst",
    "density",
    "async",
    "triggers",
    "soak",
];

const USAGE: &str =
    "usage: cargo run --release -p wisp-bench -- [--quick] [--wisp-bin PATH] [SECTION...]

Sections (default: all): throughput, cold, burst, density, async, triggers, soak.
Results of sections not run are kept from bench/results/latest.json.
  --quick          smaller counts, 3 s load points and a 2-minute soak, for development
  --wisp-bin PATH  use this `wisp` binary instead of building the release one
  --report-only    only regenerate docs/benchmarks.md from bench/results/latest.json
                   (and the hand-written bench/analysis/<section>.md)
Environment: WISP_BENCH_CACHE (tool cache, default ~/.cache/wisp-bench);\nWISP_BENCH_LOADGEN=wrk (use wrk even when oha is installed);\nWISP_BENCH_NO_INSTALL=1 (install nothing, use the tools already there);\nWISP_BENCH_WASMTIME=PATH (this wasmtime 48.0.8 for `wasmtime serve`).";

/// What the server under test supports, found by asking it.
#[derive(Debug, Default, Clone)]
pub struct Caps {
    /// The function-spec field for instance reuse, if any.
    pub reuse_field: Option<String>,
    /// Whether `wisp server` has `--idle-timeout`.
    pub idle_timeout_flag: bool,
}

/// Everything the sections share.
pub struct Ctx {
    /// The `wisp` binary.
    pub wisp: PathBuf,
    /// The hyper baseline binary.
    pub hyper_baseline: PathBuf,
    /// The `hello` component.
    pub hello: Vec<u8>,
    /// Its path.
    pub hello_path: PathBuf,
    /// The load generator, if one could be had.
    pub load: Option<tools::LoadGen>,
    /// `wasmtime` for `wasmtime serve`, or why not.
    pub wasmtime: Result<PathBuf, String>,
    /// Smaller counts.
    pub quick: bool,
    /// What the server supports.
    pub caps: Caps,
}

impl Ctx {
    /// How long each load point runs.
    pub fn point_duration(&self) -> Duration {
        Duration::from_secs(if self.quick { 3 } else { 10 })
    }
}

/// Asks the server what it supports: `wisp server --help` for
/// `--idle-timeout`, and the OpenAPI document for the instance-reuse field
/// (`max_requests_per_instance`, or anything with `reuse` in its name).
async fn probe_caps(wisp: &PathBuf) -> Caps {
    let help = Command::new(wisp)
        .args(["server", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let server = Server::start(wisp);
    let doc: Value = match reqwest::get(server.at("/v1/openapi.json")).await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    // The function input's properties, wherever the document puts them:
    // a component schema, or each operation's request body.
    let mut names = Vec::new();
    collect_property_names(&doc, &mut names);
    let reuse_field = names
        .iter()
        .find(|k| k.as_str() == "max_requests_per_instance")
        .or_else(|| names.iter().find(|k| k.contains("reuse")))
        .cloned();
    Caps {
        reuse_field,
        idle_timeout_flag: help.contains("--idle-timeout"),
    }
}

/// Every key of every `properties` object in `v`.
fn collect_property_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                out.extend(props.keys().cloned());
            }
            map.values().for_each(|x| collect_property_names(x, out));
        }
        Value::Array(items) => items.iter().for_each(|x| collect_property_names(x, out)),
        _ => {}
    }
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(repo_root());
    c
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

fn build(args: &[&str], what: &str) {
    let status = cargo().args(args).status().expect("running cargo");
    assert!(status.success(), "building {what} failed");
}

struct Args {
    sections: Vec<String>,
    quick: bool,
    wisp_bin: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut args = Args {
        sections: Vec::new(),
        quick: false,
        wisp_bin: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--report-only" => {
                match report::rewrite_from_json() {
                    Ok(()) => println!("wrote docs/benchmarks.md from bench/results/latest.json"),
                    Err(e) => {
                        eprintln!("{e}");
                        std::process::exit(1);
                    }
                }
                std::process::exit(0);
            }
            "--wisp-bin" => args.wisp_bin = it.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if SECTIONS.contains(&s) => args.sections.push(s.to_string()),
            "all" => args.sections.extend(SECTIONS.iter().map(|s| s.to_string())),
            other => {
                eprintln!("unknown argument {other:?}\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    if args.sections.is_empty() {
        args.sections = SECTIONS.iter().map(|s| s.to_string()).collect();
    }
    args
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default()
}

/// Copies into `results` the sections of `bench/results/latest.json` that
/// this run does not measure (and `wasmtime_serve` when `throughput` is
/// not run). Answers the sections kept and the run of every section in the
/// file; a file from before `runs` existed describes a single run.
fn keep_earlier(
    results: &mut Value,
    measuring: &[String],
) -> (Vec<String>, serde_json::Map<String, Value>) {
    let previous = report::read_latest().unwrap_or(Value::Null);
    let mut runs = previous["runs"].as_object().cloned().unwrap_or_default();
    if runs.is_empty()
        && let Some(sections) = previous["sections"].as_array()
    {
        for s in sections.iter().filter_map(|s| s.as_str()) {
            runs.insert(
                s.to_string(),
                json!({
                    "date": previous["date"],
                    "quick": previous["quick"],
                    "seconds": previous["total_seconds"],
                }),
            );
        }
    }
    let mut kept = Vec::new();
    for s in SECTIONS {
        let measured = measuring.iter().any(|m| m == s);
        if measured || previous[s].is_null() {
            runs.remove(s);
            continue;
        }
        results[s] = previous[s].clone();
        kept.push(s.to_string());
    }
    if !measuring.iter().any(|m| m == "throughput") && !previous["wasmtime_serve"].is_null() {
        results["wasmtime_serve"] = previous["wasmtime_serve"].clone();
    }
    results["runs"] = Value::Object(runs.clone());
    (kept, runs)
}

fn main() {
    let args = parse_args();
    let started = Instant::now();
    util::remove_stale_dirs();
    let wisp = match args.wisp_bin.clone() {
        Some(p) => p,
        None => {
            progress("building the release wisp binary");
            build(
                &["build", "--release", "-p", "wisp-cli"],
                "the release binary (pass --wisp-bin PATH to measure one already built)",
            );
            target_dir().join("release/wisp")
        }
    };
    progress("building the hyper baseline");
    let hyper_baseline = target_dir().join("release/hyper-baseline");
    let built = cargo()
        .args([
            "build",
            "--release",
            "-p",
            "wisp-bench",
            "--bin",
            "hyper-baseline",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !built {
        assert!(
            hyper_baseline.is_file(),
            "building the hyper baseline failed"
        );
        progress("building the hyper baseline failed; using the one already built");
    }
    let hello_path = example("hello");
    let hello = example_bytes("hello");

    let wants = |s: &str| args.sections.iter().any(|x| x == s);
    let (load, wasmtime) = if wants("throughput") {
        let load = tools::load_generator();
        progress(format!(
            "load generator: {}",
            load.as_ref()
                .map(|l| l.describe())
                .unwrap_or_else(|| "none".into())
        ));
        (load, tools::wasmtime())
    } else {
        (None, Err("throughput section not run".to_string()))
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let caps = rt.block_on(probe_caps(&wisp));
    progress(format!("server capabilities: {caps:?}"));
    let ctx = Ctx {
        wisp,
        hyper_baseline,
        hello,
        hello_path,
        load,
        wasmtime,
        quick: args.quick,
        caps,
    };

    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    let mut results = json!({
        "date": date,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu_model(),
        "quick": args.quick,
        "wasmtime_serve": match &ctx.wasmtime {
            Ok(p) => json!({"version": tools::output_of(p, &["--version"]).map(|s| s.trim().to_string())}),
            Err(e) => json!({"error": e}),
        },
        "capabilities": {
            "instance_reuse_field": ctx.caps.reuse_field,
            "idle_timeout_flag": ctx.caps.idle_timeout_flag,
        },
    });
    // Sections not run this time keep their results from the last file,
    // each with the run that measured it (`runs`).
    let (kept, mut runs) = keep_earlier(&mut results, &args.sections);
    results["sections"] = json!(
        SECTIONS
            .iter()
            .filter(|s| wants(s) || kept.contains(&s.to_string()))
            .collect::<Vec<_>>()
    );
    for section in SECTIONS {
        if !wants(section) {
            continue;
        }
        progress(format!("section {section}"));
        let t = Instant::now();
        let v = rt.block_on(async {
            match section {
                "throughput" => baselines::run(&ctx).await,
                "cold" => cold::run(&ctx, !wants("density")).await,
                "burst" => burst::run(&ctx).await,
                "density" => density::run(&ctx).await,
                "async" => asynchronous::run(&ctx).await,
                "triggers" => triggers::run(&ctx).await,
                "soak" => soak::run(&ctx).await,
                _ => unreachable!(),
            }
        });
        progress(format!(
            "section {section} took {:.0} s",
            t.elapsed().as_secs_f64()
        ));
        results[section] = v;
        runs.insert(
            section.to_string(),
            json!({"date": date, "quick": args.quick, "seconds": t.elapsed().as_secs()}),
        );
        results["runs"] = Value::Object(runs.clone());
        // Keep partial results if a later section fails.
        report::write(&results);
    }
    // Start-to-ready with 10,000 functions, measured by density when it ran.
    if wants("cold")
        && results["cold"]["start_to_ready"].is_null()
        && let Some(l) = results["density"]["levels"].get(0)
        && l["start_to_ready_ms"].is_number()
    {
        results["cold"]["start_to_ready"] = json!({
            "functions": l["deployed_total"],
            "ms": l["start_to_ready_ms"],
            "measured_in": "density",
        });
    }
    results["total_seconds"] = json!(started.elapsed().as_secs());
    report::write(&results);
    progress(format!(
        "done in {:.0} s: bench/results/latest.json and docs/benchmarks.md",
        started.elapsed().as_secs_f64()
    ));
}
