//! Scaling from zero and back, admission control, warm capacity and
//! instance reuse, observed on a real server through its API and /metrics.

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use wisp_testkit::{Api, Server, eventually};

const BIN: &str = env!("CARGO_BIN_EXE_wisp");

async fn loaded(server: &Server) -> f64 {
    server
        .metric("wisp_loaded_components")
        .await
        .expect("wisp_loaded_components is exported")
}

async fn cold_starts(api: &Api, name: &str) -> u64 {
    let (_, stats) = api
        .send(
            reqwest::Method::GET,
            &format!("/v1/functions/{name}/stats"),
            None,
        )
        .await;
    stats["total"]["cold_starts"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_from_zero_and_back_to_zero_when_idle() {
    let server = Server::start_shared_with(BIN, &["--idle-timeout", "1"]);
    let api = Api::new(&server);
    api.deploy("hello", "hello", json!({})).await;
    assert_eq!(
        loaded(&server).await,
        0.0,
        "a never-invoked version must not be loaded"
    );

    let (status, _, _) = api.call("/fn/hello").await;
    assert_eq!(status, 200);
    assert_eq!(loaded(&server).await, 1.0);
    assert_eq!(cold_starts(&api, "hello").await, 1);
    // Warm requests reuse the loaded component.
    api.call("/fn/hello").await;
    assert_eq!(cold_starts(&api, "hello").await, 1);

    assert!(
        eventually(Duration::from_secs(10), || async {
            loaded(&server).await == 0.0
        })
        .await,
        "the idle component was never unloaded"
    );
    let (status, _, _) = api.call("/fn/hello").await;
    assert_eq!(status, 200);
    assert_eq!(
        cold_starts(&api, "hello").await,
        2,
        "after unloading, the next request is cold"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loaded_set_is_capped_least_recently_used_first() {
    let server = Server::start_shared_with(BIN, &["--max-loaded", "2"]);
    let api = Api::new(&server);
    for (name, example) in [("a", "hello"), ("b", "echo"), ("c", "counter")] {
        api.deploy(name, example, json!({})).await;
    }
    for name in ["a", "b", "c"] {
        let (status, _, _) = api.call(&format!("/fn/{name}")).await;
        assert_eq!(status, 200);
        assert!(loaded(&server).await <= 2.0);
    }
    // `a` was least recently used, so it was the one unloaded.
    api.call("/fn/b").await;
    api.call("/fn/c").await;
    assert_eq!(cold_starts(&api, "b").await, 1);
    api.call("/fn/a").await;
    assert_eq!(cold_starts(&api, "a").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_limit_queue_then_get_429() {
    let server =
        Server::start_shared_with(BIN, &["--queue-depth", "2", "--queue-timeout-ms", "3000"]);
    let api = Api::new(&server);
    api.deploy("sleep", "sleep", json!({"max_concurrency": 1}))
        .await;

    // One runs, two wait in the queue, the fourth finds it full.
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let http = api.http.clone();
        let url = server.at("/fn/sleep?ms=400");
        waiting.push(tokio::spawn(async move {
            http.get(url).send().await.unwrap().status().as_u16()
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        eventually(Duration::from_secs(2), || async {
            server
                .metric(r#"wisp_queue_depth{function="sleep",version="latest"}"#)
                .await
                == Some(2.0)
        })
        .await,
        "two requests should be queued"
    );
    let res = api
        .http
        .get(server.at("/fn/sleep?ms=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "1");
    for w in waiting {
        assert_eq!(
            w.await.unwrap(),
            200,
            "queued requests run once a slot frees"
        );
    }

    // A queue wait past the timeout is a 429 too.
    let server = Server::start_shared_with(BIN, &["--queue-timeout-ms", "200"]);
    let api = Api::new(&server);
    api.deploy("sleep", "sleep", json!({"max_concurrency": 1}))
        .await;
    let http = api.http.clone();
    let url = server.at("/fn/sleep?ms=2000");
    let running =
        tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let res = api
        .http
        .get(server.at("/fn/sleep?ms=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "it waited in the queue first"
    );
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["code"], "throttled");
    assert_eq!(running.await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_one_function_does_not_starve_another() {
    let server = Server::start_shared_with(BIN, &["--queue-timeout-ms", "100"]);
    let api = Api::new(&server);
    api.deploy("flood", "sleep", json!({"max_concurrency": 4}))
        .await;
    api.deploy("hello", "hello", json!({})).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(300)
        .build()
        .unwrap();
    let mut flood = Vec::new();
    for _ in 0..200 {
        let client = client.clone();
        let url = server.at("/fn/flood?ms=300");
        flood.push(tokio::spawn(async move {
            client
                .get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    for _ in 0..20 {
        let (status, _, body) = api.call("/fn/hello").await;
        assert_eq!(status, 200, "{body}");
    }
    let mut ok = 0;
    let mut throttled = 0;
    for f in flood {
        match f.await.unwrap() {
            200 => ok += 1,
            429 => throttled += 1,
            other => panic!("flood request got {other}"),
        }
    }
    assert!(ok >= 4 && throttled > 0, "ok {ok}, throttled {throttled}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_wide_instance_and_memory_caps_refuse_with_429() {
    let server = Server::start_shared_with(
        BIN,
        &[
            "--max-instance-memory-mib",
            "100",
            "--queue-timeout-ms",
            "200",
        ],
    );
    let api = Api::new(&server);
    api.deploy("a", "sleep", json!({"memory_mib": 64})).await;
    api.deploy("b", "sleep", json!({"memory_mib": 64})).await;
    api.deploy("huge", "hello", json!({"memory_mib": 200}))
        .await;
    let http = api.http.clone();
    let url = server.at("/fn/a?ms=1500");
    let running =
        tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        server.metric("wisp_instance_memory_bytes").await,
        Some((64 << 20) as f64)
    );
    let res = api.http.get(server.at("/fn/b?ms=1")).send().await.unwrap();
    assert_eq!(res.status(), 429);
    let err: Value = res.json().await.unwrap();
    assert!(
        err["message"].as_str().unwrap().contains("instance memory"),
        "{err}"
    );
    let (status, _, body) = api.call("/fn/huge").await;
    assert_eq!(
        status, 503,
        "a function bigger than the whole capacity can never run: {body}"
    );
    assert_eq!(running.await.unwrap(), 200);
    let (status, _, _) = api.call("/fn/b?ms=1").await;
    assert_eq!(status, 200, "capacity is released when an instance ends");

    let server =
        Server::start_shared_with(BIN, &["--max-instances", "1", "--queue-timeout-ms", "200"]);
    let api = Api::new(&server);
    api.deploy("a", "sleep", json!({})).await;
    api.deploy("b", "sleep", json!({})).await;
    let http = api.http.clone();
    let url = server.at("/fn/a?ms=1500");
    let running =
        tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let res = api.http.get(server.at("/fn/b?ms=1")).send().await.unwrap();
    assert_eq!(res.status(), 429);
    let err: Value = res.json().await.unwrap();
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("instance capacity"),
        "{err}"
    );
    assert_eq!(running.await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_instances_keep_a_version_warm_across_idle_and_restarts() {
    let mut server = Server::start_shared_with(BIN, &["--idle-timeout", "1"]);
    let api = Api::new(&server);
    api.deploy("warm", "hello", json!({"min_instances": 1}))
        .await;
    api.deploy("cold", "echo", json!({})).await;
    assert_eq!(
        loaded(&server).await,
        1.0,
        "warm is loaded at deploy, cold is not"
    );
    let instances = || async { server.metric("wisp_instances").await.unwrap() };
    assert!(
        eventually(Duration::from_secs(10), || async {
            instances().await == 1.0
        })
        .await,
        "warm's first instance is made ahead at deploy (and none for cold)"
    );
    // Idle well past the idle timeout, the instance made ahead stays.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        instances().await,
        1.0,
        "the warm instance outlived the idle timeout"
    );
    let (status, _, _) = api.call("/fn/warm").await;
    assert_eq!(status, 200);
    assert_eq!(
        cold_starts(&api, "warm").await,
        0,
        "the first request was warm"
    );
    assert_eq!(
        instantiated_on_path(&server, "warm").await,
        0.0,
        "the first request found its instance made"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        loaded(&server).await,
        1.0,
        "a version with min_instances is never unloaded when idle"
    );

    server = tokio::task::spawn_blocking(move || {
        server.restart_after_kill9();
        server
    })
    .await
    .unwrap();
    let api = Api::new(&server);
    assert!(
        eventually(Duration::from_secs(10), || async {
            loaded(&server).await == 1.0
        })
        .await,
        "warm versions are loaded again at start"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            server.metric("wisp_instances").await == Some(1.0)
        })
        .await,
        "and their first instance made again"
    );
    api.call("/fn/warm").await;
    assert_eq!(cold_starts(&api, "warm").await, 0);
    assert_eq!(instantiated_on_path(&server, "warm").await, 0.0);

    // Turning it off lets it scale to zero.
    let (status, _) = api
        .send(
            reqwest::Method::PATCH,
            "/v1/functions/warm",
            Some(json!({"min_instances": 0})),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        eventually(Duration::from_secs(10), || async {
            loaded(&server).await == 0.0 && server.metric("wisp_instances").await == Some(0.0)
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_in_instance_reuse_serves_several_requests_per_instance() {
    let server = Server::start_shared(BIN);
    let api = Api::new(&server);
    api.deploy(
        "counter",
        "counter",
        json!({"max_requests_per_instance": 3}),
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..7 {
        let (status, _, body) = api.call("/fn/counter").await;
        assert_eq!(status, 200);
        seen.push(body.trim().to_string());
    }
    assert_eq!(seen, ["1", "2", "3", "1", "2", "3", "1"]);

    // A reused instance sees each request's own id in the request header.
    // (Guests built on wasi-libc read the environment once per instance, so
    // WISP_REQUEST_ID there is the id of the instance's first request.)
    api.deploy("echo", "echo", json!({"max_requests_per_instance": 10}))
        .await;
    let mut first = None;
    for _ in 0..3 {
        let (_, headers, body) = api.call("/fn/echo").await;
        let seen: Value = serde_json::from_str(&body).unwrap();
        let id = headers["x-wisp-request-id"].to_str().unwrap().to_string();
        assert_eq!(seen["headers"]["x-wisp-request-id"], id.as_str());
        let first = first.get_or_insert(id);
        assert_eq!(seen["env"]["WISP_REQUEST_ID"], first.as_str());
    }

    // An instance that trapped is never reused.
    let idle_before = server.metric("wisp_instances").await.unwrap();
    assert!(
        idle_before >= 2.0,
        "counter and echo keep an idle instance each"
    );
    api.deploy("panic", "panic", json!({"max_requests_per_instance": 10}))
        .await;
    for _ in 0..2 {
        let (status, _, _) = api.call("/fn/panic").await;
        assert_eq!(status, 500);
    }
    assert_eq!(server.metric("wisp_instances").await.unwrap(), idle_before);
    // The default stays a fresh instance per request.
    api.deploy("fresh", "counter", json!({})).await;
    for _ in 0..3 {
        assert_eq!(api.call("/fn/fresh").await.2.trim(), "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_instance_is_free_for_the_next_request_once_its_response_ends() {
    // The handler goes on for a while after finishing its body: the
    // response ends only when it returns, so each next request finds the
    // instance idle (chunked, and with a declared length).
    let server = Server::start_shared(BIN);
    let api = Api::new(&server);
    api.deploy(
        "lingering",
        "counter",
        json!({"max_requests_per_instance": 100}),
    )
    .await;
    let mut seen = Vec::new();
    for declare in [0, 1] {
        for _ in 0..3 {
            let path = format!("/fn/lingering?linger_ms=300&declare_length={declare}");
            let (status, headers, body) = api.call(&path).await;
            assert_eq!(status, 200);
            assert_eq!(headers.contains_key("content-length"), declare == 1);
            seen.push(body.trim().to_string());
        }
    }
    assert_eq!(seen, ["1", "2", "3", "4", "5", "6"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_written_whole_goes_out_with_its_length_at_once() {
    let server = Server::start_shared(BIN);
    let api = Api::new(&server);
    api.deploy("whole", "counter", json!({})).await;
    api.deploy(
        "whole-reused",
        "counter",
        json!({"max_requests_per_instance": 10}),
    )
    .await;
    // A fresh instance's response goes out when its body is finished,
    // not when its handler returns (5 s later here).
    let started = std::time::Instant::now();
    let (status, headers, body) = api.call("/fn/whole?linger_ms=5000").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "1"));
    assert_eq!(headers["content-length"], "1");
    assert!(!headers.contains_key("transfer-encoding"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the response waited for the handler to return"
    );
    // A reused instance that returned at once: the same.
    for n in ["1", "2"] {
        let (_, headers, body) = api.call("/fn/whole-reused").await;
        assert_eq!(body, n);
        assert_eq!(headers["content-length"], "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_reusable_instances_give_way_to_a_request_that_needs_capacity() {
    let server =
        Server::start_shared_with(BIN, &["--max-instances", "2", "--queue-timeout-ms", "300"]);
    let api = Api::new(&server);
    api.deploy("nap", "sleep", json!({"max_requests_per_instance": 100}))
        .await;
    api.deploy("hello", "hello", json!({})).await;
    // Two requests at once: two instances, both kept idle for reuse
    // afterwards, holding the whole instance capacity.
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let (http, url) = (api.http.clone(), server.at("/fn/nap?ms=400"));
            tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    assert_eq!(
        server.metric("wisp_instances").await,
        Some(2.0),
        "both instances are parked"
    );
    // Another function needs an instance: an idle one ends for it rather
    // than the request waiting out its queue timeout into a 429.
    let (status, _, body) = api.call("/fn/hello").await;
    assert_eq!(status, 200, "{body}");
    // The other idle instance still serves its function.
    let (status, _, body) = api.call("/fn/nap?ms=1").await;
    assert_eq!(status, 200, "{body}");
}

/// Requests of `function` that instantiated an instance on their own path.
async fn instantiated_on_path(server: &Server, function: &str) -> f64 {
    server
        .metric(&format!(
            "wisp_instantiate_duration_seconds_count{{function=\"{function}\",version=\"latest\"}}"
        ))
        .await
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_version_gets_its_next_fresh_instance_made_ahead() {
    let server = Server::start_shared_with(BIN, &["--idle-timeout", "2"]);
    let api = Api::new(&server);
    api.deploy("busy", "counter", json!({"memory_mib": 32}))
        .await;
    const N: usize = 10;
    for i in 0..N {
        let (status, _, body) = api.call("/fn/busy").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body.trim(),
            "1",
            "request {i}: every request gets an instance no request used before"
        );
        // The instance that served it no longer counts, although it may
        // still be torn down; at most the one made ahead does.
        assert_eq!(
            server
                .metric("wisp_concurrency_in_use{function=\"busy\",version=\"latest\"}")
                .await,
            Some(0.0)
        );
        assert!(server.metric("wisp_instances").await.unwrap() <= 1.0);
        assert!(server.metric("wisp_instance_memory_bytes").await.unwrap() <= (32 << 20) as f64);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first two requests make the version busy; later ones find their
    // instance made, so instantiating is off their path.
    let on_path = instantiated_on_path(&server, "busy").await;
    assert!(
        on_path >= 2.0 && on_path < (N / 2) as f64,
        "{on_path} of {N} requests instantiated on their path"
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            server.metric("wisp_instances").await == Some(1.0)
        })
        .await,
        "the instance made ahead waits for the next request"
    );

    // A changed memory limit is never served by an instance made with the
    // old one: the next two requests make their own, and one more ahead.
    let (status, _) = api
        .send(
            reqwest::Method::PATCH,
            "/v1/functions/busy",
            Some(json!({"memory_mib": 48})),
        )
        .await;
    assert_eq!(status, 200);
    for _ in 0..2 {
        let (status, _, body) = api.call("/fn/busy").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body.trim(), "1");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        eventually(Duration::from_secs(1), || async {
            server.metric("wisp_instance_memory_bytes").await == Some((80 << 20) as f64)
        })
        .await,
        "one instance made ahead with each limit"
    );
    // Made ahead but unused: ended with the idle instances.
    assert!(
        eventually(Duration::from_secs(10), || async {
            server.metric("wisp_instances").await == Some(0.0)
        })
        .await,
        "unused instances made ahead are ended when idle"
    );

    // An instance made ahead sees the context of the request it serves.
    api.deploy("echoes", "echo", json!({})).await;
    for _ in 0..4 {
        let (status, headers, body) = api.call("/fn/echoes").await;
        assert_eq!(status, 200, "{body}");
        let seen: Value = serde_json::from_str(&body).unwrap();
        let id = headers["x-wisp-request-id"].to_str().unwrap();
        assert_eq!(seen["env"]["WISP_REQUEST_ID"], id);
        assert_eq!(seen["headers"]["x-wisp-request-id"], id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(instantiated_on_path(&server, "echoes").await < 4.0);
}
