//! Server process behaviour: graceful shutdown, bearer tokens, data directory.

use serde_json::json;
use std::time::Duration;
use wisp_testkit::{Api, Server, run, shared_cache_dir};

fn cache_args() -> Vec<String> {
    vec![
        "--cache-dir".into(),
        shared_cache_dir().to_str().unwrap().to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits_cleanly() {
    let args = cache_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for signal in ["TERM", "INT"] {
        let mut server = Server::start_with(env!("CARGO_BIN_EXE_wisp"), &args);
        let api = Api::new(&server);
        api.deploy("sleep", "sleep", json!({})).await;
        let client = api.http.clone();
        let url = server.at("/fn/sleep?ms=1500");
        let in_flight = tokio::spawn(async move {
            let res = client.get(url).send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        server.signal(signal);
        let (status, body) = in_flight.await.unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, "slept 1500ms\n"),
            "SIG{signal}"
        );
        let exit = tokio::task::spawn_blocking(move || {
            let status = server.wait_exit(Duration::from_secs(20));
            (status, server)
        })
        .await
        .unwrap();
        let (status, server) = exit;
        let status = status
            .unwrap_or_else(|| panic!("server did not exit on SIG{signal}:\n{}", server.log()));
        assert!(status.success(), "SIG{signal}: {status}\n{}", server.log());
        // New connections are refused once it is gone.
        assert!(reqwest::get(server.at("/v1/health")).await.is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_the_control_api() {
    let mut args = cache_args();
    args.push("--require-token".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_with(env!("CARGO_BIN_EXE_wisp"), &args);
    let token = std::fs::read_to_string(server.data_dir.join("token")).unwrap();
    assert_eq!(token.trim().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(server.data_dir.join("token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let http = reqwest::Client::new();
    let res = http.get(server.at("/v1/functions")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let err: serde_json::Value = res.json().await.unwrap();
    assert_eq!(err["code"], "unauthorized");
    let res = http
        .get(server.at("/v1/functions"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = http
        .get(server.at("/v1/functions"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Health stays open for load balancers.
    assert_eq!(
        http.get(server.at("/v1/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // The CLI picks the token up from WISP_TOKEN, or from its config file.
    let out = run(server.cli().args(["list"]));
    assert_ne!(out.code, 0, "no token must fail: {out:?}");
    let out = run(server.cli().args(["list"]).env("WISP_TOKEN", token.trim()));
    assert_eq!(out.code, 0, "{out:?}");
    let config = server.data_dir.join("cli.toml");
    std::fs::write(&config, format!("token = \"{}\"\n", token.trim())).unwrap();
    let out = run(server.cli().args(["list"]).env("WISP_CONFIG", &config));
    assert_eq!(out.code, 0, "{out:?}");

    // A restart keeps the same token.
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_listener_requires_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = cache_args();
    args.extend(["--listen".to_string(), "0.0.0.0:0".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_in(env!("CARGO_BIN_EXE_wisp"), tmp.path(), &args);
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let url = format!("http://127.0.0.1:{port}/v1/functions");
    let res = reqwest::get(&url).await.unwrap();
    assert_eq!(res.status(), 401);
    let token = std::fs::read_to_string(tmp.path().join("token")).unwrap();
    let res = reqwest::Client::new()
        .get(&url)
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[test]
fn environment_variables_choose_the_data_dir_and_address() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("from-env");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wisp"))
        .arg("server")
        .env("WISP_DATA_DIR", &data)
        .env("WISP_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.starts_with("wisp listening on http://127.0.0.1:"),
        "{line}"
    );
    assert!(data.join("wisp.db").exists(), "WISP_DATA_DIR was not used");
    assert!(data.join("token").exists());
}
