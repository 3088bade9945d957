//! The NATS source against a real NATS server with JetStream (the shared
//! one at [`brokers::nats_url`]): core subjects with wildcards and queue
//! groups, filters, JetStream durable consumers acknowledged only after
//! the event is queued, ordered mode with bisection, and connection faults
//! against a private `nats-server` ([`brokers::nats_server_bin`]) started
//! on a free port.

mod common;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use common::{FakeSink, Running, free_port, start, unique};
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Longest any test may run.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to watch for events that must not arrive.
const QUIET: Duration = Duration::from_millis(500);

/// Runs `body` within [`TEST_TIMEOUT`], then `cleanup`, whatever happened,
/// then re-raises a panic of `body`.
async fn bounded<Fut, C>(body: Fut, cleanup: C)
where
    Fut: Future<Output = ()> + Send + 'static,
    C: Future<Output = ()>,
{
    let result = tokio::time::timeout(TEST_TIMEOUT, tokio::spawn(body)).await;
    cleanup.await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Err(_) => panic!("the test did not finish within {TEST_TIMEOUT:?}"),
    }
}

async fn client(url: &str) -> async_nats::Client {
    tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url))
        .await
        .expect("connecting to NATS timed out")
        .expect("a NATS server")
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

fn seq(event: &Event) -> u64 {
    ext(event, "natsseq")
        .expect("a natsseq extension")
        .parse()
        .expect("a numeric natsseq")
}

/// A trigger spec for the NATS `source`, on the shared server unless it
/// names a `url`.
fn nats(source: serde_json::Value) -> serde_json::Value {
    let mut source = source;
    if source.get("url").is_none() {
        source["url"] = brokers::nats_url().into();
    }
    serde_json::json!({"target": "f", "source": source})
}

fn json_headers(pairs: &[(&str, &str)]) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    for (k, v) in pairs {
        headers.insert(*k, *v);
    }
    headers
}

async fn started(name: &str, spec: serde_json::Value) -> Running {
    let run = start(name, spec);
    assert!(
        run.wait_active(Duration::from_secs(10)).await,
        "not active: {:?}",
        run.health().snapshot()
    );
    run
}

/// A stream on the shared server, with subjects `<prefix>.>`, in memory.
async fn create_stream(js: &jetstream::Context, name: &str, prefix: &str) {
    js.create_stream(stream::Config {
        name: name.to_string(),
        subjects: vec![format!("{prefix}.>")],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .expect("creating the test stream");
}

async fn delete_stream(name: &str) {
    let js = jetstream::new(client(brokers::nats_url()).await);
    let _ = js.delete_stream(name).await;
}

async fn publish_js(
    js: &jetstream::Context,
    subject: String,
    headers: async_nats::HeaderMap,
    body: Vec<u8>,
) {
    js.publish_with_headers(subject, headers, Bytes::from(body))
        .await
        .expect("publishing")
        .await
        .expect("the stream's acknowledgement");
}

async fn consumer_info(js: &jetstream::Context, stream: &str, durable: &str) -> consumer::Info {
    js.get_stream(stream)
        .await
        .expect("the test stream")
        .consumer_info(durable)
        .await
        .expect("the trigger's consumer")
}

/// Waits until the consumer has acknowledged everything up to stream
/// sequence `floor` and has nothing pending; its last info.
async fn wait_acked(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
    floor: u64,
) -> consumer::Info {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = consumer_info(js, stream, durable).await;
        if (info.num_ack_pending == 0 && info.ack_floor.stream_sequence >= floor)
            || tokio::time::Instant::now() > deadline
        {
            return info;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn core_wildcard_subject_maps_messages_to_events() {
    let prefix = unique("core");
    bounded(
        async move {
            let run = started(
                "core-wildcard",
                nats(serde_json::json!({"kind": "nats", "subject": format!("{prefix}.orders.*")})),
            )
            .await;
            let nc = client(brokers::nats_url()).await;
            let regions = ["eu", "us", "asia"];
            for (n, region) in regions.iter().enumerate() {
                nc.publish_with_headers(
                    format!("{prefix}.orders.{region}"),
                    json_headers(&[("Content-Type", "application/json"), ("x-tenant", "acme")]),
                    Bytes::from(serde_json::to_vec(&serde_json::json!({"n": n})).unwrap()),
                )
                .await
                .unwrap();
            }
            // Neither matches `orders.*`.
            nc.publish(format!("{prefix}.other.eu"), "no".into())
                .await
                .unwrap();
            nc.publish(format!("{prefix}.orders.eu.deep"), "no".into())
                .await
                .unwrap();
            nc.flush().await.unwrap();

            let events = run.sink.wait_for(3, Duration::from_secs(10)).await;
            tokio::time::sleep(QUIET).await;
            let sink = run.stop().await;
            let events_after = sink.events();
            assert_eq!(events.len(), 3, "{events:?}");
            assert_eq!(
                events_after.len(),
                3,
                "a non-matching message arrived: {events_after:?}"
            );
            let mut seen = BTreeSet::new();
            for e in &events {
                assert_eq!(e.ty(), "wisp.nats.message");
                assert_eq!(e.source().to_string(), redact_url(brokers::nats_url()));
                assert_eq!(e.id().len(), 32, "a generated id: {}", e.id());
                assert_eq!(e.datacontenttype(), Some("application/json"));
                let subject = e.subject().expect("a subject").to_string();
                assert_eq!(ext(e, "natssubject").as_deref(), Some(subject.as_str()));
                let n = json_data(e)["n"].as_u64().expect("n") as usize;
                assert_eq!(subject, format!("{prefix}.orders.{}", regions[n]));
                let headers: serde_json::Value =
                    serde_json::from_str(&ext(e, "headers").expect("a headers extension")).unwrap();
                assert_eq!(headers, serde_json::json!({"x-tenant": "acme"}));
                assert!(ext(e, "natsstream").is_none() && ext(e, "deliverycount").is_none());
                seen.insert(n);
            }
            assert_eq!(seen, BTreeSet::from([0, 1, 2]));
        },
        async {},
    )
    .await;
}

#[tokio::test]
async fn cloudevents_are_taken_as_they_are_and_invalid_ones_are_counted() {
    let subject = format!("{}.ce", unique("core"));
    bounded(
        async move {
            let run = started(
                "core-ce",
                nats(serde_json::json!({"kind": "nats", "subject": subject})),
            )
            .await;
            let nc = client(brokers::nats_url()).await;
            // Claims to be a CloudEvent, but has no id, source or type.
            nc.publish_with_headers(
                subject.clone(),
                json_headers(&[("ce-specversion", "1.0")]),
                "x".into(),
            )
            .await
            .unwrap();
            nc.publish_with_headers(
                subject.clone(),
                json_headers(&[
                    ("ce-specversion", "1.0"),
                    ("ce-id", "order-1"),
                    ("ce-source", "/shop"),
                    ("ce-type", "order.created"),
                    ("Content-Type", "text/plain"),
                ]),
                "hello".into(),
            )
            .await
            .unwrap();
            nc.flush().await.unwrap();
            let events = run.sink.wait_for(1, Duration::from_secs(10)).await;
            assert!(
                wait_until(Duration::from_secs(5), || run.health().snapshot().failed
                    == 1)
                .await,
                "{:?}",
                run.health().snapshot()
            );
            let status = run.health().snapshot();
            let sink = run.stop().await;
            assert_eq!(sink.count(), 1);
            let e = &events[0];
            assert_eq!(e.id(), "order-1");
            assert_eq!(e.ty(), "order.created");
            assert_eq!(e.source().to_string(), "/shop");
            assert_eq!(ext(e, "natssubject").as_deref(), Some(subject.as_str()));
            assert_eq!(
                status.state,
                State::Active,
                "one bad message does not degrade the trigger"
            );
            let error = status.last_error.expect("the invalid message's error");
            assert!(error.contains("not a valid"), "{error}");
        },
        async {},
    )
    .await;
}

#[tokio::test]
async fn a_queue_group_shares_the_messages_without_duplicates() {
    const N: usize = 100;
    let subject = format!("{}.work", unique("queue"));
    bounded(
        async move {
            let spec = nats(
                serde_json::json!({"kind": "nats", "subject": subject, "queue_group": "workers"}),
            );
            let a = started("queue-a", spec.clone()).await;
            let b = started("queue-b", spec).await;
            let nc = client(brokers::nats_url()).await;
            for n in 0..N {
                nc.publish_with_headers(
                    subject.clone(),
                    json_headers(&[("Content-Type", "application/json")]),
                    Bytes::from(serde_json::to_vec(&serde_json::json!({"n": n})).unwrap()),
                )
                .await
                .unwrap();
            }
            nc.flush().await.unwrap();
            let (sa, sb) = (a.sink.clone(), b.sink.clone());
            assert!(
                wait_until(Duration::from_secs(10), || sa.count() + sb.count() >= N).await,
                "{} + {} of {N}",
                sa.count(),
                sb.count()
            );
            tokio::time::sleep(QUIET).await;
            let (sa, sb) = (a.stop().await, b.stop().await);
            let (ea, eb) = (sa.events(), sb.events());
            assert!(
                !ea.is_empty() && !eb.is_empty(),
                "each member gets a share: {} and {}",
                ea.len(),
                eb.len()
            );
            assert_eq!(ea.len() + eb.len(), N, "no duplicates");
            let all: BTreeSet<u64> = ea
                .iter()
                .chain(&eb)
                .map(|e| json_data(e)["n"].as_u64().unwrap())
                .collect();
            assert_eq!(all, (0..N as u64).collect::<BTreeSet<_>>());
        },
        async {},
    )
    .await;
}

#[tokio::test]
async fn filters_count_and_drop_events() {
    let prefix = unique("filter");
    bounded(
        async move {
            let run = started(
                "filtered",
                serde_json::json!({
                    "target": "f",
                    "filters": [{"exact": {"subject": format!("{prefix}.a")}}],
                    "source": {"kind": "nats", "url": brokers::nats_url(), "subject": format!("{prefix}.*")}
                }),
            )
            .await;
            let nc = client(brokers::nats_url()).await;
            for subject in ["a", "b", "b", "a", "b"] {
                nc.publish(format!("{prefix}.{subject}"), "x".into())
                    .await
                    .unwrap();
            }
            nc.flush().await.unwrap();
            assert!(
                wait_until(Duration::from_secs(10), || {
                    let s = run.health().snapshot();
                    s.delivered == 2 && s.filtered == 3
                })
                .await,
                "{:?}",
                run.health().snapshot()
            );
            tokio::time::sleep(QUIET).await;
            let status = run.health().snapshot();
            let sink = run.stop().await;
            assert_eq!(
                (status.delivered, status.filtered, status.failed),
                (2, 3, 0)
            );
            let events = sink.events();
            assert_eq!(events.len(), 2);
            for e in events {
                assert_eq!(e.subject(), Some(format!("{prefix}.a").as_str()));
            }
        },
        async {},
    )
    .await;
}

#[tokio::test]
async fn jetstream_durable_acks_after_queueing_and_redelivers_refused_messages() {
    const N: u64 = 50;
    let prefix = unique("jsd");
    let stream_name = unique("WISPDURABLE");
    let cleanup_name = stream_name.clone();
    bounded(
        async move {
            let js = jetstream::new(client(brokers::nats_url()).await);
            create_stream(&js, &stream_name, &prefix).await;
            for n in 0..N {
                publish_js(
                    &js,
                    format!("{prefix}.orders.{}", n % 3),
                    json_headers(&[
                        ("Content-Type", "application/json"),
                        ("x-n", &n.to_string()),
                    ]),
                    serde_json::to_vec(&serde_json::json!({"n": n})).unwrap(),
                )
                .await;
            }
            // A message outside the filter subject.
            publish_js(
                &js,
                format!("{prefix}.audit"),
                json_headers(&[]),
                b"no".to_vec(),
            )
            .await;
            let run = started(
                "js-durable",
                nats(serde_json::json!({
                    "kind": "nats",
                    "subject": format!("{prefix}.orders.*"),
                    "jetstream": {"stream": stream_name, "ack_wait_ms": 2000}
                })),
            )
            .await;
            let events = run.sink.wait_for(N as usize, Duration::from_secs(15)).await;
            assert_eq!(events.len(), N as usize);
            let mut seqs = BTreeSet::new();
            for e in &events {
                let s = seq(e);
                assert_eq!(e.ty(), "wisp.nats.message");
                assert_eq!(e.id(), format!("{stream_name}:{s}"));
                assert_eq!(ext(e, "natsstream").as_deref(), Some(stream_name.as_str()));
                assert_eq!(ext(e, "deliverycount").as_deref(), Some("1"));
                let n = json_data(e)["n"].as_u64().unwrap();
                assert_eq!(s, n + 1, "stream sequences start at 1");
                assert_eq!(
                    e.subject(),
                    Some(format!("{prefix}.orders.{}", n % 3).as_str())
                );
                let headers: serde_json::Value =
                    serde_json::from_str(&ext(e, "headers").unwrap()).unwrap();
                assert_eq!(headers["x-n"], n.to_string());
                seqs.insert(s);
            }
            assert_eq!(seqs, (1..=N).collect::<BTreeSet<_>>(), "each message once");
            let keys: BTreeSet<String> = run
                .sink
                .delivered
                .lock()
                .unwrap()
                .iter()
                .map(|d| d.idempotency_key.clone().expect("an idempotency key"))
                .collect();
            assert_eq!(keys.len(), N as usize, "one key per message");
            assert!(
                keys.iter().all(|k| k.starts_with("nats/js-durable/")),
                "{keys:?}"
            );

            let info = wait_acked(&js, &stream_name, "wisp-js-durable", N).await;
            assert_eq!(info.num_ack_pending, 0, "all acknowledged: {info:?}");
            assert_eq!(info.num_pending, 0);
            assert_eq!(info.config.filter_subject, format!("{prefix}.orders.*"));
            assert_eq!(info.config.ack_wait, Duration::from_secs(2));
            assert_eq!(info.config.ack_policy, consumer::AckPolicy::Explicit);

            // Wisp's queue refuses: nothing is acknowledged, the error shows.
            run.sink.refuse.store(true, Ordering::SeqCst);
            for n in N..N + 5 {
                publish_js(
                    &js,
                    format!("{prefix}.orders.0"),
                    json_headers(&[]),
                    serde_json::to_vec(&serde_json::json!({"n": n})).unwrap(),
                )
                .await;
            }
            assert!(
                wait_until(Duration::from_secs(10), || {
                    run.health()
                        .snapshot()
                        .last_error
                        .is_some_and(|e| e.contains("refused by the test"))
                })
                .await,
                "{:?}",
                run.health().snapshot()
            );
            let info = consumer_info(&js, &stream_name, "wisp-js-durable").await;
            assert_eq!(
                info.ack_floor.stream_sequence,
                N + 1,
                "refused messages are not acknowledged: {info:?}"
            );
            assert_eq!(run.sink.count(), N as usize);

            run.sink.refuse.store(false, Ordering::SeqCst);
            let events = run
                .sink
                .wait_for(N as usize + 5, Duration::from_secs(20))
                .await;
            assert!(events.len() >= N as usize + 5, "{} events", events.len());
            let redelivered: Vec<&Event> = events.iter().filter(|e| seq(e) > N + 1).collect();
            let seqs: BTreeSet<u64> = redelivered.iter().map(|e| seq(e)).collect();
            assert_eq!(seqs, (N + 2..=N + 6).collect::<BTreeSet<_>>());
            assert!(
                redelivered.iter().any(|e| ext(e, "deliverycount")
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    >= 2),
                "at least one was redelivered"
            );
            let info = wait_acked(&js, &stream_name, "wisp-js-durable", N + 6).await;
            assert_eq!(info.num_ack_pending, 0, "{info:?}");
            assert_eq!(info.ack_floor.stream_sequence, N + 6);
            assert!(run.wait_active(Duration::from_secs(10)).await);
            run.stop().await;
        },
        delete_stream(&cleanup_name),
    )
    .await;
}

#[tokio::test]
async fn jetstream_invalid_cloudevents_are_terminated() {
    let prefix = unique("jsbad");
    let stream_name = unique("WISPBAD");
    let cleanup_name = stream_name.clone();
    bounded(
        async move {
            let js = jetstream::new(client(brokers::nats_url()).await);
            create_stream(&js, &stream_name, &prefix).await;
            publish_js(
                &js,
                format!("{prefix}.x"),
                json_headers(&[("ce-specversion", "1.0")]),
                b"x".to_vec(),
            )
            .await;
            publish_js(
                &js,
                format!("{prefix}.x"),
                json_headers(&[]),
                b"fine".to_vec(),
            )
            .await;
            let run = started(
                "js-bad",
                nats(serde_json::json!({
                    "kind": "nats",
                    "subject": format!("{prefix}.>"),
                    "jetstream": {"stream": stream_name, "durable": "bad-one", "ack_wait_ms": 1000}
                })),
            )
            .await;
            let events = run.sink.wait_for(1, Duration::from_secs(10)).await;
            assert_eq!(events.len(), 1);
            assert_eq!(seq(&events[0]), 2);
            let info = wait_acked(&js, &stream_name, "bad-one", 2).await;
            assert_eq!(info.num_ack_pending, 0, "terminated, not pending: {info:?}");
            // Not redelivered after the ack wait.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let status = run.health().snapshot();
            let sink = run.stop().await;
            assert_eq!(sink.count(), 1);
            assert_eq!(status.failed, 1, "{status:?}");
            assert!(status.last_error.unwrap().contains("terminated"));
        },
        delete_stream(&cleanup_name),
    )
    .await;
}

#[tokio::test]
async fn jetstream_missing_stream_is_a_clear_error() {
    let stream_name = unique("WISPMISSING");
    bounded(
        async move {
            let run = start(
                "js-missing",
                nats(serde_json::json!({
                    "kind": "nats",
                    "subject": "nothing.here",
                    "jetstream": {"stream": stream_name}
                })),
            );
            let health = run.ctx.health.clone();
            assert!(
                wait_until(Duration::from_secs(10), || health.state()
                    == State::Degraded)
                .await,
                "{:?}",
                health.snapshot()
            );
            let error = health.snapshot().last_error.unwrap();
            assert!(
                error.contains(&stream_name) && error.contains("does not exist"),
                "{error}"
            );
            run.stop().await;
        },
        async {},
    )
    .await;
}

#[tokio::test]
async fn jetstream_ordered_mode_runs_batches_in_order_and_bisects_failures() {
    const N: u64 = 30;
    const POISON: u64 = 15;
    let prefix = unique("jso");
    let stream_name = unique("WISPORDERED");
    let cleanup_name = stream_name.clone();
    bounded(
        async move {
            let js = jetstream::new(client(brokers::nats_url()).await);
            create_stream(&js, &stream_name, &prefix).await;
            for n in 1..=N {
                publish_js(
                    &js,
                    format!("{prefix}.e.{}", n % 4),
                    json_headers(&[("Content-Type", "application/json")]),
                    serde_json::to_vec(&serde_json::json!({"n": n})).unwrap(),
                )
                .await;
            }
            let sink = Arc::new(FakeSink::default());
            *sink.poison_id.lock().unwrap() = Some(format!("{stream_name}:{POISON}"));
            let run = common::start_with(
                "js-ordered",
                nats(serde_json::json!({
                    "kind": "nats",
                    "subject": format!("{prefix}.e.*"),
                    "jetstream": {
                        "stream": stream_name,
                        "ordered": {"max_events": 10, "max_wait_ms": 200, "on_failure": "bisect"}
                    }
                })),
                sink.clone(),
                Arc::default(),
            );
            let events = sink.wait_for(N as usize - 1, Duration::from_secs(20)).await;
            let info = wait_acked(&js, &stream_name, "wisp-js-ordered", N).await;
            tokio::time::sleep(QUIET).await;
            let status = run.health().snapshot();
            run.stop().await;

            let delivered: Vec<u64> = events.iter().map(seq).collect();
            let expected: Vec<u64> = (1..=N).filter(|&s| s != POISON).collect();
            assert_eq!(
                delivered, expected,
                "every event but the poisoned one, in stream order"
            );
            assert_eq!(sink.count(), N as usize - 1, "nothing twice");

            let batches: Vec<Vec<u64>> = sink
                .batches
                .lock()
                .unwrap()
                .iter()
                .map(|b| b.iter().map(seq).collect())
                .collect();
            assert!(
                batches.iter().all(|b| !b.is_empty() && b.len() <= 10),
                "{batches:?}"
            );
            assert_eq!(
                batches[0],
                (1..=10).collect::<Vec<_>>(),
                "batches fill up: {batches:?}"
            );
            for b in &batches {
                assert!(
                    b.windows(2).all(|w| w[0] < w[1]),
                    "in order within a batch: {batches:?}"
                );
            }
            let failed: Vec<&Vec<u64>> = batches.iter().filter(|b| b.contains(&POISON)).collect();
            assert!(
                failed.len() >= 2,
                "the failed batch was bisected: {batches:?}"
            );
            assert!(
                failed.windows(2).all(|w| w[1].len() < w[0].len()),
                "{failed:?}"
            );
            assert_eq!(
                failed.last().unwrap().as_slice(),
                &[POISON],
                "left alone in a failed batch of one"
            );
            // Each failed batch that was split had its dead letter
            // forgotten; the last one (of one event) stays dead-lettered.
            let forgotten = sink.forgotten.lock().unwrap().clone();
            let expected_forgotten: Vec<String> = (0..failed.len() - 1)
                .map(|n| format!("batch-{n}"))
                .collect();
            assert_eq!(forgotten, expected_forgotten);
            assert_eq!(status.failed, 1, "{status:?}");
            assert_eq!(status.delivered, N - 1);

            assert_eq!(info.num_ack_pending, 0, "{info:?}");
            assert_eq!(
                info.ack_floor.stream_sequence, N,
                "all acknowledged, the dead-lettered one too"
            );
            assert_eq!(info.config.max_ack_pending, 10);
        },
        delete_stream(&cleanup_name),
    )
    .await;
}

#[tokio::test]
async fn jetstream_ordered_mode_keeps_order_across_refusals() {
    let prefix = unique("jsr");
    let stream_name = unique("WISPREFUSED");
    let cleanup_name = stream_name.clone();
    bounded(
        async move {
            let js = jetstream::new(client(brokers::nats_url()).await);
            create_stream(&js, &stream_name, &prefix).await;
            for n in 1..=12u64 {
                publish_js(&js, format!("{prefix}.e"), json_headers(&[]), n.to_string().into_bytes()).await;
            }
            let sink = Arc::new(FakeSink::default());
            sink.refuse.store(true, Ordering::SeqCst);
            let run = common::start_with(
                "js-refused",
                nats(serde_json::json!({
                    "kind": "nats",
                    "subject": format!("{prefix}.e"),
                    "jetstream": {"stream": stream_name, "ordered": {"max_events": 5, "max_wait_ms": 100}}
                })),
                sink.clone(),
                Arc::default(),
            );
            let health = run.ctx.health.clone();
            assert!(
                wait_until(Duration::from_secs(10), || {
                    health.snapshot().last_error.is_some_and(|e| e.contains("refused by the test"))
                })
                .await,
                "{:?}",
                health.snapshot()
            );
            // Let it fail a few times, then accept.
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(sink.count(), 0);
            sink.refuse.store(false, Ordering::SeqCst);
            let events = sink.wait_for(12, Duration::from_secs(20)).await;
            for n in 13..=20u64 {
                publish_js(&js, format!("{prefix}.e"), json_headers(&[]), n.to_string().into_bytes()).await;
            }
            let events_after = sink.wait_for(20, Duration::from_secs(20)).await;
            run.stop().await;
            assert_eq!(events.iter().take(12).map(seq).collect::<Vec<_>>(), (1..=12).collect::<Vec<_>>());
            assert_eq!(
                events_after.iter().map(seq).collect::<Vec<_>>(),
                (1..=20).collect::<Vec<_>>(),
                "in order, each once"
            );
            let batches = sink.batches.lock().unwrap().clone();
            assert!(batches.iter().all(|b| b.len() <= 5));
            let redelivered = events_after
                .iter()
                .filter(|e| ext(e, "deliverycount").unwrap().parse::<u64>().unwrap() >= 2)
                .count();
            assert!(redelivered >= 1, "the refused batch came back");
        },
        delete_stream(&cleanup_name),
    )
    .await;
}

#[tokio::test]
async fn ordered_mode_after_a_lost_batch_redelivers_it_first() {
    let prefix = unique("jsc");
    let stream_name = unique("WISPCRASHED");
    let cleanup_name = stream_name.clone();
    bounded(
        async move {
            let js = jetstream::new(client(brokers::nats_url()).await);
            create_stream(&js, &stream_name, &prefix).await;
            for n in 1..=10u64 {
                publish_js(
                    &js,
                    format!("{prefix}.e"),
                    json_headers(&[]),
                    n.to_string().into_bytes(),
                )
                .await;
            }
            // An earlier session pulled three messages and vanished without
            // acknowledging them.
            let stream = js.get_stream(&stream_name).await.unwrap();
            let crashed: consumer::PullConsumer = stream
                .create_consumer(consumer::pull::Config {
                    durable_name: Some("crashed".into()),
                    filter_subject: format!("{prefix}.e"),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(1),
                    max_ack_pending: 5,
                    ..Default::default()
                })
                .await
                .unwrap();
            let mut lost = crashed.fetch().max_messages(3).messages().await.unwrap();
            let mut n = 0;
            while let Some(m) = futures_util::StreamExt::next(&mut lost).await {
                m.unwrap();
                n += 1;
            }
            assert_eq!(n, 3);
            drop(lost);

            let sink = Arc::new(FakeSink::default());
            let run = common::start_with(
                "js-crashed",
                nats(serde_json::json!({
                    "kind": "nats",
                    "subject": format!("{prefix}.e"),
                    "jetstream": {
                        "stream": stream_name,
                        "durable": "crashed",
                        "ack_wait_ms": 1000,
                        "ordered": {"max_events": 5, "max_wait_ms": 100}
                    }
                })),
                sink.clone(),
                Arc::default(),
            );
            let events = sink.wait_for(10, Duration::from_secs(20)).await;
            tokio::time::sleep(QUIET).await;
            run.stop().await;
            assert_eq!(
                sink.events().iter().map(seq).collect::<Vec<_>>(),
                (1..=10).collect::<Vec<_>>(),
                "the lost batch first, in order, then the rest: {:?}",
                events.iter().map(seq).collect::<Vec<_>>()
            );
        },
        delete_stream(&cleanup_name),
    )
    .await;
}

/// Counts the calls to Wisp's queue, recording through a [`FakeSink`].
struct CountingSink {
    inner: Arc<FakeSink>,
    enqueues: AtomicUsize,
}

#[async_trait::async_trait]
impl EventSink for CountingSink {
    async fn enqueue(&self, target: &Target, deliveries: Vec<Delivery>) -> Result<(), SinkError> {
        self.enqueues.fetch_add(1, Ordering::SeqCst);
        self.inner.enqueue(target, deliveries).await
    }

    async fn run_batch(
        &self,
        target: &Target,
        key: &str,
        events: Vec<Event>,
    ) -> Result<BatchOutcome, SinkError> {
        self.inner.run_batch(target, key, events).await
    }

    async fn forget_dead_letter(&self, invocation_id: &str) -> Result<(), SinkError> {
        self.inner.forget_dead_letter(invocation_id).await
    }
}

#[tokio::test]
async fn a_jetstream_backlog_is_queued_in_groups() {
    const N: usize = 600;
    let prefix = unique("jsg");
    let stream_name = unique("WISPGROUPS");
    let cleanup_name = stream_name.clone();
    bounded(
        async move {
            let js = jetstream::new(client(brokers::nats_url()).await);
            create_stream(&js, &stream_name, &prefix).await;
            let mut acks = Vec::with_capacity(N);
            for n in 0..N {
                acks.push(
                    js.publish(format!("{prefix}.e"), n.to_string().into())
                        .await
                        .unwrap(),
                );
            }
            for ack in acks {
                ack.await.unwrap();
            }
            let spec: TriggerSpec = serde_json::from_value(nats(serde_json::json!({
                "kind": "nats",
                "subject": format!("{prefix}.e"),
                "jetstream": {"stream": stream_name}
            })))
            .unwrap();
            let target = spec.validate().unwrap();
            let now = chrono::Utc::now();
            let trigger = Trigger {
                name: "js-groups".into(),
                spec,
                created_at: now,
                updated_at: now,
            };
            let source = wisp_triggers::sources::build(&trigger.spec.source, "js-groups").unwrap();
            let fake = Arc::new(FakeSink::default());
            let counting = Arc::new(CountingSink {
                inner: fake.clone(),
                enqueues: AtomicUsize::new(0),
            });
            let ctx = SourceContext {
                trigger: Arc::new(trigger),
                target,
                health: Arc::new(Health::default()),
                sink: counting.clone(),
                cursors: Arc::new(common::FakeCursors::default()),
                cancel: CancellationToken::new(),
            };
            let task = tokio::spawn(wisp_triggers::source::run(source, ctx.clone()));
            let events = fake.wait_for(N, Duration::from_secs(20)).await;
            ctx.cancel.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
            assert_eq!(events.len(), N);
            let calls = counting.enqueues.load(Ordering::SeqCst);
            // One group per pull of up to 256 messages.
            let least = N.div_ceil(wisp_triggers::sources::nats::MAX_BATCH);
            assert!(
                (least..=least + 2).contains(&calls),
                "{N} messages in {calls} calls"
            );
        },
        delete_stream(&cleanup_name),
    )
    .await;
}

/// A private `nats-server` on a port of its own, killed when dropped.
struct PrivateServer(std::process::Child);

impl PrivateServer {
    async fn start(port: u16) -> PrivateServer {
        PrivateServer::start_with(port, &[]).await
    }

    async fn start_with(port: u16, args: &[&str]) -> PrivateServer {
        let child = std::process::Command::new(brokers::nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", brokers::nats_server_bin().display()));
        let server = PrivateServer(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not start on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn wait_state(run: &Running, state: State, timeout: Duration) -> bool {
    let health = run.ctx.health.clone();
    wait_until(timeout, || health.state() == state).await
}

#[tokio::test]
async fn a_lost_server_degrades_the_trigger_until_it_is_back() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let subject = format!("{}.faults", unique("faults"));
    bounded(
        async move {
            let server = PrivateServer::start(port).await;
            let run = started(
                "faulty",
                nats(serde_json::json!({"kind": "nats", "url": url, "subject": subject})),
            )
            .await;
            let nc = client(&url).await;
            nc.publish(subject.clone(), "one".into()).await.unwrap();
            nc.flush().await.unwrap();
            assert_eq!(run.sink.wait_for(1, Duration::from_secs(10)).await.len(), 1);
            drop(nc);

            server.kill();
            assert!(
                wait_state(&run, State::Degraded, Duration::from_secs(5)).await,
                "{:?}",
                run.health().snapshot()
            );
            let status = run.health().snapshot();
            assert!(
                status.last_error.is_some() && status.last_error_at.is_some(),
                "{status:?}"
            );

            let server = PrivateServer::start(port).await;
            assert!(
                run.wait_active(Duration::from_secs(20)).await,
                "active again: {:?}",
                run.health().snapshot()
            );
            let nc = client(&url).await;
            nc.publish(subject.clone(), "two".into()).await.unwrap();
            nc.flush().await.unwrap();
            let events = run.sink.wait_for(2, Duration::from_secs(10)).await;
            let sink = run.stop().await;
            drop(server);
            assert_eq!(events.len(), 2);
            let bodies: Vec<Vec<u8>> = sink
                .events()
                .iter()
                .map(|e| match e.data() {
                    Some(Data::Binary(b)) => b.clone(),
                    other => panic!("binary data expected: {other:?}"),
                })
                .collect();
            assert_eq!(bodies, vec![b"one".to_vec(), b"two".to_vec()]);
        },
        async {},
    )
    .await;
}

#[tokio::test]
async fn a_server_down_at_start_degrades_the_trigger_until_it_starts() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let subject = format!("{}.late", unique("late"));
    bounded(
        async move {
            let run = start(
                "late-server",
                nats(serde_json::json!({"kind": "nats", "url": url, "subject": subject})),
            );
            assert!(
                wait_state(&run, State::Degraded, Duration::from_secs(5)).await,
                "{:?}",
                run.health().snapshot()
            );
            let error = run.health().snapshot().last_error.unwrap();
            assert!(
                error.contains("cannot connect") && error.contains(&url),
                "{error}"
            );
            // It keeps retrying without becoming active.
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(run.health().state(), State::Degraded);

            let server = PrivateServer::start(port).await;
            assert!(
                run.wait_active(Duration::from_secs(20)).await,
                "{:?}",
                run.health().snapshot()
            );
            let nc = client(&url).await;
            nc.publish(subject.clone(), "hello".into()).await.unwrap();
            nc.flush().await.unwrap();
            let events = run.sink.wait_for(1, Duration::from_secs(10)).await;
            run.stop().await;
            drop(server);
            assert_eq!(events.len(), 1);
        },
        async {},
    )
    .await;
}

#[tokio::test]
async fn credentials_in_the_url_authenticate_and_are_never_shown() {
    let port = free_port();
    let subject = format!("{}.auth", unique("auth"));
    bounded(
        async move {
            let _server =
                PrivateServer::start_with(port, &["--user", "wisp", "--pass", "s3cr@t"]).await;
            let good = format!("nats://wisp:s3cr%40t@127.0.0.1:{port}");
            let run = started(
                "with-password",
                nats(serde_json::json!({"kind": "nats", "url": good, "subject": subject})),
            )
            .await;
            // async-nats itself ignores credentials in URLs.
            let nc =
                async_nats::ConnectOptions::with_user_and_password("wisp".into(), "s3cr@t".into())
                    .connect(format!("127.0.0.1:{port}"))
                    .await
                    .unwrap();
            nc.publish(subject.clone(), "x".into()).await.unwrap();
            nc.flush().await.unwrap();
            let events = run.sink.wait_for(1, Duration::from_secs(10)).await;
            run.stop().await;
            assert_eq!(events.len(), 1);
            assert_eq!(
                events[0].source().to_string(),
                format!("nats://wisp:***@127.0.0.1:{port}")
            );

            let bad = start(
                "wrong-password",
                nats(serde_json::json!({
                    "kind": "nats",
                    "url": format!("nats://wisp:letmein@127.0.0.1:{port}"),
                    "subject": subject
                })),
            );
            assert!(
                wait_state(&bad, State::Degraded, Duration::from_secs(10)).await,
                "{:?}",
                bad.health().snapshot()
            );
            let error = bad.health().snapshot().last_error.unwrap();
            bad.stop().await;
            assert!(error.contains("authorization"), "{error}");
            assert!(
                error.contains("wisp:***@") && !error.contains("letmein"),
                "{error}"
            );
        },
        async {},
    )
    .await;
}

#[tokio::test]
async fn a_jetstream_trigger_resumes_its_durable_consumer_after_a_server_restart() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let store = tempfile::tempdir().unwrap();
    let store_dir = store.path().to_str().unwrap().to_string();
    bounded(
        async move {
            let args = ["-js", "-sd", store_dir.as_str()];
            let server = PrivateServer::start_with(port, &args).await;
            let js = jetstream::new(client(&url).await);
            js.create_stream(stream::Config {
                name: "RESTART".into(),
                subjects: vec!["restart.>".into()],
                ..Default::default()
            })
            .await
            .unwrap();
            for n in 1..=5u64 {
                publish_js(
                    &js,
                    "restart.e".into(),
                    json_headers(&[]),
                    n.to_string().into_bytes(),
                )
                .await;
            }
            let run = started(
                "js-restart",
                nats(serde_json::json!({
                    "kind": "nats",
                    "url": url,
                    "subject": "restart.>",
                    "jetstream": {"stream": "RESTART", "ack_wait_ms": 1000}
                })),
            )
            .await;
            assert_eq!(run.sink.wait_for(5, Duration::from_secs(10)).await.len(), 5);
            wait_acked(&js, "RESTART", "wisp-js-restart", 5).await;
            drop(js);

            server.kill();
            assert!(
                wait_state(&run, State::Degraded, Duration::from_secs(5)).await,
                "{:?}",
                run.health().snapshot()
            );
            let server = PrivateServer::start_with(port, &args).await;
            assert!(
                run.wait_active(Duration::from_secs(20)).await,
                "{:?}",
                run.health().snapshot()
            );
            let js = jetstream::new(client(&url).await);
            for n in 6..=10u64 {
                publish_js(
                    &js,
                    "restart.e".into(),
                    json_headers(&[]),
                    n.to_string().into_bytes(),
                )
                .await;
            }
            // A killed server may lose its latest consumer state and deliver
            // acknowledged messages again: at least once, with the same
            // idempotency key, so that Wisp's queue takes them once.
            let sink = run.sink.clone();
            let all_seen = || sink.events().iter().map(seq).collect::<BTreeSet<_>>().len() == 10;
            assert!(
                wait_until(Duration::from_secs(20), all_seen).await,
                "{:?}",
                sink.events().iter().map(seq).collect::<Vec<_>>()
            );
            let info = wait_acked(&js, "RESTART", "wisp-js-restart", 10).await;
            run.stop().await;
            drop(server);
            let mut keys = std::collections::BTreeMap::new();
            for d in sink.delivered.lock().unwrap().iter() {
                let key = d.idempotency_key.clone().expect("an idempotency key");
                assert_eq!(
                    *keys.entry(seq(&d.event)).or_insert_with(|| key.clone()),
                    key,
                    "one key per message"
                );
            }
            assert_eq!(
                keys.keys().copied().collect::<Vec<_>>(),
                (1..=10).collect::<Vec<_>>(),
                "the same consumer, resumed"
            );
            assert_eq!(info.num_ack_pending, 0, "{info:?}");
            assert_eq!(info.ack_floor.stream_sequence, 10);
        },
        async {},
    )
    .await;
}
