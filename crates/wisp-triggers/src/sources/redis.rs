//! Redis: pub/sub channels, or a stream read through a consumer group,
//! optionally in ordered stream mode.
//!
//! # Pub/sub
//!
//! The trigger subscribes to `channels` (SUBSCRIBE, or PSUBSCRIBE with
//! `pattern`) on a RESP3 connection, so it needs Redis 6 or later. Each
//! message becomes one event:
//!
//! | attribute | value |
//! |---|---|
//! | `type` | `wisp.redis.message` |
//! | `source` | the server URL, without its password |
//! | `subject` | the channel |
//! | `id` | generated |
//! | data | the payload, `application/octet-stream` |
//! | `redispattern` | the pattern that matched (with `pattern` only) |
//!
//! Pub/sub has no acknowledgement, so delivery is at most once: a message
//! published while the trigger is disconnected is lost, and so is one that
//! Wisp's queue refused (counted as failed, its error recorded; the trigger
//! stays subscribed). Messages wait in a bounded buffer (1024) while earlier
//! ones are queued; when it is full, newer ones are dropped and counted as
//! failed, as Redis itself drops a subscriber that falls too far behind.
//! An idle connection is checked with PING every 10 s.
//!
//! # Streams
//!
//! With `stream`, the trigger reads `key` as consumer `consumer` (default
//! `wisp`) of group `group` (default `wisp-<trigger>`, created at `start`
//! with MKSTREAM when missing). Delivery is at least once:
//!
//! 1. When a session starts, and every minute after, entries pending for
//!    more than 60 s on other consumers of the group (crashed ones) are
//!    claimed (XAUTOCLAIM), and this consumer's pending entries are
//!    processed again, oldest first (XREADGROUP from `0`).
//! 2. Then new entries are read (XREADGROUP `>`), up to 256 at a time,
//!    blocking at most 1 s per read.
//! 3. Each batch is queued with one call to the queue (one durable commit)
//!    and its entries are acknowledged (XACK) only after that succeeded.
//!    If the queue refuses it, nothing is acknowledged and the session ends
//!    with the error; the next one processes the pending entries again.
//!
//! Every queued entry carries the idempotency key
//! `redis/<trigger>/<key>/<entry id>`, so an entry queued again (its
//! acknowledgement was lost) is accepted once within the function's
//! idempotency window. Several Wisp servers sharing a group need distinct
//! `consumer` names.
//!
//! In ordered mode a batch holds up to `max_events` entries, waiting up to
//! `max_wait_ms` after the first one arrived to fill it, and runs in stream
//! order as one batch of partition `key` (the stream key). Its entries are
//! acknowledged once the batch succeeded or is in the dead-letter queue
//! (see [`SourceContext::run_ordered`]); the next batch starts only then.
//!
//! An entry becomes one event:
//!
//! - The data is the value of field `data`, with the content type of field
//!   `content-type` (default `application/octet-stream`). An entry without
//!   `data` carries its other fields (except `ce-*` and `content-type`) as
//!   the data: a JSON object of strings, `application/json`.
//! - Fields `ce-*` make the entry a binary-mode CloudEvent, taken as it is
//!   (`ce-id`, `ce-source`, `ce-type` and `ce-specversion` are required).
//!   Otherwise the event has `type` `wisp.redis.stream.entry`, `source` the
//!   server URL without its password, `subject` the stream key and `id`
//!   `<key>/<entry id>`, the same on every redelivery.
//! - With `data`, the other fields go to the `headers` extension (a JSON
//!   object).
//! - Extensions: `redisstream` (the key), `redisid` (the entry id) and
//!   `deliverycount` (1 for a new entry; the count XPENDING reports for a
//!   pending entry processed again).
//! - Field names, and values other than `data`, are read as UTF-8, invalid
//!   bytes replaced.
//!
//! An entry that claims to be a CloudEvent but is not a valid one is
//! counted as failed, recorded as the trigger's last error and acknowledged
//! (it would fail on every redelivery). An entry deleted (XDEL) while
//! pending is acknowledged without an event.

use crate::TriggerError;
use crate::sink::Delivery;
use crate::source::{Message, Source, SourceContext, SourceError, message_event};
use crate::spec::{OrderedConfig, check_text, check_url, redact_url};
use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamPendingCountReply;
use redis::{
    AsyncCommands, AsyncConnectionConfig, Client, ErrorKind, IntoConnectionInfo, ProtocolVersion,
    PushInfo, PushKind, RedisError, Value,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use wisp_events::Event;

/// A Redis trigger's source: `channels` or `stream`, not both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Server URL (default `redis://127.0.0.1:6379`).
    #[serde(default = "default_url")]
    pub url: String,
    /// Pub/sub channels; glob patterns (`orders.*`) when `pattern` is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Subscribe to `channels` as patterns (PSUBSCRIBE).
    #[serde(default)]
    pub pattern: bool,
    /// A stream read through a consumer group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<RedisStreamConfig>,
}

/// A Redis stream consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamConfig {
    /// The stream key.
    pub key: String,
    /// Consumer group (default `wisp-<trigger>`), created with MKSTREAM if missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Consumer name within the group (default `wisp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// Where a new group starts: `$` (new entries, the default) or `0`
    /// (the whole stream).
    #[serde(default = "default_start")]
    pub start: String,
    /// Ordered stream mode: batches in stream order, acked after success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered: Option<OrderedConfig>,
}

fn default_url() -> String {
    "redis://127.0.0.1:6379".into()
}
fn default_start() -> String {
    "$".into()
}

/// Most channels in one trigger.
pub const MAX_CHANNELS: usize = 100;

impl RedisConfig {
    /// Checks URL, channels or stream.
    pub fn validate(&self) -> Result<(), TriggerError> {
        check_url("url", &self.url, &["redis", "rediss"])?;
        match (&self.stream, self.channels.is_empty()) {
            (Some(_), false) => {
                return Err(TriggerError::invalid(
                    "channels",
                    "give `channels` or `stream`, not both",
                ));
            }
            (None, true) => {
                return Err(TriggerError::invalid(
                    "channels",
                    "give `channels` (pub/sub) or `stream`",
                ));
            }
            _ => {}
        }
        if self.channels.len() > MAX_CHANNELS {
            return Err(TriggerError::invalid(
                "channels",
                format!("at most {MAX_CHANNELS}"),
            ));
        }
        for (i, c) in self.channels.iter().enumerate() {
            check_text(&format!("channels[{i}]"), c)?;
        }
        if let Some(s) = &self.stream {
            check_text("stream.key", &s.key)?;
            if let Some(g) = &s.group {
                check_text("stream.group", g)?;
            }
            if let Some(c) = &s.consumer {
                check_text("stream.consumer", c)?;
            }
            if s.start != "$" && s.start != "0" {
                return Err(TriggerError::invalid("stream.start", "must be `$` or `0`"));
            }
            if let Some(o) = &s.ordered {
                o.validate().map_err(|e| e.under("stream.ordered"))?;
            }
        }
        Ok(())
    }
}

/// Event `type` of pub/sub messages.
pub const MESSAGE_TYPE: &str = "wisp.redis.message";
/// Event `type` of stream entries that are not CloudEvents themselves.
pub const ENTRY_TYPE: &str = "wisp.redis.stream.entry";
/// Longest wait to connect to the server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a reply; blocking reads wait at most [`BLOCK_MS`] more.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a blocking stream read waits, in milliseconds.
const BLOCK_MS: u64 = 1000;
/// Most stream entries in one batch outside ordered mode.
pub const STREAM_BATCH: usize = 256;
/// Entries pending this long (ms) on another consumer are claimed.
pub const CLAIM_IDLE_MS: u64 = 60_000;
/// How often a session claims and reprocesses pending entries.
const CLAIM_EVERY: Duration = Duration::from_secs(60);
/// Most XAUTOCLAIM rounds in one pass (each claims up to [`STREAM_BATCH`]).
const MAX_CLAIM_ROUNDS: usize = 1000;
/// Pub/sub messages buffered while earlier ones are being queued.
pub const PUBSUB_BUFFER: usize = 1024;
/// Most pub/sub messages queued together.
const PUBSUB_BATCH: usize = 256;
/// How often the pub/sub connection is checked.
const PING_EVERY: Duration = Duration::from_secs(10);

/// Consumes Redis channels or a stream.
pub struct RedisSource {
    config: RedisConfig,
    trigger: String,
}

impl RedisSource {
    /// A source for `config` (already validated) of trigger `trigger`.
    pub fn new(config: RedisConfig, trigger: &str) -> Self {
        RedisSource {
            config,
            trigger: trigger.to_string(),
        }
    }

    /// The server, without credentials, for errors and event sources.
    fn server(&self) -> String {
        redact_url(&self.config.url)
    }

    fn connect_error(&self, e: &RedisError) -> SourceError {
        let mut reason = e.to_string();
        if e.kind() == ErrorKind::RESP3NotSupported {
            reason.push_str(" (Redis pub/sub triggers need Redis 6 or later)");
        }
        SourceError::Connect {
            what: self.server(),
            reason,
        }
    }

    /// A client for the configured URL, speaking RESP3 if `resp3`.
    fn client(&self, resp3: bool) -> Result<Client, SourceError> {
        let mut info = self
            .config
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| self.connect_error(&e))?;
        if resp3 {
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            info = info.set_redis_settings(settings);
        }
        Client::open(info).map_err(|e| self.connect_error(&e))
    }

    fn connection_config() -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
    }

    async fn consume(&self, ctx: &SourceContext) -> Result<(), SourceError> {
        match &self.config.stream {
            Some(stream) => {
                let client = self.client(false)?;
                let con = client
                    .get_multiplexed_async_connection_with_config(&Self::connection_config())
                    .await
                    .map_err(|e| self.connect_error(&e))?;
                let mut session = StreamSession {
                    ctx,
                    con,
                    config: stream,
                    group: stream
                        .group
                        .clone()
                        .unwrap_or_else(|| format!("wisp-{}", self.trigger)),
                    consumer: stream.consumer.clone().unwrap_or_else(|| "wisp".into()),
                    source: self.server(),
                };
                session.run().await
            }
            None => self.pubsub(ctx).await,
        }
    }

    async fn pubsub(&self, ctx: &SourceContext) -> Result<(), SourceError> {
        let client = self.client(true)?;
        let (tx, mut rx) = mpsc::channel::<PushInfo>(PUBSUB_BUFFER);
        let dropped = Arc::new(AtomicU64::new(0));
        let closed = CancellationToken::new();
        // Called by the connection's reader for each push; must not block.
        let push = {
            let (dropped, closed) = (dropped.clone(), closed.clone());
            move |info: PushInfo| -> Result<(), ()> {
                match info.kind {
                    PushKind::Message | PushKind::PMessage | PushKind::SMessage => {
                        match tx.try_send(info) {
                            Ok(()) => Ok(()),
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                dropped.fetch_add(1, Ordering::Relaxed);
                                Ok(())
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
                        }
                    }
                    PushKind::Disconnection => {
                        closed.cancel();
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }
        };
        let config = Self::connection_config().set_push_sender(push);
        let mut con = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.connect_error(&e))?;
        let subscribed = if self.config.pattern {
            con.psubscribe(&self.config.channels).await
        } else {
            con.subscribe(&self.config.channels).await
        };
        subscribed.map_err(|e| self.connect_error(&e))?;
        ctx.health.active();

        let source = self.server();
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                first = rx.recv() => {
                    let Some(first) = first else {
                        return Err(SourceError::Lost("the connection to the server closed".into()));
                    };
                    let mut batch = vec![first];
                    while batch.len() < PUBSUB_BATCH {
                        match rx.try_recv() {
                            Ok(info) => batch.push(info),
                            Err(_) => break,
                        }
                    }
                    let deliveries = batch
                        .into_iter()
                        .filter_map(|info| pubsub_event(ctx, &source, info))
                        .map(Delivery::new)
                        .collect();
                    // At most once: a refused batch is counted and recorded
                    // by `dispatch` and cannot be redelivered.
                    if let Err(e) = ctx.dispatch(deliveries).await {
                        tracing::warn!(trigger = %ctx.trigger.name, error = %e, "Redis pub/sub messages lost: the queue refused them");
                    }
                }
                () = closed.cancelled() => {
                    return Err(SourceError::Lost("the server closed the connection".into()));
                }
                _ = ping.tick() => {
                    redis::cmd("PING")
                        .query_async::<()>(&mut con)
                        .await
                        .map_err(|e| SourceError::Lost(format!("the server did not answer PING: {e}")))?;
                }
            }
            let n = dropped.swap(0, Ordering::Relaxed);
            if n > 0 {
                ctx.health.add_failed(n);
                ctx.health.error(format!(
                    "dropped {n} pub/sub messages: they arrived faster than they could be queued (buffer of {PUBSUB_BUFFER})"
                ));
            }
        }
    }
}

#[async_trait]
impl Source for RedisSource {
    async fn session(&self, ctx: &SourceContext) -> Result<(), SourceError> {
        tokio::select! {
            r = self.consume(ctx) => r,
            () = ctx.cancelled() => Ok(()),
        }
    }
}

/// The event for one pub/sub message; `None` (counted as failed) if it
/// cannot be one.
fn pubsub_event(ctx: &SourceContext, source: &str, info: PushInfo) -> Option<Event> {
    let msg = redis::Msg::from_push_info(info)?;
    let channel = lossy(msg.get_channel::<Vec<u8>>().unwrap_or_default());
    let mut extensions = Vec::new();
    if let Ok(Some(pattern)) = msg.get_pattern::<Option<Vec<u8>>>() {
        extensions.push(("redispattern".to_string(), lossy(pattern)));
    }
    let message = Message {
        ty: MESSAGE_TYPE.into(),
        source: source.into(),
        subject: Some(channel.clone()),
        id: None,
        headers: Vec::new(),
        body: Bytes::copy_from_slice(msg.get_payload_bytes()),
        extensions,
    };
    match message_event(message) {
        Ok(event) => Some(event),
        Err(e) => {
            ctx.health.add_failed(1);
            ctx.health.error(format!(
                "a message on channel `{channel}` is not a valid event and was dropped: {e}"
            ));
            None
        }
    }
}

/// One consumer's session on a stream.
struct StreamSession<'a> {
    ctx: &'a SourceContext,
    con: MultiplexedConnection,
    config: &'a RedisStreamConfig,
    group: String,
    consumer: String,
    /// The event `source`: the server URL without credentials.
    source: String,
}

impl StreamSession<'_> {
    async fn run(&mut self) -> Result<(), SourceError> {
        self.create_group().await?;
        self.ctx.health.active();
        let mut next_claim = Instant::now();
        loop {
            if Instant::now() >= next_claim {
                self.claim_idle().await?;
                self.process_pending().await?;
                next_claim = Instant::now() + CLAIM_EVERY;
            }
            let entries = self.read_new().await?;
            if !entries.is_empty() {
                self.process(entries, None).await?;
            }
        }
    }

    /// Most entries in one batch.
    fn batch_size(&self) -> usize {
        match &self.config.ordered {
            Some(o) => o.max_events as usize,
            None => STREAM_BATCH,
        }
    }

    /// An error from `command`: the server refused it (a configuration
    /// problem, such as a key that is not a stream) or the connection failed.
    fn command_error(&self, command: &str, e: RedisError) -> SourceError {
        if e.code().is_some() {
            SourceError::Config(format!(
                "Redis refused {command} on stream `{}` (group `{}`): {e}",
                self.config.key, self.group
            ))
        } else {
            SourceError::Lost(format!("{command} failed: {e}"))
        }
    }

    async fn create_group(&mut self) -> Result<(), SourceError> {
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.config.key)
            .arg(&self.group)
            .arg(&self.config.start)
            .arg("MKSTREAM")
            .query_async::<()>(&mut self.con)
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(self.command_error("XGROUP CREATE", e)),
        }
    }

    /// Takes over entries pending too long on other consumers (XAUTOCLAIM
    /// JUSTID: ownership only); [`Self::process_pending`] then delivers them.
    async fn claim_idle(&mut self) -> Result<(), SourceError> {
        let mut start = "0-0".to_string();
        let mut claimed = 0;
        for _ in 0..MAX_CLAIM_ROUNDS {
            let reply = redis::cmd("XAUTOCLAIM")
                .arg(&self.config.key)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(CLAIM_IDLE_MS)
                .arg(&start)
                .arg("COUNT")
                .arg(STREAM_BATCH)
                .arg("JUSTID")
                .query_async::<Value>(&mut self.con)
                .await;
            let reply = match reply {
                Ok(r) => r,
                Err(e) if e.detail().is_some_and(|d| d.contains("unknown command")) => {
                    // Before Redis 6.2: only this consumer's own pending
                    // entries are processed again.
                    tracing::warn!(trigger = %self.ctx.trigger.name, "Redis has no XAUTOCLAIM (6.2 or later); entries pending on other consumers are not claimed");
                    return Ok(());
                }
                Err(e) => return Err(self.command_error("XAUTOCLAIM", e)),
            };
            let (next, n) = parse_autoclaim(reply)
                .map_err(|e| SourceError::Lost(format!("unexpected reply to XAUTOCLAIM: {e}")))?;
            claimed += n;
            if next == "0-0" {
                break;
            }
            start = next;
        }
        if claimed > 0 {
            tracing::info!(trigger = %self.ctx.trigger.name, claimed, "claimed Redis stream entries pending on other consumers");
        }
        Ok(())
    }

    /// Processes this consumer's pending entries again, oldest first.
    async fn process_pending(&mut self) -> Result<(), SourceError> {
        let mut cursor = "0".to_string();
        loop {
            let entries = self.read_group(&cursor, self.batch_size(), None).await?;
            let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
                return Ok(());
            };
            cursor = last.id.clone();
            let pending: StreamPendingCountReply = self
                .con
                .xpending_consumer_count(
                    &self.config.key,
                    &self.group,
                    &first.id,
                    &last.id,
                    entries.len(),
                    &self.consumer,
                )
                .await
                .map_err(|e| self.command_error("XPENDING", e))?;
            let counts = pending
                .ids
                .into_iter()
                .map(|p| (p.id, p.times_delivered))
                .collect();
            self.process(entries, Some(&counts)).await?;
        }
    }

    /// New entries: what one read returns, or in ordered mode, up to
    /// `max_events` read within `max_wait_ms` of the first.
    async fn read_new(&mut self) -> Result<Vec<Entry>, SourceError> {
        let max = self.batch_size();
        let mut batch = self.read_group(">", max, Some(BLOCK_MS)).await?;
        if let Some(o) = self.config.ordered.as_ref()
            && !batch.is_empty()
        {
            let deadline = Instant::now() + Duration::from_millis(o.max_wait_ms);
            while batch.len() < max {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let block = u64::try_from(left.as_millis()).unwrap_or(BLOCK_MS);
                let more = self
                    .read_group(">", max - batch.len(), Some(block.clamp(1, BLOCK_MS)))
                    .await?;
                batch.extend(more);
            }
        }
        Ok(batch)
    }

    /// XREADGROUP from `id` (`>` for new entries, else this consumer's
    /// pending entries after `id`), blocking `block_ms` if set.
    async fn read_group(
        &mut self,
        id: &str,
        count: usize,
        block_ms: Option<u64>,
    ) -> Result<Vec<Entry>, SourceError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(ms) = block_ms {
            cmd.arg("BLOCK").arg(ms.max(1));
        }
        cmd.arg("STREAMS").arg(&self.config.key).arg(id);
        let reply = cmd
            .query_async::<Value>(&mut self.con)
            .await
            .map_err(|e| self.command_error("XREADGROUP", e))?;
        parse_read_reply(reply)
            .map_err(|e| SourceError::Lost(format!("unexpected reply to XREADGROUP: {e}")))
    }

    /// Queues one batch and acknowledges it after the queue took it.
    /// `counts` are the delivery counts of pending entries read again.
    async fn process(
        &mut self,
        entries: Vec<Entry>,
        counts: Option<&HashMap<String, usize>>,
    ) -> Result<(), SourceError> {
        let ctx = self.ctx;
        let key = &self.config.key;
        let mut events = Vec::with_capacity(entries.len());
        // Entries with nothing to deliver: deleted, or not valid events.
        let mut dropped = Vec::new();
        for entry in entries {
            let Some(fields) = entry.fields else {
                dropped.push(entry.id);
                continue;
            };
            let count = counts.and_then(|c| c.get(&entry.id)).copied().unwrap_or(1);
            match message_event(entry_message(&self.source, key, &entry.id, fields, count)) {
                Ok(event) => events.push((entry.id, event)),
                Err(e) => {
                    ctx.health.add_failed(1);
                    ctx.health.error(format!(
                        "stream entry {} of `{key}` is not a valid CloudEvent; acknowledged and dropped: {e}",
                        entry.id
                    ));
                    tracing::warn!(trigger = %ctx.trigger.name, entry = %entry.id, error = %e, "invalid CloudEvent in a Redis stream entry; acknowledged and dropped");
                    dropped.push(entry.id);
                }
            }
        }
        // Acknowledged at once: redelivering them cannot help.
        self.ack(&dropped).await?;
        let ids: Vec<String> = events.iter().map(|(id, _)| id.clone()).collect();
        match &self.config.ordered {
            Some(o) => {
                let events = events.into_iter().map(|(_, e)| e).collect();
                ctx.run_ordered(o, key, events).await?;
            }
            None => {
                let trigger = &ctx.trigger.name;
                let deliveries = events
                    .into_iter()
                    .map(|(id, event)| Delivery {
                        event,
                        partition_key: None,
                        idempotency_key: Some(format!("redis/{trigger}/{key}/{id}")),
                    })
                    .collect();
                ctx.dispatch(deliveries).await?;
            }
        }
        self.ack(&ids).await
    }

    async fn ack(&mut self, ids: &[String]) -> Result<(), SourceError> {
        if ids.is_empty() {
            return Ok(());
        }
        redis::cmd("XACK")
            .arg(&self.config.key)
            .arg(&self.group)
            .arg(ids)
            .query_async::<i64>(&mut self.con)
            .await
            .map_err(|e| self.command_error("XACK", e))?;
        Ok(())
    }
}

/// The message for stream entry `id` of `key` (see the module docs).
fn entry_message(
    source: &str,
    key: &str,
    id: &str,
    fields: Vec<(String, Vec<u8>)>,
    delivery_count: usize,
) -> Message {
    let mut data = None;
    // `ce-*` and `content-type`: event attributes.
    let mut attributes = Vec::new();
    // The rest: headers with `data`, else the data.
    let mut others = Vec::new();
    for (name, value) in fields {
        if name == "data" && data.is_none() {
            data = Some(value);
            continue;
        }
        let lower = name.to_ascii_lowercase();
        let value = lossy(value);
        if lower.starts_with("ce-") || lower == "content-type" {
            attributes.push((name, value));
        } else {
            others.push((name, value));
        }
    }
    let (headers, body) = match data {
        Some(data) => {
            attributes.extend(others);
            (attributes, Bytes::from(data))
        }
        None => {
            attributes.retain(|(k, _)| !k.eq_ignore_ascii_case("content-type"));
            attributes.push(("content-type".into(), "application/json".into()));
            let object: serde_json::Map<String, serde_json::Value> = others
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            (
                attributes,
                Bytes::from(serde_json::Value::Object(object).to_string()),
            )
        }
    };
    Message {
        ty: ENTRY_TYPE.into(),
        source: source.into(),
        subject: Some(key.into()),
        id: Some(format!("{key}/{id}")),
        headers,
        body,
        extensions: vec![
            ("redisstream".into(), key.into()),
            ("redisid".into(), id.into()),
            ("deliverycount".into(), delivery_count.to_string()),
        ],
    }
}

/// A stream entry as read.
#[derive(Debug)]
struct Entry {
    id: String,
    /// Its fields in order; `None` for an entry deleted while pending.
    fields: Option<Vec<(String, Vec<u8>)>>,
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn bytes(value: Value) -> Result<Vec<u8>, String> {
    match value {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::VerbatimString { text, .. } => Ok(text.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        other => Err(format!("expected a string, got {}", describe(&other))),
    }
}

fn text(value: Value) -> Result<String, String> {
    bytes(value).map(lossy)
}

/// A short description of an unexpected reply, for errors.
fn describe(value: &Value) -> String {
    let s = format!("{value:?}");
    if s.len() > 200 {
        let cut: String = s.chars().take(200).collect();
        format!("{cut}…")
    } else {
        s
    }
}

/// The entries of an XREADGROUP reply (RESP2 arrays or RESP3 maps);
/// nil when a blocking read timed out.
fn parse_read_reply(reply: Value) -> Result<Vec<Entry>, String> {
    let streams: Vec<Value> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => Ok(pair.swap_remove(1)),
                other => Err(format!("expected [key, entries], got {}", describe(&other))),
            })
            .collect::<Result<_, _>>()?,
        Value::Map(pairs) => pairs.into_iter().map(|(_, entries)| entries).collect(),
        other => return Err(format!("expected streams, got {}", describe(&other))),
    };
    let mut out = Vec::new();
    for entries in streams {
        match entries {
            Value::Nil => {}
            Value::Array(items) => {
                for item in items {
                    if let Some(entry) = parse_entry(item)? {
                        out.push(entry);
                    }
                }
            }
            other => return Err(format!("expected entries, got {}", describe(&other))),
        }
    }
    Ok(out)
}

/// `[id, [field, value, ...]]`; `[id, nil]` for an entry deleted while
/// pending; nil (skipped) where Redis 6.2 reports a deleted one so.
fn parse_entry(item: Value) -> Result<Option<Entry>, String> {
    let parts = match item {
        Value::Nil => return Ok(None),
        Value::Array(parts) if !parts.is_empty() => parts,
        other => return Err(format!("expected an entry, got {}", describe(&other))),
    };
    let mut parts = parts.into_iter();
    let id = parts.next().map(text).transpose()?.unwrap_or_default();
    let pairs: Option<Vec<(Value, Value)>> = match parts.next() {
        None | Some(Value::Nil) => None,
        Some(Value::Map(pairs)) => Some(pairs),
        Some(Value::Array(flat)) => {
            if flat.len() % 2 != 0 {
                return Err(format!("entry {id} has an odd number of field values"));
            }
            let mut flat = flat.into_iter();
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                pairs.push((k, v));
            }
            Some(pairs)
        }
        Some(other) => {
            return Err(format!(
                "expected the fields of entry {id}, got {}",
                describe(&other)
            ));
        }
    };
    let fields = pairs
        .map(|pairs| {
            pairs
                .into_iter()
                .map(|(k, v)| Ok((text(k)?, bytes(v)?)))
                .collect::<Result<Vec<_>, String>>()
        })
        .transpose()?;
    Ok(Some(Entry { id, fields }))
}

/// The next start id and how many entries one XAUTOCLAIM JUSTID claimed.
fn parse_autoclaim(reply: Value) -> Result<(String, usize), String> {
    let Value::Array(items) = reply else {
        return Err(describe(&reply));
    };
    let mut items = items.into_iter();
    let next = items
        .next()
        .map(text)
        .transpose()?
        .ok_or("no next start id")?;
    let claimed = match items.next() {
        Some(Value::Array(ids)) => ids.iter().filter(|v| !matches!(v, Value::Nil)).count(),
        _ => 0,
    };
    Ok((next, claimed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wisp_events::AttributesReader;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn read_replies_parse_in_resp2_and_resp3_with_deleted_entries() {
        let entries = Value::Array(vec![
            Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("a"), bulk("1"), bulk("data"), bulk("x")]),
            ]),
            Value::Array(vec![bulk("2-0"), Value::Nil]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("s"), entries.clone()])]);
        let resp3 = Value::Map(vec![(bulk("s"), entries)]);
        for reply in [resp2, resp3] {
            let parsed = parse_read_reply(reply).unwrap();
            assert_eq!(parsed.len(), 2);
            assert_eq!(parsed[0].id, "1-0");
            assert_eq!(
                parsed[0].fields.as_deref().unwrap(),
                &[
                    ("a".to_string(), b"1".to_vec()),
                    ("data".into(), b"x".to_vec())
                ]
            );
            assert!(parsed[1].fields.is_none());
        }
        assert!(parse_read_reply(Value::Nil).unwrap().is_empty());
        assert!(parse_read_reply(Value::Int(3)).is_err());
    }

    #[test]
    fn entries_map_to_events() {
        let field = |k: &str, v: &str| (k.to_string(), v.as_bytes().to_vec());
        // `data` with a content type: the data; the rest are headers.
        let e = message_event(entry_message(
            "redis://h:6379",
            "orders",
            "5-1",
            vec![
                field("content-type", "application/json"),
                field("data", r#"{"n":1}"#),
                field("tenant", "acme"),
            ],
            3,
        ))
        .unwrap();
        assert_eq!(e.ty(), ENTRY_TYPE);
        assert_eq!(e.id(), "orders/5-1");
        assert_eq!(e.subject(), Some("orders"));
        assert_eq!(e.datacontenttype(), Some("application/json"));
        assert_eq!(e.extension("deliverycount").unwrap().to_string(), "3");
        assert_eq!(e.extension("redisid").unwrap().to_string(), "5-1");
        assert!(e.extension("headers").unwrap().to_string().contains("acme"));
        // No `data`: the fields as a JSON object.
        let e = message_event(entry_message(
            "redis://h:6379",
            "orders",
            "6-0",
            vec![field("a", "1"), field("b", "2")],
            1,
        ))
        .unwrap();
        assert_eq!(e.datacontenttype(), Some("application/json"));
        match e.data() {
            Some(wisp_events::Data::Json(v)) => {
                assert_eq!(v, &serde_json::json!({"a": "1", "b": "2"}))
            }
            other => panic!("{other:?}"),
        }
        assert!(e.extension("headers").is_none());
        // `ce-*` fields: a binary-mode CloudEvent.
        let e = message_event(entry_message(
            "redis://h:6379",
            "orders",
            "7-0",
            vec![
                field("ce-specversion", "1.0"),
                field("ce-id", "abc"),
                field("ce-source", "/shop"),
                field("ce-type", "order.created"),
                field("data", "x"),
            ],
            1,
        ))
        .unwrap();
        assert_eq!((e.id(), e.ty()), ("abc", "order.created"));
        assert_eq!(e.extension("redisstream").unwrap().to_string(), "orders");
        // A broken one is refused.
        assert!(
            message_event(entry_message(
                "redis://h:6379",
                "orders",
                "8-0",
                vec![field("ce-specversion", "1.0")],
                1,
            ))
            .is_err()
        );
    }
}
