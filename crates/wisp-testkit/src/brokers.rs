//! Where the tests find the shared brokers, and the broker programs they
//! start privately on free ports for outage tests: one place, with
//! defaults that match a machine set up as CI sets it up (the brokers on
//! loopback on their standard ports, the Debian packages' binaries).
//!
//! Each value can be changed by an environment variable, read once per
//! test process; an unset or empty variable means the default.
//!
//! | what | variable | default |
//! | --- | --- | --- |
//! | NATS with JetStream | `WISP_TEST_NATS_URL` | `nats://127.0.0.1:4222` |
//! | RabbitMQ | `WISP_TEST_AMQP_URL` | `amqp://guest:guest@127.0.0.1:5672/%2f` |
//! | Mosquitto (MQTT 5 and 3.1.1) | `WISP_TEST_MQTT_URL` | `mqtt://127.0.0.1:1883` |
//! | Redis | `WISP_TEST_REDIS_URL` | `redis://127.0.0.1:6379` |
//! | `nats-server` program | `WISP_TEST_NATS_SERVER_BIN` | `/usr/sbin/nats-server` |
//! | `mosquitto` program | `WISP_TEST_MOSQUITTO_BIN` | `/usr/sbin/mosquitto` |
//! | `redis-server` program | `WISP_TEST_REDIS_SERVER_BIN` | `/usr/bin/redis-server` |
//!
//! The tests append to the URLs (`/orders.done`, `?exchange=&routing_key=q`,
//! `/?stream=k`), so the NATS, MQTT and Redis URLs name a server and
//! nothing more (a trailing `/` is dropped), and the AMQP URL ends with its
//! virtual host. The private brokers always listen on 127.0.0.1.
//!
//! ```no_run
//! use wisp_testkit::brokers;
//! let source = serde_json::json!({"kind": "nats", "url": brokers::nats_url(), "subject": "orders.>"});
//! let (host, port) = brokers::host_port(brokers::mqtt_url());
//! println!("{source} {host}:{port} {}", brokers::nats_server_bin().display());
//! ```

use std::path::Path;
use std::sync::OnceLock;

/// The value of the environment variable `var` (surrounding whitespace
/// removed) if it is set and not empty, else `default`; read into `cell`
/// once.
fn setting(cell: &'static OnceLock<String>, var: &str, default: &str) -> &'static str {
    cell.get_or_init(|| match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => value.trim().to_string(),
        _ => default.to_string(),
    })
}

/// The shared NATS server, with JetStream enabled: `WISP_TEST_NATS_URL`,
/// by default `nats://127.0.0.1:4222`.
pub fn nats_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    setting(&URL, "WISP_TEST_NATS_URL", "nats://127.0.0.1:4222").trim_end_matches('/')
}

/// The shared RabbitMQ, with its virtual host: `WISP_TEST_AMQP_URL`, by
/// default `amqp://guest:guest@127.0.0.1:5672/%2f` (the vhost `/`).
pub fn amqp_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    setting(
        &URL,
        "WISP_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )
}

/// The shared MQTT broker (Mosquitto; MQTT 5 and 3.1.1):
/// `WISP_TEST_MQTT_URL`, by default `mqtt://127.0.0.1:1883`. The tests'
/// own MQTT clients take only its host and port ([`host_port`]).
pub fn mqtt_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    setting(&URL, "WISP_TEST_MQTT_URL", "mqtt://127.0.0.1:1883").trim_end_matches('/')
}

/// The shared Redis server: `WISP_TEST_REDIS_URL`, by default
/// `redis://127.0.0.1:6379`.
pub fn redis_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    setting(&URL, "WISP_TEST_REDIS_URL", "redis://127.0.0.1:6379").trim_end_matches('/')
}

/// The `nats-server` program the NATS outage tests start on free ports:
/// `WISP_TEST_NATS_SERVER_BIN`, by default `/usr/sbin/nats-server`.
pub fn nats_server_bin() -> &'static Path {
    static BIN: OnceLock<String> = OnceLock::new();
    Path::new(setting(
        &BIN,
        "WISP_TEST_NATS_SERVER_BIN",
        "/usr/sbin/nats-server",
    ))
}

/// The `mosquitto` program the MQTT outage tests start on free ports:
/// `WISP_TEST_MOSQUITTO_BIN`, by default `/usr/sbin/mosquitto`.
pub fn mosquitto_bin() -> &'static Path {
    static BIN: OnceLock<String> = OnceLock::new();
    Path::new(setting(
        &BIN,
        "WISP_TEST_MOSQUITTO_BIN",
        "/usr/sbin/mosquitto",
    ))
}

/// The `redis-server` program the Redis outage tests start on free ports:
/// `WISP_TEST_REDIS_SERVER_BIN`, by default `/usr/bin/redis-server`.
pub fn redis_server_bin() -> &'static Path {
    static BIN: OnceLock<String> = OnceLock::new();
    Path::new(setting(
        &BIN,
        "WISP_TEST_REDIS_SERVER_BIN",
        "/usr/bin/redis-server",
    ))
}

/// The host and port of a broker URL,
/// `scheme://[user[:password]@]host[:port][/...]` (an IPv6 host in
/// brackets, returned without them), for clients that take them apart
/// (MQTT, a plain TCP connection). Without a port, the scheme's standard
/// one: 4222 for `nats`, 5672 for `amqp`, 1883 for `mqtt` and `tcp`, 6379
/// for `redis`. Panics, naming the URL, on anything else.
pub fn host_port(url: &str) -> (&str, u16) {
    let bad = |why: &str| -> ! { panic!("broker URL `{url}` {why}") };
    let (scheme, rest) = url.split_once("://").unwrap_or_else(|| bad("has no `://`"));
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let at_host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match at_host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':')),
            None => bad("has an IPv6 address without its `]`"),
        },
        None => match at_host.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (at_host, None),
        },
    };
    let port = match (port, scheme) {
        (Some(port), _) => port
            .parse::<u16>()
            .unwrap_or_else(|_| bad("has a bad port")),
        (None, "nats") => 4222,
        (None, "amqp") => 5672,
        (None, "mqtt" | "tcp") => 1883,
        (None, "redis") => 6379,
        (None, _) => bad("has neither a port nor a scheme with a standard one"),
    };
    (host, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_reads_the_authority() {
        assert_eq!(host_port("nats://127.0.0.1:4222"), ("127.0.0.1", 4222));
        assert_eq!(
            host_port("amqp://guest:guest@rabbit:5673/%2f?x=1"),
            ("rabbit", 5673)
        );
        assert_eq!(host_port("mqtt://u:p@[::1]:1884/"), ("::1", 1884));
        assert_eq!(host_port("redis://cache"), ("cache", 6379));
        assert_eq!(host_port("tcp://[::1]"), ("::1", 1883));
    }

    #[test]
    #[should_panic(expected = "has neither a port")]
    fn host_port_needs_a_port_for_other_schemes() {
        host_port("http://example.com/");
    }

    #[test]
    fn every_broker_url_names_a_host_and_port() {
        for url in [nats_url(), amqp_url(), mqtt_url(), redis_url()] {
            let (host, port) = host_port(url);
            assert!(!host.is_empty() && port != 0, "{url}");
        }
    }
}
