//! The JSON event format: structured mode (one event) and batch mode (an
//! array of events).
//!
//! Writing uses the SDK's serde serializer. Reading is done here, member by
//! member, so that an error names the attribute at fault; the SDK's
//! deserializer only reports a serde message.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use cloudevents::event::{AttributesReader, ExtensionValue, SpecVersion};
use cloudevents::{Data, Event, EventBuilder as _, EventBuilderV10};
use serde_json::{Map, Value};

use crate::validate::{Draft, check_size, check_specversion, is_json_media_type};
use crate::{EventError, MAX_BATCH_EVENTS};

/// Standard base64, padding optional when reading.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Parse a structured-mode body: one JSON event.
pub(crate) fn parse_structured(body: &[u8]) -> Result<Event, EventError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| EventError::json(format!("the body is not JSON: {e}")))?;
    from_structured_json(value)
}

/// Parse a batch-mode body: a JSON array of 1 to [`MAX_BATCH_EVENTS`] events.
pub(crate) fn parse_batch(body: &[u8]) -> Result<Vec<Event>, EventError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| EventError::json(format!("the body is not JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(EventError::json(format!(
            "a batch must be a JSON array of events, not {}",
            kind(&value)
        )));
    };
    if items.is_empty() {
        return Err(EventError::EmptyBatch);
    }
    if items.len() > MAX_BATCH_EVENTS {
        return Err(EventError::TooManyEvents {
            count: items.len(),
            limit: MAX_BATCH_EVENTS,
        });
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| from_structured_json(item).map_err(|e| e.at(i)))
        .collect()
}

/// Read one event in the JSON event format (as [`to_structured_json`]
/// writes it, or as any CloudEvents SDK does), with the same validation as
/// [`crate::parse_request`].
///
/// `data` is kept as JSON when `datacontenttype` is JSON or absent, as text
/// when it is a JSON string under another content type; `data_base64` is
/// decoded to bytes. Extension values keep their JSON type (string, boolean
/// or integer).
pub fn from_structured_json(value: Value) -> Result<Event, EventError> {
    let Value::Object(mut map) = value else {
        return Err(EventError::json(format!(
            "an event must be a JSON object, not {}",
            kind(&value)
        )));
    };
    let specversion = take_string(&mut map, "specversion")?;
    check_specversion(specversion.as_deref())?;

    let mut draft = Draft {
        specversion,
        id: take_string(&mut map, "id")?,
        source: take_string(&mut map, "source")?,
        ty: take_string(&mut map, "type")?,
        datacontenttype: take_string(&mut map, "datacontenttype")?,
        dataschema: take_string(&mut map, "dataschema")?,
        subject: take_string(&mut map, "subject")?,
        time: take_string(&mut map, "time")?,
        ..Draft::default()
    };

    let data = map.remove("data").filter(|v| !v.is_null());
    let data_base64 = map.remove("data_base64").filter(|v| !v.is_null());
    draft.data = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(EventError::invalid(
                "data_base64",
                "an event carries `data` or `data_base64`, not both",
            ));
        }
        (Some(data), None) => {
            let json = draft
                .datacontenttype
                .as_deref()
                .is_none_or(is_json_media_type);
            Some(match data {
                Value::String(text) if !json => Data::String(text),
                other => Data::Json(other),
            })
        }
        (None, Some(Value::String(encoded))) => {
            Some(Data::Binary(BASE64.decode(encoded.trim()).map_err(
                |e| EventError::invalid("data_base64", format!("it is not valid base64: {e}")),
            )?))
        }
        (None, Some(other)) => {
            return Err(EventError::invalid(
                "data_base64",
                format!("it must be a base64 string, not {}", kind(&other)),
            ));
        }
        (None, None) => None,
    };

    for (name, value) in map {
        let value = match value {
            Value::Null => continue,
            Value::String(s) => ExtensionValue::String(s),
            Value::Bool(b) => ExtensionValue::Boolean(b),
            Value::Number(n) if n.is_i64() => ExtensionValue::Integer(n.as_i64().unwrap_or(0)),
            other => {
                // Reported after the required attributes, like other
                // extension errors; a bad name is the clearer error.
                if draft.extension_error.is_none() {
                    draft.extension_error = Some(
                        crate::validate::check_extension_name(&name)
                            .err()
                            .unwrap_or_else(|| {
                                EventError::invalid(
                                    &name,
                                    format!(
                                        "extension values must be a string, a boolean or an integer, not {}",
                                        kind(&other)
                                    ),
                                )
                            }),
                    );
                }
                continue;
            }
        };
        draft.extensions.push((name, value));
    }
    draft.build()
}

/// A context attribute that must be a JSON string when present.
fn take_string(map: &mut Map<String, Value>, name: &str) -> Result<Option<String>, EventError> {
    match map.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            check_size(name, &s)?;
            Ok(Some(s))
        }
        Some(other) => Err(EventError::invalid(
            name,
            format!("it must be a JSON string, not {}", kind(&other)),
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number with a fraction or exponent",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The event in the JSON event format (what structured mode sends), for
/// storing and for sinks. Binary data is written as `data_base64`, text and
/// JSON data as `data`; `time` is RFC 3339 in UTC.
pub fn to_structured_json(event: &Event) -> Value {
    let converted;
    let event = if event.specversion() == SpecVersion::V10 {
        event
    } else {
        converted = EventBuilderV10::from(event.clone())
            .build()
            .expect("an existing event has every required attribute");
        &converted
    };
    serde_json::to_value(event).expect("an event always serializes to JSON")
}

/// Events as a batch: a JSON array in the JSON event format.
pub fn to_batch_json(events: &[Event]) -> Value {
    Value::Array(events.iter().map(to_structured_json).collect())
}
