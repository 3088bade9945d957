//! The Redis source against a real server: pub/sub channels and patterns,
//! streams read through a consumer group and acknowledged only after the
//! events are queued, ordered stream mode, and recovery when the server
//! goes away. Uses the shared server ([`brokers::redis_url`]) with unique
//! keys, and private servers ([`brokers::redis_server_bin`]) on free ports
//! for the fault tests.

mod common;

use common::{FakeCursors, FakeSink, Running, free_port, start, start_with, unique};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wisp_core::Target;
use wisp_events::{AttributesReader, Data, Event};
use wisp_testkit::brokers;
use wisp_triggers::spec::redact_url;
use wisp_triggers::{
    BatchOutcome, Delivery, EventSink, Health, SinkError, SourceContext, State, Status, Trigger,
    TriggerSpec,
};

const WAIT: Duration = Duration::from_secs(15);

async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis at {}: {e}", redact_url(url)))
}

fn data_bytes(e: &Event) -> Vec<u8> {
    match e.data() {
        Some(Data::Binary(b)) => b.clone(),
        Some(Data::String(s)) => s.clone().into_bytes(),
        Some(Data::Json(v)) => serde_json::to_vec(v).unwrap(),
        None => Vec::new(),
    }
}

fn ext(e: &Event, name: &str) -> Option<String> {
    e.extension(name).map(|v| v.to_string())
}

/// Entries pending in `group` of `key`.
async fn pending(con: &mut MultiplexedConnection, key: &str, group: &str) -> usize {
    let reply: redis::streams::StreamPendingReply = con.xpending(key, group).await.unwrap();
    reply.count()
}

/// Waits until `group` of `key` has `n` pending entries (or `timeout`);
/// returns the last count seen.
async fn wait_pending(
    con: &mut MultiplexedConnection,
    key: &str,
    group: &str,
    n: usize,
    timeout: Duration,
) -> usize {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let count = pending(con, key, group).await;
        if count == n || tokio::time::Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the trigger's status satisfies `ok` (or `timeout`);
/// returns the last status seen.
async fn wait_status(run: &Running, timeout: Duration, ok: impl Fn(&Status) -> bool) -> Status {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let status = run.health().snapshot();
        if ok(&status) || tokio::time::Instant::now() > deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn redis_source(source: serde_json::Value) -> serde_json::Value {
    let mut source = source;
    source["kind"] = "redis".into();
    serde_json::json!({"target": "f", "source": source})
}

#[tokio::test]
async fn pubsub_channels_and_patterns_deliver_matching_messages() {
    let (a, b, other) = (unique("wisp-a"), unique("wisp-b"), unique("wisp-other"));
    let prefix = unique("wisp-p");
    let pattern = format!("{prefix}.*");
    let channels = start(
        "redis-channels",
        redis_source(serde_json::json!({"url": brokers::redis_url(), "channels": [a, b]})),
    );
    let patterns = start(
        "redis-patterns",
        redis_source(
            serde_json::json!({"url": brokers::redis_url(), "channels": [pattern], "pattern": true}),
        ),
    );
    assert!(
        channels.wait_active(WAIT).await,
        "{:?}",
        channels.health().snapshot()
    );
    assert!(
        patterns.wait_active(WAIT).await,
        "{:?}",
        patterns.health().snapshot()
    );

    let mut con = connect(brokers::redis_url()).await;
    let mut publish = async |channel: &str, payload: &str| -> i64 {
        con.publish(channel, payload).await.unwrap()
    };
    // PUBLISH answers how many subscribers received the message.
    assert_eq!(publish(&a, "1").await, 1);
    assert_eq!(publish(&other, "not for us").await, 0);
    assert_eq!(publish(&b, "2").await, 1);
    assert_eq!(publish(&format!("{prefix}.eu"), r#"{"n":3}"#).await, 1);
    assert_eq!(publish(&format!("{prefix}x"), "no dot, no match").await, 0);
    assert_eq!(publish(&format!("{prefix}.us"), "4").await, 1);
    // Markers last: one connection keeps the order, so nothing else comes
    // after them.
    assert_eq!(publish(&a, "end").await, 1);
    assert_eq!(publish(&format!("{prefix}.end"), "end").await, 1);

    let got = channels.sink.wait_for(3, WAIT).await;
    let pat = patterns.sink.wait_for(3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(channels.sink.count(), 3);
    assert_eq!(patterns.sink.count(), 3);

    let seen: Vec<(String, Vec<u8>)> = got
        .iter()
        .map(|e| (e.subject().unwrap().to_string(), data_bytes(e)))
        .collect();
    assert_eq!(
        seen,
        vec![
            (a.clone(), b"1".to_vec()),
            (b.clone(), b"2".to_vec()),
            (a.clone(), b"end".to_vec())
        ]
    );
    for e in &got {
        assert_eq!(e.ty(), "wisp.redis.message");
        assert_eq!(e.source().to_string(), redact_url(brokers::redis_url()));
        assert_eq!(e.datacontenttype(), Some("application/octet-stream"));
        assert_eq!(ext(e, "redispattern"), None);
        assert_eq!(e.id().len(), 32, "a generated id");
    }
    let subjects: Vec<String> = pat
        .iter()
        .map(|e| e.subject().unwrap().to_string())
        .collect();
    assert_eq!(
        subjects,
        vec![
            format!("{prefix}.eu"),
            format!("{prefix}.us"),
            format!("{prefix}.end")
        ]
    );
    assert_eq!(data_bytes(&pat[0]), br#"{"n":3}"#);
    for e in &pat {
        assert_eq!(ext(e, "redispattern").as_deref(), Some(pattern.as_str()));
    }
    assert_eq!(channels.health().snapshot().delivered, 3);
    channels.stop().await;
    patterns.stop().await;
}

/// A queue that takes a while the first time, so that messages pile up.
#[derive(Default)]
struct SlowSink {
    delivered: AtomicU64,
    slept: AtomicBool,
}

#[async_trait::async_trait]
impl EventSink for SlowSink {
    async fn enqueue(&self, _: &Target, deliveries: Vec<Delivery>) -> Result<(), SinkError> {
        if !self.slept.swap(true, Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.delivered
            .fetch_add(deliveries.len() as u64, Ordering::SeqCst);
        Ok(())
    }
    async fn run_batch(
        &self,
        _: &Target,
        _: &str,
        _: Vec<Event>,
    ) -> Result<BatchOutcome, SinkError> {
        Ok(BatchOutcome::Succeeded)
    }
    async fn forget_dead_letter(&self, _: &str) -> Result<(), SinkError> {
        Ok(())
    }
}

#[tokio::test]
async fn pubsub_drops_and_counts_what_overflows_its_buffer() {
    let channel = unique("wisp-flood");
    let spec: TriggerSpec = serde_json::from_value(redis_source(
        serde_json::json!({"url": brokers::redis_url(), "channels": [channel]}),
    ))
    .unwrap();
    let target = spec.validate().unwrap();
    let now = chrono::Utc::now();
    let trigger = Trigger {
        name: "redis-flood".into(),
        spec,
        created_at: now,
        updated_at: now,
    };
    let source = wisp_triggers::sources::build(&trigger.spec.source, &trigger.name).unwrap();
    let sink = Arc::new(SlowSink::default());
    let ctx = SourceContext {
        trigger: Arc::new(trigger),
        target,
        health: Arc::new(Health::default()),
        sink: sink.clone(),
        cursors: Arc::new(FakeCursors::default()),
        cancel: CancellationToken::new(),
    };
    let task = tokio::spawn(wisp_triggers::source::run(source, ctx.clone()));
    let deadline = tokio::time::Instant::now() + WAIT;
    while ctx.health.state() != State::Active {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            ctx.health.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Far more than the buffer, while the queue is busy with the first.
    const N: u64 = 3000;
    let mut con = connect(brokers::redis_url()).await;
    let mut pipe = redis::pipe();
    for i in 0..N {
        pipe.publish(&channel, i).ignore();
    }
    let () = pipe.query_async(&mut con).await.unwrap();

    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        let status = ctx.health.snapshot();
        if status.delivered + status.failed >= N || tokio::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Every message is accounted for: queued, or dropped and counted.
    assert_eq!(status.delivered + status.failed, N, "{status:?}");
    assert_eq!(sink.delivered.load(Ordering::SeqCst), status.delivered);
    assert!(status.failed > 0, "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("dropped")),
        "{status:?}"
    );
    assert_eq!(status.state, State::Active, "still subscribed");
    ctx.cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

#[tokio::test]
async fn stream_entries_are_delivered_then_acknowledged() {
    let key = unique("wisp-stream");
    let mut con = connect(brokers::redis_url()).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        let id: String = if i % 2 == 0 {
            let data = serde_json::json!({ "i": i }).to_string();
            con.xadd(
                &key,
                "*",
                &[
                    ("content-type", "application/json"),
                    ("data", data.as_str()),
                    ("tenant", "acme"),
                ],
            )
            .await
            .unwrap()
        } else {
            let n = i.to_string();
            con.xadd(&key, "*", &[("i", n.as_str()), ("kind", "plain")])
                .await
                .unwrap()
        };
        ids.push(id);
    }
    let run = start(
        "redis-stream",
        redis_source(
            serde_json::json!({"url": brokers::redis_url(), "stream": {"key": key, "start": "0"}}),
        ),
    );
    let events = run.sink.wait_for(50, WAIT).await;
    assert_eq!(events.len(), 50, "{:?}", run.health().snapshot());
    let group = "wisp-redis-stream";
    assert_eq!(wait_pending(&mut con, &key, group, 0, WAIT).await, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(run.sink.count(), 50, "each entry once");

    let seen: Vec<String> = events.iter().map(|e| ext(e, "redisid").unwrap()).collect();
    assert_eq!(seen, ids, "in stream order");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.ty(), "wisp.redis.stream.entry");
        assert_eq!(e.source().to_string(), redact_url(brokers::redis_url()));
        assert_eq!(e.subject(), Some(key.as_str()));
        assert_eq!(e.id(), format!("{key}/{}", ids[i]));
        assert_eq!(ext(e, "redisstream").as_deref(), Some(key.as_str()));
        assert_eq!(ext(e, "deliverycount").as_deref(), Some("1"));
        assert_eq!(e.datacontenttype(), Some("application/json"));
        let data: serde_json::Value = serde_json::from_slice(&data_bytes(e)).unwrap();
        if i % 2 == 0 {
            // `data` is the data; other fields are headers.
            assert_eq!(data, serde_json::json!({ "i": i }));
            let headers: serde_json::Value =
                serde_json::from_str(&ext(e, "headers").unwrap()).unwrap();
            assert_eq!(headers, serde_json::json!({"tenant": "acme"}));
        } else {
            // No `data`: the fields are the data.
            assert_eq!(
                data,
                serde_json::json!({"i": i.to_string(), "kind": "plain"})
            );
            assert_eq!(ext(e, "headers"), None);
        }
    }
    let keys: Vec<Option<String>> = run
        .sink
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.idempotency_key.clone())
        .collect();
    assert_eq!(
        keys[0].as_deref(),
        Some(format!("redis/redis-stream/{key}/{}", ids[0]).as_str())
    );
    assert_eq!(run.health().snapshot().delivered, 50);
    run.stop().await;
    let _: () = con.del(&key).await.unwrap();
}

#[tokio::test]
async fn stream_entries_stay_pending_until_the_queue_takes_them() {
    let key = unique("wisp-stream-refused");
    let group = "wisp-redis-refused";
    let mut con = connect(brokers::redis_url()).await;
    for i in 0..5 {
        let _: String = con
            .xadd(&key, "*", &[("data", i.to_string())])
            .await
            .unwrap();
    }
    let sink = Arc::new(FakeSink::default());
    sink.refuse.store(true, Ordering::SeqCst);
    let run = start_with(
        "redis-refused",
        redis_source(
            serde_json::json!({"url": brokers::redis_url(), "stream": {"key": key, "start": "0"}}),
        ),
        sink.clone(),
        Arc::new(FakeCursors::default()),
    );
    let status = wait_status(&run, WAIT, |s| s.failed >= 5).await;
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("refused by the test")),
        "{status:?}"
    );
    assert_eq!(sink.count(), 0);
    // Read by the group but not acknowledged.
    assert_eq!(pending(&mut con, &key, group).await, 5);

    sink.refuse.store(false, Ordering::SeqCst);
    let events = sink.wait_for(5, Duration::from_secs(30)).await;
    assert_eq!(events.len(), 5, "{:?}", run.health().snapshot());
    assert_eq!(wait_pending(&mut con, &key, group, 0, WAIT).await, 0);
    let data: Vec<Vec<u8>> = events.iter().map(data_bytes).collect();
    assert_eq!(
        data,
        (0..5)
            .map(|i| i.to_string().into_bytes())
            .collect::<Vec<_>>()
    );
    for e in &events {
        // Read again from the pending list: delivered before.
        let count: u32 = ext(e, "deliverycount").unwrap().parse().unwrap();
        assert!(count >= 2, "deliverycount {count}");
    }
    assert!(run.wait_active(WAIT).await);
    run.stop().await;
    let _: () = con.del(&key).await.unwrap();
}

#[tokio::test]
async fn entries_pending_on_a_dead_consumer_are_claimed() {
    let key = unique("wisp-stream-claim");
    let group = "wisp-redis-claim";
    let mut con = connect(brokers::redis_url()).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let id: String = con
            .xadd(&key, "*", &[("data", i.to_string())])
            .await
            .unwrap();
        ids.push(id);
    }
    let () = redis::cmd("XGROUP")
        .arg(&["CREATE", &key, group, "0"])
        .query_async(&mut con)
        .await
        .unwrap();
    // Consumer `dead` reads the first two entries and never acknowledges
    // them; XCLAIM's IDLE makes them look two minutes old.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", group, "dead", "COUNT", "2", "STREAMS", &key, ">"])
        .query_async(&mut con)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(&[&key, group, "dead", "0", &ids[0], &ids[1], "IDLE", "120000"])
        .query_async(&mut con)
        .await
        .unwrap();
    // Consumer `busy` has the third one, recently: it is not claimed.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", group, "busy", "COUNT", "1", "STREAMS", &key, ">"])
        .query_async(&mut con)
        .await
        .unwrap();
    let run = start(
        "redis-claim",
        redis_source(
            serde_json::json!({"url": brokers::redis_url(), "stream": {"key": key, "group": group}}),
        ),
    );
    let events = run.sink.wait_for(2, WAIT).await;
    assert_eq!(wait_pending(&mut con, &key, group, 1, WAIT).await, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(run.sink.count(), 2);
    let seen: Vec<String> = events.iter().map(|e| ext(e, "redisid").unwrap()).collect();
    assert_eq!(seen, ids[..2]);
    for e in &events {
        let count: u32 = ext(e, "deliverycount").unwrap().parse().unwrap();
        assert!(count >= 2, "deliverycount {count}");
    }
    let still: redis::streams::StreamPendingCountReply =
        con.xpending_count(&key, group, "-", "+", 10).await.unwrap();
    assert_eq!(still.ids.len(), 1);
    assert_eq!(
        (still.ids[0].id.as_str(), still.ids[0].consumer.as_str()),
        (ids[2].as_str(), "busy")
    );
    run.stop().await;
    let _: () = con.del(&key).await.unwrap();
}

/// Appends `n` binary-mode CloudEvents with ids `<prefix>-<i>`.
async fn add_cloudevents(con: &mut MultiplexedConnection, key: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let data = i.to_string();
        let _: String = con
            .xadd(
                key,
                "*",
                &[
                    ("ce-specversion", "1.0"),
                    ("ce-id", id.as_str()),
                    ("ce-source", "/tests/redis"),
                    ("ce-type", "test.counted"),
                    ("data", data.as_str()),
                ],
            )
            .await
            .unwrap();
    }
}

fn ordered_spec(key: &str) -> serde_json::Value {
    redis_source(serde_json::json!({
        "url": brokers::redis_url(),
        "stream": {"key": key, "start": "0", "ordered": {"max_events": 10}}
    }))
}

#[tokio::test]
async fn ordered_mode_runs_batches_in_stream_order() {
    let key = unique("wisp-ordered");
    let mut con = connect(brokers::redis_url()).await;
    add_cloudevents(&mut con, &key, "ev", 30).await;
    let run = start("redis-ordered", ordered_spec(&key));
    let events = run.sink.wait_for(30, WAIT).await;
    assert_eq!(events.len(), 30, "{:?}", run.health().snapshot());
    assert_eq!(
        wait_pending(&mut con, &key, "wisp-redis-ordered", 0, WAIT).await,
        0
    );
    let batches = run.sink.batches.lock().unwrap().clone();
    assert!(
        batches.iter().all(|b| !b.is_empty() && b.len() <= 10),
        "{batches:?}"
    );
    let ids: Vec<String> = batches
        .iter()
        .flatten()
        .map(|e| e.id().to_string())
        .collect();
    let expected: Vec<String> = (0..30).map(|i| format!("ev-{i}")).collect();
    assert_eq!(ids, expected);
    // Taken as CloudEvents, with the stream's metadata.
    assert_eq!(events[0].ty(), "test.counted");
    assert_eq!(
        ext(&events[0], "redisstream").as_deref(),
        Some(key.as_str())
    );
    run.stop().await;
    let _: () = con.del(&key).await.unwrap();
}

#[tokio::test]
async fn ordered_mode_bisects_around_a_poisoned_entry() {
    let key = unique("wisp-ordered-poison");
    let mut con = connect(brokers::redis_url()).await;
    add_cloudevents(&mut con, &key, "ev", 30).await;
    let sink = Arc::new(FakeSink::default());
    *sink.poison_id.lock().unwrap() = Some("ev-13".into());
    let run = start_with(
        "redis-poison",
        ordered_spec(&key),
        sink.clone(),
        Arc::new(FakeCursors::default()),
    );
    let events = sink.wait_for(29, WAIT).await;
    assert_eq!(events.len(), 29, "{:?}", run.health().snapshot());
    assert_eq!(
        wait_pending(&mut con, &key, "wisp-redis-poison", 0, WAIT).await,
        0
    );
    let ids: Vec<String> = events.iter().map(|e| e.id().to_string()).collect();
    let expected: Vec<String> = (0..30)
        .filter(|i| *i != 13)
        .map(|i| format!("ev-{i}"))
        .collect();
    assert_eq!(ids, expected, "every other event, in order");
    assert!(!sink.forgotten.lock().unwrap().is_empty());
    let status = run.health().snapshot();
    assert!(status.failed >= 1, "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("poisoned"))
    );
    run.stop().await;
    let _: () = con.del(&key).await.unwrap();
}

#[tokio::test]
async fn an_invalid_cloudevent_entry_is_acknowledged_and_counted() {
    let key = unique("wisp-stream-invalid");
    let mut con = connect(brokers::redis_url()).await;
    let _: String = con.xadd(&key, "*", &[("data", "first")]).await.unwrap();
    // Claims to be a CloudEvent, lacks id, source and type.
    let bad: String = con
        .xadd(&key, "*", &[("ce-specversion", "1.0"), ("data", "x")])
        .await
        .unwrap();
    let _: String = con.xadd(&key, "*", &[("data", "last")]).await.unwrap();
    let run = start(
        "redis-invalid",
        redis_source(
            serde_json::json!({"url": brokers::redis_url(), "stream": {"key": key, "start": "0"}}),
        ),
    );
    let events = run.sink.wait_for(2, WAIT).await;
    let data: Vec<Vec<u8>> = events.iter().map(data_bytes).collect();
    assert_eq!(data, vec![b"first".to_vec(), b"last".to_vec()]);
    assert_eq!(
        wait_pending(&mut con, &key, "wisp-redis-invalid", 0, WAIT).await,
        0
    );
    let status = run.health().snapshot();
    assert_eq!((status.delivered, status.failed), (2, 1), "{status:?}");
    let error = status.last_error.unwrap_or_default();
    assert!(
        error.contains(&bad) && error.contains("not a valid CloudEvent"),
        "{error}"
    );
    assert_eq!(status.state, State::Active);
    run.stop().await;
    let _: () = con.del(&key).await.unwrap();
}

/// A Redis server of this test's own on a free port, killed on drop.
struct PrivateRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    fn new() -> Self {
        PrivateRedis {
            port: free_port(),
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (or restarts) the server and waits until it answers.
    async fn start(&mut self) {
        let child = std::process::Command::new(brokers::redis_server_bin())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", brokers::redis_server_bin().display()));
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ping = async {
                let mut con = redis::Client::open(self.url())
                    .ok()?
                    .get_multiplexed_async_connection()
                    .await
                    .ok()?;
                redis::cmd("PING")
                    .query_async::<String>(&mut con)
                    .await
                    .ok()
            };
            if ping.await.is_some() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server on port {} did not start",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn pubsub_recovers_when_the_server_restarts() {
    let mut server = PrivateRedis::new();
    server.start().await;
    let channel = unique("wisp-restart");
    let run = start(
        "redis-restart",
        redis_source(serde_json::json!({"url": server.url(), "channels": [channel]})),
    );
    assert!(run.wait_active(WAIT).await, "{:?}", run.health().snapshot());
    let mut con = connect(&server.url()).await;
    let received: i64 = con.publish(&channel, "before").await.unwrap();
    assert_eq!(received, 1);
    run.sink.wait_for(1, WAIT).await;

    server.kill();
    let status = wait_status(&run, Duration::from_secs(5), |s| {
        s.state == State::Degraded && s.last_error.is_some()
    })
    .await;
    assert_eq!(status.state, State::Degraded, "{status:?}");

    server.start().await;
    assert!(
        run.wait_active(Duration::from_secs(30)).await,
        "{:?}",
        run.health().snapshot()
    );
    let mut con = connect(&server.url()).await;
    let received: i64 = con.publish(&channel, "after").await.unwrap();
    assert_eq!(received, 1, "subscribed again");
    let events = run.sink.wait_for(2, WAIT).await;
    let data: Vec<Vec<u8>> = events.iter().map(data_bytes).collect();
    assert_eq!(data, vec![b"before".to_vec(), b"after".to_vec()]);
    run.stop().await;
}

#[tokio::test]
async fn a_stream_trigger_waits_for_its_server_and_survives_restarts() {
    let mut server = PrivateRedis::new();
    let key = unique("wisp-down");
    let run = start(
        "redis-down",
        redis_source(serde_json::json!({"url": server.url(), "stream": {"key": key}})),
    );
    // Started while the server is down.
    let status = wait_status(&run, WAIT, |s| s.state == State::Degraded).await;
    assert_eq!(status.state, State::Degraded, "{status:?}");
    let error = status.last_error.unwrap_or_default();
    assert!(error.contains("cannot connect"), "{error}");

    server.start().await;
    assert!(
        run.wait_active(Duration::from_secs(30)).await,
        "{:?}",
        run.health().snapshot()
    );
    let mut con = connect(&server.url()).await;
    let _: String = con.xadd(&key, "*", &[("data", "one")]).await.unwrap();
    assert_eq!(run.sink.wait_for(1, WAIT).await.len(), 1);

    // The server goes away and comes back empty: the group is created again.
    server.kill();
    let status = wait_status(&run, Duration::from_secs(5), |s| s.state == State::Degraded).await;
    assert_eq!(status.state, State::Degraded, "{status:?}");
    assert!(status.last_error.is_some());
    server.start().await;
    assert!(
        run.wait_active(Duration::from_secs(30)).await,
        "{:?}",
        run.health().snapshot()
    );
    let mut con = connect(&server.url()).await;
    let _: String = con.xadd(&key, "*", &[("data", "two")]).await.unwrap();
    let events = run.sink.wait_for(2, WAIT).await;
    let data: Vec<Vec<u8>> = events.iter().map(data_bytes).collect();
    assert_eq!(data, vec![b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(
        wait_pending(&mut con, &key, "wisp-redis-down", 0, WAIT).await,
        0
    );
    run.stop().await;
}
