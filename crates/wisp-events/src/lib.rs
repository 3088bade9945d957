//! CloudEvents 1.0 over HTTP for Wisp: reads events from ingress requests in
//! all three HTTP content modes, validates them naming the attribute at
//! fault, hands them to functions as binary-mode requests, and recognises a
//! function's response as a reply event.
//!
//! ```
//! use bytes::Bytes;
//! use wisp_events::{AttributesReader, parse_request, reply_from_response, to_binary_request};
//!
//! // An event arrives in binary mode: attributes in `ce-*` headers, the body is the data.
//! let (parts, ()) = http::Request::post("/events")
//!     .header("ce-specversion", "1.0")
//!     .header("ce-id", "order-42")
//!     .header("ce-source", "/shop/orders")
//!     .header("ce-type", "com.example.order.created")
//!     .header("ce-partitionkey", "customer%207") // extensions are percent-decoded
//!     .header("content-type", "application/json")
//!     .body(())
//!     .unwrap()
//!     .into_parts();
//! let events = parse_request(&parts, Bytes::from_static(br#"{"total": 12}"#)).unwrap();
//! assert_eq!(events[0].ty(), "com.example.order.created");
//! assert_eq!(events[0].extension("partitionkey").unwrap().to_string(), "customer 7");
//!
//! // A function receives it as a plain HTTP request (wasi:http), in binary mode.
//! let request = to_binary_request(&events[0], "/");
//! assert_eq!(request.headers()["ce-partitionkey"], "customer%207");
//! assert_eq!(&request.body()[..], br#"{"total":12}"#);
//!
//! // A response with no `ce-*` headers is not a reply event.
//! let (parts, ()) = http::Response::new(()).into_parts();
//! assert_eq!(reply_from_response(&parts, Bytes::new()).unwrap(), None);
//!
//! // Invalid events are refused with the attribute named.
//! let (parts, ()) = http::Request::post("/events")
//!     .header("ce-specversion", "1.0")
//!     .header("ce-source", "/shop/orders")
//!     .header("ce-type", "com.example.order.created")
//!     .body(())
//!     .unwrap()
//!     .into_parts();
//! let error = parse_request(&parts, Bytes::new()).unwrap_err();
//! assert_eq!(error.attribute(), Some("id"));
//! assert_eq!(error.to_string(), "CloudEvent is missing the required attribute `id`");
//! ```
//!
//! The event type is the official SDK's ([`cloudevents`], re-exported).
//! This crate adds what the SDK does not do: batch mode, percent-encoding
//! of header values, validation errors that name the attribute, size
//! limits, and reply detection.
//!
//! Types of extension attributes: binary mode carries every value as a
//! string, so an integer or boolean extension read from JSON
//! (`"count": 42`) comes back from a binary-mode request as the string
//! `"42"`, its canonical string form, as the HTTP binding specifies.

mod binary;
mod error;
mod json;
mod validate;

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_TYPE;

pub use binary::{
    HEADER_PREFIX, binary_content_type, data_vec, decode_header_value, encode_header_value,
    for_each_attribute, to_binary_request,
};
pub use cloudevents;
pub use cloudevents::event::{
    AttributeValue, AttributesReader, AttributesWriter, ExtensionValue, SpecVersion,
};
pub use cloudevents::{Data, Event, EventBuilder, EventBuilderV10};
pub use error::EventError;
pub use json::{from_structured_json, to_batch_json, to_structured_json};
pub use validate::{MAX_EXTENSION_NAME_LEN, is_json_media_type, validate};

/// Most events in one batch-mode request.
pub const MAX_BATCH_EVENTS: usize = 1000;
/// Longest value of any one attribute, context or extension, in bytes
/// (after percent-decoding).
pub const MAX_ATTRIBUTE_BYTES: usize = 4096;
/// Most extension attributes on one event.
pub const MAX_EXTENSIONS: usize = 64;

/// Content type of structured mode (JSON event format).
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
/// Content type of batch mode (JSON event format).
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// How an HTTP message carries its event(s).
enum Mode {
    Binary,
    Structured,
    Batch,
}

/// The mode of a message, from its content type, then its headers.
/// Structured and batch content types win over `ce-*` headers, as the
/// HTTP binding says.
fn mode(headers: &HeaderMap) -> Result<Option<Mode>, EventError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if let Some(ct) = &content_type {
        let mut params = ct.split(';');
        let essence = params.next().unwrap_or("").trim().to_ascii_lowercase();
        let mode = match essence.as_str() {
            STRUCTURED_CONTENT_TYPE => Some(Mode::Structured),
            BATCH_CONTENT_TYPE => Some(Mode::Batch),
            _ if essence.starts_with("application/cloudevents") => {
                // Another event format (XML, Avro, Protobuf): not supported.
                return Err(EventError::NotAnEvent {
                    content_type: content_type.clone(),
                });
            }
            _ => None,
        };
        if let Some(mode) = mode {
            for param in params {
                let Some((key, value)) = param.split_once('=') else {
                    continue;
                };
                let charset = value.trim().trim_matches('"').to_ascii_lowercase();
                if key.trim().eq_ignore_ascii_case("charset")
                    && charset != "utf-8"
                    && charset != "utf8"
                {
                    return Err(EventError::json(format!(
                        "charset `{charset}` is not supported: CloudEvents JSON is UTF-8"
                    )));
                }
            }
            return Ok(Some(mode));
        }
    }
    if binary::has_ce_headers(headers) {
        return Ok(Some(Mode::Binary));
    }
    Ok(None)
}

/// Read the event(s) of an ingress request, in any of the three HTTP
/// content modes:
///
/// - binary: `ce-*` headers hold the attributes (`ce-specversion`, `ce-id`,
///   `ce-source`, `ce-type` required), `content-type` is `datacontenttype`,
///   any other `ce-<name>` is an extension, and the body is the data;
/// - structured: `content-type: application/cloudevents+json`, the body is
///   one event in the JSON format;
/// - batch: `content-type: application/cloudevents-batch+json`, the body is
///   a JSON array of 1 to [`MAX_BATCH_EVENTS`] events.
///
/// Binary and structured mode give one event. Every event is validated
/// (see [`EventError`] for what is checked); the first failure is returned,
/// with its position for a batch.
pub fn parse_request(parts: &http::request::Parts, body: Bytes) -> Result<Vec<Event>, EventError> {
    match mode(&parts.headers)? {
        Some(Mode::Binary) => Ok(vec![binary::parse(&parts.headers, body)?]),
        Some(Mode::Structured) => Ok(vec![json::parse_structured(&body)?]),
        Some(Mode::Batch) => json::parse_batch(&body),
        None => Err(EventError::NotAnEvent {
            content_type: parts
                .headers
                .get(CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        }),
    }
}

/// The reply event in a function's response, if it has one.
///
/// A response with any `ce-*` header is a binary-mode event; one with
/// `content-type: application/cloudevents+json` is a structured-mode
/// event; anything else is an ordinary response (`Ok(None)`). A response
/// that tries to be an event but is not a valid one is an error, so that
/// the function's author learns why; so is a batch, as a reply is one
/// event, and so is another event format (`application/cloudevents+xml`).
/// The status code is not looked at: whether a failed invocation's
/// reply is published is the caller's decision.
pub fn reply_from_response(
    parts: &http::response::Parts,
    body: Bytes,
) -> Result<Option<Event>, EventError> {
    match mode(&parts.headers)? {
        Some(Mode::Binary) => binary::parse(&parts.headers, body).map(Some),
        Some(Mode::Structured) => json::parse_structured(&body).map(Some),
        Some(Mode::Batch) => Err(EventError::BatchReply),
        None => Ok(None),
    }
}
