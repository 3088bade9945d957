//! Shared plumbing for the Wisp example functions: a `wasi:http` request read on demand, one complete response written back.
//!
//! Each example is a component of the `wasi:http/proxy` world. It writes one
//! plain function from [`Request`] to [`Response`] and exports it with
//! [`export_handler!`]:
//!
//! ```ignore
//! use guest_util::{Request, Response};
//!
//! fn handle(request: Request) -> Response {
//!     let name = request.query_param("name").unwrap_or_else(|| "world".into());
//!     Response::text(200, format!("Hello, {name}!\n"))
//! }
//!
//! guest_util::export_handler!(handle);
//! ```
//!
//! Every call across the component boundary costs far more than a function
//! call, and handing over a string costs a call back into the guest's
//! allocator, so a [`Request`] asks the host only for what the handler
//! reads, once: a handler that never looks at the headers or the body does
//! not pay for them. The response goes out in as few calls as possible.
//!
//! The raw bindings stay available as [`wasip2`] for examples that call other
//! WASI interfaces (clocks, outgoing HTTP, ...).

use std::cell::OnceCell;
use std::io::Write as _;

use serde::Serialize;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

pub use wasip2;

/// `content-type` of plain-text responses.
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
/// `content-type` of JSON responses.
pub const APPLICATION_JSON: &str = "application/json";

/// Exports `$handler`, a `fn(Request) -> Response`, as this component's
/// `wasi:http/incoming-handler`.
#[macro_export]
macro_rules! export_handler {
    ($handler:expr) => {
        struct WispGuest;

        impl $crate::wasip2::exports::http::incoming_handler::Guest for WispGuest {
            fn handle(
                request: $crate::wasip2::http::types::IncomingRequest,
                response_out: $crate::wasip2::http::types::ResponseOutparam,
            ) {
                $crate::serve(request, response_out, $handler)
            }
        }

        $crate::wasip2::http::proxy::export!(WispGuest);
    };
}

/// An incoming request. Each part is fetched from the host the first time
/// it is asked for and kept.
pub struct Request {
    incoming: IncomingRequest,
    method: OnceCell<String>,
    /// Path (`/` when the host gave none) and raw query string.
    target: OnceCell<(String, String)>,
    headers: OnceCell<Vec<(String, Vec<u8>)>>,
    body: OnceCell<Result<Vec<u8>, String>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method())
            .field("path", &self.path())
            .field("query", &self.query())
            .finish_non_exhaustive()
    }
}

impl Request {
    /// Wraps `incoming`; nothing is read yet.
    pub fn new(incoming: IncomingRequest) -> Self {
        Self {
            incoming,
            method: OnceCell::new(),
            target: OnceCell::new(),
            headers: OnceCell::new(),
            body: OnceCell::new(),
        }
    }

    /// Method, upper case as sent (`GET`, `POST`, ...).
    pub fn method(&self) -> &str {
        self.method
            .get_or_init(|| method_name(self.incoming.method()))
    }

    /// Path without the query string; `/` when the host gave none.
    pub fn path(&self) -> &str {
        &self.target().0
    }

    /// Raw query string without the `?`; empty when there is none.
    pub fn query(&self) -> &str {
        &self.target().1
    }

    fn target(&self) -> &(String, String) {
        self.target.get_or_init(|| {
            let path_with_query = self.incoming.path_with_query().unwrap_or_default();
            let (path, query) = path_with_query
                .split_once('?')
                .unwrap_or((&path_with_query, ""));
            let path = if path.is_empty() { "/" } else { path };
            (path.to_owned(), query.to_owned())
        })
    }

    /// Headers in the order received, names in lower case.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        self.headers.get_or_init(|| {
            self.incoming
                .headers()
                .entries()
                .into_iter()
                .map(|(name, value)| (name.to_ascii_lowercase(), value))
                .collect()
        })
    }

    /// All values of header `name` (case-insensitive), joined with `", "`.
    /// Asks the host for that one header unless all were read already.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<Vec<u8>> = match self.headers.get() {
            Some(headers) => headers
                .iter()
                .filter(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.clone())
                .collect(),
            None => self.incoming.headers().get(&name.to_ascii_lowercase()),
        };
        (!values.is_empty()).then(|| {
            values
                .iter()
                .map(|value| String::from_utf8_lossy(value))
                .collect::<Vec<_>>()
                .join(", ")
        })
    }

    /// The first value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        parse_query(self.query())
            .into_iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// The whole body, read on first use. A body that cannot be read gives
    /// the 400 response to send instead, so a handler can write
    /// `let body = match request.body() { Ok(b) => b, Err(r) => return r };`.
    pub fn body(&self) -> Result<&[u8], Response> {
        match self.body.get_or_init(|| read_body(&self.incoming)) {
            Ok(bytes) => Ok(bytes),
            Err(err) => Err(unreadable_body(err)),
        }
    }

    /// The whole body, owned; see [`Request::body`].
    pub fn into_body(self) -> Result<Vec<u8>, Response> {
        let read = match self.body.into_inner() {
            Some(read) => read,
            None => read_body(&self.incoming),
        };
        read.map_err(|err| unreadable_body(&err))
    }
}

fn unreadable_body(err: &str) -> Response {
    Response::error(400, format!("cannot read the request body: {err}"))
}

/// A complete response: status, headers and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Header names and values, sent in this order.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status)
            .header("content-type", TEXT_PLAIN)
            .body(body.into().into_bytes())
    }

    /// An `application/json` response holding `value`.
    pub fn json(status: u16, value: &impl Serialize) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::new(status)
                .header("content-type", APPLICATION_JSON)
                .body(body),
            Err(err) => Self::error(500, format!("cannot serialize the response: {err}")),
        }
    }

    /// An `application/json` error response: `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        let value = serde_json::json!({ "error": message.into() });
        Self::new(status)
            .header("content-type", APPLICATION_JSON)
            .body(value.to_string().into_bytes())
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// Splits a raw query string into percent-decoded `(name, value)` pairs.
///
/// `+` decodes to a space; a pair without `=` has an empty value; empty pairs
/// are skipped.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', high, low]) => hex_pair(*high, *low),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, byte) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_pair(high: u8, low: u8) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16);
    u8::try_from(digit(high)? * 16 + digit(low)?).ok()
}

/// Calls `handler` with `request` and sends its response. The request is
/// dropped before the response goes out. Used by [`export_handler!`].
pub fn serve(
    request: IncomingRequest,
    response_out: ResponseOutparam,
    handler: impl FnOnce(Request) -> Response,
) {
    let response = handler(Request::new(request));
    send(response_out, response);
}

fn method_name(method: Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other,
    }
}

fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, String> {
    let body = request
        .consume()
        .map_err(|()| "the body was already consumed".to_owned())?;
    let mut bytes = Vec::new();
    {
        let stream = body
            .stream()
            .map_err(|()| "the body stream was already taken".to_owned())?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(err)) => return Err(err.to_debug_string()),
            }
        }
    }
    drop(IncomingBody::finish(body));
    Ok(bytes)
}

/// Bodies up to this size go out in one `blocking-write-and-flush`, the
/// most that call accepts.
const ONE_WRITE_BYTES: usize = 4096;

/// Sends `response` through `response_out`, body and all.
///
/// Every host call costs a trip through the component boundary, so this
/// makes as few as it can: the headers in one `from-list`, no status call
/// for 200 (the default), and a small body in one write that also flushes.
/// A header or status the host refuses is a bug in the example, so it panics
/// (a trap); a body the client stops reading is given up quietly.
pub fn send(response_out: ResponseOutparam, response: Response) {
    let entries: Vec<(String, Vec<u8>)> = response
        .headers
        .into_iter()
        .map(|(name, value)| (name, value.into_bytes()))
        .collect();
    let headers = match Fields::from_list(&entries) {
        Ok(headers) => headers,
        Err(err) => panic!("the host refused the response headers {entries:?}: {err:?}"),
    };
    let outgoing = OutgoingResponse::new(headers);
    if response.status != 200 && outgoing.set_status_code(response.status).is_err() {
        panic!("the host refused status code {}", response.status);
    }
    let body = outgoing
        .body()
        .expect("the response body is taken only once");
    ResponseOutparam::set(response_out, Ok(outgoing));
    if !response.body.is_empty() {
        let mut stream = body.write().expect("the body stream is taken only once");
        if response.body.len() <= ONE_WRITE_BYTES {
            let _ = stream.blocking_write_and_flush(&response.body);
        } else if stream.write_all(&response.body).is_ok() {
            let _ = stream.blocking_flush();
        }
    }
    let _ = OutgoingBody::finish(body, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_split_and_decoded() {
        assert_eq!(
            parse_query("a=1&b=x+y%21&&c&d=%zz"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y!".into()),
                ("c".into(), "".into()),
                ("d".into(), "%zz".into()),
            ]
        );
    }
}
