//! The on-disk cache of compiled components, keyed by code digest and by a
//! hash of the engine's build and settings, so that a restart never
//! recompiles and an upgrade never loads incompatible code.

use crate::RuntimeError;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasmtime::Engine;
use wasmtime::component::Component;
use wisp_core::{Digest, Swept, sweep_digest_files};

pub(crate) struct CompiledCache {
    root: PathBuf,
    dir: PathBuf,
}

impl CompiledCache {
    pub(crate) fn open(root: &Path, engine: &Engine) -> Result<Self, RuntimeError> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let dir = root.join(format!("engine-{:016x}", hasher.finish()));
        std::fs::create_dir_all(&dir).map_err(|source| RuntimeError::Cache {
            path: dir.clone(),
            source,
        })?;
        remove_stale_temp_files(&dir, STALE_TEMP_AGE);
        Ok(CompiledCache {
            root: root.to_path_buf(),
            dir,
        })
    }

    /// Removes compiled code of digests not in `keep`, older than `grace`,
    /// and the directories of other engine builds (an earlier Wisp's) left
    /// untouched for longer than `grace`. Whatever it removes is compiled
    /// again from its artifact if it is ever needed.
    pub(crate) fn sweep(&self, keep: &HashSet<Digest>, grace: Duration) -> std::io::Result<Swept> {
        let (mut swept, _) = sweep_digest_files(&self.dir, "cwasm", keep, grace)?;
        for entry in std::fs::read_dir(&self.root)?.flatten() {
            let path = entry.path();
            let other_engine = path != self.dir
                && entry.file_name().to_string_lossy().starts_with("engine-")
                && entry.file_type().is_ok_and(|t| t.is_dir());
            if other_engine && older_than(&entry, grace) {
                let before = dir_size(&path);
                if std::fs::remove_dir_all(&path).is_ok() {
                    tracing::info!(path = %path.display(), "removed an earlier engine's compiled code");
                    swept.files += before.0;
                    swept.bytes += before.1;
                }
            }
        }
        Ok(swept)
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}.cwasm", digest.hex()))
    }

    /// The cached compiled component, if present and loadable.
    pub(crate) fn load(&self, engine: &Engine, digest: &Digest) -> Option<Component> {
        let path = self.path(digest);
        if !path.exists() {
            return None;
        }
        // SAFETY: the file was written by Wisp alone: by `store` below from
        // `Component::serialize` of this engine, or by a compiler child's
        // engine of the same compile settings (`install`); the directory
        // name carries this engine's compatibility hash, the file is only
        // ever replaced by an atomic rename, and wasmtime checks its
        // header against the engine and the host before using it.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding unusable compiled component");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Writes the compiled form atomically (temp file, fsync, rename).
    pub(crate) fn store(&self, digest: &Digest, component: &Component) -> std::io::Result<()> {
        if self.path(digest).exists() {
            return Ok(());
        }
        let bytes = component
            .serialize()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        let tmp = self.temp_file(digest);
        crate::compile::write_synced(tmp.path(), &bytes)?;
        self.install(tmp, digest)
    }

    /// A new temporary file name in the cache for `digest`'s compiled
    /// form, removed when dropped unless [`CompiledCache::install`]ed.
    pub(crate) fn temp_file(&self, digest: &Digest) -> TempFile {
        TempFile(
            self.dir
                .join(format!(".{}.{}.tmp", digest.hex(), rand_suffix())),
        )
    }

    /// Moves a written (and synced) temporary file into place, atomically.
    pub(crate) fn install(&self, tmp: TempFile, digest: &Digest) -> std::io::Result<()> {
        std::fs::rename(tmp.path(), self.path(digest))
    }
}

/// Whether `entry` was last modified more than `age` ago (not when its
/// time cannot be read).
fn older_than(entry: &std::fs::DirEntry, age: Duration) -> bool {
    entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|elapsed| elapsed > age)
}

/// Files and bytes directly in `dir`.
fn dir_size(dir: &Path) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
}

/// Age past which a temporary file in the cache is an interrupted write
/// (a server that crashed mid-compile): twice the longest compile allowed.
/// Younger ones may belong to another server sharing the directory.
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(2 * 3600);

/// Removes the temporary files in `dir` older than `age`.
fn remove_stale_temp_files(dir: &Path, age: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with('.') && name.ends_with(".tmp")) {
            continue;
        }
        if older_than(&entry, age) && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(path = %entry.path().display(), "removed an interrupted compile's file");
        }
    }
}

/// A temporary file in the cache directory, removed when dropped (after an
/// install there is nothing left to remove).
pub(crate) struct TempFile(PathBuf);

impl TempFile {
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}-{nanos}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stale_temporary_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, age_secs: u64| {
            let path = dir.path().join(name);
            let f = std::fs::File::create(&path).unwrap();
            let then = std::time::SystemTime::now() - std::time::Duration::from_secs(age_secs);
            f.set_modified(then).unwrap();
            path
        };
        let stale = write(".abc.1-2-3.tmp", 3 * 3600);
        let fresh = write(".abc.4-5-6.tmp", 60);
        let compiled = write("abc.cwasm", 3 * 3600);
        remove_stale_temp_files(dir.path(), STALE_TEMP_AGE);
        assert!(
            !stale.exists(),
            "an interrupted write older than the limit is removed"
        );
        assert!(fresh.exists(), "a write that may be in progress is kept");
        assert!(compiled.exists(), "compiled code is never removed");
    }
}
