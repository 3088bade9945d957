//! The dead-letter queue: invocations of the always-trapping `panic`
//! example die after three attempts, then are listed, inspected with the
//! request they carried, deleted, and replayed (one, to another qualifier,
//! or all) once the function is fixed; through the API, checked against
//! the OpenAPI document, and through `wisp dlq`.

use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use wisp_testkit::{Api, Server};

/// The served OpenAPI document, to check answers against.
struct Doc(Value);

impl Doc {
    async fn fetch(api: &Api) -> Doc {
        let (status, doc) = api.send(Method::GET, "/v1/openapi.json", None).await;
        assert_eq!(status, 200);
        Doc(doc)
    }

    /// Asserts that `template` documents `method` answering `status` with a
    /// schema that `body` satisfies (or no body).
    fn check(&self, method: &Method, template: &str, status: u16, body: &Value) {
        let m = method.as_str().to_lowercase();
        let op = &self.0["paths"][template][&m];
        assert!(op.is_object(), "{m} {template} is not documented");
        assert_eq!(
            op["tags"],
            json!(["deadletters"]),
            "{m} {template} is not tagged deadletters"
        );
        let response = &op["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{m} {template} does not document {status}: {body}"
        );
        let schema = &response["content"]["application/json"]["schema"];
        if schema.is_null() {
            assert!(body.is_null(), "{m} {template} {status} sent {body}");
            return;
        }
        let mut root = schema.clone();
        root["components"] = self.0["components"].clone();
        let validator = jsonschema::validator_for(&root).expect("a valid schema");
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{m} {template} {status}: {errors:?}\n{body}"
        );
    }
}

/// Sends a request and checks the answer against the document.
async fn call(api: &Api, doc: &Doc, method: Method, path: &str, template: &str) -> (u16, Value) {
    let (status, body) = api.send(method.clone(), path, None).await;
    let status = status.as_u16();
    doc.check(&method, template, status, &body);
    (status, body)
}

/// Queues an invocation of `name` and returns its id.
async fn queue(api: &Api, name: &str, path: &str, body: &'static [u8]) -> String {
    let res = api
        .http
        .post(format!(
            "{}/v1/functions/{name}/invocations?path={path}",
            api.base
        ))
        .header("content-type", "text/plain")
        .header("x-order", "7")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let v: Value = res.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// Polls an invocation until its status is final.
async fn wait_final(api: &Api, id: &str) -> Value {
    api.wait_invocation(id, Duration::from_secs(60)).await
}

fn ids(list: &Value) -> Vec<&str> {
    list["deadletters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_inspected_and_replayed_once_fixed() {
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    let doc = Doc::fetch(&api).await;
    api.deploy("panic", "panic", json!({})).await;
    let first = queue(&api, "panic", "/orders%3Fid=7", b"first order\xff").await;
    let second = queue(&api, "panic", "/orders%3Fid=8", b"second order").await;
    for id in [&first, &second] {
        let inv = wait_final(&api, id).await;
        assert_eq!(inv["status"], "dead", "{inv}");
    }

    // Listed newest first, with every attempt's error and timestamps.
    let (status, list) = call(
        &api,
        &doc,
        Method::GET,
        "/v1/deadletters?function=panic",
        "/v1/deadletters",
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(ids(&list), [second.as_str(), first.as_str()]);
    assert!(list["next_before"].is_null(), "{list}");
    for d in list["deadletters"].as_array().unwrap() {
        assert_eq!(d["function"], "panic");
        assert_eq!(d["qualifier"], "latest");
        assert_eq!(d["status"], "dead");
        assert!(d["error"].as_str().unwrap().contains("trapped"), "{d}");
        let attempts = d["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 3, "one try and two retries: {d}");
        for a in attempts {
            assert!(a["error"].as_str().unwrap().contains("trapped"), "{a}");
            assert_eq!(a["outcome"], "trap", "{a}");
            assert!(a["started_at"].is_string() && a["finished_at"].is_string());
        }
    }
    // Unfiltered, and paged.
    let (_, all) = call(
        &api,
        &doc,
        Method::GET,
        "/v1/deadletters",
        "/v1/deadletters",
    )
    .await;
    assert_eq!(ids(&all), [second.as_str(), first.as_str()]);
    let (_, page) = call(
        &api,
        &doc,
        Method::GET,
        "/v1/deadletters?function=panic&limit=1",
        "/v1/deadletters",
    )
    .await;
    assert_eq!(ids(&page), [second.as_str()]);
    assert_eq!(page["next_before"], second.as_str());
    let (_, page) = call(
        &api,
        &doc,
        Method::GET,
        &format!("/v1/deadletters?limit=1&before={second}"),
        "/v1/deadletters",
    )
    .await;
    assert_eq!(ids(&page), [first.as_str()]);

    // Inspected with the original request and the policy.
    let (status, letter) = call(
        &api,
        &doc,
        Method::GET,
        &format!("/v1/deadletters/{first}"),
        "/v1/deadletters/{id}",
    )
    .await;
    assert_eq!(status, 200, "{letter}");
    assert_eq!(letter["id"], first.as_str());
    assert_eq!(letter["attempts"].as_array().unwrap().len(), 3);
    let request = &letter["request"];
    assert_eq!(request["method"], "POST");
    assert_eq!(request["path_and_query"], "/orders?id=7");
    assert_eq!(request["body"], "first order\u{fffd}");
    assert_eq!(request["body_base64"], "Zmlyc3Qgb3JkZXL/");
    assert!(
        request["headers"]
            .as_array()
            .unwrap()
            .contains(&json!(["x-order", "7"])),
        "{request}"
    );
    assert_eq!(letter["policy"]["max_retries"], 2, "{letter}");

    // Fix the function: publish version 1 running `echo`, and replay the
    // first letter to it (it died under `latest`).
    api.deploy("panic", "echo", json!({})).await;
    let (status, v) = api
        .send(Method::POST, "/v1/functions/panic/versions", None)
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["version"], "1");
    let (status, replayed) = call(
        &api,
        &doc,
        Method::POST,
        &format!("/v1/deadletters/{first}/replay?qualifier=1"),
        "/v1/deadletters/{id}/replay",
    )
    .await;
    assert_eq!(status, 202, "{replayed}");
    let new = replayed["id"].as_str().unwrap().to_string();
    assert_ne!(new, first);
    assert_eq!(replayed["status_url"], format!("/v1/invocations/{new}"));
    assert_eq!(replayed["replayed_from"], first.as_str());
    assert_eq!(replayed["qualifier"], "1");
    let inv = wait_final(&api, &new).await;
    assert_eq!(inv["status"], "succeeded", "{inv}");
    assert_eq!(inv["qualifier"], "1");
    let seen: Value = serde_json::from_str(inv["result"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(seen["path"], "/orders");
    assert_eq!(seen["query"], "id=7");
    assert_eq!(seen["body_base64"], "Zmlyc3Qgb3JkZXL/", "the exact bytes");
    assert_eq!(seen["headers"]["x-order"], "7");
    assert_eq!(seen["env"]["WISP_FUNCTION_VERSION"], "1");

    // The replayed letter left the queue but its record stays, dead.
    let (_, list) = call(
        &api,
        &doc,
        Method::GET,
        "/v1/deadletters?function=panic",
        "/v1/deadletters",
    )
    .await;
    assert_eq!(ids(&list), [second.as_str()]);
    let (status, err) = call(
        &api,
        &doc,
        Method::GET,
        &format!("/v1/deadletters/{first}"),
        "/v1/deadletters/{id}",
    )
    .await;
    assert_eq!(
        (status, &err["code"]),
        (404, &json!("dead_letter_not_found")),
        "{err}"
    );
    assert!(
        err["message"].as_str().unwrap().contains(&new),
        "says what it was replayed as: {err}"
    );
    let (status, old) = api
        .send(Method::GET, &format!("/v1/invocations/{first}"), None)
        .await;
    assert_eq!((status.as_u16(), &old["status"]), (200, &json!("dead")));
    let (status, _) = call(
        &api,
        &doc,
        Method::POST,
        &format!("/v1/deadletters/{first}/replay"),
        "/v1/deadletters/{id}/replay",
    )
    .await;
    assert_eq!(status, 404, "a letter is replayed once");
    // A succeeded invocation is no dead letter.
    let (status, err) = call(
        &api,
        &doc,
        Method::GET,
        &format!("/v1/deadletters/{new}"),
        "/v1/deadletters/{id}",
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        err["message"].as_str().unwrap().contains("succeeded"),
        "{err}"
    );

    // Targets that do not resolve, or do not parse, are refused up front.
    let (status, err) = call(
        &api,
        &doc,
        Method::POST,
        &format!("/v1/deadletters/{second}/replay?qualifier=7"),
        "/v1/deadletters/{id}/replay",
    )
    .await;
    assert_eq!((status, &err["code"]), (404, &json!("version_not_found")));
    let (status, err) = call(
        &api,
        &doc,
        Method::POST,
        &format!("/v1/deadletters/{second}/replay?qualifier=No%20Such!"),
        "/v1/deadletters/{id}/replay",
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(
        (&err["code"], &err["field"]),
        (&json!("invalid_field"), &json!("qualifier"))
    );
    let (status, err) = call(
        &api,
        &doc,
        Method::POST,
        "/v1/deadletters/replay?function=panic&qualifier=prod",
        "/v1/deadletters/replay",
    )
    .await;
    assert_eq!((status, &err["code"]), (404, &json!("alias_not_found")));

    // Replay all: the second letter, to its own qualifier (`latest`, now echo).
    let (status, all) = call(
        &api,
        &doc,
        Method::POST,
        "/v1/deadletters/replay?function=panic",
        "/v1/deadletters/replay",
    )
    .await;
    assert_eq!((status, &all), (202, &json!({"replayed": 1})));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, list) = api
            .send(
                Method::GET,
                "/v1/functions/panic/invocations?status=succeeded",
                None,
            )
            .await;
        let done = list["invocations"].as_array().unwrap();
        if done.len() == 2 {
            assert_eq!(done[0]["qualifier"], "latest", "{list}");
            break;
        }
        assert!(Instant::now() < deadline, "the replay never ran: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, all) = call(
        &api,
        &doc,
        Method::POST,
        "/v1/deadletters/replay?function=panic",
        "/v1/deadletters/replay",
    )
    .await;
    assert_eq!(all, json!({"replayed": 0}));
    let (_, list) = call(
        &api,
        &doc,
        Method::GET,
        "/v1/deadletters",
        "/v1/deadletters",
    )
    .await;
    assert_eq!(ids(&list), Vec::<&str>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_deleted_and_bad_requests_name_their_field() {
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    let doc = Doc::fetch(&api).await;
    api.deploy("panic", "panic", json!({})).await;
    let id = queue(&api, "panic", "/", b"doomed").await;
    assert_eq!(wait_final(&api, &id).await["status"], "dead");

    let path = format!("/v1/deadletters/{id}");
    let template = "/v1/deadletters/{id}";
    let (status, body) = call(&api, &doc, Method::DELETE, &path, template).await;
    assert_eq!((status, &body), (204, &Value::Null));
    let (status, err) = call(&api, &doc, Method::DELETE, &path, template).await;
    assert_eq!(
        (status, &err["code"]),
        (404, &json!("dead_letter_not_found"))
    );
    let (status, _) = call(&api, &doc, Method::GET, &path, template).await;
    assert_eq!(status, 404);
    let (status, err) = api
        .send(Method::GET, &format!("/v1/invocations/{id}"), None)
        .await;
    assert_eq!(
        (status.as_u16(), &err["code"]),
        (404, &json!("invocation_not_found")),
        "deleted with its record: {err}"
    );

    // Unknown ids, well-formed or not.
    let unknown = "0".repeat(32);
    for bad in [unknown.as_str(), "nonsense"] {
        for (method, path, template) in [
            (Method::GET, format!("/v1/deadletters/{bad}"), template),
            (Method::DELETE, format!("/v1/deadletters/{bad}"), template),
            (
                Method::POST,
                format!("/v1/deadletters/{bad}/replay"),
                "/v1/deadletters/{id}/replay",
            ),
        ] {
            let (status, err) = call(&api, &doc, method.clone(), &path, template).await;
            assert_eq!(status, 404, "{method} {path}: {err}");
            assert_eq!(err["code"], "dead_letter_not_found");
        }
    }

    // Bad queries are 400s that name the field.
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("function=Not%20A%20Name", "function"),
        ("before=xyz", "before"),
    ] {
        let (status, err) = call(
            &api,
            &doc,
            Method::GET,
            &format!("/v1/deadletters?{query}"),
            "/v1/deadletters",
        )
        .await;
        assert_eq!(status, 400, "{query}: {err}");
        assert_eq!(err["code"], "invalid_field", "{query}: {err}");
        assert_eq!(err["field"], field, "{query}: {err}");
    }
    let (status, err) = call(
        &api,
        &doc,
        Method::GET,
        "/v1/deadletters?fn=panic",
        "/v1/deadletters",
    )
    .await;
    assert_eq!((status, &err["code"]), (400, &json!("invalid_request")));
    let (status, err) = call(
        &api,
        &doc,
        Method::POST,
        "/v1/deadletters/replay",
        "/v1/deadletters/replay",
    )
    .await;
    assert_eq!((status, &err["field"]), (400, &json!("function")), "{err}");
    let (status, err) = call(
        &api,
        &doc,
        Method::POST,
        "/v1/deadletters/replay?function=nope",
        "/v1/deadletters/replay",
    )
    .await;
    assert_eq!((status, &err["code"]), (404, &json!("function_not_found")));
}

#[test]
fn the_cli_lists_inspects_deletes_and_replays_dead_letters() {
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let run = |args: &[&str]| {
        let out = wisp_testkit::run(server.cli().args(args));
        (out.code, out.stdout, out.stderr)
    };
    let wasm = |name: &str| wisp_testkit::example(name).to_str().unwrap().to_string();
    let (code, _, err) = run(&["create", "panic", "--wasm", &wasm("panic")]);
    assert_eq!(code, 0, "{err}");
    let mut ids = Vec::new();
    for body in ["one", "two", "three"] {
        let (code, out, err) = run(&["--json", "invoke", "--async", "panic", "-d", body]);
        assert_eq!(code, 0, "{err}");
        let accepted: Value = serde_json::from_str(&out).unwrap();
        ids.push(accepted["id"].as_str().unwrap().to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, out, err) = run(&["--json", "dlq", "list", "panic"]);
        assert_eq!(code, 0, "{err}");
        let list: Value = serde_json::from_str(&out).unwrap();
        if list["deadletters"].as_array().unwrap().len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "never dead-lettered: {list}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let (code, table, err) = run(&["dlq", "list", "panic"]);
    assert_eq!(code, 0, "{err}");
    assert!(table.starts_with("ID"), "{table}");
    for id in &ids {
        assert!(table.contains(id.as_str()), "{table}");
    }
    assert!(table.contains("trapped"), "{table}");
    let (code, table, _) = run(&["dlq", "list", "--limit", "1"]);
    assert_eq!(code, 0);
    assert!(
        table.contains(&ids[2]) && !table.contains(&ids[0]),
        "{table}"
    );
    assert!(
        table.contains(&format!("wisp dlq list --before {}", ids[2])),
        "{table}"
    );

    let (code, out, err) = run(&["--json", "dlq", "get", &ids[0]]);
    assert_eq!(code, 0, "{err}");
    let letter: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(letter["request"]["body"], "one");
    assert_eq!(letter["attempts"].as_array().unwrap().len(), 3);
    let (code, text, _) = run(&["dlq", "get", &ids[0]]);
    assert_eq!(code, 0);
    assert!(
        text.contains(&ids[0]) && text.contains("attempts:"),
        "{text}"
    );
    assert!(
        text.contains("  3. ") && text.lines().any(|l| l == "one"),
        "{text}"
    );

    let (code, out, _) = run(&["dlq", "delete", &ids[2]]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("deleted dead letter {}", ids[2]));
    let (code, _, err) = run(&["dlq", "delete", &ids[2]]);
    assert_eq!(code, 1, "an unknown dead letter is a server refusal");
    assert!(err.contains("dead_letter_not_found"), "{err}");

    // Fix the function, then replay one explicitly and the rest at once.
    let (code, _, err) = run(&["update", "panic", "--wasm", &wasm("hello")]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["--json", "dlq", "replay", &ids[0], "--qualifier", "latest"]);
    assert_eq!(code, 0, "{err}");
    let replayed: Value = serde_json::from_str(&out).unwrap();
    let new = replayed["id"].as_str().unwrap().to_string();
    assert_eq!(replayed["replayed_from"], ids[0].as_str());
    let (code, out, _) = run(&["dlq", "replay", &ids[0]]);
    assert_eq!(code, 1, "already replayed: {out}");
    let (code, out, err) = run(&["dlq", "replay-all", "panic"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "replayed 1 dead letter of panic; status: wisp invocations panic"
    );
    let (code, out, _) = run(&["dlq", "list", "panic"]);
    assert_eq!((code, out.trim()), (0, "no dead letters of panic"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out, _) = run(&["--json", "invocations", "panic"]);
        let list: Value = serde_json::from_str(&out).unwrap();
        let invocations = list["invocations"].as_array().unwrap();
        let succeeded = invocations
            .iter()
            .filter(|i| i["status"] == "succeeded")
            .count();
        if succeeded == 2 {
            assert!(invocations.iter().any(|i| i["id"] == new.as_str()));
            break;
        }
        assert!(Instant::now() < deadline, "replays never ran: {list}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, out, _) = run(&["dlq", "replay-all", "panic"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("replayed 0 dead letters"), "{out}");
    let (code, _, err) = run(&["dlq", "list", "Not A Name"]);
    assert_eq!(code, 2, "{err}");
}
