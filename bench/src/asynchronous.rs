//! Asynchronous invocation: CloudEvents posted to
//! `POST /v1/functions/{name}/events` on real release servers.
//!
//! - **Accept path**: events accepted (202, committed to disk) per second of
//!   posting wall time, with one structured event
//!   (`application/cloudevents+json`) per request and with batches
//!   (`application/cloudevents-batch+json`). The dispatcher runs the
//!   accepted events concurrently, as it would in production.
//! - **End to end**: events per second from the first post until every
//!   invocation is final (`succeeded`), with `hello` as the no-op.
//! - **Enqueue-to-start latency** at half of the end-to-end peak: single
//!   events posted at a steady rate, then `attempts[0].started_at −
//!   enqueued_at` read back for a sample of invocations.
//!
//! The throughput runs are repeated (three trials, one with `--quick`) and
//! the median trial reported. Every run gets a fresh server (an empty
//! queue) sharing one compiled-code cache, and spreads its events over several functions deployed from
//! `hello`, sized to stay under the per-function queue depth limit
//! (10,000); a 429 is counted, never retried.

use crate::Ctx;
use crate::util::{TempDir, cpu_micros, progress, round, summary};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wisp_testkit::Server;

/// Functions the accept runs spread their events over.
pub const ACCEPT_FUNCTIONS: usize = 32;
/// Functions the end-to-end and latency runs spread their events over.
pub const E2E_FUNCTIONS: usize = 8;
/// Concurrent clients posting one event per request.
pub const SINGLE_CLIENTS: usize = 128;
/// Concurrent clients posting batches.
pub const BATCH_CLIENTS: usize = 16;
/// Events per batch request.
pub const BATCH: usize = 100;
/// Invocations whose timings are read back in the latency run.
pub const LATENCY_SAMPLE: usize = 500;
/// Most single-event requests in flight in the latency run.
const PACED_IN_FLIGHT: usize = 256;
/// No posting run takes longer than this (it stops taking new requests).
const POST_BUDGET: Duration = Duration::from_secs(120);
/// The longest wait for a backlog to become final.
const DRAIN_BUDGET: Duration = Duration::from_secs(180);

const STRUCTURED: &str = "application/cloudevents+json";
const BATCHED: &str = "application/cloudevents-batch+json";

/// One event in structured JSON, unique by `tag` and `seq`.
fn event_json(out: &mut String, tag: &str, seq: u64) {
    let _ = write!(
        out,
        r#"{{"specversion":"1.0","id":"{tag}-{seq}","source":"/wisp-bench/async","type":"dev.wisp.bench.tick","datacontenttype":"application/json","data":{{"seq":{seq}}}}}"#
    );
}

/// The body of request `r` (events `r * per ..`): one event, or a batch.
fn body(tag: &str, r: u64, per: usize, batch: bool) -> String {
    let mut out = String::with_capacity(per * 180 + 2);
    if !batch {
        event_json(&mut out, tag, r);
        return out;
    }
    out.push('[');
    for i in 0..per as u64 {
        if i > 0 {
            out.push(',');
        }
        event_json(&mut out, tag, r * per as u64 + i);
    }
    out.push(']');
    out
}

/// A fresh server with `n` functions deployed from `hello`, each invoked
/// once through the events route (so components are loaded, connections
/// open, and the queue has written once).
struct Bench {
    server: Server,
    _data: TempDir,
    http: reqwest::Client,
    /// `/v1/functions/{name}/events` of each function.
    events_urls: Vec<String>,
    names: Vec<String>,
}

impl Bench {
    async fn start(ctx: &Ctx, cache: &TempDir, label: &str, n: usize) -> Result<Bench, String> {
        let data = TempDir::new(&format!("async-{label}"));
        let cache_dir = cache.path().to_str().expect("UTF-8 path").to_string();
        let server = Server::start_in(&ctx.wisp, data.path(), &["--cache-dir", &cache_dir]);
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(PACED_IN_FLIGHT)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        let res = http
            .post(server.at("/v1/artifacts"))
            .header("content-type", "application/wasm")
            .body(ctx.hello.clone())
            .send()
            .await
            .map_err(|e| format!("upload: {e}"))?;
        let up: Value = res.json().await.map_err(|e| format!("upload: {e}"))?;
        let digest = up["digest"]
            .as_str()
            .ok_or(format!("upload: {up}"))?
            .to_string();
        let names: Vec<String> = (0..n).map(|i| format!("ev{i}")).collect();
        for name in &names {
            let res = http
                .put(server.at(&format!("/v1/functions/{name}")))
                .json(&json!({"code_digest": digest}))
                .send()
                .await
                .map_err(|e| format!("create {name}: {e}"))?;
            if !res.status().is_success() {
                return Err(format!("create {name}: {}", res.status()));
            }
        }
        let events_urls: Vec<String> = names
            .iter()
            .map(|n| server.at(&format!("/v1/functions/{n}/events")))
            .collect();
        let bench = Bench {
            server,
            _data: data,
            http,
            events_urls,
            names,
        };
        for (i, url) in bench.events_urls.iter().enumerate() {
            let res = bench
                .http
                .post(url)
                .header("content-type", STRUCTURED)
                .body(body("warmup", i as u64, 1, false))
                .send()
                .await
                .map_err(|e| format!("warm-up: {e}"))?;
            if res.status() != 202 {
                return Err(format!("warm-up event: {}", res.status()));
            }
        }
        bench.wait_final(n as u64, Instant::now()).await?;
        Ok(bench)
    }

    /// Sums one counter of `/metrics` over every series.
    async fn metric_sum(&self, name: &str) -> Result<f64, String> {
        let text = self
            .http
            .get(self.server.at("/metrics"))
            .send()
            .await
            .map_err(|e| format!("/metrics: {e}"))?
            .text()
            .await
            .map_err(|e| format!("/metrics: {e}"))?;
        let prefix = format!("{name}{{");
        Ok(text
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum())
    }

    /// Whether any function has an invocation in one of `statuses`.
    async fn any_in(&self, statuses: &[&str]) -> Result<bool, String> {
        for name in &self.names {
            for s in statuses {
                let url = self.server.at(&format!(
                    "/v1/functions/{name}/invocations?status={s}&limit=1"
                ));
                let v: Value = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| format!("listing: {e}"))?
                    .json()
                    .await
                    .map_err(|e| format!("listing: {e}"))?;
                if v["invocations"].as_array().is_none_or(|a| !a.is_empty()) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Waits until at least `runs` invocations have run in all
    /// (`faas_invocations_total`, cheap to poll) and then no invocation is
    /// queued, running or retrying (the listing, which sees the recorded
    /// status). Answers the seconds from `since` to that confirmation.
    async fn wait_final(&self, runs: u64, since: Instant) -> Result<f64, String> {
        let deadline = Instant::now() + DRAIN_BUDGET;
        loop {
            if self.metric_sum("faas_invocations_total").await? >= runs as f64
                && !self.any_in(&["queued", "running", "retrying"]).await?
            {
                return Ok(since.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not every invocation was final after {} s ({} of {runs} had run)",
                    DRAIN_BUDGET.as_secs(),
                    self.metric_sum("faas_invocations_total").await?
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Invocations run so far.
    async fn runs(&self) -> u64 {
        self.metric_sum("faas_invocations_total")
            .await
            .unwrap_or(0.0) as u64
    }
}

/// What one posting run saw.
#[derive(Default)]
struct Posted {
    requests: u64,
    /// Events answered 202.
    accepted: u64,
    /// Events refused with 429 (a full queue refuses a whole batch).
    throttled_events: u64,
    /// Responses by status.
    statuses: BTreeMap<String, u64>,
    /// Connection errors and unexpected statuses.
    errors: u64,
    first_error: Option<String>,
    /// Time to the 202 of each request, in milliseconds.
    ack_ms: Vec<f64>,
    /// `(seq, invocation id)` of accepted single events, when asked for.
    ids: Vec<(u64, String)>,
}

impl Posted {
    fn merge(&mut self, o: Posted) {
        self.requests += o.requests;
        self.accepted += o.accepted;
        self.throttled_events += o.throttled_events;
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.ack_ms.extend(o.ack_ms);
        self.ids.extend(o.ids);
    }
}

/// Posts request `r` (event `r`, or batch `r` of `per` events) to its
/// function and records the outcome in `out`; the invocation id of a
/// single event is kept when `keep_id`.
async fn post_one(
    http: &reqwest::Client,
    urls: &[String],
    tag: &str,
    r: u64,
    per: usize,
    keep_id: bool,
    out: &mut Posted,
) {
    let batch = per > 1;
    let url = &urls[(r % urls.len() as u64) as usize];
    let payload = body(tag, r, per, batch);
    let started = Instant::now();
    let res = http
        .post(url)
        .header("content-type", if batch { BATCHED } else { STRUCTURED })
        .body(payload)
        .send()
        .await;
    out.requests += 1;
    let (status, bytes) = match res {
        Ok(res) => {
            let status = res.status().as_u16();
            match res.bytes().await {
                Ok(b) => (status, b),
                Err(e) => {
                    out.errors += 1;
                    out.first_error.get_or_insert(e.to_string());
                    *out.statuses.entry("connection error".into()).or_default() += 1;
                    return;
                }
            }
        }
        Err(e) => {
            out.errors += 1;
            out.first_error.get_or_insert(e.to_string());
            *out.statuses.entry("connection error".into()).or_default() += 1;
            return;
        }
    };
    *out.statuses.entry(status.to_string()).or_default() += 1;
    match status {
        202 => {
            out.accepted += per as u64;
            out.ack_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            if keep_id {
                let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                if let Some(id) = v["accepted"][0]["id"].as_str() {
                    out.ids.push((r, id.to_string()));
                }
            }
        }
        429 => out.throttled_events += per as u64,
        _ => {
            out.errors += 1;
            out.first_error
                .get_or_insert_with(|| format!("{status}: {}", String::from_utf8_lossy(&bytes)));
        }
    }
}

/// Posts `requests` requests of `per` events from `clients` concurrent
/// clients as fast as they go (bounded by [`POST_BUDGET`]); answers what
/// was seen and the posting wall time in seconds.
async fn post_flat_out(
    b: &Bench,
    tag: &str,
    requests: u64,
    per: usize,
    clients: usize,
) -> (Posted, f64) {
    let next = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let urls = Arc::new(b.events_urls.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (http, urls, next, gate) = (b.http.clone(), urls.clone(), next.clone(), gate.clone());
        let tag = tag.to_string();
        tasks.spawn(async move {
            let mut out = Posted::default();
            gate.wait().await;
            let started = Instant::now();
            loop {
                let r = next.fetch_add(1, Ordering::Relaxed);
                if r >= requests || started.elapsed() > POST_BUDGET {
                    break;
                }
                post_one(&http, &urls, &tag, r, per, false, &mut out).await;
            }
            out
        });
    }
    gate.wait().await;
    let started = Instant::now();
    let mut all = Posted::default();
    while let Some(done) = tasks.join_next().await {
        all.merge(done.expect("posting task"));
    }
    (all, started.elapsed().as_secs_f64())
}

/// The JSON of a posting run.
fn posted_json(p: &Posted, seconds: f64) -> Value {
    json!({
        "requests": p.requests,
        "accepted_events": p.accepted,
        "throttled_events": p.throttled_events,
        "errors": p.errors,
        "first_error": p.first_error,
        "statuses": p.statuses,
        "seconds": round(seconds, 3),
        "accepted_per_second": round(p.accepted as f64 / seconds.max(1e-9), 1),
        "ack_latency": summary(p.ack_ms.clone()),
    })
}

/// CPU microseconds of `pid` between two readings, per event.
pub(crate) fn per_event(before: Option<f64>, after: Option<f64>, events: u64) -> Option<f64> {
    match (before, after) {
        (Some(a), Some(b)) if events > 0 => Some(round((b - a) / events as f64, 2)),
        _ => None,
    }
}

/// Cores the process `pid` kept busy between two readings `seconds` apart.
pub(crate) fn cores_busy(before: Option<f64>, after: Option<f64>, seconds: f64) -> Option<f64> {
    match (before, after) {
        (Some(a), Some(b)) if seconds > 0.0 => Some(round((b - a) / 1e6 / seconds, 2)),
        _ => None,
    }
}

/// Accept path: one fresh server, events posted flat out.
async fn accept(ctx: &Ctx, cache: &TempDir, batch: bool) -> Result<Value, String> {
    let label = if batch {
        "accept-batch"
    } else {
        "accept-single"
    };
    let b = Bench::start(ctx, cache, label, ACCEPT_FUNCTIONS).await?;
    let (per, clients, events) = if batch {
        (
            BATCH,
            BATCH_CLIENTS,
            if ctx.quick { 20_000 } else { 200_000 },
        )
    } else {
        (1, SINGLE_CLIENTS, if ctx.quick { 8_000 } else { 60_000 })
    };
    let requests = (events / per) as u64;
    let runs_before = b.runs().await;
    let me = std::process::id();
    let (srv0, cli0) = (cpu_micros(b.server.pid()), cpu_micros(me));
    let (posted, seconds) = post_flat_out(&b, label, requests, per, clients).await;
    let (srv1, cli1) = (cpu_micros(b.server.pid()), cpu_micros(me));
    let ran_meanwhile = b.runs().await.saturating_sub(runs_before);
    let mut v = posted_json(&posted, seconds);
    v["mode"] = json!(if batch { "batch" } else { "single" });
    v["events_per_request"] = json!(per);
    v["clients"] = json!(clients);
    v["functions"] = json!(ACCEPT_FUNCTIONS);
    v["run_by_dispatcher_while_posting"] = json!(ran_meanwhile);
    v["server_cpu_us_per_event"] = json!(per_event(srv0, srv1, posted.accepted));
    v["harness_cpu_us_per_event"] = json!(per_event(cli0, cli1, posted.accepted));
    v["server_cores_busy"] = json!(cores_busy(srv0, srv1, seconds));
    v["harness_cores_busy"] = json!(cores_busy(cli0, cli1, seconds));
    progress(format!(
        "async accept ({}): {} events accepted in {seconds:.2} s = {:.0}/s, {} throttled, {} errors",
        v["mode"],
        posted.accepted,
        v["accepted_per_second"],
        posted.throttled_events,
        posted.errors
    ));
    Ok(v)
}

/// End to end: `events` posted (in batches, or one per request) to a fresh
/// server, timed until every invocation is final.
async fn end_to_end(ctx: &Ctx, cache: &TempDir, batch: bool) -> Result<Value, String> {
    let label = if batch { "e2e-batch" } else { "e2e-single" };
    let b = Bench::start(ctx, cache, label, E2E_FUNCTIONS).await?;
    let events: usize = if ctx.quick { 2_000 } else { 40_000 };
    let (per, clients) = if batch {
        (BATCH, BATCH_CLIENTS)
    } else {
        (1, SINGLE_CLIENTS)
    };
    let runs_before = b.runs().await;
    let me = std::process::id();
    let (srv0, cli0) = (cpu_micros(b.server.pid()), cpu_micros(me));
    let started = Instant::now();
    let (posted, post_seconds) =
        post_flat_out(&b, label, (events / per) as u64, per, clients).await;
    let final_seconds = b.wait_final(runs_before + posted.accepted, started).await?;
    let (srv1, cli1) = (cpu_micros(b.server.pid()), cpu_micros(me));
    let failed = b.any_in(&["failed", "dead"]).await?;
    let errors =
        b.metric_sum("faas_errors_total").await? + b.metric_sum("faas_timeouts_total").await?;
    let runs = b.runs().await.saturating_sub(runs_before);
    let v = json!({
        "mode": if batch { "batch" } else { "single" },
        "events_per_request": per,
        "clients": clients,
        "functions": E2E_FUNCTIONS,
        "events": events,
        "posting": posted_json(&posted, post_seconds),
        "seconds_to_all_final": round(final_seconds, 3),
        "completed_per_second": round(posted.accepted as f64 / final_seconds.max(1e-9), 1),
        "runs": runs,
        "any_failed_or_dead": failed,
        "function_errors": errors as u64,
        "server_cpu_us_per_event": per_event(srv0, srv1, posted.accepted),
        "harness_cpu_us_per_event": per_event(cli0, cli1, posted.accepted),
        "server_cores_busy": cores_busy(srv0, srv1, final_seconds),
        "harness_cores_busy": cores_busy(cli0, cli1, final_seconds),
    });
    progress(format!(
        "async end to end ({}): {} events final in {final_seconds:.2} s = {:.0}/s (posting took {post_seconds:.2} s)",
        v["mode"], posted.accepted, v["completed_per_second"]
    ));
    Ok(v)
}

/// Parses an RFC 3339 timestamp of the API.
pub(crate) fn ts(v: &Value) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok()
}

/// Enqueue-to-start latency: single events at `rate` per second for the
/// point duration, then the timings of a sample read back.
async fn latency(ctx: &Ctx, cache: &TempDir, rate: f64) -> Result<Value, String> {
    let b = Bench::start(ctx, cache, "latency", E2E_FUNCTIONS).await?;
    let duration = ctx.point_duration();
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let urls = Arc::new(b.events_urls.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(PACED_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    let runs_before = b.runs().await;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < total && started.elapsed() < POST_BUDGET {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(total);
        while sent < due {
            let permit = slots.clone().acquire_owned().await.expect("semaphore");
            let (http, urls) = (b.http.clone(), urls.clone());
            let r = sent;
            tasks.spawn(async move {
                let mut out = Posted::default();
                post_one(&http, &urls, "paced", r, 1, true, &mut out).await;
                drop(permit);
                out
            });
            sent += 1;
        }
    }
    let post_seconds = started.elapsed().as_secs_f64();
    let mut posted = Posted::default();
    while let Some(done) = tasks.join_next().await {
        posted.merge(done.expect("paced task"));
    }
    b.wait_final(runs_before + posted.accepted, started).await?;

    // An even sample over the run, by send order.
    posted.ids.sort_unstable_by_key(|(r, _)| *r);
    let step = (posted.ids.len() / LATENCY_SAMPLE).max(1);
    let sample: Vec<String> = posted
        .ids
        .iter()
        .step_by(step)
        .take(LATENCY_SAMPLE)
        .map(|(_, id)| id.clone())
        .collect();
    let (mut to_start, mut to_finish, mut read_errors) = (Vec::new(), Vec::new(), 0u64);
    for id in &sample {
        let v: Value = match b
            .http
            .get(b.server.at(&format!("/v1/invocations/{id}")))
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let enq = ts(&v["enqueued_at"]);
        let first = &v["attempts"][0];
        match (enq, ts(&first["started_at"]), ts(&first["finished_at"])) {
            (Some(e), Some(s), Some(f)) if v["status"] == "succeeded" => {
                to_start.push((s - e).num_nanoseconds().unwrap_or(0) as f64 / 1e6);
                to_finish.push((f - e).num_nanoseconds().unwrap_or(0) as f64 / 1e6);
            }
            _ => read_errors += 1,
        }
    }
    let v = json!({
        "target_rate": round(rate, 1),
        "seconds": duration.as_secs(),
        "posted": sent,
        "achieved_rate": round(sent as f64 / post_seconds.max(1e-9), 1),
        "posting": posted_json(&posted, post_seconds),
        "functions": E2E_FUNCTIONS,
        "sampled": sample.len(),
        "sample_unreadable_or_not_succeeded": read_errors,
        "enqueue_to_start": summary(to_start),
        "enqueue_to_finish": summary(to_finish),
    });
    progress(format!(
        "async latency at {rate:.0} events/s: enqueue to start {}",
        v["enqueue_to_start"]
    ));
    Ok(v)
}

/// Runs `f` `n` times and answers the trial with the median `key` (the
/// runs are short and the machine is shared), with every trial's `key`
/// under `trials`.
pub(crate) async fn median_of<F, Fut>(n: usize, key: &str, mut f: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Value, String>>,
{
    let (mut ok, mut errors) = (Vec::new(), Vec::new());
    for _ in 0..n {
        match f().await {
            Ok(v) => ok.push(v),
            Err(e) => errors.push(e),
        }
    }
    let rate = |v: &Value| v[key].as_f64().unwrap_or(0.0);
    let rates: Vec<f64> = ok.iter().map(rate).collect();
    ok.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
    let Some(mid) = ok.get(ok.len() / 2) else {
        return json!({"error": errors.join("; ")});
    };
    let mut median = mid.clone();
    median["trials"] = json!({"n": rates.len(), key: rates, "errors": errors});
    median
}

/// Runs the section.
pub async fn run(ctx: &Ctx) -> Value {
    let cache = TempDir::new("async-cache");
    let trials = if ctx.quick { 1 } else { 3 };
    let rate = "accepted_per_second";
    let accept_single = median_of(trials, rate, || accept(ctx, &cache, false)).await;
    let accept_batch = median_of(trials, rate, || accept(ctx, &cache, true)).await;
    let rate = "completed_per_second";
    let e2e_batch = median_of(trials, rate, || end_to_end(ctx, &cache, true)).await;
    let e2e_single = median_of(trials, rate, || end_to_end(ctx, &cache, false)).await;
    // Half of the better end-to-end rate.
    let peak = [&e2e_batch, &e2e_single]
        .iter()
        .filter_map(|v| v[rate].as_f64())
        .fold(0.0, f64::max);
    let latency = if peak > 0.0 {
        latency(ctx, &cache, peak / 2.0)
            .await
            .unwrap_or_else(|e| json!({"error": e}))
    } else {
        json!({"error": "no end-to-end rate to take half of"})
    };
    json!({
        "durability": "SQLite in WAL mode with synchronous=FULL, group commit",
        "trials": trials,
        "accept": {"single": accept_single, "batch": accept_batch},
        "end_to_end": {"batch": e2e_batch, "single": e2e_single},
        "latency_at_half_peak": latency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_events() {
        let one: Value = serde_json::from_str(&body("t", 7, 1, false)).unwrap();
        assert_eq!(one["id"], "t-7");
        assert_eq!(one["specversion"], "1.0");
        let many: Value = serde_json::from_str(&body("t", 2, 3, true)).unwrap();
        let ids: Vec<&str> = many
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["t-6", "t-7", "t-8"]);
    }
}
