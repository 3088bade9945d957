//! `ApiError`: every failure of the HTTP API, rendered as a JSON `ErrorBody`.
//!
//! This is the one place where the errors of the other crates (store,
//! queue, runtime, events, triggers) become an HTTP status and a stable
//! [`ErrorCode`]; handlers convert with `?` or use the constructors here.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use wisp_core::{ErrorBody, ErrorCode, InvokeError, PrepareError, ValidationError};
use wisp_events::EventError;
use wisp_queue::QueueError;
use wisp_store::StoreError;
use wisp_triggers::{SinkError, TriggerError};

/// An error answer: status, stable code and message.
#[derive(Debug, thiserror::Error)]
#[error("{} {}", .status, .body.message)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// JSON body.
    pub body: ErrorBody,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status, a code and a message.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody::new(code, message),
            retry_after: None,
        }
    }

    /// 400 `invalid_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, message)
    }

    /// 404 `not_found` for an unknown route.
    pub fn no_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such route; see /v1/openapi.json for the API",
        )
    }

    /// 413 `payload_too_large`: a request body over `limit` bytes.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("the request body is over the limit of {limit} bytes"),
        )
    }

    /// 429 `throttled` with `Retry-After: 1`.
    pub fn throttled(message: impl Into<String>) -> Self {
        let mut err = Self::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::Throttled, message);
        err.retry_after = Some(1);
        err
    }

    /// 404 `invocation_not_found`.
    pub fn invocation_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::InvocationNotFound,
            format!("no invocation `{id}`"),
        )
    }

    /// 404 `dead_letter_not_found`, with a message saying why.
    pub fn dead_letter_not_found(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::DeadLetterNotFound,
            message,
        )
    }

    /// 500 `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            message,
        )
    }

    /// Adds the request id.
    pub fn with_request_id(mut self, id: &str) -> Self {
        self.body.request_id = Some(id.to_string());
        self
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        let mut err = ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidField,
            format!("{}: {}", e.field, e.message),
        );
        err.body.field = Some(e.field);
        err
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        use StatusCode as S;
        let (status, code) = match &e {
            StoreError::Invalid(v) => return v.clone().into(),
            StoreError::FunctionNotFound(_) => (S::NOT_FOUND, ErrorCode::FunctionNotFound),
            StoreError::VersionNotFound { .. } => (S::NOT_FOUND, ErrorCode::VersionNotFound),
            StoreError::AliasNotFound { .. } => (S::NOT_FOUND, ErrorCode::AliasNotFound),
            StoreError::TriggerNotFound(_) => (S::NOT_FOUND, ErrorCode::TriggerNotFound),
            StoreError::AlreadyExists(_) => (S::CONFLICT, ErrorCode::AlreadyExists),
            StoreError::VersionInUse { .. } => (S::CONFLICT, ErrorCode::Conflict),
            StoreError::ArtifactNotFound(_) => (S::BAD_REQUEST, ErrorCode::ArtifactNotFound),
            StoreError::LimitReached(_) => (S::CONFLICT, ErrorCode::Conflict),
            StoreError::Database(_) | StoreError::Io(_) => {
                tracing::error!(error = %e, "store failure");
                (S::INTERNAL_SERVER_ERROR, ErrorCode::Internal)
            }
        };
        let mut err = ApiError::new(status, code, e.to_string());
        if let StoreError::ArtifactNotFound(_) = e {
            err.body.field = Some("code_digest".into());
        }
        err
    }
}

impl From<PrepareError> for ApiError {
    fn from(e: PrepareError) -> Self {
        match e {
            PrepareError::Invalid(m) => ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidComponent,
                format!("the upload is not a runnable wasi:http component: {m}"),
            ),
            PrepareError::CompileLimit(m) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::CompileLimitExceeded,
                m,
            ),
            PrepareError::Internal(m) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, m)
            }
        }
    }
}

impl From<InvokeError> for ApiError {
    fn from(e: InvokeError) -> Self {
        use StatusCode as S;
        let (status, code) = match &e {
            InvokeError::Throttled { .. } | InvokeError::Overloaded { .. } => {
                (S::TOO_MANY_REQUESTS, ErrorCode::Throttled)
            }
            InvokeError::Timeout { .. } => (S::GATEWAY_TIMEOUT, ErrorCode::FunctionTimeout),
            InvokeError::MemoryLimit { .. } | InvokeError::HostLimit { .. } => {
                (S::INTERNAL_SERVER_ERROR, ErrorCode::MemoryLimitExceeded)
            }
            InvokeError::Trapped { .. } => (S::INTERNAL_SERVER_ERROR, ErrorCode::FunctionTrapped),
            InvokeError::NoResponse { .. } => (S::BAD_GATEWAY, ErrorCode::FunctionNoResponse),
            InvokeError::Unavailable { .. } => {
                (S::SERVICE_UNAVAILABLE, ErrorCode::FunctionUnavailable)
            }
        };
        let mut err = ApiError::new(status, code, e.to_string());
        if code == ErrorCode::Throttled {
            err.retry_after = Some(1);
        }
        err
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Invalid(v) => v.into(),
            QueueError::Full { .. } => ApiError::throttled(e.to_string()),
            QueueError::BodyTooLarge { .. } | QueueError::BatchTooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                e.to_string(),
            ),
            QueueError::DeadLetterNotFound { .. } => ApiError::dead_letter_not_found(e.to_string()),
            QueueError::LeaseLost { .. }
            | QueueError::AlreadyStarted { .. }
            | QueueError::Database(_)
            | QueueError::Io(_)
            | QueueError::Closed => {
                tracing::error!(error = %e, "queue failure");
                ApiError::internal(e.to_string())
            }
        }
    }
}

impl From<EventError> for ApiError {
    fn from(e: EventError) -> Self {
        let status = e.status_code();
        let code = match &e {
            EventError::TooLarge { .. }
            | EventError::TooManyEvents { .. }
            | EventError::TooManyExtensions { .. } => ErrorCode::PayloadTooLarge,
            EventError::NotAnEvent { .. } => ErrorCode::UnsupportedMediaType,
            _ if e.attribute().is_some() => ErrorCode::InvalidField,
            _ => ErrorCode::InvalidRequest,
        };
        let mut err = ApiError::new(
            StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_REQUEST),
            code,
            e.to_string(),
        );
        err.body.field = e.attribute().map(str::to_string);
        err
    }
}

impl From<TriggerError> for ApiError {
    fn from(e: TriggerError) -> Self {
        let field = e.field().to_string();
        let TriggerError::Invalid { message, .. } = e;
        ValidationError::new(field, message).into()
    }
}

impl From<SinkError> for ApiError {
    fn from(e: SinkError) -> Self {
        match e {
            SinkError::Full => {
                ApiError::throttled("the target function's queue is full; retry later")
            }
            SinkError::Target(m) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::FunctionUnavailable,
                format!("the trigger's target is unavailable: {m}"),
            ),
            SinkError::Unavailable(m) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Internal,
                format!("the event could not be queued: {m}"),
            ),
        }
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        tracing::error!(error = %e, "artifact storage failure");
        ApiError::internal(format!("artifact storage failed: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_errors_map_by_their_type() {
        let cases = [
            (
                QueueError::BodyTooLarge { index: 0, size: 7 },
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
            ),
            (
                QueueError::BatchTooLarge { len: 2000 },
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
            ),
            (
                QueueError::DeadLetterNotFound { id: "x".into() },
                StatusCode::NOT_FOUND,
                ErrorCode::DeadLetterNotFound,
            ),
            (
                QueueError::Full {
                    function: "f".parse().unwrap(),
                    limit: 1,
                },
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::Throttled,
            ),
            (
                QueueError::Closed,
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
            ),
        ];
        for (e, status, code) in cases {
            let what = e.to_string();
            let err = ApiError::from(e);
            assert_eq!((err.status, err.body.code), (status, code), "{what}");
        }
        assert_eq!(
            ApiError::from(QueueError::Full {
                function: "f".parse().unwrap(),
                limit: 1
            })
            .retry_after,
            Some(1)
        );
    }
}
