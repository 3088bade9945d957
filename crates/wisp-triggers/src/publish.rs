//! Publishing CloudEvents to brokers: the broker destinations of
//! asynchronous invocations (`on_success` / `on_failure` set to a
//! `nats://`, `amqp://`, `mqtt://` or `redis://` URL, parsed into a
//! [`wisp_core::Broker`]).
//!
//! Every event is sent in structured mode: the body is the event in the
//! JSON event format, content type `application/cloudevents+json`, set
//! where the protocol has a place for it:
//!
//! | protocol | how | confirmed by |
//! |---|---|---|
//! | NATS | core publish with the header `content-type` | a flush (the server's PONG after the message) |
//! | AMQP 0-9-1 | `basic.publish`, `mandatory`, persistent, `content_type` property | a publisher confirm (an unroutable message is returned and fails) |
//! | MQTT 3.1.1 | publish, QoS 1, not retained (no properties) | the PUBACK |
//! | Redis | `PUBLISH channel event` or `XADD key * content-type … data event` | the command's reply |
//!
//! A [`Publisher`] keeps one connection per broker connection URL (scheme,
//! credentials, host, port, AMQP virtual host or Redis database), at most
//! [`MAX_CACHED_CONNECTIONS`], closing the least recently used one beyond
//! that. A connection that fails or times out is dropped and the next
//! attempt connects again. Each attempt (connecting included) must be
//! confirmed within [`PUBLISH_TIMEOUT`]; a failed attempt is retried
//! [`PUBLISH_RETRIES`] times with exponential backoff and jitter from
//! [`RETRY_BACKOFF`], then the event is given up: logged as a warning and
//! counted in [`PublishStats::failed`]. Failures that cannot change (an
//! unroutable AMQP message, an event over the broker's size limit) are not
//! retried.

use bytes::Bytes;
use rand::Rng;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use wisp_core::{Broker, BrokerTarget, Protocol};
use wisp_events::{AttributesReader, Event, STRUCTURED_CONTENT_TYPE};

/// Most broker connections kept open at once.
pub const MAX_CACHED_CONNECTIONS: usize = 64;
/// Longest time for one publish attempt: connecting (if needed), sending
/// and the broker's confirmation.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries after a failed attempt before the event is given up.
pub const PUBLISH_RETRIES: u32 = 3;
/// Backoff before the first retry; it doubles for each next one (with
/// jitter: between half and all of it).
pub const RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// Most publishes in flight (including their retries) through
/// [`Publisher::publish_detached`]; past it the caller waits.
pub const MAX_IN_FLIGHT: usize = 256;
/// Largest encoded event published, in bytes.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;
/// Requests an MQTT connection buffers before the event loop takes them.
const MQTT_REQUESTS: usize = MAX_IN_FLIGHT;
/// MQTT keep-alive of publisher connections.
const MQTT_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Longest wait to close an evicted AMQP connection politely.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a [`Publisher`] behaves; [`PublishConfig::default`] has the
/// documented limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishConfig {
    /// Most connections cached.
    pub max_connections: usize,
    /// Longest time for one attempt.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub retries: u32,
    /// Backoff before the first retry.
    pub backoff: Duration,
    /// Most detached publishes in flight.
    pub max_in_flight: usize,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            max_connections: MAX_CACHED_CONNECTIONS,
            timeout: PUBLISH_TIMEOUT,
            retries: PUBLISH_RETRIES,
            backoff: RETRY_BACKOFF,
            max_in_flight: MAX_IN_FLIGHT,
        }
    }
}

/// Counters of a [`Publisher`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishStats {
    /// Events the broker confirmed.
    pub published: u64,
    /// Events given up (after their retries, or at once for a failure that
    /// cannot change).
    pub failed: u64,
    /// Retried attempts.
    pub retries: u64,
    /// Connections opened.
    pub connects: u64,
    /// Connections cached now.
    pub cached: usize,
}

/// Why an event was given up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("publishing to {destination} failed after {attempts} attempt(s): {reason}")]
pub struct PublishError {
    /// The destination, without its password.
    pub destination: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error.
    pub reason: String,
}

/// One failed attempt.
#[derive(Debug)]
struct Failure {
    reason: String,
    /// Another attempt cannot help.
    permanent: bool,
    /// The connection is suspect: drop it.
    evict: bool,
}

impl Failure {
    fn retry(reason: impl std::fmt::Display) -> Self {
        Failure {
            reason: reason.to_string(),
            permanent: false,
            evict: true,
        }
    }

    fn permanent(reason: impl std::fmt::Display) -> Self {
        Failure {
            reason: reason.to_string(),
            permanent: true,
            evict: false,
        }
    }
}

/// Publishes events to brokers over cached connections. Cloning is cheap
/// and shares the connections and counters.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    config: PublishConfig,
    cache: Mutex<Cache>,
    in_flight: Arc<Semaphore>,
    published: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    connects: AtomicU64,
}

/// The connection cache: a slot per connection URL, least recently used
/// evicted first.
#[derive(Default)]
struct Cache {
    slots: HashMap<String, Arc<Slot>>,
    tick: u64,
}

/// One broker's connection; its mutex makes connecting single-flight.
#[derive(Default)]
struct Slot {
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    used: AtomicU64,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Default for Publisher {
    fn default() -> Self {
        Publisher::new(PublishConfig::default())
    }
}

impl Publisher {
    /// A publisher with no connections yet.
    pub fn new(config: PublishConfig) -> Self {
        let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        Publisher {
            inner: Arc::new(Inner {
                config,
                cache: Mutex::new(Cache::default()),
                in_flight,
                published: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                retries: AtomicU64::new(0),
                connects: AtomicU64::new(0),
            }),
        }
    }

    /// The process-wide publisher with the default configuration.
    pub fn shared() -> Publisher {
        static SHARED: OnceLock<Publisher> = OnceLock::new();
        SHARED.get_or_init(Publisher::default).clone()
    }

    /// The counters.
    pub fn stats(&self) -> PublishStats {
        let i = &self.inner;
        PublishStats {
            published: i.published.load(Ordering::Relaxed),
            failed: i.failed.load(Ordering::Relaxed),
            retries: i.retries.load(Ordering::Relaxed),
            connects: i.connects.load(Ordering::Relaxed),
            cached: lock(&i.cache).slots.len(),
        }
    }

    /// Publishes `event` to `broker` in structured mode and waits for the
    /// broker's confirmation, retrying as configured. A give-up is logged
    /// as a warning and counted before it is returned.
    pub async fn publish(&self, broker: &Broker, event: &Event) -> Result<(), PublishError> {
        let payload = match serde_json::to_vec(&wisp_events::to_structured_json(event)) {
            Ok(p) => Bytes::from(p),
            Err(e) => {
                let failure = Failure::permanent(format!("the event does not encode: {e}"));
                return Err(self.give_up(broker, event, 0, failure));
            }
        };
        if payload.len() > MAX_EVENT_BYTES {
            let failure = Failure::permanent(format!(
                "the event is {} bytes, over the limit of {MAX_EVENT_BYTES}",
                payload.len()
            ));
            return Err(self.give_up(broker, event, 0, failure));
        }
        let config = &self.inner.config;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self.attempt(broker, &payload).await {
                Ok(()) => {
                    self.inner.published.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(f) => f,
            };
            if failure.permanent || attempt > config.retries {
                return Err(self.give_up(broker, event, attempt, failure));
            }
            tracing::debug!(destination = %broker.redacted_connection(), attempt, error = %failure.reason, "publish failed; retrying");
            self.inner.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff(config.backoff, attempt)).await;
        }
    }

    /// [`publish`](Self::publish) on a task of its own, so the caller does
    /// not wait for the broker. At most [`PublishConfig::max_in_flight`]
    /// run at once: beyond that this waits for one to finish.
    pub async fn publish_detached(&self, broker: Broker, event: Event) {
        let permit: OwnedSemaphorePermit = match self.inner.in_flight.clone().acquire_owned().await
        {
            Ok(p) => p,
            Err(_) => return,
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _ = this.publish(&broker, &event).await;
            drop(permit);
        });
    }

    fn give_up(&self, broker: &Broker, event: &Event, attempts: u32, f: Failure) -> PublishError {
        self.inner.failed.fetch_add(1, Ordering::Relaxed);
        let destination = wisp_core::Destination::Broker(broker.clone()).to_string();
        tracing::warn!(
            destination = %destination,
            event = %event.id(),
            attempts,
            error = %f.reason,
            "could not publish an event to its destination; giving up"
        );
        PublishError {
            destination,
            attempts,
            reason: f.reason,
        }
    }

    /// One attempt within the timeout; a connection that failed or timed
    /// out is dropped from the cache.
    async fn attempt(&self, broker: &Broker, payload: &Bytes) -> Result<(), Failure> {
        let slot = self.slot(&broker.connection_url);
        let timeout = self.inner.config.timeout;
        let mut used = None;
        let result = tokio::time::timeout(timeout, async {
            let conn = self.connection(&slot, broker).await?;
            used = Some(conn.clone());
            conn.publish(&broker.target, payload).await
        })
        .await
        .unwrap_or_else(|_| {
            Err(Failure::retry(format!(
                "no confirmation within {} ms",
                timeout.as_millis()
            )))
        });
        if let (Err(f), Some(conn)) = (&result, used)
            && f.evict
        {
            let mut current = slot.conn.lock().await;
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn)) {
                *current = None;
            }
        }
        result
    }

    /// The cache slot for `key`, evicting the least recently used slot
    /// when the cache is full.
    fn slot(&self, key: &str) -> Arc<Slot> {
        let mut cache = lock(&self.inner.cache);
        cache.tick += 1;
        let tick = cache.tick;
        if let Some(slot) = cache.slots.get(key) {
            slot.used.store(tick, Ordering::Relaxed);
            return slot.clone();
        }
        while cache.slots.len() >= self.inner.config.max_connections.max(1) {
            let oldest = cache
                .slots
                .iter()
                .min_by_key(|(_, s)| s.used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            match oldest {
                // Its connection closes once no publish uses it.
                Some(k) => drop(cache.slots.remove(&k)),
                None => break,
            }
        }
        let slot = Arc::new(Slot::default());
        slot.used.store(tick, Ordering::Relaxed);
        cache.slots.insert(key.to_string(), slot.clone());
        slot
    }

    /// The slot's connection, connecting if it has none or it is broken.
    async fn connection(&self, slot: &Slot, broker: &Broker) -> Result<Arc<Conn>, Failure> {
        let mut current = slot.conn.lock().await;
        if let Some(conn) = current.as_ref()
            && conn.usable()
        {
            return Ok(conn.clone());
        }
        *current = None;
        let conn = Arc::new(Conn::open(broker).await?);
        self.inner.connects.fetch_add(1, Ordering::Relaxed);
        *current = Some(conn.clone());
        Ok(conn)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The wait before retry number `attempt` (1-based): `base * 2^(attempt-1)`,
/// with jitter between half and all of it.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let ceiling = base.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

/// An open connection to one broker.
enum Conn {
    Nats(async_nats::Client),
    Amqp(AmqpConn),
    Mqtt(MqttConn),
    Redis(redis::aio::MultiplexedConnection),
}

impl Conn {
    async fn open(broker: &Broker) -> Result<Conn, Failure> {
        let shown = broker.redacted_connection();
        let failed =
            |e: &dyn std::fmt::Display| Failure::retry(format!("cannot connect to {shown}: {e}"));
        Ok(match broker.protocol {
            Protocol::Nats => {
                let options = match (&broker.username, &broker.password) {
                    (Some(user), Some(password)) => {
                        async_nats::ConnectOptions::with_user_and_password(
                            user.clone(),
                            password.clone(),
                        )
                    }
                    (Some(token), None) => async_nats::ConnectOptions::with_token(token.clone()),
                    _ => async_nats::ConnectOptions::new(),
                };
                let host = if broker.host.contains(':') {
                    format!("[{}]", broker.host)
                } else {
                    broker.host.clone()
                };
                let addr: async_nats::ServerAddr = format!("nats://{host}:{}", broker.port)
                    .parse()
                    .map_err(|e| failed(&e))?;
                let client = options
                    .name("wisp-destinations")
                    .connection_timeout(PUBLISH_TIMEOUT)
                    // A broken connection is replaced by the publisher.
                    .max_reconnects(1)
                    .connect(addr)
                    .await
                    .map_err(|e| failed(&e))?;
                Conn::Nats(client)
            }
            Protocol::Amqp => {
                let properties = lapin::ConnectionProperties::default()
                    .with_connection_name("wisp destinations".into());
                let connection = lapin::Connection::connect(&broker.connection_url, properties)
                    .await
                    .map_err(|e| failed(&e))?;
                // Owned before the channel opens, so a failure closes it.
                let mut conn = AmqpConn {
                    connection: Some(connection),
                    channel: None,
                };
                if let Some(c) = &conn.connection {
                    let channel = c.create_channel().await.map_err(|e| failed(&e))?;
                    channel
                        .confirm_select(lapin::options::ConfirmSelectOptions::default())
                        .await
                        .map_err(|e| failed(&e))?;
                    conn.channel = Some(channel);
                }
                Conn::Amqp(conn)
            }
            Protocol::Mqtt => Conn::Mqtt(MqttConn::open(broker).await.map_err(|e| failed(&e))?),
            Protocol::Redis => {
                let client =
                    redis::Client::open(broker.connection_url.as_str()).map_err(|e| failed(&e))?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(PUBLISH_TIMEOUT))
                    .set_response_timeout(Some(PUBLISH_TIMEOUT));
                let con = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| failed(&e))?;
                Conn::Redis(con)
            }
        })
    }

    /// Whether the connection still looks alive.
    fn usable(&self) -> bool {
        match self {
            Conn::Nats(c) => c.connection_state() != async_nats::connection::State::Disconnected,
            Conn::Amqp(a) => {
                a.connection
                    .as_ref()
                    .is_some_and(|c| c.status().connected())
                    && a.channel.as_ref().is_some_and(|c| c.status().connected())
            }
            Conn::Mqtt(m) => lock(&m.state).closed.is_none(),
            // Errors show on use; the connection is dropped then.
            Conn::Redis(_) => true,
        }
    }

    async fn publish(&self, target: &BrokerTarget, payload: &Bytes) -> Result<(), Failure> {
        match (self, target) {
            (Conn::Nats(client), BrokerTarget::NatsSubject(subject)) => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("content-type", STRUCTURED_CONTENT_TYPE);
                client
                    .publish_with_headers(subject.clone(), headers, payload.clone())
                    .await
                    .map_err(|e| match e.kind() {
                        async_nats::client::PublishErrorKind::MaxPayloadExceeded
                        | async_nats::client::PublishErrorKind::InvalidSubject => {
                            Failure::permanent(format!("NATS refused the message: {e}"))
                        }
                        _ => Failure::retry(format!("NATS publish failed: {e}")),
                    })?;
                client
                    .flush()
                    .await
                    .map_err(|e| Failure::retry(format!("NATS flush failed: {e}")))
            }
            (
                Conn::Amqp(a),
                BrokerTarget::Amqp {
                    exchange,
                    routing_key,
                },
            ) => a.publish(exchange, routing_key, payload).await,
            (Conn::Mqtt(m), BrokerTarget::MqttTopic(topic)) => m.publish(topic, payload).await,
            (Conn::Redis(con), BrokerTarget::RedisChannel(channel)) => {
                let mut con = con.clone();
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(payload.as_ref())
                    .query_async::<redis::Value>(&mut con)
                    .await
                    .map(drop)
                    .map_err(redis_failure)
            }
            (Conn::Redis(con), BrokerTarget::RedisStream(key)) => {
                let mut con = con.clone();
                redis::cmd("XADD")
                    .arg(key)
                    .arg("*")
                    .arg("content-type")
                    .arg(STRUCTURED_CONTENT_TYPE)
                    .arg("data")
                    .arg(payload.as_ref())
                    .query_async::<redis::Value>(&mut con)
                    .await
                    .map(drop)
                    .map_err(redis_failure)
            }
            _ => Err(Failure::permanent(
                "the destination's target does not match its protocol",
            )),
        }
    }
}

fn redis_failure(e: redis::RedisError) -> Failure {
    let connection =
        e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal();
    Failure {
        reason: format!("Redis refused the command: {e}"),
        permanent: false,
        evict: connection,
    }
}

/// An AMQP connection with one channel in confirm mode.
struct AmqpConn {
    connection: Option<lapin::Connection>,
    channel: Option<lapin::Channel>,
}

impl AmqpConn {
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &Bytes,
    ) -> Result<(), Failure> {
        use lapin::types::ShortString;
        let Some(channel) = &self.channel else {
            return Err(Failure::retry("the AMQP channel is closed"));
        };
        let short = |what: &str, v: &str| {
            ShortString::try_new(v)
                .map_err(|_| Failure::permanent(format!("the {what} is longer than 255 bytes")))
        };
        let properties = lapin::BasicProperties::default()
            .with_content_type(STRUCTURED_CONTENT_TYPE.into())
            .with_delivery_mode(2);
        let options = lapin::options::BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let confirm = channel
            .basic_publish(
                short("exchange", exchange)?,
                short("routing key", routing_key)?,
                options,
                payload,
                properties,
            )
            .await
            .map_err(|e| Failure::retry(format!("AMQP publish failed: {e}")))?
            .await
            .map_err(|e| Failure::retry(format!("AMQP publish was not confirmed: {e}")))?;
        match confirm {
            lapin::Confirmation::Ack(None) | lapin::Confirmation::NotRequested => Ok(()),
            lapin::Confirmation::Ack(Some(_)) => Err(Failure::permanent(format!(
                "unroutable: no queue is bound to exchange `{exchange}` with routing key `{routing_key}`"
            ))),
            lapin::Confirmation::Nack(_) => Err(Failure {
                reason: "the broker refused the message (nack)".into(),
                permanent: false,
                evict: false,
            }),
        }
    }
}

impl Drop for AmqpConn {
    fn drop(&mut self) {
        // Dropping a lapin connection leaves it open: close it politely.
        if let (Some(connection), Ok(runtime)) = (
            self.connection.take(),
            tokio::runtime::Handle::try_current(),
        ) {
            runtime.spawn(async move {
                let _ =
                    tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "OK".into())).await;
            });
        }
    }
}

/// An MQTT 3.1.1 connection whose event loop runs on a task, matching
/// PUBACKs to publishes: packet ids are assigned in request order, so the
/// waiters queue in that order until their packet id is known.
struct MqttConn {
    client: rumqttc::AsyncClient,
    state: Arc<Mutex<MqttState>>,
    task: tokio::task::JoinHandle<()>,
}

type Waiter = oneshot::Sender<Result<(), String>>;

#[derive(Default)]
struct MqttState {
    /// Publishes handed to the event loop, not yet sent, oldest first.
    unsent: VecDeque<Waiter>,
    /// Sent publishes by packet id, waiting for their PUBACK.
    sent: HashMap<u16, Waiter>,
    /// Why the connection ended, once it did.
    closed: Option<String>,
}

impl Drop for MqttConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MqttConn {
    async fn open(broker: &Broker) -> Result<MqttConn, String> {
        // Unique, and within the 23 bytes every 3.1.1 server accepts.
        let id = format!("wisp-pub-{:012x}", rand::rng().random::<u64>() >> 16);
        let mut options = rumqttc::MqttOptions::new(id, &broker.host, broker.port);
        options
            .set_keep_alive(MQTT_KEEP_ALIVE)
            .set_clean_session(true)
            .set_max_packet_size(MAX_EVENT_BYTES + 64 * 1024, MAX_EVENT_BYTES + 64 * 1024);
        if let Some(user) = &broker.username {
            options.set_credentials(user, broker.password.as_deref().unwrap_or(""));
        }
        let (client, eventloop) = rumqttc::AsyncClient::new(options, MQTT_REQUESTS);
        let state = Arc::new(Mutex::new(MqttState::default()));
        let (ready_tx, ready_rx) = oneshot::channel();
        // Built before waiting, so a cancelled connect stops the task.
        let conn = MqttConn {
            client,
            state: state.clone(),
            task: tokio::spawn(drive_mqtt(eventloop, state, ready_tx)),
        };
        match ready_rx.await {
            Ok(Ok(())) => Ok(conn),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the connection ended before the CONNACK".into()),
        }
    }

    async fn publish(&self, topic: &str, payload: &Bytes) -> Result<(), Failure> {
        let (tx, rx) = oneshot::channel();
        {
            // The state lock is held while the request is queued, so the
            // event loop sees the waiter before it can send the publish.
            let mut state = lock(&self.state);
            if let Some(reason) = &state.closed {
                return Err(Failure::retry(format!(
                    "the MQTT connection ended: {reason}"
                )));
            }
            self.client
                .try_publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.to_vec())
                .map_err(|e| Failure::retry(format!("MQTT publish failed: {e}")))?;
            state.unsent.push_back(tx);
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(Failure::retry(format!(
                "the MQTT connection ended before the PUBACK: {reason}"
            ))),
            Err(_) => Err(Failure::retry(
                "the MQTT connection ended before the PUBACK",
            )),
        }
    }
}

/// Runs an MQTT event loop until its connection fails: reports the
/// CONNACK (or the failure to connect) on `ready`, then completes waiters
/// as their PUBACKs arrive; when the connection ends every waiter fails.
async fn drive_mqtt(
    mut eventloop: rumqttc::EventLoop,
    state: Arc<Mutex<MqttState>>,
    ready: oneshot::Sender<Result<(), String>>,
) {
    use rumqttc::{Event, Outgoing, Packet};
    let mut ready = Some(ready);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut s = lock(&state);
                if let Some(w) = s.unsent.pop_front() {
                    s.sent.insert(pkid, w);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(w) = lock(&state).sent.remove(&ack.pkid) {
                    let _ = w.send(Ok(()));
                }
            }
            Ok(_) => {}
            Err(e) => {
                let reason = e.to_string();
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(reason.clone()));
                }
                let mut s = lock(&state);
                s.closed = Some(reason.clone());
                let mut waiters: Vec<Waiter> = s.unsent.drain(..).collect();
                waiters.extend(s.sent.drain().map(|(_, w)| w));
                drop(s);
                for w in waiters {
                    let _ = w.send(Err(reason.clone()));
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Pure parts, failure paths against closed and silent ports, and
    //! round trips through the real brokers the trigger tests use
    //! (`wisp_testkit::brokers`: NATS, RabbitMQ, Mosquitto and Redis).
    use super::*;
    use futures_util::StreamExt;
    use std::time::Instant;
    use wisp_core::Destination;
    use wisp_events::{EventBuilder, EventBuilderV10};
    use wisp_testkit::brokers;

    /// XRANGE's answer: entry ids with their field-value pairs.
    type StreamEntries = Vec<(String, Vec<(String, Vec<u8>)>)>;

    fn broker(url: &str) -> Broker {
        match url.parse::<Destination>() {
            Ok(Destination::Broker(b)) => b,
            other => panic!("{url}: {other:?}"),
        }
    }

    fn event(id: &str) -> Event {
        EventBuilderV10::new()
            .id(id)
            .source("/wisp/functions/test")
            .ty("wisp.invocation.succeeded")
            .data("application/json", serde_json::json!({"invocation_id": id}))
            .build()
            .unwrap()
    }

    fn unique(prefix: &str) -> String {
        format!("{prefix}-{:016x}", rand::rng().random::<u64>())
    }

    fn fast(timeout: Duration, retries: u32) -> Publisher {
        Publisher::new(PublishConfig {
            timeout,
            retries,
            backoff: Duration::from_millis(10),
            ..PublishConfig::default()
        })
    }

    /// Checks a published body: the event in the JSON event format.
    fn check_body(body: &[u8], id: &str) {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["specversion"], "1.0", "{v}");
        assert_eq!(v["id"], id, "{v}");
        assert_eq!(v["type"], "wisp.invocation.succeeded", "{v}");
        assert_eq!(v["data"]["invocation_id"], id, "{v}");
    }

    #[test]
    fn backoff_doubles_with_jitter() {
        let base = Duration::from_millis(200);
        for _ in 0..100 {
            let first = backoff(base, 1);
            assert!((100..=200).contains(&first.as_millis()), "{first:?}");
            let third = backoff(base, 3);
            assert!((400..=800).contains(&third.as_millis()), "{third:?}");
            assert!(backoff(base, u32::MAX) <= base * 65536);
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| backoff(base, 3)).collect();
        assert!(spread.len() > 5, "jitter spreads the waits");
    }

    #[test]
    fn the_cache_is_bounded_and_evicts_the_least_recently_used() {
        let p = Publisher::new(PublishConfig {
            max_connections: 2,
            ..PublishConfig::default()
        });
        let a = p.slot("a");
        p.slot("b");
        assert!(Arc::ptr_eq(&a, &p.slot("a")), "a cached slot is reused");
        p.slot("c");
        let keys = |p: &Publisher| {
            let mut k: Vec<String> = lock(&p.inner.cache).slots.keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&p), ["a", "c"], "b was the least recently used");
        p.slot("d");
        assert_eq!(keys(&p), ["c", "d"]);
        assert_eq!(p.stats().cached, 2);
        assert_eq!(PublishConfig::default().max_connections, 64);
    }

    #[tokio::test]
    async fn a_closed_port_is_retried_then_given_up_for_every_protocol() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let p = fast(Duration::from_secs(3), 3);
        let urls = [
            format!("nats://user:hunter2@127.0.0.1:{port}/a.b"),
            format!("amqp://guest:hunter2@127.0.0.1:{port}/%2f?exchange=&routing_key=q"),
            format!("mqtt://user:hunter2@127.0.0.1:{port}/a/b"),
            format!("redis://:hunter2@127.0.0.1:{port}/?channel=c"),
        ];
        for (n, url) in urls.iter().enumerate() {
            let e = p.publish(&broker(url), &event("e1")).await.unwrap_err();
            assert_eq!(e.attempts, 4, "{url}: one attempt and three retries: {e}");
            assert!(e.reason.contains("cannot connect"), "{url}: {e}");
            assert!(!e.to_string().contains("hunter2"), "{url}: {e}");
            assert!(e.destination.contains("***"), "{e}");
            let stats = p.stats();
            assert_eq!(stats.failed, n as u64 + 1);
            assert_eq!(stats.retries, 3 * (n as u64 + 1));
            assert_eq!((stats.published, stats.connects), (0, 0));
        }
    }

    #[tokio::test]
    async fn a_silent_broker_times_out_each_attempt() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts and holds connections, never answering.
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let p = fast(Duration::from_millis(300), 1);
        for url in [
            format!("nats://127.0.0.1:{port}/a.b"),
            format!("amqp://guest:guest@127.0.0.1:{port}/%2f?exchange=&routing_key=q"),
            format!("mqtt://127.0.0.1:{port}/a/b"),
            format!("redis://127.0.0.1:{port}/?stream=s"),
        ] {
            let started = Instant::now();
            let e = p.publish(&broker(&url), &event("e2")).await.unwrap_err();
            let took = started.elapsed();
            assert_eq!(e.attempts, 2, "{url}: {e}");
            assert!(
                e.reason.contains("no confirmation within 300 ms"),
                "{url}: {e}"
            );
            assert!(
                took >= Duration::from_millis(600) && took < Duration::from_secs(3),
                "{url}: {took:?}"
            );
        }
        assert_eq!(p.stats().failed, 4);
        holder.abort();
    }

    #[tokio::test]
    async fn oversized_events_are_refused_without_an_attempt() {
        let p = fast(Duration::from_secs(1), 3);
        let big = EventBuilderV10::new()
            .id("big")
            .source("/s")
            .ty("t")
            .data("text/plain", "x".repeat(MAX_EVENT_BYTES))
            .build()
            .unwrap();
        let e = p
            .publish(&broker("redis://127.0.0.1:1/?channel=c"), &big)
            .await
            .unwrap_err();
        assert_eq!(e.attempts, 0);
        assert!(e.reason.contains("over the limit"), "{e}");
        assert_eq!(p.stats().failed, 1);
    }

    #[tokio::test]
    async fn nats_gets_a_structured_event_with_its_content_type() {
        let subject = unique("wisp.test.publish").replace('-', ".");
        let client = async_nats::connect(brokers::nats_url()).await.unwrap();
        let mut sub = client.subscribe(subject.clone()).await.unwrap();
        client.flush().await.unwrap();
        let p = Publisher::default();
        let dest = broker(&format!("{}/{subject}", brokers::nats_url()));
        p.publish(&dest, &event("n1")).await.unwrap();
        p.publish(&dest, &event("n2")).await.unwrap();
        for id in ["n1", "n2"] {
            let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .unwrap()
                .unwrap();
            check_body(&msg.payload, id);
            let ct = msg.headers.as_ref().and_then(|h| h.get("content-type"));
            assert_eq!(ct.map(|v| v.as_str()), Some(STRUCTURED_CONTENT_TYPE));
        }
        let stats = p.stats();
        assert_eq!((stats.published, stats.connects, stats.cached), (2, 1, 1));
    }

    #[tokio::test]
    async fn amqp_is_confirmed_and_an_unroutable_event_fails_at_once() {
        use lapin::options::{BasicGetOptions, QueueDeclareOptions};
        let queue = unique("wisp-test-publish");
        let conn =
            lapin::Connection::connect(brokers::amqp_url(), lapin::ConnectionProperties::default())
                .await
                .unwrap();
        let channel = conn.create_channel().await.unwrap();
        let options = QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.as_str().into(), options, Default::default())
            .await
            .unwrap();
        let p = Publisher::default();
        let url = format!("{}?exchange=&routing_key={queue}", brokers::amqp_url());
        p.publish(&broker(&url), &event("a1")).await.unwrap();
        let got = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("the event is in the queue once confirmed");
        check_body(&got.delivery.data, "a1");
        assert_eq!(
            got.delivery
                .properties
                .content_type()
                .as_ref()
                .map(|s| s.as_str()),
            Some(STRUCTURED_CONTENT_TYPE)
        );
        assert_eq!(got.delivery.properties.delivery_mode(), &Some(2));

        let nowhere = format!(
            "{}?exchange=&routing_key={}",
            brokers::amqp_url(),
            unique("wisp-test-nowhere")
        );
        let e = p
            .publish(&broker(&nowhere), &event("a2"))
            .await
            .unwrap_err();
        assert_eq!(e.attempts, 1, "not retried: {e}");
        assert!(e.reason.contains("unroutable"), "{e}");
        let stats = p.stats();
        assert_eq!((stats.published, stats.failed, stats.connects), (1, 1, 1));
        let _ = conn.close(200, "OK".into()).await;
    }

    async fn next_mqtt(events: &mut rumqttc::EventLoop) -> rumqttc::Event {
        tokio::time::timeout(Duration::from_secs(5), events.poll())
            .await
            .expect("an MQTT event in time")
            .expect("the test subscriber stays connected")
    }

    #[tokio::test]
    async fn mqtt_waits_for_the_puback() {
        use rumqttc::{Event as MqttEvent, Packet, QoS};
        let topic = format!("wisp/test/{}", unique("publish"));
        let (host, port) = brokers::host_port(brokers::mqtt_url());
        let mut options = rumqttc::MqttOptions::new(unique("t"), host, port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = rumqttc::AsyncClient::new(options, 16);
        client.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
        loop {
            if let MqttEvent::Incoming(Packet::SubAck(_)) = next_mqtt(&mut events).await {
                break;
            }
        }
        let p = Publisher::default();
        let dest = broker(&format!("{}/{topic}", brokers::mqtt_url()));
        let publisher = p.clone();
        let sent = tokio::spawn(async move {
            for id in ["m1", "m2", "m3"] {
                publisher.publish(&dest, &event(id)).await.unwrap();
            }
        });
        let mut seen = Vec::new();
        while seen.len() < 3 {
            if let MqttEvent::Incoming(Packet::Publish(msg)) = next_mqtt(&mut events).await {
                let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
                check_body(&msg.payload, v["id"].as_str().unwrap());
                assert_eq!(msg.qos, QoS::AtLeastOnce);
                seen.push(v["id"].as_str().unwrap().to_string());
            }
        }
        sent.await.unwrap();
        assert_eq!(seen, ["m1", "m2", "m3"]);
        let stats = p.stats();
        assert_eq!((stats.published, stats.connects), (3, 1));
    }

    #[tokio::test]
    async fn redis_publishes_to_channels_and_streams() {
        let client = redis::Client::open(brokers::redis_url()).unwrap();
        let channel = unique("wisp-test-channel");
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe(&channel).await.unwrap();
        let p = Publisher::default();
        p.publish(
            &broker(&format!("{}/?channel={channel}", brokers::redis_url())),
            &event("r1"),
        )
        .await
        .unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(5), pubsub.on_message().next())
            .await
            .unwrap()
            .unwrap();
        check_body(msg.get_payload_bytes(), "r1");

        let key = unique("wisp-test-stream");
        p.publish(
            &broker(&format!("{}/?stream={key}", brokers::redis_url())),
            &event("r2"),
        )
        .await
        .unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let entries: StreamEntries = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(&mut con)
            .await
            .unwrap();
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(entries.len(), 1);
        let fields = &entries[0].1;
        assert_eq!(fields[0].0, "content-type");
        assert_eq!(fields[0].1, STRUCTURED_CONTENT_TYPE.as_bytes());
        assert_eq!(fields[1].0, "data");
        check_body(&fields[1].1, "r2");
        // Both destinations share one connection: same server, same database.
        let stats = p.stats();
        assert_eq!((stats.published, stats.connects, stats.cached), (2, 1, 1));
    }

    #[tokio::test]
    async fn a_dropped_connection_is_replaced() {
        // A proxy to Redis whose connections the test can cut.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let pipes: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accepted = pipes.clone();
        let proxy = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let pipe = tokio::spawn(async move {
                    let redis = brokers::host_port(brokers::redis_url());
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(redis).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                lock(&accepted).push(pipe);
            }
        });
        let key = unique("wisp-test-reconnect");
        let dest = broker(&format!("redis://127.0.0.1:{port}/?stream={key}"));
        let p = fast(Duration::from_secs(5), 3);
        p.publish(&dest, &event("c1")).await.unwrap();
        p.publish(&dest, &event("c2")).await.unwrap();
        assert_eq!(p.stats().connects, 1, "the connection is reused");
        for pipe in lock(&pipes).drain(..) {
            pipe.abort();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.publish(&dest, &event("c3")).await.unwrap();
        let stats = p.stats();
        assert_eq!(
            (stats.published, stats.failed, stats.connects),
            (3, 0, 2),
            "{stats:?}"
        );
        let client = redis::Client::open(brokers::redis_url()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let len: u64 = redis::cmd("XLEN")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(len, 3);
        proxy.abort();
    }
}
