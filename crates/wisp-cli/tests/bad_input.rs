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

/// Files in the engine directories of the server's own compiled cache
/// (compiled code, tags, temporary files; not the cache's key).
fn compiled_files(server: &Server) -> usize {
    std::fs::read_dir(server.data_dir.join("compiled"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| walk(&e.path()))
        .sum()
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

/// A valid component whose compile needs far more memory than hello's: one
/// core module of `functions` functions, each a long chain of arithmetic.
/// It exports nothing, so a server that compiles it refuses it at the link
/// check (400), not for the compiler's limit.
fn costly_component(functions: u32) -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, Component, Function, FunctionSection, Module, ModuleSection, TypeSection,
        ValType,
    };
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32], [ValType::I32]);
    let mut funcs = FunctionSection::new();
    let mut code = CodeSection::new();
    for _ in 0..functions {
        funcs.function(0);
        let mut f = Function::new([]);
        let mut body = f.instructions();
        body.local_get(0);
        for i in 0..2000 {
            body.i32_const(i).i32_add().local_get(0).i32_mul();
        }
        body.end();
        code.function(&f);
    }
    let mut module = Module::new();
    module.section(&types).section(&funcs).section(&code);
    let mut component = Component::new();
    component.section(&ModuleSection(&module));
    component.finish()
}

/// Components are compiled in a child process under a memory limit: a
/// compile over it fails that upload with 422 and leaves nothing behind,
/// and the server goes on serving and compiling. The same component under
/// the default limit compiles, and is refused only for what it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_over_the_memory_limit_is_refused_and_the_server_goes_on() {
    let costly = costly_component(400);
    let limited = Server::start_with(env!("CARGO_BIN_EXE_wisp"), &["--compile-memory-mib", "16"]);
    refused_for_a_compile_limit(
        &limited,
        costly.clone(),
        &["16 MiB", "--compile-memory-mib"],
    )
    .await;
    // The server is still up, and still compiles what fits.
    let (status, body) = upload(&limited, example_bytes("hello")).await;
    assert_eq!(status, 201, "{body}");
    let (status, err) = upload(&limited, example_bytes("hello")[..200].to_vec()).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["code"], "invalid_component", "{err}");

    let unlimited = Server::start(env!("CARGO_BIN_EXE_wisp"));
    let (status, err) = upload(&unlimited, costly).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["code"], "invalid_component", "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("wasi:http/incoming-handler"),
        "{err}"
    );
}
/// A compile that runs past `--compile-timeout-secs` fails its upload with
/// 422, and its compiler process is ended rather than left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_past_its_deadline_is_refused_and_the_compiler_ended() {
    // About ten times the deadline to compile on this machine.
    let costly = costly_component(2000);
    let server = Server::start_with(env!("CARGO_BIN_EXE_wisp"), &["--compile-timeout-secs", "1"]);
    refused_for_a_compile_limit(
        &server,
        costly,
        &["longer than 1 s", "--compile-timeout-secs"],
    )
    .await;
    // The killed compiler is reaped within moments; no child of the server
    // keeps compiling (unkilled, it would run for several seconds more).
    let mut children = live_children(server.pid());
    for _ in 0..40 {
        if children.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        children = live_children(server.pid());
    }
    assert!(
        children.is_empty(),
        "compiler processes left running: {children:?}"
    );
    let (status, body) = upload(&server, example_bytes("hello")).await;
    assert_eq!(status, 201, "{body}");
}

/// A server whose binary is removed while it runs (as an upgrade in place
/// does) still compiles uploads, with the binary it is running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_binary_was_removed_still_compiles() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("wisp");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_wisp"), &bin).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_wisp"), &bin).unwrap();
    }
    let server = Server::start(&bin);
    std::fs::remove_file(&bin).unwrap();
    let (status, body) = upload(&server, example_bytes("hello")).await;
    assert_eq!(status, 201, "{body}");
    // The compiled code and its tag.
    assert_eq!(compiled_files(&server), 2);
}

/// Uploads `bytes` and checks that it is refused with 422
/// `compile_limit_exceeded`, with a message naming each of `needles`, and
/// that nothing of it is left in the artifact store or compiled cache.
async fn refused_for_a_compile_limit(server: &Server, bytes: Vec<u8>, needles: &[&str]) {
    let (status, err) = upload(server, bytes).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["code"], "compile_limit_exceeded", "{err}");
    let message = err["message"].as_str().unwrap();
    assert!(needles.iter().all(|n| message.contains(n)), "{message}");
    assert_eq!(
        artifact_files(server),
        0,
        "a refused upload left an artifact"
    );
    assert_eq!(
        compiled_files(server),
        0,
        "a refused compile left files in the compiled cache"
    );
}

/// Uploads an artifact: the status and the JSON body.
async fn upload(server: &Server, bytes: Vec<u8>) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(server.at("/v1/artifacts"))
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

/// Pids of the running (not zombie) child processes of `parent`.
fn live_children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // After the `(comm)` field: state, then the parent's pid.
            let mut rest = stat
                .rsplit_once(')')
                .map_or("", |(_, r)| r)
                .split_whitespace();
            let state = rest.next().unwrap_or("Z");
            let ppid = rest.next().and_then(|p| p.parse::<u32>().ok());
            ppid == Some(parent) && state != "Z"
        })
        .collect()
}
