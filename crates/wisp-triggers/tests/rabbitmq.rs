//! The RabbitMQ source against a real broker (the shared one at
//! [`brokers::amqp_url`]): messages become events and are acknowledged
//! only once queued, bindings route, CloudEvents pass through, refused
//! messages are requeued or dead-lettered, poison is rejected, and lost
//! consumers and unreachable brokers are reported and recovered from.
//!
//! Every queue is unique to the test and deleted at its end; every wait is
//! bounded.

mod common;

use async_trait::async_trait;
use common::{FakeSink, Running, start, start_with, unique};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wisp_core::Target;
use wisp_events::{AttributesReader, Data, Event};
use wisp_testkit::{brokers, wait_until};
use wisp_triggers::spec::redact_url;
use wisp_triggers::{
    BatchOutcome, Delivery, EventSink, Health, SinkError, SourceContext, State, Trigger,
    TriggerSpec,
};

/// Longest wait for anything the broker or the source does.
const WAIT: Duration = Duration::from_secs(20);

/// Runs one AMQP operation, failing the test if it errs or hangs.
async fn amqp<T>(what: &str, f: impl Future<Output = lapin::Result<T>>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: no answer within {WAIT:?}"),
    }
}

/// The test's own connection to the broker, to publish and inspect.
struct Broker {
    connection: Connection,
    channel: Channel,
}

impl Broker {
    async fn connect() -> Broker {
        let connection = amqp(
            &format!("connect to RabbitMQ at {}", redact_url(brokers::amqp_url())),
            Connection::connect(brokers::amqp_url(), ConnectionProperties::default()),
        )
        .await;
        let channel = amqp("open a channel", connection.create_channel()).await;
        amqp(
            "confirm.select",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await;
        Broker {
            connection,
            channel,
        }
    }

    /// Declares a durable queue with `arguments`.
    async fn declare(&self, queue: &str, arguments: FieldTable) {
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        amqp(
            "queue.declare",
            self.channel.queue_declare(queue.into(), options, arguments),
        )
        .await;
    }

    /// Publishes and waits for the broker's confirmation.
    async fn publish(&self, exchange: &str, key: &str, body: &[u8], properties: BasicProperties) {
        let confirm = amqp(
            "basic.publish",
            self.channel.basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            ),
        )
        .await;
        let confirmation = amqp("publisher confirm", confirm).await;
        assert!(confirmation.is_ack(), "the broker refused a message");
    }

    /// `(ready messages, consumers)` of `queue`, or `None` if it does not
    /// exist. Uses a channel of its own, as a failed passive declare closes it.
    async fn stats(&self, queue: &str) -> Option<(u32, u32)> {
        let channel = amqp("open a channel", self.connection.create_channel()).await;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = tokio::time::timeout(
            WAIT,
            channel.queue_declare(queue.into(), options, FieldTable::default()),
        )
        .await
        .expect("passive queue.declare hung");
        let _ = channel.close(200, "OK".into()).await;
        declared
            .ok()
            .map(|q| (q.message_count(), q.consumer_count()))
    }

    /// Waits until `queue` has no consumer (the source stopped and its
    /// unacknowledged messages, if any, are back) and returns its ready
    /// messages.
    async fn ready_after_stop(&self, queue: &str) -> u32 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (ready, consumers) = self.stats(queue).await.expect("the queue exists");
            if consumers == 0 {
                return ready;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the source's consumer is still on `{queue}`"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn delete(&self, queue: &str) {
        amqp(
            "queue.delete",
            self.channel
                .queue_delete(queue.into(), QueueDeleteOptions::default()),
        )
        .await;
    }

    async fn close(self) {
        let _ = tokio::time::timeout(WAIT, self.connection.close(200, "OK".into())).await;
    }
}

fn long(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in entries {
        table.insert(ShortString::from(*k), v.clone());
    }
    table
}

fn json_properties() -> BasicProperties {
    BasicProperties::default().with_content_type("application/json".into())
}

fn trigger(queue: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut source =
        serde_json::json!({"kind": "rabbitmq", "url": brokers::amqp_url(), "queue": queue});
    if let (Some(source), Some(extra)) = (source.as_object_mut(), extra.as_object()) {
        source.extend(extra.clone());
    }
    serde_json::json!({"target": "f", "source": source})
}

fn ext(event: &Event, name: &str) -> Option<String> {
    event.extension(name).map(|v| v.to_string())
}

fn json_data(event: &Event) -> serde_json::Value {
    match event.data() {
        Some(Data::Json(v)) => v.clone(),
        other => panic!("expected JSON data, got {other:?}"),
    }
}

async fn active(run: &Running) {
    assert!(
        run.wait_active(WAIT).await,
        "the source did not become active: {:?}",
        run.health().snapshot()
    );
}

#[tokio::test]
async fn messages_become_events_and_are_acked_once_queued() {
    let broker = Broker::connect().await;
    let queue = unique("wisp-rmq-basic");
    // Declared as the source declares it, and filled before it starts, so
    // that the source takes the backlog in groups.
    broker.declare(&queue, FieldTable::default()).await;
    for n in 0..20 {
        let mut properties = json_properties().with_headers(table(&[
            ("x-tenant", long("acme")),
            ("x-n", AMQPValue::LongInt(n)),
        ]));
        if n % 2 == 0 {
            properties = properties.with_message_id(format!("m-{n}").into());
        }
        let body = serde_json::json!({ "n": n }).to_string();
        broker
            .publish("", &queue, body.as_bytes(), properties)
            .await;
    }

    let run = start(
        "rmq-basic",
        trigger(&queue, serde_json::json!({"prefetch": 8})),
    );
    let events = run.sink.wait_for(20, WAIT).await;
    let status = run.health().snapshot();
    let sink = run.stop().await;
    assert_eq!(events.len(), 20, "{status:?}");
    for (n, e) in events.iter().enumerate() {
        assert_eq!(e.ty(), "wisp.rabbitmq.message");
        assert_eq!(
            e.source().to_string(),
            format!("{}/{queue}", redact_url(brokers::amqp_url()))
        );
        assert_eq!(e.subject(), Some(queue.as_str()), "routing key");
        if n % 2 == 0 {
            assert_eq!(e.id(), format!("m-{n}"));
        } else {
            assert_eq!(e.id().len(), 32, "a generated id: {}", e.id());
        }
        assert_eq!(e.datacontenttype(), Some("application/json"));
        // In publish order: one consumer, groups dispatched in order.
        assert_eq!(json_data(e), serde_json::json!({ "n": n }));
        let headers: serde_json::Value =
            serde_json::from_str(&ext(e, "headers").expect("headers")).unwrap();
        assert_eq!(
            headers,
            serde_json::json!({"x-tenant": "acme", "x-n": n.to_string()})
        );
        assert_eq!(ext(e, "rabbitmqexchange").as_deref(), Some(""));
        assert_eq!(ext(e, "redelivered").as_deref(), Some("false"));
        assert_eq!(ext(e, "deliverycount").as_deref(), Some("1"));
    }
    assert_eq!(sink.count(), 20, "each message once");
    assert_eq!((status.delivered, status.failed), (20, 0));
    assert_eq!(status.state, State::Active);
    // Every message was acknowledged: none is back in the queue once the
    // consumer is gone (unacknowledged ones would be requeued).
    assert_eq!(broker.ready_after_stop(&queue).await, 0);
    broker.delete(&queue).await;
    broker.close().await;
}

#[tokio::test]
async fn a_binding_delivers_matching_routing_keys_only() {
    let broker = Broker::connect().await;
    let queue = unique("wisp-rmq-bind");
    let run = start(
        "rmq-bind",
        trigger(
            &queue,
            serde_json::json!({"bind": {"exchange": "amq.topic", "routing_key": "orders.*"}}),
        ),
    );
    // Active means declared, bound and consuming.
    active(&run).await;
    broker
        .publish("amq.topic", "billing.eu", b"{}", json_properties())
        .await;
    broker
        .publish("amq.topic", "orders.eu", br#"{"o":1}"#, json_properties())
        .await;
    let events = run.sink.wait_for(1, WAIT).await;
    // The queue is FIFO: had `billing.eu` been routed, it would be first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events_later = run.sink.events();
    run.stop().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events_later.len(), 1, "billing.eu must not be delivered");
    let e = &events_later[0];
    assert_eq!(e.subject(), Some("orders.eu"));
    assert_eq!(ext(e, "rabbitmqexchange").as_deref(), Some("amq.topic"));
    assert_eq!(json_data(e), serde_json::json!({"o": 1}));
    broker.delete(&queue).await;
    broker.close().await;
}

#[tokio::test]
async fn cloudevents_in_binary_and_structured_mode_are_kept_as_they_are() {
    let broker = Broker::connect().await;
    let queue = unique("wisp-rmq-ce");
    broker.declare(&queue, FieldTable::default()).await;
    // Binary mode, HTTP-style `ce-` headers.
    let binary = json_properties().with_headers(table(&[
        ("ce-specversion", long("1.0")),
        ("ce-id", long("ce-1")),
        ("ce-source", long("/shop")),
        ("ce-type", long("order.created")),
        ("ce-region", long("eu")),
        ("x-tenant", long("acme")),
    ]));
    broker.publish("", &queue, br#"{"order":1}"#, binary).await;
    // Binary mode, the AMQP binding's `cloudEvents:` prefix.
    let amqp_binding = json_properties().with_headers(table(&[
        ("cloudEvents:specversion", long("1.0")),
        ("cloudEvents:id", long("ce-2")),
        ("cloudEvents:source", long("/shop")),
        ("cloudEvents:type", long("order.paid")),
    ]));
    broker
        .publish("", &queue, br#"{"order":2}"#, amqp_binding)
        .await;
    // Structured mode.
    let structured = serde_json::json!({
        "specversion": "1.0", "id": "ce-3", "source": "/shop", "type": "order.shipped",
        "tier": "gold", "datacontenttype": "application/json", "data": {"order": 3}
    });
    broker
        .publish(
            "",
            &queue,
            structured.to_string().as_bytes(),
            BasicProperties::default().with_content_type("application/cloudevents+json".into()),
        )
        .await;

    let run = start("rmq-ce", trigger(&queue, serde_json::json!({})));
    let events = run.sink.wait_for(3, WAIT).await;
    run.stop().await;
    assert_eq!(events.len(), 3);
    let (a, b, c) = (&events[0], &events[1], &events[2]);
    assert_eq!((a.id(), a.ty()), ("ce-1", "order.created"));
    assert_eq!(a.source().to_string(), "/shop");
    assert_eq!(ext(a, "region").as_deref(), Some("eu"));
    assert_eq!(a.datacontenttype(), Some("application/json"));
    assert_eq!(json_data(a), serde_json::json!({"order": 1}));
    let headers: serde_json::Value = serde_json::from_str(&ext(a, "headers").unwrap()).unwrap();
    assert_eq!(headers, serde_json::json!({"x-tenant": "acme"}));
    assert_eq!(ext(a, "deliverycount").as_deref(), Some("1"));
    assert_eq!((b.id(), b.ty()), ("ce-2", "order.paid"));
    assert_eq!(json_data(b), serde_json::json!({"order": 2}));
    assert_eq!((c.id(), c.ty()), ("ce-3", "order.shipped"));
    assert_eq!(ext(c, "tier").as_deref(), Some("gold"));
    assert_eq!(json_data(c), serde_json::json!({"order": 3}));
    assert_eq!(broker.ready_after_stop(&queue).await, 0);
    broker.delete(&queue).await;
    broker.close().await;
}

#[tokio::test]
async fn an_invalid_cloudevent_is_rejected_as_poison_and_the_rest_flows() {
    let broker = Broker::connect().await;
    let queue = unique("wisp-rmq-poison");
    let dlq = unique("wisp-rmq-poison-dlq");
    broker.declare(&dlq, FieldTable::default()).await;
    broker
        .declare(
            &queue,
            table(&[
                ("x-dead-letter-exchange", long("")),
                ("x-dead-letter-routing-key", long(&dlq)),
            ]),
        )
        .await;
    // Claims to be a CloudEvent (a `ce-` header) but has no id, source or type.
    let poison = BasicProperties::default().with_headers(table(&[("ce-specversion", long("1.0"))]));
    broker.publish("", &queue, b"poison", poison).await;
    broker
        .publish("", &queue, br#"{"ok":true}"#, json_properties())
        .await;

    let run = start(
        "rmq-poison",
        trigger(&queue, serde_json::json!({"declare": false})),
    );
    let events = run.sink.wait_for(1, WAIT).await;
    let status = run.health().snapshot();
    run.stop().await;
    assert_eq!(events.len(), 1);
    assert_eq!(json_data(&events[0]), serde_json::json!({"ok": true}));
    assert_eq!((status.delivered, status.failed), (1, 1));
    assert_eq!(status.state, State::Active, "one bad message is no outage");
    let error = status.last_error.unwrap_or_default();
    assert!(error.contains("not a valid one"), "{error}");
    // Rejected without requeue: out of the queue, into its dead letters.
    assert_eq!(broker.ready_after_stop(&queue).await, 0);
    assert_eq!(broker.stats(&dlq).await, Some((1, 0)));
    broker.delete(&queue).await;
    broker.delete(&dlq).await;
    broker.close().await;
}

#[tokio::test]
async fn refused_messages_stay_in_the_queue_and_are_redelivered() {
    let broker = Broker::connect().await;
    let queue = unique("wisp-rmq-refuse");
    let sink = Arc::new(FakeSink::default());
    sink.refuse.store(true, Ordering::SeqCst);
    let run = start_with(
        "rmq-refuse",
        trigger(&queue, serde_json::json!({})),
        sink.clone(),
        Arc::default(),
    );
    active(&run).await;
    for n in 0..5 {
        let body = serde_json::json!({ "n": n }).to_string();
        broker
            .publish("", &queue, body.as_bytes(), json_properties())
            .await;
    }
    // Refused (and requeued after a delay) at least once.
    assert!(
        wait_until(WAIT, || run.health().snapshot().failed >= 5).await,
        "{:?}",
        run.health().snapshot()
    );
    let status = run.health().snapshot();
    assert_eq!(sink.count(), 0);
    assert_eq!(status.delivered, 0);
    assert_eq!(status.state, State::Active, "the broker connection is fine");
    let error = status.last_error.unwrap_or_default();
    assert!(
        error.contains("refused by the test") && error.contains("redelivery"),
        "{error}"
    );
    // Not lost: once Wisp takes them, all five arrive.
    sink.refuse.store(false, Ordering::SeqCst);
    let events = sink.wait_for(5, WAIT).await;
    run.stop().await;
    let mut seen: Vec<i64> = events
        .iter()
        .map(|e| json_data(e)["n"].as_i64().unwrap_or(-1))
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, vec![0, 1, 2, 3, 4], "each message at least once");
    let redelivered: Vec<&Event> = events
        .iter()
        .filter(|e| ext(e, "redelivered").as_deref() == Some("true"))
        .collect();
    assert!(!redelivered.is_empty(), "requeued messages are redelivered");
    for e in redelivered {
        assert_eq!(ext(e, "deliverycount").as_deref(), Some("2"));
    }
    assert_eq!(broker.ready_after_stop(&queue).await, 0);
    broker.delete(&queue).await;
    broker.close().await;
}

#[tokio::test]
async fn on_failure_reject_dead_letters_refused_messages() {
    let broker = Broker::connect().await;
    let queue = unique("wisp-rmq-reject");
    let dlq = unique("wisp-rmq-reject-dlq");
    broker.declare(&dlq, FieldTable::default()).await;
    broker
        .declare(
            &queue,
            table(&[
                ("x-dead-letter-exchange", long("")),
                ("x-dead-letter-routing-key", long(&dlq)),
            ]),
        )
        .await;
    let sink = Arc::new(FakeSink::default());
    sink.refuse.store(true, Ordering::SeqCst);
    let run = start_with(
        "rmq-reject",
        trigger(
            &queue,
            serde_json::json!({"declare": false, "on_failure": "reject"}),
        ),
        sink.clone(),
        Arc::default(),
    );
    active(&run).await;
    for n in 0..4 {
        broker
            .publish(
                "",
                &queue,
                format!("m{n}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut dead = None;
    while tokio::time::Instant::now() < deadline {
        dead = broker.stats(&dlq).await;
        if dead == Some((4, 0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = run.health().snapshot();
    run.stop().await;
    assert_eq!(dead, Some((4, 0)), "all four dead-lettered: {status:?}");
    assert_eq!(sink.count(), 0);
    assert!(status.failed >= 4, "{status:?}");
    let error = status.last_error.unwrap_or_default();
    assert!(error.contains("rejected"), "{error}");
    assert_eq!(broker.ready_after_stop(&queue).await, 0);
    broker.delete(&queue).await;
    broker.delete(&dlq).await;
    broker.close().await;
}

#[tokio::test]
async fn a_quorum_queue_reports_the_brokers_delivery_count() {
    let broker = Broker::connect().await;
    let queue = unique("wisp-rmq-quorum");
    broker
        .declare(&queue, table(&[("x-queue-type", long("quorum"))]))
        .await;
    let sink = Arc::new(FakeSink::default());
    sink.refuse.store(true, Ordering::SeqCst);
    let run = start_with(
        "rmq-quorum",
        trigger(&queue, serde_json::json!({"declare": false})),
        sink.clone(),
        Arc::default(),
    );
    active(&run).await;
    broker.publish("", &queue, b"{}", json_properties()).await;
    // Refused twice, then taken: the third attempt.
    assert!(wait_until(WAIT, || run.health().snapshot().failed >= 2).await);
    sink.refuse.store(false, Ordering::SeqCst);
    let events = sink.wait_for(1, WAIT).await;
    run.stop().await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(ext(e, "redelivered").as_deref(), Some("true"));
    let count: u64 = ext(e, "deliverycount")
        .and_then(|c| c.parse().ok())
        .expect("a numeric deliverycount");
    let headers: serde_json::Value = serde_json::from_str(&ext(e, "headers").unwrap()).unwrap();
    let before: u64 = headers["x-delivery-count"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .expect("the broker's x-delivery-count header");
    assert_eq!(count, before + 1);
    assert!(count >= 3, "refused at least twice before: {count}");
    broker.delete(&queue).await;
    broker.close().await;
}

#[tokio::test]
async fn an_unreachable_broker_is_degraded_and_retried_without_panicking() {
    let run = start(
        "rmq-down",
        serde_json::json!({"target": "f", "source": {
            "kind": "rabbitmq", "url": "amqp://guest:guest@127.0.0.1:1/%2f", "queue": "q"
        }}),
    );
    assert!(
        wait_until(WAIT, || run.health().state() == State::Degraded).await,
        "{:?}",
        run.health().snapshot()
    );
    let status = run.health().snapshot();
    let error = status.last_error.unwrap_or_default();
    assert!(
        error.contains("cannot connect") && error.contains("127.0.0.1:1"),
        "{error}"
    );
    assert!(
        !error.contains("guest:guest"),
        "the password leaked: {error}"
    );
    eprintln!("reported: {error}");
    assert!(status.last_error_at.is_some());
    // Still retrying, not dead.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!run.task.is_finished(), "the source task ended");
    run.ctx.cancel.cancel();
    let joined = tokio::time::timeout(WAIT, run.task)
        .await
        .expect("the source stops promptly when cancelled");
    assert!(joined.is_ok(), "the source task panicked: {joined:?}");
}

#[tokio::test]
async fn a_deleted_queue_is_reported_lost_then_redeclared_and_consumed_again() {
    let broker = Broker::connect().await;
    let queue = unique("wisp-rmq-lost");
    let run = start("rmq-lost", trigger(&queue, serde_json::json!({})));
    active(&run).await;
    broker
        .publish("", &queue, b"before", BasicProperties::default())
        .await;
    assert_eq!(run.sink.wait_for(1, WAIT).await.len(), 1);

    // Deleting the queue cancels the consumer: the session is lost.
    broker.delete(&queue).await;
    assert!(
        wait_until(WAIT, || run.health().snapshot().last_error.is_some()).await,
        "the loss was not reported"
    );
    let error = run.health().snapshot().last_error.unwrap_or_default();
    eprintln!("reported: {error}");
    assert!(error.contains("ended the consumer"), "{error}");
    // The framework reconnects; `declare` creates the queue again.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if broker
            .stats(&queue)
            .await
            .is_some_and(|(_, consumers)| consumers == 1)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue was not redeclared and consumed: {:?}",
            run.health().snapshot()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    active(&run).await;
    broker
        .publish("", &queue, b"after", BasicProperties::default())
        .await;
    let events = run.sink.wait_for(2, WAIT).await;
    run.stop().await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].data(), Some(&Data::Binary(b"after".to_vec())));
    broker.delete(&queue).await;
    broker.close().await;
}

/// Counts `enqueue` calls, to see the grouping.
#[derive(Default)]
struct CountingSink {
    calls: AtomicUsize,
    events: Mutex<Vec<Event>>,
}

#[async_trait]
impl EventSink for CountingSink {
    async fn enqueue(&self, _target: &Target, deliveries: Vec<Delivery>) -> Result<(), SinkError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        // A durable commit takes a while; messages pile up meanwhile.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut events = self.events.lock().unwrap();
        events.extend(deliveries.into_iter().map(|d| d.event));
        Ok(())
    }

    async fn run_batch(
        &self,
        _target: &Target,
        _key: &str,
        _events: Vec<Event>,
    ) -> Result<BatchOutcome, SinkError> {
        Err(SinkError::Unavailable("not used".into()))
    }

    async fn forget_dead_letter(&self, _invocation_id: &str) -> Result<(), SinkError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_backlog_is_queued_in_groups_in_order() {
    const N: usize = 1000;
    let broker = Broker::connect().await;
    let queue = unique("wisp-rmq-backlog");
    broker.declare(&queue, FieldTable::default()).await;
    for n in 0..N {
        let confirm = amqp(
            "basic.publish",
            broker.channel.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                n.to_string().as_bytes(),
                BasicProperties::default(),
            ),
        )
        .await;
        drop(confirm);
    }
    amqp("wait for confirms", broker.channel.wait_for_confirms()).await;

    let spec: TriggerSpec =
        serde_json::from_value(trigger(&queue, serde_json::json!({"prefetch": 100}))).unwrap();
    let target = spec.validate().unwrap();
    let now = chrono::Utc::now();
    let trigger = Trigger {
        name: "rmq-backlog".into(),
        spec,
        created_at: now,
        updated_at: now,
    };
    let source = wisp_triggers::sources::build(&trigger.spec.source, &trigger.name).unwrap();
    let sink = Arc::new(CountingSink::default());
    let ctx = SourceContext {
        trigger: Arc::new(trigger),
        target,
        health: Arc::new(Health::default()),
        sink: sink.clone(),
        cursors: Arc::new(common::FakeCursors::default()),
        cancel: CancellationToken::new(),
    };
    let started = tokio::time::Instant::now();
    let task = tokio::spawn(wisp_triggers::source::run(source, ctx.clone()));
    let all = wait_until(WAIT, || sink.events.lock().unwrap().len() >= N).await;
    let took = started.elapsed();
    ctx.cancel.cancel();
    let _ = tokio::time::timeout(WAIT, task).await;
    let events = sink.events.lock().unwrap().clone();
    let calls = sink.calls.load(Ordering::SeqCst);
    assert!(all, "{} of {N} in {took:?}", events.len());
    let bodies: Vec<String> = events
        .iter()
        .map(|e| match e.data() {
            Some(Data::Binary(b)) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        })
        .collect();
    let expected: Vec<String> = (0..N).map(|n| n.to_string()).collect();
    assert_eq!(bodies, expected, "each once, in order");
    assert!(
        calls <= N / 5,
        "{calls} enqueue calls for {N} messages: not grouped"
    );
    println!("{N} messages in {took:?}, {calls} enqueue calls");
    assert_eq!(broker.ready_after_stop(&queue).await, 0);
    broker.delete(&queue).await;
    broker.close().await;
}

/// Closes the broker connections whose client name contains `name`, with
/// `rabbitmqctl` (the broker runs on this machine); `None` if it cannot be
/// run, else how many it closed. Only the test's own connection is touched.
fn close_connections_named(name: &str) -> Option<usize> {
    let listed = std::process::Command::new("rabbitmqctl")
        .args([
            "--quiet",
            "list_connections",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let listed = String::from_utf8_lossy(&listed.stdout);
    let pids: Vec<&str> = listed
        .lines()
        .filter(|line| line.contains(name))
        .filter_map(|line| line.split('\t').next())
        .collect();
    for pid in &pids {
        let closed = std::process::Command::new("rabbitmqctl")
            .args([
                "--quiet",
                "close_connection",
                pid,
                "closed by the wisp test",
            ])
            .status()
            .ok()?;
        assert!(
            closed.success(),
            "rabbitmqctl close_connection {pid} failed"
        );
    }
    Some(pids.len())
}

#[tokio::test]
async fn a_connection_closed_by_the_broker_is_lost_then_reconnected() {
    let broker = Broker::connect().await;
    let queue = unique("wisp-rmq-conn");
    let name = unique("rmq-conn");
    let run = start(&name, trigger(&queue, serde_json::json!({})));
    active(&run).await;
    broker
        .publish("", &queue, b"before", BasicProperties::default())
        .await;
    assert_eq!(run.sink.wait_for(1, WAIT).await.len(), 1);

    // The source names its connection `wisp trigger <trigger>`.
    let connection_name = format!("wisp trigger {name}");
    let closed = tokio::task::spawn_blocking(move || close_connections_named(&connection_name))
        .await
        .expect("rabbitmqctl ran");
    let Some(closed) = closed else {
        // Without rabbitmqctl (a broker elsewhere), the deleted-queue test
        // covers the loss of a session.
        eprintln!("rabbitmqctl is not available here: connection loss not tested");
        run.stop().await;
        broker.delete(&queue).await;
        broker.close().await;
        return;
    };
    assert_eq!(closed, 1, "the source's connection was not found");
    assert!(
        wait_until(WAIT, || run.health().snapshot().last_error.is_some()).await,
        "the loss was not reported"
    );
    let error = run.health().snapshot().last_error.unwrap_or_default();
    eprintln!("reported: {error}");
    assert!(error.contains("lost the connection"), "{error}");
    // Reconnected: consuming again.
    let deadline = tokio::time::Instant::now() + WAIT;
    while broker.stats(&queue).await != Some((0, 1)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not consuming again: {:?}",
            run.health().snapshot()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    active(&run).await;
    broker
        .publish("", &queue, b"after", BasicProperties::default())
        .await;
    let events = run.sink.wait_for(2, WAIT).await;
    run.stop().await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].data(), Some(&Data::Binary(b"after".to_vec())));
    broker.delete(&queue).await;
    broker.close().await;
}
