//! Where the outcome of an asynchronous invocation goes: the `on_success`
//! and `on_failure` strings of [`crate::AsyncConfig`], parsed.
//!
//! | form | destination |
//! |---|---|
//! | `NAME[:QUALIFIER]`, `function:NAME[:QUALIFIER]` | another function, through the queue |
//! | `dlq:QUEUE` | a named dead-letter queue (`on_failure` only) |
//! | `nats://[user:pass@]host:port/SUBJECT` | a NATS subject |
//! | `amqp://user:pass@host:port/VHOST?exchange=EX&routing_key=RK` | a RabbitMQ exchange (empty: the default exchange) |
//! | `mqtt://[user:pass@]host:port/TOPIC/LEVELS` | an MQTT topic, QoS 1 |
//! | `redis://[:pass@]host:port/?channel=CH` or `?stream=KEY` | a Redis channel (PUBLISH) or stream (XADD) |
//!
//! A bare `NAME:QUALIFIER` whose name is `dlq` or `function` reads as the
//! prefixed form; write `function:dlq:prod` for the alias `prod` of a
//! function named `dlq`. The port may be left out (4222, 5672, 1883 and
//! 6379); user names and passwords are percent-decoded, and so are the
//! subject, topic, exchange, routing key, channel and stream (a `+` in a
//! query value is a space: write `%2B`).
//!
//! ```
//! use wisp_core::destination::{BrokerTarget, Destination};
//!
//! let d: Destination = "dlq:payments".parse().unwrap();
//! assert_eq!(d.dead_letter_queue(), Some("payments"));
//! let d: Destination = "nats://127.0.0.1:4222/orders.done".parse().unwrap();
//! let Destination::Broker(broker) = d else { unreachable!() };
//! assert_eq!(broker.target, BrokerTarget::NatsSubject("orders.done".into()));
//! assert_eq!(broker.connection_url, "nats://127.0.0.1:4222");
//! ```

use crate::names::Target;
use std::fmt;
use std::str::FromStr;
use url::{Host, Url};

/// The dead-letter queue of invocations whose function names none.
pub const DEFAULT_DEAD_LETTER_QUEUE: &str = "default";
/// Longest dead-letter queue name.
pub const MAX_QUEUE_NAME_LEN: usize = 63;
/// Longest destination string, in bytes.
pub const MAX_DESTINATION_LEN: usize = 2048;
/// Longest NATS subject, in bytes.
pub const MAX_SUBJECT_LEN: usize = 255;
/// Longest AMQP exchange or routing key, in bytes (an AMQP short string).
pub const MAX_AMQP_NAME_LEN: usize = 255;
/// Longest MQTT topic, in bytes.
pub const MAX_TOPIC_LEN: usize = 1024;
/// Longest Redis channel or stream key, in bytes.
pub const MAX_REDIS_KEY_LEN: usize = 1024;

/// Why a destination string was rejected: what is wrong and what would be
/// accepted (never the password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DestinationError(String);

impl DestinationError {
    fn new(message: impl Into<String>) -> Self {
        DestinationError(message.into())
    }
}

/// A parsed `on_success` or `on_failure` destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Another function: the event is queued as an asynchronous invocation.
    Function(Target),
    /// A named dead-letter queue: the failed invocation is kept there
    /// instead of in [`DEFAULT_DEAD_LETTER_QUEUE`].
    DeadLetterQueue(String),
    /// A message broker: the event is published there.
    Broker(Broker),
}

impl Destination {
    /// The dead-letter queue this destination names, if it is one.
    pub fn dead_letter_queue(&self) -> Option<&str> {
        match self {
            Destination::DeadLetterQueue(q) => Some(q),
            _ => None,
        }
    }

    /// A short name of the kind: `function`, `dlq`, `nats`, `amqp`,
    /// `mqtt` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self {
            Destination::Function(_) => "function",
            Destination::DeadLetterQueue(_) => "dlq",
            Destination::Broker(b) => b.protocol.scheme(),
        }
    }
}

impl fmt::Display for Destination {
    /// The destination with any password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Function(t) => write!(f, "function:{t}"),
            Destination::DeadLetterQueue(q) => write!(f, "dlq:{q}"),
            Destination::Broker(b) => f.write_str(&b.redacted),
        }
    }
}

/// The broker protocols a destination may publish with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Core NATS publish, flushed.
    Nats,
    /// AMQP 0-9-1 (RabbitMQ) with publisher confirms.
    Amqp,
    /// MQTT 3.1.1, QoS 1.
    Mqtt,
    /// Redis PUBLISH or XADD.
    Redis,
}

impl Protocol {
    /// The URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            Protocol::Nats => "nats",
            Protocol::Amqp => "amqp",
            Protocol::Mqtt => "mqtt",
            Protocol::Redis => "redis",
        }
    }

    /// The port when the URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            Protocol::Nats => 4222,
            Protocol::Amqp => 5672,
            Protocol::Mqtt => 1883,
            Protocol::Redis => 6379,
        }
    }
}

/// Where on a broker an event is published.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BrokerTarget {
    /// A NATS subject (no wildcards).
    NatsSubject(String),
    /// An AMQP exchange (empty: the default exchange) and routing key.
    Amqp {
        /// The exchange; it must exist.
        exchange: String,
        /// The routing key (with the default exchange: the queue).
        routing_key: String,
    },
    /// An MQTT topic (no wildcards).
    MqttTopic(String),
    /// A Redis pub/sub channel (PUBLISH).
    RedisChannel(String),
    /// A Redis stream key (XADD).
    RedisStream(String),
}

/// A broker destination: how to connect and where to publish.
#[derive(Clone, PartialEq, Eq)]
pub struct Broker {
    /// The protocol.
    pub protocol: Protocol,
    /// The host name or address (an IPv6 address without brackets).
    pub host: String,
    /// The port (the protocol's default when the URL names none).
    pub port: u16,
    /// The user name (NATS: a token when there is no password), decoded.
    pub username: Option<String>,
    /// The password, decoded.
    pub password: Option<String>,
    /// The URL to connect with: scheme, credentials, host and port, plus
    /// the AMQP virtual host or the Redis database; no subject, topic or
    /// query. Destinations with the same one can share a connection.
    pub connection_url: String,
    /// Where to publish.
    pub target: BrokerTarget,
    redacted: String,
}

impl Broker {
    /// The connection URL with the password replaced by `***`, for logs.
    pub fn redacted_connection(&self) -> String {
        redact(&self.connection_url)
    }
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("url", &self.redacted)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// What the accepted forms are, for error messages.
const FORMS: &str = "a destination is NAME[:QUALIFIER], function:NAME[:QUALIFIER], dlq:QUEUE, or a nats://, amqp://, mqtt:// or redis:// URL";

impl FromStr for Destination {
    type Err = DestinationError;

    fn from_str(s: &str) -> Result<Self, DestinationError> {
        if s.len() > MAX_DESTINATION_LEN {
            return Err(DestinationError::new(format!(
                "must be at most {MAX_DESTINATION_LEN} bytes"
            )));
        }
        if let Some(rest) = s.strip_prefix("function:") {
            return function(rest);
        }
        if let Some(queue) = s.strip_prefix("dlq:") {
            check_queue_name(queue)?;
            return Ok(Destination::DeadLetterQueue(queue.to_string()));
        }
        if s.contains("://") {
            return broker(s).map(Destination::Broker);
        }
        function(s).map_err(|e| DestinationError::new(format!("{e}; {FORMS}")))
    }
}

fn function(s: &str) -> Result<Destination, DestinationError> {
    s.parse::<Target>()
        .map(Destination::Function)
        .map_err(|e| DestinationError::new(format!("`{s}` is not NAME[:QUALIFIER]: {e}")))
}

/// [`check_queue_name`]'s rule as an ECMA-262 pattern, for the OpenAPI
/// document.
pub const QUEUE_NAME_PATTERN: &str = "^[a-z][a-z0-9-]*$";

/// Checks a dead-letter queue name: 1 to 63 characters of `[a-z0-9-]`,
/// starting with a letter.
pub fn check_queue_name(name: &str) -> Result<(), DestinationError> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_QUEUE_NAME_LEN
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if ok {
        Ok(())
    } else {
        Err(DestinationError::new(format!(
            "the dead-letter queue name `{name}` must be 1 to {MAX_QUEUE_NAME_LEN} characters of a-z, 0-9 and '-', starting with a letter"
        )))
    }
}

/// `s` with the password of a URL's user information replaced by `***`
/// (and a lone user part, which may be a token, as well). Anything that
/// is not a URL is returned as it is.
pub fn redact(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => format!("{scheme}://***@{host}{tail}"),
        },
        None => s.to_string(),
    }
}

fn broker(s: &str) -> Result<Broker, DestinationError> {
    let url = Url::parse(s).map_err(|e| err(format!("is not a valid URL: {e}")))?;
    let protocol = match url.scheme() {
        "nats" => Protocol::Nats,
        "amqp" => Protocol::Amqp,
        "mqtt" => Protocol::Mqtt,
        "redis" => Protocol::Redis,
        other => {
            return Err(err(format!(
                "the scheme `{other}` is not supported: broker destinations start with nats://, amqp://, mqtt:// or redis://"
            )));
        }
    };
    let scheme = protocol.scheme();
    if url.fragment().is_some() {
        return Err(err(if protocol == Protocol::Mqtt {
            "needs a topic to publish to without `#` or `+`: they are wildcards, for subscribing"
        } else {
            "must not have a `#` fragment"
        }));
    }
    let host = match url.host() {
        Some(Host::Domain(d)) if !d.is_empty() => d.to_string(),
        Some(Host::Ipv4(a)) => a.to_string(),
        Some(Host::Ipv6(a)) => a.to_string(),
        _ => return Err(err(format!("has no host: {scheme}://HOST:PORT/..."))),
    };
    let port = url.port().unwrap_or(protocol.default_port());
    if port == 0 {
        return Err(err("has port 0: the port is 1 to 65535"));
    }
    let username = match url.username() {
        "" => None,
        u => Some(decode("user name", u)?),
    };
    let password = url.password().map(|p| decode("password", p)).transpose()?;
    let path = url.path();
    let mut connection = url.clone();
    connection.set_query(None);
    connection.set_fragment(None);
    let target = match protocol {
        Protocol::Nats => {
            no_query(&url)?;
            let subject = decode("subject", path.strip_prefix('/').unwrap_or(path))?;
            check_subject(&subject)?;
            connection.set_path("");
            BrokerTarget::NatsSubject(subject)
        }
        Protocol::Amqp => {
            let vhost = path.strip_prefix('/').unwrap_or(path);
            if vhost.contains('/') {
                return Err(err(format!(
                    "has the path `{path}`: the virtual host is one path segment (write `/` as `%2f`, as in amqp://HOST:5672/%2f?exchange=EX&routing_key=RK)"
                )));
            }
            decode("virtual host", vhost)?;
            let mut exchange = None;
            let mut routing_key = None;
            for (k, v) in url.query_pairs() {
                let slot = match k.as_ref() {
                    "exchange" => &mut exchange,
                    "routing_key" => &mut routing_key,
                    other => {
                        return Err(err(format!(
                            "has the unknown query parameter `{other}`: AMQP destinations take `exchange` and `routing_key`"
                        )));
                    }
                };
                if slot.replace(v.into_owned()).is_some() {
                    return Err(err(format!("has `{k}` twice in its query")));
                }
            }
            let exchange = exchange.unwrap_or_default();
            let routing_key = routing_key.unwrap_or_default();
            for (what, value) in [("exchange", &exchange), ("routing_key", &routing_key)] {
                if value.len() > MAX_AMQP_NAME_LEN || value.chars().any(char::is_control) {
                    return Err(err(format!(
                        "has an invalid `{what}`: at most {MAX_AMQP_NAME_LEN} bytes, no control characters"
                    )));
                }
            }
            if exchange.is_empty() && routing_key.is_empty() {
                return Err(err(
                    "needs a `routing_key` with the default exchange (`exchange` empty or absent): it names the queue, as in ?exchange=&routing_key=orders",
                ));
            }
            BrokerTarget::Amqp {
                exchange,
                routing_key,
            }
        }
        Protocol::Mqtt => {
            no_query(&url)?;
            let topic = decode("topic", path.strip_prefix('/').unwrap_or(path))?;
            check_topic(&topic)?;
            connection.set_path("");
            BrokerTarget::MqttTopic(topic)
        }
        Protocol::Redis => {
            let db = path.strip_prefix('/').unwrap_or(path);
            if !db.bytes().all(|b| b.is_ascii_digit()) || db.len() > 5 {
                return Err(err(format!(
                    "has the path `{path}`: a Redis destination's path is empty or a database number, as in redis://HOST:6379/?channel=CH"
                )));
            }
            let mut channel = None;
            let mut stream = None;
            for (k, v) in url.query_pairs() {
                let slot = match k.as_ref() {
                    "channel" => &mut channel,
                    "stream" => &mut stream,
                    other => {
                        return Err(err(format!(
                            "has the unknown query parameter `{other}`: Redis destinations take `channel` (PUBLISH) or `stream` (XADD)"
                        )));
                    }
                };
                if slot.replace(v.into_owned()).is_some() {
                    return Err(err(format!("has `{k}` twice in its query")));
                }
            }
            let (target, what, key) = match (channel, stream) {
                (Some(c), None) => (BrokerTarget::RedisChannel(c.clone()), "channel", c),
                (None, Some(k)) => (BrokerTarget::RedisStream(k.clone()), "stream", k),
                _ => {
                    return Err(err(
                        "needs exactly one of `?channel=CH` (PUBLISH) or `?stream=KEY` (XADD)",
                    ));
                }
            };
            if key.is_empty() || key.len() > MAX_REDIS_KEY_LEN {
                return Err(err(format!(
                    "has an invalid `{what}`: 1 to {MAX_REDIS_KEY_LEN} bytes"
                )));
            }
            target
        }
    };
    let connection_url = connection.to_string();
    let mut shown = url;
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    } else if !shown.username().is_empty() && protocol == Protocol::Nats {
        // A lone NATS user part is a token.
        let _ = shown.set_username("***");
    }
    Ok(Broker {
        protocol,
        host,
        port,
        username,
        password,
        connection_url,
        target,
        redacted: shown.to_string(),
    })
}

fn err(message: impl Into<String>) -> DestinationError {
    DestinationError::new(message)
}

fn no_query(url: &Url) -> Result<(), DestinationError> {
    if url.query().is_some() {
        return Err(DestinationError::new(format!(
            "must not have a query: {}:// destinations are {}",
            url.scheme(),
            if url.scheme() == "nats" {
                "nats://[user:pass@]host:port/SUBJECT"
            } else {
                "mqtt://[user:pass@]host:port/TOPIC/LEVELS"
            }
        )));
    }
    Ok(())
}

/// A NATS subject to publish to: dot-separated tokens, none empty, no
/// wildcards or whitespace.
fn check_subject(subject: &str) -> Result<(), DestinationError> {
    let ok = !subject.is_empty()
        && subject.len() <= MAX_SUBJECT_LEN
        && subject.split('.').all(|token| {
            !token.is_empty()
                && token
                    .chars()
                    .all(|c| !c.is_whitespace() && !c.is_control() && c != '*' && c != '>')
        });
    if ok {
        Ok(())
    } else {
        Err(DestinationError::new(format!(
            "needs a subject to publish to, as in nats://HOST:4222/orders.done: 1 to {MAX_SUBJECT_LEN} bytes of dot-separated tokens, none empty, without `*`, `>` or whitespace (got `{subject}`)"
        )))
    }
}

/// An MQTT topic to publish to: no wildcards, not a `$` system topic.
fn check_topic(topic: &str) -> Result<(), DestinationError> {
    let ok = !topic.is_empty()
        && topic.len() <= MAX_TOPIC_LEN
        && !topic.starts_with('$')
        && !topic.contains(['+', '#', '\0']);
    if ok {
        Ok(())
    } else {
        Err(DestinationError::new(format!(
            "needs a topic to publish to, as in mqtt://HOST:1883/orders/done: 1 to {MAX_TOPIC_LEN} bytes, without `+`, `#` or NUL, not starting with `$` (got `{topic}`)"
        )))
    }
}

/// Decodes `%XX` escapes; `what` names the part for the error.
fn decode(what: &str, s: &str) -> Result<String, DestinationError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    DestinationError::new(format!(
                        "has an invalid `%` escape in its {what} (`%` is followed by two hex digits)"
                    ))
                })?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| DestinationError::new(format!("has a {what} that is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Qualifier;

    fn parse(s: &str) -> Destination {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn error(s: &str) -> String {
        match s.parse::<Destination>() {
            Ok(d) => panic!("{s} parsed as {d:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn broker(s: &str) -> Broker {
        match parse(s) {
            Destination::Broker(b) => b,
            other => panic!("{s} is {other:?}"),
        }
    }

    #[test]
    fn functions_with_and_without_the_prefix() {
        let Destination::Function(t) = parse("sink") else {
            panic!()
        };
        assert_eq!(
            (t.name.as_str(), &t.qualifier),
            ("sink", &Qualifier::Latest)
        );
        let Destination::Function(t) = parse("sink:prod") else {
            panic!()
        };
        assert_eq!(t.qualifier, Qualifier::Alias("prod".parse().unwrap()));
        assert_eq!(parse("function:sink:3"), parse("sink:3"));
        // The prefix disambiguates a function named `dlq`.
        let Destination::Function(t) = parse("function:dlq:prod") else {
            panic!()
        };
        assert_eq!(t.name.as_str(), "dlq");
        assert_eq!(parse("sink:prod").kind(), "function");
        assert_eq!(parse("sink:prod").to_string(), "function:sink:prod");
        assert!(error("Not Valid").contains("is not NAME[:QUALIFIER]"));
        assert!(error("Not Valid").contains("dlq:QUEUE"), "lists the forms");
        assert!(error("function:").contains("is not NAME[:QUALIFIER]"));
        assert!(error("function:Bad").contains("`Bad`"));
    }

    #[test]
    fn named_dead_letter_queues() {
        let d = parse("dlq:payments");
        assert_eq!(d, Destination::DeadLetterQueue("payments".into()));
        assert_eq!(d.dead_letter_queue(), Some("payments"));
        assert_eq!((d.kind(), d.to_string().as_str()), ("dlq", "dlq:payments"));
        assert_eq!(parse("dlq:a").dead_letter_queue(), Some("a"));
        assert_eq!(parse("dlq:eu-1-").dead_letter_queue(), Some("eu-1-"));
        let longest = format!("dlq:{}", "a".repeat(63));
        assert!(parse(&longest).dead_letter_queue().is_some());
        for bad in [
            "dlq:",
            "dlq:Payments",
            "dlq:1st",
            "dlq:-x",
            "dlq:a_b",
            "dlq:a b",
        ] {
            assert!(error(bad).contains("1 to 63 characters"), "{bad}");
        }
        assert!(error(&format!("dlq:{}", "a".repeat(64))).contains("1 to 63"));
        assert_eq!(parse("sink").dead_letter_queue(), None);
        assert!(check_queue_name("default").is_ok());
        assert!(check_queue_name("").is_err());
    }

    #[test]
    fn nats_subjects() {
        let b = broker("nats://127.0.0.1:4222/orders.done");
        assert_eq!(b.protocol, Protocol::Nats);
        assert_eq!((b.host.as_str(), b.port), ("127.0.0.1", 4222));
        assert_eq!((b.username.as_deref(), b.password.as_deref()), (None, None));
        assert_eq!(b.connection_url, "nats://127.0.0.1:4222");
        assert_eq!(b.target, BrokerTarget::NatsSubject("orders.done".into()));
        let b = broker("nats://al%40ice:p%3Ass@nats.example:4333/a.b-c_d");
        assert_eq!(b.username.as_deref(), Some("al@ice"));
        assert_eq!(b.password.as_deref(), Some("p:ss"));
        assert_eq!(b.connection_url, "nats://al%40ice:p%3Ass@nats.example:4333");
        let shown = Destination::Broker(b).to_string();
        assert_eq!(shown, "nats://al%40ice:***@nats.example:4333/a.b-c_d");
        // Default port; a lone user part is a token, hidden when shown.
        let b = broker("nats://s3cret@localhost/x");
        assert_eq!(b.port, 4222);
        assert_eq!(b.username.as_deref(), Some("s3cret"));
        assert!(!format!("{b:?}").contains("s3cret"), "{b:?}");
        for bad in [
            "nats://127.0.0.1:4222",
            "nats://127.0.0.1:4222/",
            "nats://h/orders.*",
            "nats://h/orders.>",
            "nats://h/a..b",
            "nats://h/a%20b",
        ] {
            assert!(
                error(bad).contains("needs a subject"),
                "{bad}: {}",
                error(bad)
            );
        }
        assert!(error("nats://h/a?x=1").contains("must not have a query"));
        assert!(error("nats://h/a#x").contains("fragment"));
        assert!(error("nats:///a").contains("has no host"));
        assert!(error("nats://h:0/a").contains("port 0"));
        assert!(error("nats://h:99999/a").contains("not a valid URL"));
        assert!(error(&format!("nats://h/{}", "a".repeat(256))).contains("1 to 255"));
    }

    #[test]
    fn amqp_exchanges_and_routing_keys() {
        let b = broker("amqp://guest:guest@127.0.0.1:5672/%2f?exchange=&routing_key=orders");
        assert_eq!(b.protocol, Protocol::Amqp);
        assert_eq!(b.connection_url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(
            b.target,
            BrokerTarget::Amqp {
                exchange: String::new(),
                routing_key: "orders".into()
            }
        );
        assert_eq!(
            Destination::Broker(b).to_string(),
            "amqp://guest:***@127.0.0.1:5672/%2f?exchange=&routing_key=orders"
        );
        let b = broker("amqp://u:p@rabbit/prod?exchange=events&routing_key=order.%2A");
        assert_eq!(
            (b.port, b.connection_url.as_str()),
            (5672, "amqp://u:p@rabbit/prod")
        );
        assert_eq!(
            b.target,
            BrokerTarget::Amqp {
                exchange: "events".into(),
                routing_key: "order.*".into()
            }
        );
        // A fanout exchange needs no routing key.
        assert!(matches!(
            broker("amqp://u:p@h/%2f?exchange=fan").target,
            BrokerTarget::Amqp { ref routing_key, .. } if routing_key.is_empty()
        ));
        let e = error("amqp://u:p@h/%2f?exchange=");
        assert!(e.contains("needs a `routing_key`"), "{e}");
        let e = error("amqp://u:p@h/%2f?exchange=x&queue=y");
        assert!(e.contains("unknown query parameter `queue`"), "{e}");
        let e = error("amqp://u:p@h/%2f?exchange=x&exchange=y");
        assert!(e.contains("`exchange` twice"), "{e}");
        let e = error("amqp://u:p@h/a/b?routing_key=x");
        assert!(e.contains("one path segment"), "{e}");
        let e = error(&format!("amqp://u:p@h/?routing_key={}", "k".repeat(256)));
        assert!(e.contains("`routing_key`"), "{e}");
        assert!(error("amqp://u:p@h/%zz?routing_key=x").contains("invalid `%` escape"));
    }

    #[test]
    fn mqtt_topics() {
        let b = broker("mqtt://127.0.0.1:1883/wisp/orders/done");
        assert_eq!(b.protocol, Protocol::Mqtt);
        assert_eq!(b.connection_url, "mqtt://127.0.0.1:1883");
        assert_eq!(b.target, BrokerTarget::MqttTopic("wisp/orders/done".into()));
        let b = broker("mqtt://user:pw@[::1]/a%20b");
        assert_eq!((b.host.as_str(), b.port), ("::1", 1883));
        assert_eq!(b.target, BrokerTarget::MqttTopic("a b".into()));
        assert_eq!(
            (b.username.as_deref(), b.password.as_deref()),
            (Some("user"), Some("pw"))
        );
        for bad in [
            "mqtt://h",
            "mqtt://h/",
            "mqtt://h/a/+/b",
            "mqtt://h/a/%23",
            "mqtt://h/a/#",
            "mqtt://h/$SYS/x",
        ] {
            assert!(
                error(bad).contains("needs a topic"),
                "{bad}: {}",
                error(bad)
            );
        }
        assert!(error("mqtt://h/a?qos=2").contains("must not have a query"));
    }

    #[test]
    fn redis_channels_and_streams() {
        let b = broker("redis://127.0.0.1:6379/?channel=orders");
        assert_eq!(b.protocol, Protocol::Redis);
        assert_eq!(b.connection_url, "redis://127.0.0.1:6379/");
        assert_eq!(b.target, BrokerTarget::RedisChannel("orders".into()));
        let b = broker("redis://:secret@cache/2?stream=events%3Aorders");
        assert_eq!(
            (b.port, b.connection_url.as_str()),
            (6379, "redis://:secret@cache/2")
        );
        assert_eq!(b.password.as_deref(), Some("secret"));
        assert_eq!(b.target, BrokerTarget::RedisStream("events:orders".into()));
        assert_eq!(
            Destination::Broker(b.clone()).to_string(),
            "redis://:***@cache/2?stream=events%3Aorders"
        );
        assert_eq!(b.redacted_connection(), "redis://:***@cache/2");
        for bad in [
            "redis://h/",
            "redis://h/?channel=a&stream=b",
            "redis://h/?channel=",
        ] {
            assert!(
                error(bad).contains("exactly one of") || error(bad).contains("1 to 1024"),
                "{bad}: {}",
                error(bad)
            );
        }
        assert!(error("redis://h/?key=x").contains("unknown query parameter `key`"));
        assert!(error("redis://h/x?channel=a").contains("database number"));
        assert!(error("redis://h/?channel=a&channel=b").contains("twice"));
    }

    #[test]
    fn other_schemes_and_oversized_strings_are_refused() {
        let e = error("http://example.com/hook");
        assert!(e.contains("scheme `http` is not supported"), "{e}");
        let e = error("amqps://u:p@h/%2f?routing_key=x");
        assert!(e.contains("`amqps`"), "{e}");
        assert!(error("nats://").contains("has no host") || error("nats://").contains("URL"));
        let long = format!("nats://h/{}", "a".repeat(MAX_DESTINATION_LEN));
        assert!(error(&long).contains("at most 2048 bytes"));
        // Nothing here panics on odd input.
        for odd in [
            "://",
            "nats://@",
            "nats://:@h/a",
            "redis://[::1/?channel=a",
            "dlq:\u{1F600}",
            "mqtt://h/%ff",
        ] {
            let _ = odd.parse::<Destination>();
        }
    }

    #[test]
    fn redact_hides_passwords_and_tokens() {
        assert_eq!(redact("amqp://u:p@h:1/x?y"), "amqp://u:***@h:1/x?y");
        assert_eq!(redact("nats://tok@h/x"), "nats://***@h/x");
        assert_eq!(redact("nats://h/x"), "nats://h/x");
        assert_eq!(redact("sink:prod"), "sink:prod");
    }
}
