//! The served OpenAPI document describes the API that exists: every call
//! made here must be a documented operation and status, and its JSON body
//! must validate against the documented schema.

use reqwest::Method;
use serde_json::{Value, json};
use wisp_testkit::{Api, Server, example_bytes};

struct Doc(Value);

impl Doc {
    /// Checks one response against the document.
    fn check(&self, method: &Method, template: &str, status: u16, body: &Value) {
        let m = method.as_str().to_lowercase();
        let op = &self.0["paths"][template][&m];
        assert!(
            op.is_object(),
            "{m} {template} is not in the OpenAPI document"
        );
        let response = &op["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{m} {template} does not document status {status}: {body}"
        );
        let schema = &response["content"]["application/json"]["schema"];
        if schema.is_null() {
            assert!(
                body.is_null(),
                "{m} {template} {status} documents no body but sent {body}"
            );
            return;
        }
        let mut root = schema.clone();
        root["components"] = self.0["components"].clone();
        let validator = jsonschema::validator_for(&root)
            .unwrap_or_else(|e| panic!("schema of {m} {template} {status} is invalid: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{m} {template} {status}: {errors:?}\nbody: {body}"
        );
    }
}

struct Checked<'a> {
    api: Api,
    doc: &'a Doc,
}

impl Checked<'_> {
    async fn call(
        &self,
        method: Method,
        path: &str,
        template: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, json) = self.api.send(method.clone(), path, body).await;
        self.doc.check(&method, template, status.as_u16(), &json);
        (status.as_u16(), json)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_match_the_openapi_document() {
    let server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    let (status, doc) = api.send(Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    // One document: the token-protected control API and the routes that
    // need no token, served as JSON.
    for path in [
        "/v1/functions/{name}",
        "/v1/health",
        "/metrics",
        "/hooks/{name}",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }
    // Path parameters are the template's, and only those.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap();
                let in_template = path.contains(&format!("{{{name}}}"));
                assert_eq!(
                    p["in"] == "path",
                    in_template,
                    "{method} {path}: parameter {name} is in {}",
                    p["in"]
                );
            }
        }
    }
    let res = reqwest::get(server.at("/v1/openapi.json")).await.unwrap();
    assert_eq!(res.headers()["content-type"], "application/json");
    let doc = Doc(doc);
    let c = Checked {
        api: Api::new(&server),
        doc: &doc,
    };

    // Upload through the documented route.
    let res = api
        .http
        .post(server.at("/v1/artifacts"))
        .header("content-type", "application/wasm")
        .body(example_bytes("hello"))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let info: Value = res.json().await.unwrap();
    doc.check(&Method::POST, "/v1/artifacts", status, &info);
    let digest = info["digest"].as_str().unwrap().to_string();
    // Negative control: a body that breaks the schema must be caught.
    let wrong = json!({"digest": 5, "size": "big"});
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        doc.check(&Method::POST, "/v1/artifacts", status, &wrong)
    }));
    assert!(
        caught.is_err(),
        "the schema check accepted a malformed body"
    );
    let res = api
        .http
        .post(server.at("/v1/artifacts"))
        .body(b"junk".to_vec())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    doc.check(
        &Method::POST,
        "/v1/artifacts",
        status,
        &res.json().await.unwrap(),
    );
    c.call(
        Method::GET,
        &format!("/v1/artifacts/{digest}"),
        "/v1/artifacts/{digest}",
        None,
    )
    .await;

    let f = "/v1/functions/{name}";
    let body =
        json!({"name": "doc", "code_digest": digest, "labels": {"a": "b"}, "env": {"K": "V"}});
    assert_eq!(
        c.call(
            Method::POST,
            "/v1/functions",
            "/v1/functions",
            Some(body.clone())
        )
        .await
        .0,
        201
    );
    assert_eq!(
        c.call(Method::POST, "/v1/functions", "/v1/functions", Some(body))
            .await
            .0,
        409
    );
    assert_eq!(
        c.call(
            Method::POST,
            "/v1/functions",
            "/v1/functions",
            Some(json!({"name": "x"}))
        )
        .await
        .0,
        400
    );
    c.call(
        Method::GET,
        "/v1/functions?label=a=b",
        "/v1/functions",
        None,
    )
    .await;
    c.call(Method::GET, "/v1/functions/doc", f, None).await;
    assert_eq!(
        c.call(Method::GET, "/v1/functions/none", f, None).await.0,
        404
    );
    c.call(
        Method::PATCH,
        "/v1/functions/doc",
        f,
        Some(json!({"description": "d"})),
    )
    .await;
    c.call(
        Method::PUT,
        "/v1/functions/doc",
        f,
        Some(json!({"code_digest": digest})),
    )
    .await;

    let v = "/v1/functions/{name}/versions";
    assert_eq!(
        c.call(Method::POST, "/v1/functions/doc/versions", v, None)
            .await
            .0,
        201
    );
    assert_eq!(
        c.call(Method::POST, "/v1/functions/doc/versions", v, None)
            .await
            .0,
        200
    );
    c.call(Method::GET, "/v1/functions/doc/versions", v, None)
        .await;
    c.call(
        Method::GET,
        "/v1/functions/doc/versions/1",
        "/v1/functions/{name}/versions/{version}",
        None,
    )
    .await;

    let a = "/v1/functions/{name}/aliases";
    let one = "/v1/functions/{name}/aliases/{alias}";
    c.call(
        Method::POST,
        "/v1/functions/doc/aliases",
        a,
        Some(json!({"name": "prod", "version": 1})),
    )
    .await;
    c.call(Method::GET, "/v1/functions/doc/aliases", a, None)
        .await;
    c.call(Method::GET, "/v1/functions/doc/aliases/prod", one, None)
        .await;
    c.call(
        Method::PUT,
        "/v1/functions/doc/aliases/prod",
        one,
        Some(json!({"version": 1})),
    )
    .await;
    let (status, _) = c
        .call(
            Method::DELETE,
            "/v1/functions/doc/versions/1",
            "/v1/functions/{name}/versions/{version}",
            None,
        )
        .await;
    assert_eq!(status, 409);

    let (status, _, _) = api.call("/fn/doc").await;
    assert_eq!(status, 200);
    c.call(
        Method::GET,
        "/v1/functions/doc/stats",
        "/v1/functions/{name}/stats",
        None,
    )
    .await;
    c.call(
        Method::GET,
        "/v1/functions/doc/logs?limit=5",
        "/v1/functions/{name}/logs",
        None,
    )
    .await;
    assert_eq!(
        c.call(
            Method::GET,
            "/v1/functions/doc/logs?limit=0",
            "/v1/functions/{name}/logs",
            None
        )
        .await
        .0,
        400
    );
    c.call(Method::GET, "/v1/health", "/v1/health", None).await;

    assert_eq!(
        c.call(Method::DELETE, "/v1/functions/doc/aliases/prod", one, None)
            .await
            .0,
        204
    );
    assert_eq!(
        c.call(Method::DELETE, "/v1/functions/doc", f, None).await.0,
        204
    );
}

/// Examples Schemathesis generates per operation and phase: enough to try
/// every parameter's bounds, few enough to finish in about a minute on two
/// slow cores.
const CONTRACT_EXAMPLES: &str = "25";
/// The longest the contract run may take before the test fails.
const CONTRACT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(240);

/// Schemathesis (`st run --checks all`) over every operation of the served
/// document, with the token, against a server where a function with a
/// published version and an alias exists: every answer must be documented
/// (status, content type, headers, body schema), every schema-valid
/// request accepted and every schema-violating one refused. Any failure
/// fails the test with Schemathesis' report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure() {
    let server = Server::start_shared_with(env!("CARGO_BIN_EXE_wisp"), &["--require-token"]);
    let api = Api::with_token(&server);
    // Something for the generated requests to find: Schemathesis' first
    // names are the shortest the patterns allow.
    api.deploy("a", "hello", json!({})).await;
    let (status, body) = api
        .send(Method::POST, "/v1/functions/a/versions", None)
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api
        .send(
            Method::POST,
            "/v1/functions/a/aliases",
            Some(json!({"name": "b", "version": 1})),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // The project's settings, which `st run` finds by itself when run from
    // inside the clone.
    let manifest = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo"));
    let config = manifest.join("../../schemathesis.toml");
    let reports = tempfile::tempdir().expect("tempdir");
    let mut st = wisp_testkit::python::SCHEMATHESIS.python();
    st.args(["-m", "schemathesis.cli", "--no-color", "--config-file"])
        .arg(&config)
        .arg("run")
        .arg(server.at("/v1/openapi.json"))
        .args(["--checks", "all"])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", server.token()),
        ])
        .args(["--max-examples", CONTRACT_EXAMPLES])
        // A fixed seed: the same document gets the same requests.
        .args(["--seed", "1"])
        // One worker: the run is bounded by the server, not by Python.
        .args(["--workers", "1"])
        .args(["--request-timeout", "30"])
        // The trigger definitions' schema has many alternatives; most
        // generated bodies are filtered out, which is expected.
        .args(["--suppress-health-check", "filter_too_much"])
        .arg("--report-dir")
        .arg(reports.path())
        .current_dir(reports.path());
    // Into a file, so that a long report never blocks the run on a pipe.
    let out_path = reports.path().join("output.txt");
    let out = std::fs::File::create(&out_path).expect("report file");
    st.stdout(out.try_clone().expect("report file")).stderr(out);
    let mut child = st.spawn().expect("running schemathesis");
    let started = std::time::Instant::now();
    let report = || std::fs::read_to_string(&out_path).unwrap_or_default();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for schemathesis") {
            break status;
        }
        if started.elapsed() > CONTRACT_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("schemathesis ran past {CONTRACT_DEADLINE:?}:\n{}", report());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let report = report();
    assert!(
        status.success(),
        "schemathesis found failures ({status}):\n{report}\nserver log:\n{}",
        server.log()
    );
    assert!(
        report.contains("Tested: "),
        "schemathesis tested nothing:\n{report}"
    );
}
