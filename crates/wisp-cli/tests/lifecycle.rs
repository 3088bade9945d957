//! Function lifecycle through the REST API of a real server process:
//! create, get, list, update, delete, publish, aliases, weighted routing and
//! invocation by qualifier.

use reqwest::Method;
use serde_json::{Value, json};
use wisp_testkit::{Api, Server, example_bytes};

fn server() -> Server {
    Server::start_shared(env!("CARGO_BIN_EXE_wisp"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_list_update_delete() {
    let server = server();
    let api = Api::new(&server);
    let digest = api.upload(example_bytes("echo")).await;

    let (status, created) = api
        .send(
            Method::POST,
            "/v1/functions",
            Some(json!({
                "name": "echo",
                "code_digest": digest,
                "description": "echoes",
                "labels": {"tier": "demo"},
                "env": {"GREETING": "hi"},
                "memory_mib": 64,
                "timeout_ms": 5000,
                "max_concurrency": 7
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"], "echo");
    assert_eq!(created["version"], "latest");
    assert_eq!(created["code_digest"], digest.as_str());
    assert_eq!(created["memory_mib"], 64);
    assert_eq!(created["max_concurrency"], 7);
    assert!(created["created_at"].is_string());

    // Creating twice is a conflict.
    let (status, err) = api
        .send(
            Method::POST,
            "/v1/functions",
            Some(json!({"name": "echo", "code_digest": digest})),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(err["code"], "already_exists");

    // A second function without labels, to test the selector.
    api.deploy("plain", "hello", json!({})).await;
    let (_, list) = api.send(Method::GET, "/v1/functions", None).await;
    let names: Vec<&str> = list["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "plain"]);
    let (_, list) = api
        .send(Method::GET, "/v1/functions?label=tier=demo", None)
        .await;
    let names: Vec<&str> = list["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo"]);

    // The function sees its env and context.
    let (status, headers, body) = api.call("/fn/echo").await;
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["env_all"]["GREETING"], "hi");
    assert_eq!(seen["env"]["WISP_FUNCTION_NAME"], "echo");
    assert_eq!(seen["env"]["WISP_FUNCTION_VERSION"], "latest");
    assert_eq!(seen["env"]["WISP_MEMORY_LIMIT_MIB"], "64");
    assert_eq!(
        seen["env"]["WISP_REQUEST_ID"].as_str().unwrap(),
        headers["x-wisp-request-id"].to_str().unwrap()
    );

    // Update changes latest; the next invocation sees it.
    let (status, updated) = api
        .send(
            Method::PATCH,
            "/v1/functions/echo",
            Some(json!({"env": {"GREETING": "hello"}})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["env"]["GREETING"], "hello");
    assert_eq!(
        updated["memory_mib"], 64,
        "PATCH keeps fields it does not name"
    );
    let (_, _, body) = api.call("/fn/echo").await;
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["env_all"]["GREETING"], "hello");

    // Delete removes it everywhere.
    let (status, _) = api.send(Method::DELETE, "/v1/functions/echo", None).await;
    assert_eq!(status, 204);
    let (status, err) = api.send(Method::GET, "/v1/functions/echo", None).await;
    assert_eq!(status, 404);
    assert_eq!(err["code"], "function_not_found");
    let (status, _, _) = api.call("/fn/echo").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_aliases_and_weighted_routing() {
    let server = server();
    let api = Api::new(&server);
    api.deploy("greet", "hello", json!({"description": "v1"}))
        .await;

    let (status, v1) = api
        .send(Method::POST, "/v1/functions/greet/versions", None)
        .await;
    assert_eq!(status, 201, "{v1}");
    assert_eq!(v1["version"], "1");
    // Publishing again with nothing changed returns the same version.
    let (status, again) = api
        .send(Method::POST, "/v1/functions/greet/versions", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(again["version"], "1");

    // Change latest to different code and publish v2.
    api.deploy("greet", "echo", json!({"description": "v2"}))
        .await;
    let (status, v2) = api
        .send(Method::POST, "/v1/functions/greet/versions", None)
        .await;
    assert_eq!(status, 201);
    assert_eq!(v2["version"], "2");
    assert_ne!(v1["code_digest"], v2["code_digest"]);

    // Version 1 never changed.
    let (_, got) = api
        .send(Method::GET, "/v1/functions/greet/versions/1", None)
        .await;
    assert_eq!(got, v1);
    let (_, versions) = api
        .send(Method::GET, "/v1/functions/greet/versions", None)
        .await;
    assert_eq!(versions["versions"].as_array().unwrap().len(), 2);

    // Invoke by version number, latest, and default.
    let (status, headers, body) = api.call("/fn/greet:1").await;
    assert_eq!(status, 200);
    assert_eq!(body, "Hello from Wisp!\n");
    assert_eq!(headers["x-wisp-version"], "1");
    let (_, headers, body) = api.call("/fn/greet:latest/x").await;
    assert_eq!(headers["x-wisp-version"], "latest");
    assert!(body.contains("\"path\":\"/x\""), "{body}");
    let (_, headers, _) = api.call("/fn/greet").await;
    assert_eq!(headers["x-wisp-version"], "latest");

    // Alias with a 10% split to v2.
    let (status, alias) = api
        .send(
            Method::POST,
            "/v1/functions/greet/aliases",
            Some(json!({"name": "prod", "version": 1, "routing": {"version": 2, "weight": 0.1}})),
        )
        .await;
    assert_eq!(status, 201, "{alias}");
    let mut served = std::collections::HashMap::<String, u32>::new();
    for _ in 0..400 {
        let (status, headers, _) = api.call("/fn/greet:prod").await;
        assert_eq!(status, 200);
        *served
            .entry(headers["x-wisp-version"].to_str().unwrap().to_string())
            .or_default() += 1;
    }
    let v2_share = *served.get("2").unwrap_or(&0) as f64 / 400.0;
    assert!(served.contains_key("1"), "{served:?}");
    assert!(
        (0.03..=0.2).contains(&v2_share),
        "v2 got {v2_share} of traffic: {served:?}"
    );

    // A version an alias points at cannot be deleted: 409 naming the alias.
    for v in [1, 2] {
        let (status, err) = api
            .send(
                Method::DELETE,
                &format!("/v1/functions/greet/versions/{v}"),
                None,
            )
            .await;
        assert_eq!(status, 409, "{err}");
        assert_eq!(err["code"], "conflict");
        assert!(err["message"].as_str().unwrap().contains("prod"), "{err}");
    }

    // Repoint the alias wholly to v2; v1 becomes deletable.
    let (status, alias) = api
        .send(
            Method::PUT,
            "/v1/functions/greet/aliases/prod",
            Some(json!({"version": 2})),
        )
        .await;
    assert_eq!(status, 200, "{alias}");
    assert!(alias.get("routing").is_none());
    let (_, headers, _) = api.call("/fn/greet:prod").await;
    assert_eq!(headers["x-wisp-version"], "2");
    let (status, _) = api
        .send(Method::DELETE, "/v1/functions/greet/versions/1", None)
        .await;
    assert_eq!(status, 204);
    let (status, _, body) = api.call("/fn/greet:1").await;
    assert_eq!(status, 404);
    assert!(body.contains("version_not_found"), "{body}");

    let (_, aliases) = api
        .send(Method::GET, "/v1/functions/greet/aliases", None)
        .await;
    assert_eq!(aliases["aliases"].as_array().unwrap().len(), 1);
    let (status, _) = api
        .send(Method::DELETE, "/v1/functions/greet/aliases/prod", None)
        .await;
    assert_eq!(status, 204);
    let (status, err) = api
        .send(Method::GET, "/v1/functions/greet/aliases/prod", None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(err["code"], "alias_not_found");
    let (status, _, _) = api.call("/fn/greet:prod").await;
    assert_eq!(status, 404);

    // Version numbers are never reused.
    let (_, v3) = api
        .send(Method::POST, "/v1/functions/greet/versions", None)
        .await;
    assert_eq!(v3["version"], "2", "unchanged latest republishes nothing");
    api.deploy("greet", "hello", json!({"description": "v3"}))
        .await;
    let (_, v3) = api
        .send(Method::POST, "/v1/functions/greet/versions", None)
        .await;
    assert_eq!(v3["version"], "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_reaches_the_function_intact() {
    let server = server();
    let api = Api::new(&server);
    api.deploy("echo", "echo", json!({})).await;
    let res = api
        .http
        .put(server.at("/fn/echo/a/b%20c?x=1&y=two"))
        .header("x-custom", "value")
        .body("payload \u{1F600}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-wisp-function"], "echo");
    let seen: Value = res.json().await.unwrap();
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["path"], "/a/b%20c");
    assert_eq!(seen["query"], "x=1&y=two");
    assert_eq!(seen["headers"]["x-custom"], "value");
    assert_eq!(seen["body"], "payload \u{1F600}");

    // A large streamed body arrives whole.
    let big = vec![b'z'; 3 * 1024 * 1024];
    let res = api
        .http
        .post(server.at("/fn/echo"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let seen: Value = res.json().await.unwrap();
    assert_eq!(seen["body"].as_str().unwrap().len(), big.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn square_is_a_json_api() {
    let server = server();
    let api = Api::new(&server);
    api.deploy("square", "square", json!({})).await;
    let res = api
        .http
        .post(server.at("/fn/square"))
        .body(r#"{"numbers":[2,3,4]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body, json!({"squares": [4, 9, 16]}));

    let res = api
        .http
        .post(server.at("/fn/square"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_from_another_sdk_runs_unchanged() {
    // wstd-hello is built with the wstd SDK against older WASI 0.2.x
    // interface versions (0.2.4 and 0.2.6), and also exports wasi:cli/run.
    let server = server();
    let api = Api::new(&server);
    api.deploy("wstd", "wstd-hello", json!({})).await;
    let (status, _, body) = api.call("/fn/wstd").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "Hello from wstd!\n");
}

/// Sets the modification time of every file in `dir` (and of `dir`) two
/// days back, as if all of it had been uploaded or compiled long ago.
fn age_all(dir: &std::path::Path) {
    let then = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86400);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.set_modified(then).unwrap();
        }
    }
    std::fs::File::open(dir)
        .unwrap()
        .set_modified(then)
        .unwrap();
}

/// Polls until `path` is gone; panics after 20 s.
async fn wait_gone(path: &std::path::Path, server: &Server) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while path.exists() {
        assert!(
            std::time::Instant::now() < until,
            "{} was not swept; server log:\n{}",
            path.display(),
            server.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Polls `/metrics` until `wisp_code_swept_files_total` is `n`; panics if
/// it goes past `n` or is not there within 10 s.
async fn swept_files_reach(server: &Server, n: f64) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = server.metric("wisp_code_swept_files_total").await;
        assert!(got.unwrap_or(0.0) <= n, "swept {got:?} files, expected {n}");
        if got == Some(n) {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "swept {got:?} files, expected {n}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_nothing_refers_to_is_swept_after_its_grace_period() {
    // Its own cache of compiled code (a shared one is never swept).
    let server = Server::start_with(env!("CARGO_BIN_EXE_wisp"), &["--sweep-interval", "0.1"]);
    let api = Api::new(&server);
    let artifacts = server.data_dir.join("artifacts/sha256");
    let compiled = std::fs::read_dir(server.data_dir.join("compiled"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("engine-")
        })
        .expect("this engine's cache directory");
    let file = |digest: &str| artifacts.join(format!("{}.wasm", &digest["sha256:".len()..]));
    let code = |digest: &str| compiled.join(format!("{}.cwasm", &digest["sha256:".len()..]));

    // `f` version 1 runs `hello`, its latest `echo`; `square` is uploaded
    // and never used.
    let create = |name: &'static str, digest: String| {
        let api = &api;
        async move {
            let (status, body) = api
                .send(
                    Method::POST,
                    "/v1/functions",
                    Some(json!({"name": name, "code_digest": digest})),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
    };
    let hello = api.upload(example_bytes("hello")).await;
    create("f", hello.clone()).await;
    let (status, body) = api
        .send(Method::POST, "/v1/functions/f/versions", None)
        .await;
    assert_eq!(status, 201, "{body}");
    let echo = api.deploy("f", "echo", json!({})).await["code_digest"]
        .as_str()
        .unwrap()
        .to_string();
    let square = api.upload(example_bytes("square")).await;
    let earlier_engine = server.data_dir.join("compiled/engine-0000000000000000");
    std::fs::create_dir_all(&earlier_engine).unwrap();
    std::fs::write(
        earlier_engine.join(format!("{}.cwasm", &square[7..])),
        b"old",
    )
    .unwrap();
    for d in [&hello, &echo, &square] {
        assert!(
            file(d).exists() && code(d).exists(),
            "{d} stored and compiled"
        );
    }
    age_all(&artifacts);
    age_all(&compiled);
    age_all(&earlier_engine);
    // Uploaded now: within its grace period, though nothing refers to it.
    let reply = api.upload(example_bytes("reply")).await;

    wait_gone(&file(&square), &server).await;
    wait_gone(&code(&square), &server).await;
    wait_gone(&earlier_engine, &server).await;
    let (status, body) = api
        .send(Method::GET, &format!("/v1/artifacts/{square}"), None)
        .await;
    assert_eq!(status, 404, "{body}");
    for d in [&hello, &echo] {
        assert!(file(d).exists(), "{d} is referred to and stays");
        assert!(code(d).exists(), "{d}'s compiled code stays");
    }
    assert!(
        file(&reply).exists(),
        "a fresh upload keeps its grace period"
    );
    // square's component, compiled code and its tag, and the earlier
    // engine's file.
    swept_files_reach(&server, 4.0).await;
    // Compiled code goes with its artifact, not by its own age: `reply`'s
    // stays while its component does.
    age_all(&compiled);

    // Deleting the version that ran `hello` lets its code go; `f` still runs.
    let (status, body) = api
        .send(Method::DELETE, "/v1/functions/f/versions/1", None)
        .await;
    assert_eq!(status, 204, "{body}");
    wait_gone(&file(&hello), &server).await;
    wait_gone(&code(&hello), &server).await;
    assert!(file(&echo).exists());
    swept_files_reach(&server, 7.0).await;
    assert!(code(&reply).exists() && code(&echo).exists());
    assert!(server.metric("wisp_code_swept_bytes_total").await.unwrap() > 0.0);
    let (status, _, body) = api.call("/fn/f").await;
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["env"]["WISP_FUNCTION_NAME"], "f");

    // Swept code can be uploaded again and used.
    let again = api.upload(example_bytes("square")).await;
    assert_eq!(again, square);
    create("g", square.clone()).await;
    assert!(file(&square).exists());
}

/// The invocations in `name`'s stats window.
async fn invocations(api: &Api, name: &str) -> u64 {
    let (status, stats) = api
        .send(Method::GET, &format!("/v1/functions/{name}/stats"), None)
        .await;
    assert_eq!(status, 200, "{stats}");
    stats["total"]["invocations"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_created_again_starts_with_no_stats() {
    let server = server();
    let api = Api::new(&server);
    api.deploy("again", "hello", json!({})).await;
    for _ in 0..3 {
        let (status, _, body) = api.call("/fn/again").await;
        assert_eq!(status, 200, "{body}");
    }
    // Each invocation is recorded once its response is over.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while invocations(&api, "again").await < 3 {
        assert!(
            std::time::Instant::now() < until,
            "3 invocations in the stats"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let series = r#"faas_invocations_total{function="again",version="latest"}"#;
    assert_eq!(server.metric(series).await, Some(3.0));

    let (status, body) = api.send(Method::DELETE, "/v1/functions/again", None).await;
    assert_eq!(status, 204, "{body}");
    api.deploy("again", "hello", json!({})).await;
    assert_eq!(
        invocations(&api, "again").await,
        0,
        "the new function inherits nothing"
    );
    assert_eq!(server.metric(series).await, None);
}
