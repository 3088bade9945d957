//! Warm throughput and latency of `hello` at c=1, 32 and 256 on Wisp's
//! data plane and on the same-run baselines serving the same bytes: a
//! plain hyper server and `wasmtime serve` (fresh instance per request,
//! and with instance reuse where the CLI has it).

use crate::Ctx;
use crate::load;
use crate::tools::{LoadGen, output_of};
use crate::util::{Proc, free_port, progress, round, wait_ok};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use wisp_testkit::{Api, Server};

/// The concurrency levels of every target.
pub const CONCURRENCY: [u32; 3] = [1, 32, 256];

/// What a target is while it runs: its pid, the URL to load, and whatever
/// keeps it alive.
struct Running {
    pid: u32,
    url: String,
    _keep: Box<dyn std::any::Any>,
}

/// Starts the hyper baseline and reads its address from stdout.
fn start_hyper(bin: &Path) -> Result<Running, String> {
    let mut child = Command::new(bin)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let proc = Proc { child };
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| format!("reading the hyper baseline's address: {e}"))?;
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| format!("unexpected hyper baseline output: {line}"))?
        .to_string();
    Ok(Running {
        pid: proc.pid(),
        url: format!("{url}/"),
        _keep: Box::new(proc),
    })
}

/// The `wasmtime serve` flags to use: the address, and `-Scli` because the
/// hello guest imports `wasi:cli` (as every component cargo builds does);
/// without it `wasmtime serve` refuses the component.
fn wasmtime_serve_args(addr: &str, extra: &[String]) -> Vec<String> {
    let mut args = vec![
        "serve".to_string(),
        "--addr".into(),
        addr.into(),
        "-Scli".into(),
    ];
    args.extend(extra.iter().cloned());
    args
}

/// The instance-reuse option of this `wasmtime serve`, if it has one
/// (`--max-instance-reuse-count`, in wasmtime 48). When `--help` is not
/// usable the flag is tried anyway; a server that refuses it fails to
/// start and is reported as such.
pub fn wasmtime_reuse_flag(wasmtime: &Path) -> Option<Vec<String>> {
    let serve = output_of(wasmtime, &["serve", "--help"]).unwrap_or_default();
    let opts = output_of(wasmtime, &["-O", "help"]).unwrap_or_default();
    if serve.contains("--max-instance-reuse-count") || !serve.contains("--addr") {
        Some(vec!["--max-instance-reuse-count".into(), "1000".into()])
    } else if opts.contains("max-instance-reuse-count") {
        Some(vec!["-Omax-instance-reuse-count=1000".into()])
    } else {
        None
    }
}

async fn start_wasmtime(
    wasmtime: &Path,
    wasm: &Path,
    extra: &[String],
    name: &str,
) -> Result<Running, String> {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut args = wasmtime_serve_args(&addr, extra);
    args.push(wasm.to_string_lossy().into_owned());
    // Its log goes to the cache directory, replaced on every run.
    let log_dir = crate::tools::cache_dir().join("logs");
    std::fs::create_dir_all(&log_dir).map_err(|e| e.to_string())?;
    let log =
        std::fs::File::create(log_dir.join(format!("{name}.log"))).map_err(|e| e.to_string())?;
    let child = Command::new(wasmtime)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting wasmtime serve: {e}"))?;
    let proc = Proc { child };
    let url = format!("http://{addr}/");
    let http = reqwest::Client::new();
    if !wait_ok(&http, &url, Duration::from_secs(60)).await {
        return Err(format!(
            "wasmtime serve ({}) did not answer 200 on {url}",
            args.join(" ")
        ));
    }
    progress(format!("{name}: wasmtime {}", args.join(" ")));
    Ok(Running {
        pid: proc.pid(),
        url,
        _keep: Box::new(proc),
    })
}

async fn start_wisp(ctx: &Ctx, config: Value) -> Result<Running, String> {
    let server = Server::start_with(&ctx.wisp, &[]);
    let api = Api::new(&server);
    let digest = api.upload(ctx.hello.clone()).await;
    let mut body = json!({ "code_digest": digest });
    if let Value::Object(extra) = config {
        for (k, v) in extra {
            body[k] = v;
        }
    }
    let (status, reply) = api
        .send(reqwest::Method::PUT, "/v1/functions/hello", Some(body))
        .await;
    if !status.is_success() {
        return Err(format!("deploying hello failed: {status} {reply}"));
    }
    let url = server.at("/fn/hello");
    if !wait_ok(&api.http, &url, Duration::from_secs(10)).await {
        return Err(format!("{url} did not answer 200"));
    }
    Ok(Running {
        pid: server.pid(),
        url,
        _keep: Box::new(server),
    })
}

/// Checks that the target serves the same bytes as the others.
async fn check_body(url: &str) -> Result<(), String> {
    let res = reqwest::get(url).await.map_err(|e| e.to_string())?;
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = res.text().await.map_err(|e| e.to_string())?;
    if body != "Hello from Wisp!\n" || !ct.starts_with("text/plain") {
        return Err(format!("{url} answered {ct:?} {body:?}"));
    }
    Ok(())
}

/// A started target: its key, the running server, and what to record
/// about how it was configured.
struct Live {
    key: &'static str,
    running: Running,
    info: Value,
}

/// Runs the section. Every target is started first and warmed up; then
/// the points are interleaved (c=1 on every target, then c=32, then
/// c=256) so that drifting background load on the shared machine hits all
/// targets alike. Idle servers use no CPU.
pub async fn run(ctx: &Ctx) -> Value {
    let Some(load) = ctx.load.clone() else {
        return json!({"skipped": "no load generator (oha or wrk) could be installed"});
    };
    let mut targets = serde_json::Map::new();
    let mut notes = Vec::<String>::new();
    let mut live = Vec::<Live>::new();
    let mut fail = |key: &str, e: String, targets: &mut serde_json::Map<String, Value>| {
        progress(format!("{key}: {e}"));
        notes.push(format!("{key}: {e}"));
        targets.insert(key.into(), json!({"error": e}));
    };

    // Every compared program wholly in the page cache (see
    // `warm_page_cache`), so file-backed RSS does not depend on history.
    let mut programs = vec![ctx.hyper_baseline.as_path(), ctx.wisp.as_path()];
    if let Ok(wt) = &ctx.wasmtime {
        programs.push(wt.as_path());
    }
    for program in programs {
        crate::util::warm_page_cache(program);
    }

    // 1. hyper.
    match start_hyper(&ctx.hyper_baseline) {
        Ok(running) => live.push(Live {
            key: "hyper",
            running,
            info: json!({}),
        }),
        Err(e) => fail("hyper", e, &mut targets),
    }

    // 2. wasmtime serve, fresh instance per request, and with reuse.
    match &ctx.wasmtime {
        Ok(wt) => {
            let reuse = wasmtime_reuse_flag(wt);
            for (key, extra) in [
                ("wasmtime_serve", Some(vec![])),
                ("wasmtime_serve_reuse", reuse),
            ] {
                let Some(extra) = extra else {
                    fail(
                        key,
                        "this wasmtime serve has no instance-reuse option (checked `wasmtime serve --help` and `wasmtime -O help`)".into(),
                        &mut targets,
                    );
                    continue;
                };
                match start_wasmtime(wt, &ctx.hello_path, &extra, key).await {
                    Ok(running) => live.push(Live {
                        key,
                        running,
                        info: json!({"flags": extra}),
                    }),
                    Err(e) => fail(key, e, &mut targets),
                }
            }
        }
        Err(e) => {
            for key in ["wasmtime_serve", "wasmtime_serve_reuse"] {
                fail(key, format!("no wasmtime: {e}"), &mut targets);
            }
        }
    }

    // 3. Wisp, fresh instance per request (the default), then with reuse.
    // `max_concurrency` is raised above the top load point so that the
    // comparison measures speed, not the default admission limit (100).
    let base_config = json!({"max_concurrency": 1000});
    match start_wisp(ctx, base_config.clone()).await {
        Ok(running) => live.push(Live {
            key: "wisp",
            running,
            info: json!({"config": base_config}),
        }),
        Err(e) => fail("wisp", e, &mut targets),
    }
    match ctx.caps.reuse_field.clone() {
        Some(field) => {
            let mut config = base_config.clone();
            config[&field] = json!(1000);
            match start_wisp(ctx, config.clone()).await {
                Ok(running) => live.push(Live {
                    key: "wisp_reuse",
                    running,
                    info: json!({"config": config}),
                }),
                Err(e) => fail("wisp_reuse", e, &mut targets),
            }
        }
        None => fail(
            "wisp_reuse",
            "Wisp's function spec has no instance-reuse field yet (checked /v1/openapi.json)"
                .into(),
            &mut targets,
        ),
    }

    // Same bytes everywhere, then a warm-up: connections, caches, the
    // instance pool, the CPU governor.
    let mut ready = Vec::new();
    for t in live {
        let checked = match check_body(&t.running.url).await {
            Ok(()) => load::run(
                &load,
                &t.running.url,
                32,
                Duration::from_secs(1),
                t.running.pid,
            ),
            Err(e) => Err(e),
        };
        match checked {
            Ok(_) => ready.push((t, Vec::<Value>::new())),
            Err(e) => fail(t.key, e, &mut targets),
        }
    }
    for c in CONCURRENCY {
        for (t, points) in ready.iter_mut() {
            match load::run(
                &load,
                &t.running.url,
                c,
                ctx.point_duration(),
                t.running.pid,
            ) {
                Ok(p) => {
                    progress(format!(
                        "{} c={c}: {:.0} rps, p50 {:.3} ms, p99 {:.3} ms, {} errors, {} µs CPU/req",
                        t.key,
                        p.rps,
                        p.p50_ms,
                        p.p99_ms,
                        p.errors,
                        p.cpu_us_per_req
                            .map(|v| format!("{v:.1}"))
                            .unwrap_or("?".into())
                    ));
                    points.push(p.to_json());
                }
                Err(e) => {
                    progress(format!("{} c={c}: {e}", t.key));
                    points.push(json!({"concurrency": c, "error": e}));
                }
            }
            // Let sockets and queued work drain between points.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    // Memory is read before the unknown-names point, which loads the Wisp
    // server with other functions (and a hostile one).
    for (t, points) in &mut ready {
        let mut v = json!({
            "url": t.running.url,
            "points": std::mem::take(points),
            "peak_rss_mib": crate::util::peak_rss_mib(t.running.pid).map(|v| round(v, 1)),
            // What the resident set is made of after the last point:
            // file-backed pages (the server's own code and libraries) and
            // anonymous memory (heap, stacks, instance memory).
            "rss_file_mib": crate::util::status_mib(t.running.pid, "RssFile").map(|v| round(v, 1)),
            "rss_anon_mib": crate::util::status_mib(t.running.pid, "RssAnon").map(|v| round(v, 1)),
        });
        if let Value::Object(info) = std::mem::take(&mut t.info) {
            for (k, x) in info {
                v[k] = x;
            }
        }
        targets.insert(t.key.into(), v);
    }
    let unknown = match ready.iter().find(|(t, _)| t.key == "wisp") {
        Some((t, _)) => unknown_names(ctx, &load, &t.running).await,
        None => json!({"error": "Wisp was not measured"}),
    };
    drop(ready);

    let mut out = json!({
        "load_generator": load.describe(),
        "seconds_per_point": ctx.point_duration().as_secs_f64(),
        "concurrency": CONCURRENCY,
        "targets": targets,
        "unknown_names": unknown,
        "notes": notes,
    });
    derive(&mut out);
    out
}

/// A flood of requests for functions nobody deployed (a new random name
/// each time, so nothing is cached by name) against Wisp at c=32: alone,
/// to compare with `hello` at c=32; then `hello` at c=32 beside the flood
/// (two load generators at once), to compare with `hello` beside a second
/// `hello` load of the same concurrency, and beside the hostile `hoard`
/// (each request asks the host to hold 1.2 GB and is stopped at its
/// limit). Answering unknown names (404, from memory) must cost no more
/// than serving `hello`, and neither they nor a hostile function may slow
/// `hello` more than the same amount of real traffic does.
async fn unknown_names(ctx: &Ctx, load: &LoadGen, wisp: &Running) -> Value {
    let base = wisp.url.trim_end_matches("/fn/hello");
    if let Err(e) = deploy_hoard(base).await {
        return json!({ "error": e });
    }
    let pattern = format!("{base}/fn/[a-z]{{16}}");
    let d = ctx.point_duration();
    let (url, pid) = (wisp.url.as_str(), wisp.pid);
    let flood = match load::run_random(load, &pattern, 32, d, pid) {
        Ok(p) => p,
        Err(e) => return json!({ "error": e }),
    };
    progress(format!(
        "wisp unknown names c=32: {:.0} rps, p99 {:.3} ms",
        flood.rps, flood.p99_ms
    ));
    let mut out = json!({ "pattern": "/fn/[a-z]{16}", "flood": flood.to_json() });
    let hostile = format!("{base}/fn/hoard?fields=20000&bytes=60000");
    for (key, other_url, random) in [
        ("hello_beside_flood", pattern.as_str(), true),
        ("hello_beside_hello", url, false),
        ("hello_beside_hostile", hostile.as_str(), false),
    ] {
        std::thread::sleep(Duration::from_millis(500));
        let (hello, other) = std::thread::scope(|s| {
            let other = s.spawn(|| match random {
                true => load::run_random(load, other_url, 32, d, pid),
                false => load::run(load, other_url, 32, d, pid),
            });
            let hello = load::run(load, url, 32, d, pid);
            (hello, other.join().expect("second load generator"))
        });
        match (hello, other) {
            (Ok(hello), Ok(_)) => {
                progress(format!(
                    "wisp hello c=32 {key}: {:.0} rps, p99 {:.3} ms",
                    hello.rps, hello.p99_ms
                ));
                out[key] = hello.to_json();
            }
            (Err(e), _) | (_, Err(e)) => out[key] = json!({ "error": e }),
        }
    }
    out
}

/// Deploys the hostile `hoard` (64 MiB) on the Wisp server at `base`, only
/// now, so that nothing of it is in the server before the points above.
async fn deploy_hoard(base: &str) -> Result<(), String> {
    let http = reqwest::Client::new();
    let res = http
        .post(format!("{base}/v1/artifacts"))
        .header("content-type", "application/wasm")
        .body(wisp_testkit::example_bytes("hoard"))
        .send()
        .await
        .map_err(|e| format!("uploading hoard: {e}"))?;
    let uploaded: Value = res
        .json()
        .await
        .map_err(|e| format!("uploading hoard: {e}"))?;
    let res = http
        .put(format!("{base}/v1/functions/hoard"))
        .json(&json!({"code_digest": uploaded["digest"], "memory_mib": 64}))
        .send()
        .await
        .map_err(|e| format!("deploying hoard: {e}"))?;
    if !res.status().is_success() {
        return Err(format!("deploying hoard: {}", res.status()));
    }
    Ok(())
}

/// The point at concurrency `c` of target `key`.
pub fn point<'a>(section: &'a Value, key: &str, c: u32) -> Option<&'a Value> {
    section["targets"][key]["points"]
        .as_array()?
        .iter()
        .find(|p| p["concurrency"].as_u64() == Some(c as u64))
}

/// Adds ratios to hyper and the added latency.
fn derive(out: &mut Value) {
    let mut ratios = serde_json::Map::new();
    for key in [
        "wasmtime_serve",
        "wasmtime_serve_reuse",
        "wisp",
        "wisp_reuse",
        "hyper",
    ] {
        let mut per_c = serde_json::Map::new();
        for c in CONCURRENCY {
            if let (Some(p), Some(h)) = (point(out, key, c), point(out, "hyper", c))
                && let (Some(r), Some(hr)) = (p["rps"].as_f64(), h["rps"].as_f64())
                && hr > 0.0
            {
                per_c.insert(format!("c{c}"), json!(round(r / hr, 3)));
            }
        }
        ratios.insert(key.into(), Value::Object(per_c));
    }
    out["rps_ratio_to_hyper"] = Value::Object(ratios);
    if let (Some(w), Some(h)) = (point(out, "wisp", 1), point(out, "hyper", 1))
        && let (Some(w50), Some(h50)) = (w["p50_ms"].as_f64(), h["p50_ms"].as_f64())
    {
        out["added_p50_us_c1"] = json!(round((w50 - h50) * 1000.0, 1));
    }
    if let (Some(w), Some(t)) = (point(out, "wisp", 32), point(out, "wasmtime_serve", 32))
        && let (Some(wr), Some(tr)) = (w["rps"].as_f64(), t["rps"].as_f64())
        && tr > 0.0
    {
        out["wisp_over_wasmtime_serve_c32"] = json!(round(wr / tr, 3));
    }
    if let Some(w) = point(out, "wisp", 32)
        && let Some(hr) = w["rps"].as_f64()
        && let Some(fr) = out["unknown_names"]["flood"]["rps"].as_f64()
        && hr > 0.0
    {
        out["unknown_names"]["flood_over_hello_c32"] = json!(round(fr / hr, 3));
    }
    // hello's p99 beside other load, over its p99 beside as much hello.
    let u = &mut out["unknown_names"];
    for (beside, ratio) in [
        ("hello_beside_flood", "hello_p99_flood_over_hello"),
        ("hello_beside_hostile", "hello_p99_hostile_over_hello"),
    ] {
        if let (Some(x99), Some(h99)) = (
            u[beside]["p99_ms"].as_f64(),
            u["hello_beside_hello"]["p99_ms"].as_f64(),
        ) && h99 > 0.0
        {
            u[ratio] = json!(round(x99 / h99, 3));
        }
    }
}
