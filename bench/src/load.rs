//! One load point: the external load generator against one loopback URL
//! at a fixed concurrency for a bounded time, with the server's CPU time
//! read from `/proc` before and after.

use crate::tools::{LoadGen, output_of};
use crate::util::{cpu_micros, peak_rss_mib, round};
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

/// The outcome of one load point.
#[derive(Debug, Default, Clone)]
pub struct Point {
    /// Concurrent connections.
    pub concurrency: u32,
    /// Requests completed (any status).
    pub requests: u64,
    /// Requests per second (completed requests over the run time).
    pub rps: f64,
    /// Median latency, in milliseconds.
    pub p50_ms: f64,
    /// 99th-percentile latency, in milliseconds.
    pub p99_ms: f64,
    /// Non-2xx responses plus connection or protocol errors.
    pub errors: u64,
    /// Responses by status code, and errors by kind.
    pub detail: Value,
    /// Server CPU (user + system) per completed request, in microseconds.
    pub cpu_us_per_req: Option<f64>,
    /// Server peak RSS (`VmHWM`) after the point, in MiB.
    pub peak_rss_mib: Option<f64>,
}

impl Point {
    /// The JSON form.
    pub fn to_json(&self) -> Value {
        json!({
            "concurrency": self.concurrency,
            "requests": self.requests,
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 4),
            "p99_ms": round(self.p99_ms, 4),
            "errors": self.errors,
            "detail": self.detail,
            "cpu_us_per_req": self.cpu_us_per_req.map(|v| round(v, 2)),
            "peak_rss_mib": self.peak_rss_mib.map(|v| round(v, 1)),
        })
    }
}

/// Runs `gen` against `url` (which must be on 127.0.0.1) for `duration` at
/// `concurrency`, measuring the CPU of `server_pid`.
pub fn run(
    load: &LoadGen,
    url: &str,
    concurrency: u32,
    duration: Duration,
    server_pid: u32,
) -> Result<Point, String> {
    measure(server_pid, concurrency, || match load {
        LoadGen::Oha(bin) => run_oha(bin, loopback(url), concurrency, duration, false),
        LoadGen::Wrk(bin) => run_wrk(bin, loopback(url), concurrency, duration),
    })
}

/// Like [`run`], but every request goes to a new URL drawn from
/// `pattern`, a regular expression (such as `http://127.0.0.1:8080/fn/[a-z]{16}`):
/// a flood of names nobody deployed. Needs oha.
pub fn run_random(
    load: &LoadGen,
    pattern: &str,
    concurrency: u32,
    duration: Duration,
    server_pid: u32,
) -> Result<Point, String> {
    let LoadGen::Oha(bin) = load else {
        return Err("random URLs need oha".into());
    };
    measure(server_pid, concurrency, || {
        run_oha(bin, loopback(pattern), concurrency, duration, true)
    })
}

/// `url`, checked to be on loopback.
fn loopback(url: &str) -> &str {
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "load only ever targets loopback: {url}"
    );
    url
}

/// Runs `load` and adds the server's CPU per request and peak RSS.
fn measure(
    server_pid: u32,
    concurrency: u32,
    load: impl FnOnce() -> Result<Point, String>,
) -> Result<Point, String> {
    let cpu_before = cpu_micros(server_pid);
    let mut point = load()?;
    let cpu_after = cpu_micros(server_pid);
    point.concurrency = concurrency;
    if let (Some(a), Some(b)) = (cpu_before, cpu_after)
        && point.requests > 0
    {
        point.cpu_us_per_req = Some((b - a) / point.requests as f64);
    }
    point.peak_rss_mib = peak_rss_mib(server_pid);
    Ok(point)
}

fn run_oha(
    bin: &std::path::Path,
    url: &str,
    concurrency: u32,
    duration: Duration,
    random_url: bool,
) -> Result<Point, String> {
    let help = output_of(bin, &["--help"]).unwrap_or_default();
    let mut cmd = Command::new(bin);
    cmd.arg("-z")
        .arg(format!("{}s", duration.as_secs().max(1)))
        .arg("-c")
        .arg(concurrency.to_string())
        .arg("--no-tui");
    if help.contains("--output-format") {
        cmd.args(["--output-format", "json"]);
    } else {
        cmd.arg("-j");
    }
    // Let requests in flight at the deadline finish rather than count
    // them as errors.
    if help.contains("--wait-ongoing-requests-after-deadline") {
        cmd.arg("--wait-ongoing-requests-after-deadline");
    }
    if random_url {
        cmd.arg("--rand-regex-url");
    }
    cmd.arg(url);
    let out = cmd.output().map_err(|e| format!("running oha: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "oha failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.trim()).map_err(|e| {
        format!(
            "oha JSON: {e}: {}",
            text.chars().take(300).collect::<String>()
        )
    })?;
    parse_oha(&v)
}

/// Reads oha's JSON report (times in seconds).
pub fn parse_oha(v: &Value) -> Result<Point, String> {
    let secs = |x: &Value| x.as_f64().map(|s| s * 1000.0).unwrap_or(f64::NAN);
    let mut ok = 0u64;
    let mut bad_status = 0u64;
    let mut statuses = serde_json::Map::new();
    if let Some(m) = v["statusCodeDistribution"].as_object() {
        for (code, n) in m {
            let n = n.as_u64().unwrap_or(0);
            if code.starts_with('2') {
                ok += n;
            } else {
                bad_status += n;
            }
            statuses.insert(code.clone(), n.into());
        }
    }
    let mut errors = serde_json::Map::new();
    let mut error_count = 0u64;
    let mut aborted = 0u64;
    if let Some(m) = v["errorDistribution"].as_object() {
        for (kind, n) in m {
            let n = n.as_u64().unwrap_or(0);
            if kind.contains("deadline") {
                aborted += n;
            } else {
                error_count += n;
            }
            errors.insert(kind.clone(), n.into());
        }
    }
    let total_secs = v["summary"]["total"].as_f64().unwrap_or(0.0);
    let requests = ok + bad_status + error_count;
    let rps = v["summary"]["requestsPerSec"]
        .as_f64()
        .unwrap_or_else(|| requests as f64 / total_secs.max(1e-9));
    Ok(Point {
        requests,
        rps,
        p50_ms: secs(&v["latencyPercentiles"]["p50"]),
        p99_ms: secs(&v["latencyPercentiles"]["p99"]),
        errors: bad_status + error_count,
        detail: json!({
            "status": statuses,
            "errors": errors,
            "aborted_at_deadline": aborted,
            "seconds": total_secs,
        }),
        ..Point::default()
    })
}

fn run_wrk(
    bin: &std::path::Path,
    url: &str,
    concurrency: u32,
    duration: Duration,
) -> Result<Point, String> {
    let threads = concurrency.clamp(1, 2);
    let out = Command::new(bin)
        .arg(format!("-t{threads}"))
        .arg(format!("-c{concurrency}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--latency")
        .arg(url)
        .output()
        .map_err(|e| format!("running wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("wrk failed: {text}"));
    }
    parse_wrk(&text, duration)
}

/// `123.45us`, `1.2ms`, `2s` as milliseconds.
fn wrk_time(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * mul)
}

/// Reads wrk's `--latency` text report.
pub fn parse_wrk(text: &str, duration: Duration) -> Result<Point, String> {
    let mut p = Point::default();
    let mut socket_errors = 0u64;
    let mut non2xx = 0u64;
    for line in text.lines() {
        let t = line.trim();
        let mut parts = t.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("50%"), Some(v)) => p.p50_ms = wrk_time(v).unwrap_or(f64::NAN),
            (Some("99%"), Some(v)) => p.p99_ms = wrk_time(v).unwrap_or(f64::NAN),
            (Some("Requests/sec:"), Some(v)) => p.rps = v.parse().unwrap_or(0.0),
            (Some(n), Some("requests")) => p.requests = n.parse().unwrap_or(0),
            _ => {}
        }
        if let Some(rest) = t.strip_prefix("Non-2xx or 3xx responses:") {
            non2xx = rest.trim().parse().unwrap_or(0);
        }
        if let Some(rest) = t.strip_prefix("Socket errors:") {
            socket_errors = rest
                .split(',')
                .filter_map(|kv| kv.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        }
    }
    if p.requests == 0 {
        return Err(format!("wrk output not understood: {text}"));
    }
    if p.rps == 0.0 {
        p.rps = p.requests as f64 / duration.as_secs_f64();
    }
    p.errors = non2xx + socket_errors;
    p.detail = json!({"non_2xx": non2xx, "socket_errors": socket_errors});
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk() {
        let text = "Running 1s test @ http://127.0.0.1:1/\n  Latency Distribution\n     50%  123.00us\n     75%  200.00us\n     90%  300.00us\n     99%    1.50ms\n  1000 requests in 1.00s, 100.00KB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:    999.50\n";
        let p = parse_wrk(text, Duration::from_secs(1)).unwrap();
        assert_eq!(p.requests, 1000);
        assert!((p.p50_ms - 0.123).abs() < 1e-9);
        assert!((p.p99_ms - 1.5).abs() < 1e-9);
        assert_eq!(p.errors, 7);
        assert!((p.rps - 999.5).abs() < 1e-9);
    }

    #[test]
    fn reads_oha() {
        let v = json!({
            "summary": {"total": 2.0, "requestsPerSec": 500.0},
            "latencyPercentiles": {"p50": 0.0001, "p99": 0.002},
            "statusCodeDistribution": {"200": 990, "429": 5},
            "errorDistribution": {"connection reset": 5, "aborted due to deadline": 3}
        });
        let p = parse_oha(&v).unwrap();
        assert_eq!(p.requests, 1000);
        assert_eq!(p.errors, 10);
        assert!((p.p50_ms - 0.1).abs() < 1e-9);
        assert!((p.p99_ms - 2.0).abs() < 1e-9);
    }
}
