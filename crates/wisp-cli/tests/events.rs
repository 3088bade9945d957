//! CloudEvents ingress: all three HTTP modes, validation naming the
//! attribute, duplicates by source + id, and delivery to the function as a
//! binary-mode request with extensions kept.

use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use wisp_testkit::{Api, Server};

/// Waits for a successful invocation and returns its (JSON) response body.
async fn result_of(api: &Api, id: &str) -> Value {
    let inv = api.wait_invocation(id, Duration::from_secs(20)).await;
    assert_eq!(inv["status"], "succeeded", "{inv}");
    serde_json::from_str(inv["result"]["body"].as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_every_mode_reach_the_function_in_binary_mode() {
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    api.deploy("echo", "echo", json!({})).await;
    let url = server.at("/v1/functions/echo/events");

    // Binary mode, with an extension.
    let res = api
        .http
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "evt-1")
        .header("ce-source", "/tests/binary")
        .header("ce-type", "com.example.created")
        .header("ce-myext", "kept")
        .header("content-type", "application/json")
        .body(r#"{"n":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let accepted: Value = res.json().await.unwrap();
    assert_eq!(accepted["accepted"][0]["event_id"], "evt-1");
    let seen = result_of(&api, accepted["accepted"][0]["id"].as_str().unwrap()).await;
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["headers"]["ce-id"], "evt-1");
    assert_eq!(seen["headers"]["ce-source"], "/tests/binary");
    assert_eq!(seen["headers"]["ce-type"], "com.example.created");
    assert_eq!(seen["headers"]["ce-myext"], "kept");
    assert_eq!(
        serde_json::from_str::<Value>(seen["body"].as_str().unwrap()).unwrap(),
        json!({"n": 1})
    );

    // Structured mode.
    let event = json!({"specversion": "1.0", "id": "evt-2", "source": "/tests/structured",
        "type": "t", "datacontenttype": "text/plain", "data": "hello", "other": "x"});
    let res = api
        .http
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let accepted: Value = res.json().await.unwrap();
    let seen = result_of(&api, accepted["accepted"][0]["id"].as_str().unwrap()).await;
    assert_eq!(seen["headers"]["ce-id"], "evt-2");
    assert_eq!(seen["headers"]["ce-other"], "x");
    assert_eq!(seen["body"], "hello");

    // Batch mode: three events, three invocations.
    let batch: Vec<Value> = (3..6)
        .map(|i| json!({"specversion": "1.0", "id": format!("evt-{i}"), "source": "/tests/batch", "type": "t"}))
        .collect();
    let ids = api.post_event_batch("echo", batch).await;
    assert_eq!(ids.len(), 3);
    for id in ids {
        result_of(&api, &id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_name_the_attribute_and_duplicates_are_folded() {
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    api.deploy(
        "hello",
        "hello",
        json!({"async_policy": {"semantics": "effectively_once"}}),
    )
    .await;
    let url = server.at("/v1/functions/hello/events");

    let missing_id = json!({"specversion": "1.0", "source": "/s", "type": "t"});
    let res = api
        .http
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .body(missing_id.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["field"], "id", "{err}");
    assert!(err["message"].as_str().unwrap().contains("`id`"), "{err}");

    let bad_version = json!({"specversion": "0.3", "id": "1", "source": "/s", "type": "t"});
    let res = api
        .http
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .body(bad_version.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);

    let res = api
        .http
        .post(&url)
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["code"], "unsupported_media_type", "{err}");

    let (status, list) = api
        .send(Method::GET, "/v1/functions/hello/invocations", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        list["invocations"],
        json!([]),
        "nothing was queued by bad input"
    );

    let event = json!({"specversion": "1.0", "id": "same", "source": "/s", "type": "t"});
    let mut seen = Vec::new();
    for _ in 0..2 {
        let res = api
            .http
            .post(&url)
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        let v: Value = res.json().await.unwrap();
        seen.push(v["accepted"][0].clone());
    }
    assert_eq!(seen[0]["id"], seen[1]["id"]);
    assert_eq!(seen[1]["duplicate"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_plane_queues_with_the_invocation_type_header() {
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    api.deploy("echo", "echo", json!({})).await;
    let res = api
        .http
        .put(server.at("/fn/echo/a/b?q=1"))
        .header("x-wisp-invocation-type", "async")
        .body("later")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let accepted: Value = res.json().await.unwrap();
    let seen = result_of(&api, accepted["id"].as_str().unwrap()).await;
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["path"], "/a/b");
    assert_eq!(seen["query"], "q=1");
    assert_eq!(seen["body"], "later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_accepted_event() {
    let mut server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    api.deploy("sleep", "sleep", json!({"max_concurrency": 50}))
        .await;
    let mut ids = Vec::new();
    for b in 0..4 {
        let batch: Vec<Value> = (0..250)
            .map(|i| json!({"specversion": "1.0", "id": format!("e{b}-{i}"), "source": "/kill", "type": "t"}))
            .collect();
        ids.extend(api.post_event_batch("sleep", batch).await);
    }
    assert_eq!(ids.len(), 1000);
    // Let some run (each sleeps 100 ms by default), then kill mid-way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server = tokio::task::spawn_blocking(move || {
        server.restart_after_kill9();
        server
    })
    .await
    .unwrap();
    let api = Api::new(&server);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pending: Vec<String> = ids;
    while !pending.is_empty() {
        let mut still = Vec::new();
        for id in pending {
            let (status, inv) = api
                .send(Method::GET, &format!("/v1/invocations/{id}"), None)
                .await;
            assert_eq!(status, 200, "accepted invocation {id} was lost: {inv}");
            if !matches!(
                inv["status"].as_str(),
                Some("succeeded" | "failed" | "dead")
            ) {
                still.push(id);
            }
        }
        pending = still;
        assert!(
            Instant::now() < deadline,
            "{} invocations never finished",
            pending.len()
        );
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_with_a_partition_key_run_in_order() {
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    api.deploy("sleep", "sleep", json!({})).await;
    let batch: Vec<Value> = (0..5)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("o{i}"), "source": "/order", "type": "t",
                   "partitionkey": "account-7"})
        })
        .collect();
    let ids = api.post_event_batch("sleep", batch).await;
    let mut spans = Vec::new();
    for id in &ids {
        let inv = api.wait_invocation(id, Duration::from_secs(30)).await;
        assert_eq!(inv["status"], "succeeded", "{inv}");
        let a = &inv["attempts"][0];
        let t = |k: &str| chrono::DateTime::parse_from_rfc3339(a[k].as_str().unwrap()).unwrap();
        spans.push((t("started_at"), t("finished_at")));
    }
    for w in spans.windows(2) {
        assert!(
            w[1].0 >= w[0].1,
            "an event started before the previous one of its key finished: {spans:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_backlog_does_not_starve_synchronous_traffic() {
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    api.deploy("worker", "sleep", json!({})).await;
    api.deploy("hello", "hello", json!({})).await;
    // 2,000 queued events, each sleeping 100 ms: a backlog of seconds.
    for b in 0..2 {
        let batch: Vec<Value> = (0..1000)
            .map(|i| json!({"specversion": "1.0", "id": format!("b{b}-{i}"), "source": "/load", "type": "t"}))
            .collect();
        api.post_event_batch("worker", batch).await;
    }
    let mut latencies = Vec::new();
    for _ in 0..100 {
        let started = Instant::now();
        let (status, _, _) = api.call("/fn/hello").await;
        assert_eq!(status, 200);
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let p99 = latencies[98];
    // Generous: the point is that sync requests are not queued behind the backlog.
    assert!(
        p99 < Duration::from_secs(2),
        "sync p99 {p99:?} while the backlog drains"
    );
    let (_, list) = api
        .send(
            Method::GET,
            "/v1/functions/worker/invocations?status=queued&limit=1",
            None,
        )
        .await;
    assert!(
        !list["invocations"].as_array().unwrap().is_empty(),
        "the backlog was still draining"
    );
}

/// The official Python SDK against a real server: every message it encodes
/// (binary, structured and batch mode, through each API the installed SDK
/// has) is accepted by the ingress and reaches the function with the
/// SDK's event id, and a reply event a function answers with is parsed
/// back by the SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_talks_to_a_real_server() {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    let script = wisp_testkit::repo_root().join("crates/wisp-events/tests/python/interop.py");
    let produced = wisp_testkit::python::run_json(&script, "produce", &json!({}));
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    api.deploy("py-echo", "echo", json!({})).await;
    api.deploy("py-reply", "reply", json!({})).await;

    let cases = produced["cases"].as_array().expect("cases");
    assert!(cases.len() >= 5, "{produced}");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mut req = api.http.post(server.at("/v1/functions/py-echo/events"));
        for (k, v) in case["headers"].as_object().unwrap() {
            req = req.header(k.as_str(), v.as_str().unwrap());
        }
        let body = BASE64
            .decode(case["body_base64"].as_str().unwrap())
            .unwrap();
        let res = req.body(body).send().await.unwrap();
        assert_eq!(res.status(), 202, "{name}: {}", res.text().await.unwrap());
        let accepted: Value = res.json().await.unwrap();
        for a in accepted["accepted"].as_array().unwrap() {
            let seen = result_of(&api, a["id"].as_str().unwrap()).await;
            assert_eq!(seen["headers"]["ce-id"], a["event_id"], "{name}: {seen}");
            assert_eq!(seen["headers"]["ce-type"], "com.example.interop", "{name}");
        }
    }

    // A reply: the function answers a binary-mode event with one.
    let res = api
        .http
        .post(server.at("/fn/py-reply"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "q-1")
        .header("ce-source", "/tests/python")
        .header("ce-type", "com.example.question")
        .header("content-type", "text/plain")
        .body("what time is it?")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let headers: serde_json::Map<String, Value> = res
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("ce-") || k.as_str() == "content-type")
        .map(|(k, v)| (k.to_string(), Value::from(v.to_str().unwrap())))
        .collect();
    let body = res.bytes().await.unwrap();
    let parsed = wisp_testkit::python::run_json(
        &script,
        "consume",
        &json!({"cases": [{"name": "reply", "headers": headers, "body_base64": BASE64.encode(&body)}]}),
    );
    // Each SDK API the installed version has (the legacy one always).
    let result = &parsed["results"][0];
    for api_name in ["core", "legacy"] {
        let seen = &result[api_name];
        if api_name == "core" && seen.is_null() {
            continue;
        }
        assert_eq!(seen["type"], "com.example.reply", "{parsed}");
        assert_eq!(seen["id"], "reply-to-q-1", "{parsed}");
        assert_eq!(seen["source"], "/examples/reply", "{parsed}");
        // The SDK hands the data over as text or as bytes.
        let data = match seen["data"]["text"].as_str() {
            Some(t) => t.as_bytes().to_vec(),
            None => BASE64
                .decode(seen["data"]["base64"].as_str().expect("text or bytes"))
                .unwrap(),
        };
        assert_eq!(data, b"what time is it?", "{parsed}");
    }
}
