//! Soak: one `wisp server` under a mixed load for a bounded time (10
//! minutes, 2 with `--quick`), sampled every 10 s, to show that nothing it
//! holds grows while it works.
//!
//! The load, all on loopback and all stopping at the deadline:
//! - synchronous requests to `hello` with a fresh instance each, and to a
//!   copy of it that reuses instances;
//! - asynchronous invocations of `echo` (through `/fn/` with
//!   `x-wisp-invocation-type: async`, at a steady rate);
//! - a cron trigger firing `echo` every second;
//! - a function deployed, called and deleted again and again;
//! - a flood of requests for names nobody deployed (404);
//! - the hostile `hoard`, which asks the host to hold 1.2 GB of headers
//!   and is stopped by its limit each time (500 `memory_limit_exceeded`,
//!   its own expected failure).
//!
//! Every sample reads the server's RSS, open file descriptors and threads
//! from `/proc`, and the sizes of its SQLite files. The goal: over the
//! last third of the run, RSS and descriptors are within 10 % of the first
//! third, and nothing fails but the hostile function's own requests.

use crate::Ctx;
use crate::util::{progress, round};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wisp_testkit::{Api, Server, proc_status_mib};

/// How often the server is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Counts of one kind of load.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Answers other than the expected ones, or failed requests.
    unexpected: AtomicU64,
    /// The first few unexpected answers, to say what they were.
    examples: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, expected: bool, what: impl FnOnce() -> String) {
        if expected {
            self.ok.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.unexpected.fetch_add(1, Ordering::Relaxed);
        let mut examples = self.examples.lock().unwrap_or_else(|e| e.into_inner());
        if examples.len() < 5 {
            examples.push(what());
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "ok": self.ok.load(Ordering::Relaxed),
            "unexpected": self.unexpected.load(Ordering::Relaxed),
            "examples": *self.examples.lock().unwrap_or_else(|e| e.into_inner()),
        })
    }
}

/// Runs `requests` (GETs of `path`, or what `send` makes) in `workers`
/// loops until `deadline`, pausing `pause` between requests, counting
/// answers `expected` accepts.
fn spawn_loop(
    tasks: &mut tokio::task::JoinSet<()>,
    workers: usize,
    deadline: tokio::time::Instant,
    pause: Duration,
    tally: Arc<Tally>,
    send: impl Fn(&reqwest::Client, u64) -> reqwest::RequestBuilder + Clone + Send + Sync + 'static,
    expected: impl Fn(u16, &str) -> bool + Clone + Send + Sync + 'static,
) {
    for worker in 0..workers as u64 {
        let (tally, send, expected) = (tally.clone(), send.clone(), expected.clone());
        tasks.spawn(async move {
            let client = reqwest::Client::new();
            let mut n = worker << 32;
            while tokio::time::Instant::now() < deadline {
                n += 1;
                match send(&client, n).send().await {
                    Ok(res) => {
                        let status = res.status().as_u16();
                        let body = res.text().await.unwrap_or_default();
                        tally.record(expected(status, &body), || {
                            format!("{status} {}", body.chars().take(200).collect::<String>())
                        });
                    }
                    Err(e) => tally.record(false, || e.to_string()),
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        });
    }
}

/// One sample of the server.
fn sample(pid: u32, data_dir: &std::path::Path, started: Instant) -> Value {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .ok();
    let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
    let mut sqlite = serde_json::Map::new();
    for file in ["wisp.db", "wisp.db-wal", "queue.db", "queue.db-wal"] {
        let mib = std::fs::metadata(data_dir.join(file))
            .map(|m| round(m.len() as f64 / (1024.0 * 1024.0), 2))
            .ok();
        sqlite.insert(file.into(), json!(mib));
    }
    json!({
        "seconds": started.elapsed().as_secs(),
        "rss_mib": proc_status_mib(pid, "VmRSS").map(|v| round(v, 1)),
        "fds": fds,
        "threads": threads,
        "sqlite_mib": sqlite,
    })
}

/// The mean of `field` over `samples`.
fn mean(samples: &[Value], field: &str) -> Option<f64> {
    let values: Vec<f64> = samples.iter().filter_map(|s| s[field].as_f64()).collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Runs the section.
pub async fn run(ctx: &Ctx) -> Value {
    let duration = Duration::from_secs(if ctx.quick { 120 } else { 600 });
    let server = Server::start_with(&ctx.wisp, &[]);
    let api = Api::new(&server);
    api.deploy("hello", "hello", json!({})).await;
    api.deploy("reuse", "hello", json!({"max_requests_per_instance": 1000}))
        .await;
    api.deploy("echo", "echo", json!({})).await;
    api.deploy("hoard", "hoard", json!({"memory_mib": 64}))
        .await;
    let (status, body) = api
        .send(
            reqwest::Method::POST,
            "/v1/triggers",
            Some(json!({"name": "tick", "target": "echo",
                "source": {"kind": "cron", "schedule": "* * * * * *"}})),
        )
        .await;
    if !status.is_success() {
        return json!({"error": format!("creating the cron trigger: {status} {body}")});
    }
    let hello_digest = api.upload(ctx.hello.clone()).await;

    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    let base = server.url.clone();
    let at = move |path: String| format!("{base}{path}");
    let tallies: Vec<(&str, Arc<Tally>)> = [
        "fresh",
        "reuse",
        "async",
        "deploy_delete",
        "unknown",
        "hostile",
    ]
    .into_iter()
    .map(|k| (k, Arc::new(Tally::default())))
    .collect();
    let tally = |k: &str| {
        tallies
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, t)| t.clone())
            .expect("a tally per load")
    };
    let ok_hello = |status: u16, body: &str| status == 200 && body == "Hello from Wisp!\n";
    let mut tasks = tokio::task::JoinSet::new();
    let no_pause = Duration::ZERO;

    let url = at("/fn/hello".into());
    spawn_loop(
        &mut tasks,
        4,
        deadline,
        no_pause,
        tally("fresh"),
        move |c, _| c.get(&url),
        ok_hello,
    );
    let url = at("/fn/reuse".into());
    spawn_loop(
        &mut tasks,
        4,
        deadline,
        no_pause,
        tally("reuse"),
        move |c, _| c.get(&url),
        ok_hello,
    );
    let url = at("/fn/echo/soak".into());
    spawn_loop(
        &mut tasks,
        1,
        deadline,
        Duration::from_millis(20),
        tally("async"),
        move |c, n| {
            c.post(&url)
                .header("x-wisp-invocation-type", "async")
                .body(format!("event {n}"))
        },
        |status, _| status == 202,
    );
    let base = at(String::new());
    spawn_loop(
        &mut tasks,
        2,
        deadline,
        no_pause,
        tally("unknown"),
        move |c, n| c.get(format!("{base}/fn/nobody-{n:x}")),
        |status, _| status == 404,
    );
    let url = at("/fn/hoard?fields=20000&bytes=60000".into());
    spawn_loop(
        &mut tasks,
        2,
        deadline,
        no_pause,
        tally("hostile"),
        move |c, _| c.get(&url),
        |status, body| status == 500 && body.contains("memory_limit_exceeded"),
    );
    // Deploy, call, delete: one function at a time, again and again.
    {
        let (api, tally, digest) = (Api::new(&server), tally("deploy_delete"), hello_digest);
        tasks.spawn(async move {
            let mut n = 0u64;
            while tokio::time::Instant::now() < deadline {
                n += 1;
                let name = format!("churn-{}", n % 8);
                let path = format!("/v1/functions/{name}");
                let (put, body) = api
                    .send(
                        reqwest::Method::PUT,
                        &path,
                        Some(json!({"code_digest": digest})),
                    )
                    .await;
                tally.record(put.is_success(), || format!("PUT {put} {body}"));
                let (status, _, text) = api.call(&format!("/fn/{name}")).await;
                tally.record(ok_hello(status.as_u16(), &text), || {
                    format!("call {status} {text}")
                });
                let (del, body) = api.send(reqwest::Method::DELETE, &path, None).await;
                tally.record(del.is_success(), || format!("DELETE {del} {body}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    let pid = server.pid();
    let mut samples = vec![sample(pid, &server.data_dir, started)];
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(SAMPLE_EVERY.min(deadline - tokio::time::Instant::now())).await;
        let s = sample(pid, &server.data_dir, started);
        progress(format!(
            "soak {} s: RSS {} MiB, {} fds, {} threads",
            s["seconds"], s["rss_mib"], s["fds"], s["threads"]
        ));
        samples.push(s);
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            progress(format!("soak load task failed: {e}"));
        }
    }
    let (status, tick) = api
        .send(reqwest::Method::GET, "/v1/triggers/tick", None)
        .await;

    // Thirds of the samples taken under load (the first, at the start, is
    // of an idle server).
    let loaded = &samples[1.min(samples.len())..];
    let third = (loaded.len() / 3).max(1).min(loaded.len());
    let (first, last) = (&loaded[..third], &loaded[loaded.len() - third..]);
    let mut growth = serde_json::Map::new();
    for field in ["rss_mib", "fds"] {
        if let (Some(a), Some(b)) = (mean(first, field), mean(last, field))
            && a > 0.0
        {
            growth.insert(field.into(), json!(round(b / a, 3)));
        }
    }
    let loads: serde_json::Map<String, Value> = tallies
        .iter()
        .map(|(k, t)| (k.to_string(), t.to_json()))
        .collect();
    let unexpected: u64 = tallies
        .iter()
        .map(|(_, t)| t.unexpected.load(Ordering::Relaxed))
        .sum();
    json!({
        "seconds": duration.as_secs(),
        "sample_every_s": SAMPLE_EVERY.as_secs(),
        "samples": samples,
        "last_third_over_first": growth,
        "loads": loads,
        "unexpected": unexpected,
        "cron": if status.is_success() { tick["status"].clone() } else { Value::Null },
        "alive": proc_status_mib(pid, "VmRSS").is_some(),
    })
}
