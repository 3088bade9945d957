//! Density: deploy 10,000 then 100,000 distinct functions (variants of
//! `hello`, each with its own digest) and read the server's RSS when idle,
//! after invoking each function once, and after the idle unload. Also
//! the deploy rate and start-to-ready with that many functions.
//!
//! Compiling 100,000 components would take hours on two cores and about
//! 45 GB of compiled code, so only the first functions of a run are
//! compiled by the server; for the rest the harness pre-seeds the
//! server's compiled-code cache (`<cache>/engine-<hash>/<hex>.cwasm`, as
//! ARCHITECTURE.md documents it) with a hard link to one compiled hello,
//! and its tag under the cache's key (`wisp_runtime::tag_compiled`), so
//! the deploy does upload, hashing, the cache load (with its tag check)
//! and link check, and the metadata commit, but no Cranelift. Both rates
//! are reported.

use crate::Ctx;
use crate::util::{TempDir, free_gib, ms_since, progress, round, rss_mib, variant};
use serde_json::{Value, json};
use sha2::Digest as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use wisp_testkit::Server;

/// Client concurrency for deploys and invocations.
pub const CLIENT_CONCURRENCY: usize = 8;

/// Where pre-seeded compiled code comes from: hard links to one compiled
/// hello. A file takes at most 65,000 links on ext4, so after
/// [`LINKS_PER_SEED`] links the next ones go to a fresh copy.
#[derive(Clone)]
pub struct Seed {
    /// A compiled hello in the server's cache.
    cwasm: PathBuf,
    /// The engine directory it lives in.
    dir: PathBuf,
    /// The cache directory.
    cache: PathBuf,
    /// Where copies of it go (beside the cache, same file system).
    spare: PathBuf,
    /// The file linked to now, and how many links it has been given.
    current: Arc<std::sync::Mutex<(PathBuf, u32)>>,
}

/// Hard links made to one seed file before the next copy.
const LINKS_PER_SEED: u32 = 50_000;

impl Seed {
    /// Makes `<dir>/<hex>.cwasm` a hard link to the compiled hello, with
    /// its tag.
    fn link(&self, hex: &str) -> Result<(), String> {
        let link = self.dir.join(format!("{hex}.cwasm"));
        if link.exists() {
            return Ok(());
        }
        let mut current = self.current.lock().unwrap();
        if current.1 >= LINKS_PER_SEED {
            std::fs::create_dir_all(&self.spare).map_err(|e| e.to_string())?;
            let copy = self.spare.join(format!("seed-{hex}.cwasm"));
            std::fs::copy(&self.cwasm, &copy)
                .map_err(|e| format!("copying {}: {e}", self.cwasm.display()))?;
            *current = (copy, 0);
        }
        std::fs::hard_link(&current.0, &link)
            .map_err(|e| format!("linking {}: {e}", link.display()))?;
        current.1 += 1;
        drop(current);
        wisp_runtime::tag_compiled(&self.cache, &link).map_err(|e| e.to_string())
    }
}

/// Finds the compiled form of any deployed variant in `cache_dir`.
pub fn find_seed(cache_dir: &Path) -> Option<Seed> {
    for entry in std::fs::read_dir(cache_dir).ok()?.flatten() {
        let dir = entry.path();
        if !dir.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&dir).ok()?.flatten() {
            let p = file.path();
            if p.extension().is_some_and(|e| e == "cwasm") {
                return Some(Seed {
                    cwasm: p.clone(),
                    dir,
                    cache: cache_dir.to_path_buf(),
                    spare: cache_dir.with_file_name("bench-seeds"),
                    // Start with a fresh copy: the original may already
                    // have links from an earlier level.
                    current: Arc::new(std::sync::Mutex::new((p, LINKS_PER_SEED))),
                });
            }
        }
    }
    None
}

/// Outcome of deploying a range of functions.
#[derive(Debug, Default)]
pub struct Deployed {
    /// Functions deployed.
    pub ok: usize,
    /// Failed uploads or creates.
    pub errors: usize,
    /// Wall time, in seconds.
    pub seconds: f64,
    /// The first error message, if any.
    pub first_error: Option<String>,
    /// Whether the time budget stopped it early.
    pub out_of_time: bool,
}

impl Deployed {
    /// The JSON form, with the rate.
    pub fn to_json(&self) -> Value {
        json!({
            "functions": self.ok,
            "errors": self.errors,
            "seconds": round(self.seconds, 2),
            "per_second": round(self.ok as f64 / self.seconds.max(1e-9), 1),
            "first_error": self.first_error,
            "stopped_by_time_budget": self.out_of_time,
        })
    }
}

async fn deploy_one(
    http: &reqwest::Client,
    base: &str,
    bytes: Vec<u8>,
    name: &str,
    seed: Option<&Seed>,
) -> Result<(), String> {
    if let Some(seed) = seed {
        seed.link(&hex::encode(sha2::Sha256::digest(&bytes)))?;
    }
    let res = http
        .post(format!("{base}/v1/artifacts"))
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .map_err(|e| format!("upload: {e}"))?;
    let status = res.status();
    let body: Value = res.json().await.map_err(|e| format!("upload body: {e}"))?;
    if !status.is_success() {
        return Err(format!("upload: {status} {body}"));
    }
    let digest = body["digest"].as_str().unwrap_or_default().to_string();
    let res = http
        .put(format!("{base}/v1/functions/{name}"))
        .json(&json!({"code_digest": digest}))
        .send()
        .await
        .map_err(|e| format!("create: {e}"))?;
    if !res.status().is_success() {
        let status = res.status();
        return Err(format!(
            "create {name}: {status} {}",
            res.text().await.unwrap_or_default()
        ));
    }
    Ok(())
}

/// Deploys functions `f{from}..f{to}` (variants tagged `tag`) with
/// [`CLIENT_CONCURRENCY`] clients, stopping after `budget`.
pub async fn deploy_range(
    ctx: &Ctx,
    base_url: &str,
    tag: &str,
    from: usize,
    to: usize,
    seed: Option<Seed>,
    budget: Duration,
) -> Deployed {
    let next = Arc::new(AtomicUsize::new(from));
    let ok = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let started = Instant::now();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENT_CONCURRENCY)
        .build()
        .expect("client");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENT_CONCURRENCY {
        let (next, ok, errors, first_error) = (
            next.clone(),
            ok.clone(),
            errors.clone(),
            first_error.clone(),
        );
        let (http, base, hello, tag, seed) = (
            http.clone(),
            base_url.to_string(),
            ctx.hello.clone(),
            tag.to_string(),
            seed.clone(),
        );
        tasks.spawn(async move {
            loop {
                if started.elapsed() > budget {
                    return;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= to {
                    return;
                }
                let bytes = variant(&hello, &tag, n);
                match deploy_one(&http, &base, bytes, &format!("f{n}"), seed.as_ref()).await {
                    Ok(()) => {
                        let done = ok.fetch_add(1, Ordering::Relaxed) + 1;
                        if done % 1000 == 0 {
                            progress(format!(
                                "deployed {done} of {} ({:.0}/s)",
                                to - from,
                                done as f64 / started.elapsed().as_secs_f64()
                            ));
                        }
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().unwrap().get_or_insert(e);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let done = ok.load(Ordering::Relaxed);
    let errs = errors.load(Ordering::Relaxed);
    Deployed {
        ok: done,
        errors: errs,
        seconds: started.elapsed().as_secs_f64(),
        first_error: first_error.lock().unwrap().take(),
        out_of_time: done + errs < to - from,
    }
}

/// Deploys `count` functions into a running server: the first `compiled`
/// compiled by the server, the rest with pre-seeded compiled code. Returns
/// the JSON of both phases.
pub async fn deploy_fleet(
    ctx: &Ctx,
    server: &Server,
    cache_dir: &Path,
    from: usize,
    count: usize,
    compiled: usize,
    budget: Duration,
) -> Value {
    let started = Instant::now();
    let tag = "fleet";
    let compiled = compiled.min(count);
    let mut out = json!({});
    let mut done = from;
    if compiled > 0 {
        progress(format!(
            "deploying {compiled} functions, compiled by the server"
        ));
        let d = deploy_range(ctx, &server.url, tag, from, from + compiled, None, budget).await;
        done += d.ok + d.errors;
        out["compiled_by_server"] = d.to_json();
    }
    let seed = find_seed(cache_dir);
    let rest = from + count - done;
    if rest > 0 {
        let left = budget.saturating_sub(started.elapsed());
        if seed.is_none() {
            out["seed_note"] = json!(
                "no compiled code found in the cache directory to pre-seed from; the rest were compiled by the server"
            );
        }
        progress(format!(
            "deploying {rest} functions{}",
            if seed.is_some() {
                " with pre-seeded compiled code"
            } else {
                ""
            }
        ));
        let d = deploy_range(ctx, &server.url, tag, done, from + count, seed, left).await;
        done += d.ok + d.errors;
        out["pre_seeded"] = d.to_json();
    }
    out["total_attempted"] = json!(done - from);
    out["seconds"] = json!(round(started.elapsed().as_secs_f64(), 1));
    out
}

/// Spawns `wisp server` on `data` and times until `/v1/health` answers.
pub async fn start_to_ready(ctx: &Ctx, data: &Path, extra: &[&str]) -> (Server, f64) {
    let started = Instant::now();
    let server = Server::start_in(&ctx.wisp, data, extra);
    let http = reqwest::Client::new();
    let url = server.at("/v1/health");
    crate::util::wait_ok(&http, &url, Duration::from_secs(120)).await;
    let ms = ms_since(started);
    (server, ms)
}

/// Stops a server gracefully (SIGTERM), falling back to SIGKILL.
pub fn stop(mut server: Server) {
    server.signal("TERM");
    if server.wait_exit(Duration::from_secs(60)).is_none() {
        server.kill9();
    }
}

/// Invokes `f{from}..f{to}` once each with [`CLIENT_CONCURRENCY`]
/// clients, within `budget`, stopping early if the server's RSS passes
/// `rss_cap_mib`.
async fn invoke_all(
    server: &Server,
    from: usize,
    to: usize,
    budget: Duration,
    rss_cap_mib: f64,
) -> Value {
    let next = Arc::new(AtomicUsize::new(from));
    let ok = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let stop_reason = Arc::new(std::sync::Mutex::new(None::<String>));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let latency_us = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let pid = server.pid();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENT_CONCURRENCY)
        .build()
        .expect("client");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENT_CONCURRENCY {
        let (next, ok, errors, stop_reason, first_error, latency_us) = (
            next.clone(),
            ok.clone(),
            errors.clone(),
            stop_reason.clone(),
            first_error.clone(),
            latency_us.clone(),
        );
        let (http, base) = (http.clone(), server.url.clone());
        tasks.spawn(async move {
            loop {
                if stop_reason.lock().unwrap().is_some() {
                    return;
                }
                if started.elapsed() > budget {
                    stop_reason
                        .lock()
                        .unwrap()
                        .get_or_insert("time budget".into());
                    return;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= to {
                    return;
                }
                let t = Instant::now();
                let r = http.get(format!("{base}/fn/f{n}")).send().await;
                let good = match r {
                    Ok(res) if res.status().is_success() => res.bytes().await.is_ok(),
                    Ok(res) => {
                        first_error
                            .lock()
                            .unwrap()
                            .get_or_insert(format!("f{n}: {}", res.status()));
                        false
                    }
                    Err(e) => {
                        first_error
                            .lock()
                            .unwrap()
                            .get_or_insert(format!("f{n}: {e}"));
                        false
                    }
                };
                latency_us.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                if good {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                if n % 1000 == 0 && n > from {
                    let rss = rss_mib(pid).unwrap_or(0.0);
                    progress(format!(
                        "invoked {} ({} errors), server RSS {rss:.0} MiB",
                        n - from,
                        errors.load(Ordering::Relaxed)
                    ));
                    if rss > rss_cap_mib {
                        stop_reason.lock().unwrap().get_or_insert(format!(
                            "server RSS {rss:.0} MiB passed the harness's cap of {rss_cap_mib:.0} MiB"
                        ));
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let (ok, errors) = (ok.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    let stopped = stop_reason.lock().unwrap().take();
    json!({
        "invoked": ok + errors,
        "errors": errors,
        "first_error": first_error.lock().unwrap().take(),
        "seconds": round(started.elapsed().as_secs_f64(), 1),
        "mean_ms": round(latency_us.load(Ordering::Relaxed) as f64 / 1000.0 / (ok + errors).max(1) as f64, 3),
        "stopped_early": stopped,
    })
}

fn mem_available_mib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(4096.0)
}

fn rss(pid: u32) -> Value {
    json!(rss_mib(pid).map(|v| round(v, 1)))
}

/// Runs the section.
pub async fn run(ctx: &Ctx) -> Value {
    let sizes: Vec<usize> = if ctx.quick {
        vec![1_000]
    } else {
        vec![10_000, 100_000]
    };
    let compiled_first: usize = if ctx.quick { 50 } else { 500 };
    let deploy_budget = Duration::from_secs(if ctx.quick { 300 } else { 900 });
    let invoke_budget = Duration::from_secs(if ctx.quick { 120 } else { 420 });
    let data = TempDir::new("density");
    let free = free_gib(data.path());
    // Each function stores its 153 KiB component; compiled code is 455 KiB
    // per server-compiled function (pre-seeded ones are hard links).
    let need_gib = |n: usize| (n as f64 * 160e3 + compiled_first as f64 * 470e3) / 1e9 * 1.3 + 1.0;
    let mut out = json!({
        "client_concurrency": CLIENT_CONCURRENCY,
        "free_disk_gib_before": free.map(|v| round(v, 1)),
        "method": "variants of hello (own digest each); the first functions compiled by the server, the rest with its compiled-code cache pre-seeded by hard links",
    });
    let idle_flag = ctx.caps.idle_timeout_flag;
    let extra: Vec<&str> = if idle_flag {
        vec!["--idle-timeout", "5"]
    } else {
        vec![]
    };
    out["idle_timeout_flag"] = json!(idle_flag);
    out["server_flags"] = json!(extra.join(" "));
    let rss_cap = (mem_available_mib() * 0.5).min(12_288.0);
    out["rss_cap_mib"] = json!(round(rss_cap, 0));

    let mut server = Server::start_in(&ctx.wisp, data.path(), &extra);
    let cache_dir = data.path().join("compiled");
    let mut deployed = 0usize;
    let mut levels = Vec::new();
    for &n in &sizes {
        if let Some(free) = free
            && free < need_gib(n)
        {
            let note = format!(
                "skipped: {free:.1} GiB free, {:.1} GiB needed for {n} functions",
                need_gib(n)
            );
            progress(format!("density {n}: {note}"));
            levels.push(json!({"functions": n, "skipped": note}));
            continue;
        }
        progress(format!("density: deploying up to {n} functions"));
        let compile_now = compiled_first.saturating_sub(deployed);
        let d = deploy_fleet(
            ctx,
            &server,
            &cache_dir,
            deployed,
            n - deployed,
            compile_now,
            deploy_budget,
        )
        .await;
        let attempted = d["total_attempted"].as_u64().unwrap_or(0) as usize;
        deployed += attempted;
        let mut level = json!({"functions": n, "deployed_total": deployed, "deploy": d});
        tokio::time::sleep(Duration::from_secs(2)).await;
        level["rss_idle_after_deploy_mib"] = rss(server.pid());

        // Restart: start-to-ready with this many functions, then idle.
        stop(server);
        let (s, ms) = start_to_ready(ctx, data.path(), &extra).await;
        server = s;
        level["start_to_ready_ms"] = json!(round(ms, 1));
        tokio::time::sleep(Duration::from_secs(1)).await;
        level["rss_idle_after_restart_mib"] = rss(server.pid());

        progress(format!(
            "density: invoking each of {deployed} functions once"
        ));
        let inv = invoke_all(&server, 0, deployed, invoke_budget, rss_cap).await;
        level["invoke_each_once"] = inv;
        level["rss_after_invoking_each_mib"] = rss(server.pid());
        level["peak_rss_mib"] = json!(crate::util::peak_rss_mib(server.pid()).map(|v| round(v, 1)));
        if idle_flag {
            tokio::time::sleep(Duration::from_secs(10)).await;
            level["rss_after_idle_unload_mib"] = rss(server.pid());
        } else {
            level["rss_after_idle_unload_mib"] = json!("n/a: no idle unload yet");
        }
        if let Some(f) = free_gib(data.path()) {
            level["free_disk_gib_after"] = json!(round(f, 1));
        }
        progress(format!("density {n}: {level}"));
        levels.push(level);
        // Restart so the next level starts with nothing loaded.
        stop(server);
        server = Server::start_in(&ctx.wisp, data.path(), &extra);
    }
    drop(server);
    drop(data);
    out["levels"] = json!(levels);
    out
}
