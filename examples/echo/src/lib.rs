//! `echo`: returns, as JSON, the request it got (method, path, query, headers, body) and the environment it sees.
//!
//! Call it with `curl 'http://127.0.0.1:8080/fn/echo/some/path?a=1&b=2' -H 'x-demo: 1' -d 'hello'`.
//!
//! The reply is `{"method", "path", "query", "headers", "body", "body_base64",
//! "env", "env_all"}`: `path` has no query, `query` is the raw query string
//! without `?` (`""` if none), header names are lower case with repeated
//! headers joined by `", "`, `body` is the body as lossy UTF-8, `env` holds
//! only the variables whose name starts with `WISP_` and `env_all` all of them.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use guest_util::{Request, Response};
use serde_json::json;

fn handle(request: Request) -> Response {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in request.headers() {
        let value = String::from_utf8_lossy(value);
        headers
            .entry(name.clone())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let env_all: BTreeMap<String, String> = std::env::vars_os()
        .map(|(name, value)| {
            (
                name.to_string_lossy().into_owned(),
                value.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let env: BTreeMap<&String, &String> = env_all
        .iter()
        .filter(|(name, _)| name.starts_with("WISP_"))
        .collect();
    let body = match request.body() {
        Ok(body) => body,
        Err(response) => return response,
    };
    let reply = json!({
        "method": request.method(),
        "path": request.path(),
        "query": request.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(body),
        "body_base64": BASE64.encode(body),
        "env": env,
        "env_all": env_all,
    });
    Response::json(200, &reply)
}

guest_util::export_handler!(handle);
