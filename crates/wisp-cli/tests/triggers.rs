//! Triggers through a real server: the resource's lifecycle and status,
//! cron ticks once each across a kill -9, webhooks with HMAC signatures,
//! and a RabbitMQ queue whose messages all reach the function although
//! the server is killed while they flow.

use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use wisp_testkit::{Api, Server, brokers};

/// The `ce-*` headers every succeeded invocation of `function` (an echo)
/// received, keyed by invocation id.
async fn received(api: &Api, function: &str) -> HashMap<String, Value> {
    let (status, list) = api
        .send(
            Method::GET,
            &format!("/v1/functions/{function}/invocations?status=succeeded&limit=1000"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    let mut out = HashMap::new();
    for inv in list["invocations"].as_array().unwrap() {
        let id = inv["id"].as_str().unwrap();
        let (_, full) = api
            .send(Method::GET, &format!("/v1/invocations/{id}"), None)
            .await;
        let body: Value =
            serde_json::from_str(full["result"]["body"].as_str().unwrap_or("{}")).unwrap();
        out.insert(id.to_string(), body["headers"].clone());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_lifecycle_status_and_validation() {
    let server = Server::start_with(env!("CARGO_BIN_EXE_wisp"), &[]);
    let api = Api::new(&server);
    api.deploy("echo", "echo", json!({})).await;

    let spec = json!({"name": "tick", "target": "echo", "description": "every second",
        "source": {"kind": "cron", "schedule": "* * * * * *"}});
    let (status, created) = api
        .send(Method::POST, "/v1/triggers", Some(spec.clone()))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["source"]["kind"], "cron");
    let (status, dup) = api.send(Method::POST, "/v1/triggers", Some(spec)).await;
    assert_eq!(
        (status.as_u16(), dup["code"].as_str()),
        (409, Some("already_exists"))
    );

    // It fires, and its counters say so.
    let t = api
        .wait_trigger("tick", Duration::from_secs(15), "ready", |t| {
            t["status"]["delivered"].as_u64() >= Some(2)
        })
        .await;
    assert_eq!(t["status"]["state"], "active");
    let seen = received(&api, "echo").await;
    assert!(
        seen.values().any(|h| h["ce-type"] == "wisp.cron.tick"),
        "{seen:?}"
    );

    // Disabled: no more ticks.
    let (status, t) = api
        .send(Method::POST, "/v1/triggers/tick/disable", None)
        .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["status"]["state"], "disabled");
    assert_eq!(t["enabled"], false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = api.trigger("tick").await["status"]["delivered"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = api.trigger("tick").await["status"]["delivered"]
        .as_u64()
        .unwrap();
    assert_eq!(before, after, "a disabled trigger fired");
    let (status, t) = api
        .send(Method::POST, "/v1/triggers/tick/enable", None)
        .await;
    assert_eq!(status, 200, "{t}");
    api.wait_trigger("tick", Duration::from_secs(10), "ready", |t| {
        t["status"]["delivered"].as_u64() > Some(after)
    })
    .await;

    // Replace with a filter that drops everything: filtered counts grow.
    let (status, t) = api
        .send(
            Method::PUT,
            "/v1/triggers/tick",
            Some(
                json!({"target": "echo", "filters": [{"exact": {"type": "nothing"}}],
                "source": {"kind": "cron", "schedule": "* * * * * *"}}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{t}");
    api.wait_trigger("tick", Duration::from_secs(10), "ready", |t| {
        t["status"]["filtered"].as_u64() >= Some(1)
    })
    .await;

    // Listing shows it; bad definitions name the field.
    let (_, list) = api.send(Method::GET, "/v1/triggers", None).await;
    assert_eq!(list["triggers"][0]["name"], "tick");
    let bad = [
        (
            json!({"name": "b1", "target": "echo", "source": {"kind": "cron", "schedule": "99 * * * *"}}),
            "source.schedule",
        ),
        (
            json!({"name": "b2", "target": "nope", "source": {"kind": "cron", "schedule": "* * * * *"}}),
            "target",
        ),
        (
            json!({"name": "B3", "target": "echo", "source": {"kind": "cron", "schedule": "* * * * *"}}),
            "name",
        ),
        (
            json!({"name": "b4", "target": "echo", "filters": [{"exact": {}}], "source": {"kind": "cron", "schedule": "* * * * *"}}),
            "filters[0]",
        ),
        (
            json!({"name": "b5", "target": "echo", "source": {"kind": "redis", "url": "http://x"}}),
            "source.url",
        ),
    ];
    for (body, field) in bad {
        let (status, err) = api.send(Method::POST, "/v1/triggers", Some(body)).await;
        assert!(status == 400 || status == 404, "{status} {err}");
        assert_eq!(err["field"], field, "{err}");
    }
    let (status, err) = api
        .send(
            Method::POST,
            "/v1/triggers",
            Some(json!({"name": "b6", "target": "echo", "source": {"kind": "kafka"}})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), err["code"].as_str()),
        (400, Some("invalid_request")),
        "{err}"
    );

    let (status, _) = api.send(Method::DELETE, "/v1/triggers/tick", None).await;
    assert_eq!(status, 204);
    let (status, err) = api.send(Method::GET, "/v1/triggers/tick", None).await;
    assert_eq!(
        (status.as_u16(), err["code"].as_str()),
        (404, Some("trigger_not_found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_ticks_fire_once_each_across_a_kill_9() {
    let mut server = Server::start_with(env!("CARGO_BIN_EXE_wisp"), &[]);
    let api = Api::new(&server);
    api.deploy("echo", "echo", json!({})).await;
    let (status, t) = api
        .send(
            Method::POST,
            "/v1/triggers",
            Some(json!({"name": "tick", "target": "echo", "source": {"kind": "cron", "schedule": "* * * * * *"}})),
        )
        .await;
    assert_eq!(status, 201, "{t}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.kill9();
    server.restart_after_kill9();
    let api = Api::new(&server);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let seen = received(&api, "echo").await;
    let ticks: Vec<String> = seen
        .values()
        .filter_map(|h| h["ce-id"].as_str().map(str::to_string))
        .collect();
    let distinct: HashSet<&String> = ticks.iter().collect();
    assert!(ticks.len() >= 3, "{ticks:?}");
    assert_eq!(distinct.len(), ticks.len(), "a tick fired twice: {ticks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_verify_signatures_and_filter() {
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    api.deploy("hook-echo", "echo", json!({})).await;
    let (status, t) = api
        .send(
            Method::POST,
            "/v1/triggers",
            Some(json!({"name": "gh", "target": "hook-echo",
                "filters": [{"exact": {"subject": "push"}}],
                "source": {"kind": "webhook", "secret": "s3cret"}})),
        )
        .await;
    assert_eq!(status, 201, "{t}");
    assert_eq!(t["source"]["secret"], "***", "secrets are not shown");
    assert_eq!(t["webhook_path"], "/hooks/gh");
    let body = r#"{"ref":"refs/heads/main"}"#;
    let post = |sig: Option<String>, event: &'static str| {
        let mut req = api
            .http
            .post(server.at("/hooks/gh"))
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-github-delivery", format!("d-{event}"))
            .body(body);
        if let Some(s) = sig {
            req = req.header("x-hub-signature-256", s);
        }
        req.send()
    };
    // Unsigned and wrongly signed: 401, nothing queued.
    let res = post(None, "push").await.unwrap();
    assert_eq!(res.status(), 401);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["code"], "invalid_signature");
    let wrong = wisp_triggers::sources::webhook::sign("other", body.as_bytes());
    assert_eq!(post(Some(wrong), "push").await.unwrap().status(), 401);
    assert!(received(&api, "hook-echo").await.is_empty());
    let (_, list) = api
        .send(Method::GET, "/v1/functions/hook-echo/invocations", None)
        .await;
    assert_eq!(list["invocations"].as_array().unwrap().len(), 0);

    // Signed: queued and delivered in binary mode.
    let sig = wisp_triggers::sources::webhook::sign("s3cret", body.as_bytes());
    let res = post(Some(sig.clone()), "push").await.unwrap();
    assert_eq!(res.status(), 202);
    // A signed event the filter drops is accepted but not delivered.
    assert_eq!(post(Some(sig), "ping").await.unwrap().status(), 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        let seen = received(&api, "hook-echo").await;
        if !seen.is_empty() || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(seen.len(), 1, "{seen:?}");
    let h = seen.values().next().unwrap();
    assert_eq!(h["ce-type"], "wisp.webhook");
    assert_eq!(h["ce-subject"], "push");
    assert_eq!(h["ce-id"], "d-push");
    assert_eq!(h["ce-source"], "/hooks/gh");
    let t = api.trigger("gh").await;
    assert_eq!(t["status"]["delivered"], 1, "{t}");
    assert_eq!(t["status"]["filtered"], 1, "{t}");

    // Unknown or non-webhook triggers have no hook.
    let res = api
        .http
        .post(server.at("/hooks/nope"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_messages_survive_a_kill_9_of_the_server() {
    use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    const TOTAL: usize = 300;
    let queue = wisp_testkit::unique("wisp-kill9");
    let conn = Connection::connect(brokers::amqp_url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            let url = wisp_triggers::spec::redact_url(brokers::amqp_url());
            panic!("RabbitMQ at {url}: {e}")
        });
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();

    let mut server = Server::start_with(env!("CARGO_BIN_EXE_wisp"), &[]);
    let api = Api::new(&server);
    api.deploy("sink", "echo", json!({})).await;
    let (status, t) = api
        .send(
            Method::POST,
            "/v1/triggers",
            Some(json!({"name": "amqp", "target": "sink",
                "source": {"kind": "rabbitmq", "url": brokers::amqp_url(), "queue": queue,
                    "prefetch": 50}})),
        )
        .await;
    assert_eq!(status, 201, "{t}");
    api.wait_trigger("amqp", Duration::from_secs(20), "ready", |t| {
        t["status"]["state"] == "active"
    })
    .await;

    // Publish while the server runs, kill it half-way, keep publishing.
    for i in 0..TOTAL {
        if i == TOTAL / 2 {
            server.kill9();
        }
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                format!("{{\"n\":{i}}}").as_bytes(),
                BasicProperties::default()
                    .with_message_id(format!("m-{i}").into())
                    .with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    server.restart_after_kill9();
    let api = Api::new(&server);

    // Every published message reaches the function at least once.
    let deadline = Instant::now() + Duration::from_secs(90);
    let missing = loop {
        let seen: HashSet<String> = received(&api, "sink")
            .await
            .values()
            .filter_map(|h| h["ce-id"].as_str().map(str::to_string))
            .collect();
        let missing: Vec<usize> = (0..TOTAL)
            .filter(|i| !seen.contains(&format!("m-{i}")))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    assert!(
        missing.is_empty(),
        "lost {} messages: {missing:?}",
        missing.len()
    );
}
