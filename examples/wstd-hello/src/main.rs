//! `wstd-hello`: answers every request with 200 and the text `Hello from wstd!`, written with the `wstd` SDK.
//!
//! Call it with `curl http://127.0.0.1:8080/fn/wstd-hello`.
//!
//! It stands for a component another SDK built: wstd brings its own WASI
//! bindings, so its imports may be at other `0.2.x` versions than the other
//! examples', and being a binary it also exports `wasi:cli/run`.

use wstd::http::body::Body;
use wstd::http::{Error, Request, Response};

#[wstd::http_server]
async fn main(_request: Request<Body>) -> Result<Response<Body>, Error> {
    Ok(Response::builder()
        .status(200)
        .header("content-type", "text/plain; charset=utf-8")
        .body("Hello from wstd!\n".to_owned().into())?)
}
