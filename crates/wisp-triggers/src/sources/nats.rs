//! NATS: core subjects (optionally in a queue group) or a JetStream
//! durable pull consumer, optionally in ordered stream mode.
//!
//! # Session
//!
//! Connect to `url` within [`CONNECT_TIMEOUT`]. Credentials may be given in
//! the URL: `nats://user:password@host:4222` (user and password) or
//! `nats://token@host:4222` (a token); they never appear in events, errors
//! or the status. Then:
//!
//! - core NATS: subscribe to `subject` (wildcards `*` and `>` work), or
//!   queue-subscribe in `queue_group` so that the members share the
//!   messages;
//! - JetStream: look up the stream `jetstream.stream` (a missing stream is
//!   a [`SourceError::Config`] naming it, retried like any failure, as it
//!   may be created later), then get or create the durable pull consumer
//!   `jetstream.durable` (default `wisp-<trigger>`) with filter subject
//!   `subject`, explicit acks and ack wait `jetstream.ack_wait_ms`, and in
//!   ordered mode at most `max_events` unacknowledged messages. A new
//!   consumer starts at the beginning of the stream. An existing consumer
//!   keeps its other settings; its filter subject, ack wait and (ordered
//!   mode) ack-pending limit are updated when they differ. A push consumer
//!   or one without explicit acks is refused with a `Config` error.
//!
//! The trigger is active from then on. Setup must finish within
//! [`SETUP_TIMEOUT`]. The session ends with [`SourceError::Lost`] when the
//! connection drops (the server closed it, or left three pings sent
//! every [`PING_INTERVAL`] unanswered), when the subscription ends, or when a pull
//! request fails (for example, the consumer was deleted). The client's own
//! reconnection is limited to one attempt and the session does not wait
//! for it: the framework reconnects with backoff, so the trigger shows as
//! degraded, with the reason, until the server is back.
//!
//! # Event mapping
//!
//! A message that is already a CloudEvent is taken as it is: binary mode
//! with `ce-*` headers and the `content-type` header as `datacontenttype`,
//! or structured mode with content type `application/cloudevents+json`.
//! Any other message becomes:
//!
//! | attribute | value |
//! | --- | --- |
//! | `type` | `wisp.nats.message` |
//! | `source` | the URL without its password or token: `nats://127.0.0.1:4222` |
//! | `subject` | the NATS subject the message was published to |
//! | `id` | JetStream: `<stream>:<stream sequence>` (the same for every redelivery); core NATS: a random 32-digit hex id |
//! | `time` | when Wisp received it |
//! | `datacontenttype` | the `Content-Type` header, else `application/octet-stream` |
//! | data | the payload (JSON when the content type is JSON and the payload parses) |
//!
//! Either way the event carries these extensions:
//!
//! | extension | value |
//! | --- | --- |
//! | `headers` | the NATS headers other than `ce-*` and `content-type`, as a JSON object of strings (the last value of a repeated header); absent when there are none |
//! | `natssubject` | the NATS subject (also for CloudEvents, whose `subject` is their own) |
//! | `natsstream` | JetStream only: the stream name |
//! | `natsseq` | JetStream only: the message's stream sequence |
//! | `deliverycount` | JetStream only: this delivery's attempt number, from 1 |
//!
//! # Acknowledgement
//!
//! Messages are handled in groups, so that one durable commit covers many:
//! after one arrives, every message already available is taken without
//! waiting (up to [`MAX_BATCH`]), and their events go to Wisp's queue in
//! one call.
//!
//! Core NATS has no acknowledgements: delivery is at most once. Messages
//! published while the trigger is disconnected are never seen; a group
//! Wisp's queue refuses is lost (counted as failed, with the error) and
//! consumption goes on; if Wisp falls more than
//! [`SUBSCRIPTION_CAPACITY`] messages behind, the client drops messages
//! (each counted as failed, "slow consumer"). Use JetStream when messages
//! must not be lost.
//!
//! JetStream is at least once. A JetStream pull request waits up to
//! [`PULL_EXPIRES`] for the first message, then takes whatever else is
//! available at once. Then:
//!
//! - queued (or filtered out): every message of the group is acknowledged,
//!   the last one with a double ack the server confirms, so the group is
//!   settled before the next pull;
//! - refused: every message of the group is negatively acknowledged with a
//!   delay of [`NAK_DELAY`], so the server redelivers it, and the session
//!   ends with [`SourceError::Sink`]: the trigger shows as degraded and
//!   the framework retries with backoff instead of pulling more messages
//!   Wisp cannot take;
//! - a message that claims to be a CloudEvent but is not a valid one can
//!   never be queued: it is terminated (`+TERM`, never redelivered),
//!   counted as failed, and the trigger's last error says why.
//!
//! A message not yet settled when the session ends (cancelled, or the
//! connection lost) is redelivered by the server after the ack wait. Each
//! JetStream event is queued with the idempotency key
//! `nats/<trigger>/<stream hash>/<sequence>` (the hash covers the stream's
//! name and creation time), so a redelivery of a message that was queued
//! but whose acknowledgement was lost is accepted once within the
//! function's idempotency window.
//!
//! # Ordered mode
//!
//! With `jetstream.ordered`, the consumer allows at most `max_events`
//! unacknowledged messages, and batches are processed strictly one after
//! the other: a pull waits for the first message, a second pull waits up
//! to `max_wait_ms` for up to `max_events` in all, and the batch runs with
//! [`SourceContext::run_ordered`] in one partition named after the
//! trigger: the whole filtered stream is one ordered sequence. Its
//! messages are acknowledged after that returned `Ok` (succeeded, filtered
//! out, or dead-lettered as `on_failure` says). On `Err` they are
//! negatively acknowledged without delay and the session ends with
//! [`SourceError::Sink`]; as nothing else may be outstanding, the server
//! redelivers them, in order, before any later message. Should a session
//! end while holding a batch (cancelled, or the connection lost), the next
//! one first waits for the ack wait (plus a second) when the consumer
//! still has unacknowledged messages, so they are redelivered before
//! anything newer.

use crate::TriggerError;
use crate::sink::Delivery;
use crate::source::{Message, Source, SourceContext, SourceError, message_event};
use crate::spec::{OrderedConfig, check_text, check_url, redact_url};
use crate::status::Health;
use async_nats::jetstream::consumer::{AckPolicy, FromConsumer, PullConsumer, pull};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::ConsumerErrorKind;
use async_nats::jetstream::{self, AckKind, ErrorCode};
use async_nats::{Client, ConnectOptions, Event, HeaderMap, ServerAddr};
use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use utoipa::ToSchema;

/// The `type` of events built from plain messages.
pub const EVENT_TYPE: &str = "wisp.nats.message";
/// Longest wait for the TCP (and TLS) connection and the server's answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest time to connect, subscribe or set up the JetStream consumer.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the client pings the server; a third ping sent while two
/// are unanswered means the connection is lost.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
/// Most messages handed to Wisp's queue in one call.
pub const MAX_BATCH: usize = 256;
/// Most core NATS messages the client buffers while Wisp is busy; more are
/// dropped ("slow consumer").
pub const SUBSCRIPTION_CAPACITY: usize = 4096;
/// How long a JetStream pull request waits for a first message before it
/// is renewed.
pub const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// How long the server waits before redelivering messages Wisp's queue
/// refused.
pub const NAK_DELAY: Duration = Duration::from_secs(1);
/// Longest wait for the end of a pull that takes the messages available
/// (beyond the ordered mode's `max_wait_ms`).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the connection state is checked besides the client's events.
const STATE_POLL: Duration = Duration::from_secs(1);

/// A NATS trigger's source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL (default `nats://127.0.0.1:4222`).
    #[serde(default = "default_url")]
    pub url: String,
    /// Subject to subscribe to; wildcards `*` and `>` work. With
    /// JetStream, the consumer's filter subject.
    pub subject: String,
    /// Core NATS queue group: the members share the messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_group: Option<String>,
    /// Consume through a JetStream durable consumer instead of core NATS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<JetStreamConfig>,
}

/// A JetStream durable consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JetStreamConfig {
    /// The stream (it must exist).
    pub stream: String,
    /// The durable consumer's name (default `wisp-<trigger>`); created if
    /// missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable: Option<String>,
    /// How long the server waits for an ack before redelivering, in ms
    /// (1000 to 3600000, default 30000).
    #[serde(default = "default_ack_wait_ms")]
    pub ack_wait_ms: u64,
    /// Ordered stream mode: batches in stream order, acked after success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered: Option<OrderedConfig>,
}

fn default_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_ack_wait_ms() -> u64 {
    30_000
}

impl NatsConfig {
    /// Checks URL, subject, queue group and the JetStream settings.
    pub fn validate(&self) -> Result<(), TriggerError> {
        check_url("url", &self.url, &["nats", "tls"])?;
        check_text("subject", &self.subject)?;
        if self.subject.contains(' ') {
            return Err(TriggerError::invalid("subject", "must not contain spaces"));
        }
        if let Some(q) = &self.queue_group {
            check_text("queue_group", q)?;
            if self.jetstream.is_some() {
                return Err(TriggerError::invalid(
                    "queue_group",
                    "applies to core NATS only; JetStream consumers share work by their durable name",
                ));
            }
        }
        if let Some(js) = &self.jetstream {
            check_text("jetstream.stream", &js.stream)?;
            if let Some(d) = &js.durable {
                check_text("jetstream.durable", d)?;
            }
            if !(1000..=3_600_000).contains(&js.ack_wait_ms) {
                return Err(TriggerError::invalid(
                    "jetstream.ack_wait_ms",
                    "must be from 1000 to 3600000",
                ));
            }
            if let Some(o) = &js.ordered {
                o.validate().map_err(|e| e.under("jetstream.ordered"))?;
            }
        }
        Ok(())
    }
}

/// Consumes a NATS subject or JetStream consumer.
pub struct NatsSource {
    config: NatsConfig,
    trigger: String,
    /// Ordered mode: whether a batch may still be outstanding from an
    /// earlier session (pulled, but neither acknowledged nor negatively
    /// acknowledged). True until a session proves otherwise, as an earlier
    /// process may have stopped mid-batch.
    unsettled: AtomicBool,
}

impl NatsSource {
    /// A source for `config` (already validated) of trigger `trigger`.
    pub fn new(config: NatsConfig, trigger: &str) -> Self {
        NatsSource {
            config,
            trigger: trigger.to_string(),
            unsettled: AtomicBool::new(true),
        }
    }

    /// The server URL without credentials.
    fn broker(&self) -> String {
        redact_url(&self.config.url)
    }

    fn connect_error(&self, reason: impl std::fmt::Display) -> SourceError {
        SourceError::Connect {
            what: self.broker(),
            reason: reason.to_string(),
        }
    }

    /// Connects, with credentials from the URL, reporting the loss of the
    /// connection through [`Connection::lost`].
    async fn connect(&self, health: &Arc<Health>) -> Result<Connection, SourceError> {
        let addr: ServerAddr = self.config.url.parse().map_err(|e| {
            SourceError::Config(format!("`{}` is not a NATS server URL: {e}", self.broker()))
        })?;
        let options = match (addr.username(), addr.password()) {
            (Some(user), Some(password)) => ConnectOptions::with_user_and_password(
                percent_decode(user),
                percent_decode(password),
            ),
            (Some(token), None) => ConnectOptions::with_token(percent_decode(token)),
            _ => ConnectOptions::new(),
        };
        let (lost_tx, lost_rx) = watch::channel(None::<String>);
        let lost_tx = Arc::new(lost_tx);
        let health = health.clone();
        let client = options
            .name(format!("wisp-trigger-{}", self.trigger))
            .connection_timeout(CONNECT_TIMEOUT)
            .ping_interval(PING_INTERVAL)
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            // The framework reconnects, with backoff and the trigger shown
            // as degraded; one attempt bounds the work of a client whose
            // session already ended.
            .max_reconnects(1)
            .event_callback(move |event| {
                let lost = lost_tx.clone();
                let health = health.clone();
                async move { on_event(event, &lost, &health) }
            })
            .connect(addr)
            .await
            .map_err(|e| self.connect_error(e))?;
        Ok(Connection {
            client,
            lost: lost_rx,
        })
    }

    /// Core NATS: the subscription, sent to the server on return.
    async fn subscribe(&self, conn: &Connection) -> Result<async_nats::Subscriber, SourceError> {
        let subject = self.config.subject.clone();
        let subscribed = match &self.config.queue_group {
            Some(group) => conn.client.queue_subscribe(subject, group.clone()).await,
            None => conn.client.subscribe(subject).await,
        };
        let subscriber = subscribed.map_err(|e| match e.kind() {
            async_nats::SubscribeErrorKind::InvalidSubject
            | async_nats::SubscribeErrorKind::InvalidQueueName => SourceError::Config(format!(
                "cannot subscribe to `{}`{}: {e}",
                self.config.subject,
                self.config
                    .queue_group
                    .as_ref()
                    .map(|g| format!(" in queue group `{g}`"))
                    .unwrap_or_default()
            )),
            _ => SourceError::Lost(format!(
                "cannot subscribe to `{}`: {e}",
                self.config.subject
            )),
        })?;
        conn.client
            .flush()
            .await
            .map_err(|e| SourceError::Lost(format!("cannot subscribe: {e}")))?;
        Ok(subscriber)
    }

    /// Core NATS: consumes until cancelled or lost.
    async fn consume_core(
        &self,
        ctx: &SourceContext,
        conn: &Connection,
        mut subscriber: async_nats::Subscriber,
    ) -> Result<(), SourceError> {
        let source = self.broker();
        loop {
            let Some(first) = guard(ctx, conn, subscriber.next()).await? else {
                return Ok(());
            };
            let Some(first) = first else {
                return Err(SourceError::Lost(format!(
                    "the subscription to `{}` ended",
                    self.config.subject
                )));
            };
            let mut messages = vec![first];
            while messages.len() < MAX_BATCH {
                match subscriber.next().now_or_never() {
                    Some(Some(message)) => messages.push(message),
                    _ => break,
                }
            }
            let mut deliveries = Vec::with_capacity(messages.len());
            for message in messages {
                let subject = message.subject.to_string();
                let event = message_event(Message {
                    ty: EVENT_TYPE.into(),
                    source: source.clone(),
                    subject: Some(subject.clone()),
                    id: None,
                    headers: headers(message.headers.as_ref()),
                    body: message.payload,
                    extensions: vec![("natssubject".into(), subject.clone())],
                });
                match event {
                    Ok(event) => deliveries.push(Delivery::new(event)),
                    Err(e) => invalid(
                        ctx,
                        format!(
                            "a message on `{subject}` is not a valid CloudEvent and was dropped: {e}"
                        ),
                    ),
                }
            }
            if deliveries.is_empty() {
                continue;
            }
            // Core NATS cannot redeliver: a group Wisp's queue refused is
            // lost. `dispatch` counted it as failed and recorded the error;
            // the next group may be taken.
            if let Err(e) = ctx.dispatch(deliveries).await {
                tracing::warn!(trigger = %ctx.trigger.name, error = %e, "core NATS messages lost: Wisp's queue refused them");
            }
        }
    }

    /// JetStream: the stream and the durable pull consumer, created or
    /// updated as configured.
    async fn consumer(
        &self,
        conn: &Connection,
        js: &JetStreamConfig,
    ) -> Result<JsConsumer, SourceError> {
        let context = jetstream::new(conn.client.clone());
        let stream = context
            .get_stream(&js.stream)
            .await
            .map_err(|e| self.stream_error(&js.stream, e))?;
        let durable = js
            .durable
            .clone()
            .unwrap_or_else(|| format!("wisp-{}", self.trigger));
        let subject = self.config.subject.clone();
        let ack_wait = Duration::from_millis(js.ack_wait_ms);
        let max_ack_pending = js.ordered.as_ref().map(|o| i64::from(o.max_events));
        let fresh = pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: subject.clone(),
            ack_policy: AckPolicy::Explicit,
            ack_wait,
            max_ack_pending: max_ack_pending.unwrap_or_default(),
            ..Default::default()
        };
        let consumer_error = |e: &dyn std::fmt::Display, kind: Option<ConsumerErrorKind>| {
            let what = format!("consumer `{durable}` of JetStream stream `{}`", js.stream);
            match kind {
                Some(ConsumerErrorKind::InvalidConsumerType) => SourceError::Config(format!(
                    "{what} is a push consumer; Wisp needs a pull consumer: delete it or set another `jetstream.durable`"
                )),
                Some(ConsumerErrorKind::JetStream(_) | ConsumerErrorKind::InvalidName) => {
                    SourceError::Config(format!("cannot use {what}: {e}"))
                }
                _ => self.connect_error(format!("cannot set up {what}: {e}")),
            }
        };
        let mut consumer: PullConsumer = stream
            .get_or_create_consumer(&durable, fresh)
            .await
            .map_err(|e| consumer_error(&e, Some(e.kind())))?;
        let current = consumer.cached_info().config.clone();
        if current.ack_policy != AckPolicy::Explicit {
            return Err(SourceError::Config(format!(
                "consumer `{durable}` of JetStream stream `{}` does not use explicit acks; Wisp acknowledges each message after queueing it: delete the consumer or set another `jetstream.durable`",
                js.stream
            )));
        }
        let mut wanted = pull::Config::try_from_consumer_config(current)
            .map_err(|e| consumer_error(&e, None))?;
        let mut changed = false;
        if wanted.filter_subject != subject || !wanted.filter_subjects.is_empty() {
            wanted.filter_subject = subject;
            wanted.filter_subjects.clear();
            changed = true;
        }
        if wanted.ack_wait != ack_wait {
            wanted.ack_wait = ack_wait;
            changed = true;
        }
        if let Some(max) = max_ack_pending
            && wanted.max_ack_pending != max
        {
            wanted.max_ack_pending = max;
            changed = true;
        }
        if changed {
            consumer = stream.update_consumer(wanted).await.map_err(|e| {
                SourceError::Config(format!(
                    "cannot update consumer `{durable}` of JetStream stream `{}` to this trigger's settings (delete it, or set another `jetstream.durable`): {e}",
                    js.stream
                ))
            })?;
        }
        // Idempotency keys must not repeat when a stream is deleted and
        // created again with the same name: its creation time is part of
        // them.
        let mut hash = Sha256::new();
        hash.update(js.stream.as_bytes());
        hash.update([0]);
        hash.update(stream.cached_info().created.to_string().as_bytes());
        let hash = hex::encode(&hash.finalize()[..8]);
        let limits = &consumer.cached_info().config;
        let cap = |wait: Duration| {
            if limits.max_expires.is_zero() {
                wait
            } else {
                wait.min(limits.max_expires)
            }
        };
        let max_batch = usize::try_from(limits.max_batch)
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or(usize::MAX);
        let expires = cap(PULL_EXPIRES);
        let fill_wait = js
            .ordered
            .as_ref()
            .map(|o| cap(Duration::from_millis(o.max_wait_ms)));
        let max_events = js
            .ordered
            .as_ref()
            .map_or(MAX_BATCH, |o| o.max_events as usize);
        Ok(JsConsumer {
            consumer,
            key_prefix: format!("nats/{}/{hash}/", self.trigger),
            expires,
            fill_wait,
            max_batch,
            max_events,
            ack_wait,
        })
    }

    fn stream_error(&self, name: &str, e: jetstream::context::GetStreamError) -> SourceError {
        match e.kind() {
            GetStreamErrorKind::JetStream(err) if err.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                SourceError::Config(format!(
                    "JetStream stream `{name}` does not exist on {}: create it, or fix `jetstream.stream`",
                    self.broker()
                ))
            }
            GetStreamErrorKind::EmptyName | GetStreamErrorKind::InvalidStreamName => {
                SourceError::Config(format!(
                    "`{name}` is not a valid JetStream stream name (it must not contain spaces, `.`, `*` or `>`)"
                ))
            }
            GetStreamErrorKind::JetStream(err) => {
                SourceError::Config(format!("cannot use JetStream stream `{name}`: {err}"))
            }
            GetStreamErrorKind::Request => self.connect_error(format!(
                "cannot look up JetStream stream `{name}` (is JetStream enabled on the server?): {e}"
            )),
        }
    }

    /// Up to `max` messages: waits for a first one, then takes what else
    /// is available at once, or (ordered mode) arrives within
    /// `js.fill_wait`.
    async fn pull(
        &self,
        js: &JsConsumer,
        max: usize,
    ) -> Result<Vec<jetstream::Message>, SourceError> {
        let max = max.min(js.max_batch).max(1);
        let mut messages = Vec::with_capacity(max);
        let first = js
            .consumer
            .batch()
            .max_messages(1)
            .expires(js.expires)
            .messages()
            .await
            .map_err(pull_error)?;
        collect(first, &mut messages).await?;
        if messages.is_empty() || max == 1 {
            return Ok(messages);
        }
        let rest = match js.fill_wait {
            None => js.consumer.fetch().max_messages(max - 1).messages().await,
            Some(wait) => {
                js.consumer
                    .batch()
                    .max_messages(max - 1)
                    .expires(wait)
                    .messages()
                    .await
            }
        }
        .map_err(pull_error)?;
        // The server ends a pull that takes what is available once nothing
        // is left; should it not, the messages taken so far are enough
        // (any it sends later are redelivered after the ack wait).
        let limit = js.fill_wait.unwrap_or_default() + FETCH_TIMEOUT;
        if let Ok(collected) = tokio::time::timeout(limit, collect(rest, &mut messages)).await {
            collected?;
        }
        Ok(messages)
    }

    /// The deliveries of `pulled`, each with its message. A message that
    /// cannot become an event is terminated and counted as failed.
    async fn deliveries(
        &self,
        ctx: &SourceContext,
        js: &JsConsumer,
        pulled: Vec<jetstream::Message>,
    ) -> (Vec<jetstream::Message>, Vec<Delivery>) {
        let source = self.broker();
        let mut messages = Vec::with_capacity(pulled.len());
        let mut deliveries = Vec::with_capacity(pulled.len());
        for message in pulled {
            match js_delivery(&source, &js.key_prefix, &message) {
                Ok(delivery) => {
                    messages.push(message);
                    deliveries.push(delivery);
                }
                Err(error) => {
                    invalid(ctx, error);
                    if let Err(e) = message.ack_with(AckKind::Term).await {
                        tracing::warn!(trigger = %ctx.trigger.name, error = %e, "cannot terminate an invalid JetStream message; it will be redelivered");
                    }
                }
            }
        }
        (messages, deliveries)
    }

    /// JetStream: groups queued with [`SourceContext::dispatch`].
    async fn consume_durable(
        &self,
        ctx: &SourceContext,
        conn: &Connection,
        js: &JsConsumer,
    ) -> Result<(), SourceError> {
        loop {
            let Some(pulled) = guard(ctx, conn, self.pull(js, MAX_BATCH)).await? else {
                return Ok(());
            };
            let (messages, deliveries) = self.deliveries(ctx, js, pulled?).await;
            if messages.is_empty() {
                continue;
            }
            match ctx.dispatch(deliveries).await {
                Ok(()) => settle(&messages, AckKind::Ack).await?,
                Err(e) => {
                    if let Err(nak) = settle(&messages, AckKind::Nak(Some(NAK_DELAY))).await {
                        tracing::debug!(error = %nak, "cannot NAK; the server redelivers after the ack wait");
                    }
                    return Err(e.into());
                }
            }
        }
    }

    /// JetStream ordered mode: batches run with
    /// [`SourceContext::run_ordered`], strictly one after the other.
    async fn consume_ordered(
        &self,
        ctx: &SourceContext,
        conn: &Connection,
        js: &JsConsumer,
        ordered: &OrderedConfig,
    ) -> Result<(), SourceError> {
        if self.unsettled.load(Ordering::SeqCst) {
            let Some(info) = guard(ctx, conn, js.consumer.get_info()).await? else {
                return Ok(());
            };
            let info = info.map_err(|e| {
                SourceError::Lost(format!("cannot read the JetStream consumer's state: {e}"))
            })?;
            if info.num_ack_pending > 0 {
                // An earlier session ended holding a batch: let the server
                // take it back before pulling, so that it comes first.
                let wait = js.ack_wait + Duration::from_secs(1);
                tracing::info!(trigger = %ctx.trigger.name, pending = info.num_ack_pending, wait_ms = wait.as_millis() as u64, "waiting for unacknowledged messages of an earlier session to be redelivered");
                if guard(ctx, conn, tokio::time::sleep(wait)).await?.is_none() {
                    return Ok(());
                }
            }
            self.unsettled.store(false, Ordering::SeqCst);
        }
        loop {
            self.unsettled.store(true, Ordering::SeqCst);
            let Some(pulled) = guard(ctx, conn, self.pull(js, js.max_events)).await? else {
                return Ok(());
            };
            let (messages, deliveries) = self.deliveries(ctx, js, pulled?).await;
            if !messages.is_empty() {
                let events = deliveries.into_iter().map(|d| d.event).collect();
                match ctx.run_ordered(ordered, &self.trigger, events).await {
                    Ok(()) => settle(&messages, AckKind::Ack).await?,
                    Err(e) => {
                        // Redelivered at once, in order, before anything
                        // newer: nothing else is outstanding.
                        match settle(&messages, AckKind::Nak(None)).await {
                            Ok(()) => self.unsettled.store(false, Ordering::SeqCst),
                            Err(nak) => {
                                tracing::debug!(error = %nak, "cannot NAK; the server redelivers after the ack wait")
                            }
                        }
                        return Err(e.into());
                    }
                }
            }
            self.unsettled.store(false, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl Source for NatsSource {
    async fn session(&self, ctx: &SourceContext) -> Result<(), SourceError> {
        let setup = async {
            let conn = self.connect(&ctx.health).await?;
            let mode = match &self.config.jetstream {
                None => Mode::Core(self.subscribe(&conn).await?),
                Some(js) => Mode::JetStream(Box::new(self.consumer(&conn, js).await?)),
            };
            Ok::<_, SourceError>((conn, mode))
        };
        let (conn, mode) = match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
            Ok(ready) => ready?,
            Err(_) => {
                return Err(self.connect_error(format!(
                    "no answer within {}s while connecting and {}",
                    SETUP_TIMEOUT.as_secs(),
                    match &self.config.jetstream {
                        None => format!("subscribing to `{}`", self.config.subject),
                        Some(js) =>
                            format!("setting up a consumer of JetStream stream `{}`", js.stream),
                    }
                )));
            }
        };
        ctx.health.active();
        match mode {
            Mode::Core(subscriber) => self.consume_core(ctx, &conn, subscriber).await,
            Mode::JetStream(js) => match self
                .config
                .jetstream
                .as_ref()
                .and_then(|j| j.ordered.as_ref())
            {
                Some(ordered) => self.consume_ordered(ctx, &conn, &js, ordered).await,
                None => self.consume_durable(ctx, &conn, &js).await,
            },
        }
    }
}

/// What a session consumes.
enum Mode {
    Core(async_nats::Subscriber),
    JetStream(Box<JsConsumer>),
}

/// A JetStream consumer and how to pull from it.
struct JsConsumer {
    consumer: PullConsumer,
    /// `nats/<trigger>/<stream hash>/`, followed by the stream sequence.
    key_prefix: String,
    /// How long a pull waits for a first message.
    expires: Duration,
    /// Ordered mode: how long to wait to fill a batch.
    fill_wait: Option<Duration>,
    /// The consumer's largest pull (`usize::MAX` when unlimited).
    max_batch: usize,
    /// Most messages in one group or batch.
    max_events: usize,
    ack_wait: Duration,
}

/// A connection and the news of its loss.
struct Connection {
    client: Client,
    /// Why the connection was lost, once it was.
    lost: watch::Receiver<Option<String>>,
}

impl Connection {
    /// Resolves with the reason once the connection is lost.
    async fn lost(&self) -> String {
        let mut lost = self.lost.clone();
        loop {
            if let Some(reason) = lost.borrow_and_update().clone() {
                return reason;
            }
            if self.client.connection_state() == async_nats::connection::State::Disconnected {
                return "disconnected from the server".into();
            }
            tokio::select! {
                changed = lost.changed() => if changed.is_err() {
                    return "the NATS client stopped".into();
                },
                () = tokio::time::sleep(STATE_POLL) => {}
            }
        }
    }
}

/// Runs `work` unless the trigger is cancelled first (`Ok(None)`) or the
/// connection is lost (`Err`).
async fn guard<T>(
    ctx: &SourceContext,
    conn: &Connection,
    work: impl Future<Output = T>,
) -> Result<Option<T>, SourceError> {
    tokio::select! {
        biased;
        () = ctx.cancelled() => Ok(None),
        reason = conn.lost() => Err(SourceError::Lost(reason)),
        value = work => Ok(Some(value)),
    }
}

/// Mirrors the client's events into the connection's loss and the
/// trigger's status.
fn on_event(event: Event, lost: &watch::Sender<Option<String>>, health: &Health) {
    let mark_lost = |reason: &str| {
        lost.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason.to_string());
                true
            } else {
                false
            }
        });
    };
    match event {
        Event::Disconnected => mark_lost("disconnected from the server"),
        Event::Closed => mark_lost("the connection was closed"),
        Event::SlowConsumer(_) => {
            health.add_failed(1);
            health.error(format!(
                "slow consumer: the NATS client dropped a message, Wisp being more than {SUBSCRIPTION_CAPACITY} messages behind"
            ));
        }
        Event::ServerError(e) => health.error(format!("NATS server error: {e}")),
        Event::LameDuckMode => {
            tracing::info!("the NATS server is shutting down (lame duck mode)")
        }
        Event::ClientError(e) => tracing::debug!(error = %e, "NATS client error"),
        Event::Connected | Event::Draining => {}
    }
}

/// Counts a message that cannot become an event.
fn invalid(ctx: &SourceContext, error: String) {
    tracing::warn!(trigger = %ctx.trigger.name, %error, "invalid message");
    ctx.health.add_failed(1);
    ctx.health.error(error);
}

/// The delivery of a JetStream message.
fn js_delivery(
    source: &str,
    key_prefix: &str,
    message: &jetstream::Message,
) -> Result<Delivery, String> {
    let subject = message.subject.to_string();
    let info = message.info().map_err(|e| {
        format!("a message on `{subject}` carries no JetStream metadata and was dropped: {e}")
    })?;
    let (stream, seq) = (info.stream.to_string(), info.stream_sequence);
    let event = message_event(Message {
        ty: EVENT_TYPE.into(),
        source: source.into(),
        subject: Some(subject.clone()),
        id: Some(format!("{stream}:{seq}")),
        headers: headers(message.headers.as_ref()),
        body: message.payload.clone(),
        extensions: vec![
            ("natssubject".into(), subject.clone()),
            ("natsstream".into(), stream.clone()),
            ("natsseq".into(), seq.to_string()),
            ("deliverycount".into(), info.delivered.to_string()),
        ],
    })
    .map_err(|e| {
        format!(
            "message {seq} of JetStream stream `{stream}` on `{subject}` is not a valid CloudEvent and was terminated: {e}"
        )
    })?;
    let mut delivery = Delivery::new(event);
    delivery.idempotency_key = Some(format!("{key_prefix}{seq}"));
    Ok(delivery)
}

/// Acknowledges (or NAKs) `messages`, the last with a double ack the
/// server confirms.
async fn settle(messages: &[jetstream::Message], kind: AckKind) -> Result<(), SourceError> {
    let Some((last, rest)) = messages.split_last() else {
        return Ok(());
    };
    let failed = |e: async_nats::Error| {
        SourceError::Lost(format!(
            "cannot acknowledge JetStream messages (they will be redelivered): {e}"
        ))
    };
    for message in rest {
        message.ack_with(kind).await.map_err(failed)?;
    }
    last.double_ack_with(kind).await.map_err(failed)
}

/// Takes every message of a pull.
async fn collect(
    mut batch: pull::Batch,
    into: &mut Vec<jetstream::Message>,
) -> Result<(), SourceError> {
    while let Some(message) = batch.next().await {
        into.push(
            message.map_err(|e| SourceError::Lost(format!("the JetStream pull failed: {e}")))?,
        );
    }
    Ok(())
}

fn pull_error(e: pull::BatchError) -> SourceError {
    SourceError::Lost(format!("cannot pull from the JetStream consumer: {e}"))
}

/// The NATS headers as (name, value) pairs, sorted by name.
fn headers(map: Option<&HeaderMap>) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = map
        .into_iter()
        .flat_map(|h| h.iter())
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.as_str().to_string()))
        })
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs
}

/// `%XX` escapes decoded, as in the user information of a URL.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_percent_decoded() {
        assert_eq!(percent_decode("p%40ss%3Aword"), "p@ss:word");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("bad%zz%4"), "bad%zz%4");
    }

    #[test]
    fn headers_become_sorted_pairs() {
        let mut map = HeaderMap::new();
        map.insert("x-b", "2");
        map.insert("Content-Type", "application/json");
        map.append("x-a", "1");
        map.append("x-a", "3");
        assert_eq!(
            headers(Some(&map)),
            vec![
                ("Content-Type".to_string(), "application/json".to_string()),
                ("x-a".into(), "1".into()),
                ("x-a".into(), "3".into()),
                ("x-b".into(), "2".into()),
            ]
        );
        assert!(headers(None).is_empty());
    }

    #[test]
    fn config_validation() {
        let config: NatsConfig = serde_json::from_value(serde_json::json!({
            "subject": "orders.>",
            "jetstream": {"stream": "ORDERS", "ordered": {"max_events": 10}}
        }))
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.url, "nats://127.0.0.1:4222");
        let mut bad = config.clone();
        bad.queue_group = Some("g".into());
        assert_eq!(bad.validate().unwrap_err().field(), "queue_group");
        let mut bad = config;
        bad.jetstream.as_mut().unwrap().ack_wait_ms = 10;
        assert_eq!(bad.validate().unwrap_err().field(), "jetstream.ack_wait_ms");
    }
}
