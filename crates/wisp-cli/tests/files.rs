//! Files on disk of a real server process: the modes of the data directory
//! and what is in it, the refusal of a data directory others may write to,
//! and compiled code that was changed on disk being compiled again rather
//! than run.

use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use wisp_testkit::{Api, Server};

const BIN: &str = env!("CARGO_BIN_EXE_wisp");

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

/// Every file and directory under `dir`, depth first.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk(&path));
        }
        found.push(path);
    }
    found
}

/// The compiled code of the only component in `data_dir`'s own cache, and
/// its tag.
fn compiled_files(data_dir: &Path) -> (PathBuf, PathBuf) {
    let engine = std::fs::read_dir(data_dir.join("compiled"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("an engine directory");
    let code = walk(&engine)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("compiled code");
    let tag = code.with_extension("tag");
    (code, tag)
}

/// Flips one bit in the middle of `path`; answers the changed bytes.
fn flip_a_bit(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(path, &bytes).unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_everything_the_server_puts_in_it_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start_in(BIN, &data, &[]);
    let api = Api::new(&server);
    api.deploy("hello", "hello", json!({})).await;
    let (status, _, body) = api.call("/fn/hello").await;
    assert_eq!(status, 200, "{body}");

    let everything = walk(&data);
    for path in &everything {
        let expected = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(
            mode(path),
            expected,
            "{} is {:03o}",
            path.display(),
            mode(path)
        );
    }
    assert_eq!(mode(&data), 0o700, "the data directory is created 0700");
    let names: Vec<String> = everything
        .iter()
        .map(|p| p.strip_prefix(&data).unwrap().display().to_string())
        .collect();
    for expected in [
        "token",
        "address",
        "wisp.db",
        "wisp.db-wal",
        "queue.db",
        "artifacts/sha256",
        "compiled/key",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    for extension in [".wasm", ".cwasm", ".tag"] {
        assert!(
            names.iter().any(|n| n.ends_with(extension)),
            "a {extension} file in {names:?}"
        );
    }
}

#[test]
fn a_data_directory_others_may_write_to_is_refused() {
    for (bits, who) in [(0o770, "its group"), (0o707, "others")] {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(bits)).unwrap();
        let out = Server::start_failing(BIN, tmp.path(), &[]);
        assert_ne!(out.code, 0, "{out:?}");
        assert!(
            out.stderr.contains(&format!("is writable by {who}")),
            "{}",
            out.stderr
        );
        assert!(
            out.stderr
                .contains(&format!("chmod 700 {}", tmp.path().display())),
            "the message says how to fix it: {}",
            out.stderr
        );
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "nothing is written to it"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_code_changed_on_disk_is_compiled_again_not_run() {
    // Its own cache, not the test run's shared one: this test changes it.
    let mut server = Server::start(BIN);
    let api = Api::new(&server);
    api.deploy("hello", "hello", json!({})).await;
    let (code, tag) = compiled_files(&server.data_dir);

    for (round, changed) in [&code, &tag].into_iter().enumerate() {
        server.kill9();
        let tampered = flip_a_bit(changed);
        server.restart_after_kill9();
        let api = Api::new(&server);
        let (status, _, body) = api.call("/fn/hello").await;
        assert_eq!(status, 200, "{body}\n{}", server.log());
        assert_ne!(
            std::fs::read(changed).unwrap(),
            tampered,
            "{} was replaced by a new compile; log:\n{}",
            changed.display(),
            server.log()
        );
        let warnings = server
            .log()
            .matches("its authentication tag does not match it; compiling it again")
            .count();
        assert_eq!(
            warnings,
            round + 1,
            "a warning is logged:\n{}",
            server.log()
        );
    }
}
