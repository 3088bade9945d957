//! Bad input everywhere gets a JSON error with a stable code, and never
//! leaves anything half-written.

use reqwest::Method;
use serde_json::{Value, json};
use wisp_testkit::{Api, Server, example_bytes};

fn server() -> Server {
    Server::start_shared(env!("CARGO_BIN_EXE_wisp"))
}

fn artifact_files(server: &Server) -> usize {
    walk(&server.data_dir.join("artifacts"))
}

fn walk(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_things_are_404() {
    let server = server();
    let api = Api::new(&server);
    api.deploy("hello", "hello", json!({})).await;
    for (path, code) in [
        ("/v1/functions/nope", "function_not_found"),
        ("/v1/functions/hello/versions/9", "version_not_found"),
        ("/v1/functions/hello/aliases/prod", "alias_not_found"),
        ("/v1/nothing-here", "not_found"),
    ] {
        let (status, err) = api.send(Method::GET, path, None).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(err["code"], code, "{path}: {err}");
        assert!(err["message"].as_str().unwrap().len() > 10);
    }
    for path in ["/fn/nope", "/fn/hello:9", "/fn/hello:prod"] {
        let (status, headers, body) = api.call(path).await;
        assert_eq!(status, 404, "{path}");
        let err: Value = serde_json::from_str(&body).unwrap();
        assert!(
            err["code"].as_str().unwrap().ends_with("not_found"),
            "{err}"
        );
        assert!(headers.contains_key("x-wisp-request-id"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_fields_are_400_naming_the_field() {
    let server = server();
    let api = Api::new(&server);
    let digest = api.upload(example_bytes("hello")).await;
    let cases = [
        (json!({"name": "Bad_Name", "code_digest": digest}), "name"),
        (json!({"code_digest": digest}), "name"),
        (json!({"name": "ok"}), "code_digest"),
        (
            json!({"name": "ok", "code_digest": "sha256:xyz"}),
            "code_digest",
        ),
        (
            json!({"name": "ok", "code_digest": digest, "memory_mib": 0}),
            "memory_mib",
        ),
        (
            json!({"name": "ok", "code_digest": digest, "memory_mib": 99999}),
            "memory_mib",
        ),
        (
            json!({"name": "ok", "code_digest": digest, "timeout_ms": 0}),
            "timeout_ms",
        ),
        (
            json!({"name": "ok", "code_digest": digest, "max_concurrency": 0}),
            "max_concurrency",
        ),
        (
            json!({"name": "ok", "code_digest": digest, "description": "x".repeat(300)}),
            "description",
        ),
        (
            json!({"name": "ok", "code_digest": digest, "env": {"WISP_X": "1"}}),
            "env.WISP_X",
        ),
        (
            json!({"name": "ok", "code_digest": digest, "labels": {"k": "bad value"}}),
            "labels.k",
        ),
    ];
    for (body, field) in cases {
        let (status, err) = api
            .send(Method::POST, "/v1/functions", Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(err["code"], "invalid_field", "{body}: {err}");
        assert_eq!(err["field"], field, "{body}: {err}");
    }
    // Unknown fields and broken JSON are rejected too.
    let (status, err) = api
        .send(
            Method::POST,
            "/v1/functions",
            Some(json!({"name": "ok", "code_digest": digest, "memory": 1})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["code"], "invalid_request");
    assert!(err["message"].as_str().unwrap().contains("memory"), "{err}");
    let res = api
        .http
        .post(server.at("/v1/functions"))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // A digest that was never uploaded.
    let (status, err) = api
        .send(
            Method::POST,
            "/v1/functions",
            Some(json!({"name": "ok", "code_digest": format!("sha256:{}", "0".repeat(64))})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["code"], "artifact_not_found");
    // Invalid names in paths and bad version numbers.
    let (status, err) = api.send(Method::GET, "/v1/functions/BAD", None).await;
    assert_eq!(
        (status.as_u16(), err["field"].as_str()),
        (400, Some("name"))
    );
    let (status, err) = api
        .send(Method::GET, "/v1/functions/ok/versions/0", None)
        .await;
    assert_eq!(
        (status.as_u16(), err["field"].as_str()),
        (400, Some("version"))
    );
    // Nothing was created by any of this.
    let (_, list) = api.send(Method::GET, "/v1/functions", None).await;
    assert_eq!(list["functions"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_components_are_rejected_and_nothing_is_stored() {
    let server = server();
    let api = Api::new(&server);
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "garbage",
            b"definitely not wasm".to_vec(),
            "not a WebAssembly binary",
        ),
        ("core module", core_module, "core WebAssembly module"),
        (
            "truncated component",
            example_bytes("hello")[..200].to_vec(),
            "invalid component",
        ),
        ("empty", Vec::new(), "not a WebAssembly binary"),
    ];
    for (what, bytes, needle) in cases {
        let res = api
            .http
            .post(server.at("/v1/artifacts"))
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{what}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["code"], "invalid_component", "{what}: {err}");
        assert!(
            err["message"].as_str().unwrap().contains(needle),
            "{what}: {err}"
        );
    }
    assert_eq!(
        artifact_files(&server),
        0,
        "a rejected upload left files behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_uploads_are_413() {
    let server = server();
    let api = Api::new(&server);
    let too_big = vec![0u8; wisp_core::limits::MAX_ARTIFACT_BYTES + 1];
    let res = api
        .http
        .post(server.at("/v1/artifacts"))
        .body(too_big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["code"], "payload_too_large");
    let res = api
        .http
        .post(server.at("/v1/functions"))
        .body(vec![b' '; wisp_core::limits::MAX_API_BODY_BYTES + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(artifact_files(&server), 0);
    // The server is still healthy.
    let (status, _) = api.send(Method::GET, "/v1/health", None).await;
    assert_eq!(status, 200);
}

/// A body sent without `Content-Length` cannot be refused up front; once it
/// grows past the limit, the function's read of it fails, and a function
/// built on `guest-util` answers 400 saying so. The next request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_over_the_limit_fails_the_functions_read() {
    let server = server();
    let api = Api::new(&server);
    api.deploy("square-stream", "square", json!({})).await;
    const CHUNK: usize = 1 << 20;
    let chunks = wisp_core::limits::DEFAULT_MAX_INVOKE_BODY_BYTES / CHUNK + 1;
    let stream =
        futures_util::stream::iter((0..chunks).map(|_| Ok::<_, std::io::Error>(vec![b' '; CHUNK])));
    let res = api
        .http
        .post(server.at("/fn/square-stream"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.unwrap();
    let message = err["error"].as_str().unwrap_or_default();
    assert!(message.contains("cannot read the request body"), "{err}");
    // A new client: the server closes the first connection, whose body it
    // did not read to the end, and a pooled one could be picked up just
    // as that happens.
    let res = reqwest::Client::new()
        .post(server.at("/fn/square-stream"))
        .body(r#"{"numbers":[3]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), r#"{"squares":[9]}"#);
}
