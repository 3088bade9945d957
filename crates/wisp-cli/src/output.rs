//! Writing to stdout: text lines, aligned tables and JSON, with a closed
//! pipe (`wisp logs | head`) ending the process quietly instead of panicking.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use std::fmt::Display;
use std::io::Write;

/// Writes raw bytes to stdout.
pub fn raw(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        stdout_failed(e);
    }
}

/// Writes one line to stdout.
pub fn line(text: impl Display) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        stdout_failed(e);
    }
}

fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to stdout: {e}");
    std::process::exit(1);
}

/// Pretty-printed JSON of `value`.
pub fn json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => line(s),
        Err(e) => line(format!("{{\"error\": \"cannot serialize: {e}\"}}")),
    }
}

/// JSON of `value` on one line.
pub fn json_line(value: &impl Serialize) {
    match serde_json::to_string(value) {
        Ok(s) => line(s),
        Err(e) => line(format!("{{\"error\": \"cannot serialize: {e}\"}}")),
    }
}

/// `header` and `rows` as columns separated by two spaces; the last column
/// is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(cols) {
            if i + 1 < cols {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.pop();
    out
}

/// `key: value` lines with the values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    pairs
        .iter()
        .map(|(k, v)| {
            format!("{:<width$} {v}", format!("{k}:"))
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A timestamp to the second, in UTC.
pub fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `k=v, k2=v2`, or `-` when empty.
pub fn map(m: &std::collections::BTreeMap<String, String>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A digest shortened for tables: `sha256:` and 12 hex digits.
pub fn short_digest(d: &wisp_core::Digest) -> String {
    format!("sha256:{}", &d.hex()[..12])
}

/// A routing weight as a percentage: `0.1` is `10%`.
pub fn percent(weight: f64) -> String {
    format!("{}%", (weight * 10_000.0).round() / 100.0)
}

/// `-` for an empty string.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["NAME", "SIZE", "NOTE"],
            &[
                vec!["a".into(), "1".into(), "".into()],
                vec!["longer".into(), "22".into(), "x".into()],
            ],
        );
        assert_eq!(t, "NAME    SIZE  NOTE\na       1\nlonger  22    x");
    }

    #[test]
    fn percentages() {
        assert_eq!(percent(0.1), "10%");
        assert_eq!(percent(0.125), "12.5%");
        assert_eq!(percent(1.0), "100%");
    }
}
