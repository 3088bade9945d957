//! The JSON error shape every Wisp HTTP endpoint answers with, and its stable codes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Stable, machine-readable error codes. Clients match on these; the
/// `message` beside them is for humans and may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed (bad JSON, unknown field, bad query).
    InvalidRequest,
    /// One field failed validation; `field` names it.
    InvalidField,
    /// The uploaded bytes are not a usable `wasi:http/proxy` component.
    InvalidComponent,
    /// Compiling the uploaded component needed more memory or time than
    /// the server's compiler may use.
    CompileLimitExceeded,
    /// Every compile slot stayed busy for as long as an upload may wait for
    /// one; the upload was not read. Retry after `Retry-After`.
    CompilerBusy,
    /// The request body is over a documented limit.
    PayloadTooLarge,
    /// The request body's `Content-Type` is not one the route takes.
    UnsupportedMediaType,
    /// A bearer token is required or the one given is wrong.
    Unauthorized,
    /// No function with that name.
    FunctionNotFound,
    /// No published version with that number.
    VersionNotFound,
    /// No alias with that name.
    AliasNotFound,
    /// No artifact with that digest has been uploaded.
    ArtifactNotFound,
    /// No trigger with that name.
    TriggerNotFound,
    /// No asynchronous invocation with that id (or it was pruned).
    InvocationNotFound,
    /// No dead letter with that id: unknown, deleted, replayed, or an
    /// invocation that is not dead.
    DeadLetterNotFound,
    /// A webhook's HMAC signature is missing or wrong.
    InvalidSignature,
    /// No such route (a missing resource has a code of its own, such as
    /// `function_not_found`).
    NotFound,
    /// The HTTP method is not allowed on this route.
    MethodNotAllowed,
    /// The resource exists already.
    AlreadyExists,
    /// The resource is in use (for example a version an alias points at).
    Conflict,
    /// The function is at its concurrency limit; retry after `Retry-After`.
    Throttled,
    /// The function ran past its timeout.
    FunctionTimeout,
    /// The function grew past its memory limit.
    MemoryLimitExceeded,
    /// The function trapped (panicked or hit an illegal instruction).
    FunctionTrapped,
    /// The function finished without producing a response.
    FunctionNoResponse,
    /// The function cannot be loaded right now.
    FunctionUnavailable,
    /// The server is shutting down.
    ShuttingDown,
    /// Something failed inside Wisp; the message and the server log say what.
    Internal,
}

/// The body of every error response: `{"code": ..., "message": ...}`, with
/// the failing `field` for validation errors and the `request_id` for
/// invocation errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code to match on.
    pub code: ErrorCode,
    /// What went wrong and what to do about it.
    pub message: String,
    /// The field that failed validation, for `invalid_field`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The invocation's request id, for invocation errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ErrorBody {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
            field: None,
            request_id: None,
        }
    }
}
