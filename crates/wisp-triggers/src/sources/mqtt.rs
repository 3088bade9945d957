//! MQTT 3.1.1 and 5: a topic filter (wildcards `+` and `#`) at QoS 1 with
//! a persistent session, each message acknowledged (PUBACK) once its event
//! is queued in Wisp.
//!
//! The session: the client connects with `clean_session = false` (3.1.1)
//! or `clean_start = false` and a session expiry of
//! [`SESSION_EXPIRY_SECS`] (5), under the trigger's client id (default
//! `wisp-<trigger>`; see [`MqttConfig::client_id`]). The broker therefore
//! keeps the subscription, and queues the QoS 1 messages published while
//! Wisp is down or reconnecting, and delivers them when the session
//! resumes. The topic filter is subscribed at QoS 1 (a message published
//! at QoS 0 stays at QoS 0, one at QoS 2 arrives at QoS 1). A session the
//! broker still holds is not subscribed again on every reconnect, so
//! retained messages are not repeated each time (MQTT 5 also subscribes
//! with "send retained messages only for a new subscription").
//!
//! The acknowledgement rule: acknowledgements are manual. A PUBACK is sent
//! only after [`SourceContext::dispatch`] returned `Ok` (the event is on
//! disk, or did not pass the filters), in the order the messages arrived.
//! When Wisp's queue refuses an event the message is left unacknowledged
//! and the session ends with an error; the framework reconnects with
//! backoff and the broker redelivers every unacknowledged message of the
//! persistent session (with the `dup` flag). Delivery is at least once.
//! A message that claims to be a CloudEvent (a `ce-*` user property, or
//! content type `application/cloudevents…`) and is not a valid one cannot
//! be rejected in MQTT: it is acknowledged, counted as failed and its
//! error recorded in the trigger's status. A message on a topic outside
//! the filter (left in the session by an earlier topic of the same client
//! id) is acknowledged and counted as filtered.
//!
//! Event mapping (through [`message_event`]):
//!
//! | attribute         | value                                                          |
//! |-------------------|----------------------------------------------------------------|
//! | `type`            | `wisp.mqtt.message`                                            |
//! | `source`          | the broker URL, password replaced by `***`                     |
//! | `subject`         | the message's topic                                            |
//! | `id`              | generated (MQTT messages carry none)                           |
//! | `datacontenttype` | MQTT 5 content type, else `application/octet-stream`           |
//! | data              | the payload (JSON when the content type is JSON)               |
//! | `headers`         | MQTT 5 user properties, as a JSON object (absent if none)      |
//! | `mqttqos`         | the delivery QoS, `0` or `1`                                   |
//! | `mqttretain`      | `true` for a retained message, else `false`                    |
//! | `mqttdup`         | `true` when the broker redelivers it, else `false`             |
//!
//! A message carrying a CloudEvent (binary mode: `ce-*` user properties;
//! structured mode: content type `application/cloudevents+json`, MQTT 5
//! only) is taken as it is, with the `mqtt*` extensions added.
//!
//! Limits: a packet is at most [`MAX_PACKET_BYTES`]. MQTT 5 announces this
//! to the broker, which then drops larger messages for this client; an
//! MQTT 3.1.1 broker cannot be told, and a larger message fails the
//! connection (the status names the error). Between the connection and
//! the dispatcher at most [`CHANNEL`] messages wait; MQTT 5 also limits
//! the unacknowledged messages in flight to [`RECEIVE_MAXIMUM`].

use crate::TriggerError;
use crate::sink::Delivery;
use crate::source::{Message, Source, SourceContext, SourceError, message_event};
use crate::spec::{check_text, check_url, redact_url};
use async_trait::async_trait;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as mqtt5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use utoipa::ToSchema;

/// Keep-alive interval: the broker drops a silent connection after 1.5 times this.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// How long an MQTT 5 broker keeps the session (subscription and queued
/// messages) after the connection is gone: 7 days. MQTT 3.1.1 sessions
/// have no expiry (unless the broker sets one).
pub const SESSION_EXPIRY_SECS: u32 = 7 * 24 * 60 * 60;
/// Largest MQTT packet received, in bytes (8 MiB).
pub const MAX_PACKET_BYTES: usize = 8 * 1024 * 1024;
/// Most messages waiting between the connection and the dispatcher.
pub const CHANNEL: usize = 256;
/// Most unacknowledged QoS 1 messages an MQTT 5 broker sends at once.
pub const RECEIVE_MAXIMUM: u16 = 128;
/// Most messages dispatched (and then acknowledged) together.
const MAX_BATCH: usize = 64;
/// Capacity of the client's request channel (acknowledgements, subscribe,
/// disconnect); larger than everything that can be unacknowledged at once
/// within Wisp, so acknowledging never waits.
const REQUESTS: usize = 2 * CHANNEL + MAX_BATCH;
/// Longest wait for a clean DISCONNECT when the trigger stops.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest client id every MQTT 3.1.1 broker accepts, in bytes.
pub const MAX_CLIENT_ID: usize = 23;
/// Default broker port.
pub const DEFAULT_PORT: u16 = 1883;

/// An MQTT trigger's source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker URL, `mqtt://[user[:password]@]host[:port]` (default
    /// `mqtt://127.0.0.1:1883`; `tcp://` works too); user and password
    /// are percent-decoded.
    #[serde(default = "default_url")]
    pub url: String,
    /// Topic filter to subscribe to at QoS 1.
    pub topic: String,
    /// Protocol version (default `5`).
    #[serde(default)]
    pub protocol: MqttProtocol,
    /// Client id of the persistent session (default `wisp-<trigger>`; a
    /// longer name is shortened to 23 characters ending in a hash of the
    /// trigger name, as MQTT 3.1.1 guarantees only 23). Two triggers must
    /// not share one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum MqttProtocol {
    /// MQTT 3.1.1.
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.
    #[default]
    #[serde(rename = "5")]
    V5,
}

fn default_url() -> String {
    "mqtt://127.0.0.1:1883".into()
}

impl MqttConfig {
    /// Checks URL, topic filter and client id.
    pub fn validate(&self) -> Result<(), TriggerError> {
        check_url("url", &self.url, &["mqtt", "tcp"])?;
        Broker::parse(&self.url).map_err(|e| TriggerError::invalid("url", e))?;
        check_text("topic", &self.topic)?;
        let levels: Vec<&str> = self.topic.split('/').collect();
        for (i, level) in levels.iter().enumerate() {
            let bad = (level.contains('#') && (*level != "#" || i != levels.len() - 1))
                || (level.contains('+') && *level != "+");
            if bad {
                return Err(TriggerError::invalid(
                    "topic",
                    "`+` must fill a whole level and `#` must be the whole last level",
                ));
            }
        }
        if let Some(id) = &self.client_id {
            check_text("client_id", id)?;
            if id.len() > MAX_CLIENT_ID {
                return Err(TriggerError::invalid(
                    "client_id",
                    "must be at most 23 characters",
                ));
            }
        }
        Ok(())
    }

    /// The client id trigger `trigger` connects with: the configured one,
    /// else `wisp-<trigger>`, shortened when longer than 23 bytes to its
    /// first 14 and `-` and 8 hex digits of the SHA-256 of the trigger
    /// name, so that long names sharing a prefix do not share a session.
    pub fn client_id(&self, trigger: &str) -> String {
        if let Some(id) = &self.client_id {
            return id.clone();
        }
        let id = format!("wisp-{trigger}");
        if id.len() <= MAX_CLIENT_ID {
            return id;
        }
        let hash = hex::encode(&Sha256::digest(trigger.as_bytes())[..4]);
        let mut cut = MAX_CLIENT_ID - 1 - hash.len();
        while !id.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}-{hash}", &id[..cut])
    }

    /// Whether a message on `topic` is one this trigger's filter selects.
    fn selects(&self, topic: &str) -> bool {
        topic_matches(&self.topic, topic)
    }
}

/// Whether topic filter `filter` matches `topic` (MQTT rules: `+` is one
/// level, `#` the parent level and everything below, and a leading
/// wildcard does not match a topic starting with `$`). A shared
/// subscription's `$share/<group>/` prefix is skipped.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or(rest, |(_, f)| f),
        None => filter,
    };
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// Where to connect, from the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Broker {
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
}

impl Broker {
    /// Parses `mqtt://[user[:password]@]host[:port][/]`.
    fn parse(url: &str) -> Result<Broker, String> {
        let (_, rest) = url
            .split_once("://")
            .ok_or("must be a URL such as `mqtt://host:1883`")?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if !path.is_empty() && path != "/" {
            return Err("must not have a path or query: MQTT URLs are `mqtt://[user[:password]@]host[:port]`".into());
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let credentials = match userinfo {
            None => None,
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                Some((percent_decode(user)?, percent_decode(pass)?))
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or("has an IPv6 address without its closing `]`")?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err("has no host".into());
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("has an invalid port `{p}` (1 to 65535)"))?,
        };
        Ok(Broker {
            host: host.to_string(),
            port,
            credentials,
        })
    }
}

/// Decodes `%XX` escapes (user names and passwords in URLs).
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("has an invalid `%` escape in its user or password")?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "has a user or password that is not UTF-8".to_string())
}

/// Consumes an MQTT topic filter.
pub struct MqttSource {
    config: MqttConfig,
    client_id: String,
    /// The filter was subscribed in this source's lifetime: a reconnect
    /// that finds the session on the broker need not subscribe again.
    subscribed: AtomicBool,
}

impl MqttSource {
    /// A source for `config` (already validated) of trigger `trigger`.
    pub fn new(config: MqttConfig, trigger: &str) -> Self {
        MqttSource {
            client_id: config.client_id(trigger),
            config,
            subscribed: AtomicBool::new(false),
        }
    }

    /// One session on protocol `P`: a pump polls the connection and hands
    /// messages to the dispatcher through a bounded channel, so the
    /// connection keeps being polled (pings, acknowledgements) while
    /// events are being queued.
    async fn run<P: Protocol>(&self, ctx: &SourceContext) -> Result<(), SourceError> {
        let broker = Broker::parse(&self.config.url)
            .map_err(|e| SourceError::Config(format!("the MQTT url {e}")))?;
        let (client, mut eventloop) = P::open(&broker, &self.client_id);
        let (tx, mut rx) = mpsc::channel(CHANNEL);
        let connected = AtomicBool::new(false);
        let result = tokio::select! {
            e = self.pump::<P>(ctx, &client, &mut eventloop, tx, &connected) => Err(e),
            r = self.consume::<P>(ctx, &client, &mut rx) => r,
            () = ctx.cancelled() => Ok(()),
        };
        if ctx.is_cancelled() {
            if connected.load(Ordering::Relaxed) {
                disconnect::<P>(&client, &mut eventloop).await;
            }
            return Ok(());
        }
        result
    }

    /// Polls the connection until it fails; returns why.
    async fn pump<P: Protocol>(
        &self,
        ctx: &SourceContext,
        client: &P::Client,
        eventloop: &mut P::EventLoop,
        tx: mpsc::Sender<P::Publish>,
        connected: &AtomicBool,
    ) -> SourceError {
        let topic = &self.config.topic;
        loop {
            let incoming = match P::poll(eventloop).await {
                Ok(incoming) => incoming,
                Err(reason) if connected.load(Ordering::Relaxed) => {
                    return SourceError::Lost(reason);
                }
                Err(reason) => {
                    return SourceError::Connect {
                        what: redact_url(&self.config.url),
                        reason,
                    };
                }
            };
            match incoming {
                Incoming::ConnAck { session_present } => {
                    connected.store(true, Ordering::Relaxed);
                    if session_present && self.subscribed.load(Ordering::Relaxed) {
                        ctx.health.active();
                    } else if let Err(e) = P::subscribe(client, topic) {
                        return SourceError::Lost(format!("cannot subscribe to `{topic}`: {e}"));
                    }
                }
                Incoming::SubAck(Ok(())) => {
                    self.subscribed.store(true, Ordering::Relaxed);
                    ctx.health.active();
                }
                Incoming::SubAck(Err(code)) => {
                    return SourceError::Config(format!(
                        "the broker refused the subscription to `{topic}` ({code}); check the topic filter and the user's permissions"
                    ));
                }
                Incoming::Publish(publish) => {
                    if tx.send(publish).await.is_err() {
                        return SourceError::Lost("the dispatcher stopped".into());
                    }
                }
                Incoming::Disconnected | Incoming::Other => {}
            }
        }
    }

    /// Dispatches the messages the pump hands over, in batches, and
    /// acknowledges each after its batch is queued.
    async fn consume<P: Protocol>(
        &self,
        ctx: &SourceContext,
        client: &P::Client,
        rx: &mut mpsc::Receiver<P::Publish>,
    ) -> Result<(), SourceError> {
        let source = redact_url(&self.config.url);
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return Err(SourceError::Lost("the MQTT connection stopped".into()));
            }
            let mut deliveries = Vec::with_capacity(batch.len());
            for publish in &batch {
                let parts = P::parts(publish);
                if !self.config.selects(&parts.topic) {
                    // Left in the persistent session by an earlier topic.
                    tracing::debug!(trigger = %ctx.trigger.name, topic = %parts.topic, "MQTT message outside the topic filter dropped");
                    ctx.health.add_filtered(1);
                    continue;
                }
                let topic = parts.topic.clone();
                match message_event(parts.into_message(&source)) {
                    Ok(event) => deliveries.push(Delivery::new(event)),
                    Err(e) => {
                        // Cannot be rejected in MQTT: acknowledged below.
                        let error = format!(
                            "dropped a message on `{topic}` that is not a valid CloudEvent: {e}"
                        );
                        tracing::warn!(trigger = %ctx.trigger.name, "{error}");
                        ctx.health.add_failed(1);
                        ctx.health.error(error);
                    }
                }
            }
            if !deliveries.is_empty() {
                ctx.dispatch(deliveries).await?;
            }
            for publish in batch.drain(..) {
                P::ack(client, &publish)
                    .map_err(|e| SourceError::Lost(format!("cannot acknowledge a message: {e}")))?;
            }
        }
    }
}

#[async_trait]
impl Source for MqttSource {
    async fn session(&self, ctx: &SourceContext) -> Result<(), SourceError> {
        match self.config.protocol {
            MqttProtocol::V311 => self.run::<V311>(ctx).await,
            MqttProtocol::V5 => self.run::<V5>(ctx).await,
        }
    }
}

/// Sends DISCONNECT (after any acknowledgements still queued) and waits,
/// briefly, until it is written.
async fn disconnect<P: Protocol>(client: &P::Client, eventloop: &mut P::EventLoop) {
    if P::disconnect(client).is_err() {
        return;
    }
    let written = async {
        while let Ok(incoming) = P::poll(eventloop).await {
            if matches!(incoming, Incoming::Disconnected) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, written).await;
}

/// What the source needs from a poll, whichever the protocol.
enum Incoming<P> {
    /// Connected; whether the broker still had the session.
    ConnAck { session_present: bool },
    /// The subscription was granted, or refused with this reason.
    SubAck(Result<(), String>),
    /// A message.
    Publish(P),
    /// Our DISCONNECT was written.
    Disconnected,
    /// Anything else (pings, our acknowledgements).
    Other,
}

/// `Ok` when every SUBACK return code is a success, else the first
/// failure (with the broker's reason string, if any).
fn granted<C: std::fmt::Debug>(
    codes: &[C],
    success: fn(&C) -> bool,
    reason: Option<String>,
) -> Result<(), String> {
    match (codes.iter().find(|c| !success(c)), reason) {
        (None, _) => Ok(()),
        (Some(code), Some(reason)) => Err(format!("{code:?}: {reason}")),
        (Some(code), None) => Err(format!("{code:?}")),
    }
}

/// A received message's fields, whichever the protocol.
struct Parts {
    topic: String,
    headers: Vec<(String, String)>,
    payload: Bytes,
    qos: u8,
    retain: bool,
    dup: bool,
}

impl Parts {
    fn into_message(self, source: &str) -> Message {
        Message {
            ty: "wisp.mqtt.message".into(),
            source: source.to_string(),
            subject: Some(self.topic),
            id: None,
            headers: self.headers,
            body: self.payload,
            extensions: vec![
                ("mqttqos".into(), self.qos.to_string()),
                ("mqttretain".into(), self.retain.to_string()),
                ("mqttdup".into(), self.dup.to_string()),
            ],
        }
    }
}

/// The two client flavours of `rumqttc` behind one interface.
trait Protocol {
    type Client: Send + Sync;
    type EventLoop: Send;
    type Publish: Send + 'static;

    /// A client and its event loop for a persistent session with manual
    /// acknowledgements; nothing is sent until the loop is polled.
    fn open(broker: &Broker, client_id: &str) -> (Self::Client, Self::EventLoop);
    /// The next event; `Err` when the connection failed (the event loop
    /// is then dropped: the framework's backoff decides when to retry).
    fn poll(
        eventloop: &mut Self::EventLoop,
    ) -> impl Future<Output = Result<Incoming<Self::Publish>, String>> + Send;
    /// Queues a SUBSCRIBE of `topic` at QoS 1.
    fn subscribe(client: &Self::Client, topic: &str) -> Result<(), String>;
    /// Queues the PUBACK of `publish` (nothing for QoS 0).
    fn ack(client: &Self::Client, publish: &Self::Publish) -> Result<(), String>;
    /// Queues a DISCONNECT.
    fn disconnect(client: &Self::Client) -> Result<(), String>;
    /// The message's fields.
    fn parts(publish: &Self::Publish) -> Parts;
}

/// MQTT 3.1.1.
struct V311;

impl Protocol for V311 {
    type Client = rumqttc::AsyncClient;
    type EventLoop = rumqttc::EventLoop;
    type Publish = rumqttc::Publish;

    fn open(broker: &Broker, client_id: &str) -> (Self::Client, Self::EventLoop) {
        let mut options = rumqttc::MqttOptions::new(client_id, &broker.host, broker.port);
        options
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        if let Some((user, password)) = &broker.credentials {
            options.set_credentials(user, password);
        }
        rumqttc::AsyncClient::new(options, REQUESTS)
    }

    async fn poll(eventloop: &mut Self::EventLoop) -> Result<Incoming<Self::Publish>, String> {
        use rumqttc::{Event, Outgoing, Packet, SubscribeReasonCode};
        Ok(match eventloop.poll().await.map_err(|e| e.to_string())? {
            Event::Incoming(Packet::ConnAck(c)) => Incoming::ConnAck {
                session_present: c.session_present,
            },
            Event::Incoming(Packet::SubAck(s)) => Incoming::SubAck(granted(
                &s.return_codes,
                |c| matches!(c, SubscribeReasonCode::Success(_)),
                None,
            )),
            Event::Incoming(Packet::Publish(p)) => Incoming::Publish(p),
            Event::Outgoing(Outgoing::Disconnect) => Incoming::Disconnected,
            _ => Incoming::Other,
        })
    }

    fn subscribe(client: &Self::Client, topic: &str) -> Result<(), String> {
        client
            .try_subscribe(topic, rumqttc::QoS::AtLeastOnce)
            .map_err(|e| e.to_string())
    }

    fn ack(client: &Self::Client, publish: &Self::Publish) -> Result<(), String> {
        client.try_ack(publish).map_err(|e| e.to_string())
    }

    fn disconnect(client: &Self::Client) -> Result<(), String> {
        client.try_disconnect().map_err(|e| e.to_string())
    }

    fn parts(publish: &Self::Publish) -> Parts {
        Parts {
            topic: publish.topic.clone(),
            headers: Vec::new(),
            payload: publish.payload.clone(),
            qos: publish.qos as u8,
            retain: publish.retain,
            dup: publish.dup,
        }
    }
}

/// MQTT 5.
struct V5;

impl Protocol for V5 {
    type Client = rumqttc::v5::AsyncClient;
    type EventLoop = rumqttc::v5::EventLoop;
    type Publish = mqtt5::Publish;

    fn open(broker: &Broker, client_id: &str) -> (Self::Client, Self::EventLoop) {
        let mut options = rumqttc::v5::MqttOptions::new(client_id, &broker.host, broker.port);
        options
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_start(false)
            .set_session_expiry_interval(Some(SESSION_EXPIRY_SECS))
            .set_manual_acks(true)
            .set_receive_maximum(Some(RECEIVE_MAXIMUM))
            .set_max_packet_size(Some(MAX_PACKET_BYTES as u32));
        if let Some((user, password)) = &broker.credentials {
            options.set_credentials(user, password);
        }
        rumqttc::v5::AsyncClient::new(options, REQUESTS)
    }

    async fn poll(eventloop: &mut Self::EventLoop) -> Result<Incoming<Self::Publish>, String> {
        use mqtt5::{Packet, SubscribeReasonCode};
        use rumqttc::Outgoing;
        use rumqttc::v5::Event;
        Ok(match eventloop.poll().await.map_err(|e| e.to_string())? {
            Event::Incoming(Packet::ConnAck(c)) => Incoming::ConnAck {
                session_present: c.session_present,
            },
            Event::Incoming(Packet::SubAck(s)) => Incoming::SubAck(granted(
                &s.return_codes,
                |c| matches!(c, SubscribeReasonCode::Success(_)),
                s.properties.and_then(|p| p.reason_string),
            )),
            Event::Incoming(Packet::Publish(p)) => Incoming::Publish(p),
            Event::Outgoing(Outgoing::Disconnect) => Incoming::Disconnected,
            _ => Incoming::Other,
        })
    }

    fn subscribe(client: &Self::Client, topic: &str) -> Result<(), String> {
        let mut filter = mqtt5::Filter::new(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
        filter.retain_forward_rule = mqtt5::RetainForwardRule::OnNewSubscribe;
        client
            .try_subscribe_many([filter])
            .map_err(|e| e.to_string())
    }

    fn ack(client: &Self::Client, publish: &Self::Publish) -> Result<(), String> {
        client.try_ack(publish).map_err(|e| e.to_string())
    }

    fn disconnect(client: &Self::Client) -> Result<(), String> {
        client.try_disconnect().map_err(|e| e.to_string())
    }

    fn parts(publish: &Self::Publish) -> Parts {
        let mut headers = Vec::new();
        if let Some(props) = &publish.properties {
            // The content type property first: it wins over a user
            // property of the same name.
            if let Some(ct) = &props.content_type {
                headers.push(("content-type".to_string(), ct.clone()));
            }
            headers.extend(props.user_properties.iter().cloned());
        }
        Parts {
            topic: String::from_utf8_lossy(&publish.topic).into_owned(),
            headers,
            payload: publish.payload.clone(),
            qos: publish.qos as u8,
            retain: publish.retain,
            dup: publish.dup,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str, topic: &str) -> MqttConfig {
        MqttConfig {
            url: url.into(),
            topic: topic.into(),
            protocol: MqttProtocol::V5,
            client_id: None,
        }
    }

    #[test]
    fn urls_parse_with_credentials_ports_and_ipv6() {
        let b = Broker::parse("mqtt://user:p%40ss@broker.local:8883").unwrap();
        assert_eq!(b.host, "broker.local");
        assert_eq!(b.port, 8883);
        assert_eq!(b.credentials, Some(("user".into(), "p@ss".into())));
        let b = Broker::parse("tcp://[::1]/").unwrap();
        assert_eq!(
            (b.host.as_str(), b.port, b.credentials),
            ("::1", 1883, None)
        );
        assert!(Broker::parse("mqtt://host:99999").is_err());
        assert!(Broker::parse("mqtt://:1883").is_err());
        assert!(Broker::parse("mqtt://host/topic").is_err());
        assert!(Broker::parse("mqtt://u:%zz@host").is_err());
        assert_eq!(
            config("mqtt://host:x", "a").validate().unwrap_err().field(),
            "url"
        );
    }

    #[test]
    fn client_ids_fit_23_bytes_and_stay_distinct() {
        let c = config("mqtt://h", "a");
        assert_eq!(c.client_id("orders"), "wisp-orders");
        let a = c.client_id("orders-temperature-eu");
        let b = c.client_id("orders-temperature-us");
        assert_eq!(a.len(), 23);
        assert!(a.starts_with("wisp-orders-te"));
        assert_ne!(a, b);
        let mut own = c.clone();
        own.client_id = Some("mine".into());
        assert_eq!(own.client_id("orders-temperature-eu"), "mine");
    }

    #[test]
    fn topic_filters_match_like_the_broker() {
        assert!(topic_matches("a/+/temp", "a/room1/temp"));
        assert!(!topic_matches("a/+/temp", "a/room1/humidity"));
        assert!(!topic_matches("a/+/temp", "a/b/c/temp"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("#", "x/y"));
        assert!(!topic_matches("#", "$SYS/uptime"));
        assert!(topic_matches("$SYS/#", "$SYS/uptime"));
        assert!(topic_matches("$share/g/a/+", "a/b"));
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/b/c"));
    }

    #[test]
    fn messages_map_to_events_with_mqtt_extensions() {
        use wisp_events::AttributesReader;
        let parts = Parts {
            topic: "home/room1/temp".into(),
            headers: vec![
                ("x-site".into(), "berlin".into()),
                ("content-type".into(), "application/json".into()),
            ],
            payload: Bytes::from_static(br#"{"c":21}"#),
            qos: 1,
            retain: false,
            dup: true,
        };
        let e = message_event(parts.into_message("mqtt://u:***@h:1883")).unwrap();
        assert_eq!(e.ty(), "wisp.mqtt.message");
        assert_eq!(e.source().to_string(), "mqtt://u:***@h:1883");
        assert_eq!(e.subject(), Some("home/room1/temp"));
        assert_eq!(e.datacontenttype(), Some("application/json"));
        assert_eq!(e.extension("mqttqos").unwrap().to_string(), "1");
        assert_eq!(e.extension("mqttretain").unwrap().to_string(), "false");
        assert_eq!(e.extension("mqttdup").unwrap().to_string(), "true");
        assert!(
            e.extension("headers")
                .unwrap()
                .to_string()
                .contains("berlin")
        );
    }
}
