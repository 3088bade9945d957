//! The on-disk cache of compiled components, keyed by code digest and by a
//! hash of the engine's build and settings, so that a restart never
//! recompiles and an upgrade never loads incompatible code.
//!
//! Compiled code is native code the server maps and runs, so each file is
//! authenticated before it is loaded: beside `<hex>.cwasm` lies
//! `<hex>.tag`, an HMAC-SHA256 of the file's bytes (and of its digest and
//! engine directory, so that no authentic file passes for another
//! component's) under a 256-bit key kept in the cache directory (`key`,
//! mode 0600, made on first start). A file without a valid tag is removed
//! and compiled again from its artifact, never run. The check reads the
//! file through one descriptor and wasmtime maps the file that descriptor
//! refers to, so a file renamed over the name in between is not the one
//! that runs. Servers sharing a cache directory share its key.

use crate::RuntimeError;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashSet;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasmtime::Engine;
use wasmtime::component::Component;
use wisp_core::files;
use wisp_core::{Digest, Swept, sweep_digest_files};

/// Name of the key file in the cache directory.
pub(crate) const KEY_FILE: &str = "key";
/// Extension of compiled components.
const CODE_EXTENSION: &str = "cwasm";
/// Extension of their tags.
const TAG_EXTENSION: &str = "tag";
/// What each tag starts with: the purpose and format of the MAC.
const TAG_CONTEXT: &[u8] = b"wisp compiled component v1\0";

type HmacSha256 = Hmac<Sha256>;

/// Why a cached compiled component is not loaded.
#[derive(Debug, thiserror::Error)]
enum Rejected {
    /// It has no tag beside it.
    #[error("it has no authentication tag")]
    NoTag,
    /// Its tag does not match its bytes under this cache's key.
    #[error("its authentication tag does not match it")]
    BadTag,
    /// It or its tag could not be read.
    #[error("it could not be read: {0}")]
    Io(#[from] std::io::Error),
}

pub(crate) struct CompiledCache {
    root: PathBuf,
    dir: PathBuf,
    /// The name of `dir`, part of every tag.
    engine_dir: String,
    key: [u8; 32],
}

impl CompiledCache {
    /// Opens the cache rooted at `root` (created 0700; refused if others may
    /// write to it), with its key (created on first use) and this engine's
    /// directory.
    pub(crate) fn open(root: &Path, engine: &Engine) -> Result<Self, RuntimeError> {
        files::check_private_dir(root)?;
        let key = load_key(root)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_dir = format!("engine-{:016x}", hasher.finish());
        let dir = root.join(&engine_dir);
        files::private_dir(&dir).map_err(|source| RuntimeError::Cache {
            path: dir.clone(),
            source,
        })?;
        remove_stale_temp_files(&dir, STALE_TEMP_AGE);
        Ok(CompiledCache {
            root: root.to_path_buf(),
            dir,
            engine_dir,
            key,
        })
    }

    /// Removes compiled code of digests not in `keep`, older than `grace`,
    /// and the directories of other engine builds (an earlier Wisp's) left
    /// untouched for longer than `grace`. Whatever it removes is compiled
    /// again from its artifact if it is ever needed.
    pub(crate) fn sweep(&self, keep: &HashSet<Digest>, grace: Duration) -> std::io::Result<Swept> {
        let (mut swept, _) = sweep_digest_files(&self.dir, CODE_EXTENSION, keep, grace)?;
        let (tags, _) = sweep_digest_files(&self.dir, TAG_EXTENSION, keep, grace)?;
        swept.files += tags.files;
        swept.bytes += tags.bytes;
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
        self.dir.join(format!("{}.{CODE_EXTENSION}", digest.hex()))
    }

    fn tag_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}.{TAG_EXTENSION}", digest.hex()))
    }

    /// The MAC of `digest`'s compiled code read from `code`.
    fn mac(&self, digest: &Digest, code: &mut impl Read) -> std::io::Result<HmacSha256> {
        mac(&self.key, &self.engine_dir, digest, code)
    }

    /// Checks `code`, the open compiled file of `digest`, against its tag.
    fn verify(&self, digest: &Digest, code: &mut File) -> Result<(), Rejected> {
        let tag = match std::fs::read(self.tag_path(digest)) {
            Ok(tag) => tag,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Rejected::NoTag),
            Err(e) => return Err(e.into()),
        };
        self.mac(digest, code)?
            .verify_slice(&tag)
            .map_err(|_| Rejected::BadTag)
    }

    /// Removes `digest`'s compiled code and its tag.
    fn remove(&self, digest: &Digest) {
        let _ = std::fs::remove_file(self.path(digest));
        let _ = std::fs::remove_file(self.tag_path(digest));
    }

    /// The cached compiled component, if present, authentic and loadable.
    pub(crate) fn load(&self, engine: &Engine, digest: &Digest) -> Option<Component> {
        let path = self.path(digest);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open compiled component");
                return None;
            }
        };
        if let Err(why) = self.verify(digest, &mut file) {
            tracing::warn!(
                path = %path.display(),
                "compiled component not loaded: {why}; compiling it again from its artifact"
            );
            self.remove(digest);
            return None;
        }
        // SAFETY: the file's bytes were just authenticated, read through
        // `file`, as written by this server or one sharing its cache key:
        // by `store` below from `Component::serialize` of this engine, or by
        // a compiler child's engine of the same compile settings
        // (`install`). What is mapped is the file `file` refers to, not
        // whatever has the name now. The directory name carries this
        // engine's compatibility hash, and wasmtime checks the header
        // against the engine and the host before using it.
        match unsafe { Component::deserialize_file(engine, same_file(&file)) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding unusable compiled component");
                self.remove(digest);
                None
            }
        }
    }

    /// Writes the compiled form atomically (temp file, fsync, rename) with
    /// its tag.
    pub(crate) fn store(&self, digest: &Digest, component: &Component) -> std::io::Result<()> {
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

    /// Tags a written (and synced) temporary file and moves it into place,
    /// atomically, replacing what was there. The tag goes first: a reader
    /// in between sees a tag that does not match and compiles again.
    pub(crate) fn install(&self, tmp: TempFile, digest: &Digest) -> std::io::Result<()> {
        let tag = self
            .mac(digest, &mut File::open(tmp.path())?)?
            .finalize()
            .into_bytes();
        let tag_tmp = self.temp_file(digest);
        files::write_private_new(tag_tmp.path(), &tag)?;
        std::fs::rename(tag_tmp.path(), self.tag_path(digest))?;
        std::fs::rename(tmp.path(), self.path(digest))
    }
}

/// The key of the cache rooted at `root`, made on first use.
fn load_key(root: &Path) -> Result<[u8; 32], RuntimeError> {
    let path = root.join(KEY_FILE);
    let key = files::load_or_create_secret(&path)?;
    hex::decode(&key)
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or_else(|| RuntimeError::Cache {
            path,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the compiled-code key is not 64 hex digits; remove the file \
                 (a new key is made and the code is compiled again)",
            ),
        })
}

/// The MAC under `key` of `digest`'s compiled code in `engine_dir`, read
/// from `code`.
fn mac(
    key: &[u8; 32],
    engine_dir: &str,
    digest: &Digest,
    code: &mut impl Read,
) -> std::io::Result<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(TAG_CONTEXT);
    mac.update(engine_dir.as_bytes());
    mac.update(b"/");
    mac.update(digest.hex().as_bytes());
    let mut buf = vec![0; 256 << 10];
    loop {
        match code.read(&mut buf)? {
            0 => return Ok(mac),
            n => mac.update(&buf[..n]),
        }
    }
}

/// Writes the tag of compiled code that a tool put in the cache rooted at
/// `cache_dir` itself, at `code` (`<cache_dir>/engine-<hash>/<hex>.cwasm`),
/// as the server does for what it compiles. For tools trusted with the
/// cache's key: the density benchmark seeds a cache with one compiled
/// component under many digests.
pub fn tag_compiled(cache_dir: &Path, code: &Path) -> Result<(), RuntimeError> {
    let invalid = |why: &str| RuntimeError::Cache {
        path: code.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string()),
    };
    let engine_dir = code
        .parent()
        .filter(|dir| dir.parent() == Some(cache_dir))
        .and_then(|dir| dir.file_name())
        .and_then(|name| name.to_str())
        .ok_or_else(|| invalid("not in an engine directory of the cache"))?;
    let digest = code
        .file_stem()
        .and_then(|stem| stem.to_str())
        .and_then(|hex| Digest::from_hex(hex).ok())
        .ok_or_else(|| invalid("not named by a digest"))?;
    let key = load_key(cache_dir)?;
    let io_err = |source| RuntimeError::Cache {
        path: code.to_path_buf(),
        source,
    };
    let tag = mac(
        &key,
        engine_dir,
        &digest,
        &mut File::open(code).map_err(io_err)?,
    )
    .map_err(io_err)?
    .finalize()
    .into_bytes();
    files::replace_private(&code.with_extension(TAG_EXTENSION), &tag).map_err(io_err)
}

/// A path that opens the file `file` refers to, whatever has its name now:
/// `/proc/self/fd/N` (Linux), else `/dev/fd/N`.
fn same_file(file: &File) -> PathBuf {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let proc = PathBuf::from(format!("/proc/self/fd/{fd}"));
    if proc.exists() {
        proc
    } else {
        PathBuf::from(format!("/dev/fd/{fd}"))
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
    use std::os::unix::fs::PermissionsExt;

    /// An engine that compiles, and the `hello` example compiled by it
    /// (once per test process).
    fn hello() -> &'static (Engine, Digest, Component) {
        static HELLO: std::sync::OnceLock<(Engine, Digest, Component)> = std::sync::OnceLock::new();
        HELLO.get_or_init(|| {
            let engine = Engine::new(&crate::engine_config(8, 1 << 20, true)).unwrap();
            let bytes = wisp_testkit::example_bytes("hello");
            let component = Component::new(&engine, &bytes).unwrap();
            (engine, Digest::of(&bytes), component)
        })
    }

    /// A new cache holding `hello`'s compiled code.
    fn cache_with_hello() -> (tempfile::TempDir, CompiledCache) {
        let (engine, digest, component) = hello();
        let dir = tempfile::tempdir().unwrap();
        let cache = CompiledCache::open(dir.path(), engine).unwrap();
        cache.store(digest, component).unwrap();
        (dir, cache)
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn authentic_code_loads() {
        let (engine, digest, _) = hello();
        let (dir, cache) = cache_with_hello();
        assert!(cache.load(engine, digest).is_some());
        for file in [
            cache.path(digest),
            cache.tag_path(digest),
            dir.path().join(KEY_FILE),
        ] {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        assert_eq!(mode(&cache.dir), 0o700);
        // Another cache (another key) does not trust it.
        let other = tempfile::tempdir().unwrap();
        let theirs = CompiledCache::open(other.path(), engine).unwrap();
        std::fs::copy(cache.path(digest), theirs.path(digest)).unwrap();
        std::fs::copy(cache.tag_path(digest), theirs.tag_path(digest)).unwrap();
        assert!(theirs.load(engine, digest).is_none());
    }

    #[test]
    fn tampered_code_is_not_loaded() {
        let (engine, digest, component) = hello();
        let (_dir, cache) = cache_with_hello();
        let path = cache.path(digest);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(cache.load(engine, digest).is_none());
        assert!(!path.exists(), "the tampered file is removed");
        assert!(!cache.tag_path(digest).exists());
        // Compiled and stored again, it loads.
        cache.store(digest, component).unwrap();
        assert!(cache.load(engine, digest).is_some());
    }

    #[test]
    fn code_without_its_tag_is_not_loaded() {
        let (engine, digest, _) = hello();
        let (_dir, cache) = cache_with_hello();
        std::fs::remove_file(cache.tag_path(digest)).unwrap();
        assert!(cache.load(engine, digest).is_none());
        assert!(!cache.path(digest).exists());
    }

    #[test]
    fn a_tag_does_not_vouch_for_another_component() {
        let (engine, digest, _) = hello();
        let (_dir, cache) = cache_with_hello();
        // Authentic code of one component, put under another's name.
        let other = Digest::of(b"another component");
        std::fs::copy(cache.path(digest), cache.path(&other)).unwrap();
        std::fs::copy(cache.tag_path(digest), cache.tag_path(&other)).unwrap();
        assert!(cache.load(engine, &other).is_none());
        assert!(cache.load(engine, digest).is_some());
    }

    #[test]
    fn code_a_tool_put_in_place_and_tagged_loads() {
        let (engine, digest, _) = hello();
        let (dir, cache) = cache_with_hello();
        let other = Digest::of(b"a variant");
        std::fs::hard_link(cache.path(digest), cache.path(&other)).unwrap();
        assert!(cache.load(engine, &other).is_none(), "untagged");
        std::fs::hard_link(cache.path(digest), cache.path(&other)).unwrap();
        tag_compiled(dir.path(), &cache.path(&other)).unwrap();
        assert!(cache.load(engine, &other).is_some());
    }

    #[test]
    fn a_cache_others_may_write_to_is_refused() {
        let (engine, _, _) = hello();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o775)).unwrap();
        let err = CompiledCache::open(dir.path(), engine).err().unwrap();
        assert!(err.to_string().contains("chmod 700"), "{err}");
        assert!(!dir.path().join(KEY_FILE).exists(), "nothing is made in it");
    }

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
