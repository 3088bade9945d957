//! The on-disk cache of compiled components, keyed by code digest and by a
//! hash of the engine's build and settings, so that a restart never
//! recompiles and an upgrade never loads incompatible code.

use crate::RuntimeError;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;
use wisp_core::Digest;

pub(crate) struct CompiledCache {
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
        Ok(CompiledCache { dir })
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
        // SAFETY: the file was written by `store` below from
        // `Component::serialize` of this same engine configuration (the
        // directory name carries the compatibility hash), is only ever
        // replaced by an atomic rename, and wasmtime checks its header
        // against the engine before using it.
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
        let path = self.path(digest);
        if path.exists() {
            return Ok(());
        }
        let bytes = component
            .serialize()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        let tmp = self
            .dir
            .join(format!(".{}.{}.tmp", digest.hex(), rand_suffix()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)
    }
}

fn rand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}
