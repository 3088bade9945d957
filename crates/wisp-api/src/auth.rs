//! The server's token: what the control API requires when the server has
//! one, and what the data plane asks of callers of private functions and
//! of anyone queuing work.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use wisp_core::{ErrorCode, KEY_HEADER};

/// Whether `given` is the server's token, compared in constant time.
fn is_token(given: &str, expected: &str) -> bool {
    given.trim().as_bytes().ct_eq(expected.as_bytes()).into()
}

/// The token given as `Authorization: Bearer <token>`, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Which header of a data-plane request carried the server's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Credential {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `x-wisp-key: <token>`.
    Key,
}

/// The header that carries `expected`, the server's token, among
/// `Authorization: Bearer` and [`KEY_HEADER`]; `None` if neither does.
/// Both are compared whenever both are present.
pub(crate) fn credential(headers: &HeaderMap, expected: &str) -> Option<Credential> {
    let by_bearer = bearer(headers).is_some_and(|t| is_token(t, expected));
    let by_key = headers
        .get(KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| is_token(t, expected));
    match (by_bearer, by_key) {
        (true, _) => Some(Credential::Bearer),
        (false, true) => Some(Credential::Key),
        (false, false) => None,
    }
}

/// The one 401 of the whole surface: the same status, code and message
/// whatever was asked for, so that it tells nothing about which functions
/// or triggers exist.
pub(crate) fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        "this request needs the server's token, as `Authorization: Bearer <token>` (or, under \
         /fn/, `x-wisp-key: <token>`); the token is in the `token` file of the server's data \
         directory (set WISP_TOKEN for the CLI)",
    )
}

/// Adds `WWW-Authenticate: Bearer` to a 401.
pub(crate) fn challenge(res: &mut Response) {
    if res.status() == StatusCode::UNAUTHORIZED {
        res.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
}

/// Requires `Authorization: Bearer <token>` when the server has a token.
pub async fn require_token(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = app.token.as_deref() else {
        return next.run(req).await;
    };
    if bearer(req.headers()).is_some_and(|t| is_token(t, expected)) {
        return next.run(req).await;
    }
    let mut res = unauthorized().into_response();
    challenge(&mut res);
    res
}
