//! `logger`: writes `lines` lines to stdout and as many to stderr (query `?lines=N&bytes=M`, default 3 lines), then answers `ok`.
//!
//! Call it with `curl 'http://127.0.0.1:8080/fn/logger?lines=5&bytes=80'`.
//!
//! For each `i` from 1 to N it writes `out line <i>` to stdout, then
//! `err line <i>` to stderr. With `bytes=M` each stdout line is padded with
//! `x` to M bytes, not counting the newline (a longer line is left as is).
//! A `lines` or `bytes` that is not an integer gets a 400.

use std::io::Write as _;

use guest_util::{Request, Response};

const DEFAULT_LINES: u64 = 3;

fn handle(request: Request) -> Response {
    let number = |name: &str| -> Result<Option<u64>, Response> {
        match request.query_param(name) {
            None => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|_| {
                Response::error(
                    400,
                    format!("bad {name} {text:?}: expected a non-negative integer"),
                )
            }),
        }
    };
    let (lines, bytes) = match (number("lines"), number("bytes")) {
        (Ok(lines), Ok(bytes)) => (lines.unwrap_or(DEFAULT_LINES), bytes),
        (Err(response), _) | (_, Err(response)) => return response,
    };
    let width = bytes
        .and_then(|bytes| usize::try_from(bytes).ok())
        .unwrap_or(0);
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    for i in 1..=lines {
        let _ = writeln!(stdout, "{:x<width$}", format!("out line {i}"));
        let _ = stdout.flush();
        let _ = writeln!(stderr, "err line {i}");
    }
    Response::text(200, "ok\n")
}

guest_util::export_handler!(handle);
