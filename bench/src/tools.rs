//! The external programs the harness runs: a load generator (`oha`, else
//! `wrk`) and `wasmtime serve`, installed once into a cache directory
//! outside the repository and reused.

use crate::util::progress;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The wasmtime version Wisp links (the root `Cargo.toml`); `wasmtime
/// serve` is pinned to it so the comparison is engine against engine.
pub const WASMTIME_VERSION: &str = "48.0.8";

/// Features for `wasmtime-cli`: enough for `serve` with the pooling
/// allocator, without the rest of the CLI (explorer, wast, wizer, nn, ...)
/// that would double the build time. `serve` needs `component-model-async`;
/// `clap/default` keeps `--help`, which the harness reads to find flags.
const WASMTIME_FEATURES: &str = "run,serve,cranelift,pooling-allocator,parallel-compilation,\
component-model-async,cache,config,clap/default,clap/wrap_help";

/// `$WISP_BENCH_CACHE`, else `$XDG_CACHE_HOME/wisp-bench`, else
/// `~/.cache/wisp-bench`: where tools are installed and reused.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WISP_BENCH_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("wisp-bench")
}

fn tools_root() -> PathBuf {
    cache_dir().join("tools")
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Output of `bin args...` (stdout and stderr), if it ran.
pub fn output_of(bin: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(bin).args(args).output().ok()?;
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    Some(s)
}

/// `cargo install <args> --locked --root <cache>/tools`, logging to the cache.
/// With `WISP_BENCH_NO_INSTALL=1` nothing is installed (only tools already
/// there are used).
fn cargo_install(what: &str, args: &[&str]) -> Result<(), String> {
    if std::env::var_os("WISP_BENCH_NO_INSTALL").is_some() {
        return Err(format!(
            "{what} is not installed and WISP_BENCH_NO_INSTALL is set"
        ));
    }
    let root = tools_root();
    std::fs::create_dir_all(&root).ok();
    let log_path = cache_dir().join(format!("{what}-install.log"));
    progress(format!(
        "installing {what} with cargo install into {} (log: {}); this runs once",
        root.display(),
        log_path.display()
    ));
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    Command::new(cargo())
        .arg("install")
        .args(args)
        .args(["--locked", "--force", "--root"])
        .arg(&root)
        // Keep the build directory so a reinstall (new flags, new
        // version) is incremental.
        .arg("--target-dir")
        .arg(cache_dir().join("build"))
        // Never inherit the workspace build's target dir or flags.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .current_dir(cache_dir())
        .stdout(log)
        .stderr(log2)
        .status()
        .map_err(|e| format!("running cargo install: {e}"))?
        .success()
        .then_some(())
        .ok_or_else(|| format!("cargo install {what} failed; see {}", log_path.display()))
}

/// The load generator in use.
#[derive(Clone, Debug)]
pub enum LoadGen {
    /// `oha`, with JSON output.
    Oha(PathBuf),
    /// `wrk`, with `--latency` text output.
    Wrk(PathBuf),
}

impl LoadGen {
    /// Name and version, for the report.
    pub fn describe(&self) -> String {
        match self {
            LoadGen::Oha(p) => output_of(p, &["--version"])
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|| "oha".into()),
            LoadGen::Wrk(p) => output_of(p, &["-v"])
                .and_then(|s| {
                    s.lines()
                        .next()
                        .map(|l| l.split(" [").next().unwrap_or(l).trim().to_string())
                })
                .unwrap_or_else(|| "wrk".into()),
        }
    }
}

/// Finds `oha` (cache, then `PATH`), installs it from crates.io if
/// missing, and falls back to `wrk` (`PATH`, then `apt-get install wrk`).
/// `WISP_BENCH_LOADGEN=wrk` picks `wrk` even when `oha` is there.
pub fn load_generator() -> Option<LoadGen> {
    if std::env::var("WISP_BENCH_LOADGEN").as_deref() == Ok("wrk")
        && let Some(p) = on_path("wrk")
    {
        return Some(LoadGen::Wrk(p));
    }
    let cached = tools_root().join("bin/oha");
    if cached.is_file() {
        return Some(LoadGen::Oha(cached));
    }
    if let Some(p) = on_path("oha") {
        return Some(LoadGen::Oha(p));
    }
    match cargo_install("oha", &["oha"]) {
        Ok(()) if cached.is_file() => return Some(LoadGen::Oha(cached)),
        Ok(()) => progress("oha installed but not found; trying wrk"),
        Err(e) => progress(format!("{e}; trying wrk")),
    }
    if let Some(p) = on_path("wrk") {
        return Some(LoadGen::Wrk(p));
    }
    if std::env::var_os("WISP_BENCH_NO_INSTALL").is_none() {
        let _ = Command::new("apt-get")
            .args(["install", "-y", "wrk"])
            .status();
    }
    on_path("wrk").map(LoadGen::Wrk)
}

/// `wasmtime` at [`WASMTIME_VERSION`] with `serve`: `$WISP_BENCH_WASMTIME`,
/// the cached install, a matching one on `PATH`, or a fresh `cargo install`
/// (10+ minutes on two cores; once). `Err` says why there is none.
pub fn wasmtime() -> Result<PathBuf, String> {
    let good = |p: &Path| {
        output_of(p, &["--version"]).is_some_and(|v| v.contains(WASMTIME_VERSION))
            && output_of(p, &["serve", "--help"]).is_some_and(|h| h.contains("--addr"))
    };
    if let Some(p) = std::env::var_os("WISP_BENCH_WASMTIME").map(PathBuf::from) {
        let version = output_of(&p, &["--version"]).unwrap_or_default();
        return if version.contains(WASMTIME_VERSION) {
            Ok(p)
        } else {
            Err(format!(
                "WISP_BENCH_WASMTIME={} is {:?}, not wasmtime {WASMTIME_VERSION}",
                p.display(),
                version.trim()
            ))
        };
    }
    let cached = tools_root().join("bin/wasmtime");
    if cached.is_file() && good(&cached) {
        return Ok(cached);
    }
    if let Some(p) = on_path("wasmtime").filter(|p| good(p)) {
        return Ok(p);
    }
    let version = format!("={WASMTIME_VERSION}");
    cargo_install(
        "wasmtime-cli",
        &[
            "wasmtime-cli",
            "--version",
            &version,
            "--no-default-features",
            "--features",
            WASMTIME_FEATURES,
        ],
    )?;
    if good(&cached) {
        Ok(cached)
    } else {
        Err(format!(
            "the installed {} is not wasmtime {WASMTIME_VERSION} with `serve`",
            cached.display()
        ))
    }
}
