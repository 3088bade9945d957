//! Parsers for flag values: `KEY=VALUE` pairs, `--since` times, `-H`
//! headers and listen addresses.

use chrono::{DateTime, TimeDelta, Utc};
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};

/// `KEY=VALUE` (split at the first `=`; the value may be empty or contain `=`).
pub fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        Some(_) => Err(format!("`{s}` has an empty key; expected KEY=VALUE")),
        None => Err(format!("`{s}` is not of the form KEY=VALUE")),
    }
}

/// Collects repeated `KEY=VALUE` flags into a map; a key given twice is an error.
pub fn into_map(
    flag: &str,
    pairs: &[(String, String)],
) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for (k, v) in pairs {
        if map.insert(k.clone(), v.clone()).is_some() {
            return Err(format!("{flag} `{k}` is given more than once"));
        }
    }
    Ok(map)
}

/// A `-H 'Name: value'` header.
pub fn header(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("`{s}` is not a header of the form 'Name: value'")),
    }
}

/// A duration such as `30s`, `10m`, `2h`, `1d` or `1h30m`.
pub fn duration(s: &str) -> Result<TimeDelta, String> {
    let bad = || format!("`{s}` is not a duration like 30s, 10m, 2h, 1d or 1h30m");
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: i64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let secs_per_unit = match &rest[..unit_len] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(secs_per_unit)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(bad)?;
    }
    TimeDelta::try_seconds(total).ok_or_else(bad)
}

/// `--since`: an RFC 3339 time, or a duration before `now`.
pub fn since(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = duration(s).map_err(|_| {
        format!(
            "`{s}` is neither an RFC 3339 time (such as 2025-01-31T12:00:00Z) \
             nor a duration (such as 30s, 10m, 2h, 1d)"
        )
    })?;
    now.checked_sub_signed(d)
        .ok_or_else(|| format!("`{s}` reaches too far back"))
}

/// A listen address: `IP:PORT`, or `HOST:PORT` resolved to its first address.
pub fn listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    s.to_socket_addrs()
        .map_err(|e| format!("`{s}` is not an address like 127.0.0.1:8080: {e}"))?
        .next()
        .ok_or_else(|| format!("`{s}` resolves to no address"))
}

/// A non-negative number of seconds, such as `30` or `0.5`.
pub fn seconds(s: &str) -> Result<std::time::Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|x| std::time::Duration::try_from_secs_f64(x).ok())
        .ok_or_else(|| format!("`{s}` is not a number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values() {
        assert_eq!(
            key_value("tier=demo").unwrap(),
            ("tier".into(), "demo".into())
        );
        assert_eq!(key_value("A=x=y").unwrap(), ("A".into(), "x=y".into()));
        assert_eq!(key_value("empty=").unwrap(), ("empty".into(), "".into()));
        assert!(key_value("novalue").unwrap_err().contains("KEY=VALUE"));
        assert!(key_value("=v").unwrap_err().contains("empty key"));
        let pairs = vec![("a".to_string(), "1".to_string()), ("a".into(), "2".into())];
        assert!(into_map("--env", &pairs).unwrap_err().contains("`a`"));
        assert_eq!(into_map("--env", &pairs[..1]).unwrap()["a"], "1");
    }

    #[test]
    fn headers() {
        assert_eq!(
            header("Content-Type: text/plain").unwrap(),
            ("Content-Type".into(), "text/plain".into())
        );
        assert_eq!(header("x-a:b:c").unwrap(), ("x-a".into(), "b:c".into()));
        assert_eq!(header("x-empty:").unwrap(), ("x-empty".into(), "".into()));
        assert!(header("nocolon").is_err());
        assert!(header(": v").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("30s").unwrap(), TimeDelta::seconds(30));
        assert_eq!(duration("10m").unwrap(), TimeDelta::minutes(10));
        assert_eq!(duration("2h").unwrap(), TimeDelta::hours(2));
        assert_eq!(duration("1d").unwrap(), TimeDelta::days(1));
        assert_eq!(duration("1h30m").unwrap(), TimeDelta::minutes(90));
        assert_eq!(duration("0s").unwrap(), TimeDelta::zero());
        for bad in [
            "",
            "10",
            "m",
            "10x",
            "1.5h",
            "-5m",
            "10m ",
            "99999999999999999999s",
        ] {
            assert!(duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn since_takes_times_and_relative_durations() {
        let now = DateTime::parse_from_rfc3339("2025-01-31T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            since("10m", now).unwrap().to_rfc3339(),
            "2025-01-31T11:50:00+00:00"
        );
        assert_eq!(
            since("2025-01-30T08:00:00+02:00", now)
                .unwrap()
                .to_rfc3339(),
            "2025-01-30T06:00:00+00:00"
        );
        assert!(since("yesterday", now).unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn listen_addresses_and_seconds() {
        assert_eq!(listen("0.0.0.0:0").unwrap().port(), 0);
        assert!(listen("localhost:8080").unwrap().ip().is_loopback());
        assert!(listen("nonsense").is_err());
        assert_eq!(
            seconds("0.5").unwrap(),
            std::time::Duration::from_millis(500)
        );
        assert!(seconds("-1").is_err());
    }
}
