//! Triggers: messages published to a real broker (on 127.0.0.1, or where
//! the tests' `WISP_TEST_*_URL` variables point: [`brokers`]) and
//! delivered by a trigger of a real release server (`POST /v1/triggers`)
//! to `hello`, the no-op, for each of NATS JetStream, RabbitMQ, MQTT
//! (Mosquitto) and Redis Streams.
//!
//! - **Throughput**: [`messages`] messages published as fast as one
//!   publisher goes, pipelined, each confirmed by the broker (JetStream
//!   publish acks, AMQP publisher confirms, MQTT QoS 1 PUBACKs, the replies
//!   to pipelined Redis `XADD`s), timed from the first publish until the
//!   last invocation is recorded final (`succeeded`): the harness polls
//!   `faas_invocations_total` and the trigger's `delivered` counter every
//!   20 ms, then lists the function's `queued`, `running` and `retrying`
//!   invocations until none is left.
//! - **Latency at half of peak**: messages published at a steady half of
//!   the broker's median throughput, each a binary-mode CloudEvent with its
//!   own `id` and `time` (the publish time). The invocations are read back
//!   from the listing (polled every 250 ms during the run, so that its
//!   1,000-row window covers the whole run) and joined to the publish
//!   record of their message through their idempotency key ([`join_key`]);
//!   `attempts[0].started_at` minus the publish time is the
//!   publish-to-start latency.
//!
//! `hello` is deployed effectively once in every run: a message the broker
//! delivers twice is queued once (so the invocations count distinct
//! messages), and RabbitMQ and MQTT events, whose sources set no
//! idempotency key, get one from their CloudEvent `source` and `id`. The
//! JetStream and Redis sources key every event themselves, so for them
//! this changes nothing, and every broker's events cost the queue the same.
//!
//! Mosquitto keeps at most 1,000 QoS 1 messages queued for a subscriber
//! (`max_queued_messages`, its default) and drops the rest, so the MQTT
//! publisher stays at most [`MQTT_LEAD`] messages ahead of the invocations
//! that have run (the trigger's `delivered` counter would not do: it also
//! counts messages the broker delivered again); the other brokers keep
//! everything and are published to flat out.
//!
//! Every run gets a fresh server (an empty data dir, the shared
//! compiled-code cache) and its own stream, queue, topic and client id or
//! key, named after the harness's pid, and removes them afterwards (the
//! RabbitMQ queue also expires 10 minutes after its last use, the Redis
//! key after an hour, and JetStream streams of a harness that is gone are
//! removed when the section starts).

use crate::Ctx;
use crate::asynchronous::{cores_busy, median_of, per_event, ts};
use crate::util::{
    TempDir, cpu_micros, load_average, machine_cpu_micros, progress, round, summary,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wisp_testkit::{Server, brokers};

/// The brokers, in the order they run.
pub const BROKERS: [Broker; 4] = [Broker::Nats, Broker::RabbitMq, Broker::Mqtt, Broker::Redis];
/// The trigger's name on each (fresh) server.
const TRIGGER: &str = "bench";
/// The target function, deployed from the `hello` example.
const FUNCTION: &str = "hello";
/// Messages handed to the publisher at once in the throughput run (one
/// Redis pipeline).
const GROUP: usize = 64;
/// Most published messages not yet confirmed by the broker.
pub const WINDOW: usize = 1024;
/// Most MQTT messages published but not yet queued by the trigger.
pub const MQTT_LEAD: u64 = 500;
/// Longest wait for one broker operation.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// No publishing run takes longer than this.
const PUBLISH_BUDGET: Duration = Duration::from_secs(120);
/// The longest wait for the invocations to become final.
const DRAIN_BUDGET: Duration = Duration::from_secs(180);
/// The longest wait for a new trigger to become active.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How often completion is polled.
const POLL: Duration = Duration::from_millis(20);
/// A run whose trigger queued nothing and whose function ran nothing for
/// this long, with messages outstanding, has lost them.
const STALL: Duration = Duration::from_secs(15);
/// How often the latency run reads the newest invocations.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Rows per listing (the API's maximum).
const LIST_LIMIT: usize = 1000;
/// Seconds RabbitMQ keeps an unused bench queue (`x-expires`).
const QUEUE_EXPIRES_MS: i32 = 600_000;
/// Seconds Redis keeps a bench stream.
const KEY_EXPIRES_S: u64 = 3600;

const CE_SOURCE: &str = "/wisp-bench/triggers";
const CE_TYPE: &str = "dev.wisp.bench.tick";

/// Messages in each throughput run.
pub fn messages(ctx: &Ctx) -> u64 {
    if ctx.quick { 2_000 } else { 20_000 }
}

/// Seconds of steady publishing in the latency run.
pub fn latency_seconds(ctx: &Ctx) -> u64 {
    if ctx.quick { 2 } else { 10 }
}

/// One broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    Nats,
    RabbitMq,
    Mqtt,
    Redis,
}

impl Broker {
    /// The key in the results.
    pub fn key(self) -> &'static str {
        match self {
            Broker::Nats => "nats",
            Broker::RabbitMq => "rabbitmq",
            Broker::Mqtt => "mqtt",
            Broker::Redis => "redis",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Broker::Nats => "NATS JetStream",
            Broker::RabbitMq => "RabbitMQ",
            Broker::Mqtt => "MQTT (Mosquitto)",
            Broker::Redis => "Redis Streams",
        }
    }

    /// The broker's URL, shared with the tests.
    fn url(self) -> &'static str {
        match self {
            Broker::Nats => brokers::nats_url(),
            Broker::RabbitMq => brokers::amqp_url(),
            Broker::Mqtt => brokers::mqtt_url(),
            Broker::Redis => brokers::redis_url(),
        }
    }

    /// `host:port` of [`Broker::url`] (an IPv6 host in brackets).
    fn addr(self) -> String {
        match brokers::host_port(self.url()) {
            (host, port) if host.contains(':') => format!("[{host}]:{port}"),
            (host, port) => format!("{host}:{port}"),
        }
    }

    /// The broker's process name (`/proc/<pid>/comm`), for its CPU time.
    fn process(self) -> &'static str {
        match self {
            Broker::Nats => "nats-server",
            Broker::RabbitMq => "beam.smp",
            Broker::Mqtt => "mosquitto",
            Broker::Redis => "redis-server",
        }
    }

    /// The Debian package, for the version.
    fn package(self) -> &'static str {
        match self {
            Broker::Nats => "nats-server",
            Broker::RabbitMq => "rabbitmq-server",
            Broker::Mqtt => "mosquitto",
            Broker::Redis => "redis-server",
        }
    }

    /// How the publisher publishes.
    fn publisher(self) -> &'static str {
        match self {
            Broker::Nats => {
                "async-nats JetStream publish with headers (binary CloudEvent), pipelined, each publish ack awaited; file-storage stream"
            }
            Broker::RabbitMq => {
                "lapin basic.publish to the default exchange, persistent (delivery mode 2), ce-* headers, publisher confirms, pipelined; durable classic queue"
            }
            Broker::Mqtt => {
                "rumqttc MQTT 5 publish at QoS 1 with ce-* user properties, pipelined, each PUBACK counted; publisher at most 500 messages ahead of the invocations run"
            }
            Broker::Redis => {
                "redis-rs pipelined XADD (ce-* fields and `data`), 64 per pipeline in the throughput run"
            }
        }
    }

    /// The trigger's `source`.
    fn source(self, n: &Names) -> Value {
        match self {
            Broker::Nats => json!({
                "kind": "nats", "url": self.url(), "subject": n.subject(),
                "jetstream": {"stream": n.name()},
            }),
            // The harness declares the queue (with an expiry), so the
            // trigger must not declare it again without arguments.
            Broker::RabbitMq => json!({
                "kind": "rabbitmq", "url": self.url(), "queue": n.name(), "declare": false,
            }),
            Broker::Mqtt => json!({
                "kind": "mqtt", "url": self.url(), "topic": n.topic(), "client_id": n.client_id(),
            }),
            Broker::Redis => json!({
                "kind": "redis", "url": self.url(), "stream": {"key": n.key(), "start": "0"},
            }),
        }
    }
}

/// The broker-side names of one run, unique per harness process and run.
struct Names {
    tag: String,
}

impl Names {
    fn new() -> Names {
        static RUN: AtomicU64 = AtomicU64::new(0);
        let n = RUN.fetch_add(1, Ordering::Relaxed);
        Names {
            tag: format!("{}-{n}", std::process::id()),
        }
    }

    /// JetStream stream and RabbitMQ queue.
    fn name(&self) -> String {
        format!("wisp-bench-{}", self.tag)
    }

    fn subject(&self) -> String {
        format!("wisp-bench.{}", self.tag)
    }

    fn topic(&self) -> String {
        format!("wisp-bench/{}", self.tag)
    }

    /// The trigger's MQTT client id (at most 23 characters).
    fn client_id(&self) -> String {
        format!("wb-{}", self.tag)
    }

    fn key(&self) -> String {
        format!("wisp-bench:{}", self.tag)
    }
}

/// `what` within [`OP_TIMEOUT`], its error as text.
async fn op<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::IntoFuture<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {OP_TIMEOUT:?}")),
    }
}

async fn nats_client() -> Result<async_nats::Client, String> {
    op(
        "connecting to NATS",
        async_nats::connect(Broker::Nats.url()),
    )
    .await
}

async fn amqp_channel() -> Result<(lapin::Connection, lapin::Channel), String> {
    let conn = op(
        "connecting to RabbitMQ",
        lapin::Connection::connect(
            Broker::RabbitMq.url(),
            lapin::ConnectionProperties::default(),
        ),
    )
    .await?;
    let channel = op("opening an AMQP channel", conn.create_channel()).await?;
    Ok((conn, channel))
}

async fn redis_connection() -> Result<redis::aio::MultiplexedConnection, String> {
    let client = redis::Client::open(Broker::Redis.url()).map_err(|e| format!("Redis URL: {e}"))?;
    op(
        "connecting to Redis",
        client.get_multiplexed_async_connection(),
    )
    .await
}

/// Creates what the trigger consumes from: the JetStream stream (file
/// storage, the JetStream default) or the durable RabbitMQ queue. MQTT
/// topics and Redis streams need nothing (the trigger creates the
/// consumer group with MKSTREAM).
async fn prepare(broker: Broker, n: &Names) -> Result<(), String> {
    use async_nats::jetstream::stream;
    match broker {
        Broker::Nats => {
            let js = async_nats::jetstream::new(nats_client().await?);
            op(
                "creating the JetStream stream",
                js.create_stream(stream::Config {
                    name: n.name(),
                    subjects: vec![n.subject()],
                    storage: stream::StorageType::File,
                    ..Default::default()
                }),
            )
            .await?;
        }
        Broker::RabbitMq => {
            use lapin::options::QueueDeclareOptions;
            use lapin::types::{AMQPValue, FieldTable, ShortString};
            let (conn, channel) = amqp_channel().await?;
            let mut args = FieldTable::default();
            args.insert(
                ShortString::from("x-expires"),
                AMQPValue::LongInt(QUEUE_EXPIRES_MS),
            );
            let declared = op(
                "declaring the RabbitMQ queue",
                channel.queue_declare(
                    n.name().as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    args,
                ),
            )
            .await;
            let _ = tokio::time::timeout(OP_TIMEOUT, conn.close(200, "OK".into())).await;
            declared?;
        }
        Broker::Mqtt | Broker::Redis => {}
    }
    Ok(())
}

/// Connects as the trigger's MQTT client id with a clean start and no
/// session expiry, which makes the broker drop the trigger's persistent
/// session, then disconnects.
async fn forget_mqtt_session(client_id: &str) -> Result<(), String> {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let (host, port) = brokers::host_port(Broker::Mqtt.url());
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_clean_start(true);
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    let connected = tokio::time::timeout(OP_TIMEOUT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("no CONNACK".into()));
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    connected.map_err(|e| format!("forgetting the MQTT session: {e}"))
}

/// Removes the run's stream, queue, session or key (after the server that
/// consumed it is gone). Failures are reported, not fatal.
async fn cleanup(broker: Broker, n: &Names) {
    let res: Result<(), String> = async {
        match broker {
            Broker::Nats => {
                let js = async_nats::jetstream::new(nats_client().await?);
                op("deleting the stream", js.delete_stream(n.name())).await?;
            }
            Broker::RabbitMq => {
                use lapin::options::QueueDeleteOptions;
                let (conn, channel) = amqp_channel().await?;
                let deleted = op(
                    "deleting the queue",
                    channel.queue_delete(n.name().as_str().into(), QueueDeleteOptions::default()),
                )
                .await;
                let _ = tokio::time::timeout(OP_TIMEOUT, conn.close(200, "OK".into())).await;
                deleted?;
            }
            Broker::Mqtt => forget_mqtt_session(&n.client_id()).await?,
            Broker::Redis => {
                let mut con = redis_connection().await?;
                op(
                    "deleting the stream key",
                    redis::cmd("DEL").arg(n.key()).query_async::<i64>(&mut con),
                )
                .await?;
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = res {
        progress(format!("triggers: cleaning up after {}: {e}", broker.key()));
    }
}

/// Removes JetStream streams left by harness processes that are gone
/// (an interrupted run), found with the JetStream API's `STREAM.NAMES`.
async fn remove_stale_streams() {
    let Ok(client) = nats_client().await else {
        return;
    };
    let Ok(reply) = op(
        "listing JetStream streams",
        client.request("$JS.API.STREAM.NAMES", "{}".into()),
    )
    .await
    else {
        return;
    };
    let names: Value = serde_json::from_slice(&reply.payload).unwrap_or(Value::Null);
    let js = async_nats::jetstream::new(client);
    for name in names["streams"].as_array().into_iter().flatten() {
        let Some(name) = name.as_str() else { continue };
        let Some(pid) = name
            .strip_prefix("wisp-bench-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            progress(format!(
                "triggers: removing JetStream stream {name} left by an interrupted run"
            ));
            let _ = tokio::time::timeout(OP_TIMEOUT, js.delete_stream(name)).await;
        }
    }
}

/// The publish times and join keys of one publishing run.
#[derive(Default)]
struct Published {
    /// Messages handed to the broker.
    sent: u64,
    /// Messages the broker confirmed (acked, or the XADD replied).
    confirmed: u64,
    /// Messages the broker refused (AMQP nack).
    refused: u64,
    /// `(join key, publish time)` of every confirmed message: the
    /// JetStream stream sequence, the Redis entry id, or (RabbitMQ, MQTT)
    /// the CloudEvent id.
    keys: Vec<(String, DateTime<Utc>)>,
}

/// The binary-mode CloudEvent attributes of message `seq`, and its data.
fn attributes(tag: &str, seq: u64, time: DateTime<Utc>) -> ([(&'static str, String); 5], String) {
    (
        [
            ("ce-specversion", "1.0".to_string()),
            ("ce-id", ce_id(tag, seq)),
            ("ce-source", CE_SOURCE.to_string()),
            ("ce-type", CE_TYPE.to_string()),
            ("ce-time", time.to_rfc3339_opts(SecondsFormat::Micros, true)),
        ],
        format!(r#"{{"seq":{seq}}}"#),
    )
}

fn ce_id(tag: &str, seq: u64) -> String {
    format!("{tag}-{seq}")
}

/// One connection publishing to the run's stream, queue, topic or key.
enum Publisher {
    Nats {
        js: async_nats::jetstream::Context,
        subject: String,
        pending: VecDeque<(
            DateTime<Utc>,
            async_nats::jetstream::context::PublishAckFuture,
        )>,
    },
    RabbitMq {
        conn: lapin::Connection,
        channel: lapin::Channel,
        queue: String,
        pending: VecDeque<lapin::PublisherConfirm>,
    },
    Mqtt {
        client: rumqttc::v5::AsyncClient,
        topic: String,
        /// PUBACKs received so far.
        acked: Arc<AtomicU64>,
        acks: Arc<tokio::sync::Notify>,
        /// The event loop, answering why it stopped.
        task: tokio::task::JoinHandle<String>,
    },
    Redis {
        con: redis::aio::MultiplexedConnection,
        key: String,
    },
}

impl Publisher {
    async fn connect(broker: Broker, n: &Names) -> Result<Publisher, String> {
        Ok(match broker {
            Broker::Nats => Publisher::Nats {
                js: async_nats::jetstream::new(nats_client().await?),
                subject: n.subject(),
                pending: VecDeque::new(),
            },
            Broker::RabbitMq => {
                use lapin::options::ConfirmSelectOptions;
                let (conn, channel) = amqp_channel().await?;
                op(
                    "confirm.select",
                    channel.confirm_select(ConfirmSelectOptions::default()),
                )
                .await?;
                Publisher::RabbitMq {
                    conn,
                    channel,
                    queue: n.name(),
                    pending: VecDeque::new(),
                }
            }
            Broker::Mqtt => {
                use rumqttc::v5::mqttbytes::v5::Packet;
                use rumqttc::v5::{AsyncClient, Event, MqttOptions};
                let (host, port) = brokers::host_port(Broker::Mqtt.url());
                let mut options = MqttOptions::new(format!("wb-pub-{}", n.tag), host, port);
                options.set_clean_start(true);
                options.set_keep_alive(Duration::from_secs(10));
                let (client, mut eventloop) = AsyncClient::new(options, WINDOW);
                let acked = Arc::new(AtomicU64::new(0));
                let acks = Arc::new(tokio::sync::Notify::new());
                let (a, w) = (acked.clone(), acks.clone());
                let task = tokio::spawn(async move {
                    loop {
                        match eventloop.poll().await {
                            Ok(Event::Incoming(Packet::PubAck(_))) => {
                                a.fetch_add(1, Ordering::Relaxed);
                                w.notify_one();
                            }
                            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                                w.notify_one();
                                return format!("the broker disconnected: {d:?}");
                            }
                            Ok(_) => {}
                            Err(e) => {
                                w.notify_one();
                                return e.to_string();
                            }
                        }
                    }
                });
                Publisher::Mqtt {
                    client,
                    topic: n.topic(),
                    acked,
                    acks,
                    task,
                }
            }
            Broker::Redis => Publisher::Redis {
                con: redis_connection().await?,
                key: n.key(),
            },
        })
    }

    /// Publishes messages `seqs` (each stamped with the time just before
    /// it is handed to the client); their confirmations are collected by
    /// [`Publisher::settle`] (Redis: at once).
    async fn send(
        &mut self,
        tag: &str,
        seqs: std::ops::Range<u64>,
        out: &mut Published,
    ) -> Result<(), String> {
        match self {
            Publisher::Nats {
                js,
                subject,
                pending,
            } => {
                for seq in seqs {
                    let now = Utc::now();
                    let (attrs, data) = attributes(tag, seq, now);
                    let mut headers = async_nats::HeaderMap::new();
                    for (k, v) in attrs {
                        headers.insert(k, v.as_str());
                    }
                    headers.insert("content-type", "application/json");
                    let ack = js
                        .publish_with_headers(subject.clone(), headers, data.into())
                        .await
                        .map_err(|e| format!("JetStream publish: {e}"))?;
                    pending.push_back((now, ack));
                    out.sent += 1;
                }
            }
            Publisher::RabbitMq {
                channel,
                queue,
                pending,
                ..
            } => {
                use lapin::BasicProperties;
                use lapin::options::BasicPublishOptions;
                use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
                for seq in seqs {
                    let now = Utc::now();
                    let (attrs, data) = attributes(tag, seq, now);
                    let mut headers = FieldTable::default();
                    for (k, v) in attrs {
                        headers.insert(
                            ShortString::from(k),
                            AMQPValue::LongString(LongString::from(v)),
                        );
                    }
                    let props = BasicProperties::default()
                        .with_content_type("application/json".into())
                        .with_delivery_mode(2)
                        .with_headers(headers);
                    let confirm = channel
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions::default(),
                            data.as_bytes(),
                            props,
                        )
                        .await
                        .map_err(|e| format!("basic.publish: {e}"))?;
                    pending.push_back(confirm);
                    out.sent += 1;
                    out.keys.push((ce_id(tag, seq), now));
                }
            }
            Publisher::Mqtt { client, topic, .. } => {
                use rumqttc::v5::mqttbytes::QoS;
                use rumqttc::v5::mqttbytes::v5::PublishProperties;
                for seq in seqs {
                    let now = Utc::now();
                    let (attrs, data) = attributes(tag, seq, now);
                    let props = PublishProperties {
                        user_properties: attrs
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect(),
                        content_type: Some("application/json".into()),
                        ..PublishProperties::default()
                    };
                    op(
                        "MQTT publish",
                        client.publish_with_properties(
                            topic.clone(),
                            QoS::AtLeastOnce,
                            false,
                            data.into_bytes(),
                            props,
                        ),
                    )
                    .await?;
                    out.sent += 1;
                    out.keys.push((ce_id(tag, seq), now));
                }
            }
            Publisher::Redis { con, key } => {
                let mut pipe = redis::pipe();
                let mut times = Vec::with_capacity(seqs.end.saturating_sub(seqs.start) as usize);
                for seq in seqs {
                    let now = Utc::now();
                    let (attrs, data) = attributes(tag, seq, now);
                    let cmd = pipe.cmd("XADD").arg(key.as_str()).arg("*");
                    for (k, v) in attrs {
                        cmd.arg(k).arg(v);
                    }
                    cmd.arg("content-type")
                        .arg("application/json")
                        .arg("data")
                        .arg(data);
                    times.push(now);
                }
                out.sent += times.len() as u64;
                let ids: Vec<String> = op("XADD", pipe.query_async(con)).await?;
                out.confirmed += ids.len() as u64;
                out.keys.extend(ids.into_iter().zip(times));
            }
        }
        Ok(())
    }

    /// Waits for the broker's confirmations until at most `max` messages
    /// are unconfirmed.
    async fn settle(&mut self, max: usize, out: &mut Published) -> Result<(), String> {
        match self {
            Publisher::Nats { pending, .. } => {
                while pending.len() > max {
                    let Some((time, ack)) = pending.pop_front() else {
                        break;
                    };
                    let ack = op("JetStream publish ack", ack).await?;
                    out.confirmed += 1;
                    out.keys.push((ack.sequence.to_string(), time));
                }
            }
            Publisher::RabbitMq { pending, .. } => {
                while pending.len() > max {
                    let Some(confirm) = pending.pop_front() else {
                        break;
                    };
                    if op("publisher confirm", confirm).await?.is_ack() {
                        out.confirmed += 1;
                    } else {
                        out.refused += 1;
                    }
                }
            }
            Publisher::Mqtt {
                acked, acks, task, ..
            } => {
                let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
                while out.sent.saturating_sub(acked.load(Ordering::Relaxed)) > max as u64 {
                    if task.is_finished() {
                        return Err("the MQTT connection ended".into());
                    }
                    if tokio::time::timeout_at(deadline, acks.notified())
                        .await
                        .is_err()
                    {
                        return Err(format!("MQTT: no PUBACK within {OP_TIMEOUT:?}"));
                    }
                }
                out.confirmed = acked.load(Ordering::Relaxed).min(out.sent);
            }
            Publisher::Redis { .. } => {}
        }
        Ok(())
    }

    async fn close(self) {
        match self {
            Publisher::Nats { .. } | Publisher::Redis { .. } => {}
            Publisher::RabbitMq { conn, .. } => {
                let _ = tokio::time::timeout(OP_TIMEOUT, conn.close(200, "OK".into())).await;
            }
            Publisher::Mqtt { client, task, .. } => {
                let _ = client.disconnect().await;
                let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
            }
        }
    }

    /// Why the MQTT event loop stopped, if it did.
    async fn mqtt_error(&mut self) -> Option<String> {
        match self {
            Publisher::Mqtt { task, .. } if task.is_finished() => task.await.ok(),
            _ => None,
        }
    }
}

/// A fresh server with `hello` deployed and a trigger from the run's
/// stream, queue, topic or key to it, warmed up by one message.
struct Bench {
    server: Server,
    _data: TempDir,
    http: reqwest::Client,
    broker: Broker,
}

/// When a run's messages were all queued, had all run, and were all final.
#[derive(Debug, Default)]
struct Watched {
    queued_s: f64,
    ran_s: f64,
    final_s: f64,
}

impl Bench {
    async fn start(
        ctx: &Ctx,
        cache: &TempDir,
        broker: Broker,
        n: &Names,
        p: &mut Publisher,
    ) -> Result<Bench, String> {
        let data = TempDir::new(&format!("triggers-{}-{}", broker.key(), n.tag));
        let cache_dir = cache.path().to_str().expect("UTF-8 path").to_string();
        let server = Server::start_in(&ctx.wisp, data.path(), &["--cache-dir", &cache_dir]);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        let b = Bench {
            server,
            _data: data,
            http,
            broker,
        };
        let res = b
            .http
            .post(b.server.at("/v1/artifacts"))
            .header("content-type", "application/wasm")
            .body(ctx.hello.clone())
            .send()
            .await
            .map_err(|e| format!("upload: {e}"))?;
        let up: Value = res.json().await.map_err(|e| format!("upload: {e}"))?;
        let digest = up["digest"].as_str().ok_or(format!("upload: {up}"))?;
        // Effectively once: a message the broker delivers again is
        // queued once, so the invocations count distinct messages, and
        // RabbitMQ and MQTT events carry their CloudEvent id in the
        // idempotency key (the JetStream and Redis sources key their events
        // themselves, whatever the function's semantics).
        let spec = json!({
            "code_digest": digest,
            "async_policy": {"semantics": "effectively_once"},
        });
        let res = b
            .http
            .put(b.server.at(&format!("/v1/functions/{FUNCTION}")))
            .json(&spec)
            .send()
            .await
            .map_err(|e| format!("create {FUNCTION}: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("create {FUNCTION}: {}", res.status()));
        }
        let res = b
            .http
            .post(b.server.at("/v1/triggers"))
            .json(&json!({
                "name": TRIGGER,
                "target": FUNCTION,
                "description": "wisp-bench triggers section",
                "source": broker.source(n),
            }))
            .send()
            .await
            .map_err(|e| format!("create trigger: {e}"))?;
        if res.status() != 201 {
            let status = res.status();
            return Err(format!(
                "create trigger: {status}: {}",
                res.text().await.unwrap_or_default()
            ));
        }
        let deadline = Instant::now() + ACTIVE_TIMEOUT;
        loop {
            let status = b.status().await?;
            if status["state"] == "active" {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the trigger was not active after {} s: {status}",
                    ACTIVE_TIMEOUT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if broker == Broker::Redis {
            // The trigger created the stream (MKSTREAM); XADD keeps the expiry.
            let mut con = redis_connection().await?;
            op(
                "EXPIRE",
                redis::cmd("EXPIRE")
                    .arg(n.key())
                    .arg(KEY_EXPIRES_S)
                    .query_async::<i64>(&mut con),
            )
            .await?;
        }
        // One message through the whole path: the component is loaded, the
        // consumer has delivered, the queue has written.
        let mut warm = Published::default();
        p.send("warmup", 0..1, &mut warm).await?;
        p.settle(0, &mut warm).await?;
        let abort = AtomicBool::new(false);
        b.watch(1, 1, Instant::now(), &abort).await?;
        Ok(b)
    }

    /// The trigger's status (`GET /v1/triggers/bench`).
    async fn status(&self) -> Result<Value, String> {
        let v: Value = self
            .http
            .get(self.server.at(&format!("/v1/triggers/{TRIGGER}")))
            .send()
            .await
            .map_err(|e| format!("trigger status: {e}"))?
            .json()
            .await
            .map_err(|e| format!("trigger status: {e}"))?;
        Ok(v["status"].clone())
    }

    /// Events the trigger has queued so far.
    async fn delivered(&self) -> Result<u64, String> {
        Ok(self.status().await?["delivered"].as_u64().unwrap_or(0))
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

    /// Invocations run so far.
    async fn runs(&self) -> Result<u64, String> {
        Ok(self.metric_sum("faas_invocations_total").await? as u64)
    }

    /// The newest invocations of `hello` (in one status, or any).
    async fn list(&self, status: Option<&str>, limit: usize) -> Result<Vec<Value>, String> {
        list(&self.http, &self.server.url, status, limit).await
    }

    /// Whether `hello` has an invocation in one of `statuses`.
    async fn any_in(&self, statuses: &[&str]) -> Result<bool, String> {
        for s in statuses {
            if !self.list(Some(s), 1).await?.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Polls every [`POLL`] until the trigger has queued `delivered`
    /// events in all, at least `runs` invocations have run, and none is
    /// queued, running or retrying; answers the seconds from `since` to
    /// each. Gives up when `abort` is set (the publisher failed), when
    /// nothing moved for [`STALL`] (messages lost: the run cannot finish),
    /// or after [`DRAIN_BUDGET`].
    async fn watch(
        &self,
        delivered: u64,
        runs: u64,
        since: Instant,
        abort: &AtomicBool,
    ) -> Result<Watched, String> {
        let deadline = Instant::now() + PUBLISH_BUDGET + DRAIN_BUDGET;
        let (mut queued_s, mut ran_s) = (None, None);
        let (mut last, mut moved) = ((0, 0), Instant::now());
        loop {
            let (d, r) = (self.delivered().await?, self.runs().await?);
            if (d, r) != last {
                (last, moved) = ((d, r), Instant::now());
            }
            if queued_s.is_none() && d >= delivered {
                queued_s = Some(since.elapsed().as_secs_f64());
            }
            if ran_s.is_none() && r >= runs {
                ran_s = Some(since.elapsed().as_secs_f64());
            }
            if let (Some(q), Some(ran)) = (queued_s, ran_s)
                && !self.any_in(&["queued", "running", "retrying"]).await?
            {
                return Ok(Watched {
                    queued_s: q,
                    ran_s: ran,
                    final_s: since.elapsed().as_secs_f64(),
                });
            }
            if abort.load(Ordering::Relaxed) {
                return Err(format!(
                    "publishing failed ({d} of {delivered} queued, {r} of {runs} run)"
                ));
            }
            if Instant::now() > deadline || moved.elapsed() > STALL {
                let status = self.status().await.unwrap_or(Value::Null);
                return Err(format!(
                    "not every message was final in time: {d} of {delivered} queued, {r} of {runs} run; trigger status {status}"
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Deletes the trigger, so that its consumer leaves the broker before
    /// the server is stopped.
    async fn delete_trigger(&self) {
        let _ = self
            .http
            .delete(self.server.at(&format!("/v1/triggers/{TRIGGER}")))
            .send()
            .await;
        if self.broker == Broker::Mqtt {
            // The source disconnects within a second.
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
    }
}

/// `GET /v1/functions/hello/invocations`.
async fn list(
    http: &reqwest::Client,
    base: &str,
    status: Option<&str>,
    limit: usize,
) -> Result<Vec<Value>, String> {
    let mut url = format!("{base}/v1/functions/{FUNCTION}/invocations?limit={limit}");
    if let Some(s) = status {
        url.push_str(&format!("&status={s}"));
    }
    let v: Value = http
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("listing: {e}"))?
        .json()
        .await
        .map_err(|e| format!("listing: {e}"))?;
    v["invocations"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("listing: {v}"))
}

/// The message an invocation came from, as [`Published::keys`] names it,
/// from the invocation's idempotency key: JetStream's
/// `nats/<trigger>/<stream hash>/<stream sequence>` and Redis's
/// `redis/<trigger>/<key>/<entry id>` (set by the source), or, for
/// RabbitMQ and MQTT (whose sources set none), the key of an
/// effectively-once function, `<source>\0<id>` of the CloudEvent.
pub fn join_key(idempotency_key: &str) -> &str {
    match idempotency_key.split_once('\0') {
        Some((_, id)) => id,
        None => idempotency_key
            .rsplit_once('/')
            .map_or(idempotency_key, |(_, k)| k),
    }
}

/// CPU microseconds of the processes named `comm` (the broker's).
fn broker_cpu(comm: &str) -> Option<f64> {
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if name.trim_end() == comm
            && let Some(us) = cpu_micros(pid)
        {
            *total.get_or_insert(0.0) += us;
        }
    }
    total
}

/// CPU readings of the server, the harness, the broker and the machine.
struct Cpu {
    server: Option<f64>,
    harness: Option<f64>,
    broker: Option<f64>,
    machine: Option<f64>,
    load: Option<f64>,
}

impl Cpu {
    fn read(b: &Bench) -> Cpu {
        Cpu {
            server: cpu_micros(b.server.pid()),
            harness: cpu_micros(std::process::id()),
            broker: broker_cpu(b.broker.process()),
            machine: machine_cpu_micros(),
            load: load_average(),
        }
    }

    /// CPU per message and cores busy, between `self` and `after`; the
    /// cores the rest of the machine (other work on the shared machine)
    /// kept busy meanwhile, and the load average before.
    fn json(&self, after: &Cpu, messages: u64, seconds: f64) -> Value {
        let busy = |a: Option<f64>, b: Option<f64>| cores_busy(a, b, seconds);
        let machine = busy(self.machine, after.machine);
        let ours = [
            busy(self.server, after.server),
            busy(self.harness, after.harness),
            busy(self.broker, after.broker),
        ];
        let others = machine.map(|m| round((m - ours.iter().flatten().sum::<f64>()).max(0.0), 2));
        json!({
            "machine_cores_busy": machine,
            "other_processes_cores_busy": others,
            "load_average_before": self.load,
            "server_cpu_us_per_message": per_event(self.server, after.server, messages),
            "harness_cpu_us_per_message": per_event(self.harness, after.harness, messages),
            "broker_cpu_us_per_message": per_event(self.broker, after.broker, messages),
            "server_cores_busy": cores_busy(self.server, after.server, seconds),
            "harness_cores_busy": cores_busy(self.harness, after.harness, seconds),
            "broker_cores_busy": cores_busy(self.broker, after.broker, seconds),
        })
    }
}

/// Runs `body` between creating the run's broker resources and removing
/// them, whatever happened.
async fn with_resources<T, F, Fut>(broker: Broker, f: F) -> Result<T, String>
where
    F: FnOnce(Names) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let n = Names::new();
    let cleanup_names = Names { tag: n.tag.clone() };
    if let Err(e) = prepare(broker, &n).await {
        cleanup(broker, &cleanup_names).await;
        return Err(e);
    }
    let res = f(n).await;
    cleanup(broker, &cleanup_names).await;
    res
}

/// Waits until all but [`MQTT_LEAD`] of `sent` messages have run (MQTT
/// only; `base` is the invocations run before the first message).
async fn keep_lead(b: &Bench, sent: u64, base: u64) -> Result<(), String> {
    if b.broker != Broker::Mqtt {
        return Ok(());
    }
    let (mut last, mut moved) = (0, Instant::now());
    loop {
        let ran = b.runs().await?.saturating_sub(base);
        if sent.saturating_sub(ran) <= MQTT_LEAD {
            return Ok(());
        }
        if ran != last {
            (last, moved) = (ran, Instant::now());
        } else if moved.elapsed() > STALL {
            let status = b.status().await.unwrap_or(Value::Null);
            return Err(format!(
                "nothing ran for {} s ({ran} of {sent} sent); trigger status {status}",
                STALL.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Publishes `n` messages as fast as the publisher goes, in groups of
/// [`GROUP`], with at most [`WINDOW`] unconfirmed.
async fn publish_flat_out(
    p: &mut Publisher,
    b: &Bench,
    tag: &str,
    n: u64,
    runs_before: u64,
) -> Result<(Published, f64), String> {
    let mut out = Published::default();
    let started = Instant::now();
    let mut seq = 0;
    while seq < n {
        if started.elapsed() > PUBLISH_BUDGET {
            return Err(format!(
                "publishing took longer than {} s ({seq} of {n} sent)",
                PUBLISH_BUDGET.as_secs()
            ));
        }
        let end = (seq + GROUP as u64).min(n);
        keep_lead(b, end, runs_before).await?;
        if let Err(e) = p.send(tag, seq..end, &mut out).await {
            return Err(p.mqtt_error().await.unwrap_or(e));
        }
        p.settle(WINDOW, &mut out).await?;
        seq = end;
    }
    p.settle(0, &mut out).await?;
    Ok((out, started.elapsed().as_secs_f64()))
}

/// Throughput: `messages` published flat out to a fresh server's trigger,
/// timed until every invocation is final.
async fn throughput(ctx: &Ctx, cache: &TempDir, broker: Broker) -> Result<Value, String> {
    with_resources(broker, |n| async move {
        let mut p = Publisher::connect(broker, &n).await?;
        let res = async {
            let b = Bench::start(ctx, cache, broker, &n, &mut p).await?;
            let count = messages(ctx);
            let (runs0, delivered0) = (b.runs().await?, b.delivered().await?);
            let cpu0 = Cpu::read(&b);
            let abort = AtomicBool::new(false);
            let started = Instant::now();
            let publish = async {
                let r = publish_flat_out(&mut p, &b, &format!("tp{}", n.tag), count, runs0)
                    .await;
                if r.is_err() {
                    abort.store(true, Ordering::Relaxed);
                }
                r
            };
            let (published, watched) = tokio::join!(
                publish,
                b.watch(delivered0 + count, runs0 + count, started, &abort)
            );
            let (published, publish_s) = published?;
            let watched = watched?;
            let cpu1 = Cpu::read(&b);
            let runs = b.runs().await?.saturating_sub(runs0);
            let failed = b.any_in(&["failed", "dead"]).await?;
            let errors = b.metric_sum("faas_errors_total").await?
                + b.metric_sum("faas_timeouts_total").await?;
            let status = b.status().await?;
            b.delete_trigger().await;
            let final_s = watched.final_s;
            let mut v = json!({
                "messages": count,
                "published": published.sent,
                "confirmed": published.confirmed,
                "refused_by_broker": published.refused,
                "publish_seconds": round(publish_s, 3),
                "published_per_second": round(published.sent as f64 / publish_s.max(1e-9), 1),
                "seconds_to_all_queued": round(watched.queued_s, 3),
                "queued_per_second": round(count as f64 / watched.queued_s.max(1e-9), 1),
                "seconds_to_all_run": round(watched.ran_s, 3),
                "seconds_to_all_final": round(final_s, 3),
                "completed_per_second": round(count as f64 / final_s.max(1e-9), 1),
                "runs": runs,
                "any_failed_or_dead": failed,
                "function_errors": errors as u64,
                "trigger_delivered": status["delivered"].as_u64().map(|d| d.saturating_sub(delivered0)),
                "trigger_failed": status["failed"],
                "trigger_last_error": status["last_error"],
            });
            let cpu = cpu0.json(&cpu1, count, final_s);
            for (k, x) in cpu.as_object().into_iter().flatten() {
                v[k] = x.clone();
            }
            progress(format!(
                "triggers {} throughput: {count} messages final in {final_s:.2} s = {:.0}/s (published in {publish_s:.2} s, all queued at {:.2} s)",
                broker.key(),
                v["completed_per_second"],
                watched.queued_s
            ));
            Ok(v)
        }
        .await;
        p.close().await;
        res
    })
    .await
}

/// What the latency run keeps of an invocation.
struct Row {
    key: Option<String>,
    status: String,
    enqueued: Option<DateTime<chrono::FixedOffset>>,
    started: Option<DateTime<chrono::FixedOffset>>,
    finished: Option<DateTime<chrono::FixedOffset>>,
}

impl Row {
    fn of(v: &Value) -> Row {
        let first = &v["attempts"][0];
        Row {
            key: v["idempotency_key"].as_str().map(str::to_string),
            status: v["status"].as_str().unwrap_or_default().to_string(),
            enqueued: ts(&v["enqueued_at"]),
            started: ts(&first["started_at"]),
            finished: ts(&first["finished_at"]),
        }
    }

    fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed" | "dead")
    }
}

/// Milliseconds from `a` to `b`.
fn ms(a: DateTime<Utc>, b: DateTime<chrono::FixedOffset>) -> f64 {
    (b.with_timezone(&Utc) - a).num_nanoseconds().unwrap_or(0) as f64 / 1e6
}

/// Reads the newest [`LIST_LIMIT`] invocations every [`SAMPLE_EVERY`]
/// until `stop`, keeping each by id (the newest reading).
async fn sample_listing(
    http: reqwest::Client,
    base: String,
    stop: Arc<AtomicBool>,
) -> (HashMap<String, Row>, u64) {
    let mut rows = HashMap::new();
    let mut errors = 0;
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        every.tick().await;
        match list(&http, &base, None, LIST_LIMIT).await {
            Ok(list) => {
                for v in list {
                    if let Some(id) = v["id"].as_str() {
                        rows.insert(id.to_string(), Row::of(&v));
                    }
                }
            }
            Err(_) => errors += 1,
        }
    }
    (rows, errors)
}

/// Latency: messages at `rate` per second for the latency duration to a
/// fresh server whose `hello` is effectively once (so that RabbitMQ and
/// MQTT invocations carry the CloudEvent id in their idempotency key), then
/// publish-to-start of every invocation the listing showed.
async fn latency(ctx: &Ctx, cache: &TempDir, broker: Broker, rate: f64) -> Result<Value, String> {
    with_resources(broker, |n| async move {
        let mut p = Publisher::connect(broker, &n).await?;
        let res = async {
            let b = Bench::start(ctx, cache, broker, &n, &mut p).await?;
            let seconds = latency_seconds(ctx);
            let total = (rate * seconds as f64).round().max(1.0) as u64;
            let (runs0, delivered0) = (b.runs().await?, b.delivered().await?);
            let stop = Arc::new(AtomicBool::new(false));
            let sampler = tokio::spawn(sample_listing(
                b.http.clone(),
                b.server.url.clone(),
                stop.clone(),
            ));
            let cpu0 = Cpu::read(&b);
            let tag = format!("lat{}", n.tag);
            let mut out = Published::default();
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let started = Instant::now();
            let mut sent = 0u64;
            let mut failure = None;
            while sent < total && started.elapsed() < PUBLISH_BUDGET {
                tick.tick().await;
                let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(total);
                if due == sent {
                    continue;
                }
                if let Err(e) = keep_lead(&b, due, runs0).await {
                    failure = Some(e);
                    break;
                }
                if let Err(e) = p.send(&tag, sent..due, &mut out).await {
                    failure = Some(p.mqtt_error().await.unwrap_or(e));
                    break;
                }
                sent = due;
                if let Err(e) = p.settle(256, &mut out).await {
                    failure = Some(e);
                    break;
                }
            }
            let publish_s = started.elapsed().as_secs_f64();
            let settled = match failure {
                Some(e) => Err(e),
                None => p.settle(0, &mut out).await,
            };
            let watched = match settled {
                Ok(()) => {
                    b.watch(
                        delivered0 + sent,
                        runs0 + sent,
                        started,
                        &AtomicBool::new(false),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            stop.store(true, Ordering::Relaxed);
            let (mut rows, listing_errors) = sampler.await.map_err(|e| e.to_string())?;
            watched?;
            let cpu1 = Cpu::read(&b);
            // The last reading, then the rows read before they were final.
            for v in b.list(None, LIST_LIMIT).await? {
                if let Some(id) = v["id"].as_str() {
                    rows.insert(id.to_string(), Row::of(&v));
                }
            }
            let unfinished: Vec<String> = rows
                .iter()
                .filter(|(_, r)| !r.is_final())
                .map(|(id, _)| id.clone())
                .collect();
            for id in unfinished {
                let v: Value = b
                    .http
                    .get(b.server.at(&format!("/v1/invocations/{id}")))
                    .send()
                    .await
                    .map_err(|e| format!("invocation {id}: {e}"))?
                    .json()
                    .await
                    .map_err(|e| format!("invocation {id}: {e}"))?;
                rows.insert(id, Row::of(&v));
            }
            let status = b.status().await?;
            b.delete_trigger().await;

            let published: HashMap<&str, DateTime<Utc>> =
                out.keys.iter().map(|(k, t)| (k.as_str(), *t)).collect();
            let (mut to_queue, mut to_start, mut queue_to_start, mut to_finish) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let (mut unmatched, mut not_succeeded) = (0u64, 0u64);
            for r in rows.values() {
                let Some(t) = r.key.as_deref().and_then(|k| published.get(join_key(k))) else {
                    // The warm-up message, or no key to join on.
                    unmatched += 1;
                    continue;
                };
                match (r.status.as_str(), r.enqueued, r.started, r.finished) {
                    ("succeeded", Some(e), Some(s), Some(f)) => {
                        to_queue.push(ms(*t, e));
                        to_start.push(ms(*t, s));
                        queue_to_start.push((s - e).num_nanoseconds().unwrap_or(0) as f64 / 1e6);
                        to_finish.push(ms(*t, f));
                    }
                    _ => not_succeeded += 1,
                }
            }
            let mut v = json!({
                "target_rate": round(rate, 1),
                "seconds": seconds,
                "published": sent,
                "confirmed": out.confirmed,
                "achieved_rate": round(sent as f64 / publish_s.max(1e-9), 1),
                "sampled": to_start.len(),
                "sample_unmatched": unmatched,
                "sample_not_succeeded": not_succeeded,
                "listing_errors": listing_errors,
                "trigger_delivered": status["delivered"].as_u64().map(|d| d.saturating_sub(delivered0)),
                "trigger_failed": status["failed"],
                "trigger_last_error": status["last_error"],
                "publish_to_queued": summary(to_queue),
                "publish_to_start": summary(to_start),
                "queued_to_start": summary(queue_to_start),
                "publish_to_finish": summary(to_finish),
            });
            let cpu = cpu0.json(&cpu1, sent, publish_s);
            for (k, x) in cpu.as_object().into_iter().flatten() {
                v[k] = x.clone();
            }
            progress(format!(
                "triggers {} latency at {rate:.0}/s: publish to start {} ({} of {sent} sampled)",
                broker.key(),
                v["publish_to_start"],
                v["sampled"]
            ));
            Ok(v)
        }
        .await;
        p.close().await;
        res
    })
    .await
}

/// Whether something listens at `addr`.
async fn reachable(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// The installed broker's Debian package version, if any.
fn version(package: &str) -> Option<String> {
    let out = std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", package])
        .output()
        .ok()?;
    let v = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !v.is_empty()).then_some(v)
}

/// One broker: the throughput trials, then latency at half the median.
async fn broker_run(ctx: &Ctx, cache: &TempDir, broker: Broker, trials: usize) -> Value {
    let mut v = json!({
        "label": broker.label(),
        "address": broker.addr(),
        "version": version(broker.package()),
        "publisher": broker.publisher(),
        "source": broker.source(&Names { tag: "<run>".into() }),
    });
    if !reachable(&broker.addr()).await {
        v["error"] = json!(format!("no broker listening at {}", broker.addr()));
        progress(format!("triggers {}: {}", broker.key(), v["error"]));
        return v;
    }
    let tp = median_of(trials, "completed_per_second", || {
        throughput(ctx, cache, broker)
    })
    .await;
    let peak = tp["completed_per_second"].as_f64().unwrap_or(0.0);
    v["latency_at_half_peak"] = if peak > 0.0 {
        latency(ctx, cache, broker, peak / 2.0)
            .await
            .unwrap_or_else(|e| json!({"error": e}))
    } else {
        json!({"error": "no throughput to take half of"})
    };
    v["throughput"] = tp;
    v
}

/// Runs the section.
pub async fn run(ctx: &Ctx) -> Value {
    remove_stale_streams().await;
    let cache = TempDir::new("triggers-cache");
    let trials = if ctx.quick { 1 } else { 3 };
    let mut brokers = serde_json::Map::new();
    for broker in BROKERS {
        progress(format!("triggers: {}", broker.label()));
        brokers.insert(
            broker.key().to_string(),
            broker_run(ctx, &cache, broker, trials).await,
        );
    }
    json!({
        "messages": messages(ctx),
        "latency_seconds": latency_seconds(ctx),
        "trials": trials,
        "function": FUNCTION,
        "publish_window": WINDOW,
        "mqtt_lead": MQTT_LEAD,
        "latency_listing_every_ms": SAMPLE_EVERY.as_millis() as u64,
        "brokers": brokers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_keys() {
        assert_eq!(join_key("nats/bench/0a1b2c/42"), "42");
        assert_eq!(
            join_key("redis/bench/wisp-bench:1-0/1700000000000-3"),
            "1700000000000-3"
        );
        assert_eq!(join_key("/wisp-bench/triggers\0lat1-0-7"), "lat1-0-7");
    }

    #[test]
    fn names_fit_the_brokers() {
        let n = Names {
            tag: "4194304-99".into(),
        };
        assert!(n.client_id().len() <= 23);
        assert!(!n.name().contains(['.', '*', '>', ' ']));
    }
}
