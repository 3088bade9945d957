//! `sleep`: waits `ms` milliseconds (query `?ms=250`, default 100, at most 3600000) on a `wasi:clocks` pollable, then answers `slept <ms>ms`.
//!
//! Call it with `curl 'http://127.0.0.1:8080/fn/sleep?ms=250'`.
//!
//! The wait is `monotonic-clock.subscribe-duration` plus `pollable.block`, so
//! the guest yields to the host instead of spinning. An `ms` that is not an
//! integer in `0..=3600000` gets a 400.

use guest_util::wasip2::clocks::monotonic_clock;
use guest_util::{Request, Response};

const DEFAULT_MS: u64 = 100;
const MAX_MS: u64 = 3_600_000;

fn handle(request: Request) -> Response {
    let ms = match request.query_param("ms") {
        None => DEFAULT_MS,
        Some(text) => match text.parse::<u64>() {
            Ok(ms) if ms <= MAX_MS => ms,
            _ => {
                return Response::error(
                    400,
                    format!("bad ms {text:?}: expected an integer from 0 to {MAX_MS}"),
                );
            }
        },
    };
    monotonic_clock::subscribe_duration(ms * 1_000_000).block();
    Response::text(200, format!("slept {ms}ms\n"))
}

guest_util::export_handler!(handle);
