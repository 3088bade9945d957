//! `hello`: answers every request with 200 and the text `Hello from Wisp!`.
//!
//! Call it with `curl http://127.0.0.1:8080/fn/hello`.

use guest_util::{Request, Response};

fn handle(_request: Request) -> Response {
    Response::text(200, "Hello from Wisp!\n")
}

guest_util::export_handler!(handle);
