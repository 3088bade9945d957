//! Wisp's benchmark harness. Run from the repository root:
//!
//! ```sh
//! cargo run --release -p wisp-bench
//! ```
//!
//! It builds the release `wisp` binary and the examples, runs real servers on
//! loopback, and writes `bench/results/latest.json` and the tables in
//! `docs/benchmarks.md`. Every figure is measured in the same run as its
//! baseline; nothing here is part of the test suite.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use wisp_testkit::{Api, Server, example_bytes, repo_root};

/// Distinct functions measured for cold starts.
const FUNCTIONS: usize = 100;

/// A component with the same code but a different digest: an extra custom
/// section (id 0) appended to the binary, which components allow anywhere
/// between sections.
fn variant(base: &[u8], n: usize) -> Vec<u8> {
    let name = b"wisp-bench";
    let payload = n.to_le_bytes();
    let mut section = Vec::new();
    leb128(&mut section, name.len() as u64);
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    let mut out = base.to_vec();
    out.push(0);
    leb128(&mut out, section.len() as u64);
    out.extend_from_slice(&section);
    out
}

fn leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(mut samples: Vec<f64>) -> Value {
    samples.sort_by(f64::total_cmp);
    json!({
        "n": samples.len(),
        "p50_ms": percentile(&samples, 50.0),
        "p99_ms": percentile(&samples, 99.0),
        "max_ms": samples.last().copied().unwrap_or(0.0),
    })
}

fn release_wisp() -> PathBuf {
    let root = repo_root();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "wisp-cli"])
        .current_dir(&root)
        .status()
        .expect("running cargo");
    assert!(status.success(), "building the release binary failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("release/wisp")
}

/// Times one GET on a fresh connection, in milliseconds.
async fn time_get(http: &reqwest::Client, url: &str) -> f64 {
    let started = Instant::now();
    let res = http.get(url).send().await.expect("request");
    assert_eq!(res.status(), 200, "{url}");
    res.bytes().await.expect("body");
    started.elapsed().as_secs_f64() * 1000.0
}

/// First request after deploy, after a restart, and warm, over
/// `FUNCTIONS` distinct components.
async fn cold_starts(bin: &Path) -> Value {
    let data = std::env::temp_dir().join(format!("wisp-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).unwrap();
    let mut server = Server::start_in(bin, &data, &[]);
    let api = Api::new(&server);
    let base = example_bytes("hello");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    let mut after_deploy = Vec::new();
    let mut deploy_to_first_response = Vec::new();
    for n in 0..FUNCTIONS {
        let started = Instant::now();
        let digest = api.upload(variant(&base, n)).await;
        let (status, _) = api
            .send(
                reqwest::Method::PUT,
                &format!("/v1/functions/f{n}"),
                Some(json!({"code_digest": digest})),
            )
            .await;
        assert!(status.is_success());
        after_deploy.push(time_get(&http, &server.at(&format!("/fn/f{n}"))).await);
        deploy_to_first_response.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let mut warm = Vec::new();
    for n in 0..FUNCTIONS {
        warm.push(time_get(&http, &server.at(&format!("/fn/f{n}"))).await);
    }

    server.restart_after_kill9();
    let mut after_restart = Vec::new();
    for n in 0..FUNCTIONS {
        after_restart.push(time_get(&http, &server.at(&format!("/fn/f{n}"))).await);
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    json!({
        "functions": FUNCTIONS,
        "first_request_after_deploy": summary(after_deploy),
        "deploy_to_first_response": summary(deploy_to_first_response),
        "first_request_after_restart": summary(after_restart),
        "warm_request": summary(warm),
    })
}

fn row(label: &str, v: &Value) -> String {
    format!(
        "| {label} | {:.2} | {:.2} | {:.2} |\n",
        v["p50_ms"].as_f64().unwrap(),
        v["p99_ms"].as_f64().unwrap(),
        v["max_ms"].as_f64().unwrap()
    )
}

fn write_report(results: &Value) {
    let root = repo_root();
    let dir = root.join("bench/results");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("latest.json"),
        serde_json::to_string_pretty(results).unwrap(),
    )
    .unwrap();

    let c = &results["cold_starts"];
    let mut md = String::new();
    md.push_str("# Benchmarks\n\n");
    md.push_str("Written by `cargo run --release -p wisp-bench` (raw figures in `bench/results/latest.json`).\n");
    md.push_str("Every figure comes from one run on one machine; compare figures within a run, not across machines.\n\n");
    md.push_str(&format!(
        "Run: {} on {} cores.\n\n",
        results["date"].as_str().unwrap(),
        results["cores"]
    ));
    md.push_str(&format!(
        "## Cold starts\n\n{} distinct functions (the `hello` example with a unique custom section each, so every one has its own digest and compiled artifact). \
         Each figure is one HTTP GET on a new loopback connection, timed by the client, in milliseconds.\n\n",
        c["functions"]
    ));
    md.push_str("| case | p50 | p99 | max |\n|---|---|---|---|\n");
    md.push_str(&row(
        "first request after deploy (component loaded from the compiled cache)",
        &c["first_request_after_deploy"],
    ));
    md.push_str(&row(
        "first request after a kill -9 and restart (compiled artifact on disk, no recompile)",
        &c["first_request_after_restart"],
    ));
    md.push_str(&row(
        "warm request (component in memory, fresh instance)",
        &c["warm_request"],
    ));
    md.push_str(&row(
        "deploy to first response (upload + validate + compile + create + first request)",
        &c["deploy_to_first_response"],
    ));
    md.push('\n');
    std::fs::write(root.join("docs/benchmarks.md"), md).unwrap();
}

fn main() {
    let bin = release_wisp();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cold = rt.block_on(cold_starts(&bin));
    let results = json!({
        "date": chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cold_starts": cold,
    });
    write_report(&results);
    println!("{}", serde_json::to_string_pretty(&results).unwrap());
}
