//! Cold starts over at least 100 distinct functions: the first request
//! after deploy, the first request after a restart (compiled artifact on
//! disk), warm requests, deploy to first response, what the server itself
//! reports as init duration (`/metrics`, when it serves one), and
//! start-to-ready with 10,000 functions deployed.

use crate::Ctx;
use crate::util::{TempDir, ms_since, progress, round, summary, variant};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use wisp_testkit::Server;

/// Distinct functions measured.
pub const FUNCTIONS: usize = 100;

/// Times one GET of `path` in milliseconds. A `/v1/health` request on the
/// same keep-alive client first makes sure a connection is open, so the
/// figure is the server's work plus one loopback round trip, not a TCP
/// handshake.
async fn time_get(http: &reqwest::Client, server: &Server, path: &str) -> Result<f64, String> {
    let _ = http.get(server.at("/v1/health")).send().await;
    let started = Instant::now();
    let res = http
        .get(server.at(path))
        .send()
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let status = res.status();
    res.bytes().await.map_err(|e| format!("{path}: {e}"))?;
    let ms = ms_since(started);
    if status != 200 {
        return Err(format!("{path}: {status}"));
    }
    Ok(ms)
}

/// A Prometheus histogram summed over every label set.
#[derive(Debug, Default, PartialEq)]
pub struct Histogram {
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: f64,
    /// Cumulative bucket counts by upper bound.
    pub buckets: Vec<(f64, f64)>,
}

impl Histogram {
    /// The smallest bucket bound holding at least `q` of the observations.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let want = q * self.count;
        self.buckets
            .iter()
            .find(|(_, c)| *c >= want)
            .map(|(le, _)| *le)
    }
}

/// Parses histogram `name` out of Prometheus text, summing label sets.
pub fn parse_histogram(text: &str, name: &str) -> Option<Histogram> {
    let mut h = Histogram::default();
    let mut found = false;
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let (metric, labels) = key.split_once('{').unwrap_or((key, ""));
        if metric == format!("{name}_sum") {
            h.sum += value;
            found = true;
        } else if metric == format!("{name}_count") {
            h.count += value;
            found = true;
        } else if metric == format!("{name}_bucket") {
            let le = labels
                .split(',')
                .find_map(|kv| kv.trim().strip_prefix("le="))
                .map(|v| v.trim_matches(|c| c == '"' || c == '}'))
                .and_then(|v| {
                    if v == "+Inf" {
                        Some(f64::INFINITY)
                    } else {
                        v.parse().ok()
                    }
                });
            if let Some(le) = le {
                match buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, c)) => *c += value,
                    None => buckets.push((le, value)),
                }
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    h.buckets = buckets;
    found.then_some(h)
}

/// What `/metrics` says about init duration, or why there is nothing.
async fn server_init_duration(http: &reqwest::Client, server: &Server) -> Value {
    let res = match http.get(server.at("/metrics")).send().await {
        Ok(r) => r,
        Err(e) => return json!({"available": false, "note": format!("GET /metrics failed: {e}")}),
    };
    if !res.status().is_success() {
        return json!({
            "available": false,
            "note": format!("the server does not serve /metrics yet (GET /metrics answered {})", res.status()),
        });
    }
    let text = res.text().await.unwrap_or_default();
    match parse_histogram(&text, "faas_init_duration_seconds") {
        Some(h) if h.count > 0.0 => json!({
            "available": true,
            "count": h.count as u64,
            "mean_ms": round(h.sum / h.count * 1000.0, 4),
            "p50_bucket_le_ms": h.quantile_bound(0.5).map(|v| v * 1000.0),
            "p99_bucket_le_ms": h.quantile_bound(0.99).map(|v| v * 1000.0),
        }),
        Some(_) => {
            json!({"available": false, "note": "faas_init_duration_seconds has no observations"})
        }
        None => {
            json!({"available": false, "note": "/metrics has no faas_init_duration_seconds histogram"})
        }
    }
}

/// Runs the section. `start_to_ready` is measured here only when
/// `own_fleet` (the density section, when it runs, measures it on its
/// 10,000 functions instead).
pub async fn run(ctx: &Ctx, own_fleet: bool) -> Value {
    let data = TempDir::new("cold");
    let mut server = Server::start_in(&ctx.wisp, data.path(), &[]);
    let admin = reqwest::Client::new();
    let http = reqwest::Client::new();
    let mut errors = Vec::<String>::new();

    progress(format!("cold: deploying {FUNCTIONS} functions one by one"));
    let mut after_deploy = Vec::new();
    let mut deploy_to_first = Vec::new();
    for n in 0..FUNCTIONS {
        let started = Instant::now();
        let r = async {
            let res = admin
                .post(server.at("/v1/artifacts"))
                .header("content-type", "application/wasm")
                .body(variant(&ctx.hello, "cold", n))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let body: Value = res.json().await.map_err(|e| e.to_string())?;
            let digest = body["digest"].as_str().ok_or(format!("upload: {body}"))?;
            let res = admin
                .put(server.at(&format!("/v1/functions/c{n}")))
                .json(&json!({"code_digest": digest}))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !res.status().is_success() {
                return Err(format!("create c{n}: {}", res.status()));
            }
            let first = time_get(&http, &server, &format!("/fn/c{n}")).await?;
            Ok::<f64, String>(first)
        }
        .await;
        match r {
            Ok(first) => {
                after_deploy.push(first);
                deploy_to_first.push(ms_since(started));
            }
            Err(e) => errors.push(e),
        }
    }
    let mut warm = Vec::new();
    for n in 0..FUNCTIONS {
        match time_get(&http, &server, &format!("/fn/c{n}")).await {
            Ok(ms) => warm.push(ms),
            Err(e) => errors.push(e),
        }
    }
    let metrics_after_deploy = server_init_duration(&http, &server).await;

    progress("cold: kill -9, restart, first request to each");
    server.restart_after_kill9();
    let http = reqwest::Client::new();
    let mut after_restart = Vec::new();
    for n in 0..FUNCTIONS {
        match time_get(&http, &server, &format!("/fn/c{n}")).await {
            Ok(ms) => after_restart.push(ms),
            Err(e) => errors.push(e),
        }
    }
    let metrics_after_restart = server_init_duration(&http, &server).await;
    drop(server);
    drop(data);

    let mut out = json!({
        "functions": FUNCTIONS,
        "first_request_after_deploy": summary(after_deploy),
        "first_request_after_restart": summary(after_restart),
        "warm_request": summary(warm),
        "deploy_to_first_response": summary(deploy_to_first),
        "server_init_duration_after_deploy": metrics_after_deploy,
        "server_init_duration_after_restart": metrics_after_restart,
        "errors": errors.len(),
        "first_errors": errors.iter().take(5).collect::<Vec<_>>(),
    });

    if own_fleet {
        let n = if ctx.quick { 1_000 } else { 10_000 };
        out["start_to_ready"] = start_to_ready_fleet(ctx, n).await;
    }
    out
}

/// Deploys `n` functions, stops the server, and times a fresh start until
/// `/v1/health` answers.
async fn start_to_ready_fleet(ctx: &Ctx, n: usize) -> Value {
    let data = TempDir::new("ready");
    let server = Server::start_in(&ctx.wisp, data.path(), &[]);
    progress(format!("cold: deploying {n} functions for start-to-ready"));
    let deploy = crate::density::deploy_fleet(
        ctx,
        &server,
        &data.path().join("compiled"),
        0,
        n,
        20,
        Duration::from_secs(900),
    )
    .await;
    let deployed = deploy["total_attempted"].clone();
    crate::density::stop(server);
    let mut samples = Vec::new();
    for _ in 0..3 {
        let (s, ms) = crate::density::start_to_ready(ctx, data.path(), &[]).await;
        samples.push(ms);
        crate::density::stop(s);
    }
    samples.sort_by(f64::total_cmp);
    json!({
        "functions": deployed,
        "ms": round(samples[samples.len() / 2], 1),
        "samples_ms": samples.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
        "measured_in": "cold",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_histogram_over_labels() {
        let text = "# TYPE faas_init_duration_seconds histogram\n\
faas_init_duration_seconds_bucket{function=\"a\",version=\"1\",le=\"0.001\"} 1\n\
faas_init_duration_seconds_bucket{function=\"a\",version=\"1\",le=\"0.01\"} 2\n\
faas_init_duration_seconds_bucket{function=\"a\",version=\"1\",le=\"+Inf\"} 2\n\
faas_init_duration_seconds_sum{function=\"a\",version=\"1\"} 0.004\n\
faas_init_duration_seconds_count{function=\"a\",version=\"1\"} 2\n\
faas_init_duration_seconds_bucket{function=\"b\",version=\"1\",le=\"0.001\"} 2\n\
faas_init_duration_seconds_bucket{function=\"b\",version=\"1\",le=\"0.01\"} 2\n\
faas_init_duration_seconds_bucket{function=\"b\",version=\"1\",le=\"+Inf\"} 2\n\
faas_init_duration_seconds_sum{function=\"b\",version=\"1\"} 0.001\n\
faas_init_duration_seconds_count{function=\"b\",version=\"1\"} 2\n";
        let h = parse_histogram(text, "faas_init_duration_seconds").unwrap();
        assert_eq!(h.count, 4.0);
        assert!((h.sum - 0.005).abs() < 1e-12);
        assert_eq!(h.quantile_bound(0.5), Some(0.001));
        assert_eq!(h.quantile_bound(0.99), Some(0.01));
        assert!(parse_histogram(text, "other").is_none());
    }
}
