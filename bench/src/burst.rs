//! Burst: 0 to 256 concurrent requests on a cold function (deployed and
//! never invoked, or never invoked since a restart): the time until all
//! are served and the error count.

use crate::Ctx;
use crate::util::{TempDir, progress, round, summary, variant};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wisp_testkit::Server;

/// Requests fired at once.
pub const BURST: usize = 256;

/// Fires [`BURST`] GETs at `url` at the same instant, each on its own new
/// connection, and waits for all of them (each bounded by 30 s).
async fn fire(url: &str) -> Value {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(BURST)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let gate = Arc::new(tokio::sync::Barrier::new(BURST + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..BURST {
        let (http, url, gate) = (http.clone(), url.to_string(), gate.clone());
        tasks.spawn(async move {
            gate.wait().await;
            let t = Instant::now();
            let r = match http.get(&url).send().await {
                Ok(res) => {
                    let status = res.status().as_u16();
                    match res.bytes().await {
                        Ok(_) => Ok(status),
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            (r, t.elapsed().as_secs_f64() * 1000.0)
        });
    }
    gate.wait().await;
    let started = Instant::now();
    let mut statuses = std::collections::BTreeMap::<String, u64>::new();
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        let (r, ms) = done.expect("burst task");
        latencies.push(ms);
        match r {
            Ok(200) => *statuses.entry("200".into()).or_default() += 1,
            Ok(s) => {
                errors += 1;
                *statuses.entry(s.to_string()).or_default() += 1;
            }
            Err(e) => {
                errors += 1;
                *statuses.entry("connection error".into()).or_default() += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let all_ms = started.elapsed().as_secs_f64() * 1000.0;
    json!({
        "all_served_ms": round(all_ms, 2),
        "errors": errors,
        "status": statuses,
        "latency": summary(latencies),
        "first_error": first_error,
    })
}

async fn deploy(
    server: &Server,
    ctx: &Ctx,
    name: &str,
    n: usize,
    config: Value,
) -> Result<(), String> {
    let http = reqwest::Client::new();
    let res = http
        .post(server.at("/v1/artifacts"))
        .header("content-type", "application/wasm")
        .body(variant(&ctx.hello, "burst", n))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: Value = res.json().await.map_err(|e| e.to_string())?;
    let digest = body["digest"].as_str().ok_or(format!("upload: {body}"))?;
    let mut spec = json!({"code_digest": digest});
    if let Value::Object(extra) = config {
        for (k, v) in extra {
            spec[k] = v;
        }
    }
    let res = http
        .put(server.at(&format!("/v1/functions/{name}")))
        .json(&spec)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !res.status().is_success() {
        return Err(format!("create {name}: {}", res.status()));
    }
    Ok(())
}

fn collect(trials: Vec<Value>) -> Value {
    let times: Vec<f64> = trials
        .iter()
        .filter_map(|t| t["all_served_ms"].as_f64())
        .collect();
    let errors: u64 = trials.iter().filter_map(|t| t["errors"].as_u64()).sum();
    json!({
        "all_served": summary(times),
        "errors": errors,
        "trials": trials,
    })
}

/// Runs the section.
pub async fn run(ctx: &Ctx) -> Value {
    let trials = if ctx.quick { 3 } else { 5 };
    let data = TempDir::new("burst");
    let mut server = Server::start_in(&ctx.wisp, data.path(), &[]);
    // `max_concurrency` above the burst: this measures the cold path
    // under a burst, not the default admission limit; a second case with
    // the default spec shows what admission does with the same burst.
    let raised = json!({"max_concurrency": 1000});
    let mut setup_errors = Vec::new();
    for i in 0..trials * 2 {
        if let Err(e) = deploy(&server, ctx, &format!("b{i}"), i, raised.clone()).await {
            setup_errors.push(e);
        }
    }
    if let Err(e) = deploy(&server, ctx, "bdefault", 1000, json!({})).await {
        setup_errors.push(e);
    }

    let mut after_deploy = Vec::new();
    for i in 0..trials {
        let r = fire(&server.at(&format!("/fn/b{i}"))).await;
        progress(format!("burst after deploy b{i}: {r}"));
        after_deploy.push(r);
    }
    let default_spec = fire(&server.at("/fn/bdefault")).await;
    progress(format!("burst with the default spec: {default_spec}"));

    server.restart_after_kill9();
    let mut after_restart = Vec::new();
    for i in trials..trials * 2 {
        let r = fire(&server.at(&format!("/fn/b{i}"))).await;
        progress(format!("burst after restart b{i}: {r}"));
        after_restart.push(r);
    }
    drop(server);
    drop(data);
    json!({
        "requests": BURST,
        "config": raised,
        "after_deploy": collect(after_deploy),
        "after_restart": collect(after_restart),
        "default_spec": default_spec,
        "setup_errors": setup_errors,
    })
}
