//! The sandbox and its limits, enforced on a real server: a fresh instance
//! per request, memory limits, timeouts on sleeping and spinning guests,
//! traps, denied capabilities, and many concurrent requests.

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use wisp_testkit::{Api, Server};

fn server() -> Server {
    Server::start_shared(env!("CARGO_BIN_EXE_wisp"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_a_fresh_instance() {
    let server = server();
    let api = Api::new(&server);
    api.deploy("counter", "counter", json!({})).await;
    for _ in 0..5 {
        let (status, _, body) = api.call("/fn/counter").await;
        assert_eq!(status, 200);
        assert_eq!(body.trim(), "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_fails_the_invocation_not_the_server() {
    let server = server();
    let api = Api::new(&server);
    api.deploy("hog", "hog", json!({"memory_mib": 32})).await;
    api.deploy("hello", "hello", json!({})).await;

    let (status, _, body) = api.call("/fn/hog?mib=8").await;
    assert_eq!(status, 200, "under the limit works: {body}");

    let (status, headers, body) = api.call("/fn/hog?mib=64").await;
    assert_eq!(status, 500, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["code"], "memory_limit_exceeded");
    assert!(err["message"].as_str().unwrap().contains("32 MiB"), "{err}");
    assert_eq!(
        err["request_id"].as_str().unwrap(),
        headers["x-wisp-request-id"].to_str().unwrap()
    );

    let (status, _, body) = api.call("/fn/hello").await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "Hello from Wisp!\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_stop_spinning_and_sleeping_guests() {
    let server = server();
    let api = Api::new(&server);
    api.deploy("busy", "busy", json!({"timeout_ms": 300})).await;
    api.deploy("sleep", "sleep", json!({"timeout_ms": 300}))
        .await;
    api.deploy("hello", "hello", json!({})).await;

    for path in ["/fn/busy", "/fn/sleep?ms=10000"] {
        let started = Instant::now();
        let (status, _, body) = api.call(path).await;
        let took = started.elapsed();
        assert_eq!(status, 504, "{path}: {body}");
        let err: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(err["code"], "function_timeout");
        assert!(err["message"].as_str().unwrap().contains("300 ms"), "{err}");
        // Generous bound: the point is that it was stopped, not how fast.
        assert!(took < Duration::from_secs(8), "{path} took {took:?}");
    }
    // A sleep within its timeout completes.
    let (status, _, body) = api.call("/fn/sleep?ms=20").await;
    assert_eq!(status, 200, "{body}");
    // The spinning guest did not take a worker thread with it.
    let (status, _, _) = api.call("/fn/hello").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_is_a_500_with_the_request_id_and_is_logged() {
    let server = server();
    let api = Api::new(&server);
    api.deploy("panic", "panic", json!({})).await;
    let (status, headers, body) = api.call("/fn/panic").await;
    assert_eq!(status, 500, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["code"], "function_trapped");
    let request_id = headers["x-wisp-request-id"].to_str().unwrap().to_string();
    assert_eq!(err["request_id"], request_id.as_str());
    // The caller learns where to look, not the function's insides.
    let message = err["message"].as_str().unwrap();
    assert!(message.contains(&request_id), "{message}");
    for inside in ["backtrace", "wasm", "unreachable", "0x", "boom"] {
        assert!(!body.contains(inside), "`{inside}` in the answer: {body}");
    }

    // The trap and the guest's stderr are in the logs under that request id.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, page) = api
            .send(
                reqwest::Method::GET,
                &format!("/v1/functions/panic/logs?request_id={request_id}"),
                None,
            )
            .await;
        let records = page["records"].as_array().unwrap();
        let streams: Vec<&str> = records
            .iter()
            .map(|r| r["stream"].as_str().unwrap())
            .collect();
        if streams.contains(&"system") && streams.contains(&"stderr") {
            let text: String = records
                .iter()
                .map(|r| r["message"].as_str().unwrap())
                .collect();
            assert!(text.contains("about to panic"), "{text}");
            assert!(text.contains("trapped"), "{text}");
            // The trap itself, with its backtrace, is for the logs.
            assert!(text.contains("wasm backtrace"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "logs never appeared: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_filesystem_and_no_network() {
    let server = server();
    let api = Api::new(&server);
    api.deploy("probe", "probe", json!({})).await;
    let (status, _, body) = api.call("/fn/probe").await;
    assert_eq!(status, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    // Each attempt fails, and for the reason Wisp gives: no preopened
    // directory, outbound HTTP refused by policy, sockets not permitted.
    for (key, reason) in [
        ("fs_read_dir", "No such file"),
        ("fs_read", "No such file"),
        ("http_outgoing", "HttpRequestDenied"),
        ("tcp_connect", "denied"),
    ] {
        let verdict = report[key].as_str().unwrap_or("");
        assert!(verdict.starts_with("denied"), "{key}: {verdict} ({report})");
        assert!(verdict.contains(reason), "{key}: {verdict} ({report})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_sleeps_all_complete() {
    let server = server();
    let api = Api::new(&server);
    api.deploy("sleep", "sleep", json!({"max_concurrency": 1000}))
        .await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(400)
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..300 {
        let client = client.clone();
        let url = server.at("/fn/sleep?ms=500");
        tasks.push(tokio::spawn(async move {
            let res = client.get(url).send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, "slept 500ms\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_concurrency_is_throttled_with_retry_after() {
    // No waiting room: a request over the limit is refused at once.
    let server = Server::start_shared_with(env!("CARGO_BIN_EXE_wisp"), &["--queue-depth", "0"]);
    let api = Api::new(&server);
    api.deploy("sleep", "sleep", json!({"max_concurrency": 2}))
        .await;
    let mut running = Vec::new();
    for _ in 0..2 {
        let client = api.http.clone();
        let url = server.at("/fn/sleep?ms=1500");
        running.push(tokio::spawn(async move {
            client.get(url).send().await.unwrap().status()
        }));
    }
    // Wait until both are running (the stats see them only at the end, so poll by trying).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let res = api
        .http
        .get(server.at("/fn/sleep?ms=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "1");
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["code"], "throttled");
    for r in running {
        assert_eq!(r.await.unwrap(), 200);
    }
    let (_, stats) = api
        .send(reqwest::Method::GET, "/v1/functions/sleep/stats", None)
        .await;
    assert_eq!(stats["total"]["throttles"], 1, "{stats}");
}

/// What `hoard` reports it kept.
async fn hoard(api: &Api, query: &str) -> (u16, Value) {
    let (status, _, body) = api.call(&format!("/fn/hoard?{query}")).await;
    let value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{query}: {body}"));
    (status.as_u16(), value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_memory_a_function_makes_the_server_hold_is_bounded() {
    use wisp_core::limits::{
        MAX_FIELDS_BYTES, OUTGOING_BODY_BUFFER_CHUNKS, OUTGOING_BODY_CHUNK_BYTES,
        max_host_resources,
    };
    let server = server();
    let api = Api::new(&server);
    api.deploy("hoard", "hoard", json!({"memory_mib": 64}))
        .await;
    api.deploy("hello", "hello", json!({})).await;
    let limit = max_host_resources(64);

    // Within its share a function holds what it asks for.
    let (status, kept) = hoard(&api, "fields=100&bytes=1000").await;
    assert_eq!(
        (status, &kept["fields"], &kept["refused"]),
        (200, &json!(100), &json!(0))
    );
    // One header map larger than the limit stops the function.
    let (status, err) = hoard(&api, &format!("fields=1&bytes={MAX_FIELDS_BYTES}")).await;
    assert_eq!(
        (status, &err["code"]),
        (500, &json!("memory_limit_exceeded")),
        "{err}"
    );
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{MAX_FIELDS_BYTES} bytes")),
        "{err}"
    );
    // A response body holds at most its buffer, however much is written.
    let (status, kept) = hoard(&api, "fields=0&bodies=50").await;
    assert_eq!(status, 200, "{kept}");
    let per_body = OUTGOING_BODY_CHUNK_BYTES * (OUTGOING_BODY_BUFFER_CHUNKS + 1);
    assert_eq!(kept["body_bytes"], json!(50 * per_body), "{kept}");

    // Warm, then the baseline.
    for _ in 0..3 {
        assert_eq!(api.call("/fn/hello").await.0, 200);
    }
    let pid = server.pid();
    let baseline = wisp_testkit::proc_status_mib(pid, "VmRSS").unwrap();

    // 20,000 header maps of 60 KB (1.2 GB unbounded): stopped at the cap.
    let (status, err) = hoard(&api, "fields=20000&bytes=60000").await;
    assert_eq!(status, 500, "{err}");
    assert_eq!(err["code"], "memory_limit_exceeded", "{err}");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{limit} host resources")),
        "{err}"
    );

    // 100 of them one after another, then 40 eight at a time while
    // another function is called: every other call is served.
    for _ in 0..100 {
        assert_eq!(hoard(&api, "fields=20000&bytes=60000").await.0, 500);
    }
    let client = reqwest::Client::new();
    let mut hostile = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, url) = (
            client.clone(),
            server.at("/fn/hoard?fields=1000000&bytes=4000"),
        );
        hostile.spawn(async move {
            for _ in 0..5 {
                let res = client.get(&url).send().await.expect("hoard call");
                assert_eq!(res.status(), 500, "{:?}", res.text().await);
            }
        });
    }
    let mut served = 0;
    while !hostile.is_empty() {
        let (status, _, body) = api.call("/fn/hello").await;
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (200, "Hello from Wisp!\n")
        );
        served += 1;
        if let Some(done) = hostile.try_join_next() {
            done.expect("hostile caller");
        }
    }
    assert!(served > 0);

    // The server was never near running out of memory: eight instances at
    // once hold at most 8 x (64 MiB of memory + 64 MiB of host resources).
    let peak = wisp_testkit::proc_status_mib(pid, "VmHWM").unwrap();
    assert!(
        peak < baseline + 8.0 * 128.0 + 128.0,
        "peak RSS {peak:.0} MiB from a baseline of {baseline:.0} MiB"
    );
    // And what the requests held is given back once they end.
    let mut rss = f64::MAX;
    for _ in 0..100 {
        rss = wisp_testkit::proc_status_mib(pid, "VmRSS").unwrap();
        if rss <= baseline + 64.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        rss <= baseline + 64.0,
        "RSS {rss:.0} MiB stayed above the baseline of {baseline:.0} MiB + 64"
    );
    assert_eq!(api.call("/fn/hello").await.0, 200);
}

/// A CPU-bound function with every instance it may have spinning does
/// not hold up another function: its invocations queue for the worker
/// threads by the CPU time they have used, so the other function's
/// requests go ahead of them. 150 requests of `hello`, one after another,
/// all complete while the 16 spinning invocations (stopped only by their
/// 8 s timeout) are still running: behind 16 guests that each take a time
/// slice in turn they would take longer than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_bound_function_at_full_concurrency_does_not_hold_up_another() {
    const SPINNING: usize = 16;
    let server = server();
    let api = Api::new(&server);
    api.deploy(
        "busy",
        "busy",
        json!({"timeout_ms": 8000, "max_concurrency": SPINNING}),
    )
    .await;
    api.deploy("hello", "hello", json!({})).await;
    assert_eq!(api.call("/fn/hello").await.0, 200);

    let client = reqwest::Client::new();
    let mut spinning = tokio::task::JoinSet::new();
    for _ in 0..SPINNING {
        let (client, url) = (client.clone(), server.at("/fn/busy"));
        spinning.spawn(async move {
            let res = client.get(&url).send().await.expect("busy call");
            res.status().as_u16()
        });
    }
    // Every one of them running.
    let mut full = false;
    for _ in 0..200 {
        let metric = "wisp_concurrency_in_use{function=\"busy\",version=\"latest\"}";
        if server.metric(metric).await == Some(SPINNING as f64) {
            full = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(full, "the spinning invocations did not all start");

    for i in 0..150 {
        let (status, _, body) = api.call("/fn/hello").await;
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (200, "Hello from Wisp!\n"),
            "request {i}"
        );
        assert!(
            spinning.try_join_next().is_none(),
            "a spinning invocation ended (at its timeout) before hello's request {i} was served"
        );
    }
    // They do end, at their timeout.
    while let Some(status) = spinning.join_next().await {
        assert_eq!(status.unwrap(), 504);
    }
}
