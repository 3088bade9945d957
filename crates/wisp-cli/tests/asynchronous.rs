//! Asynchronous invocation through the durable queue: 202 at once, then the
//! dispatcher runs it; failures are retried and end dead-lettered.

use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use wisp_testkit::{Api, Server};

async fn wait_final(api: &Api, id: &str, within: Duration) -> Value {
    api.wait_invocation(id, within).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_invocations_run_and_record_their_result() {
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    api.deploy("echo", "echo", json!({})).await;
    let res = api
        .http
        .post(server.at("/v1/functions/echo/invocations?path=/work%3Fn=1"))
        .header("content-type", "text/plain")
        .body("queued body")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let accepted: Value = res.json().await.unwrap();
    let id = accepted["id"].as_str().unwrap().to_string();
    assert_eq!(accepted["status_url"], format!("/v1/invocations/{id}"));
    let inv = wait_final(&api, &id, Duration::from_secs(20)).await;
    assert_eq!(inv["status"], "succeeded", "{inv}");
    assert_eq!(inv["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(inv["result"]["status"], 200);
    let seen: Value = serde_json::from_str(inv["result"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(seen["path"], "/work");
    assert_eq!(seen["query"], "n=1");
    assert_eq!(seen["body"], "queued body");
    assert_eq!(seen["headers"]["content-type"], "text/plain");
    // The function saw the invocation id as its request id.
    assert_eq!(seen["headers"]["x-wisp-request-id"], id.as_str());

    let (status, list) = api
        .send(Method::GET, "/v1/functions/echo/invocations", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["invocations"][0]["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_then_dead_lettered_with_every_error() {
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    api.deploy("panic", "panic", json!({})).await;
    let (status, accepted) = api
        .send(Method::POST, "/v1/functions/panic/invocations", None)
        .await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap();
    let inv = wait_final(&api, id, Duration::from_secs(60)).await;
    assert_eq!(inv["status"], "dead", "{inv}");
    let attempts = inv["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        3,
        "one try and the default two retries: {inv}"
    );
    for a in attempts {
        assert!(a["error"].as_str().unwrap().contains("trapped"), "{a}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_return_the_original_and_bad_targets_are_refused() {
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    api.deploy("hello", "hello", json!({})).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let res = api
            .http
            .post(server.at("/v1/functions/hello/invocations"))
            .header("x-wisp-idempotency-key", "order-42")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        let v: Value = res.json().await.unwrap();
        ids.push((
            v["id"].as_str().unwrap().to_string(),
            v["duplicate"].as_bool().unwrap(),
        ));
    }
    assert_eq!(ids[0].0, ids[1].0);
    assert_eq!((ids[0].1, ids[1].1), (false, true));

    let (status, err) = api
        .send(Method::POST, "/v1/functions/nope/invocations", None)
        .await;
    assert_eq!(status, 404, "{err}");
    let (status, err) = api
        .send(
            Method::POST,
            "/v1/functions/hello/invocations?qualifier=7",
            None,
        )
        .await;
    assert_eq!(status, 404, "{err}");
    let (status, _) = api.send(Method::GET, "/v1/invocations/unknown", None).await;
    assert_eq!(status, 404);
}

#[test]
fn the_cli_queues_and_lists_invocations() {
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let run = |args: &[&str]| wisp_testkit::run(server.cli().args(args));
    let created = run(&[
        "create",
        "hello",
        "--wasm",
        wisp_testkit::example("hello").to_str().unwrap(),
    ]);
    assert_eq!(created.code, 0, "{created:?}");
    let out = run(&["--json", "invoke", "--async", "hello", "-d", "x"]);
    assert_eq!(out.code, 0, "{out:?}");
    let accepted: Value = serde_json::from_str(&out.stdout).unwrap();
    let id = accepted["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = run(&["--json", "invocations", "hello"]);
        assert_eq!(out.code, 0, "{out:?}");
        let list: Value = serde_json::from_str(&out.stdout).unwrap();
        let inv = &list["invocations"][0];
        assert_eq!(inv["id"], id.as_str());
        if inv["status"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "never succeeded: {list}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let table = run(&["invocations", "hello"]);
    assert!(
        table.stdout.contains(&id) && table.stdout.contains("succeeded"),
        "{table:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_function_async_policy_governs_retries_and_deduplication() {
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    api.deploy(
        "panic",
        "panic",
        json!({"async_policy": {"max_retries": 0}}),
    )
    .await;
    let (_, accepted) = api
        .send(Method::POST, "/v1/functions/panic/invocations", None)
        .await;
    let inv = wait_final(
        &api,
        accepted["id"].as_str().unwrap(),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(inv["status"], "dead", "{inv}");
    assert_eq!(
        inv["attempts"].as_array().unwrap().len(),
        1,
        "max_retries 0: {inv}"
    );

    // Invalid policies name the field.
    let (status, err) = api
        .send(
            Method::PATCH,
            "/v1/functions/panic",
            Some(json!({"async_policy": {"max_retries": 11}})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["field"], "async_policy.max_retries");

    // At-least-once (the default) takes the same event twice; effectively-once folds it.
    let event = json!({"specversion": "1.0", "id": "x", "source": "/p", "type": "t"}).to_string();
    for (name, semantics, dup) in [
        ("alo", "at_least_once", false),
        ("eo", "effectively_once", true),
    ] {
        api.deploy(
            name,
            "hello",
            json!({"async_policy": {"semantics": semantics}}),
        )
        .await;
        let mut ids = Vec::new();
        for _ in 0..2 {
            let res = api
                .http
                .post(server.at(&format!("/v1/functions/{name}/events")))
                .header("content-type", "application/cloudevents+json")
                .body(event.clone())
                .send()
                .await
                .unwrap();
            let v: Value = res.json().await.unwrap();
            ids.push(v["accepted"][0]["id"].as_str().unwrap().to_string());
        }
        assert_eq!(ids[0] == ids[1], dup, "{semantics}: {ids:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_receive_success_and_failure_events() {
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    api.deploy("sink", "echo", json!({})).await;
    api.deploy(
        "ok",
        "hello",
        json!({"async_policy": {"on_success": "sink"}}),
    )
    .await;
    api.deploy(
        "bad",
        "panic",
        json!({"async_policy": {"max_retries": 0, "on_failure": "sink:latest"}}),
    )
    .await;
    let (_, a) = api
        .send(Method::POST, "/v1/functions/ok/invocations", None)
        .await;
    let (_, b) = api
        .send(Method::POST, "/v1/functions/bad/invocations", None)
        .await;
    let ok_id = a["id"].as_str().unwrap().to_string();
    let bad_id = b["id"].as_str().unwrap().to_string();
    wait_final(&api, &ok_id, Duration::from_secs(30)).await;
    wait_final(&api, &bad_id, Duration::from_secs(30)).await;

    // The sink gets one event per outcome, in binary mode.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut types = std::collections::BTreeMap::new();
    while types.len() < 2 {
        let (_, list) = api
            .send(
                Method::GET,
                "/v1/functions/sink/invocations?status=succeeded",
                None,
            )
            .await;
        for listed in list["invocations"].as_array().unwrap() {
            // Lists leave results out; fetch each one.
            let id = listed["id"].as_str().unwrap();
            let (_, inv) = api
                .send(Method::GET, &format!("/v1/invocations/{id}"), None)
                .await;
            let seen: Value = serde_json::from_str(inv["result"]["body"].as_str().unwrap_or("{}"))
                .unwrap_or_default();
            if let Some(t) = seen["headers"]["ce-type"].as_str() {
                types.insert(t.to_string(), seen);
            }
        }
        assert!(
            Instant::now() < deadline,
            "destination events never arrived: {types:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ok = &types["wisp.invocation.succeeded"];
    assert_eq!(ok["headers"]["ce-subject"], ok_id.as_str());
    let data: Value = serde_json::from_str(ok["body"].as_str().unwrap()).unwrap();
    assert_eq!(data["body"], "Hello from Wisp!\n");
    let bad = &types["wisp.invocation.failed"];
    let data: Value = serde_json::from_str(bad["body"].as_str().unwrap()).unwrap();
    assert_eq!(data["invocation_id"], bad_id.as_str());
    assert!(
        data["error"].as_str().unwrap().contains("trapped"),
        "{data}"
    );

    // A destination must be a valid target.
    let (status, err) = api
        .send(
            Method::PATCH,
            "/v1/functions/ok",
            Some(json!({"async_policy": {"on_success": "Not Valid"}})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["field"], "async_policy.on_success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_event_is_published_to_the_success_destination() {
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    api.deploy("sink", "echo", json!({})).await;
    api.deploy(
        "replier",
        "reply",
        json!({"async_policy": {"on_success": "sink"}}),
    )
    .await;
    let res = api
        .http
        .post(server.at("/v1/functions/replier/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "order-1")
        .header("ce-source", "/shop")
        .header("ce-type", "com.example.order")
        .header("content-type", "text/plain")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, list) = api
            .send(
                Method::GET,
                "/v1/functions/sink/invocations?status=succeeded",
                None,
            )
            .await;
        if let Some(listed) = list["invocations"].as_array().unwrap().first() {
            let id = listed["id"].as_str().unwrap();
            let (_, inv) = api
                .send(Method::GET, &format!("/v1/invocations/{id}"), None)
                .await;
            let seen: Value =
                serde_json::from_str(inv["result"]["body"].as_str().unwrap()).unwrap();
            // The sink received the function's own reply event, not a wrapper.
            assert_eq!(seen["headers"]["ce-type"], "com.example.reply");
            assert_eq!(seen["headers"]["ce-id"], "reply-to-order-1");
            assert_eq!(seen["headers"]["ce-source"], "/examples/reply");
            assert_eq!(seen["body"], "payload");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reply event never reached the sink"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts one asynchronous invocation of `sleep` (1.5 s) and answers the
/// status, the `Retry-After` header and the JSON body.
async fn post_sleep(server: &Server, api: &Api) -> (u16, Option<String>, Value) {
    let res = api
        .http
        .post(server.at("/v1/functions/sleep/invocations?path=/%3Fms=1500"))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry_after, res.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_function_queue_refuses_with_429_and_stores_nothing_more() {
    let server =
        Server::start_shared_with(env!("CARGO_BIN_EXE_wisp"), &["--async-queue-depth", "3"]);
    let api = Api::new(&server);
    // One at a time, so the queue holds what was accepted for a while.
    api.deploy("sleep", "sleep", json!({"max_concurrency": 1}))
        .await;
    api.deploy("hello", "hello", json!({})).await;
    let mut accepted = Vec::new();
    for _ in 0..3 {
        let (status, _, body) = post_sleep(&server, &api).await;
        assert_eq!(status, 202, "{body}");
        accepted.push(body["id"].as_str().unwrap().to_string());
    }
    // Past the depth: refused, with a code, an actionable message and a
    // hint when to retry, through both ingress paths.
    for _ in 0..20 {
        let (status, retry_after, body) = post_sleep(&server, &api).await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(body["code"], "throttled", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("sleep") && message.contains("full"),
            "{message}"
        );
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
    let event = json!({"specversion": "1.0", "id": "e-1", "source": "test", "type": "t"});
    let res = api
        .http
        .post(server.at("/v1/functions/sleep/events"))
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    // Refused means not stored: the function's listing holds only the three.
    let (status, list) = api
        .send(Method::GET, "/v1/functions/sleep/invocations", None)
        .await;
    assert_eq!(status, 200);
    let mut listed: Vec<String> = list["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    listed.sort();
    accepted.sort();
    assert_eq!(listed, accepted, "{list}");
    // The depth is per function: another function is still accepted.
    let (status, body) = api
        .send(Method::POST, "/v1/functions/hello/invocations", None)
        .await;
    assert_eq!(status, 202, "{body}");
    // Once the queue drains there is room again.
    for id in &accepted {
        let inv = wait_final(&api, id, Duration::from_secs(30)).await;
        assert_eq!(inv["status"], "succeeded", "{inv}");
    }
    let (status, _, body) = post_sleep(&server, &api).await;
    assert_eq!(status, 202, "{body}");
}

#[test]
fn the_async_queue_depth_flag_is_checked() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wisp"))
        .args(["server", "--async-queue-depth", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--async-queue-depth"), "{stderr}");
}
