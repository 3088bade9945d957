//! Attribute validation: the rules of the CloudEvents 1.0 core spec that the
//! SDK does not check (or checks without saying which attribute failed), and
//! the size limits Wisp adds.

use chrono::{DateTime, SecondsFormat, Utc};
use cloudevents::event::{AttributesReader, AttributesWriter, EventBuilder, ExtensionValue};
use cloudevents::{Data, Event, EventBuilderV10};
use url::Url;

use crate::{EventError, MAX_ATTRIBUTE_BYTES, MAX_EXTENSIONS};

/// Longest extension attribute name, per the core spec.
pub const MAX_EXTENSION_NAME_LEN: usize = 20;

/// The context attributes of CloudEvents 1.0, in the order errors report them.
pub(crate) const CONTEXT_ATTRIBUTES: [&str; 8] = [
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
];

/// An event's attributes as strings, gathered from headers or JSON members,
/// before validation turns them into an [`Event`].
#[derive(Default)]
pub(crate) struct Draft {
    pub specversion: Option<String>,
    pub id: Option<String>,
    pub source: Option<String>,
    pub ty: Option<String>,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    pub subject: Option<String>,
    pub time: Option<String>,
    pub extensions: Vec<(String, ExtensionValue)>,
    pub data: Option<Data>,
    /// An extension that could not become an [`ExtensionValue`], reported
    /// after the required attributes are checked.
    pub extension_error: Option<EventError>,
}

impl Draft {
    /// Check every attribute, in a fixed order, and build the event.
    pub fn build(self) -> Result<Event, EventError> {
        check_specversion(self.specversion.as_deref())?;
        let id = required("id", self.id)?;
        let source = required("source", self.source)?;
        let ty = required("type", self.ty)?;
        check_source(&source)?;
        if let Some(ct) = &self.datacontenttype {
            check_media_type(ct)?;
        }
        let dataschema = self
            .dataschema
            .as_deref()
            .map(parse_dataschema)
            .transpose()?;
        if let Some(subject) = &self.subject {
            check_optional_string("subject", subject)?;
        }
        let time = self.time.as_deref().map(parse_time).transpose()?;
        if let Some(error) = self.extension_error {
            return Err(error);
        }
        check_extensions(self.extensions.iter().map(|(k, v)| (k.as_str(), v)))?;

        let mut builder = EventBuilderV10::new().id(id).source(source).ty(ty);
        if let Some(subject) = self.subject {
            builder = builder.subject(subject);
        }
        if let Some(time) = time {
            builder = builder.time(time);
        }
        for (name, value) in self.extensions {
            builder = builder.extension(&name, value);
        }
        let mut event = builder
            .build()
            .map_err(|e| EventError::invalid("source", e.to_string()))?;
        event.set_dataschema(dataschema);
        event.set_datacontenttype(self.datacontenttype);
        if let Some(data) = self.data {
            event.set_data_unchecked(data);
        }
        Ok(event)
    }
}

/// Check an [`Event`] built by hand (for example a reply Wisp constructs
/// itself) against the same rules [`crate::parse_request`] applies.
pub fn validate(event: &Event) -> Result<(), EventError> {
    check_specversion(Some(event.specversion().as_str()))?;
    check_required("id", event.id())?;
    check_required("source", event.source())?;
    check_required("type", event.ty())?;
    check_source(event.source())?;
    if let Some(ct) = event.datacontenttype() {
        check_media_type(ct)?;
    }
    if let Some(schema) = event.dataschema() {
        check_size("dataschema", schema.as_str())?;
    }
    if let Some(subject) = event.subject() {
        check_optional_string("subject", subject)?;
    }
    check_extensions(event.iter_extensions())
}

pub(crate) fn check_specversion(version: Option<&str>) -> Result<(), EventError> {
    match version {
        None => Err(EventError::missing("specversion")),
        Some("1.0") => Ok(()),
        Some(other) => {
            let mut version = other.to_owned();
            truncate(&mut version, 64);
            Err(EventError::UnsupportedSpecVersion {
                version,
                index: None,
            })
        }
    }
}

fn required(name: &str, value: Option<String>) -> Result<String, EventError> {
    let value = value.ok_or_else(|| EventError::missing(name))?;
    check_required(name, &value)?;
    Ok(value)
}

fn check_required(name: &str, value: &str) -> Result<(), EventError> {
    if value.is_empty() {
        return Err(EventError::invalid(name, "it must not be empty"));
    }
    check_size(name, value)
}

fn check_optional_string(name: &str, value: &str) -> Result<(), EventError> {
    if value.is_empty() {
        return Err(EventError::invalid(
            name,
            "it must not be empty when present (omit it instead)",
        ));
    }
    check_size(name, value)
}

pub(crate) fn check_size(name: &str, value: &str) -> Result<(), EventError> {
    if value.len() > MAX_ATTRIBUTE_BYTES {
        return Err(EventError::TooLarge {
            attribute: name.to_owned(),
            size: value.len(),
            limit: MAX_ATTRIBUTE_BYTES,
            index: None,
        });
    }
    Ok(())
}

fn check_source(source: &str) -> Result<(), EventError> {
    check_uri_reference(source).map_err(|reason| EventError::invalid("source", reason))
}

/// The syntax of an RFC 3986 URI-reference: only URI characters, well-formed
/// percent-encoding, at most one `#`, and a valid scheme if the text before
/// the first `:` (that precedes any `/`, `?` or `#`) must be one.
pub(crate) fn check_uri_reference(value: &str) -> Result<(), String> {
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let ok = bytes.len() > i + 2
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(format!(
                    "it is not a URI-reference: `%` at byte {i} does not start a percent-encoded octet such as `%20`"
                ));
            }
            i += 3;
            continue;
        }
        if !is_uri_char(b) {
            let c = value[i..].chars().next().unwrap_or('?');
            return Err(format!(
                "it is not a URI-reference: the character {c:?} at byte {i} is not allowed (percent-encode it)"
            ));
        }
        i += 1;
    }
    if value.matches('#').count() > 1 {
        return Err("it is not a URI-reference: it has more than one `#`".to_owned());
    }
    if let Some(end) = value.find([':', '/', '?', '#'])
        && bytes[end] == b':'
    {
        let scheme = &value[..end];
        let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !valid {
            return Err(format!(
                "it is not a URI-reference: `{scheme}` before the first `:` is not a valid URI scheme"
            ));
        }
    }
    Ok(())
}

fn is_uri_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=".contains(&b)
}

fn parse_dataschema(value: &str) -> Result<Url, EventError> {
    check_optional_string("dataschema", value)?;
    check_uri_reference(value).map_err(|reason| EventError::invalid("dataschema", reason))?;
    Url::parse(value).map_err(|e| {
        EventError::invalid(
            "dataschema",
            format!("it must be an absolute URI such as `https://example.com/schema.json`: {e}"),
        )
    })
}

fn parse_time(value: &str) -> Result<DateTime<Utc>, EventError> {
    check_size("time", value)?;
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            EventError::invalid(
                "time",
                format!("it must be an RFC 3339 timestamp such as `2024-05-01T12:00:00Z`: {e}"),
            )
        })
}

/// A media type as RFC 2046 writes it: `type/subtype`, optional parameters.
fn check_media_type(value: &str) -> Result<(), EventError> {
    check_optional_string("datacontenttype", value)?;
    let essence = value.split(';').next().unwrap_or("").trim();
    let valid = essence.split_once('/').is_some_and(|(t, s)| {
        !t.is_empty() && !s.is_empty() && t.bytes().chain(s.bytes()).all(is_token_char)
    }) && value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
    if !valid {
        return Err(EventError::invalid(
            "datacontenttype",
            "it must be a media type such as `application/json`",
        ));
    }
    Ok(())
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn check_extensions<'a>(
    extensions: impl Iterator<Item = (&'a str, &'a ExtensionValue)>,
) -> Result<(), EventError> {
    let mut sorted: Vec<_> = extensions.collect();
    let count = sorted.len();
    if count > MAX_EXTENSIONS {
        return Err(EventError::TooManyExtensions {
            count,
            limit: MAX_EXTENSIONS,
            index: None,
        });
    }
    sorted.sort_by_key(|(name, _)| *name);
    for (name, value) in sorted {
        check_extension_name(name)?;
        if let ExtensionValue::String(s) = value {
            check_size(name, s)?;
        }
    }
    Ok(())
}

/// Extension names: 1 to 20 characters, each `a`-`z` or `0`-`9`, and not
/// the name of a context attribute or of the `data` member.
pub(crate) fn check_extension_name(name: &str) -> Result<(), EventError> {
    if CONTEXT_ATTRIBUTES.contains(&name) || name == "data" || name == "data_base64" {
        return Err(EventError::invalid(
            name,
            "this name is reserved and cannot be an extension attribute",
        ));
    }
    let valid = !name.is_empty()
        && name.len() <= MAX_EXTENSION_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !valid {
        let mut shown = name.to_owned();
        truncate(&mut shown, 64);
        return Err(EventError::InvalidAttribute {
            attribute: shown,
            reason: format!(
                "extension attribute names must be 1 to {MAX_EXTENSION_NAME_LEN} characters, \
                 each a lowercase letter `a`-`z` or a digit `0`-`9`"
            ),
            index: None,
        });
    }
    Ok(())
}

/// Whether a media type is JSON: `application/json`, `text/json` or any
/// `+json` suffix, parameters and case ignored.
pub fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// The canonical string form of a timestamp: RFC 3339 in UTC, `Z` suffix,
/// as many fraction digits as needed.
pub(crate) fn format_time(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
}
