//! Files only the server's own user may read or write: the data directory,
//! the compiled-code cache and everything the server puts in them (Unix
//! permissions; Wisp runs on Unix).
//!
//! Directories the server creates are mode 0700 and files 0600, whatever
//! the umask; the ones it created before with looser modes are tightened
//! when it opens them. A directory it is given (the data directory, a
//! `--cache-dir`) is refused while its group or others may write to it,
//! since whoever can write there could replace what the server trusts
//! (its token, its database, the native code it runs).
//!
//! ```
//! # fn demo() -> Result<(), wisp_core::files::FilesError> {
//! let dir = tempfile::tempdir().unwrap();
//! let data = dir.path().join("data");
//! wisp_core::files::check_private_dir(&data)?; // created 0700
//! let secret = wisp_core::files::load_or_create_secret(&data.join("token"))?;
//! assert_eq!(secret.len(), 64);
//! # Ok(()) }
//! ```

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every directory the server creates.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of every file the server creates.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Why a directory or file could not be made private.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A directory the server was given may be written by others.
    #[error(
        "{} is writable by {who} (mode {mode:03o}): whoever can write there could replace \
         the server's token, database or the compiled code it runs. Run `chmod 700 {}` \
         (or `chmod go-w`) and start the server again",
        path.display(),
        path.display()
    )]
    WritableByOthers {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// "its group", "others" or "its group and others".
        who: &'static str,
    },
    /// The file system refused.
    #[error("cannot use {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Options that create a file with mode 0600 (add `create`, `create_new`
/// or `truncate` as needed; the mode applies to a file they create).
pub fn private_options() -> OpenOptions {
    let mut opts = OpenOptions::new();
    opts.mode(PRIVATE_FILE_MODE);
    opts
}

/// Creates `path` (which must not exist) with mode 0600, writes `bytes`
/// and fsyncs it.
pub fn write_private_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = private_options().write(true).create_new(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The permission bits of `path`, or `None` if it does not exist.
fn mode_of(path: &Path) -> io::Result<Option<u32>> {
    match fs::metadata(path) {
        Ok(meta) => Ok(Some(meta.permissions().mode() & 0o7777)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Takes from `path` (if it exists) every permission bit outside `mode`.
pub fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    if let Some(now) = mode_of(path)?
        && now & !mode != 0
    {
        fs::set_permissions(path, fs::Permissions::from_mode(now & mode))?;
    }
    Ok(())
}

/// Creates `dir` and any missing parents with mode 0700.
fn create_dirs(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// A directory of the server's own (inside one it was given): created
/// 0700, or tightened to 0700 if it exists.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    create_dirs(dir)?;
    tighten(dir, PRIVATE_DIR_MODE)
}

/// A directory the server was given (the data directory, a cache
/// directory): created 0700 if missing; refused if it exists and its group
/// or others may write to it. An existing directory others may only read
/// is left as it is (what the server puts in it is private anyway).
pub fn check_private_dir(dir: &Path) -> Result<(), FilesError> {
    let io_err = |source| FilesError::Io {
        path: dir.to_path_buf(),
        source,
    };
    create_dirs(dir).map_err(io_err)?;
    let mode = mode_of(dir).map_err(io_err)?.unwrap_or(0);
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (false, false) => return Ok(()),
        (true, false) => "its group",
        (false, true) => "others",
        (true, true) => "its group and others",
    };
    Err(FilesError::WritableByOthers {
        path: dir.to_path_buf(),
        mode,
        who,
    })
}

/// A file of the server's own: created empty with mode 0600 if missing,
/// tightened to 0600 if it exists.
pub fn private_file(path: &Path) -> io::Result<()> {
    match private_options().write(true).create_new(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => tighten(path, PRIVATE_FILE_MODE),
        Err(e) => Err(e),
    }
}

/// Readies the files of the SQLite database at `path` before it is opened:
/// the database is created 0600 (SQLite gives its `-wal`, `-shm` and
/// `-journal` files the database file's mode), and those left by an
/// earlier run with looser modes are tightened.
pub fn private_sqlite(path: &Path) -> io::Result<()> {
    private_file(path)?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        tighten(Path::new(&side), PRIVATE_FILE_MODE)?;
    }
    Ok(())
}

/// A new temporary file name next to `path`, unique across processes.
fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(
        ".{name}.{}-{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ))
}

/// Writes `bytes` to `path` with mode 0600, replacing it atomically
/// (temporary file, fsync, rename).
pub fn replace_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_beside(path);
    write_private_new(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
}

/// The trimmed text of `path` (`Some("")` if blank, `None` if missing);
/// a file with a looser mode than 0600 is tightened.
fn read_secret(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(t) => {
            tighten(path, PRIVATE_FILE_MODE)?;
            Ok(Some(t.trim().to_string()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The secret in the file `path` (its trimmed text), or, when there is
/// none, 256 random bits written there as 64 hex digits, mode 0600. Of
/// several processes creating it at once, one wins and every one answers
/// its secret (the file appears complete, by a link that fails if it
/// exists). A file left with a looser mode is tightened.
pub fn load_or_create_secret(path: &Path) -> Result<String, FilesError> {
    let io_err = |source| FilesError::Io {
        path: path.to_path_buf(),
        source,
    };
    match read_secret(path).map_err(io_err)? {
        Some(secret) if !secret.is_empty() => return Ok(secret),
        // A blank file is no secret: it is replaced.
        Some(_) => fs::remove_file(path).map_err(io_err)?,
        None => {}
    }
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let tmp = temp_beside(path);
    let linked =
        write_private_new(&tmp, secret.as_bytes()).and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(secret),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_secret(path)
            .map_err(io_err)?
            .filter(|secret| !secret.is_empty())
            .ok_or_else(|| io_err(io::Error::other("another process left it blank"))),
        Err(e) => Err(io_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn directories_are_created_private_and_writable_ones_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("a/data");
        check_private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        chmod(&data, 0o755);
        check_private_dir(&data).expect("readable by others is allowed");
        for (m, who) in [
            (0o770, "its group"),
            (0o707, "others"),
            (0o777, "its group and others"),
        ] {
            chmod(&data, m);
            let e = check_private_dir(&data).unwrap_err().to_string();
            assert!(e.contains(&format!("writable by {who}")), "{e}");
            assert!(e.contains(&format!("chmod 700 {}", data.display())), "{e}");
        }
        let own = data.join("artifacts");
        fs::create_dir(&own).unwrap();
        chmod(&own, 0o775);
        private_dir(&own).unwrap();
        assert_eq!(
            mode(&own),
            0o700,
            "the server's own directories are tightened"
        );
    }

    #[test]
    fn files_are_created_private_and_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("wisp.db");
        let wal = tmp.path().join("wisp.db-wal");
        fs::write(&wal, b"").unwrap();
        chmod(&wal, 0o644);
        private_sqlite(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&wal), 0o600);

        let token = tmp.path().join("token");
        let first = load_or_create_secret(&token).unwrap();
        assert_eq!(mode(&token), 0o600);
        assert_eq!(first.len(), 64);
        chmod(&token, 0o644);
        assert_eq!(load_or_create_secret(&token).unwrap(), first);
        assert_eq!(mode(&token), 0o600);
    }

    #[test]
    fn processes_creating_a_secret_at_once_agree_on_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("key");
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || load_or_create_secret(&path).unwrap())
            })
            .collect();
        let secrets: std::collections::HashSet<String> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(secrets.len(), 1, "{secrets:?}");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            *secrets.iter().next().unwrap()
        );
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            1,
            "no temporary file is left"
        );
    }
}
