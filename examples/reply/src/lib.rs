//! `reply`: answers every request (or CloudEvent) with a reply CloudEvent in
//! binary mode: `ce-type: com.example.reply`, `ce-source: /examples/reply`,
//! an id derived from the incoming `ce-id` (or `reply`), and the request
//! body as data. Wisp publishes it to the function's on-success destination.
//!
//! Call it with `curl -i http://127.0.0.1:8080/fn/reply -d hi`.

use guest_util::{Request, Response};

fn handle(request: Request) -> Response {
    let id = request
        .header("ce-id")
        .map_or_else(|| "reply".to_string(), |id| format!("reply-to-{id}"));
    let body = match request.into_body() {
        Ok(body) => body,
        Err(response) => return response,
    };
    Response::new(200)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/examples/reply")
        .header("ce-type", "com.example.reply")
        .header("content-type", "text/plain")
        .body(body)
}

guest_util::export_handler!(handle);
