//! `counter`: increments a global counter and returns its new value as the body (`1` on a fresh instance), printing `counter=<n>` to stdout.
//!
//! Call it with `curl http://127.0.0.1:8080/fn/counter`. With a fresh instance
//! per request every call answers `1`; a larger number means that instance
//! state leaked from one request into another.

use std::sync::atomic::{AtomicU64, Ordering};

use guest_util::{Request, Response};

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn handle(_request: Request) -> Response {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
    println!("counter={n}");
    Response::text(200, n.to_string())
}

guest_util::export_handler!(handle);
