//! Compiling components with Cranelift, in the server process or in a child
//! process of the server's own binary.
//!
//! In a child, the compiler's code and working memory never become part of
//! the server's resident set, a component that makes the compiler use too
//! much memory or time fails its own deploy (the child has a data-size
//! limit and a deadline) and a compiler crash cannot take the server down.
//! The child compiles with an engine of the same compile settings as the
//! server's but without the pooling allocator, which does not change the
//! compiled code (see the tests); the server, whose engine then has no
//! compiler at all, loads the result from the compiled cache like any
//! other cached component, and wasmtime checks its header against the
//! engine and this host.
//!
//! The protocol with the child: the component's bytes on its stdin, the
//! compiled form written to `--out PATH`; exit 0 when written,
//! [`EXIT_INVALID`] when the component is not valid (the reason on
//! stderr), anything else when it failed for another reason.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasmtime::{Config, Engine};

/// Exit code of a compiler child whose input is not a valid component.
pub const EXIT_INVALID: u8 = 65;
/// Exit code of a compiler child that failed for a reason of its own.
pub const EXIT_FAILED: u8 = 70;
/// Most bytes of a compiler child's stderr that are kept for the error.
const STDERR_KEPT: u64 = 16 << 10;

/// Where components are compiled.
#[derive(Debug, Clone, Default)]
pub enum Compiler {
    /// In the server process: for embedders without a binary to run.
    #[default]
    InProcess,
    /// In a child process, one per compile.
    Child(ChildCompiler),
}

/// How to run a compiler child.
#[derive(Debug, Clone)]
pub struct ChildCompiler {
    /// The program, which must call [`child_main`] for `args`.
    pub program: PathBuf,
    /// Its leading arguments; `--out PATH --memory-limit-mib N` follow.
    pub args: Vec<OsString>,
    /// Most memory (MiB of data segment, `RLIMIT_DATA`, over what the
    /// child holds before it compiles) one compile may use.
    pub memory_limit_mib: u64,
    /// Environment for the child (for example its allocator's settings).
    pub env: Vec<(OsString, OsString)>,
    /// Longest one compile may take before the child is killed.
    pub timeout: Duration,
}

/// A path that runs this very program for as long as the process lives,
/// even after its file was replaced or removed (as an upgrade in place
/// does): an open descriptor of it, kept open. The descriptor is inherited
/// by child processes, so that a wrapper that runs the children as well
/// (`valgrind --trace-children=yes`) can open the path too.
pub fn this_binary() -> std::io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    static BINARY: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    let file = match BINARY.get() {
        Some(file) => file,
        None => {
            let opened = std::fs::File::open(std::env::current_exe()?)?;
            BINARY.get_or_init(|| opened)
        }
    };
    rustix::io::fcntl_setfd(file, rustix::io::FdFlags::empty())?;
    let by_descriptor = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    if by_descriptor.exists() {
        Ok(by_descriptor)
    } else {
        // Without /proc (not Linux), the binary by its path.
        std::env::current_exe()
    }
}

/// Settings every engine of Wisp shares: everything that decides the
/// compiled code. The server adds its instance allocator to these.
pub(crate) fn base_config() -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true);
    config
}

/// The engine a compiler child compiles with.
fn compile_engine() -> Result<Engine, String> {
    Engine::new(&base_config()).map_err(|e| format!("configuring the compiler: {e:#}"))
}

/// The compiler child's main: reads a component from stdin (at most
/// `max_bytes`), compiles it and writes the compiled form to `out`, with
/// its data segment limited to `memory_limit_mib` more than it holds when
/// it starts to compile. Returns the exit code.
pub fn child_main(out: &Path, memory_limit_mib: u64, max_bytes: usize) -> u8 {
    let mut bytes = Vec::new();
    let read = std::io::stdin()
        .lock()
        .take(max_bytes as u64 + 1)
        .read_to_end(&mut bytes);
    if let Err(e) = read {
        eprintln!("cannot read the component from stdin: {e}");
        return EXIT_FAILED;
    }
    if bytes.len() > max_bytes {
        eprintln!("the component is larger than {max_bytes} bytes");
        return EXIT_INVALID;
    }
    let engine = match compile_engine() {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_FAILED;
        }
    };
    // Compiling an empty component starts the compiler's worker threads,
    // so that the limit below is the compile's own memory, not their
    // stacks, and running out of it shows as a failed allocation.
    let _ = engine.precompile_component(EMPTY_COMPONENT);
    if let Err(e) = limit_data(memory_limit_mib) {
        eprintln!("cannot limit the compiler's memory: {e}");
        return EXIT_FAILED;
    }
    let compiled = match engine.precompile_component(&bytes) {
        Ok(compiled) => compiled,
        Err(e) => {
            eprintln!("invalid component: {e:#}");
            return EXIT_INVALID;
        }
    };
    drop(bytes);
    match write_synced(out, &compiled) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!(
                "cannot write the compiled component to {}: {e}",
                out.display()
            );
            EXIT_FAILED
        }
    }
}

/// A component with nothing in it: the preamble of a component binary.
const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

/// Limits the data segment to what it is now plus `mib`.
fn limit_data(mib: u64) -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    // What the process holds now; without /proc (not Linux) the limit
    // counts from zero, a little tighter.
    let now_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmData:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let bytes = (now_kib << 10).saturating_add(mib.saturating_mul(1 << 20));
    setrlimit(
        Resource::Data,
        Rlimit {
            current: Some(bytes),
            maximum: Some(bytes),
        },
    )
    .map_err(std::io::Error::from)
}

/// Writes `bytes` to `path` (mode 0600 if it creates it) and fsyncs it.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = wisp_core::files::private_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Why a compile in a child failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChildError {
    /// The child found the component invalid.
    #[error("{0}")]
    Invalid(String),
    /// The compile needed more than its memory limit.
    #[error(
        "compiling the component needed more than the compiler's memory limit of {limit_mib} MiB \
         (the server's --compile-memory-mib)"
    )]
    OutOfMemory {
        /// The limit.
        limit_mib: u64,
    },
    /// The compile took longer than its deadline.
    #[error(
        "compiling the component took longer than {} s (the server's --compile-timeout-secs)",
        .0.as_secs()
    )]
    Timeout(Duration),
    /// The child could not be run or failed for a reason of its own.
    #[error("the compiler process failed: {0}")]
    Failed(String),
}

/// Compiles `bytes` in a child process into the file `out`.
pub(crate) async fn in_child(
    child: &ChildCompiler,
    bytes: bytes::Bytes,
    out: &Path,
) -> Result<(), ChildError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut proc = tokio::process::Command::new(&child.program)
        .args(&child.args)
        .arg("--out")
        .arg(out)
        .arg("--memory-limit-mib")
        .arg(child.memory_limit_mib.to_string())
        .envs(child.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            ChildError::Failed(format!("cannot start {}: {e}", child.program.display()))
        })?;
    let mut stdin = proc.stdin.take().expect("stdin is piped");
    let mut stderr = proc.stderr.take().expect("stderr is piped");
    let run = async {
        let feed = async move {
            // A child that exits early (a bad limit, say) closes its stdin:
            // its exit status tells why, not the broken pipe.
            let _ = stdin.write_all(&bytes).await;
            drop(stdin);
        };
        let mut message = Vec::new();
        let drain = async {
            let mut kept = (&mut stderr).take(STDERR_KEPT);
            let _ = kept.read_to_end(&mut message).await;
            // Past the kept bytes, read and drop, so the child never blocks.
            let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
        };
        let ((), (), status) = tokio::join!(feed, drain, proc.wait());
        (status, message)
    };
    let (status, message) = tokio::time::timeout(child.timeout, run)
        .await
        .map_err(|_| ChildError::Timeout(child.timeout))?;
    let status = status.map_err(|e| ChildError::Failed(format!("waiting for it: {e}")))?;
    let message = String::from_utf8_lossy(&message).trim().to_string();
    if status.success() {
        return Ok(());
    }
    if status.code() == Some(EXIT_INVALID.into()) {
        return Err(ChildError::Invalid(message));
    }
    // Rust aborts with this message when an allocation fails, which is how
    // the data-size limit shows.
    if message.contains("memory allocation of") {
        return Err(ChildError::OutOfMemory {
            limit_mib: child.memory_limit_mib,
        });
    }
    Err(ChildError::Failed(if message.is_empty() {
        format!("it exited with {status}")
    } else {
        format!("it exited with {status}: {message}")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{DefaultHasher, Hash, Hasher};
    use wasmtime::component::Component;

    fn hash(engine: &Engine) -> u64 {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        h.finish()
    }

    #[test]
    fn the_compiler_engine_compiles_what_the_server_engine_loads() {
        // The engine of a server whose compiles run in a child has no
        // compiler of its own ...
        let server = Engine::new(&crate::engine_config(8, 1 << 20, false)).unwrap();
        assert!(
            server.precompile_component(EMPTY_COMPONENT).is_err(),
            "a server that compiles in a child must not carry a compiler"
        );
        // ... and loads what the child's engine compiles.
        let compiler = compile_engine().unwrap();
        let bytes = wisp_testkit::example_bytes("hello");
        let compiled = compiler.precompile_component(&bytes).unwrap();
        // SAFETY: the bytes were just made by `precompile_component`.
        let component = unsafe { Component::deserialize(&server, &compiled) }
            .expect("the server engine loads what the compiler engine made");
        assert!(component.image_range().end > component.image_range().start);
    }

    /// A server that compiles in its own process has the child's compile
    /// settings: what one compiled, the other's cache directory holds.
    #[test]
    fn in_process_compiles_with_the_childs_settings() {
        let server = Engine::new(&crate::engine_config(8, 1 << 20, true)).unwrap();
        assert_eq!(hash(&server), hash(&compile_engine().unwrap()));
    }

    struct NoArtifacts;
    impl wisp_core::ArtifactSource for NoArtifacts {
        fn read(&self, _: &wisp_core::Digest) -> std::io::Result<Vec<u8>> {
            Err(std::io::ErrorKind::NotFound.into())
        }
    }
    struct NoRecords;
    impl wisp_core::InvocationSink for NoRecords {
        fn record(&self, _: wisp_core::InvocationRecord) {}
    }

    /// Embedders without a compiler binary compile in process: valid
    /// components are compiled into the cache, invalid ones are refused
    /// with the compiler's reason and cache nothing.
    #[tokio::test]
    async fn in_process_compiles_into_the_cache_and_refuses_invalid_components() {
        use wisp_core::{Digest, PrepareError, Preparer};
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::RuntimeConfig::new(dir.path());
        config.max_instances = 4;
        let runtime = crate::Runtime::new(
            config,
            std::sync::Arc::new(NoArtifacts),
            std::sync::Arc::new(NoRecords),
        )
        .unwrap();
        let cached = || -> Vec<String> {
            let engine_dir = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap())
                .find(|e| e.file_name().to_string_lossy().starts_with("engine-"))
                .unwrap();
            std::fs::read_dir(engine_dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };

        let truncated = wisp_testkit::example_bytes("hello")[..200].to_vec();
        let slot = runtime.reserve().await.unwrap();
        let err = runtime
            .prepare(slot, Digest::of(&truncated), truncated.into())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, PrepareError::Invalid(m) if m.starts_with("invalid component")),
            "{err:?}"
        );
        assert!(cached().is_empty(), "{:?}", cached());

        let hello = wisp_testkit::example_bytes("hello");
        let digest = Digest::of(&hello);
        let slot = runtime.reserve().await.unwrap();
        runtime
            .prepare(slot, digest.clone(), hello.into())
            .await
            .unwrap();
        let mut files = cached();
        files.sort();
        assert_eq!(
            files,
            vec![
                format!("{}.cwasm", digest.hex()),
                format!("{}.tag", digest.hex())
            ]
        );
    }
}
