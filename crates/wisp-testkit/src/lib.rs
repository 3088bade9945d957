//! Test harness for Wisp's integration tests: builds the example guest
//! components from source once per test process, runs real
//! `wisp server` processes on ephemeral loopback ports, and says where the
//! brokers are ([`brokers`]).
//!
//! ```no_run
//! let wasm = wisp_testkit::example("hello");
//! let server = wisp_testkit::Server::start("target/debug/wisp");
//! println!("{} serves {}", server.url, wasm.display());
//! ```

pub mod brokers;
pub mod python;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root: the nearest directory above the running test's
/// package that holds `examples/wisp.toml`. Read at run time (cargo sets
/// `CARGO_MANIFEST_DIR` for every test it runs), so that a build cached
/// from a checkout elsewhere, and reused by cargo, still finds this one.
pub fn repo_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest
        .ancestors()
        .find(|dir| dir.join("examples/wisp.toml").is_file())
        .expect("the test runs inside a Wisp checkout")
        .to_path_buf()
}

/// The examples workspace.
pub fn examples_dir() -> PathBuf {
    repo_root().join("examples")
}

/// Builds every example (the README's documented command) once per
/// process and returns the directory holding the `.wasm` files.
pub fn build_examples() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = examples_dir();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release"])
            .current_dir(&dir)
            // The examples have their own workspace and target directory;
            // never inherit the host build's.
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("running cargo to build the examples");
        assert!(status.success(), "building examples failed: {status}");
        dir.join("target/wasm32-wasip2/release")
    })
}

/// Path of the built example component `name`.
pub fn example(name: &str) -> PathBuf {
    let path = build_examples().join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "example {name} was not built at {}",
        path.display()
    );
    path
}

/// Bytes of the built example component `name`.
pub fn example_bytes(name: &str) -> Vec<u8> {
    std::fs::read(example(name)).expect("reading example")
}

/// A compiled-code cache shared by every test server (under the target
/// directory), so each example is compiled once rather than once per test.
/// Entries are keyed by code digest and engine build, so sharing is safe.
pub fn shared_cache_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let dir = target.join("wisp-test-cache");
    // Private, as the server requires of a cache directory, whatever the umask.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&dir)
        .expect("creating the shared cache dir");
    dir
}

/// A running `wisp server` child process. Killed on drop.
pub struct Server {
    child: Option<Child>,
    bin: PathBuf,
    /// Base URL, such as `http://127.0.0.1:39201`.
    pub url: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where its stderr goes: `server.log` in the data directory, or beside
    /// it when the server was started to create the directory.
    log_path: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    extra: Vec<String>,
}

impl Server {
    /// Starts a server on a fresh data directory.
    pub fn start(bin: impl AsRef<Path>) -> Server {
        Self::start_with(bin, &[])
    }

    /// Starts a server on a fresh data directory that shares the compiled
    /// code cache of the test run ([`shared_cache_dir`]).
    pub fn start_shared(bin: impl AsRef<Path>) -> Server {
        Self::start_shared_with(bin, &[])
    }

    /// [`Server::start_shared`] with extra flags.
    pub fn start_shared_with(bin: impl AsRef<Path>, extra: &[&str]) -> Server {
        let cache = shared_cache_dir();
        let mut args = vec!["--cache-dir", cache.to_str().expect("UTF-8 path")];
        args.extend_from_slice(extra);
        Self::start_with(bin, &args)
    }

    /// The value of one Prometheus sample from `/metrics`, such as
    /// `wisp_loaded_components` or `faas_invocations_total{function="f",version="latest"}`
    /// (labels in the order the server prints them); `None` if absent.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let text = reqwest::get(self.at("/metrics"))
            .await
            .expect("scraping /metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok())?
        })
    }

    /// Starts a server on a fresh data directory with extra flags.
    pub fn start_with(bin: impl AsRef<Path>, extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().to_path_buf();
        let mut s = Self::spawn(bin.as_ref(), &data, extra, data.join("server.log"));
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on `data_dir`: an existing one (for restarts), or
    /// one the server is to create (its log then goes beside it, to
    /// `<data_dir>.log`).
    pub fn start_in(bin: impl AsRef<Path>, data_dir: &Path, extra: &[&str]) -> Server {
        let log_path = if data_dir.exists() {
            data_dir.join("server.log")
        } else {
            let mut beside = data_dir.as_os_str().to_owned();
            beside.push(".log");
            PathBuf::from(beside)
        };
        Self::spawn(bin.as_ref(), data_dir, extra, log_path)
    }

    fn spawn(bin: &Path, data_dir: &Path, extra: &[&str], log_path: PathBuf) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("server log file");
        let mut cmd = Command::new(bin);
        cmd.arg("server").arg("--data-dir").arg(data_dir);
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning wisp server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(url) = line.strip_prefix("wisp listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "wisp server did not start; its log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
        };
        Server {
            child: Some(child),
            bin: bin.to_path_buf(),
            url,
            data_dir: data_dir.to_path_buf(),
            log_path,
            _tmp: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Runs `wisp server` on `data_dir` with extra flags, expecting it to
    /// refuse to start: answers its exit code and output once it has
    /// exited (it is killed, and the test fails, if it starts listening or
    /// is still running after a minute).
    pub fn start_failing(bin: impl AsRef<Path>, data_dir: &Path, extra: &[&str]) -> Output {
        let mut child = Command::new(bin.as_ref())
            .arg("server")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning wisp server");
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("waiting for wisp server").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "wisp server did not exit within a minute; it was expected to refuse to start"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("its output");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            !stdout.contains("wisp listening on"),
            "the server started: {stdout}"
        );
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal to the server process (by its pid).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills this process (SIGKILL) and starts a new one on the same data
    /// directory and flags; the temp directory is kept alive.
    pub fn restart_after_kill9(&mut self) {
        self.kill9();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let mut next = Self::spawn(&self.bin, &self.data_dir, &extra, self.log_path.clone());
        next._tmp = self._tmp.take();
        *self = next;
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A `wisp` CLI command aimed at this server, isolated from the user's config.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("WISP_SERVER", &self.url)
            .env("WISP_CONFIG", self.data_dir.join("no-such-config.toml"))
            .env_remove("WISP_TOKEN");
        c
    }

    /// The server's token, from the `token` file of its data directory.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("token"))
            .expect("reading the server's token")
            .trim()
            .to_string()
    }

    /// Full URL of `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Result of running a CLI command.
#[derive(Debug)]
pub struct Output {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs a command to completion and captures its output.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("running command");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A small async HTTP helper around a server, for the REST API.
pub struct Api {
    /// The HTTP client.
    pub http: reqwest::Client,
    /// Base URL.
    pub base: String,
}

impl Api {
    /// A client for `server`.
    pub fn new(server: &Server) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: server.url.clone(),
        }
    }

    /// A client for `server` that sends the server's token as
    /// `Authorization: Bearer` on every request, for servers started with
    /// `--require-token`.
    pub fn with_token(server: &Server) -> Api {
        let mut value =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", server.token()))
                .expect("the token is a header value");
        value.set_sensitive(true);
        let headers =
            reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, value)]);
        Api {
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .expect("an HTTP client"),
            base: server.url.clone(),
        }
    }

    /// Uploads `bytes` and returns the digest.
    pub async fn upload(&self, bytes: Vec<u8>) -> String {
        let res = self
            .http
            .post(format!("{}/v1/artifacts", self.base))
            .header("content-type", "application/wasm")
            .body(bytes)
            .send()
            .await
            .expect("upload");
        let status = res.status();
        let body: serde_json::Value = res.json().await.expect("upload json");
        assert!(status.is_success(), "upload failed: {status} {body}");
        body["digest"].as_str().expect("digest").to_string()
    }

    /// Uploads example `example` and creates (or replaces) function `name`
    /// running it with `config` (extra JSON fields).
    pub async fn deploy(
        &self,
        name: &str,
        example: &str,
        config: serde_json::Value,
    ) -> serde_json::Value {
        let digest = self.upload(example_bytes(example)).await;
        let mut body = serde_json::json!({ "code_digest": digest });
        if let serde_json::Value::Object(extra) = config {
            for (k, v) in extra {
                body[k] = v;
            }
        }
        let (status, json) = self
            .send(
                reqwest::Method::PUT,
                &format!("/v1/functions/{name}"),
                Some(body),
            )
            .await;
        assert!(status.is_success(), "deploy {name} failed: {status} {json}");
        json
    }

    /// Sends a JSON request and returns the status and JSON body (Null if empty).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.expect("body");
        let json = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        (status, json)
    }

    /// Polls `GET /v1/invocations/{id}` until the invocation is final
    /// (succeeded, failed or dead) and returns it; panics after `within`.
    pub async fn wait_invocation(&self, id: &str, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, inv) = self
                .send(reqwest::Method::GET, &format!("/v1/invocations/{id}"), None)
                .await;
            assert_eq!(status, 200, "{inv}");
            if matches!(
                inv["status"].as_str(),
                Some("succeeded" | "failed" | "dead")
            ) {
                return inv;
            }
            assert!(
                Instant::now() < deadline,
                "invocation never finished: {inv}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Posts `events` to a function in CloudEvents batch mode, expects 202,
    /// and returns the invocation ids in event order.
    pub async fn post_event_batch(
        &self,
        function: &str,
        events: Vec<serde_json::Value>,
    ) -> Vec<String> {
        let res = self
            .http
            .post(format!("{}/v1/functions/{function}/events", self.base))
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::Value::Array(events).to_string())
            .send()
            .await
            .expect("posting events");
        assert_eq!(res.status(), 202);
        let v: serde_json::Value = res.json().await.expect("events answer");
        v["accepted"]
            .as_array()
            .expect("accepted list")
            .iter()
            .map(|a| a["id"].as_str().expect("id").to_string())
            .collect()
    }

    /// `GET /v1/triggers/{name}`, expecting 200.
    pub async fn trigger(&self, name: &str) -> serde_json::Value {
        let (status, t) = self
            .send(reqwest::Method::GET, &format!("/v1/triggers/{name}"), None)
            .await;
        assert_eq!(status, 200, "{t}");
        t
    }

    /// Polls trigger `name` until `check` holds and returns it; panics
    /// after `within` saying it never became `what`.
    pub async fn wait_trigger(
        &self,
        name: &str,
        within: Duration,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let t = self.trigger(name).await;
            if check(&t) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "trigger `{name}` never became {what} within {within:?}: {t}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GETs `path` on the data plane and returns status, headers and body.
    pub async fn call(
        &self,
        path: &str,
    ) -> (reqwest::StatusCode, reqwest::header::HeaderMap, String) {
        let res = self
            .http
            .get(format!("{}{}", self.base, path))
            .send()
            .await
            .expect("call");
        let status = res.status();
        let headers = res.headers().clone();
        (status, headers, res.text().await.expect("text"))
    }
}

/// A `kB` field of `/proc/<pid>/status` (such as `VmRSS` or `VmHWM`), in
/// MiB; `None` where the process or the field is not there.
pub fn proc_status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let v = line.strip_prefix(field)?.strip_prefix(':')?;
        let kb: f64 = v.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb / 1024.0)
    })
}

/// A free TCP port on loopback (bound, then released), for tests that run
/// a broker of their own on a port they must know in advance.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral loopback port")
        .port()
}

/// `prefix`, `-` and 16 random hex digits: a name that no other test or
/// test run uses, for subjects, streams, queues and keys on shared brokers.
pub fn unique(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{prefix}-{:016x}", h.finish())
}

/// How often [`eventually`] checks.
const CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// Awaits `check` every 20 ms until it answers true or `within` has passed
/// (it is checked once more then); whether it answered true.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    within: std::time::Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// [`eventually`] for a check that needs no awaiting.
pub async fn wait_until(within: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    eventually(within, || std::future::ready(done())).await
}
