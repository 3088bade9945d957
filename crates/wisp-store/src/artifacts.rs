//! Content-addressed component storage in a local directory: each uploaded
//! component lives at `<root>/sha256/<hex>.wasm`, named by the SHA-256 of its
//! bytes.
//!
//! Files appear under their final name only once they are complete and on
//! disk: [`ArtifactDir::put`] writes a temporary file in the same directory,
//! fsyncs it, renames it into place and fsyncs the directory. A crash or a
//! kill -9 can leave a temporary file behind (never a partial artifact);
//! [`ArtifactDir::open`] sweeps those away at startup.
//!
//! Every method does blocking file I/O; async callers should run them in
//! `tokio::task::spawn_blocking`.
//!
//! ```
//! use wisp_core::Digest;
//! use wisp_store::artifacts::ArtifactDir;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let artifacts = ArtifactDir::open(dir.path()).unwrap();
//! let bytes = b"\0asm not really";
//! let digest = Digest::of(bytes);
//! let info = artifacts.put(&digest, bytes).unwrap();
//! assert_eq!(info.size, bytes.len() as u64);
//! assert_eq!(artifacts.read(&digest).unwrap(), bytes);
//! ```

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use wisp_core::{ArtifactInfo, ArtifactSource, Digest, Swept, sweep_digest_files};

/// Name prefix of in-progress writes; anything with it is swept at startup.
const TEMP_PREFIX: &str = ".tmp-";
/// Subdirectory for SHA-256 named artifacts.
const ALGORITHM_DIR: &str = "sha256";
/// File extension of stored components.
const EXTENSION: &str = "wasm";

/// A directory of components named by digest.
#[derive(Debug)]
pub struct ArtifactDir {
    root: PathBuf,
    dir: PathBuf,
    /// Makes temporary file names unique within this process.
    counter: AtomicU64,
}

impl ArtifactDir {
    /// Opens (creating if needed) the artifact directory rooted at `root`,
    /// and removes temporary files left by writes that never finished.
    pub fn open(root: impl AsRef<Path>) -> io::Result<Self> {
        let root = root.as_ref().to_path_buf();
        let dir = root.join(ALGORITHM_DIR);
        // Only the server's user may read or write components (0700).
        for d in [&root, &dir] {
            wisp_core::files::private_dir(d)?;
        }
        // Make the directory entries themselves durable.
        sync_dir(&root)?;
        let artifacts = ArtifactDir {
            root,
            dir,
            counter: AtomicU64::new(0),
        };
        let removed = artifacts.sweep_temp_files()?;
        if removed > 0 {
            tracing::info!(
                removed,
                dir = %artifacts.dir.display(),
                "removed unfinished artifact uploads"
            );
        }
        Ok(artifacts)
    }

    /// The directory this store is rooted at.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the artifact named `digest` lives (whether or not it exists).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}.{EXTENSION}", digest.hex()))
    }

    /// Removes temporary files of unfinished writes; returns how many.
    ///
    /// [`open`](Self::open) calls this. Calling it while another thread or
    /// process is writing to the same directory could remove that write's
    /// temporary file and make its `put` fail (never corrupt an artifact).
    pub fn sweep_temp_files(&self) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(TEMP_PREFIX) {
                match fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Stores `bytes` under `digest`, durably. Idempotent: storing the same
    /// bytes again leaves the existing file alone.
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] if `digest` is not the
    /// SHA-256 of `bytes`.
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> io::Result<ArtifactInfo> {
        let actual = Digest::of(bytes);
        if actual != *digest {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the bytes have digest {actual}, not {digest}"),
            ));
        }
        let size = bytes.len() as u64;
        let info = ArtifactInfo {
            digest: digest.clone(),
            size,
        };
        let path = self.path(digest);
        // Only complete files are ever renamed into place, so a file of the
        // right size under this name holds these bytes. Uploading them
        // again starts their grace period over.
        match self.touch(digest)? {
            Some(stored) if stored.size == size => return Ok(info),
            Some(_) => tracing::warn!(
                path = %path.display(),
                "artifact file has the wrong size; rewriting it"
            ),
            None => {}
        }

        let temp = self.dir.join(format!(
            "{TEMP_PREFIX}{}-{}-{}",
            digest.hex(),
            std::process::id(),
            self.counter.fetch_add(1, Ordering::Relaxed)
        ));
        let result = wisp_core::files::write_private_new(&temp, bytes)
            .and_then(|()| fs::rename(&temp, &path));
        if let Err(e) = result {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        sync_dir(&self.dir)?;
        Ok(info)
    }

    /// The size of the artifact named `digest`, or `None` if there is none.
    pub fn info(&self, digest: &Digest) -> io::Result<Option<ArtifactInfo>> {
        match fs::metadata(self.path(digest)) {
            Ok(meta) if meta.is_file() => Ok(Some(ArtifactInfo {
                digest: digest.clone(),
                size: meta.len(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Like [`info`](Self::info), and marks the artifact as just used, so
    /// that [`sweep_unreferenced`](Self::sweep_unreferenced) keeps it for
    /// another grace period: for callers about to refer to it.
    pub fn touch(&self, digest: &Digest) -> io::Result<Option<ArtifactInfo>> {
        let file = match OpenOptions::new().write(true).open(self.path(digest)) {
            Ok(file) => file,
            // Not there, or not a file (a directory cannot be opened to write).
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::IsADirectory
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Ok(None);
        }
        file.set_modified(SystemTime::now())?;
        Ok(Some(ArtifactInfo {
            digest: digest.clone(),
            size: meta.len(),
        }))
    }

    /// Removes every artifact that is not in `keep` and was neither
    /// uploaded nor [`touch`](Self::touch)ed within `grace`: the code of
    /// deleted functions and versions, and uploads nothing refers to.
    /// Files it cannot read the age of, and names that are not digests,
    /// are left alone. Answers what it removed and the digests of the
    /// artifacts left.
    pub fn sweep_unreferenced(
        &self,
        keep: &HashSet<Digest>,
        grace: Duration,
    ) -> io::Result<(Swept, HashSet<Digest>)> {
        let (swept, left) = sweep_digest_files(&self.dir, EXTENSION, keep, grace)?;
        if swept.files > 0 {
            sync_dir(&self.dir)?;
        }
        Ok((swept, left))
    }

    /// The bytes of the artifact named `digest` ([`io::ErrorKind::NotFound`]
    /// if there is none).
    pub fn read(&self, digest: &Digest) -> io::Result<Vec<u8>> {
        fs::read(self.path(digest)).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no artifact {digest} has been uploaded"),
                )
            } else {
                e
            }
        })
    }
}

impl ArtifactSource for ArtifactDir {
    fn read(&self, digest: &Digest) -> io::Result<Vec<u8>> {
        ArtifactDir::read(self, digest)
    }
}

/// Fsyncs a directory so that entries created or renamed in it are durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    // Directories cannot be opened as files on Windows; NTFS journals
    // renames itself.
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_files(dir: &ArtifactDir) -> Vec<String> {
        fs::read_dir(&dir.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(TEMP_PREFIX))
            .collect()
    }

    #[test]
    fn put_read_info_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ArtifactDir::open(tmp.path().join("artifacts")).unwrap();
        let bytes = b"component bytes".to_vec();
        let digest = Digest::of(&bytes);

        assert_eq!(dir.info(&digest).unwrap(), None);
        let err = dir.read(&digest).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);

        let info = dir.put(&digest, &bytes).unwrap();
        assert_eq!(info.digest, digest);
        assert_eq!(info.size, bytes.len() as u64);
        assert_eq!(dir.info(&digest).unwrap(), Some(info.clone()));
        assert_eq!(dir.read(&digest).unwrap(), bytes);
        assert_eq!(ArtifactSource::read(&dir, &digest).unwrap(), bytes);

        let expected = tmp
            .path()
            .join("artifacts/sha256")
            .join(format!("{}.wasm", digest.hex()));
        assert_eq!(dir.path(&digest), expected);
        assert_eq!(fs::read(expected).unwrap(), bytes);
        assert!(temp_files(&dir).is_empty());
    }

    #[test]
    fn put_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ArtifactDir::open(tmp.path()).unwrap();
        let bytes = vec![7u8; 10_000];
        let digest = Digest::of(&bytes);
        let first = dir.put(&digest, &bytes).unwrap();
        let second = dir.put(&digest, &bytes).unwrap();
        assert_eq!(first, second);
        assert_eq!(dir.read(&digest).unwrap(), bytes);
        assert_eq!(fs::read_dir(&dir.dir).unwrap().count(), 1);
    }

    #[test]
    fn put_rewrites_a_file_of_the_wrong_size() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ArtifactDir::open(tmp.path()).unwrap();
        let bytes = b"the real thing".to_vec();
        let digest = Digest::of(&bytes);
        fs::write(dir.path(&digest), b"trunc").unwrap();
        dir.put(&digest, &bytes).unwrap();
        assert_eq!(dir.read(&digest).unwrap(), bytes);
    }

    #[test]
    fn put_rejects_a_digest_mismatch() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ArtifactDir::open(tmp.path()).unwrap();
        let digest = Digest::of(b"one thing");
        let err = dir.put(&digest, b"another thing").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(dir.info(&digest).unwrap(), None);
        assert_eq!(fs::read_dir(&dir.dir).unwrap().count(), 0);
    }

    #[test]
    fn open_sweeps_stale_temp_files_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ArtifactDir::open(tmp.path()).unwrap();
        let bytes = b"keep me".to_vec();
        let digest = Digest::of(&bytes);
        dir.put(&digest, &bytes).unwrap();
        // As a write killed between create and rename would leave them.
        fs::write(dir.dir.join(format!("{TEMP_PREFIX}abc-1-0")), b"half").unwrap();
        fs::write(dir.dir.join(format!("{TEMP_PREFIX}def-2-5")), b"").unwrap();
        assert_eq!(temp_files(&dir).len(), 2);
        drop(dir);

        let dir = ArtifactDir::open(tmp.path()).unwrap();
        assert!(temp_files(&dir).is_empty());
        assert_eq!(dir.read(&digest).unwrap(), bytes);
        assert_eq!(dir.sweep_temp_files().unwrap(), 0);
    }

    #[test]
    fn concurrent_puts_of_the_same_artifact() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::sync::Arc::new(ArtifactDir::open(tmp.path()).unwrap());
        let bytes = vec![42u8; 256 * 1024];
        let digest = Digest::of(&bytes);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (dir, bytes, digest) = (dir.clone(), bytes.clone(), digest.clone());
                std::thread::spawn(move || dir.put(&digest, &bytes).unwrap())
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().size, bytes.len() as u64);
        }
        assert_eq!(dir.read(&digest).unwrap(), bytes);
        assert!(temp_files(&dir).is_empty());
    }

    /// Sets `path`'s modification time `secs` seconds into the past.
    fn age(path: &Path, secs: u64) {
        let then = SystemTime::now() - Duration::from_secs(secs);
        OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(then)
            .unwrap();
    }

    #[test]
    fn sweep_removes_only_old_unreferenced_artifacts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ArtifactDir::open(tmp.path()).unwrap();
        let put = |bytes: &[u8]| {
            let digest = Digest::of(bytes);
            dir.put(&digest, bytes).unwrap();
            digest
        };
        let kept = put(b"referenced");
        let orphan = put(b"orphan, old");
        let recent = put(b"orphan, just uploaded");
        let stray = dir.dir.join("notes.txt");
        fs::write(&stray, b"not an artifact").unwrap();
        for d in [&kept, &orphan] {
            age(&dir.path(d), 7200);
        }
        age(&stray, 7200);
        let keep = HashSet::from([kept.clone()]);

        let (swept, left) = dir
            .sweep_unreferenced(&keep, Duration::from_secs(3600))
            .unwrap();
        assert_eq!(left, HashSet::from([kept.clone(), recent.clone()]));
        assert_eq!(
            swept,
            Swept {
                files: 1,
                bytes: b"orphan, old".len() as u64
            }
        );
        assert_eq!(dir.info(&orphan).unwrap(), None);
        assert!(dir.info(&kept).unwrap().is_some(), "referenced code stays");
        assert!(dir.info(&recent).unwrap().is_some(), "within its grace");
        assert!(stray.exists(), "files not named by a digest are not ours");
        let (again, _) = dir
            .sweep_unreferenced(&keep, Duration::from_secs(3600))
            .unwrap();
        assert_eq!(again, Swept::default());
    }

    #[test]
    fn uploading_or_touching_again_restarts_the_grace_period() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ArtifactDir::open(tmp.path()).unwrap();
        let (a, b) = (b"first".as_slice(), b"second".as_slice());
        let (da, db) = (Digest::of(a), Digest::of(b));
        dir.put(&da, a).unwrap();
        dir.put(&db, b).unwrap();
        age(&dir.path(&da), 7200);
        age(&dir.path(&db), 7200);
        dir.put(&da, a).unwrap();
        assert_eq!(dir.touch(&db).unwrap().map(|i| i.size), Some(6));
        assert_eq!(dir.touch(&Digest::of(b"never uploaded")).unwrap(), None);
        let (swept, left) = dir
            .sweep_unreferenced(&HashSet::new(), Duration::from_secs(3600))
            .unwrap();
        assert_eq!(swept.files, 0);
        assert_eq!(left.len(), 2);
        assert_eq!(dir.read(&da).unwrap(), a);
        assert_eq!(dir.read(&db).unwrap(), b);
    }
}
