//! The contract every source follows.
//!
//! A source implements [`Source::session`]: connect, subscribe, and
//! consume until the connection fails (return `Err`) or the context is
//! cancelled (return `Ok`). The framework ([`run`]) reports the state and
//! reconnects with exponential backoff, so a source never handles retries
//! of its connection itself.
//!
//! The acknowledgement rule: a source acknowledges a message to its broker
//! only after [`SourceContext::dispatch`] (or, in ordered mode,
//! [`SourceContext::run_ordered`]) returned `Ok`: the event is then on disk
//! in Wisp's queue, or did not pass the filters. On `Err` it leaves the
//! message unacknowledged (or requeues or rejects it, as configured) so the
//! broker redelivers it.

use crate::filter::matches_all;
use crate::sink::{BatchOutcome, CursorStore, Delivery, EventSink, SinkError};
use crate::spec::{OrderedConfig, OrderedFailure, Trigger};
use crate::status::Health;
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wisp_core::Target;
use wisp_events::{Event, EventBuilder, EventBuilderV10};

/// Why a source's session ended.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Could not connect or subscribe.
    #[error("cannot connect to {what}: {reason}")]
    Connect {
        /// The broker address or resource, without credentials.
        what: String,
        /// The client's error.
        reason: String,
    },
    /// The connection or subscription was lost.
    #[error("lost the connection: {0}")]
    Lost(String),
    /// The trigger's configuration cannot work (for example a JetStream
    /// stream that does not exist); retried like the others, as it may be
    /// created later.
    #[error("{0}")]
    Config(String),
    /// Wisp's queue refused events; the broker keeps them.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// A source of events for one trigger.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// One session: connect, subscribe, call [`Health::active`], then
    /// consume until the connection fails (`Err`) or `ctx.cancelled()`
    /// fires (`Ok`).
    async fn session(&self, ctx: &SourceContext) -> Result<(), SourceError>;
}

/// What a running source can use.
#[derive(Clone)]
pub struct SourceContext {
    /// The trigger, as it was when the source started.
    pub trigger: Arc<Trigger>,
    /// The function the trigger targets.
    pub target: Target,
    /// Its live status.
    pub health: Arc<Health>,
    /// The durable queue.
    pub sink: Arc<dyn EventSink>,
    /// Durable positions for sources whose broker keeps none.
    pub cursors: Arc<dyn CursorStore>,
    /// Fires when the trigger is disabled, changed or deleted, or the
    /// server stops.
    pub cancel: CancellationToken,
}

/// First delay before reconnecting.
pub const RECONNECT_MIN: Duration = Duration::from_millis(200);
/// Longest delay between reconnection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);

impl SourceContext {
    /// Filters `deliveries` and queues those that pass; `Ok` means every
    /// one is durably queued or filtered out, so the messages may be
    /// acknowledged.
    pub async fn dispatch(&self, deliveries: Vec<Delivery>) -> Result<(), SinkError> {
        let total = deliveries.len() as u64;
        let passing: Vec<Delivery> = deliveries
            .into_iter()
            .filter(|d| matches_all(&self.trigger.spec.filters, &d.event))
            .collect();
        let n = passing.len() as u64;
        self.health.add_filtered(total - n);
        if passing.is_empty() {
            return Ok(());
        }
        match self.sink.enqueue(&self.target, passing).await {
            Ok(()) => {
                self.health.add_delivered(n);
                Ok(())
            }
            Err(e) => {
                self.health.add_failed(n);
                self.health.error(&e);
                Err(e)
            }
        }
    }

    /// Ordered stream mode: filters `events`, runs those that pass as one
    /// batch in partition `key`, and on failure bisects or leaves the batch
    /// dead-lettered as configured. `Ok` means the position may advance:
    /// every event succeeded, was filtered out, or is in the dead-letter
    /// queue (never skipped silently). `Err` means the sink is unavailable;
    /// do not advance.
    pub async fn run_ordered(
        &self,
        config: &OrderedConfig,
        key: &str,
        events: Vec<Event>,
    ) -> Result<(), SinkError> {
        let total = events.len() as u64;
        let passing: Vec<Event> = events
            .into_iter()
            .filter(|e| matches_all(&self.trigger.spec.filters, e))
            .collect();
        self.health.add_filtered(total - passing.len() as u64);
        if passing.is_empty() {
            return Ok(());
        }
        // Depth-first, in order: a failed batch's first half runs before its
        // second half, so order within the key is kept.
        let mut stack = vec![passing];
        while let Some(batch) = stack.pop() {
            let n = batch.len() as u64;
            match self
                .sink
                .run_batch(&self.target, key, batch.clone())
                .await?
            {
                BatchOutcome::Succeeded => self.health.add_delivered(n),
                BatchOutcome::Failed {
                    invocation_id,
                    error,
                } => {
                    self.health.error(format!("batch of {n} failed: {error}"));
                    if config.on_failure == OrderedFailure::Bisect && batch.len() > 1 {
                        // The halves carry the events now: drop the
                        // whole batch's dead letter.
                        self.sink.forget_dead_letter(&invocation_id).await?;
                        let mut first = batch;
                        let second = first.split_off(first.len() / 2);
                        stack.push(second);
                        stack.push(first);
                    } else {
                        // In the dead-letter queue, with the whole batch.
                        self.health.add_failed(n);
                    }
                }
            }
        }
        Ok(())
    }

    /// Resolves when the source should stop.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Whether the source should stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// Runs `source` until the context is cancelled, reconnecting with
/// exponential backoff (with jitter) after each failed session and keeping
/// the trigger's status.
pub async fn run(source: Arc<dyn Source>, ctx: SourceContext) {
    let mut delay = RECONNECT_MIN;
    loop {
        if ctx.is_cancelled() {
            return;
        }
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            r = source.session(&ctx) => r,
            () = ctx.cancelled() => Ok(()),
        };
        match result {
            Ok(()) if ctx.is_cancelled() => return,
            Ok(()) => ctx
                .health
                .degraded("the source ended its session; reconnecting"),
            Err(e) => {
                tracing::warn!(trigger = %ctx.trigger.name, error = %e, "trigger source failed; reconnecting");
                ctx.health.degraded(&e);
            }
        }
        // A session that ran a while resets the backoff.
        if started.elapsed() > Duration::from_secs(30) {
            delay = RECONNECT_MIN;
        }
        let jittered = delay.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        tokio::select! {
            () = tokio::time::sleep(jittered) => {}
            () = ctx.cancelled() => return,
        }
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

/// What a source knows about one broker message, for [`message_event`].
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// The event `type` to use when the message is not itself a CloudEvent.
    pub ty: String,
    /// The event `source`: the broker and where the message came from,
    /// without credentials.
    pub source: String,
    /// The event `subject`: subject, routing key, topic, channel or stream key.
    pub subject: Option<String>,
    /// A broker-assigned id, if any; else one is generated.
    pub id: Option<String>,
    /// The message headers or properties.
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub body: Bytes,
    /// Broker metadata to keep as extension attributes (names of 1 to 20
    /// lowercase letters and digits).
    pub extensions: Vec<(String, String)>,
}

/// Maps a broker message to a CloudEvent. A message that already is one
/// (binary mode: `ce-*` headers; structured: content type
/// `application/cloudevents+json`) is taken as it is; otherwise a new
/// event of `message.ty` is built with the payload as data and its
/// `content-type` header as `datacontenttype`. Either way the headers are
/// kept as the `headers` extension (a JSON object, when there are any) and
/// `message.extensions` are added. Fails only for a message that claims
/// to be a CloudEvent and is not a valid one.
pub fn message_event(message: Message) -> Result<Event, wisp_events::EventError> {
    let header = |name: &str| {
        message
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let is_event = header("content-type").is_some_and(|c| c.starts_with("application/cloudevents"))
        || message
            .headers
            .iter()
            .any(|(k, _)| k.to_ascii_lowercase().starts_with("ce-"));
    let mut event = if is_event {
        let mut request = http::Request::post("/");
        for (k, v) in &message.headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let (parts, ()) = request
            .body(())
            .map_err(|e| wisp_events::EventError::json(e.to_string()))?
            .into_parts();
        let mut events = wisp_events::parse_request(&parts, message.body.clone())?;
        if events.len() != 1 {
            return Err(wisp_events::EventError::json(
                "a broker message must carry one event, not a batch",
            ));
        }
        events.remove(0)
    } else {
        let mut b = EventBuilderV10::new()
            .id(message
                .id
                .clone()
                .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>())))
            .source(message.source.clone())
            .ty(message.ty.clone())
            .time(chrono::Utc::now());
        if let Some(s) = &message.subject {
            b = b.subject(s.clone());
        }
        let content_type = header("content-type").unwrap_or("application/octet-stream");
        b = if wisp_events::is_json_media_type(content_type) {
            match serde_json::from_slice::<serde_json::Value>(&message.body) {
                Ok(v) => b.data(content_type.to_string(), v),
                Err(_) => b.data(content_type.to_string(), message.body.to_vec()),
            }
        } else {
            b.data(content_type.to_string(), message.body.to_vec())
        };
        b.build()
            .map_err(|e| wisp_events::EventError::json(e.to_string()))?
    };
    let kept: serde_json::Map<String, serde_json::Value> = message
        .headers
        .iter()
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            !k.starts_with("ce-") && k != "content-type"
        })
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    if !kept.is_empty() {
        event.set_extension("headers", serde_json::Value::Object(kept).to_string());
    }
    for (k, v) in message.extensions {
        event.set_extension(&k, v);
    }
    wisp_events::validate(&event)?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wisp_events::AttributesReader;

    #[test]
    fn plain_message_becomes_an_event_with_metadata() {
        let e = message_event(Message {
            ty: "wisp.nats.message".into(),
            source: "nats://127.0.0.1:4222".into(),
            subject: Some("orders.eu".into()),
            id: None,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("x-tenant".into(), "acme".into()),
            ],
            body: Bytes::from_static(br#"{"n":1}"#),
            extensions: vec![("deliverycount".into(), "2".into())],
        })
        .unwrap();
        assert_eq!(e.ty(), "wisp.nats.message");
        assert_eq!(e.subject(), Some("orders.eu"));
        assert_eq!(e.datacontenttype(), Some("application/json"));
        assert_eq!(e.extension("deliverycount").unwrap().to_string(), "2");
        let headers: serde_json::Value =
            serde_json::from_str(&e.extension("headers").unwrap().to_string()).unwrap();
        assert_eq!(headers["x-tenant"], "acme");
        assert_eq!(e.id().len(), 32);
    }

    #[test]
    fn a_binary_mode_message_is_kept_as_it_is() {
        let e = message_event(Message {
            ty: "wisp.nats.message".into(),
            source: "nats://x".into(),
            headers: vec![
                ("ce-specversion".into(), "1.0".into()),
                ("ce-id".into(), "abc".into()),
                ("ce-source".into(), "/shop".into()),
                ("ce-type".into(), "order.created".into()),
                ("ce-region".into(), "eu".into()),
            ],
            body: Bytes::from_static(b"x"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(e.id(), "abc");
        assert_eq!(e.ty(), "order.created");
        assert_eq!(e.extension("region").unwrap().to_string(), "eu");
        assert!(e.extension("headers").is_none());
    }

    #[test]
    fn an_invalid_cloudevent_message_is_refused() {
        let err = message_event(Message {
            headers: vec![("ce-specversion".into(), "1.0".into())],
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("id") || err.to_string().contains("source"));
    }
}
