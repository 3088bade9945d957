//! `/fn/NAME[:QUALIFIER]/rest/of/path`: every request reaches the function
//! with its method, remaining path, query, headers and body; the response
//! streams back with the request id and the version that served it.

use crate::AppState;
use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use wisp_core::{BoxError, ErrorCode, InvokeAuth, KEY_HEADER, Target, ValidationError, VersionId};
use wisp_store::{Resolved, StoreError};

/// Response header with the invocation's request id.
pub const REQUEST_ID_HEADER: &str = "x-wisp-request-id";
/// Response header naming the version that served the request.
pub const VERSION_HEADER: &str = "x-wisp-version";
/// Request header that makes a data-plane call asynchronous: with the
/// value `async` the request is queued and answered with 202.
pub const INVOCATION_TYPE_HEADER: &str = "x-wisp-invocation-type";
/// Response header naming the function.
pub const FUNCTION_HEADER: &str = "x-wisp-function";

// The same names, made once at compile time rather than parsed per request.
const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
const VERSION: HeaderName = HeaderName::from_static(VERSION_HEADER);
const FUNCTION: HeaderName = HeaderName::from_static(FUNCTION_HEADER);

/// A new request id: 12 hex digits of milliseconds since the epoch, then 20
/// random hex digits, so ids sort by time.
pub fn new_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let r: u128 = rand::random();
    // The low 48 bits of the time and the low 80 random bits, written
    // without going through the formatting machinery.
    let mut id = [0u8; 32];
    for (i, digit) in id[..12].iter_mut().enumerate() {
        *digit = HEX[((ms >> (4 * (11 - i))) & 0xf) as usize];
    }
    for (i, digit) in id[12..].iter_mut().enumerate() {
        *digit = HEX[((r >> (4 * (19 - i))) & 0xf) as usize];
    }
    String::from_utf8(id.to_vec()).expect("hex digits are ASCII")
}

/// Splits `/fn/<target>/<rest>` into the target and the rest of the path.
fn split_path(path: &str) -> (&str, &str) {
    let after = path.strip_prefix("/fn/").unwrap_or("");
    match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    }
}

/// Handles every request under `/fn/`.
pub async fn invoke(State(app): State<AppState>, req: Request) -> Response {
    let request_id = new_request_id();
    // Hex digits only, so always a valid header value.
    let id_header = HeaderValue::from_str(&request_id).ok();
    let mut res = match forward(&app, req, request_id).await {
        Ok(res) => res,
        Err(e) => {
            let id = id_header.as_ref().and_then(|v| v.to_str().ok());
            let id = id.unwrap_or_default();
            let e = match e.body.code {
                ErrorCode::FunctionTrapped => trapped(id),
                _ => e,
            };
            let mut res = e.with_request_id(id).into_response();
            crate::auth::challenge(&mut res);
            res
        }
    };
    if let Some(v) = id_header {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    res
}

/// Who is calling, as far as the data plane cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// The server requires no token: everyone may do everything.
    Open,
    /// The caller gave the server's token.
    Holder,
    /// The server requires the token and the caller did not give it.
    Anonymous,
}

/// Checks the caller's credential and removes it from the headers, so the
/// server's token never reaches a function. A function's own
/// `Authorization` header (anything but the token) passes through.
fn caller(app: &AppState, headers: &mut http::HeaderMap) -> Caller {
    let caller = match app.token.as_deref() {
        None => Caller::Open,
        Some(expected) => match crate::auth::credential(headers, expected) {
            Some(crate::auth::Credential::Bearer) => {
                headers.remove(header::AUTHORIZATION);
                Caller::Holder
            }
            Some(crate::auth::Credential::Key) => Caller::Holder,
            None => Caller::Anonymous,
        },
    };
    headers.remove(KEY_HEADER);
    caller
}

/// Whether every version `resolved` may route to is public.
fn is_public(resolved: &Resolved) -> bool {
    let public = |d: &wisp_core::Deployment| d.config.invoke_auth == InvokeAuth::Public;
    public(&resolved.primary) && resolved.secondary.as_ref().is_none_or(|(d, _)| public(d))
}

/// What `target` resolves to, for `caller`. An anonymous caller gets the
/// same 401 for a private target as for one that does not exist, after
/// the same lookup, so the answer does not tell which names exist.
async fn resolve(app: &AppState, target: &Target, caller: Caller) -> Result<Resolved, ApiError> {
    let resolved = match app.store.resolve_cached(&target.name, &target.qualifier) {
        Some(resolved) => Ok(resolved),
        None => app.store.resolve(&target.name, &target.qualifier).await,
    };
    match (caller, resolved) {
        (Caller::Anonymous, Ok(resolved)) if is_public(&resolved) => Ok(resolved),
        (
            Caller::Anonymous,
            Ok(_)
            | Err(
                StoreError::FunctionNotFound(_)
                | StoreError::VersionNotFound { .. }
                | StoreError::AliasNotFound { .. },
            ),
        ) => Err(crate::auth::unauthorized()),
        (_, resolved) => Ok(resolved?),
    }
}

/// The 500 a caller gets for a trap: the code and where to look. The trap
/// and its backtrace go to the function's logs only, since they describe
/// the function's insides.
fn trapped(request_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::FunctionTrapped,
        format!("the function trapped; its logs for request {request_id} say why"),
    )
}

async fn forward(app: &AppState, req: Request, request_id: String) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    let (target, rest) = split_path(parts.uri.path());
    let target: Target = target
        .parse()
        .map_err(|e| ValidationError::new("name", format!("`{target}`: {e}")))?;
    let caller = caller(app, &mut parts.headers);
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    let asynchronous = parts
        .headers
        .get(INVOCATION_TYPE_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("async"));
    if asynchronous {
        // Queued work fills the server's disk: it needs the token whenever
        // the server requires one, even for a public function.
        if caller == Caller::Anonymous {
            return Err(crate::auth::unauthorized());
        }
        // Boxed: this future is moved on every synchronous request too,
        // and its size is that of its largest state.
        return Box::pin(enqueue(app, parts, body, target, path_and_query)).await;
    }
    let resolved = resolve(app, &target, caller).await?;
    let deployment = resolved.pick(rand::random::<f64>()).clone();

    let authority = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| ApiError::bad_request(format!("cannot forward this URI: {e}")))?;
    let limit = app.max_invoke_body;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A declared `Content-Length` over the limit is a 413; a chunked body
    // that grows past it fails the function's read instead.
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::payload_too_large(limit));
    }
    let body = http_body_util::Limited::new(body, limit)
        .map_err(|e| -> BoxError { e })
        .boxed_unsync();
    let request = http::Request::from_parts(parts, body);

    let served = deployment.clone();
    let response = app
        .invoker
        .invoke(deployment, request_id, request)
        .await
        .map_err(ApiError::from)?;
    let (mut parts, body) = response.into_parts();
    let version = match served.version {
        VersionId::Latest => HeaderValue::from_static("latest"),
        VersionId::Published(n) => HeaderValue::from(n),
    };
    parts.headers.insert(VERSION, version);
    if let Ok(v) = HeaderValue::from_str(served.function.as_str()) {
        parts.headers.insert(FUNCTION, v);
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// Queues an asynchronous invocation (`x-wisp-invocation-type: async`) and
/// answers 202.
async fn enqueue(
    app: &AppState,
    parts: http::request::Parts,
    body: Body,
    target: Target,
    path_and_query: String,
) -> Result<Response, ApiError> {
    let body = crate::extract::read_body(body, wisp_queue::limits::MAX_BODY_BYTES).await?;
    let request = wisp_queue::StoredRequest {
        method: parts.method.to_string(),
        path_and_query,
        headers: crate::asynchronous::forwarded_headers(&parts.headers),
        body: body.to_vec(),
    };
    let accepted = crate::asynchronous::enqueue_request(
        app,
        target.name,
        target.qualifier.to_string(),
        request,
        &parts.headers,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(accepted)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_target_and_rest() {
        assert_eq!(split_path("/fn/hello"), ("hello", "/"));
        assert_eq!(split_path("/fn/hello:3/a/b"), ("hello:3", "/a/b"));
        assert_eq!(split_path("/fn/hello/"), ("hello", "/"));
    }

    #[test]
    fn request_ids_are_unique_and_fixed_length() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        // The first 12 digits are the time in milliseconds.
        let ms = u64::from_str_radix(&a[..12], 16).unwrap();
        let now = chrono::Utc::now().timestamp_millis() as u64 & 0xffff_ffff_ffff;
        assert!(now.abs_diff(ms) < 60_000, "{ms} vs {now}");
    }
}
