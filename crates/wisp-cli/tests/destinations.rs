//! Asynchronous-invocation destinations beyond functions, through a real
//! server: a named dead-letter queue (`on_failure = "dlq:QUEUE"`), and
//! CloudEvents published in structured mode to the real brokers of
//! [`brokers`] (NATS, RabbitMQ, Mosquitto and Redis).

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use wisp_testkit::{Api, Server, brokers, unique};
use wisp_triggers::spec::redact_url;

const STRUCTURED: &str = "application/cloudevents+json";

/// XRANGE's answer: entry ids with their field-value pairs.
type StreamEntries = Vec<(String, Vec<(String, Vec<u8>)>)>;

/// Queues an invocation of `name` and returns its id.
async fn queue(api: &Api, name: &str) -> String {
    let (status, accepted) = api
        .send(
            Method::POST,
            &format!("/v1/functions/{name}/invocations"),
            None,
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    accepted["id"].as_str().unwrap().to_string()
}

/// The ids listed by `GET path`.
async fn listed(api: &Api, path: &str) -> Vec<String> {
    let (status, list) = api.send(Method::GET, path, None).await;
    assert_eq!(status, 200, "{list}");
    list["deadletters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

/// Checks a structured event published for invocation `id` of `function`.
fn check_event(body: &[u8], kind: &str, function: &str, id: &str) -> Value {
    let event: Value = serde_json::from_slice(body).expect("a JSON event");
    assert_eq!(event["specversion"], "1.0", "{event}");
    assert_eq!(event["type"], format!("wisp.invocation.{kind}"), "{event}");
    assert_eq!(event["source"], format!("/wisp/functions/{function}"));
    assert_eq!(event["subject"], id, "{event}");
    assert_eq!(event["id"], format!("{id}-{kind}"), "{event}");
    assert_eq!(event["data"]["invocation_id"], id, "{event}");
    assert_eq!(event["data"]["function"], function, "{event}");
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_dead_letter_queue_keeps_its_failures_apart() {
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    let payments = json!({"async_policy": {"max_retries": 0, "on_failure": "dlq:payments"}});
    api.deploy("pay", "panic", payments.clone()).await;
    api.deploy(
        "plain",
        "panic",
        json!({"async_policy": {"max_retries": 0}}),
    )
    .await;
    let pay = queue(&api, "pay").await;
    let plain = queue(&api, "plain").await;
    for id in [&pay, &plain] {
        let inv = api.wait_invocation(id, Duration::from_secs(60)).await;
        assert_eq!(inv["status"], "dead", "{inv}");
    }

    assert_eq!(
        listed(&api, "/v1/deadletters?queue=payments").await,
        [pay.as_str()]
    );
    assert_eq!(
        listed(&api, "/v1/deadletters?queue=default").await,
        [plain.as_str()]
    );
    assert!(
        listed(&api, "/v1/deadletters?queue=payments&function=plain")
            .await
            .is_empty()
    );
    let (_, all) = api.send(Method::GET, "/v1/deadletters", None).await;
    let queue_of = |id: &str| {
        all["deadletters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .map(|d| d["queue"].clone())
    };
    assert_eq!(queue_of(&pay), Some(json!("payments")), "{all}");
    assert_eq!(queue_of(&plain), Some(json!("default")), "{all}");
    let (status, letter) = api
        .send(Method::GET, &format!("/v1/deadletters/{pay}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(letter["queue"], "payments");
    assert_eq!(letter["policy"]["dead_letter_queue"], "payments");

    let (status, err) = api
        .send(Method::GET, "/v1/deadletters?queue=Not%20Valid", None)
        .await;
    assert_eq!((status.as_u16(), &err["field"]), (400, &json!("queue")));

    // A replay that dies again goes back to its queue...
    let (status, replayed) = api
        .send(Method::POST, &format!("/v1/deadletters/{pay}/replay"), None)
        .await;
    assert_eq!(status, 202, "{replayed}");
    let again = replayed["id"].as_str().unwrap().to_string();
    let inv = api.wait_invocation(&again, Duration::from_secs(60)).await;
    assert_eq!(inv["status"], "dead", "{inv}");
    assert_eq!(
        listed(&api, "/v1/deadletters?queue=payments").await,
        [again.as_str()]
    );
    // ...and once the function is fixed, a replay succeeds and leaves it.
    api.deploy("pay", "hello", payments).await;
    let (status, replayed) = api
        .send(
            Method::POST,
            &format!("/v1/deadletters/{again}/replay"),
            None,
        )
        .await;
    assert_eq!(status, 202, "{replayed}");
    let fixed = replayed["id"].as_str().unwrap().to_string();
    let inv = api.wait_invocation(&fixed, Duration::from_secs(60)).await;
    assert_eq!(inv["status"], "succeeded", "{inv}");
    assert!(
        listed(&api, "/v1/deadletters?queue=payments")
            .await
            .is_empty()
    );
    assert_eq!(
        listed(&api, "/v1/deadletters?queue=default").await,
        [plain.as_str()]
    );

    // The CLI filters by queue too.
    api.deploy(
        "pay",
        "panic",
        json!({"async_policy": {"max_retries": 0, "on_failure": "dlq:payments"}}),
    )
    .await;
    let dead = queue(&api, "pay").await;
    api.wait_invocation(&dead, Duration::from_secs(60)).await;
    let out = wisp_testkit::run(server.cli().args(["dlq", "list", "--queue", "payments"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("QUEUE"), "{}", out.stdout);
    assert!(out.stdout.contains(&dead), "{}", out.stdout);
    assert!(out.stdout.contains("payments"), "{}", out.stdout);
    assert!(!out.stdout.contains(&plain), "{}", out.stdout);
    let out = wisp_testkit::run(
        server
            .cli()
            .args(["dlq", "list", "--queue", "nothing-here"]),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "no dead letters in queue nothing-here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_destinations_are_refused_naming_the_field() {
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    let digest = api.upload(wisp_testkit::example_bytes("hello")).await;
    let cases = [
        ("on_success", "dlq:payments", "holds failures"),
        ("on_failure", "dlq:Payments", "1 to 63 characters"),
        ("on_failure", "nats://127.0.0.1:4222/orders.*", "subject"),
        ("on_success", "amqp://guest:s3cret@h/%2f?bogus=1", "`bogus`"),
        ("on_failure", "mqtt://127.0.0.1:1883/a/#", "topic"),
        ("on_failure", "redis://127.0.0.1:6379/", "exactly one of"),
        ("on_success", "http://example.com/hook", "not supported"),
    ];
    for (field, value, says) in cases {
        let (status, err) = api
            .send(
                Method::PUT,
                "/v1/functions/bad",
                Some(json!({"code_digest": digest, "async_policy": {field: value}})),
            )
            .await;
        assert_eq!(status, 400, "{value}: {err}");
        assert_eq!(err["code"], "invalid_field", "{err}");
        assert_eq!(err["field"], format!("async_policy.{field}"), "{err}");
        let message = err["message"].as_str().unwrap();
        assert!(message.contains(says), "{value}: {message}");
        assert!(!message.contains("s3cret"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_is_published_to_a_nats_subject() {
    let subject = unique("wisp.test.destinations").replace('-', ".");
    let nats = async_nats::connect(brokers::nats_url())
        .await
        .unwrap_or_else(|e| panic!("NATS at {}: {e}", redact_url(brokers::nats_url())));
    let mut sub = nats.subscribe(subject.clone()).await.unwrap();
    nats.flush().await.unwrap();

    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    let destination = format!("{}/{subject}", brokers::nats_url());
    api.deploy(
        "echo",
        "echo",
        json!({"async_policy": {"on_success": destination}}),
    )
    .await;
    let id = queue(&api, "echo").await;
    let msg = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("an event on the subject")
        .unwrap();
    let content_type = msg.headers.as_ref().and_then(|h| h.get("content-type"));
    assert_eq!(content_type.map(|v| v.as_str()), Some(STRUCTURED));
    let event = check_event(&msg.payload, "succeeded", "echo", &id);
    assert_eq!(event["data"]["status"], 200, "{event}");
    assert_eq!(event["datacontenttype"], "application/json");
    let inv = api.wait_invocation(&id, Duration::from_secs(10)).await;
    assert_eq!(inv["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_is_published_to_a_rabbitmq_queue() {
    use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
    let queue_name = unique("wisp-test-destinations");
    let conn =
        lapin::Connection::connect(brokers::amqp_url(), lapin::ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ at {}: {e}", redact_url(brokers::amqp_url())));
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue_name.as_str().into(),
            QueueDeclareOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();

    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    let destination = format!("{}?exchange=&routing_key={queue_name}", brokers::amqp_url());
    api.deploy(
        "failing",
        "panic",
        json!({"async_policy": {"max_retries": 0, "on_failure": destination}}),
    )
    .await;
    let id = queue(&api, "failing").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got = channel
            .basic_get(queue_name.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        if let Some(got) = got {
            break got;
        }
        assert!(Instant::now() < deadline, "no event in `{queue_name}`");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        got.delivery
            .properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str()),
        Some(STRUCTURED)
    );
    let event = check_event(&got.delivery.data, "failed", "failing", &id);
    assert!(
        event["data"]["error"].as_str().unwrap().contains("trapped"),
        "{event}"
    );
    assert_eq!(event["data"]["request"]["method"], "POST", "{event}");
    // It is dead-lettered as well, in the default queue.
    let inv = api.wait_invocation(&id, Duration::from_secs(10)).await;
    assert_eq!(inv["status"], "dead");
    assert_eq!(listed(&api, "/v1/deadletters?queue=default").await, [id]);
    channel
        .queue_delete(queue_name.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let _ = conn.close(200, "OK".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_is_published_to_an_mqtt_topic() {
    use rumqttc::{Event, Packet, QoS};
    let topic = format!("wisp/test/{}", unique("destinations"));
    let (host, port) = brokers::host_port(brokers::mqtt_url());
    let mut options = rumqttc::MqttOptions::new(unique("wisp-t"), host, port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 16);
    client.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut poll = async || {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, events.poll())
            .await
            .expect("an MQTT event in time")
            .unwrap_or_else(|e| panic!("Mosquitto at {}: {e}", redact_url(brokers::mqtt_url())))
    };
    while !matches!(poll().await, Event::Incoming(Packet::SubAck(_))) {}

    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    let destination = format!("{}/{topic}", brokers::mqtt_url());
    api.deploy(
        "echo",
        "echo",
        json!({"async_policy": {"on_success": destination}}),
    )
    .await;
    let id = queue(&api, "echo").await;
    let msg = loop {
        if let Event::Incoming(Packet::Publish(p)) = poll().await {
            break p;
        }
    };
    assert_eq!(msg.topic, topic);
    assert_eq!(msg.qos, QoS::AtLeastOnce);
    check_event(&msg.payload, "succeeded", "echo", &id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_is_added_to_a_redis_stream() {
    let key = unique("wisp-test-destinations");
    let redis = redis::Client::open(brokers::redis_url()).unwrap();
    let mut con = redis
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis at {}: {e}", redact_url(brokers::redis_url())));

    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    let destination = format!("{}/?stream={key}", brokers::redis_url());
    api.deploy(
        "failing",
        "panic",
        json!({"async_policy": {"max_retries": 0, "on_failure": destination}}),
    )
    .await;
    let id = queue(&api, "failing").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let entries = loop {
        let entries: StreamEntries = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(&mut con)
            .await
            .unwrap();
        if !entries.is_empty() {
            break entries;
        }
        assert!(Instant::now() < deadline, "nothing added to `{key}`");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1, "one event per failure");
    let fields = &entries[0].1;
    assert_eq!(fields[0], ("content-type".to_string(), STRUCTURED.into()));
    assert_eq!(fields[1].0, "data");
    check_event(&fields[1].1, "failed", "failing", &id);
}
