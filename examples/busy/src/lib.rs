//! `busy`: spins forever without calling the host, so only the host's timeout can end it.
//!
//! Call it with `curl http://127.0.0.1:8080/fn/busy`; expect the function's
//! timeout (`timeout_ms`), never a response from the guest.

use std::hint::black_box;

use guest_util::{Request, Response};

fn handle(_request: Request) -> Response {
    let mut counter: u64 = 0;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

guest_util::export_handler!(handle);
