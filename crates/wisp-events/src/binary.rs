//! Binary content mode: attributes in `ce-*` headers, the body is the data.
//!
//! Header values are percent-encoded and decoded as the HTTP protocol
//! binding (section 3.1.3.2) says; the SDK's own HTTP binding does not, so
//! this module does it.

use std::borrow::Cow;

use bytes::Bytes;
use cloudevents::event::{AttributesReader, ExtensionValue};
use cloudevents::{Data, Event};
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri};

use crate::EventError;
use crate::validate::{Draft, check_specversion, format_time, is_json_media_type};

/// The prefix of every attribute header.
pub const HEADER_PREFIX: &str = "ce-";

/// Whether any header starts with `ce-`.
pub(crate) fn has_ce_headers(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|name| name.as_str().starts_with(HEADER_PREFIX))
}

/// Parse a binary-mode message (request or response) into an event.
pub(crate) fn parse(headers: &HeaderMap, body: Bytes) -> Result<Event, EventError> {
    // The spec version decides what the other headers mean: check it first.
    let specversion = header("specversion", headers)?;
    check_specversion(specversion.as_deref())?;

    let mut draft = Draft {
        specversion,
        ..Draft::default()
    };
    let mut ce_datacontenttype = None;
    for name in headers.keys() {
        let Some(attribute) = name.as_str().strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        let Some(value) = header(attribute, headers)? else {
            continue;
        };
        match attribute {
            "specversion" => {}
            "id" => draft.id = Some(value),
            "source" => draft.source = Some(value),
            "type" => draft.ty = Some(value),
            "subject" => draft.subject = Some(value),
            "time" => draft.time = Some(value),
            "dataschema" => draft.dataschema = Some(value),
            // Binary mode carries it in Content-Type; accept the header form
            // only as a fallback.
            "datacontenttype" => ce_datacontenttype = Some(value),
            _ => draft
                .extensions
                .push((attribute.to_owned(), ExtensionValue::String(value))),
        }
    }
    draft.datacontenttype = match headers.get(CONTENT_TYPE) {
        Some(ct) => Some(
            ct.to_str()
                .map_err(|_| {
                    EventError::invalid(
                        "datacontenttype",
                        "the Content-Type header must be visible ASCII",
                    )
                })?
                .trim()
                .to_owned(),
        ),
        None => ce_datacontenttype,
    };
    draft.data = body_to_data(draft.datacontenttype.as_deref(), body);
    draft.build()
}

/// The decoded value of the `ce-<attribute>` header, if present once.
fn header(attribute: &str, headers: &HeaderMap) -> Result<Option<String>, EventError> {
    let name = format!("{HEADER_PREFIX}{attribute}");
    let mut values = headers.get_all(name.as_str()).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(EventError::invalid(
            attribute,
            format!("the `{name}` header appears more than once"),
        ));
    }
    decode_header_value(value.as_bytes())
        .map(Some)
        .map_err(|reason| EventError::invalid(attribute, reason))
}

/// The event data of a binary-mode body: JSON when the content type says so
/// and it parses, text for `text/*` in UTF-8, bytes otherwise.
fn body_to_data(content_type: Option<&str>, body: Bytes) -> Option<Data> {
    if body.is_empty() {
        return None;
    }
    let ct = content_type.unwrap_or("");
    if is_json_media_type(ct)
        && let Ok(value) = serde_json::from_slice(&body)
    {
        return Some(Data::Json(value));
    }
    if ct.trim_start().to_ascii_lowercase().starts_with("text/")
        && let Ok(text) = std::str::from_utf8(&body)
    {
        return Some(Data::String(text.to_owned()));
    }
    Some(Data::Binary(body.to_vec()))
}

/// Undo the encoding of a header value: surrounding whitespace, then a
/// double-quoted string (RFC 7230 section 3.2.6) if the whole value is one,
/// then one round of percent-decoding, then UTF-8.
///
/// A `%` not followed by two hex digits is kept as it is, as common
/// decoders do, so senders that do not encode `%` still get through.
pub fn decode_header_value(raw: &[u8]) -> Result<String, String> {
    let raw = raw.trim_ascii();
    let unquoted: Cow<'_, [u8]> = if raw.len() >= 2 && raw[0] == b'"' && raw[raw.len() - 1] == b'"'
    {
        let inner = &raw[1..raw.len() - 1];
        let mut out = Vec::with_capacity(inner.len());
        let mut bytes = inner.iter();
        while let Some(&b) = bytes.next() {
            if b == b'\\' {
                match bytes.next() {
                    Some(&escaped) => out.push(escaped),
                    None => return Err("the quoted header value ends in a lone `\\`".to_owned()),
                }
            } else {
                out.push(b);
            }
        }
        Cow::Owned(out)
    } else {
        Cow::Borrowed(raw)
    };

    let mut out = Vec::with_capacity(unquoted.len());
    let mut i = 0;
    while i < unquoted.len() {
        let b = unquoted[i];
        if b == b'%'
            && let (Some(hi), Some(lo)) = (
                unquoted.get(i + 1).and_then(|&c| hex_value(c)),
                unquoted.get(i + 2).and_then(|&c| hex_value(c)),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| "the header value is not UTF-8 after percent-decoding".to_owned())
}

fn hex_value(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Percent-encode an attribute value for a header: every byte of its UTF-8
/// form that is a space, `"`, `%` or outside printable ASCII becomes `%XX`.
pub fn encode_header_value(value: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
    out
}

/// The event as a binary-mode HTTP `POST` to `path`.
///
/// Attributes become `ce-*` headers (percent-encoded where needed),
/// `datacontenttype` becomes `content-type` (`application/json` when the
/// event has JSON data and no content type), and the body is the data:
/// JSON serialized, text as UTF-8, bytes as they are. Extension values are
/// written in their canonical string form (`true`, `42`). A `path` that is
/// not a valid request target is replaced by `/`.
pub fn to_binary_request(event: &Event, path: &str) -> Request<Bytes> {
    let uri = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    let mut request = Request::new(data_bytes(event));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    write_headers(event, request.headers_mut());
    request
}

/// Write the event's attributes into `headers` the binary-mode way.
pub(crate) fn write_headers(event: &Event, headers: &mut HeaderMap) {
    for_each_attribute(event, |attribute, value| {
        if let Ok(name) = HeaderName::from_bytes(format!("{HEADER_PREFIX}{attribute}").as_bytes()) {
            let value = HeaderValue::from_str(&encode_header_value(value))
                .expect("percent-encoded values are visible ASCII");
            headers.insert(name, value);
        }
    });
    if let Some(value) = binary_content_type(event).and_then(|ct| HeaderValue::from_str(ct).ok()) {
        headers.insert(CONTENT_TYPE, value);
    }
}

/// Calls `put` with each attribute a binary-mode message carries as a
/// `ce-` header (name without the prefix, value not yet percent-encoded),
/// in a fixed order: the context attributes, then extensions by name.
pub fn for_each_attribute(event: &Event, mut put: impl FnMut(&str, &str)) {
    put("specversion", "1.0");
    put("id", event.id());
    put("source", event.source());
    put("type", event.ty());
    if let Some(subject) = event.subject() {
        put("subject", subject);
    }
    if let Some(time) = event.time() {
        put("time", &format_time(time));
    }
    if let Some(schema) = event.dataschema() {
        put("dataschema", schema.as_str());
    }
    let mut extensions: Vec<_> = event.iter_extensions().collect();
    extensions.sort_by_key(|(name, _)| *name);
    for (name, value) in extensions {
        put(name, &value.to_string());
    }
}

/// The `content-type` of the binary-mode message: `datacontenttype`, else
/// `application/json` when the data is JSON.
pub fn binary_content_type(event: &Event) -> Option<&str> {
    match (event.datacontenttype(), event.data()) {
        (Some(ct), _) => Some(ct),
        (None, Some(Data::Json(_))) => Some("application/json"),
        _ => None,
    }
}

/// The data as bytes: what a binary-mode body carries.
pub(crate) fn data_bytes(event: &Event) -> Bytes {
    Bytes::from(data_vec(event))
}

/// [`data_bytes`] as a vector.
pub fn data_vec(event: &Event) -> Vec<u8> {
    match event.data() {
        None => Vec::new(),
        Some(Data::Binary(bytes)) => bytes.clone(),
        Some(Data::String(text)) => text.clone().into_bytes(),
        Some(Data::Json(value)) => {
            serde_json::to_vec(value).expect("a serde_json::Value always serializes")
        }
    }
}
