//! The `wisp` CLI against a real server: lifecycle commands, invoke, logs,
//! stats and `wisp deploy` with a manifest.

use serde_json::Value;
use std::time::{Duration, Instant};
use wisp_testkit::{Output, Server, example, run};

fn server() -> Server {
    Server::start_shared(env!("CARGO_BIN_EXE_wisp"))
}

fn ok(out: Output) -> Output {
    assert_eq!(out.code, 0, "command failed: {out:?}");
    out
}

fn json(out: Output) -> Value {
    let out = ok(out);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

#[test]
fn lifecycle_from_the_cli() {
    let server = server();
    let hello = example("hello");
    let echo = example("echo");
    let cli = || server.cli();

    let created = json(run(cli()
        .args(["--json", "create", "greet", "--wasm"])
        .arg(&hello)
        .args([
            "--description",
            "hi",
            "--label",
            "tier=demo",
            "--env",
            "A=1",
            "--memory",
            "64",
            "--timeout",
            "2000",
        ])));
    assert_eq!(created["name"], "greet");
    assert_eq!(created["labels"]["tier"], "demo");
    assert_eq!(created["env"]["A"], "1");
    assert_eq!(created["memory_mib"], 64);

    let out = ok(run(cli().args(["invoke", "greet"])));
    assert_eq!(out.stdout, "Hello from Wisp!\n");

    let listed = json(run(cli().args(["--json", "list", "--label", "tier=demo"])));
    assert_eq!(listed["functions"][0]["name"], "greet");
    let listed = json(run(cli().args(["--json", "list", "--label", "tier=prod"])));
    assert_eq!(listed["functions"], serde_json::json!([]));

    let v1 = json(run(cli().args(["--json", "publish", "greet"])));
    assert_eq!(v1["version"], "1");
    ok(run(cli()
        .args(["update", "greet", "--wasm"])
        .arg(&echo)
        .args(["--env", "A=2"])));
    let v2 = json(run(cli().args(["--json", "publish", "greet"])));
    assert_eq!(v2["version"], "2");
    let versions = json(run(cli().args(["--json", "versions", "greet"])));
    assert_eq!(versions["versions"].as_array().unwrap().len(), 2);

    ok(run(cli().args([
        "alias",
        "create",
        "greet",
        "prod",
        "--version",
        "1",
    ])));
    let out = ok(run(cli().args(["invoke", "greet:prod"])));
    assert_eq!(out.stdout, "Hello from Wisp!\n");
    let out =
        ok(run(cli().args([
            "invoke", "greet:2", "--path", "/p?q=1", "-d", "body!",
        ])));
    let echoed: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["path"], "/p");
    assert_eq!(echoed["query"], "q=1");
    assert_eq!(echoed["body"], "body!");
    assert_eq!(echoed["env_all"]["A"], "2");

    // Deleting an aliased version is refused and names the alias.
    let out = run(cli().args(["delete", "greet:1"]));
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("prod"), "{out:?}");
    ok(run(cli().args([
        "alias",
        "update",
        "greet",
        "prod",
        "--version",
        "2",
    ])));
    ok(run(cli().args(["delete", "greet:1"])));
    let aliases = json(run(cli().args(["--json", "alias", "list", "greet"])));
    assert_eq!(aliases["aliases"][0]["version"], 2);
    ok(run(cli().args(["alias", "delete", "greet", "prod"])));

    let got = json(run(cli().args(["--json", "get", "greet"])));
    assert_eq!(got["published_versions"], serde_json::json!([2]));

    // Errors: unknown function exits 1 with the message; bad target exits non-zero.
    let out = run(cli().args(["invoke", "nope"]));
    assert_eq!(out.code, 1, "{out:?}");
    let out = run(cli().args(["get", "nope"]));
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("does not exist"), "{out:?}");

    ok(run(cli().args(["delete", "greet"])));
    assert_eq!(run(cli().args(["get", "greet"])).code, 1);
}

#[test]
fn logs_capture_output_with_request_ids_and_truncation() {
    let server = server();
    let cli = || server.cli();
    ok(run(cli()
        .args(["create", "logger", "--wasm"])
        .arg(example("logger"))));
    let out = ok(run(cli().args([
        "invoke",
        "-i",
        "logger",
        "--path",
        "/?lines=3",
    ])));
    let request_id = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("x-wisp-request-id: "))
        .unwrap_or_else(|| panic!("no request id header in {out:?}"))
        .trim()
        .to_string();
    // 200 KiB of stdout in one invocation: over the 64 KiB cap.
    ok(run(cli().args([
        "invoke",
        "logger",
        "--path",
        "/?lines=200&bytes=1024",
    ])));

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ok(run(cli().args([
            "logs",
            "logger",
            "--request-id",
            &request_id,
        ])));
        if out.stdout.contains("out line 2") && out.stdout.contains("err line 2") {
            assert!(out.stdout.contains(&request_id), "{out:?}");
            assert!(out.stdout.contains("stdout"), "{out:?}");
            assert!(out.stdout.contains("stderr"), "{out:?}");
            assert!(!out.stdout.contains("truncated"), "{out:?}");
            break;
        }
        assert!(Instant::now() < deadline, "logs never arrived: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ok(run(cli().args(["--json", "logs", "logger"])));
        let records: Vec<Value> = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if let Some(big) = records.iter().find(|r| r["truncated"] == true) {
            assert_eq!(big["stream"], "stdout");
            let len = big["message"].as_str().unwrap().len();
            assert_eq!(
                len,
                wisp_core::limits::MAX_LOG_BYTES_PER_STREAM,
                "kept exactly the cap"
            );
            break;
        }
        assert!(Instant::now() < deadline, "truncated record never arrived");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn stats_count_invocations_errors_timeouts_and_cold_starts() {
    let server = server();
    let cli = || server.cli();
    ok(run(cli()
        .args(["create", "panic", "--wasm"])
        .arg(example("panic"))));
    ok(run(cli()
        .args(["create", "sleep", "--timeout", "200", "--wasm"])
        .arg(example("sleep"))));
    for _ in 0..3 {
        assert_eq!(run(cli().args(["invoke", "panic"])).code, 1);
    }
    ok(run(cli().args(["invoke", "sleep", "--path", "/?ms=1"])));
    assert_eq!(
        run(cli().args(["invoke", "sleep", "--path", "/?ms=5000"])).code,
        1
    );

    let stats = json(run(cli().args(["--json", "stats", "panic"])));
    assert_eq!(stats["total"]["invocations"], 3, "{stats}");
    assert_eq!(stats["total"]["errors"], 3);
    assert_eq!(stats["total"]["cold_starts"], 1);
    assert_eq!(stats["versions"][0]["version"], "latest");
    let stats = json(run(cli().args(["--json", "stats", "sleep"])));
    assert_eq!(stats["total"]["invocations"], 2, "{stats}");
    assert_eq!(stats["total"]["timeouts"], 1);
    assert_eq!(stats["total"]["errors"], 0);
    let p50 = stats["total"]["duration_ms"]["p50"].as_f64().unwrap();
    let p99 = stats["total"]["duration_ms"]["p99"].as_f64().unwrap();
    assert!(p50 > 0.0 && p99 >= 200.0 && p99 >= p50, "{stats}");
    let table = ok(run(cli().args(["stats", "sleep"])));
    assert!(table.stdout.contains("latest"), "{table:?}");
}

#[test]
fn deploy_applies_the_examples_manifest_idempotently() {
    let server = server();
    // Make sure the components exist, then deploy from a copy of the
    // examples manifest that skips the build (the harness already built).
    let built = wisp_testkit::build_examples();
    let dir = tempfile::tempdir().unwrap();
    let manifest = std::fs::read_to_string(wisp_testkit::examples_dir().join("wisp.toml")).unwrap();
    let manifest: String = manifest
        .lines()
        .filter(|l| !l.trim_start().starts_with("build"))
        .map(|l| l.replace("target/wasm32-wasip2/release", built.to_str().unwrap()) + "\n")
        .collect();
    std::fs::write(dir.path().join("wisp.toml"), manifest).unwrap();

    let first = ok(run(server
        .cli()
        .arg("deploy")
        .arg("--publish")
        .current_dir(dir.path())));
    assert!(first.stdout.contains("hello: created"), "{first:?}");
    assert!(first.stdout.contains("published version 1"), "{first:?}");
    assert!(
        first.stdout.contains("trigger every-minute: created"),
        "{first:?}"
    );
    let second = ok(run(server
        .cli()
        .arg("deploy")
        .arg("--publish")
        .current_dir(dir.path())));
    assert!(
        !second.stdout.contains("created") && !second.stdout.contains("updated"),
        "{second:?}"
    );
    assert!(second.stdout.contains("hello: unchanged"), "{second:?}");
    assert!(
        second.stdout.contains("trigger every-minute: unchanged"),
        "{second:?}"
    );
    let out = ok(run(server.cli().args(["invoke", "hello:1"])));
    assert_eq!(out.stdout, "Hello from Wisp!\n");

    // Unknown keys are an error that names the key.
    std::fs::write(
        dir.path().join("wisp.toml"),
        "[[function]]\nname = \"x\"\nwasm = \"x.wasm\"\nmemroy_mib = 3\n",
    )
    .unwrap();
    let out = run(server.cli().arg("deploy").current_dir(dir.path()));
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("memroy_mib"), "{out:?}");
}

#[test]
fn logs_follow_streams_new_output_and_since_filters() {
    let server = server();
    ok(run(server
        .cli()
        .args(["create", "logger", "--wasm"])
        .arg(example("logger"))));
    let mut follow = server
        .cli()
        .args(["logs", "logger", "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Invoke after the follower started: it must pick the new output up.
    std::thread::sleep(Duration::from_millis(300));
    ok(run(server.cli().args([
        "invoke",
        "logger",
        "--path",
        "/?lines=2",
    ])));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("out line 2")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("--follow never printed the new output: {seen:?}"),
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();

    let recent = ok(run(server.cli().args(["logs", "logger", "--since", "1h"])));
    assert!(recent.stdout.contains("out line 1"), "{recent:?}");
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let none = ok(run(server
        .cli()
        .args(["logs", "logger", "--since", &future])));
    assert!(!none.stdout.contains("out line"), "{none:?}");
}
