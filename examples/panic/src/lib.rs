//! `panic`: always traps: writes `about to panic` to stderr, then panics with `boom: this function always panics`.
//!
//! Call it with `curl http://127.0.0.1:8080/fn/panic`; expect a 500 from the
//! host, and both lines in the invocation's stderr log.

use guest_util::{Request, Response};

fn handle(_request: Request) -> Response {
    eprintln!("about to panic");
    panic!("boom: this function always panics");
}

guest_util::export_handler!(handle);
