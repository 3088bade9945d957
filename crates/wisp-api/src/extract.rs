//! Extractors that answer bad input with JSON errors instead of axum's plain text.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use wisp_core::ErrorCode;

/// 413 `payload_too_large` for a body over `limit` bytes.
pub(crate) fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
        format!("the request body is over the limit of {limit} bytes"),
    )
}

/// Reads a whole body up to `limit` bytes; over it is a 413.
pub async fn read_body(body: axum::body::Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            ApiError::payload_too_large(limit)
        } else {
            ApiError::bad_request(format!("could not read the request body: {e}"))
        }
    })
}

/// Whether a body read failed because the body went over its limit: a
/// [`http_body_util::LengthLimitError`] somewhere in the chain of sources.
fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Refuses a request whose `Content-Type` (without its parameters) is none
/// of `accepted` with 415 `unsupported_media_type`; a request without one
/// passes.
pub fn require_media_type(headers: &HeaderMap, accepted: &[&str]) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if essence.is_some_and(|e| accepted.contains(&e.as_str())) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::UnsupportedMediaType,
        format!(
            "the body must be sent as {} (or without a Content-Type)",
            accepted.join(" or ")
        ),
    ))
}

/// A JSON object body of at most `wisp_core::limits::MAX_API_BODY_BYTES`
/// (no body reads as `{}`), with anything else, unknown fields and type
/// errors reported as 400 `invalid_request`.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req.into_body(), wisp_core::limits::MAX_API_BODY_BYTES).await?;
        let bytes = if bytes.is_empty() {
            Bytes::from_static(b"{}")
        } else if bytes.trim_ascii_start().first() == Some(&b'{') {
            bytes
        } else {
            // Serde would read an array as the fields in order.
            return Err(ApiError::bad_request("the body must be a JSON object"));
        };
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Query parameters, with errors reported as 400 `invalid_request`.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(query)
            .map(ApiQuery)
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_over_the_limit_is_413_by_the_type_of_its_error() {
        let err = read_body(axum::body::Body::from(vec![0u8; 11]), 10)
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(err.body.code, ErrorCode::PayloadTooLarge);
        assert!(
            read_body(axum::body::Body::from(vec![0u8; 10]), 10)
                .await
                .is_ok()
        );

        // Found anywhere in the chain of sources; an error that only says
        // so in its text is not one.
        use http_body_util::BodyExt;
        let limited = http_body_util::Limited::new(http_body_util::Full::new(Bytes::from("ab")), 1)
            .collect()
            .await
            .unwrap_err();
        let wrapped = axum::Error::new(axum::Error::new(limited));
        assert!(is_length_limit(&wrapped));
        let lookalike = axum::Error::new(std::io::Error::other("length limit exceeded"));
        assert!(!is_length_limit(&lookalike));
    }

    #[test]
    fn only_the_accepted_media_types_or_none_pass() {
        let accepted = ["application/wasm", "application/octet-stream"];
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            require_media_type(&h, &accepted)
        };
        assert!(require_media_type(&HeaderMap::new(), &accepted).is_ok());
        assert!(with("application/wasm").is_ok());
        assert!(with("Application/Octet-Stream; charset=binary").is_ok());
        let err = with("application/x-www-form-urlencoded").unwrap_err();
        assert_eq!(err.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(err.body.code, ErrorCode::UnsupportedMediaType);
    }
}
