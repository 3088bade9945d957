//! `hoard`: makes the host hold memory for it, as a hostile function would,
//! and answers with what the host let it keep.
//!
//! Call it with `curl 'http://127.0.0.1:8080/fn/hoard?fields=1000&bytes=60000&bodies=10'`.
//!
//! - `fields=N` (default 20000): makes `N` `wasi:http` `fields` resources
//!   and keeps them all to the end, each holding one header of `bytes=B`
//!   (default 60000) bytes; a header the host refuses leaves that `fields`
//!   empty (counted as refused).
//! - `bodies=N` (default 0): makes `N` outgoing responses and fills each
//!   one's body stream until the host stops taking bytes, keeping them all.
//!
//! It answers 200 JSON `{"fields", "refused", "bodies", "body_bytes"}`. A
//! host that caps how many resources an instance may hold stops it first:
//! creating one past the cap traps. Bad numbers get a 400.

use guest_util::wasip2::http::types::{Fields, OutgoingBody, OutgoingResponse};
use guest_util::{Request, Response};

fn number(request: &Request, name: &str, default: usize) -> Result<usize, Response> {
    match request.query_param(name) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|_| Response::error(400, format!("bad {name} {text:?}: expected an integer"))),
    }
}

fn handle(request: Request) -> Response {
    let params = (|| {
        Ok((
            number(&request, "fields", 20_000)?,
            number(&request, "bytes", 60_000)?,
            number(&request, "bodies", 0)?,
        ))
    })();
    let (fields, bytes, bodies) = match params {
        Ok(params) => params,
        Err(response) => return response,
    };

    let value = vec![b'x'; bytes];
    let mut held = Vec::new();
    let mut refused = 0usize;
    for _ in 0..fields {
        let f = Fields::new();
        if f.append("x-hoard", &value).is_err() {
            refused += 1;
        }
        held.push(f);
    }

    let mut kept: Vec<(OutgoingResponse, OutgoingBody, _)> = Vec::new();
    let mut body_bytes = 0usize;
    for _ in 0..bodies {
        let response = OutgoingResponse::new(Fields::new());
        let body = response.body().expect("a new response's body");
        let stream = body.write().expect("a new body's stream");
        while let Ok(room) = stream.check_write() {
            if room == 0 {
                break;
            }
            let chunk = vec![0u8; usize::try_from(room).unwrap_or(usize::MAX).min(1 << 20)];
            if stream.write(&chunk).is_err() {
                break;
            }
            body_bytes += chunk.len();
        }
        kept.push((response, body, stream));
    }

    let answer = serde_json::json!({
        "fields": held.len(),
        "refused": refused,
        "bodies": kept.len(),
        "body_bytes": body_bytes,
    });
    // The streams go before the bodies they belong to.
    for (response, body, stream) in kept {
        drop(stream);
        drop(body);
        drop(response);
    }
    drop(held);
    Response::json(200, &answer)
}

guest_util::export_handler!(handle);
