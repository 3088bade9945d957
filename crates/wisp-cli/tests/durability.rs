//! Acknowledged control-plane writes survive kill -9, and compiled code
//! survives a restart so the first request does not recompile.

use reqwest::Method;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wisp_testkit::{Api, Server, example_bytes};

#[derive(Debug, Clone)]
enum Acked {
    Created(String),
    Patched(String, String),
    Published(String, String),
    Aliased(String, u32),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_write() {
    let mut server = Server::start_shared(env!("CARGO_BIN_EXE_wisp"));
    let api = Arc::new(Api::new(&server));
    let digest = api.upload(example_bytes("hello")).await;
    let acked = Arc::new(Mutex::new(Vec::<Acked>::new()));

    // Two writers hammer the control plane until the server dies under them.
    let mut writers = Vec::new();
    for w in 0..2 {
        let api = api.clone();
        let acked = acked.clone();
        let digest = digest.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("w{w}-f{i}");
                let body = json!({"code_digest": digest, "env": {"STEP": "0"}});
                let Ok(res) = api
                    .http
                    .put(format!("{}/v1/functions/{name}", api.base))
                    .json(&body)
                    .send()
                    .await
                else {
                    return;
                };
                if res.status() != 201 {
                    return;
                }
                acked.lock().unwrap().push(Acked::Created(name.clone()));

                let body = json!({"env": {"STEP": "1"}});
                let Ok(res) = api
                    .http
                    .patch(format!("{}/v1/functions/{name}", api.base))
                    .json(&body)
                    .send()
                    .await
                else {
                    return;
                };
                if res.status() != 200 {
                    return;
                }
                acked
                    .lock()
                    .unwrap()
                    .push(Acked::Patched(name.clone(), "1".into()));

                let Ok(res) = api
                    .http
                    .post(format!("{}/v1/functions/{name}/versions", api.base))
                    .send()
                    .await
                else {
                    return;
                };
                if res.status() != 201 {
                    return;
                }
                let Ok(v) = res.json::<serde_json::Value>().await else {
                    return;
                };
                acked.lock().unwrap().push(Acked::Published(
                    name.clone(),
                    v["version"].as_str().unwrap().into(),
                ));

                let body = json!({"name": "live", "version": 1});
                let Ok(res) = api
                    .http
                    .post(format!("{}/v1/functions/{name}/aliases", api.base))
                    .json(&body)
                    .send()
                    .await
                else {
                    return;
                };
                if res.status() != 201 {
                    return;
                }
                acked.lock().unwrap().push(Acked::Aliased(name.clone(), 1));
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let count_before = acked.lock().unwrap().len();
    assert!(
        count_before > 10,
        "the writers made too little progress to test anything: {count_before}"
    );
    let mut s = tokio::task::spawn_blocking(move || {
        server.restart_after_kill9();
        server
    })
    .await
    .unwrap();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    let api = Api::new(&s);
    for op in &acked {
        match op {
            Acked::Created(name) => {
                let (status, f) = api
                    .send(Method::GET, &format!("/v1/functions/{name}"), None)
                    .await;
                assert_eq!(status, 200, "lost create of {name}: {f}");
            }
            Acked::Patched(name, step) => {
                let (_, f) = api
                    .send(Method::GET, &format!("/v1/functions/{name}"), None)
                    .await;
                assert_eq!(f["env"]["STEP"], step.as_str(), "lost patch of {name}");
            }
            Acked::Published(name, v) => {
                let (status, _) = api
                    .send(
                        Method::GET,
                        &format!("/v1/functions/{name}/versions/{v}"),
                        None,
                    )
                    .await;
                assert_eq!(status, 200, "lost version {v} of {name}");
            }
            Acked::Aliased(name, v) => {
                let (status, a) = api
                    .send(
                        Method::GET,
                        &format!("/v1/functions/{name}/aliases/live"),
                        None,
                    )
                    .await;
                assert_eq!(status, 200, "lost alias of {name}");
                assert_eq!(a["version"], *v);
            }
        }
    }
    // And what survived still runs.
    let (status, _, body) = api.call("/fn/w0-f0:live").await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "Hello from Wisp!\n")
    );
    s.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_code_is_reused_after_a_restart() {
    // Its own data directory and cache: this test inspects the cache.
    let mut server = Server::start(env!("CARGO_BIN_EXE_wisp"));
    let api = Api::new(&server);
    let created = api.deploy("hello", "hello", json!({})).await;
    let hex = created["code_digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let compiled: Vec<_> = std::fs::read_dir(server.data_dir.join("compiled"))
        .unwrap()
        .flatten()
        .map(|engine_dir| engine_dir.path().join(format!("{hex}.cwasm")))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(
        compiled.len(),
        1,
        "deploy must leave exactly one compiled artifact"
    );
    let before = std::fs::metadata(&compiled[0]).unwrap().modified().unwrap();

    // Remove the source artifact: if the restarted server needed to
    // recompile, it could not.
    let source = server.data_dir.join(format!("artifacts/sha256/{hex}.wasm"));
    assert!(source.exists(), "{}", source.display());
    server = tokio::task::spawn_blocking(move || {
        server.restart_after_kill9();
        server
    })
    .await
    .unwrap();
    std::fs::remove_file(&source).unwrap();
    let api = Api::new(&server);
    let (status, _, body) = api.call("/fn/hello").await;
    assert_eq!(status, 200, "{body}\n{}", server.log());
    assert_eq!(body, "Hello from Wisp!\n");
    let after = std::fs::metadata(&compiled[0]).unwrap().modified().unwrap();
    assert_eq!(before, after, "the compiled artifact was rewritten");
    let (_, stats) = api
        .send(Method::GET, "/v1/functions/hello/stats", None)
        .await;
    assert_eq!(stats["total"]["cold_starts"], 1, "{stats}");
}
