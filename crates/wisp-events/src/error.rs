//! The one error type of this crate: why a request, a response or a JSON
//! document is not a valid CloudEvent, naming the attribute at fault.

use http::StatusCode;

/// Why something is not a valid CloudEvent (or batch of them).
///
/// Every variant about one attribute names it, so an API can report it as
/// the failing `field` ([`EventError::attribute`]). `index` is the
/// zero-based position of the event in a batch (`None` outside batch
/// mode); messages count events from 1 and also show the index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// A required attribute (`specversion`, `id`, `source` or `type`) is absent.
    #[error("CloudEvent is missing the required attribute `{attribute}`{}", in_batch(*.index))]
    MissingAttribute {
        /// The attribute's name.
        attribute: String,
        /// Position in a batch.
        index: Option<usize>,
    },
    /// An attribute (or an extension, or the name of one) is malformed.
    #[error("CloudEvent attribute `{attribute}` is invalid: {reason}{}", in_batch(*.index))]
    InvalidAttribute {
        /// The attribute's name.
        attribute: String,
        /// What is wrong with it, in words.
        reason: String,
        /// Position in a batch.
        index: Option<usize>,
    },
    /// `specversion` is not `1.0`.
    #[error(
        "CloudEvent attribute `specversion` is \"{version}\", but only \"1.0\" is supported{}",
        in_batch(*.index)
    )]
    UnsupportedSpecVersion {
        /// The version the event declared.
        version: String,
        /// Position in a batch.
        index: Option<usize>,
    },
    /// Neither binary mode (`ce-*` headers) nor a CloudEvents JSON content type.
    #[error(
        "not a CloudEvent: expected binary mode (`ce-specversion`, `ce-id`, `ce-source` and `ce-type` headers, body = data), \
         structured mode (content-type `application/cloudevents+json`) or batch mode \
         (content-type `application/cloudevents-batch+json`){}",
        found_content_type(.content_type)
    )]
    NotAnEvent {
        /// The request's content type, if it had one.
        content_type: Option<String>,
    },
    /// A structured or batch body is not the JSON the event format requires.
    #[error("CloudEvents JSON is invalid: {reason}{}", in_batch(*.index))]
    InvalidJson {
        /// What is wrong with it, in words.
        reason: String,
        /// Position in a batch.
        index: Option<usize>,
    },
    /// An attribute's value is longer than [`crate::MAX_ATTRIBUTE_BYTES`].
    #[error(
        "CloudEvent attribute `{attribute}` is {size} bytes long, over the limit of {limit} bytes{}",
        in_batch(*.index)
    )]
    TooLarge {
        /// The attribute's name.
        attribute: String,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
        /// Position in a batch.
        index: Option<usize>,
    },
    /// An event carries more than [`crate::MAX_EXTENSIONS`] extension attributes.
    #[error(
        "CloudEvent has {count} extension attributes, over the limit of {limit}{}",
        in_batch(*.index)
    )]
    TooManyExtensions {
        /// How many it has.
        count: usize,
        /// The limit.
        limit: usize,
        /// Position in a batch.
        index: Option<usize>,
    },
    /// A batch holds no event.
    #[error("the CloudEvents batch is empty: it must hold at least one event")]
    EmptyBatch,
    /// A batch holds more than [`crate::MAX_BATCH_EVENTS`] events.
    #[error("the CloudEvents batch holds {count} events, over the limit of {limit}")]
    TooManyEvents {
        /// How many it holds.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A function answered with a batch, but a reply is one event.
    #[error(
        "a reply is one CloudEvent (binary mode or `application/cloudevents+json`), \
         not a batch (`application/cloudevents-batch+json`)"
    )]
    BatchReply,
}

impl EventError {
    /// The attribute at fault, for the API's `field`, if the error is about one.
    pub fn attribute(&self) -> Option<&str> {
        match self {
            EventError::MissingAttribute { attribute, .. }
            | EventError::InvalidAttribute { attribute, .. }
            | EventError::TooLarge { attribute, .. } => Some(attribute),
            EventError::UnsupportedSpecVersion { .. } => Some("specversion"),
            _ => None,
        }
    }

    /// The zero-based position of the offending event in a batch, if any.
    pub fn index(&self) -> Option<usize> {
        match self {
            EventError::MissingAttribute { index, .. }
            | EventError::InvalidAttribute { index, .. }
            | EventError::UnsupportedSpecVersion { index, .. }
            | EventError::InvalidJson { index, .. }
            | EventError::TooLarge { index, .. }
            | EventError::TooManyExtensions { index, .. } => *index,
            _ => None,
        }
    }

    /// The HTTP status an ingress should answer with: 415 when the request
    /// is not a CloudEvent at all, 413 for size limits, 400 otherwise.
    pub fn status_code(&self) -> StatusCode {
        match self {
            EventError::NotAnEvent { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            EventError::TooLarge { .. }
            | EventError::TooManyEvents { .. }
            | EventError::TooManyExtensions { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The same error, located at position `index` of a batch.
    pub(crate) fn at(mut self, at: usize) -> Self {
        match &mut self {
            EventError::MissingAttribute { index, .. }
            | EventError::InvalidAttribute { index, .. }
            | EventError::UnsupportedSpecVersion { index, .. }
            | EventError::InvalidJson { index, .. }
            | EventError::TooLarge { index, .. }
            | EventError::TooManyExtensions { index, .. } => *index = Some(at),
            _ => {}
        }
        self
    }

    pub(crate) fn missing(attribute: &str) -> Self {
        EventError::MissingAttribute {
            attribute: attribute.to_owned(),
            index: None,
        }
    }

    /// An invalid `attribute`, for callers that build events themselves.
    pub fn invalid(attribute: &str, reason: impl Into<String>) -> Self {
        EventError::InvalidAttribute {
            attribute: attribute.to_owned(),
            reason: reason.into(),
            index: None,
        }
    }

    /// Unusable JSON or event content, for callers that build events themselves.
    pub fn json(reason: impl Into<String>) -> Self {
        EventError::InvalidJson {
            reason: reason.into(),
            index: None,
        }
    }
}

fn in_batch(index: Option<usize>) -> String {
    match index {
        Some(i) => format!(" (event {} of the batch, index {i})", i + 1),
        None => String::new(),
    }
}

fn found_content_type(content_type: &Option<String>) -> String {
    match content_type {
        Some(ct) => format!("; got content-type `{ct}`"),
        None => "; got no content-type and no `ce-` headers".to_owned(),
    }
}
