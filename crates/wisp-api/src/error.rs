//! `ApiError`: every failure of the HTTP API, rendered as a JSON `ErrorBody`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use wisp_core::{ErrorBody, ErrorCode, InvokeError, PrepareError, ValidationError};
use wisp_store::StoreError;

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
