//! The MQTT source against a real Mosquitto: the shared broker at
//! [`brokers::mqtt_url`] for topic filters, event mapping,
//! acknowledgements and persistent sessions (MQTT 5 and 3.1.1), and
//! private brokers ([`brokers::mosquitto_bin`]) on free ports for outages.

mod common;

use common::{FakeSink, Running, free_port, start, start_with, unique};
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use wisp_events::{AttributesReader, Data};
use wisp_testkit::brokers;
use wisp_triggers::spec::redact_url;
use wisp_triggers::{State, Status};

/// A trigger spec for `topic` on the broker at `url`.
fn spec(url: &str, topic: &str, protocol: &str) -> serde_json::Value {
    serde_json::json!({"target": "f", "source": {
        "kind": "mqtt",
        "url": url,
        "topic": topic,
        "protocol": protocol,
    }})
}

/// A trigger name whose default client id (`wisp-t-` and 16 hex digits)
/// is unique and exactly 23 characters.
fn trigger_name() -> String {
    unique("t")
}

/// A message to publish: topic, payload, MQTT 5 properties.
type Msg = (String, Vec<u8>, PublishProperties);

fn plain(topic: impl Into<String>, payload: &str) -> Msg {
    (
        topic.into(),
        payload.as_bytes().to_vec(),
        PublishProperties::default(),
    )
}

/// Publishes `messages` at QoS 1 (MQTT 5) to the broker at `url` in order
/// and returns once the broker acknowledged each.
async fn publish(url: &str, messages: Vec<Msg>) {
    let n = messages.len();
    let (host, port) = brokers::host_port(url);
    let mut options = MqttOptions::new(unique("pub"), host, port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, n + 4);
    for (topic, payload, properties) in messages {
        client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties)
            .await
            .expect("queue a publish");
    }
    let acked = tokio::time::timeout(Duration::from_secs(10), async {
        let mut acked = 0;
        while acked < n {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publishing to {} failed: {e}", redact_url(url)),
            }
        }
    })
    .await;
    assert!(
        acked.is_ok(),
        "the broker did not acknowledge {n} publishes"
    );
    disconnect(&client, &mut eventloop).await;
}

async fn disconnect(client: &AsyncClient, eventloop: &mut rumqttc::v5::EventLoop) {
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(event) = eventloop.poll().await {
            if event == Event::Outgoing(Outgoing::Disconnect) {
                return;
            }
        }
    })
    .await;
}

/// Removes trigger `name`'s persistent session from the shared broker
/// (connects with a clean start and no session expiry).
async fn forget_session(name: &str) {
    let (host, port) = brokers::host_port(brokers::mqtt_url());
    let options = MqttOptions::new(format!("wisp-{name}"), host, port);
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    let connected = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    if connected == Ok(true) {
        disconnect(&client, &mut eventloop).await;
    }
}

/// Waits until `check` holds for the trigger's status (or `timeout`);
/// returns the last status seen and whether it held.
async fn wait_status(
    run: &Running,
    timeout: Duration,
    check: impl Fn(&Status) -> bool,
) -> (Status, bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let status = run.health().snapshot();
        if check(&status) {
            return (status, true);
        }
        if tokio::time::Instant::now() > deadline {
            return (status, false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn active(run: &Running) {
    assert!(
        run.wait_active(Duration::from_secs(10)).await,
        "not active: {:?}",
        run.health().snapshot()
    );
}

fn ext(e: &wisp_events::Event, name: &str) -> Option<String> {
    e.extension(name).map(|v| v.to_string())
}

fn payload(e: &wisp_events::Event) -> String {
    match e.data() {
        Some(Data::Binary(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Data::String(s)) => s.clone(),
        Some(Data::Json(v)) => v.to_string(),
        None => String::new(),
    }
}

/// `<u>/+/temp` gets both rooms' temperatures and not the humidity.
async fn plus_wildcard_maps_messages_to_events(protocol: &str) {
    let u = unique("wisp");
    let name = trigger_name();
    let run = start(
        &name,
        spec(brokers::mqtt_url(), &format!("{u}/+/temp"), protocol),
    );
    active(&run).await;
    let props = PublishProperties {
        user_properties: vec![("site".into(), "berlin".into())],
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    publish(
        brokers::mqtt_url(),
        vec![
            (
                format!("{u}/room1/temp"),
                br#"{"c":21}"#.to_vec(),
                props.clone(),
            ),
            (format!("{u}/room1/humidity"), b"40".to_vec(), props.clone()),
            (format!("{u}/room2/temp"), br#"{"c":19}"#.to_vec(), props),
        ],
    )
    .await;
    run.sink.wait_for(2, Duration::from_secs(10)).await;
    // Room for a wrongly matched message to arrive too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = run.sink.events();
    let status = run.health().snapshot();
    run.stop().await;
    forget_session(&name).await;

    let subjects: BTreeSet<&str> = events.iter().filter_map(|e| e.subject()).collect();
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(
        subjects,
        BTreeSet::from([
            format!("{u}/room1/temp").as_str(),
            format!("{u}/room2/temp").as_str()
        ])
    );
    assert_eq!(status.delivered, 2);
    for e in &events {
        assert_eq!(e.ty(), "wisp.mqtt.message");
        assert_eq!(e.source().to_string(), redact_url(brokers::mqtt_url()));
        assert_eq!(e.id().len(), 32);
        assert_eq!(ext(e, "mqttqos").as_deref(), Some("1"));
        assert_eq!(ext(e, "mqttretain").as_deref(), Some("false"));
        assert_eq!(ext(e, "mqttdup").as_deref(), Some("false"));
        let room1 = e.subject() == Some(format!("{u}/room1/temp").as_str());
        let celsius = if room1 { 21 } else { 19 };
        if protocol == "5" {
            assert_eq!(e.datacontenttype(), Some("application/json"));
            assert_eq!(
                e.data(),
                Some(&Data::Json(serde_json::json!({"c": celsius})))
            );
            let headers: serde_json::Value =
                serde_json::from_str(&ext(e, "headers").expect("a headers extension")).unwrap();
            assert_eq!(headers, serde_json::json!({"site": "berlin"}));
        } else {
            // MQTT 3.1.1 has neither properties nor a content type.
            assert_eq!(e.datacontenttype(), Some("application/octet-stream"));
            assert_eq!(payload(e), format!(r#"{{"c":{celsius}}}"#));
            assert!(ext(e, "headers").is_none());
        }
    }
}

#[tokio::test]
async fn v5_plus_wildcard_maps_messages_properties_and_content_type() {
    plus_wildcard_maps_messages_to_events("5").await;
}

#[tokio::test]
async fn v311_plus_wildcard_maps_messages() {
    plus_wildcard_maps_messages_to_events("3.1.1").await;
}

#[tokio::test]
async fn hash_wildcard_matches_the_parent_and_every_level_below() {
    let u = unique("wisp");
    let name = trigger_name();
    let run = start(&name, spec(brokers::mqtt_url(), &format!("{u}/#"), "5"));
    active(&run).await;
    publish(
        brokers::mqtt_url(),
        vec![
            plain(u.clone(), "parent"),
            plain(format!("{u}/a"), "one"),
            plain(format!("{u}/a/b/c"), "three"),
            plain(format!("{u}-other/a"), "other"),
        ],
    )
    .await;
    run.sink.wait_for(3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = run.sink.events();
    run.stop().await;
    forget_session(&name).await;
    let got: BTreeSet<String> = events.iter().map(payload).collect();
    assert_eq!(events.len(), 3, "{events:#?}");
    assert_eq!(
        got,
        BTreeSet::from(["parent".into(), "one".into(), "three".into()])
    );
}

/// While the sink refuses, nothing is acknowledged; once it accepts, the
/// broker redelivers every message.
async fn refused_messages_are_redelivered(protocol: &str) {
    let u = unique("wisp");
    let name = trigger_name();
    let sink = Arc::new(FakeSink::default());
    sink.refuse.store(true, Ordering::SeqCst);
    let run = start_with(
        &name,
        spec(brokers::mqtt_url(), &format!("{u}/orders"), protocol),
        sink.clone(),
        Arc::default(),
    );
    active(&run).await;
    let topic = format!("{u}/orders");
    publish(
        brokers::mqtt_url(),
        vec![
            plain(topic.clone(), "m0"),
            plain(topic.clone(), "m1"),
            plain(topic, "m2"),
        ],
    )
    .await;
    let (status, refused) = wait_status(&run, Duration::from_secs(10), |s| {
        s.failed >= 1 && s.last_error.is_some()
    })
    .await;
    assert!(refused, "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("refused by the test")),
        "{status:?}"
    );
    assert_eq!(sink.count(), 0);
    sink.refuse.store(false, Ordering::SeqCst);
    let events = sink.wait_for(3, Duration::from_secs(30)).await;
    let recovered = run.wait_active(Duration::from_secs(5)).await;
    run.stop().await;
    forget_session(&name).await;
    let got: BTreeSet<String> = events.iter().map(payload).collect();
    assert_eq!(
        got,
        BTreeSet::from(["m0".into(), "m1".into(), "m2".into()]),
        "{events:#?}"
    );
    assert!(recovered, "the trigger did not become active again");
    // At least the first message came back as a redelivery.
    assert!(
        events
            .iter()
            .any(|e| ext(e, "mqttdup").as_deref() == Some("true")),
        "{events:#?}"
    );
}

#[tokio::test]
async fn v5_messages_are_acknowledged_only_after_they_are_queued() {
    refused_messages_are_redelivered("5").await;
}

#[tokio::test]
async fn v311_messages_are_acknowledged_only_after_they_are_queued() {
    refused_messages_are_redelivered("3.1.1").await;
}

/// Messages published while the trigger is stopped wait in its session.
async fn session_keeps_messages_while_stopped(protocol: &str) {
    let u = unique("wisp");
    let name = trigger_name();
    let topic = format!("{u}/readings");
    let run = start(&name, spec(brokers::mqtt_url(), &topic, protocol));
    active(&run).await;
    run.stop().await;
    let sent: Vec<String> = (0..5).map(|i| format!("r{i}")).collect();
    publish(
        brokers::mqtt_url(),
        sent.iter().map(|p| plain(topic.clone(), p)).collect(),
    )
    .await;
    let run = start(&name, spec(brokers::mqtt_url(), &topic, protocol));
    let events = run.sink.wait_for(5, Duration::from_secs(15)).await;
    run.stop().await;
    forget_session(&name).await;
    let got: BTreeSet<String> = events.iter().map(payload).collect();
    assert_eq!(
        got,
        sent.into_iter().collect::<BTreeSet<_>>(),
        "{events:#?}"
    );
}

#[tokio::test]
async fn v5_session_keeps_messages_published_while_stopped() {
    session_keeps_messages_while_stopped("5").await;
}

#[tokio::test]
async fn v311_session_keeps_messages_published_while_stopped() {
    session_keeps_messages_while_stopped("3.1.1").await;
}

#[tokio::test]
async fn an_invalid_cloudevent_is_acknowledged_and_counted_as_failed() {
    let u = unique("wisp");
    let name = trigger_name();
    let topic = format!("{u}/events");
    let run = start(&name, spec(brokers::mqtt_url(), &topic, "5"));
    active(&run).await;
    let ce = |props: &[(&str, &str)]| PublishProperties {
        user_properties: props
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    publish(
        brokers::mqtt_url(),
        vec![
            // Claims to be a CloudEvent (binary mode) without id, source, type.
            (
                topic.clone(),
                b"poison".to_vec(),
                ce(&[("ce-specversion", "1.0")]),
            ),
            (
                topic.clone(),
                b"x".to_vec(),
                ce(&[
                    ("ce-specversion", "1.0"),
                    ("ce-id", "abc"),
                    ("ce-source", "/shop"),
                    ("ce-type", "order.created"),
                ]),
            ),
            plain(topic.clone(), "after"),
        ],
    )
    .await;
    let events = run.sink.wait_for(2, Duration::from_secs(10)).await;
    let status = run.health().snapshot();
    run.stop().await;
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[0].id(), "abc");
    assert_eq!(events[0].ty(), "order.created");
    assert_eq!(events[0].source().to_string(), "/shop");
    assert_eq!(ext(&events[0], "mqttqos").as_deref(), Some("1"));
    assert_eq!(payload(&events[1]), "after");
    assert_eq!(status.failed, 1, "{status:?}");
    assert_eq!(status.state, State::Active);
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("not a valid CloudEvent")),
        "{status:?}"
    );
    // All three were acknowledged: nothing comes back after a restart.
    let run = start(&name, spec(brokers::mqtt_url(), &topic, "5"));
    active(&run).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = run.health().snapshot();
    let sink = run.stop().await;
    forget_session(&name).await;
    assert_eq!(sink.count(), 0, "{:#?}", sink.events());
    assert_eq!(status.failed, 0);
}

/// A Mosquitto of the test's own, on `port`; killed when dropped.
struct PrivateBroker {
    child: Child,
}

impl PrivateBroker {
    async fn start(port: u16) -> PrivateBroker {
        let child = Command::new(brokers::mosquitto_bin())
            .args(["-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", brokers::mosquitto_bin().display()));
        let mut broker = PrivateBroker { child };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return broker;
            }
            if let Ok(Some(exit)) = broker.child.try_wait() {
                panic!("mosquitto on port {port} exited: {exit}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not listen on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_broker_outage_degrades_the_trigger_until_the_broker_is_back() {
    let port = free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let broker = PrivateBroker::start(port).await;
    let u = unique("wisp");
    let run = start(&trigger_name(), spec(&url, &format!("{u}/#"), "5"));
    active(&run).await;

    drop(broker);
    let (status, degraded) = wait_status(&run, Duration::from_secs(5), |s| {
        s.state == State::Degraded && s.last_error.is_some()
    })
    .await;
    assert!(degraded, "{status:?}");

    let _broker = PrivateBroker::start(port).await;
    assert!(
        run.wait_active(Duration::from_secs(20)).await,
        "not active again: {:?}",
        run.health().snapshot()
    );
    publish(&url, vec![plain(format!("{u}/x"), "after the outage")]).await;
    let events = run.sink.wait_for(1, Duration::from_secs(10)).await;
    run.stop().await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(payload(&events[0]), "after the outage");
}

#[tokio::test]
async fn a_trigger_started_before_its_broker_becomes_active_when_it_starts() {
    let port = free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let u = unique("wisp");
    let run = start(&trigger_name(), spec(&url, &format!("{u}/+"), "3.1.1"));
    let (status, degraded) = wait_status(&run, Duration::from_secs(5), |s| {
        s.state == State::Degraded && s.last_error.is_some()
    })
    .await;
    assert!(degraded, "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains(&format!("cannot connect to {url}"))),
        "{status:?}"
    );

    let _broker = PrivateBroker::start(port).await;
    assert!(
        run.wait_active(Duration::from_secs(20)).await,
        "not active: {:?}",
        run.health().snapshot()
    );
    publish(&url, vec![plain(format!("{u}/x"), "hello")]).await;
    let events = run.sink.wait_for(1, Duration::from_secs(10)).await;
    run.stop().await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(payload(&events[0]), "hello");
}
