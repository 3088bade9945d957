//! Who may call what on a server that requires its token: private and
//! public functions on the data plane, asynchronous invocations, webhooks
//! without a secret, and 401s that do not tell which names exist.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use wisp_testkit::{Api, Server, run, shared_cache_dir};

fn strict_server() -> Server {
    let cache = shared_cache_dir();
    Server::start_with(
        env!("CARGO_BIN_EXE_wisp"),
        &["--cache-dir", cache.to_str().unwrap(), "--require-token"],
    )
}

/// Status and JSON body of a data-plane request, with the request id (which
/// differs per request) checked against the header and then removed.
async fn answer(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let res = req.send().await.expect("request");
    let status = res.status();
    let id = res
        .headers()
        .get("x-wisp-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
    }
    let text = res.text().await.expect("body");
    let mut body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if let Some(map) = body.as_object_mut()
        && let Some(given) = map.remove("request_id")
    {
        assert_eq!(Some(given.as_str().unwrap().to_string()), id);
    }
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_functions_need_the_token_and_public_ones_only_to_queue() {
    let server = strict_server();
    let api = Api::with_token(&server);
    let token = server.token();
    api.deploy("secret", "echo", json!({})).await;
    let public = api
        .deploy("open", "echo", json!({"invoke_auth": "public"}))
        .await;
    assert_eq!(public["invoke_auth"], "public", "{public}");
    let private = api.send(Method::GET, "/v1/functions/secret", None).await.1;
    assert_eq!(private["invoke_auth"], "private", "the default: {private}");
    let anon = reqwest::Client::new();
    let get = |path: &str| anon.get(server.at(path));
    let queue = |path: &str| {
        anon.post(server.at(path))
            .header("x-wisp-invocation-type", "async")
    };

    // Private: nothing without the token, sync or async.
    let (status, refused) = answer(get("/fn/secret")).await;
    assert_eq!(status, 401, "{refused}");
    assert_eq!(refused["code"], "unauthorized");
    assert_eq!(answer(queue("/fn/secret")).await, (status, refused.clone()));
    for (header, value) in [
        ("x-wisp-key", "wrong".to_string()),
        ("authorization", "Bearer wrong".to_string()),
        ("authorization", token.clone()),
    ] {
        let got = answer(get("/fn/secret").header(header, value.as_str())).await;
        assert_eq!(got, (status, refused.clone()), "{header}: {value}");
    }

    // With the token, as a bearer or as x-wisp-key; neither reaches the
    // function.
    for (header, value) in [
        ("authorization", format!("Bearer {token}")),
        ("x-wisp-key", token.clone()),
    ] {
        let (status, echoed) = answer(get("/fn/secret/x").header(header, value.as_str())).await;
        assert_eq!(status, 200, "{header}: {echoed}");
        assert_eq!(echoed["path"], "/x");
        let seen = echoed["headers"].as_object().unwrap();
        assert!(
            !seen.contains_key("authorization") && !seen.contains_key("x-wisp-key"),
            "the token reached the function: {echoed}"
        );
        let (status, accepted) = answer(queue("/fn/secret").header(header, value.as_str())).await;
        assert_eq!(status, 202, "{header}: {accepted}");
    }

    // Unknown functions, versions and aliases get exactly the same 401.
    for path in [
        "/fn/nosuch",
        "/fn/nosuch/deeper?q=1",
        "/fn/secret:7",
        "/fn/secret:nosuch",
        "/fn/open:7",
        "/fn/open:nosuch",
    ] {
        assert_eq!(answer(get(path)).await, (status, refused.clone()), "{path}");
        assert_eq!(
            answer(queue(path)).await,
            (status, refused.clone()),
            "{path}"
        );
    }
    // The token holder learns what is missing.
    let (status, missing) = answer(api.http.get(server.at("/fn/nosuch"))).await;
    assert_eq!(status, 404, "{missing}");
    assert_eq!(missing["code"], "function_not_found");

    // Public: anyone may call it; its own Authorization header passes
    // through; queuing work still needs the token.
    let (status, echoed) = answer(
        get("/fn/open")
            .header("authorization", "Basic dXNlcjpwdw==")
            .header("x-wisp-key", "wrong"),
    )
    .await;
    assert_eq!(status, 200, "{echoed}");
    assert_eq!(echoed["headers"]["authorization"], "Basic dXNlcjpwdw==");
    assert!(echoed["headers"].get("x-wisp-key").is_none(), "{echoed}");
    assert_eq!(
        answer(queue("/fn/open")).await,
        (StatusCode::UNAUTHORIZED, refused.clone())
    );
    let (status, accepted) = answer(queue("/fn/open").header("x-wisp-key", token.as_str())).await;
    assert_eq!(status, 202, "{accepted}");

    // A published version keeps the access it was published with.
    let (status, v1) = api
        .send(Method::POST, "/v1/functions/open/versions", None)
        .await;
    assert_eq!(status, 201, "{v1}");
    assert_eq!(v1["invoke_auth"], "public");
    let (status, patched) = api
        .send(
            Method::PATCH,
            "/v1/functions/open",
            Some(json!({"invoke_auth": "private"})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        answer(get("/fn/open")).await,
        (StatusCode::UNAUTHORIZED, refused.clone())
    );
    assert_eq!(answer(get("/fn/open:1")).await.0, 200);

    // Bad values are refused by name.
    let (status, err) = api
        .send(
            Method::PATCH,
            "/v1/functions/open",
            Some(json!({"invoke_auth": "everyone"})),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert!(err["message"].as_str().unwrap().contains("public"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sets_invoke_auth_and_sends_the_token() {
    let server = strict_server();
    let token = server.token();
    let cli = || {
        let mut c = server.cli();
        c.env("WISP_TOKEN", &token);
        c
    };
    let out = run(cli()
        .args(["create", "greet", "--invoke-auth", "public", "--wasm"])
        .arg(wisp_testkit::example("hello")));
    assert_eq!(out.code, 0, "{out:?}");
    let out = run(cli().args(["--json", "get", "greet"]));
    assert_eq!(out.code, 0, "{out:?}");
    let f: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(f["invoke_auth"], "public", "{f}");
    let out = run(cli().args(["update", "greet", "--invoke-auth", "private"]));
    assert_eq!(out.code, 0, "{out:?}");
    let out = run(cli().args(["get", "greet"]));
    assert!(out.stdout.contains("invoke_auth"), "{out:?}");
    assert!(out.stdout.contains("private"), "{out:?}");
    // `wisp invoke` gives the token, so a private function answers.
    let out = run(cli().args(["invoke", "greet"]));
    assert_eq!(out.code, 0, "{out:?}");
    let out = run(cli().args(["update", "greet", "--invoke-auth", "everyone"]));
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("`everyone`"), "{out:?}");
}

/// Posts `body` to `/hooks/{name}`, signed with `secret` if given.
async fn hook(server: &Server, name: &str, secret: Option<&str>) -> (StatusCode, Value) {
    let body = r#"{"ref":"main"}"#;
    let mut req = reqwest::Client::new()
        .post(server.at(&format!("/hooks/{name}")))
        .header("content-type", "application/json")
        .body(body);
    if let Some(s) = secret {
        let sig = wisp_triggers::sources::webhook::sign(s, body.as_bytes());
        req = req.header("x-hub-signature-256", sig);
    }
    let res = req.send().await.expect("posting to a hook");
    (res.status(), res.json().await.expect("JSON answer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_need_a_secret_when_the_token_is_required() {
    // Made on a loopback server, where a webhook may go without a secret.
    let data = tempfile::tempdir().unwrap();
    let cache = shared_cache_dir();
    let cache_args = ["--cache-dir", cache.to_str().unwrap()];
    let open = Server::start_in(env!("CARGO_BIN_EXE_wisp"), data.path(), &cache_args);
    let api = Api::new(&open);
    api.deploy("sink", "hello", json!({})).await;
    let (status, t) = api
        .send(
            Method::POST,
            "/v1/triggers",
            Some(json!({"name": "bare", "target": "sink",
                "source": {"kind": "webhook"}})),
        )
        .await;
    assert_eq!(status, 201, "{t}");
    assert_eq!(hook(&open, "bare", None).await.0, 202);
    drop(open);

    let mut strict_args = cache_args.to_vec();
    strict_args.push("--require-token");
    let server = Server::start_in(env!("CARGO_BIN_EXE_wisp"), data.path(), &strict_args);
    let api = Api::with_token(&server);
    let (status, err) = api
        .send(
            Method::POST,
            "/v1/triggers",
            Some(json!({"name": "another", "target": "sink",
                "source": {"kind": "webhook"}})),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["code"], "invalid_field");
    assert_eq!(err["field"], "source.secret");
    assert!(err["message"].as_str().unwrap().contains("secret"), "{err}");
    let (status, t) = api
        .send(
            Method::POST,
            "/v1/triggers",
            Some(json!({"name": "signed", "target": "sink",
                "source": {"kind": "webhook", "secret": "s3cret"}})),
        )
        .await;
    assert_eq!(status, 201, "{t}");

    // An unknown hook, a bad or missing signature and the stored hook
    // without a secret all get the same answer.
    let refused = hook(&server, "nosuch", None).await;
    assert_eq!(refused.0, 401, "{refused:?}");
    assert_eq!(refused.1["code"], "invalid_signature");
    for (name, secret) in [
        ("nosuch", Some("s3cret")),
        ("signed", None),
        ("signed", Some("wrong")),
        ("bare", None),
        ("bare", Some("anything")),
    ] {
        assert_eq!(
            hook(&server, name, secret).await,
            refused,
            "{name} {secret:?}"
        );
    }
    let (status, _) = hook(&server, "signed", Some("s3cret")).await;
    assert_eq!(status, 202);
    // The refusal of the stored hook is in its status, for the token holder.
    let t = api
        .wait_trigger("bare", Duration::from_secs(5), "marked refused", |t| {
            t["status"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("secret"))
        })
        .await;
    assert_eq!(t["status"]["delivered"], 0, "{t}");
}
