//! Small helpers shared by the sections: statistics, `/proc` readings,
//! loopback ports, child processes and function variants.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `{n, p50_ms, p99_ms, max_ms}` of samples in milliseconds.
pub fn summary(mut samples: Vec<f64>) -> Value {
    samples.sort_by(f64::total_cmp);
    json!({
        "n": samples.len(),
        "p50_ms": percentile(&samples, 50.0),
        "p99_ms": percentile(&samples, 99.0),
        "max_ms": samples.last().copied().unwrap_or(0.0),
    })
}

/// Milliseconds since `t`.
pub fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// A component with the same code but a different digest: an extra custom
/// section (id 0) appended to the binary, which components allow anywhere
/// between sections. `tag` keeps variants of different runs apart.
pub fn variant(base: &[u8], tag: &str, n: usize) -> Vec<u8> {
    let name = b"wisp-bench";
    let mut section = Vec::new();
    leb128(&mut section, name.len() as u64);
    section.extend_from_slice(name);
    section.extend_from_slice(tag.as_bytes());
    section.extend_from_slice(&(n as u64).to_le_bytes());
    let mut out = base.to_vec();
    out.push(0);
    leb128(&mut out, section.len() as u64);
    out.extend_from_slice(&section);
    out
}

fn leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Kernel clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User plus system CPU time of process `pid` (all its threads), in
/// microseconds, from `/proc/<pid>/stat`.
pub fn cpu_micros(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces; fields
    // after it are space-separated, utime and stime being the 14th and
    // 15th of the line (the 12th and 13th after the name).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks() * 1e6)
}

/// Busy CPU time of the whole machine (user, nice, system, irq, softirq
/// and steal over every core), in microseconds, from `/proc/stat`.
pub fn machine_cpu_micros() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7)?;
    Some(busy / clock_ticks() * 1e6)
}

/// The one-minute load average (`/proc/loadavg`).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A `kB` field (such as `VmRSS` or `VmHWM`) of `/proc/<pid>/status`, in MiB.
pub fn status_mib(pid: u32, field: &str) -> Option<f64> {
    wisp_testkit::proc_status_mib(pid, field)
}

/// Resident set size of `pid`, in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmRSS")
}

/// Peak resident set size of `pid` since it started, in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmHWM")
}

/// Reads a program's file through once, so that the whole of it is in the
/// page cache. A page fault on a mapped file maps the neighbouring pages
/// that are already cached as well, so a binary that was just built or
/// installed (all cached) shows more file-backed RSS than one that was
/// partly evicted; warming every compared binary first makes their peak
/// RSS comparable, whatever ran before the harness.
pub fn warm_page_cache(path: &Path) {
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = std::io::copy(&mut file, &mut std::io::sink());
    }
}

/// A loopback port free right now (bound, read and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a loopback port")
        .port()
}

/// Waits until `url` answers 200 to a GET, up to `timeout`.
pub async fn wait_ok(http: &reqwest::Client, url: &str, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(res) = http.get(url).send().await
            && res.status().is_success()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// A child process the harness started, killed (by its pid) and reaped on drop.
pub struct Proc {
    /// The child.
    pub child: Child,
}

impl Proc {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory the harness created, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates (after clearing) `<tmp>/wisp-bench-<pid>-<name>`.
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("wisp-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a bench data dir");
        TempDir(dir)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes data directories left by earlier runs that were interrupted
/// (`<tmp>/wisp-bench-<pid>-*` whose process is gone).
pub fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("wisp-bench-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            progress(format!(
                "removing {} left by an interrupted run",
                entry.path().display()
            ));
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Free space on the file system holding `path`, in GiB (from `df`).
pub fn free_gib(path: &Path) -> Option<f64> {
    let out = Command::new("df").args(["-Pk"]).arg(path).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let line = text.lines().nth(1)?;
    let avail_kb: f64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(avail_kb / 1024.0 / 1024.0)
}

/// Prints a progress line to stderr.
pub fn progress(msg: impl AsRef<str>) {
    eprintln!(
        "[wisp-bench {}] {}",
        chrono::Local::now().format("%H:%M:%S"),
        msg.as_ref()
    );
}

/// Rounds to `d` decimals (keeps the JSON readable).
pub fn round(v: f64, d: i32) -> f64 {
    let f = 10f64.powi(d);
    (v * f).round() / f
}
