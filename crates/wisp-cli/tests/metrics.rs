//! `GET /metrics` on a real server: exact counters, histograms and gauges
//! after a known mix of invocations, a well-formed OpenMetrics exposition,
//! and no token needed even when the control API requires one.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use wisp_testkit::{Api, Server, shared_cache_dir};

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One scrape: every sample as (name, labels, value).
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    /// Parses `text`, failing on any line that is not a `#` comment or
    /// `name{label="value",...} value`, and on samples whose family has no
    /// HELP and TYPE.
    fn parse(text: &str) -> Scrape {
        assert!(text.ends_with("# EOF\n"), "no # EOF terminator:\n{text}");
        let ident = |s: &str| {
            !s.is_empty()
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !s.starts_with(|c: char| c.is_ascii_digit())
        };
        let mut helped = Vec::new();
        let mut typed = Vec::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect(line);
                assert!(!help.trim().is_empty(), "empty HELP: {line}");
                helped.push(name.to_string());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, _) = rest.split_once(' ').expect(line);
                assert!(helped.iter().any(|h| h == name), "no HELP: {line}");
                typed.push(name.to_string());
                continue;
            }
            if line.starts_with('#') {
                assert!(line.starts_with("# UNIT ") || line == "# EOF", "{line}");
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect(line);
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line:?}"));
                    let labels = body
                        .split(',')
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').expect(line);
                            assert!(ident(k), "bad label name in {line:?}");
                            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                            (k.to_string(), v.expect(line).to_string())
                        })
                        .collect();
                    (name, labels)
                }
            };
            assert!(ident(name), "bad metric name in {line:?}");
            let family = ["_total", "_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| typed.iter().any(|t| t == f))
                })
                .unwrap_or(name);
            assert!(typed.iter().any(|t| t == family), "no TYPE for {line:?}");
            samples.push((name.to_string(), labels, value));
        }
        Scrape(samples)
    }

    /// The value of the sample with exactly this name and these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
    }

    /// The value for `function` at version `latest`, or 0 if absent.
    fn latest(&self, name: &str, function: &str) -> f64 {
        self.get(name, &[("function", function), ("version", "latest")])
            .unwrap_or(0.0)
    }
}

async fn scrape(http: &reqwest::Client, server: &Server) -> (String, Scrape) {
    let res = http.get(server.at("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], CONTENT_TYPE);
    let text = res.text().await.unwrap();
    let parsed = Scrape::parse(&text);
    (text, parsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_invocations_failures_and_cold_starts() {
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    let http = reqwest::Client::new();

    // Described before anything ran.
    let (text, _) = scrape(&http, &server).await;
    assert!(text.contains("# TYPE faas_invocations counter\n"), "{text}");

    api.deploy("hello", "hello", json!({})).await;
    api.deploy("panic", "panic", json!({})).await;
    api.deploy("sleep", "sleep", json!({"timeout_ms": 200}))
        .await;
    for _ in 0..3 {
        let (status, _, body) = api.call("/fn/hello").await;
        assert_eq!(status, 200, "{body}");
    }
    for _ in 0..2 {
        let (status, _, body) = api.call("/fn/panic").await;
        assert_eq!(status, 500, "{body}");
    }
    let (status, _, body) = api.call("/fn/sleep?ms=5000").await;
    assert_eq!(status, 504, "{body}");

    // A record reaches the metrics when its invocation has completely
    // finished, just after the client has its response: wait for all six.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (text, m) = loop {
        let (text, m) = scrape(&http, &server).await;
        let seen = m.latest("faas_invocations_total", "hello")
            + m.latest("faas_invocations_total", "panic")
            + m.latest("faas_invocations_total", "sleep");
        if seen >= 6.0 || Instant::now() > deadline {
            break (text, m);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let v = |name: &str, function: &str| m.latest(name, function);

    assert_eq!(v("faas_invocations_total", "hello"), 3.0, "{text}");
    assert_eq!(v("faas_invocations_total", "panic"), 2.0, "{text}");
    assert_eq!(v("faas_invocations_total", "sleep"), 1.0, "{text}");

    assert_eq!(v("faas_errors_total", "hello"), 0.0, "{text}");
    assert_eq!(v("faas_errors_total", "panic"), 2.0, "{text}");
    assert_eq!(v("faas_errors_total", "sleep"), 0.0, "{text}");
    assert_eq!(v("faas_timeouts_total", "sleep"), 1.0, "{text}");
    assert_eq!(v("faas_timeouts_total", "panic"), 0.0, "{text}");
    let failures = |function: &str, reason: &str| {
        m.get(
            "wisp_invocation_failures_total",
            &[
                ("function", function),
                ("version", "latest"),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(failures("panic", "trap"), Some(2.0), "{text}");
    assert_eq!(failures("sleep", "timeout"), Some(1.0), "{text}");
    assert_eq!(v("wisp_throttles_total", "hello"), 0.0, "{text}");

    for f in ["hello", "panic", "sleep"] {
        assert_eq!(v("faas_coldstarts_total", f), 1.0, "{f}: {text}");
        assert_eq!(v("faas_init_duration_seconds_count", f), 1.0, "{f}: {text}");
    }
    assert_eq!(v("faas_invoke_duration_seconds_count", "hello"), 3.0);
    // A fresh instance per request, each instantiated on the request's path
    // (the first two) or made ahead once the version is busy (the third,
    // unless its instance was not ready yet): not counted then.
    let instantiated = v("wisp_instantiate_duration_seconds_count", "hello");
    assert!((2.0..=3.0).contains(&instantiated), "{text}");
    assert_eq!(v("faas_invoke_duration_seconds_count", "panic"), 2.0);
    let inf = m.get(
        "faas_invoke_duration_seconds_bucket",
        &[("function", "hello"), ("version", "latest"), ("le", "+Inf")],
    );
    assert_eq!(inf, Some(3.0), "{text}");
    let sum = v("faas_invoke_duration_seconds_sum", "hello");
    assert!(sum > 0.0 && sum < 30.0, "{sum}");
    // The timed-out sleep ran for about its 200 ms timeout, not 5 s.
    let sleep_sum = v("faas_invoke_duration_seconds_sum", "sleep");
    assert!((0.15..4.0).contains(&sleep_sum), "{sleep_sum}");

    let ok = m.get(
        "wisp_http_responses_total",
        &[
            ("function", "hello"),
            ("version", "latest"),
            ("status_class", "2xx"),
        ],
    );
    assert_eq!(ok, Some(3.0), "{text}");

    let loaded = m.get("wisp_loaded_components", &[]).expect("loaded gauge");
    assert!(loaded >= 3.0, "{text}");
    for gauge in [
        "wisp_loaded_component_bytes",
        "wisp_instances",
        "wisp_instance_memory_bytes",
        "wisp_log_records_dropped_total",
    ] {
        assert!(m.get(gauge, &[]).is_some(), "{gauge} missing: {text}");
    }

    // A published version gets its own series.
    let (status, _) = api
        .send(reqwest::Method::POST, "/v1/functions/hello/versions", None)
        .await;
    assert_eq!(status, 201);
    let (status, _, _) = api.call("/fn/hello:1").await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (text, m) = scrape(&http, &server).await;
        let v1 = m.get(
            "faas_invocations_total",
            &[("function", "hello"), ("version", "1")],
        );
        if v1 == Some(1.0) {
            assert_eq!(m.latest("faas_invocations_total", "hello"), 3.0);
            break;
        }
        assert!(Instant::now() < deadline, "no series for hello:1\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Deleting a function removes its series.
    let (status, _) = api
        .send(reqwest::Method::DELETE, "/v1/functions/panic", None)
        .await;
    assert_eq!(status, 204);
    let (text, _) = scrape(&http, &server).await;
    assert!(!text.contains(r#"function="panic""#), "{text}");
    assert!(text.contains(r#"function="hello""#), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_no_token() {
    let cache = shared_cache_dir();
    let server = Server::start_with(
        env!("CARGO_BIN_EXE_wisp"),
        &["--cache-dir", cache.to_str().unwrap(), "--require-token"],
    );
    let http = reqwest::Client::new();
    let res = http.get(server.at("/v1/functions")).send().await.unwrap();
    assert_eq!(res.status(), 401, "the control API is guarded");
    let (text, _) = scrape(&http, &server).await;
    assert!(
        text.contains("# TYPE wisp_loaded_components gauge"),
        "{text}"
    );

    // The OpenAPI document describes the route.
    let doc: Value = http
        .get(server.at("/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let op = &doc["paths"]["/metrics"]["get"];
    assert!(
        op["responses"]["200"]["content"][CONTENT_TYPE].is_object(),
        "{op}"
    );
}
