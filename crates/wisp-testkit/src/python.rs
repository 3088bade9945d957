//! The official CloudEvents SDK for Python (PyPI `cloudevents`), for
//! interoperability tests: installed with pip when missing (into a private
//! directory under the shared test cache when the system Python refuses
//! global installs), then driven through a helper script that speaks JSON
//! on stdin and stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The SDK versions the tests accept.
pub const PIP_SPEC: &str = "cloudevents>=1.10";

fn can_import(pythonpath: Option<&Path>) -> bool {
    let mut command = Command::new("python3");
    command.args(["-c", "import cloudevents"]);
    if let Some(path) = pythonpath {
        command.env("PYTHONPATH", path);
    }
    match command.output() {
        Ok(output) => output.status.success(),
        Err(e) => panic!(
            "the CloudEvents interoperability tests need `python3`, which could not be run: {e}"
        ),
    }
}

fn pip(extra: &[&str]) -> std::process::Output {
    Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(extra)
        .arg(PIP_SPEC)
        .output()
        .expect("python3 runs")
}

fn panic_install(stderr: &str) -> ! {
    panic!(
        "the CloudEvents SDK for Python is not installed and `python3 -m pip install '{PIP_SPEC}'` \
         failed, so the interoperability test cannot run (is PyPI reachable?). pip said:\n{stderr}"
    )
}

fn install() -> Option<PathBuf> {
    if can_import(None) {
        return None;
    }
    let output = pip(&[]);
    if output.status.success() && can_import(None) {
        return None;
    }
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // A distribution-managed Python refuses global installs (PEP 668):
    // install into a directory of our own instead.
    if stderr.contains("externally-managed") {
        let dir = crate::shared_cache_dir().join("python-cloudevents");
        let target = dir.to_str().expect("UTF-8 path");
        let output = pip(&["--upgrade", "--target", target]);
        if output.status.success() && can_import(Some(&dir)) {
            return Some(dir);
        }
        panic_install(&String::from_utf8_lossy(&output.stderr));
    }
    panic_install(&stderr)
}

/// Makes sure `import cloudevents` works (installing the SDK once per test
/// process if needed); returns an extra `PYTHONPATH` entry if the SDK had
/// to be installed into a private directory.
pub fn sdk_path() -> Option<PathBuf> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(install).clone()
}

/// Runs `python3 SCRIPT ARG` with the SDK importable, feeding `input` as
/// JSON on stdin, and returns the JSON it prints; panics with its stderr
/// if it fails.
pub fn run_json(script: &Path, arg: &str, input: &serde_json::Value) -> serde_json::Value {
    let mut command = Command::new("python3");
    command
        .arg(script)
        .arg(arg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(path) = sdk_path() {
        command.env("PYTHONPATH", path);
    }
    let mut child = command.spawn().expect("python3 starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("writing to the Python helper");
    let output = child
        .wait_with_output()
        .expect("the Python helper finishes");
    assert!(
        output.status.success(),
        "{} {arg} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the Python helper prints JSON")
}
