//! `counter`: increments a global counter and returns its new value as the body (`1` on a fresh instance), printing `counter=<n>` to stdout.
//!
//! Call it with `curl http://127.0.0.1:8080/fn/counter`. With a fresh instance
//! per request every call answers `1`; a larger number means that instance
//! state leaked from one request into another.
//!
//! With `?linger_ms=<n>` (at most 60000) the handler goes on for `n`
//! milliseconds after it has finished the response body, as a function doing
//! work after answering would; with `?declare_length=1` the response carries
//! a `content-length`.

use std::sync::atomic::{AtomicU64, Ordering};

use guest_util::wasip2::clocks::monotonic_clock;
use guest_util::wasip2::exports::http::incoming_handler::Guest;
use guest_util::wasip2::http::types::{IncomingRequest, ResponseOutparam};
use guest_util::{Request, Response};

static COUNTER: AtomicU64 = AtomicU64::new(0);

const MAX_LINGER_MS: u64 = 60_000;

struct Counter;

impl Guest for Counter {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let request = Request::new(request);
        let linger_ms = request.query_param("linger_ms").map(|ms| ms.parse::<u64>());
        let linger_ms = match linger_ms {
            None => 0,
            Some(Ok(ms)) if ms <= MAX_LINGER_MS => ms,
            Some(_) => {
                let message = format!("linger_ms must be an integer from 0 to {MAX_LINGER_MS}");
                return guest_util::send(response_out, Response::error(400, message));
            }
        };
        let n = COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
        println!("counter={n}");
        let body = n.to_string();
        let mut response = Response::text(200, body.clone());
        if request.query_param("declare_length").as_deref() == Some("1") {
            response = response.header("content-length", body.len().to_string());
        }
        drop(request);
        guest_util::send(response_out, response);
        if linger_ms > 0 {
            monotonic_clock::subscribe_duration(linger_ms * 1_000_000).block();
        }
    }
}

guest_util::wasip2::http::proxy::export!(Counter);
