//! Python packages the tests drive: the official CloudEvents SDK for Python
//! (PyPI `cloudevents`), for interoperability tests, and Schemathesis, for
//! the API contract test. Each is installed with pip when missing (into a
//! private directory under the shared test cache when the system Python
//! refuses global installs); if that fails, the test fails saying why.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// A package from PyPI that a test imports.
pub struct Package {
    /// What the tests import.
    pub module: &'static str,
    /// The versions the tests accept, as pip reads them.
    pub pip_spec: &'static str,
    /// What the tests need it for, for the message when it cannot be had.
    pub purpose: &'static str,
    /// Directory under the shared test cache for a private install.
    dir: &'static str,
    /// The extra `PYTHONPATH` entry, once the package imports.
    installed: OnceLock<Option<PathBuf>>,
}

/// The CloudEvents SDK for Python.
pub static CLOUDEVENTS: Package = Package {
    module: "cloudevents",
    pip_spec: "cloudevents>=1.10",
    purpose: "the CloudEvents interoperability tests",
    dir: "python-cloudevents",
    installed: OnceLock::new(),
};

/// Schemathesis, which tests the API against its OpenAPI document.
pub static SCHEMATHESIS: Package = Package {
    module: "schemathesis",
    pip_spec: "schemathesis>=4,<5",
    purpose: "the API contract test",
    dir: "python-schemathesis",
    installed: OnceLock::new(),
};

impl Package {
    fn can_import(&self, pythonpath: Option<&Path>) -> bool {
        let mut command = Command::new("python3");
        command.args(["-c", &format!("import {}", self.module)]);
        if let Some(path) = pythonpath {
            command.env("PYTHONPATH", path);
        }
        match command.output() {
            Ok(output) => output.status.success(),
            Err(e) => panic!(
                "{} need `python3`, which could not be run: {e}",
                self.purpose
            ),
        }
    }

    fn pip(&self, extra: &[&str]) -> std::process::Output {
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(extra)
            .arg(self.pip_spec)
            .output()
            .expect("python3 runs")
    }

    fn panic_install(&self, stderr: &str) -> ! {
        panic!(
            "`{}` is not installed and `python3 -m pip install '{}'` failed, so {} cannot run \
             (is PyPI reachable?). pip said:\n{stderr}",
            self.module, self.pip_spec, self.purpose
        )
    }

    fn install(&self) -> Option<PathBuf> {
        if self.can_import(None) {
            return None;
        }
        let output = self.pip(&[]);
        if output.status.success() && self.can_import(None) {
            return None;
        }
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        // A distribution-managed Python refuses global installs (PEP 668):
        // install into a directory of our own instead.
        if stderr.contains("externally-managed") {
            let dir = crate::shared_cache_dir().join(self.dir);
            let target = dir.to_str().expect("UTF-8 path");
            let output = self.pip(&["--upgrade", "--target", target]);
            if output.status.success() && self.can_import(Some(&dir)) {
                return Some(dir);
            }
            self.panic_install(&String::from_utf8_lossy(&output.stderr));
        }
        self.panic_install(&stderr)
    }

    /// Makes sure the package imports (installing it once per test process
    /// if needed); returns an extra `PYTHONPATH` entry if it had to be
    /// installed into a private directory.
    pub fn path(&self) -> Option<PathBuf> {
        self.installed.get_or_init(|| self.install()).clone()
    }

    /// `python3` with the package importable.
    pub fn python(&self) -> Command {
        let mut command = Command::new("python3");
        if let Some(path) = self.path() {
            command.env("PYTHONPATH", path);
        }
        command
    }
}

/// Runs `python3 SCRIPT ARG` with the SDK importable, feeding `input` as
/// JSON on stdin, and returns the JSON it prints; panics with its stderr
/// if it fails.
pub fn run_json(script: &Path, arg: &str, input: &serde_json::Value) -> serde_json::Value {
    let mut command = CLOUDEVENTS.python();
    command
        .arg(script)
        .arg(arg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
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
