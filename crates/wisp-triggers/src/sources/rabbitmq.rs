//! RabbitMQ (AMQP 0-9-1): a queue consumer with prefetch; each message is
//! acknowledged once its event is queued in Wisp, and requeued or rejected
//! (to the queue's dead-letter exchange, if any) as configured when Wisp
//! cannot take it.
//!
//! # Session
//!
//! Connect to `url`, open a channel, set `basic.qos` to `prefetch`, declare
//! the queue (durable, no arguments) if `declare`, bind it to `bind.exchange`
//! with `bind.routing_key` if `bind`, then `basic.consume` with manual
//! acknowledgements and the consumer tag `wisp-<trigger>`. The trigger is
//! active from then on. When the broker cancels the consumer (the queue was
//! deleted) or the channel or connection closes, the session ends with
//! [`SourceError::Lost`] and the framework reconnects with backoff,
//! declaring and binding again. Connecting, declaring and binding must
//! finish within [`SETUP_TIMEOUT`].
//!
//! # Event mapping
//!
//! A message that is already a CloudEvent is taken as it is: binary mode
//! with `ce-*` headers (the AMQP binding's `cloudEvents:` and
//! `cloudEvents_` prefixes are read as `ce-`) and the `content-type`
//! property as `datacontenttype`, or structured mode with content type
//! `application/cloudevents+json`. Any other message becomes:
//!
//! | attribute | value |
//! | --- | --- |
//! | `type` | `wisp.rabbitmq.message` |
//! | `source` | the URL without its password, `/`, the queue name percent-encoded: `amqp://guest:***@127.0.0.1:5672/%2f/orders` |
//! | `subject` | the routing key (absent when empty) |
//! | `id` | the `message-id` property, else a random 32-digit hex id |
//! | `time` | when Wisp received it |
//! | `datacontenttype` | the `content-type` property, else `application/octet-stream` |
//! | data | the body (JSON when the content type is JSON and the body parses) |
//!
//! Either way the event carries these extensions:
//!
//! | extension | value |
//! | --- | --- |
//! | `headers` | the AMQP headers table as a JSON object of strings (strings as they are, numbers and booleans as text, nested tables and arrays as JSON, byte arrays as hex); absent when there are none |
//! | `rabbitmqexchange` | the exchange it was published to (empty for the default exchange) |
//! | `redelivered` | `true` or `false`, the delivery's redelivered flag |
//! | `deliverycount` | this delivery's attempt number: the quorum queue's `x-delivery-count` header plus 1 when the header is present, else `1`, or `2` when the redelivered flag is set (classic queues do not count, so `2` means "at least the second") |
//!
//! # Acknowledgement
//!
//! Deliveries are handled in groups: after one arrives, every delivery
//! already received (up to `prefetch`) is taken without waiting, and their
//! events are handed to Wisp's queue in one call, so one durable commit
//! covers the group. Then:
//!
//! - queued (or filtered out): `basic.ack` with `multiple` on the group's
//!   last delivery tag. Earlier deliveries on the channel are all settled
//!   by then, so this acknowledges exactly the group.
//! - refused, `on_failure: requeue` (the default): after
//!   [`REQUEUE_DELAY`], so a Wisp that keeps refusing is not hot-looped,
//!   `basic.nack` with `multiple` and `requeue`: the broker redelivers the
//!   messages with the redelivered flag set.
//! - refused, `on_failure: reject`: `basic.nack` with `multiple` and without
//!   `requeue` (the grouped form of `basic.reject`): the broker
//!   dead-letters them through the queue's dead-letter exchange, or drops
//!   them if it has none.
//! - a message that claims to be a CloudEvent but is not a valid one can
//!   never be queued: it is rejected at once without requeue (dead-lettered
//!   or dropped likewise), counted as failed, and the trigger's last error
//!   says why.
//!
//! A delivery not yet settled when the session ends (cancelled, or the
//! connection lost) goes back to the queue when the channel closes, so a
//! message is acknowledged only once its event is on disk and delivered at
//! least once.

use crate::TriggerError;
use crate::sink::Delivery;
use crate::source::{Message, Source, SourceContext, SourceError, message_event};
use crate::spec::{check_text, check_url, redact_url};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

/// The `type` of events built from plain messages.
pub const EVENT_TYPE: &str = "wisp.rabbitmq.message";
/// How long a group of messages Wisp refused waits before it is requeued.
pub const REQUEUE_DELAY: Duration = Duration::from_millis(500);
/// Longest time to connect, declare, bind and start consuming.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest time to close the connection politely when stopping.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest AMQP short string (queue, exchange and routing key), in bytes.
pub const MAX_SHORT_STRING: usize = 255;

/// A RabbitMQ trigger's source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqConfig {
    /// Broker URL (default `amqp://guest:guest@127.0.0.1:5672/%2f`).
    #[serde(default = "default_url")]
    pub url: String,
    /// The queue to consume.
    pub queue: String,
    /// Declare the queue (durable) if it does not exist (default true).
    #[serde(default = "yes")]
    pub declare: bool,
    /// Bind the queue to this exchange with `routing_key` (after declaring it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<Binding>,
    /// Unacknowledged messages in flight (1 to 10000, default 32).
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// A message Wisp cannot queue (its function's queue is full, the
    /// function is gone) is requeued (the default) or rejected.
    #[serde(default)]
    pub on_failure: RabbitMqFailure,
}

/// An exchange binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// The exchange (it must exist).
    pub exchange: String,
    /// The routing key (default empty). On a topic exchange `*` matches
    /// one word and `#` any number; fanout exchanges ignore it.
    #[serde(default)]
    pub routing_key: String,
}

/// What happens to a message that could not be queued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RabbitMqFailure {
    /// Back to the queue, to be redelivered.
    #[default]
    Requeue,
    /// Rejected without requeue: dead-lettered by the broker if the queue
    /// has a dead-letter exchange, else dropped by the broker.
    Reject,
}

fn default_url() -> String {
    "amqp://guest:guest@127.0.0.1:5672/%2f".into()
}
fn default_prefetch() -> u16 {
    32
}
fn yes() -> bool {
    true
}

impl RabbitMqConfig {
    /// Checks URL, queue, binding and prefetch.
    pub fn validate(&self) -> Result<(), TriggerError> {
        check_url("url", &self.url, &["amqp", "amqps"])?;
        check_text("queue", &self.queue)?;
        check_short("queue", &self.queue)?;
        if let Some(b) = &self.bind {
            check_text("bind.exchange", &b.exchange)?;
            check_short("bind.exchange", &b.exchange)?;
            check_short("bind.routing_key", &b.routing_key)?;
            if b.routing_key.chars().any(char::is_control) {
                return Err(TriggerError::invalid(
                    "bind.routing_key",
                    "must not contain control characters",
                ));
            }
        }
        if !(1..=10_000).contains(&self.prefetch) {
            return Err(TriggerError::invalid("prefetch", "must be from 1 to 10000"));
        }
        Ok(())
    }
}

fn check_short(field: &str, value: &str) -> Result<(), TriggerError> {
    if value.len() > MAX_SHORT_STRING {
        return Err(TriggerError::invalid(
            field,
            format!("must be at most {MAX_SHORT_STRING} bytes (an AMQP short string)"),
        ));
    }
    Ok(())
}

/// Consumes a RabbitMQ queue.
pub struct RabbitMqSource {
    config: RabbitMqConfig,
    trigger: String,
}

impl RabbitMqSource {
    /// A source for `config` (already validated) of trigger `trigger`.
    pub fn new(config: RabbitMqConfig, trigger: &str) -> Self {
        RabbitMqSource {
            config,
            trigger: trigger.to_string(),
        }
    }
}

/// An open connection consuming the queue. The channel is kept so that it
/// stays open as long as the consumer.
struct Subscription {
    connection: Connection,
    _channel: Channel,
    consumer: Consumer,
}

impl RabbitMqSource {
    /// The broker URL without its password, for errors.
    fn broker(&self) -> String {
        redact_url(&self.config.url)
    }

    fn connect_error(&self, what: String, error: impl std::fmt::Display) -> SourceError {
        SourceError::Connect {
            what,
            reason: error.to_string(),
        }
    }

    /// Connects, declares, binds and starts consuming.
    async fn subscribe(&self) -> Result<Subscription, SourceError> {
        let broker = self.broker();
        let queue = short("queue", &self.config.queue)?;
        let tag = short("consumer tag", &format!("wisp-{}", self.trigger))?;
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("wisp trigger {}", self.trigger).into());
        let connection = Connection::connect(&self.config.url, properties)
            .await
            .map_err(|e| self.connect_error(broker.clone(), e))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| self.connect_error(broker.clone(), e))?;
        channel
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| self.connect_error(broker.clone(), e))?;
        let on_queue = || format!("queue `{}` on {broker}", self.config.queue);
        if self.config.declare {
            let options = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(queue.clone(), options, FieldTable::default())
                .await
                .map_err(|e| {
                    self.connect_error(
                        on_queue(),
                        format!(
                            "declaring it failed: {e} (to consume a queue declared elsewhere, \
                             with other arguments or type, set `declare` to false)"
                        ),
                    )
                })?;
        }
        if let Some(binding) = &self.config.bind {
            channel
                .queue_bind(
                    queue.clone(),
                    short("bind.exchange", &binding.exchange)?,
                    short("bind.routing_key", &binding.routing_key)?,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    self.connect_error(
                        on_queue(),
                        format!(
                            "binding it to exchange `{}` with routing key `{}` failed: {e} \
                             (the exchange must exist)",
                            binding.exchange, binding.routing_key
                        ),
                    )
                })?;
        }
        // Manual acknowledgements: nothing is acked before it is queued.
        let options = BasicConsumeOptions {
            no_ack: false,
            ..BasicConsumeOptions::default()
        };
        let consumer = channel
            .basic_consume(queue, tag, options, FieldTable::default())
            .await
            .map_err(|e| self.connect_error(on_queue(), format!("consuming it failed: {e}")))?;
        Ok(Subscription {
            connection,
            _channel: channel,
            consumer,
        })
    }

    /// Consumes until the consumer ends (`Err`) or the context is
    /// cancelled (`Ok`).
    async fn consume(
        &self,
        ctx: &SourceContext,
        consumer: &mut Consumer,
    ) -> Result<(), SourceError> {
        let source = event_source(&self.config.url, &self.config.queue);
        let most = usize::from(self.config.prefetch.max(1));
        loop {
            let next = tokio::select! {
                biased;
                () = ctx.cancelled() => return Ok(()),
                next = consumer.next() => next,
            };
            let mut group = vec![self.received(next)?];
            // Take whatever else has arrived, without waiting. The broker
            // sends at most `prefetch` unacknowledged messages, so the group
            // is bounded.
            let mut ended = None;
            while group.len() < most {
                match consumer.next().now_or_never() {
                    None => break,
                    Some(next) => match self.received(next) {
                        Ok(delivery) => group.push(delivery),
                        Err(e) => {
                            ended = Some(e);
                            break;
                        }
                    },
                }
            }
            self.handle(ctx, &source, group).await?;
            if let Some(e) = ended {
                return Err(e);
            }
        }
    }

    /// One item of the consumer stream, or why the stream ended.
    fn received(
        &self,
        next: Option<lapin::Result<AmqpDelivery>>,
    ) -> Result<AmqpDelivery, SourceError> {
        match next {
            Some(Ok(delivery)) => Ok(delivery),
            Some(Err(e)) => Err(SourceError::Lost(format!(
                "consuming queue `{}` on {} failed: {e}",
                self.config.queue,
                self.broker()
            ))),
            None => Err(SourceError::Lost(format!(
                "the broker ended the consumer of queue `{}` on {} (was the queue deleted?)",
                self.config.queue,
                self.broker()
            ))),
        }
    }

    /// Maps a group of deliveries to events, queues them in one call and
    /// settles them: see the module documentation.
    async fn handle(
        &self,
        ctx: &SourceContext,
        source: &str,
        group: Vec<AmqpDelivery>,
    ) -> Result<(), SourceError> {
        let mut events = Vec::with_capacity(group.len());
        let mut last = None;
        for mut delivery in group {
            match message_event(self.message(source, &mut delivery)) {
                Ok(event) => {
                    events.push(Delivery::new(event));
                    last = Some(delivery);
                }
                Err(e) => {
                    ctx.health.add_failed(1);
                    ctx.health.error(format!(
                        "rejected a message from queue `{}` (routing key `{}`): it claims to be \
                         a CloudEvent but is not a valid one: {e}",
                        self.config.queue, delivery.routing_key
                    ));
                    settled(
                        "reject",
                        delivery
                            .acker
                            .reject(BasicRejectOptions { requeue: false })
                            .await,
                    )?;
                }
            }
        }
        let Some(last) = last else {
            return Ok(());
        };
        let n = events.len();
        let Err(e) = ctx.dispatch(events).await else {
            let options = BasicAckOptions { multiple: true };
            return settled("ack", last.acker.ack(options).await);
        };
        // `dispatch` counted the failure; say what happens to the messages.
        match self.config.on_failure {
            RabbitMqFailure::Requeue => {
                ctx.health.error(format!(
                    "{e}; {n} message(s) returned to queue `{}` for redelivery",
                    self.config.queue
                ));
                tokio::select! {
                    biased;
                    // Closing the channel requeues them as well.
                    () = ctx.cancelled() => return Ok(()),
                    () = tokio::time::sleep(REQUEUE_DELAY) => {}
                }
                let options = BasicNackOptions {
                    multiple: true,
                    requeue: true,
                };
                settled("nack", last.acker.nack(options).await)
            }
            RabbitMqFailure::Reject => {
                ctx.health.error(format!(
                    "{e}; {n} message(s) rejected from queue `{}` (to its dead-letter exchange, \
                     if it has one)",
                    self.config.queue
                ));
                let options = BasicNackOptions {
                    multiple: true,
                    requeue: false,
                };
                settled("reject", last.acker.nack(options).await)
            }
        }
    }

    /// What [`message_event`] needs to know about a delivery; takes its body.
    fn message(&self, source: &str, delivery: &mut AmqpDelivery) -> Message {
        let properties = &delivery.properties;
        let content_type = properties.content_type().as_ref().map(ShortString::as_str);
        let mut headers = Vec::new();
        if let Some(c) = content_type {
            headers.push(("content-type".to_string(), c.to_string()));
        }
        let mut attempts_before = None;
        if let Some(table) = properties.headers() {
            for (name, value) in table {
                let name = name.as_str();
                if name.eq_ignore_ascii_case("x-delivery-count") {
                    attempts_before = as_count(value);
                }
                // The property wins over a header of the same name.
                if content_type.is_some() && name.eq_ignore_ascii_case("content-type") {
                    continue;
                }
                headers.push((header_name(name), stringify(value)));
            }
        }
        let count = match attempts_before {
            Some(n) => n.saturating_add(1),
            None if delivery.redelivered => 2,
            None => 1,
        };
        let routing_key = delivery.routing_key.as_str();
        Message {
            ty: EVENT_TYPE.into(),
            source: source.into(),
            subject: (!routing_key.is_empty()).then(|| routing_key.to_string()),
            id: properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .filter(|id| !id.is_empty()),
            headers,
            body: Bytes::from(std::mem::take(&mut delivery.data)),
            extensions: vec![
                ("rabbitmqexchange".into(), delivery.exchange.to_string()),
                ("deliverycount".into(), count.to_string()),
                ("redelivered".into(), delivery.redelivered.to_string()),
            ],
        }
    }
}

#[async_trait]
impl Source for RabbitMqSource {
    async fn session(&self, ctx: &SourceContext) -> Result<(), SourceError> {
        let mut subscription = match tokio::time::timeout(SETUP_TIMEOUT, self.subscribe()).await {
            Ok(subscription) => subscription?,
            Err(_) => {
                return Err(self.connect_error(
                    self.broker(),
                    format!(
                        "no answer within {}s while connecting and subscribing to queue `{}`",
                        SETUP_TIMEOUT.as_secs(),
                        self.config.queue
                    ),
                ));
            }
        };
        ctx.health.active();
        let result = self.consume(ctx, &mut subscription.consumer).await;
        // Close politely, so that unsettled deliveries go back to the queue
        // at once; dropping the connection would close it too.
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            subscription.connection.close(200, "OK".into()),
        )
        .await;
        result
    }
}

/// `value` as an AMQP short string, or why it cannot be one.
fn short(field: &str, value: &str) -> Result<ShortString, SourceError> {
    ShortString::try_new(value).map_err(|_| {
        SourceError::Config(format!(
            "{field} `{value}` is longer than {MAX_SHORT_STRING} bytes, the AMQP limit"
        ))
    })
}

/// The outcome of an ack, nack or reject.
fn settled(what: &str, result: lapin::Result<bool>) -> Result<(), SourceError> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(SourceError::Lost(format!(
            "the channel closed before the {what} was sent; the broker redelivers the messages"
        ))),
        Err(e) => Err(SourceError::Lost(format!(
            "cannot {what} messages: {e}; the broker redelivers them"
        ))),
    }
}

/// The event `source`: the URL without its password, then `/` and the
/// queue, percent-encoded, so that it is a valid URI reference.
pub fn event_source(url: &str, queue: &str) -> String {
    let mut source = String::new();
    for &b in redact_url(url).trim_end_matches('/').as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&b) {
            source.push(char::from(b));
        } else {
            source.push_str(&format!("%{b:02X}"));
        }
    }
    source.push('/');
    for &b in queue.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            source.push(char::from(b));
        } else {
            source.push_str(&format!("%{b:02X}"));
        }
    }
    source
}

/// A header's name as [`message_event`] reads it: the CloudEvents AMQP
/// binding's `cloudEvents:` and `cloudEvents_` prefixes become `ce-`.
fn header_name(name: &str) -> String {
    for prefix in ["cloudEvents:", "cloudEvents_"] {
        if let Some(attribute) = name.strip_prefix(prefix) {
            return format!("ce-{attribute}");
        }
    }
    name.to_string()
}

/// A header value as text: strings as they are, the rest as JSON.
fn stringify(value: &AMQPValue) -> String {
    match to_json(value) {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A header value as JSON: numbers, booleans and strings as such, tables
/// as objects, arrays as arrays, byte arrays as hex, decimals exactly (as
/// strings), timestamps as seconds since the epoch.
fn to_json(value: &AMQPValue) -> serde_json::Value {
    use serde_json::Value;
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::Float(f) => Value::from(f64::from(*f)),
        AMQPValue::Double(f) => Value::from(*f),
        AMQPValue::DecimalValue(d) => {
            let digits = d.value.to_string();
            let scale = usize::from(d.scale);
            let text = if scale == 0 {
                digits
            } else {
                let padded = format!("{digits:0>width$}", width = scale + 1);
                let (whole, fraction) = padded.split_at(padded.len() - scale);
                format!("{whole}.{fraction}")
            };
            Value::String(text)
        }
        AMQPValue::ShortString(s) => Value::String(s.to_string()),
        AMQPValue::LongString(s) => Value::String(s.to_string()),
        AMQPValue::ByteArray(b) => Value::String(hex::encode(b.as_slice())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(to_json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(
            t.into_iter()
                .map(|(k, v)| (k.to_string(), to_json(v)))
                .collect(),
        ),
        AMQPValue::Void => Value::Null,
    }
}

/// A count header (`x-delivery-count`), whatever integer type carries it.
fn as_count(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
        AMQPValue::LongString(s) => s.to_string().trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{ByteArray, DecimalValue, FieldArray, LongString};

    #[test]
    fn the_source_is_the_redacted_url_and_the_encoded_queue() {
        assert_eq!(
            event_source("amqp://guest:guest@127.0.0.1:5672/%2f", "orders"),
            "amqp://guest:***@127.0.0.1:5672/%2f/orders"
        );
        assert_eq!(
            event_source("amqp://h:5672/", "a b/c.d"),
            "amqp://h:5672/a%20b%2Fc.d"
        );
        let source = event_source("amqps://u:p@h/v", "q");
        assert!(!source.contains(":p@"), "{source}");
    }

    #[test]
    fn header_values_are_stringified() {
        let mut table = FieldTable::default();
        table.insert("n".into(), AMQPValue::LongInt(7));
        assert_eq!(stringify(&AMQPValue::LongString("acme".into())), "acme");
        assert_eq!(stringify(&AMQPValue::ShortString("eu".into())), "eu");
        assert_eq!(stringify(&AMQPValue::LongLongInt(-3)), "-3");
        assert_eq!(stringify(&AMQPValue::Boolean(true)), "true");
        assert_eq!(stringify(&AMQPValue::Void), "");
        assert_eq!(
            stringify(&AMQPValue::ByteArray(ByteArray::from(vec![0xca, 0xfe]))),
            "cafe"
        );
        assert_eq!(
            stringify(&AMQPValue::DecimalValue(DecimalValue {
                scale: 3,
                value: 1234
            })),
            "1.234"
        );
        assert_eq!(
            stringify(&AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 5
            })),
            "0.05"
        );
        assert_eq!(
            stringify(&AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::FieldTable(table),
                AMQPValue::LongString(LongString::from("x")),
            ]))),
            r#"[{"n":7},"x"]"#
        );
    }

    #[test]
    fn delivery_counts_and_binding_prefixes() {
        assert_eq!(as_count(&AMQPValue::LongLongInt(2)), Some(2));
        assert_eq!(as_count(&AMQPValue::LongInt(-1)), None);
        assert_eq!(as_count(&AMQPValue::LongString("4".into())), Some(4));
        assert_eq!(header_name("cloudEvents:id"), "ce-id");
        assert_eq!(header_name("cloudEvents_type"), "ce-type");
        assert_eq!(header_name("x-tenant"), "x-tenant");
    }

    #[test]
    fn queue_exchange_and_routing_key_must_fit_amqp_short_strings() {
        let config = |queue: &str, key: &str| RabbitMqConfig {
            url: default_url(),
            queue: queue.into(),
            declare: true,
            bind: Some(Binding {
                exchange: "amq.topic".into(),
                routing_key: key.into(),
            }),
            prefetch: 32,
            on_failure: RabbitMqFailure::Requeue,
        };
        assert!(config("q", "orders.*").validate().is_ok());
        assert!(config("q", "").validate().is_ok());
        let long = "q".repeat(MAX_SHORT_STRING + 1);
        assert_eq!(config(&long, "k").validate().unwrap_err().field(), "queue");
        assert_eq!(
            config("q", &long).validate().unwrap_err().field(),
            "bind.routing_key"
        );
    }
}
