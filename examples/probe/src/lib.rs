//! `probe`: tries to escape the sandbox four ways and reports, as JSON, whether each was `"allowed"` or `"denied: <error>"`.
//!
//! Call it with `curl http://127.0.0.1:8080/fn/probe`.
//!
//! The reply is `{"fs_read_dir", "fs_read", "http_outgoing", "tcp_connect"}`:
//! `std::fs::read_dir("/")`, `std::fs::read("/etc/passwd")`, a `GET
//! http://127.0.0.1:9/` through `wasi:http/outgoing-handler`, and
//! `std::net::TcpStream::connect("127.0.0.1:9")` (which is `wasi:sockets` on
//! this target). Any failure, whether the host refused the capability or the
//! attempt itself failed, is reported as `denied: ...` with the error, and
//! never traps.

use std::time::Duration;

use guest_util::wasip2::clocks::monotonic_clock;
use guest_util::wasip2::http::outgoing_handler;
use guest_util::wasip2::http::types::{Fields, Method, OutgoingRequest, RequestOptions, Scheme};
use guest_util::wasip2::io::poll;
use guest_util::{Request, Response};
use serde_json::json;

const TARGET: &str = "127.0.0.1:9";
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

fn handle(_request: Request) -> Response {
    let reply = json!({
        "fs_read_dir": outcome(std::fs::read_dir("/")),
        "fs_read": outcome(std::fs::read("/etc/passwd")),
        "http_outgoing": outcome(http_get()),
        "tcp_connect": outcome(std::net::TcpStream::connect(TARGET)),
    });
    Response::json(200, &reply)
}

fn outcome<T, E: std::fmt::Display>(result: Result<T, E>) -> String {
    match result {
        Ok(_) => "allowed".into(),
        Err(err) => format!("denied: {err}"),
    }
}

/// `GET http://127.0.0.1:9/`, waiting at most [`HTTP_TIMEOUT`] for a response.
fn http_get() -> Result<u16, String> {
    let request = OutgoingRequest::new(Fields::new());
    let timeout_ns = u64::try_from(HTTP_TIMEOUT.as_nanos()).unwrap_or(u64::MAX);
    let set = |ok: Result<(), ()>, what: &str| ok.map_err(|()| format!("cannot set {what}"));
    set(request.set_method(&Method::Get), "the method")?;
    set(request.set_scheme(Some(&Scheme::Http)), "the scheme")?;
    set(request.set_authority(Some(TARGET)), "the authority")?;
    set(request.set_path_with_query(Some("/")), "the path")?;
    let options = RequestOptions::new();
    // A host may not support timeouts; the poll below bounds the wait anyway.
    let _ = options.set_connect_timeout(Some(timeout_ns));

    let future = outgoing_handler::handle(request, Some(options)).map_err(|e| format!("{e:?}"))?;
    {
        let ready = future.subscribe();
        let timer = monotonic_clock::subscribe_duration(timeout_ns);
        poll::poll(&[&ready, &timer]);
    }
    match future.get() {
        None => Err(format!("no response within {HTTP_TIMEOUT:?}")),
        Some(Err(())) => Err("the response was already taken".into()),
        Some(Ok(Err(code))) => Err(format!("{code:?}")),
        Some(Ok(Ok(response))) => Ok(response.status()),
    }
}

guest_util::export_handler!(handle);
