//! `picky`: fails with 500 `{"error":"poisoned"}` when the request body
//! contains the bytes `poison`; otherwise answers 200 with the request body
//! unchanged (and the request's `content-type`, if any). Tests use it as a
//! function that fails on one bad event in a batch.
//!
//! Call it with `curl http://127.0.0.1:8080/fn/picky -d fine` (200, `fine`)
//! or `curl http://127.0.0.1:8080/fn/picky -d poison` (500).

use guest_util::{Request, Response};

/// The bytes that make a request fail.
const POISON: &[u8] = b"poison";

fn handle(request: Request) -> Response {
    let content_type = request.header("content-type");
    let body = match request.into_body() {
        Ok(body) => body,
        Err(response) => return response,
    };
    if body.windows(POISON.len()).any(|w| w == POISON) {
        eprintln!("picky: the body contains `poison`; failing");
        return Response::error(500, "poisoned");
    }
    let mut response = Response::new(200);
    if let Some(content_type) = content_type {
        response = response.header("content-type", content_type);
    }
    response.body(body)
}

guest_util::export_handler!(handle);
