//! Shared plumbing for the Wisp example functions: read a whole `wasi:http` request, answer with one complete response.
//!
//! Each example is a component of the `wasi:http/proxy` world. It writes one
//! plain function from [`Request`] to [`Response`] and exports it with
//! [`export_handler!`], which reads the full request (method, path, query,
//! headers and body) before calling it and writes the response afterwards:
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
//! The raw bindings stay available as [`wasip2`] for examples that call other
//! WASI interfaces (clocks, outgoing HTTP, ...).

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

/// An incoming request, read in full.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method, upper case as sent (`GET`, `POST`, ...).
    pub method: String,
    /// Path without the query string; `/` when the host gave none.
    pub path: String,
    /// Raw query string without the `?`; empty when there is none.
    pub query: String,
    /// Headers in the order received, names in lower case.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        parse_query(&self.query)
            .into_iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// All values of header `name` (case-insensitive), joined with `", "`.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<String> = self
            .headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }
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

/// Reads `request` in full, calls `handler` and sends its response.
///
/// A request whose body cannot be read gets a 400 without calling `handler`.
/// Used by [`export_handler!`].
pub fn serve(
    request: IncomingRequest,
    response_out: ResponseOutparam,
    handler: impl FnOnce(Request) -> Response,
) {
    let response = match read_request(&request) {
        Ok(request) => handler(request),
        Err(err) => Response::error(400, format!("cannot read the request: {err}")),
    };
    drop(request);
    send(response_out, response);
}

/// Reads method, path, query, headers and the whole body of `request`.
pub fn read_request(request: &IncomingRequest) -> Result<Request, String> {
    let method = method_name(request.method());
    let path_with_query = request.path_with_query().unwrap_or_default();
    let (path, query) = path_with_query
        .split_once('?')
        .unwrap_or((&path_with_query, ""));
    let path = if path.is_empty() { "/" } else { path }.to_owned();
    let query = query.to_owned();
    let headers = request
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value))
        .collect();
    let body = read_body(request)?;
    Ok(Request {
        method,
        path,
        query,
        headers,
        body,
    })
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

/// Sends `response` through `response_out`, body and all.
///
/// A header or status the host refuses is a bug in the example, so it panics
/// (a trap); a body the client stops reading is given up quietly.
pub fn send(response_out: ResponseOutparam, response: Response) {
    let headers = Fields::new();
    for (name, value) in &response.headers {
        if let Err(err) = headers.append(name, value.as_bytes()) {
            panic!("the host refused response header {name}: {err:?}");
        }
    }
    let outgoing = OutgoingResponse::new(headers);
    if outgoing.set_status_code(response.status).is_err() {
        panic!("the host refused status code {}", response.status);
    }
    let body = outgoing
        .body()
        .expect("the response body is taken only once");
    ResponseOutparam::set(response_out, Ok(outgoing));
    {
        let mut stream = body.write().expect("the body stream is taken only once");
        if stream.write_all(&response.body).is_ok() {
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
