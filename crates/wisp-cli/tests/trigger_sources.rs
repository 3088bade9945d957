//! Trigger sources through a real `wisp server` and real brokers: NATS
//! core, JetStream, MQTT 5, Redis pub/sub and Redis streams each deliver
//! binary-mode CloudEvents to a function; JetStream messages survive a
//! kill -9 of the server; JetStream and Redis stream messages wait in the
//! broker while the trigger's function is missing; ordered stream mode
//! bisects a failing batch down to its poison event through the real
//! queue; a broker outage degrades only its own trigger; and the
//! `wisp trigger` commands and `[[trigger]]` entries of `wisp deploy` work
//! end to end. (RabbitMQ is covered in `triggers.rs`.)
//!
//! Shared brokers, at the addresses of [`brokers`]: NATS with JetStream,
//! Mosquitto and Redis. Every test names its subjects, streams, topics,
//! client ids and keys uniquely, deletes the streams and keys it created
//! (MQTT sessions expire on their own 5 s after the server stops), and
//! runs within [`TEST_TIMEOUT`]. Outages use a private `nats-server`
//! ([`brokers::nats_server_bin`]) on a free port, killed through its
//! process handle.

use async_nats::jetstream::{self, stream};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wisp_testkit::{Api, Output, Server, brokers, free_port, run, unique};
use wisp_triggers::spec::redact_url;

const BIN: &str = env!("CARGO_BIN_EXE_wisp");
/// Longest any test may run.
const TEST_TIMEOUT: Duration = Duration::from_secs(240);
/// How long to wait for events that should arrive.
const ARRIVAL: Duration = Duration::from_secs(30);
/// How long to watch for events that must not arrive.
const QUIET: Duration = Duration::from_millis(1500);

/// Runs `body` within [`TEST_TIMEOUT`], then `cleanup` whatever happened,
/// then re-raises a panic of `body`.
async fn bounded<B, C>(body: B, cleanup: C)
where
    B: Future<Output = ()> + Send + 'static,
    C: Future<Output = ()>,
{
    let mut task = tokio::spawn(body);
    let result = tokio::time::timeout(TEST_TIMEOUT, &mut task).await;
    if result.is_err() {
        // Drops the test's server and private brokers before cleaning up.
        task.abort();
        let _ = task.await;
    }
    cleanup.await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Err(_) => panic!("the test did not finish within {TEST_TIMEOUT:?}"),
    }
}

fn server() -> Server {
    Server::start_shared(BIN)
}

// ---------------------------------------------------------------- the API

async fn create_trigger(api: &Api, body: Value) -> Value {
    let (status, t) = api.send(Method::POST, "/v1/triggers", Some(body)).await;
    assert_eq!(status, 201, "creating a trigger: {t}");
    t
}

fn count(t: &Value, counter: &str) -> u64 {
    t["status"][counter].as_u64().unwrap_or_default()
}

async fn wait_active(api: &Api, name: &str) -> Value {
    api.wait_trigger(name, Duration::from_secs(30), "active", |t| {
        t["status"]["state"] == "active"
    })
    .await
}

/// The succeeded invocations of one function, each read in full (with
/// its result) once.
struct Succeeded {
    function: String,
    by_id: HashMap<String, Value>,
}

impl Succeeded {
    fn new(function: &str) -> Self {
        Succeeded {
            function: function.into(),
            by_id: HashMap::new(),
        }
    }

    /// Reads the invocations that succeeded since the last call.
    async fn refresh(&mut self, api: &Api) {
        let (status, list) = api
            .send(
                Method::GET,
                &format!(
                    "/v1/functions/{}/invocations?status=succeeded&limit=1000",
                    self.function
                ),
                None,
            )
            .await;
        assert_eq!(status, 200, "{list}");
        for inv in list["invocations"].as_array().expect("invocations") {
            let id = inv["id"].as_str().expect("id");
            if self.by_id.contains_key(id) {
                continue;
            }
            let (status, full) = api
                .send(Method::GET, &format!("/v1/invocations/{id}"), None)
                .await;
            assert_eq!(status, 200, "{full}");
            assert_eq!(full["status"], "succeeded", "{full}");
            self.by_id.insert(id.to_string(), full);
        }
    }

    /// The functions' answers, parsed as JSON (for `echo`: the request it
    /// received, with `headers` and `body`).
    fn replies(&self) -> Vec<Value> {
        self.by_id
            .values()
            .map(|inv| {
                let body = inv["result"]["body"].as_str().expect("a result body");
                assert_eq!(inv["result"]["truncated"], false, "{inv}");
                serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
            })
            .collect()
    }

    /// Refreshes until at least `n` replies are in, or panics after
    /// [`ARRIVAL`]; returns them.
    async fn wait(&mut self, api: &Api, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + ARRIVAL;
        loop {
            self.refresh(api).await;
            if self.by_id.len() >= n {
                return self.replies();
            }
            assert!(
                Instant::now() < deadline,
                "`{}` got {} of {n} events: {:?}",
                self.function,
                self.by_id.len(),
                self.replies()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits [`QUIET`] and returns every reply: for checking that no more
    /// than expected arrived.
    async fn settle(&mut self, api: &Api) -> Vec<Value> {
        tokio::time::sleep(QUIET).await;
        self.refresh(api).await;
        self.replies()
    }
}

/// The `ce-*` header `name` the echo received, percent-decoded as the
/// binary mode encodes it (`""` if none).
fn ce(reply: &Value, name: &str) -> String {
    let raw = reply["headers"][format!("ce-{name}")]
        .as_str()
        .unwrap_or_default()
        .as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (raw[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("UTF-8 after percent-decoding")
}

/// The `headers` extension the echo received, as an object.
fn ce_headers(reply: &Value) -> Value {
    serde_json::from_str(&ce(reply, "headers")).unwrap_or(Value::Null)
}

/// Checks the attributes every binary-mode event carries.
fn assert_binary_event(reply: &Value, ty: &str) {
    assert_eq!(reply["method"], "POST", "{reply}");
    assert_eq!(ce(reply, "specversion"), "1.0", "{reply}");
    assert_eq!(ce(reply, "type"), ty, "{reply}");
    assert!(!ce(reply, "id").is_empty(), "{reply}");
    assert!(!ce(reply, "source").is_empty(), "{reply}");
}

/// The one reply whose `ce-subject` is `subject`.
fn by_subject<'a>(replies: &'a [Value], subject: &str) -> &'a Value {
    let found: Vec<&Value> = replies
        .iter()
        .filter(|r| ce(r, "subject") == subject)
        .collect();
    assert_eq!(found.len(), 1, "one event on {subject}: {replies:?}");
    found[0]
}

fn json_body(reply: &Value) -> Value {
    let body = reply["body"].as_str().expect("a body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

// ---------------------------------------------------------------- brokers

async fn nats_client(url: &str) -> async_nats::Client {
    tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url))
        .await
        .expect("connecting to NATS timed out")
        .unwrap_or_else(|e| panic!("NATS at {}: {e}", redact_url(url)))
}

fn nats_headers(pairs: &[(&str, &str)]) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    for (k, v) in pairs {
        headers.insert(*k, *v);
    }
    headers
}

/// A JetStream stream on the shared server for subjects `<prefix>.>`.
async fn create_stream(name: &str, prefix: &str) -> jetstream::Context {
    let js = jetstream::new(nats_client(brokers::nats_url()).await);
    js.create_stream(stream::Config {
        name: name.to_string(),
        subjects: vec![format!("{prefix}.>")],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .expect("creating the test stream");
    js
}

async fn delete_stream(name: String) {
    if let Ok(Ok(nc)) = tokio::time::timeout(
        Duration::from_secs(5),
        async_nats::connect(brokers::nats_url()),
    )
    .await
    {
        let _ = jetstream::new(nc).delete_stream(&name).await;
    }
}

/// Publishes to JetStream and waits for the stream's acknowledgement;
/// returns the stream sequence.
async fn publish_js(js: &jetstream::Context, subject: String, body: String) -> u64 {
    let headers = nats_headers(&[("content-type", "application/json")]);
    let ack = tokio::time::timeout(Duration::from_secs(10), async {
        js.publish_with_headers(subject, headers, body.into())
            .await
            .expect("publishing")
            .await
            .expect("the stream's acknowledgement")
    })
    .await
    .expect("JetStream publish timed out");
    ack.sequence
}

/// Waits until the durable consumer has acknowledged the whole stream
/// up to `last` and has nothing pending or outstanding.
async fn wait_consumer_settled(js: &jetstream::Context, stream: &str, durable: &str, last: u64) {
    let deadline = Instant::now() + ARRIVAL;
    loop {
        let info = js
            .get_stream(stream)
            .await
            .expect("the test stream")
            .consumer_info(durable)
            .await
            .expect("the trigger's durable consumer");
        if info.num_ack_pending == 0
            && info.num_pending == 0
            && info.ack_floor.stream_sequence >= last
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "consumer `{durable}` never settled: ack floor {}, ack pending {}, pending {}",
            info.ack_floor.stream_sequence,
            info.num_ack_pending,
            info.num_pending
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn redis() -> redis::aio::MultiplexedConnection {
    tokio::time::timeout(Duration::from_secs(5), async {
        redis::Client::open(brokers::redis_url())
            .expect("a Redis URL")
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("Redis at {}: {e}", redact_url(brokers::redis_url())))
    })
    .await
    .expect("connecting to Redis timed out")
}

/// A private `nats-server` on `port`, killed (by its handle) when dropped.
struct PrivateNats(Child);

impl PrivateNats {
    async fn start(port: u16) -> PrivateNats {
        let child = Command::new(brokers::nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", brokers::nats_server_bin().display()));
        let server = PrivateNats(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ------------------------------------------------- one test per broker

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_core_messages_reach_the_function_as_binary_cloudevents() {
    bounded(
        async move {
            let server = server();
            let api = Api::new(&server);
            api.deploy("echo", "echo", json!({})).await;
            let prefix = unique("wisp-core");
            create_trigger(
                &api,
                json!({"name": "core", "target": "echo",
                    "filters": [{"prefix": {"subject": format!("{prefix}.keep.")}}],
                    "source": {"kind": "nats", "url": brokers::nats_url(), "subject": format!("{prefix}.>")}}),
            )
            .await;
            wait_active(&api, "core").await;

            let nc = nats_client(brokers::nats_url()).await;
            let json_subject = format!("{prefix}.keep.json");
            let text_subject = format!("{prefix}.keep.text");
            nc.publish_with_headers(
                json_subject.clone(),
                nats_headers(&[("content-type", "application/json"), ("x-tenant", "acme")]),
                r#"{"n":1}"#.into(),
            )
            .await
            .unwrap();
            nc.publish(text_subject.clone(), "plain text".into())
                .await
                .unwrap();
            // Subscribed but filtered out; and not subscribed at all.
            nc.publish(format!("{prefix}.drop"), "filtered".into())
                .await
                .unwrap();
            nc.publish(prefix.clone(), "outside the wildcard".into())
                .await
                .unwrap();
            nc.flush().await.unwrap();

            let mut echo = Succeeded::new("echo");
            echo.wait(&api, 2).await;
            let t = api
                .wait_trigger("core", ARRIVAL, "counted", |t| {
                    count(t, "delivered") == 2 && count(t, "filtered") == 1
                })
                .await;
            assert_eq!(count(&t, "failed"), 0, "{t}");
            let replies = echo.settle(&api).await;
            assert_eq!(replies.len(), 2, "{replies:?}");

            let j = by_subject(&replies, &json_subject);
            assert_binary_event(j, "wisp.nats.message");
            assert_eq!(ce(j, "source"), redact_url(brokers::nats_url()));
            assert_eq!(ce(j, "natssubject"), json_subject);
            assert_eq!(ce(j, "id").len(), 32, "{j}");
            assert!(!ce(j, "time").is_empty(), "{j}");
            assert_eq!(j["headers"]["content-type"], "application/json");
            assert_eq!(json_body(j), json!({"n": 1}));
            assert_eq!(ce_headers(j), json!({"x-tenant": "acme"}));

            let t = by_subject(&replies, &text_subject);
            assert_binary_event(t, "wisp.nats.message");
            assert_eq!(t["headers"]["content-type"], "application/octet-stream");
            assert_eq!(t["body"], "plain text");
            assert_eq!(ce(t, "headers"), "", "no headers, no extension: {t}");
            assert_ne!(ce(t, "id"), ce(j, "id"));
        },
        async {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_messages_reach_the_function_and_are_acknowledged() {
    let stream = unique("WISP-JS");
    let prefix = unique("wisp-js");
    let cleanup = delete_stream(stream.clone());
    bounded(
        async move {
            let js = create_stream(&stream, &prefix).await;
            let server = server();
            let api = Api::new(&server);
            api.deploy("echo", "echo", json!({})).await;
            // Published before the trigger exists: a new durable consumer
            // starts at the beginning of the stream.
            let mut seqs = Vec::new();
            for n in 0..3 {
                let seq =
                    publish_js(&js, format!("{prefix}.early"), format!(r#"{{"n":{n}}}"#)).await;
                seqs.push(seq);
            }
            create_trigger(
                &api,
                json!({"name": "js", "target": "echo",
                    "source": {"kind": "nats", "url": brokers::nats_url(), "subject": format!("{prefix}.>"),
                        "jetstream": {"stream": stream}}}),
            )
            .await;
            wait_active(&api, "js").await;
            for n in 3..5 {
                let seq =
                    publish_js(&js, format!("{prefix}.late"), format!(r#"{{"n":{n}}}"#)).await;
                seqs.push(seq);
            }
            assert_eq!(seqs, [1, 2, 3, 4, 5]);

            let mut echo = Succeeded::new("echo");
            echo.wait(&api, 5).await;
            wait_consumer_settled(&js, &stream, "wisp-js", 5).await;
            let t = api.trigger("js").await;
            assert_eq!(count(&t, "delivered"), 5, "{t}");
            let replies = echo.settle(&api).await;
            assert_eq!(replies.len(), 5, "{replies:?}");

            let mut seen = BTreeSet::new();
            for r in &replies {
                assert_binary_event(r, "wisp.nats.message");
                let seq: u64 = ce(r, "natsseq").parse().expect("a numeric ce-natsseq");
                let n = json_body(r)["n"].as_u64().expect("n");
                assert_eq!(seq, n + 1, "{r}");
                assert_eq!(ce(r, "id"), format!("{stream}:{seq}"));
                assert_eq!(ce(r, "natsstream"), stream);
                assert_eq!(ce(r, "deliverycount"), "1");
                let subject = if n < 3 { "early" } else { "late" };
                assert_eq!(ce(r, "subject"), format!("{prefix}.{subject}"));
                assert_eq!(ce(r, "natssubject"), format!("{prefix}.{subject}"));
                assert_eq!(r["headers"]["content-type"], "application/json");
                seen.insert(seq);
            }
            assert_eq!(seen, (1..=5).collect::<BTreeSet<u64>>());
        },
        cleanup,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_messages_reach_the_function_as_binary_cloudevents() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    bounded(
        async move {
            let server = server();
            let api = Api::new(&server);
            api.deploy("echo", "echo", json!({})).await;
            let root = unique("wisp-mqtt");
            // At most 23 characters, unique on the shared broker.
            let client_id = unique("wt");
            create_trigger(
                &api,
                json!({"name": "mqtt", "target": "echo",
                    "source": {"kind": "mqtt", "url": brokers::mqtt_url(),
                        "topic": format!("{root}/#"), "protocol": "5", "client_id": client_id}}),
            )
            .await;
            wait_active(&api, "mqtt").await;

            let json_topic = format!("{root}/orders/eu");
            let text_topic = format!("{root}/plain");
            let messages = [
                (
                    json_topic.clone(),
                    br#"{"n":1}"#.to_vec(),
                    PublishProperties {
                        content_type: Some("application/json".into()),
                        user_properties: vec![("x-tenant".into(), "acme".into())],
                        ..Default::default()
                    },
                ),
                (
                    text_topic.clone(),
                    b"plain text".to_vec(),
                    PublishProperties::default(),
                ),
            ];
            let (host, port) = brokers::host_port(brokers::mqtt_url());
            let mut options = MqttOptions::new(unique("pub"), host, port);
            options.set_keep_alive(Duration::from_secs(5));
            let (client, mut eventloop) = AsyncClient::new(options, 10);
            for (topic, payload, properties) in messages {
                client
                    .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties)
                    .await
                    .expect("queueing a publish");
            }
            tokio::time::timeout(Duration::from_secs(10), async {
                let mut acked = 0;
                while acked < 2 {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                        Ok(_) => {}
                        Err(e) => panic!("publishing to Mosquitto failed: {e}"),
                    }
                }
            })
            .await
            .expect("Mosquitto did not acknowledge the publishes");
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;

            let mut echo = Succeeded::new("echo");
            echo.wait(&api, 2).await;
            let replies = echo.settle(&api).await;
            assert_eq!(replies.len(), 2, "{replies:?}");
            let t = api.trigger("mqtt").await;
            assert_eq!(count(&t, "delivered"), 2, "{t}");

            let j = by_subject(&replies, &json_topic);
            assert_binary_event(j, "wisp.mqtt.message");
            assert_eq!(ce(j, "source"), redact_url(brokers::mqtt_url()));
            assert_eq!(ce(j, "mqttqos"), "1");
            assert_eq!(ce(j, "mqttretain"), "false");
            assert_eq!(ce(j, "mqttdup"), "false");
            assert_eq!(j["headers"]["content-type"], "application/json");
            assert_eq!(json_body(j), json!({"n": 1}));
            assert_eq!(ce_headers(j), json!({"x-tenant": "acme"}));

            let p = by_subject(&replies, &text_topic);
            assert_binary_event(p, "wisp.mqtt.message");
            assert_eq!(p["headers"]["content-type"], "application/octet-stream");
            assert_eq!(p["body"], "plain text");
            assert_eq!(ce(p, "mqttqos"), "1");
        },
        async {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pubsub_messages_reach_the_function_as_binary_cloudevents() {
    use redis::AsyncCommands;

    bounded(
        async move {
            let server = server();
            let api = Api::new(&server);
            api.deploy("echo", "echo", json!({})).await;
            let prefix = unique("wisp-ps");
            let exact = format!("{prefix}.exact");
            let pattern = format!("{prefix}.p.*");
            create_trigger(
                &api,
                json!({"name": "channel", "target": "echo",
                    "source": {"kind": "redis", "url": brokers::redis_url(), "channels": [exact]}}),
            )
            .await;
            create_trigger(
                &api,
                json!({"name": "pattern", "target": "echo",
                    "source": {"kind": "redis", "url": brokers::redis_url(), "channels": [pattern], "pattern": true}}),
            )
            .await;
            wait_active(&api, "channel").await;
            wait_active(&api, "pattern").await;

            let mut con = redis().await;
            let patterned = format!("{prefix}.p.eu");
            let receivers: i64 = con.publish(&exact, "one").await.unwrap();
            assert_eq!(receivers, 1, "only the `channel` trigger listens on {exact}");
            let receivers: i64 = con.publish(&patterned, "two").await.unwrap();
            assert_eq!(receivers, 1, "only the `pattern` trigger matches {patterned}");
            let receivers: i64 = con
                .publish(format!("{prefix}.other"), "nobody")
                .await
                .unwrap();
            assert_eq!(receivers, 0);

            let mut echo = Succeeded::new("echo");
            echo.wait(&api, 2).await;
            let replies = echo.settle(&api).await;
            assert_eq!(replies.len(), 2, "{replies:?}");

            let one = by_subject(&replies, &exact);
            assert_binary_event(one, "wisp.redis.message");
            assert_eq!(ce(one, "source"), redact_url(brokers::redis_url()));
            assert_eq!(one["headers"]["content-type"], "application/octet-stream");
            assert_eq!(one["body"], "one");
            assert_eq!(ce(one, "redispattern"), "", "{one}");

            let two = by_subject(&replies, &patterned);
            assert_binary_event(two, "wisp.redis.message");
            assert_eq!(two["body"], "two");
            assert_eq!(ce(two, "redispattern"), pattern);

            for name in ["channel", "pattern"] {
                let t = api.trigger(name).await;
                assert_eq!(count(&t, "delivered"), 1, "{t}");
            }
        },
        async {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stream_entries_reach_the_function_and_are_acknowledged() {
    use redis::AsyncCommands;

    let key = unique("wisp-stream");
    let cleanup = {
        let key = key.clone();
        async move {
            let mut con = redis().await;
            let _: Result<i64, _> = con.del(&key).await;
        }
    };
    bounded(
        async move {
            let mut con = redis().await;
            // Before the group exists: read because it starts at `0`.
            let first: String = con.xadd(&key, "*", &[("data", "first")]).await.unwrap();
            let server = server();
            let api = Api::new(&server);
            api.deploy("echo", "echo", json!({})).await;
            create_trigger(
                &api,
                json!({"name": "entries", "target": "echo",
                    "source": {"kind": "redis", "url": brokers::redis_url(),
                        "stream": {"key": key, "start": "0"}}}),
            )
            .await;
            wait_active(&api, "entries").await;
            let with_data: String = con
                .xadd(
                    &key,
                    "*",
                    &[
                        ("data", r#"{"n":2}"#),
                        ("content-type", "application/json"),
                        ("x-tenant", "acme"),
                    ],
                )
                .await
                .unwrap();
            let fields: String = con
                .xadd(&key, "*", &[("i", "3"), ("kind", "fields")])
                .await
                .unwrap();

            let mut echo = Succeeded::new("echo");
            echo.wait(&api, 3).await;
            // Every entry is acknowledged once queued.
            let deadline = Instant::now() + ARRIVAL;
            loop {
                let pending: redis::streams::StreamPendingReply =
                    con.xpending(&key, "wisp-entries").await.unwrap();
                if pending.count() == 0 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} entries stay pending",
                    pending.count()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let replies = echo.settle(&api).await;
            assert_eq!(replies.len(), 3, "{replies:?}");
            let t = api.trigger("entries").await;
            assert_eq!(count(&t, "delivered"), 3, "{t}");

            let by_id = |id: &str| -> Value {
                let found: Vec<&Value> =
                    replies.iter().filter(|r| ce(r, "redisid") == id).collect();
                assert_eq!(found.len(), 1, "entry {id} once: {replies:?}");
                found[0].clone()
            };
            for id in [&first, &with_data, &fields] {
                let r = by_id(id);
                assert_binary_event(&r, "wisp.redis.stream.entry");
                assert_eq!(ce(&r, "id"), format!("{key}/{id}"));
                assert_eq!(ce(&r, "subject"), key);
                assert_eq!(ce(&r, "source"), redact_url(brokers::redis_url()));
                assert_eq!(ce(&r, "redisstream"), key);
                assert_eq!(ce(&r, "deliverycount"), "1");
            }
            let r = by_id(&first);
            assert_eq!(r["headers"]["content-type"], "application/octet-stream");
            assert_eq!(r["body"], "first");
            let r = by_id(&with_data);
            assert_eq!(r["headers"]["content-type"], "application/json");
            assert_eq!(json_body(&r), json!({"n": 2}));
            assert_eq!(ce_headers(&r), json!({"x-tenant": "acme"}));
            let r = by_id(&fields);
            assert_eq!(r["headers"]["content-type"], "application/json");
            assert_eq!(json_body(&r), json!({"i": "3", "kind": "fields"}));
        },
        cleanup,
    )
    .await;
}

// ------------------------------------------------------------ kill -9

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_messages_survive_a_kill_9_of_the_server() {
    const TOTAL: u64 = 300;
    let stream = unique("WISP-KILL");
    let prefix = unique("wisp-kill");
    let cleanup = delete_stream(stream.clone());
    bounded(
        async move {
            let js = create_stream(&stream, &prefix).await;
            let mut server = server();
            let api = Api::new(&server);
            api.deploy("sink", "echo", json!({})).await;
            // A short ack wait, so what the killed server held unsettled
            // comes back quickly.
            create_trigger(
                &api,
                json!({"name": "durable", "target": "sink",
                    "source": {"kind": "nats", "url": brokers::nats_url(), "subject": format!("{prefix}.>"),
                        "jetstream": {"stream": stream, "ack_wait_ms": 2000}}}),
            )
            .await;
            wait_active(&api, "durable").await;

            // Publish while the server runs, kill it half-way, keep publishing.
            for n in 0..TOTAL {
                if n == TOTAL / 2 {
                    server.kill9();
                }
                let seq = publish_js(&js, format!("{prefix}.m"), format!(r#"{{"n":{n}}}"#)).await;
                assert_eq!(seq, n + 1);
                if n % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            server.restart_after_kill9();
            let api = Api::new(&server);

            // Every message reaches the function at least once.
            let mut sink = Succeeded::new("sink");
            let deadline = Instant::now() + Duration::from_secs(120);
            let missing = loop {
                sink.refresh(&api).await;
                let seen: BTreeSet<u64> = sink
                    .replies()
                    .iter()
                    .map(|r| ce(r, "natsseq").parse().expect("a numeric ce-natsseq"))
                    .collect();
                let missing: Vec<u64> = (1..=TOTAL).filter(|s| !seen.contains(s)).collect();
                if missing.is_empty() || Instant::now() > deadline {
                    break missing;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            assert!(
                missing.is_empty(),
                "lost {} messages: {missing:?}\n{}",
                missing.len(),
                server.log()
            );
            for r in sink.replies() {
                let seq: u64 = ce(&r, "natsseq").parse().unwrap();
                assert_eq!(json_body(&r)["n"].as_u64(), Some(seq - 1), "{r}");
                assert_eq!(ce(&r, "id"), format!("{stream}:{seq}"));
            }
            // And the restarted server settled the whole stream.
            wait_consumer_settled(&js, &stream, "wisp-durable", TOTAL).await;
        },
        cleanup,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_messages_wait_in_the_broker_while_the_target_is_missing() {
    use redis::AsyncCommands;

    const EACH: u64 = 5;
    let stream = unique("WISP-LATE");
    let prefix = unique("wisp-late");
    let key = unique("wisp-late");
    let cleanup = {
        let (stream, key) = (stream.clone(), key.clone());
        async move {
            delete_stream(stream).await;
            let mut con = redis().await;
            let _: Result<i64, _> = con.del(&key).await;
        }
    };
    bounded(
        async move {
            let js = create_stream(&stream, &prefix).await;
            let mut con = redis().await;
            let server = server();
            let api = Api::new(&server);
            api.deploy("late", "echo", json!({})).await;
            create_trigger(
                &api,
                json!({"name": "js-late", "target": "late",
                    "source": {"kind": "nats", "url": brokers::nats_url(), "subject": format!("{prefix}.>"),
                        "jetstream": {"stream": stream, "ack_wait_ms": 2000}}}),
            )
            .await;
            create_trigger(
                &api,
                json!({"name": "redis-late", "target": "late",
                    "source": {"kind": "redis", "url": brokers::redis_url(),
                        "stream": {"key": key, "start": "0"}}}),
            )
            .await;
            wait_active(&api, "js-late").await;
            wait_active(&api, "redis-late").await;

            // The function goes away; the triggers stay.
            let (status, body) = api.send(Method::DELETE, "/v1/functions/late", None).await;
            assert_eq!(status, 204, "{body}");
            for n in 0..EACH {
                publish_js(&js, format!("{prefix}.m"), format!(r#"{{"n":{n}}}"#)).await;
                let _: String = con
                    .xadd(&key, "*", &[("data", format!(r#"{{"n":{n}}}"#))])
                    .await
                    .unwrap();
            }
            for name in ["js-late", "redis-late"] {
                let t = api
                    .wait_trigger(name, ARRIVAL, "degraded", |t| {
                        t["status"]["state"] == "degraded" && count(t, "failed") >= 1
                    })
                    .await;
                let error = t["status"]["last_error"].as_str().unwrap_or_default();
                assert!(error.contains("the target function is unavailable"), "{t}");
                assert_eq!(count(&t, "delivered"), 0, "{t}");
            }
            // Nothing was acknowledged to the brokers.
            let pending: redis::streams::StreamPendingReply =
                con.xpending(&key, "wisp-redis-late").await.unwrap();
            assert!(pending.count() >= 1, "the entries stay pending");
            let info = js
                .get_stream(&stream)
                .await
                .unwrap()
                .consumer_info("wisp-js-late")
                .await
                .unwrap();
            assert_eq!(info.ack_floor.stream_sequence, 0, "nothing acknowledged");

            // The function is back: every message arrives.
            api.deploy("late", "echo", json!({})).await;
            let mut late = Succeeded::new("late");
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                late.refresh(&api).await;
                let replies = late.replies();
                let js_seqs: BTreeSet<String> = replies
                    .iter()
                    .map(|r| ce(r, "natsseq"))
                    .filter(|s| !s.is_empty())
                    .collect();
                let redis_ids: BTreeSet<String> = replies
                    .iter()
                    .map(|r| ce(r, "redisid"))
                    .filter(|s| !s.is_empty())
                    .collect();
                if js_seqs.len() == EACH as usize && redis_ids.len() == EACH as usize {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "JetStream {js_seqs:?}, Redis {redis_ids:?}\n{}",
                    server.log()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            for name in ["js-late", "redis-late"] {
                wait_active(&api, name).await;
            }
            wait_consumer_settled(&js, &stream, "wisp-js-late", EACH).await;
            let deadline = Instant::now() + ARRIVAL;
            loop {
                let pending: redis::streams::StreamPendingReply =
                    con.xpending(&key, "wisp-redis-late").await.unwrap();
                if pending.count() == 0 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} stay pending",
                    pending.count()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
        cleanup,
    )
    .await;
}

// ------------------------------------------------------- ordered mode

/// Events in an ordered test: `n` from 0; one of them is poison.
const ORDERED_TOTAL: u64 = 20;
const ORDERED_POISON: u64 = 7;

fn ordered_body(n: u64) -> String {
    if n == ORDERED_POISON {
        format!(r#"{{"n":{n},"poison":true}}"#)
    } else {
        format!(r#"{{"n":{n}}}"#)
    }
}

/// After ordered trigger `name` (batches of at most 5, bisecting) ran
/// [`ORDERED_TOTAL`] events into `picky`: every good event reached a
/// successful batch once, in stream order; the poison event alone is the
/// only dead letter; the failed batches that held it are gone. Events are
/// told apart by their data's `n`; `check` sees each one.
async fn assert_ordered_outcome(
    api: &Api,
    name: &str,
    partition_key: &str,
    check: impl Fn(&Value),
) {
    let t = api
        .wait_trigger(name, Duration::from_secs(60), "done", |t| {
            count(t, "delivered") + count(t, "failed") >= ORDERED_TOTAL
        })
        .await;
    tokio::time::sleep(QUIET).await;
    let t2 = api.trigger(name).await;
    assert_eq!(t["status"], t2["status"], "nothing more ran");
    assert_eq!(count(&t, "delivered"), ORDERED_TOTAL - 1, "{t}");
    assert_eq!(count(&t, "failed"), 1, "{t}");
    assert!(
        t["status"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("batch of 1 failed")),
        "{t}"
    );

    // The successful batches, in the order they ran (one at a time).
    let mut picky = Succeeded::new("picky");
    picky.refresh(api).await;
    let mut runs: Vec<(chrono::DateTime<chrono::Utc>, Vec<Value>)> = picky
        .by_id
        .values()
        .map(|inv| {
            let started = inv["attempts"][0]["started_at"]
                .as_str()
                .expect("a started attempt")
                .parse()
                .expect("an RFC 3339 time");
            assert_eq!(inv["partition_key"], partition_key, "{inv}");
            let body = inv["result"]["body"].as_str().expect("a result body");
            let batch: Vec<Value> =
                serde_json::from_str(body).unwrap_or_else(|e| panic!("a batch ({e}): {body}"));
            (started, batch)
        })
        .collect();
    runs.sort_by_key(|(started, _)| *started);
    let mut order = Vec::new();
    for (_, batch) in &runs {
        assert!(
            (1..=5).contains(&batch.len()),
            "batches hold 1 to 5 events: {batch:?}"
        );
        for event in batch {
            assert_eq!(event["specversion"], "1.0", "{event}");
            check(event);
            order.push(event["data"]["n"].as_u64().expect("data.n"));
        }
    }
    let wanted: Vec<u64> = (0..ORDERED_TOTAL)
        .filter(|n| *n != ORDERED_POISON)
        .collect();
    assert_eq!(
        order, wanted,
        "every good event succeeded once, in stream order"
    );
    assert!(runs.iter().any(|(_, b)| b.len() > 1), "events were batched");

    // The poison event alone is in the dead-letter queue; the failed
    // batches that held it were not left there.
    let (status, dead) = api
        .send(Method::GET, "/v1/deadletters?function=picky", None)
        .await;
    assert_eq!(status, 200, "{dead}");
    let letters = dead["deadletters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{dead}");
    let id = letters[0]["id"].as_str().unwrap();
    assert_eq!(letters[0]["partition_key"], partition_key);
    let (status, letter) = api
        .send(Method::GET, &format!("/v1/deadletters/{id}"), None)
        .await;
    assert_eq!(status, 200, "{letter}");
    let request = &letter["request"];
    assert!(
        request["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "content-type" && h[1] == "application/cloudevents-batch+json"),
        "{letter}"
    );
    let batch: Vec<Value> = serde_json::from_str(request["body"].as_str().unwrap()).unwrap();
    assert_eq!(batch.len(), 1, "{letter}");
    assert_eq!(
        batch[0]["data"],
        json!({"n": ORDERED_POISON, "poison": true})
    );
    check(&batch[0]);
    assert_eq!(letter["attempts"].as_array().unwrap().len(), 1, "{letter}");

    // The queue holds exactly the successful batches and the one dead
    // letter: no other dead, failed or pending invocation.
    let (_, all) = api
        .send(
            Method::GET,
            "/v1/functions/picky/invocations?limit=1000",
            None,
        )
        .await;
    let all = all["invocations"].as_array().unwrap();
    let dead: Vec<&Value> = all.iter().filter(|i| i["status"] == "dead").collect();
    assert_eq!(dead.len(), 1, "{all:?}");
    assert_eq!(all.len(), runs.len() + 1, "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_jetstream_bisects_down_to_the_poison_event_through_the_queue() {
    let stream = unique("WISP-ORD");
    let prefix = unique("wisp-ord");
    let cleanup = delete_stream(stream.clone());
    bounded(
        async move {
            let js = create_stream(&stream, &prefix).await;
            for n in 0..ORDERED_TOTAL {
                let seq = publish_js(&js, format!("{prefix}.e"), ordered_body(n)).await;
                assert_eq!(seq, n + 1);
            }
            let server = server();
            let api = Api::new(&server);
            api.deploy("picky", "picky", json!({"async_policy": {"max_retries": 0}}))
                .await;
            create_trigger(
                &api,
                json!({"name": "ordered", "target": "picky",
                    "source": {"kind": "nats", "url": brokers::nats_url(), "subject": format!("{prefix}.>"),
                        "jetstream": {"stream": stream,
                            "ordered": {"max_events": 5, "max_wait_ms": 50, "on_failure": "bisect"}}}}),
            )
            .await;
            assert_ordered_outcome(&api, "ordered", "stream/ordered", |event| {
                assert_eq!(event["type"], "wisp.nats.message", "{event}");
                assert_eq!(event["natsstream"], stream.as_str(), "{event}");
                let seq: u64 = event["natsseq"].as_str().expect("natsseq").parse().unwrap();
                assert_eq!(event["data"]["n"].as_u64(), Some(seq - 1), "{event}");
            })
            .await;
            wait_consumer_settled(&js, &stream, "wisp-ordered", ORDERED_TOTAL).await;
        },
        cleanup,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_redis_stream_bisects_down_to_the_poison_event_through_the_queue() {
    use redis::AsyncCommands;

    let key = unique("wisp-ordered");
    let cleanup = {
        let key = key.clone();
        async move {
            let mut con = redis().await;
            let _: Result<i64, _> = con.del(&key).await;
        }
    };
    bounded(
        async move {
            let mut con = redis().await;
            let mut ids = Vec::new();
            for n in 0..ORDERED_TOTAL {
                let id: String = con
                    .xadd(
                        &key,
                        "*",
                        &[
                            ("data", ordered_body(n).as_str()),
                            ("content-type", "application/json"),
                        ],
                    )
                    .await
                    .unwrap();
                ids.push(id);
            }
            let server = server();
            let api = Api::new(&server);
            api.deploy("picky", "picky", json!({"async_policy": {"max_retries": 0}}))
                .await;
            create_trigger(
                &api,
                json!({"name": "ordered", "target": "picky",
                    "source": {"kind": "redis", "url": brokers::redis_url(),
                        "stream": {"key": key, "start": "0",
                            "ordered": {"max_events": 5, "max_wait_ms": 50, "on_failure": "bisect"}}}}),
            )
            .await;
            assert_ordered_outcome(&api, "ordered", &format!("stream/{key}"), |event| {
                assert_eq!(event["type"], "wisp.redis.stream.entry", "{event}");
                assert_eq!(event["redisstream"], key.as_str(), "{event}");
                let n = event["data"]["n"].as_u64().expect("data.n") as usize;
                assert_eq!(event["redisid"], ids[n].as_str(), "{event}");
            })
            .await;
            let pending: redis::streams::StreamPendingReply =
                con.xpending(&key, "wisp-ordered").await.unwrap();
            assert_eq!(pending.count(), 0, "every entry acknowledged");
        },
        cleanup,
    )
    .await;
}

// ------------------------------------------------------------- faults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_degrades_only_its_trigger_until_the_broker_is_back() {
    bounded(
        async move {
            let port = free_port();
            let url = format!("nats://127.0.0.1:{port}");
            let subject = unique("wisp-outage");
            let nats = PrivateNats::start(port).await;
            let server = server();
            let api = Api::new(&server);
            api.deploy("echo", "echo", json!({})).await;
            create_trigger(
                &api,
                json!({"name": "faulty", "target": "echo",
                    "source": {"kind": "nats", "url": url, "subject": subject}}),
            )
            .await;
            create_trigger(
                &api,
                json!({"name": "tick", "target": "echo",
                    "source": {"kind": "cron", "schedule": "* * * * * *"}}),
            )
            .await;
            wait_active(&api, "faulty").await;
            wait_active(&api, "tick").await;

            let nc = nats_client(&url).await;
            nc.publish(subject.clone(), "before".into()).await.unwrap();
            nc.flush().await.unwrap();
            api.wait_trigger("faulty", ARRIVAL, "delivering", |t| {
                count(t, "delivered") == 1
            })
            .await;
            drop(nc);

            // The broker goes away: its trigger degrades, with the reason.
            drop(nats);
            let t = api
                .wait_trigger("faulty", Duration::from_secs(20), "degraded", |t| {
                    t["status"]["state"] == "degraded"
                })
                .await;
            assert!(
                t["status"]["last_error"]
                    .as_str()
                    .is_some_and(|e| !e.is_empty()),
                "{t}"
            );
            assert!(t["status"]["last_error_at"].is_string(), "{t}");

            // The cron trigger keeps firing and the server keeps answering.
            let ticks = count(&api.trigger("tick").await, "delivered");
            let tick = api
                .wait_trigger("tick", Duration::from_secs(15), "ticking", |t| {
                    count(t, "delivered") >= ticks + 2
                })
                .await;
            assert_eq!(tick["status"]["state"], "active", "{tick}");
            let (status, _, body) = api.call("/fn/echo/still-here").await;
            assert_eq!(status, 200, "{body}");
            let (status, list) = api.send(Method::GET, "/v1/triggers", None).await;
            assert_eq!(status, 200, "{list}");
            assert_eq!(list["triggers"].as_array().unwrap().len(), 2, "{list}");
            let t = api.trigger("faulty").await;
            assert_eq!(t["status"]["state"], "degraded", "still down: {t}");
            let out = tokio::task::block_in_place(|| run(server.cli().args(["trigger", "list"])));
            assert_eq!(out.code, 0, "{out:?}");
            let row = out
                .stdout
                .lines()
                .find(|l| l.starts_with("faulty "))
                .unwrap_or_else(|| panic!("{out:?}"));
            assert!(row.contains("degraded: "), "{out:?}");

            // The broker is back on the same port: active, delivering.
            let _nats = PrivateNats::start(port).await;
            api.wait_trigger("faulty", Duration::from_secs(60), "active again", |t| {
                t["status"]["state"] == "active"
            })
            .await;
            let nc = nats_client(&url).await;
            nc.publish(subject.clone(), "after".into()).await.unwrap();
            nc.flush().await.unwrap();
            let deadline = Instant::now() + ARRIVAL;
            let mut echo = Succeeded::new("echo");
            loop {
                echo.refresh(&api).await;
                let bodies: Vec<Value> = echo
                    .replies()
                    .iter()
                    .filter(|r| ce(r, "type") == "wisp.nats.message")
                    .map(|r| r["body"].clone())
                    .collect();
                if bodies.len() == 2 {
                    assert!(bodies.contains(&json!("before")), "{bodies:?}");
                    assert!(bodies.contains(&json!("after")), "{bodies:?}");
                    break;
                }
                assert!(Instant::now() < deadline, "{bodies:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(count(&api.trigger("faulty").await, "delivered"), 2);
        },
        async {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_created_before_its_broker_or_stream_is_degraded_not_refused() {
    let stream = unique("WISP-NOTYET");
    let prefix = unique("wisp-notyet");
    let cleanup = delete_stream(stream.clone());
    bounded(
        async move {
            let server = server();
            let api = Api::new(&server);
            api.deploy("echo", "echo", json!({})).await;
            // Nothing listens on this port.
            let port = free_port();
            let url = format!("nats://127.0.0.1:{port}");
            let created = create_trigger(
                &api,
                json!({"name": "early", "target": "echo",
                    "source": {"kind": "nats", "url": url, "subject": unique("wisp-early")}}),
            )
            .await;
            assert!(
                matches!(
                    created["status"]["state"].as_str(),
                    Some("starting" | "degraded")
                ),
                "{created}"
            );
            let t = api
                .wait_trigger("early", Duration::from_secs(10), "degraded", |t| {
                    t["status"]["state"] == "degraded"
                })
                .await;
            let error = t["status"]["last_error"].as_str().unwrap_or_default();
            assert!(
                error.contains("cannot connect") && error.contains(&format!("127.0.0.1:{port}")),
                "{t}"
            );

            // A JetStream stream that does not exist yet: degraded, naming
            // it, until it is created.
            create_trigger(
                &api,
                json!({"name": "unborn", "target": "echo",
                    "source": {"kind": "nats", "url": brokers::nats_url(), "subject": format!("{prefix}.>"),
                        "jetstream": {"stream": stream}}}),
            )
            .await;
            let t = api
                .wait_trigger("unborn", Duration::from_secs(10), "degraded", |t| {
                    t["status"]["state"] == "degraded"
                })
                .await;
            let error = t["status"]["last_error"].as_str().unwrap_or_default();
            assert!(error.contains(&stream), "{t}");

            // Both stay there, retrying, and are listed like any other.
            tokio::time::sleep(Duration::from_secs(1)).await;
            for name in ["early", "unborn"] {
                assert_eq!(api.trigger(name).await["status"]["state"], "degraded");
            }
            let (_, list) = api.send(Method::GET, "/v1/triggers", None).await;
            assert_eq!(list["triggers"].as_array().unwrap().len(), 2, "{list}");

            let js = create_stream(&stream, &prefix).await;
            wait_active(&api, "unborn").await;
            publish_js(&js, format!("{prefix}.born"), r#"{"n":0}"#.into()).await;
            let mut echo = Succeeded::new("echo");
            let replies = echo.wait(&api, 1).await;
            assert_eq!(ce(&replies[0], "natsstream"), stream);
            assert_eq!(ce(&replies[0], "subject"), format!("{prefix}.born"));
            assert_eq!(api.trigger("early").await["status"]["state"], "degraded");
        },
        cleanup,
    )
    .await;
}

// ---------------------------------------------------- CLI and wisp.toml

/// Runs `wisp <args>` against `server` (on a blocking-allowed thread).
fn cli(server: &Server, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| run(server.cli().args(args)))
}

fn ok(out: Output) -> Output {
    assert_eq!(out.code, 0, "command failed: {out:?}");
    out
}

fn json_out(out: Output) -> Value {
    let out = ok(out);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

/// The value of `key:` in `wisp trigger get`'s text output.
fn field(out: &Output, key: &str) -> String {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no `{key}:` in {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_commands_from_the_cli() {
    bounded(
        async move {
            let server = server();
            let api = Api::new(&server);
            api.deploy("echo", "echo", json!({})).await;
            let cron = r#"{"kind":"cron","schedule":"* * * * * *"}"#;

            let out = ok(cli(&server, &["trigger", "list"]));
            assert_eq!(out.stdout.trim(), "no triggers");

            let out = ok(cli(
                &server,
                &[
                    "trigger",
                    "create",
                    "tick",
                    "--target",
                    "echo",
                    "--source",
                    cron,
                    "--description",
                    "every second",
                ],
            ));
            assert_eq!(field(&out, "name"), "tick");
            assert_eq!(field(&out, "target"), "echo");
            let source: Value = serde_json::from_str(&field(&out, "source")).unwrap();
            assert_eq!(source["kind"], "cron");
            assert_eq!(source["schedule"], "* * * * * *");

            // The same name again: the server's conflict, exit code 1.
            let out = cli(
                &server,
                &[
                    "trigger", "create", "tick", "--target", "echo", "--source", cron,
                ],
            );
            assert_eq!(out.code, 1, "{out:?}");
            assert!(out.stderr.contains("tick"), "{out:?}");

            // It fires, and `get` shows the counters.
            api.wait_trigger("tick", Duration::from_secs(15), "firing", |t| {
                count(t, "delivered") >= 1
            })
            .await;
            let out = ok(cli(&server, &["trigger", "get", "tick"]));
            assert_eq!(field(&out, "state"), "active");
            assert!(
                field(&out, "delivered").parse::<u64>().unwrap() >= 1,
                "{out:?}"
            );
            let got = json_out(cli(&server, &["--json", "trigger", "get", "tick"]));
            assert_eq!(got["name"], "tick");
            assert_eq!(got["description"], "every second");
            assert_eq!(got["enabled"], true);
            assert_eq!(got["source"]["kind"], "cron");

            let out = ok(cli(&server, &["trigger", "list"]));
            let mut lines = out.stdout.lines();
            let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
            assert_eq!(
                header,
                [
                    "NAME",
                    "KIND",
                    "TARGET",
                    "STATE",
                    "DELIVERED",
                    "FAILED",
                    "FILTERED"
                ]
            );
            let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
            assert_eq!(row[..4], ["tick", "cron", "echo", "active"], "{out:?}");
            assert!(lines.next().is_none(), "{out:?}");
            let listed = json_out(cli(&server, &["--json", "trigger", "list"]));
            assert_eq!(listed["triggers"].as_array().unwrap().len(), 1);
            assert_eq!(listed["triggers"][0]["name"], "tick");

            // Disable: stops; enable: starts again.
            let out = ok(cli(&server, &["trigger", "disable", "tick"]));
            assert_eq!(field(&out, "state"), "disabled");
            let got = json_out(cli(&server, &["--json", "trigger", "get", "tick"]));
            assert_eq!(got["enabled"], false);
            assert_eq!(got["status"]["state"], "disabled");
            tokio::time::sleep(Duration::from_millis(300)).await;
            let stopped = count(&api.trigger("tick").await, "delivered");
            tokio::time::sleep(Duration::from_millis(2200)).await;
            assert_eq!(
                count(&api.trigger("tick").await, "delivered"),
                stopped,
                "a disabled trigger fired"
            );
            let enabled = json_out(cli(&server, &["--json", "trigger", "enable", "tick"]));
            assert_eq!(enabled["enabled"], true);
            api.wait_trigger("tick", Duration::from_secs(15), "firing again", |t| {
                count(t, "delivered") > stopped
            })
            .await;

            // Update replaces the whole definition: now a webhook.
            let out = ok(cli(
                &server,
                &[
                    "trigger",
                    "update",
                    "tick",
                    "--target",
                    "echo",
                    "--source",
                    r#"{"kind":"webhook"}"#,
                    "--filter",
                    r#"{"exact":{"subject":"push"}}"#,
                ],
            ));
            assert_eq!(field(&out, "webhook"), server.at("/hooks/tick"));
            let got = json_out(cli(&server, &["--json", "trigger", "get", "tick"]));
            assert_eq!(got["source"]["kind"], "webhook");
            assert_eq!(got["description"], "", "update replaced the description");
            assert_eq!(got["filters"], json!([{"exact": {"subject": "push"}}]));
            let res = api
                .http
                .post(server.at("/hooks/tick"))
                .header("x-github-event", "push")
                .body("hooked")
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 202);
            let mut echo = Succeeded::new("echo");
            let deadline = Instant::now() + ARRIVAL;
            while !echo
                .replies()
                .iter()
                .any(|r| ce(r, "type") == "wisp.webhook")
            {
                assert!(Instant::now() < deadline, "the webhook event never ran");
                tokio::time::sleep(Duration::from_millis(100)).await;
                echo.refresh(&api).await;
            }
            // A disabled webhook has no hook.
            let out = ok(cli(&server, &["trigger", "disable", "tick"]));
            assert_eq!(field(&out, "state"), "disabled");
            let res = api
                .http
                .post(server.at("/hooks/tick"))
                .header("x-github-event", "push")
                .body("too late")
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 404);
            ok(cli(&server, &["trigger", "enable", "tick"]));

            // Bad input is a usage error (2) naming the flag, sent nowhere.
            for (flag, value) in [("--source", "{not json"), ("--filter", "[")] {
                let mut args = vec![
                    "trigger", "create", "bad", "--target", "echo", "--source", cron,
                ];
                if flag == "--source" {
                    args[6] = value;
                } else {
                    args.extend([flag, value]);
                }
                let out = cli(&server, &args);
                assert_eq!(out.code, 2, "{out:?}");
                assert!(
                    out.stderr.contains(&format!("{flag} is not valid JSON")),
                    "{out:?}"
                );
            }
            // An invalid definition is the server's error, naming the field.
            let out = cli(
                &server,
                &[
                    "trigger",
                    "create",
                    "bad",
                    "--target",
                    "echo",
                    "--source",
                    r#"{"kind":"cron","schedule":"99 * * * *"}"#,
                ],
            );
            assert_eq!(out.code, 1, "{out:?}");
            assert!(out.stderr.contains("schedule"), "{out:?}");
            let out = cli(&server, &["trigger", "get", "bad"]);
            assert_eq!(out.code, 1, "nothing was created: {out:?}");

            // Delete.
            let out = ok(cli(&server, &["trigger", "delete", "tick"]));
            assert_eq!(out.stdout.trim(), "deleted trigger tick");
            let out = cli(&server, &["trigger", "delete", "tick"]);
            assert_eq!(out.code, 1, "{out:?}");
            let out = cli(&server, &["trigger", "get", "tick"]);
            assert_eq!(out.code, 1, "{out:?}");
            let listed = json_out(cli(&server, &["--json", "trigger", "list"]));
            assert_eq!(listed["triggers"], json!([]));
        },
        async {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_applies_trigger_entries_of_the_manifest() {
    bounded(
        async move {
            let server = server();
            let api = Api::new(&server);
            let echo = wisp_testkit::example("echo");
            let dir = tempfile::tempdir().unwrap();
            let manifest = |description: &str| {
                format!(
                    "[[function]]\nname = \"hooked\"\nwasm = {:?}\n\n\
                     [[trigger]]\nname = \"hook\"\ntarget = \"hooked\"\n\
                     description = {description:?}\n\
                     source = {{ kind = \"webhook\" }}\n\
                     filters = [{{ exact = {{ type = \"wisp.webhook\" }} }}]\n\n\
                     [[trigger]]\nname = \"nightly\"\ntarget = \"hooked\"\n\
                     source = {{ kind = \"cron\", schedule = \"0 3 * * *\", timezone = \"Europe/Berlin\" }}\n",
                    echo.to_str().unwrap()
                )
            };
            std::fs::write(dir.path().join("wisp.toml"), manifest("first")).unwrap();
            let deploy = |json: bool| {
                let mut cmd = server.cli();
                if json {
                    cmd.arg("--json");
                }
                cmd.arg("deploy").current_dir(dir.path());
                tokio::task::block_in_place(|| run(&mut cmd))
            };

            let first = ok(deploy(false));
            assert!(first.stdout.contains("hooked: created"), "{first:?}");
            assert!(first.stdout.contains("trigger hook: created"), "{first:?}");
            assert!(first.stdout.contains("trigger nightly: created"), "{first:?}");
            let hook = api.trigger("hook").await;
            assert_eq!(hook["description"], "first");
            assert_eq!(hook["target"], "hooked");
            assert_eq!(hook["webhook_path"], "/hooks/hook");
            let nightly = api.trigger("nightly").await;
            assert_eq!(nightly["source"]["timezone"], "Europe/Berlin");

            // The deployed webhook works.
            let res = api
                .http
                .post(server.at("/hooks/hook"))
                .body("from the manifest")
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 202);
            let mut hooked = Succeeded::new("hooked");
            let replies = hooked.wait(&api, 1).await;
            assert_eq!(ce(&replies[0], "type"), "wisp.webhook");
            assert_eq!(replies[0]["body"], "from the manifest");

            // Again: nothing changes.
            let second = ok(deploy(false));
            assert!(second.stdout.contains("trigger hook: unchanged"), "{second:?}");
            assert!(second.stdout.contains("trigger nightly: unchanged"), "{second:?}");
            assert!(
                !second.stdout.contains("created") && !second.stdout.contains("updated"),
                "{second:?}"
            );
            assert_eq!(api.trigger("hook").await["updated_at"], hook["updated_at"]);

            // One trigger changed in the file: only it is updated.
            std::fs::write(dir.path().join("wisp.toml"), manifest("second")).unwrap();
            let third = ok(deploy(true));
            let lines: Vec<Value> = third
                .stdout
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
            assert!(
                lines.contains(&json!({"trigger": "hook", "action": "updated"})),
                "{third:?}"
            );
            assert!(
                lines.contains(&json!({"trigger": "nightly", "action": "unchanged"})),
                "{third:?}"
            );
            assert_eq!(api.trigger("hook").await["description"], "second");

            // A manifest with a broken trigger applies nothing and names it.
            std::fs::write(
                dir.path().join("wisp.toml"),
                manifest("third").replace("0 3 * * *", "0 3 * *"),
            )
            .unwrap();
            let out = deploy(false);
            assert_eq!(out.code, 2, "{out:?}");
            assert!(out.stderr.contains("trigger `nightly`"), "{out:?}");
            assert_eq!(api.trigger("hook").await["description"], "second");
        },
        async {},
    )
    .await;
}

/// Rotating a webhook secret (or a broker password) in `wisp.toml`
/// reaches the server: the server never shows secrets, so a definition
/// with one is always sent again rather than compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_rotates_a_changed_webhook_secret() {
    bounded(
        async move {
            let server = server();
            let api = Api::new(&server);
            let echo = wisp_testkit::example("echo");
            let dir = tempfile::tempdir().unwrap();
            let write = |secret: &str| {
                let text = format!(
                    "[[function]]\nname = \"f\"\nwasm = {:?}\n\n\
                     [[trigger]]\nname = \"hook\"\ntarget = \"f\"\n\
                     source = {{ kind = \"webhook\", secret = {secret:?} }}\n",
                    echo.to_str().unwrap()
                );
                std::fs::write(dir.path().join("wisp.toml"), text).unwrap();
            };
            let deploy = || {
                let mut cmd = server.cli();
                cmd.arg("deploy").current_dir(dir.path());
                tokio::task::block_in_place(|| run(&mut cmd))
            };
            write("first");
            let out = ok(deploy());
            assert!(out.stdout.contains("trigger hook: created"), "{out:?}");
            write("second");
            let out = ok(deploy());
            assert!(out.stdout.contains("trigger hook: updated"), "{out:?}");
            let post = |secret: &str| {
                let signature = wisp_triggers::sources::webhook::sign(secret, b"body");
                api.http
                    .post(server.at("/hooks/hook"))
                    .header("x-hub-signature-256", signature)
                    .body("body")
                    .send()
            };
            assert_eq!(post("second").await.unwrap().status(), 202);
            assert_eq!(post("first").await.unwrap().status(), 401);
        },
        async {},
    )
    .await;
}
