//! Writes `bench/results/latest.json` and regenerates `docs/benchmarks.md`
//! from it: a header, a summary of the targets (issue 3's, and issue 4's
//! for asynchronous invocation), then one section per benchmark with its
//! targets beside the measured figures and an analysis placeholder under
//! every missed target.

use crate::baselines::{CONCURRENCY, point};
use serde_json::Value;
use std::fmt::Write as _;
use wisp_testkit::repo_root;

/// Reads `bench/results/latest.json`.
pub fn read_latest() -> Result<Value, String> {
    let path = repo_root().join("bench/results/latest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Regenerates `docs/benchmarks.md` from `bench/results/latest.json`
/// (after editing `bench/analysis/*.md`, say), without measuring anything.
pub fn rewrite_from_json() -> Result<(), String> {
    let results = read_latest()?;
    std::fs::write(repo_root().join("docs/benchmarks.md"), markdown(&results))
        .map_err(|e| format!("writing docs/benchmarks.md: {e}"))
}

/// Writes the JSON and the markdown.
pub fn write(results: &Value) {
    let root = repo_root();
    let dir = root.join("bench/results");
    std::fs::create_dir_all(&dir).expect("creating bench/results");
    std::fs::write(
        dir.join("latest.json"),
        serde_json::to_string_pretty(results).expect("JSON") + "\n",
    )
    .expect("writing latest.json");
    std::fs::write(root.join("docs/benchmarks.md"), markdown(results))
        .expect("writing docs/benchmarks.md");
}

/// A number with `d` decimals, or a dash.
fn num(v: &Value, d: usize) -> String {
    match v.as_f64() {
        Some(x) if x.is_finite() => format!("{x:.d$}"),
        _ => "–".into(),
    }
}

/// A whole number with thousands separators (`10,000`), or a dash.
fn int(v: &Value) -> String {
    let Some(n) = v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)) else {
        return "–".into();
    };
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One of the issues' targets, checked against this run.
struct Check {
    section: &'static str,
    /// The issue that set it.
    issue: u32,
    what: String,
    target: String,
    measured: String,
    /// `None` when it could not be measured in this run.
    met: Option<bool>,
    /// Why it was not measured, or the gap when missed.
    note: String,
}

impl Check {
    fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        }
    }
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

fn checks(r: &Value) -> Vec<Check> {
    let mut out = Vec::new();

    let t = &r["throughput"];
    let ran = |s: &str| {
        r["sections"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == s))
    };

    // Throughput at c=32 against wasmtime serve, and CPU per request.
    if ran("throughput") {
        let w32 = point(t, "wisp", 32);
        let wt32 = point(t, "wasmtime_serve", 32);
        let h32 = point(t, "hyper", 32);
        let (wr, tr) = (
            w32.and_then(|p| f(&p["rps"])),
            wt32.and_then(|p| f(&p["rps"])),
        );
        out.push(match (wr, tr) {
            (Some(w), Some(x)) if x > 0.0 => Check {
                section: "throughput",
                issue: 3,
                what: "hello throughput at c=32, fresh instance per request".into(),
                target: "≥ 2.5× wasmtime serve".into(),
                measured: format!("{:.2}× ({w:.0} vs {x:.0} rps)", w / x),
                met: Some(w / x >= 2.5),
                note: format!(
                    "needs {:.0} rps, {:.0} short",
                    2.5 * x,
                    (2.5 * x - w).max(0.0)
                ),
            },
            _ => Check {
                section: "throughput",
                issue: 3,
                what: "hello throughput at c=32, fresh instance per request".into(),
                target: "≥ 2.5× wasmtime serve".into(),
                measured: "–".into(),
                met: None,
                note: t["targets"]["wasmtime_serve"]["error"]
                    .as_str()
                    .or(t["targets"]["wisp"]["error"].as_str())
                    .unwrap_or("a figure is missing")
                    .into(),
            },
        });
        let cpu = w32.and_then(|p| f(&p["cpu_us_per_req"]));
        out.push(Check {
            section: "throughput",
            issue: 3,
            what: "server CPU per request at c=32 (Wisp)".into(),
            target: "≤ 40 µs".into(),
            measured: cpu.map(|c| format!("{c:.1} µs")).unwrap_or("–".into()),
            met: cpu.map(|c| c <= 40.0),
            note: cpu
                .map(|c| format!("{:.1} µs over", c - 40.0))
                .unwrap_or_else(|| "no CPU reading".into()),
        });
        let reuse = point(t, "wisp_reuse", 32).and_then(|p| f(&p["rps"]));
        let hr = h32.and_then(|p| f(&p["rps"]));
        out.push(match (reuse, hr) {
            (Some(w), Some(h)) if h > 0.0 => Check {
                section: "throughput",
                issue: 3,
                what: "hello throughput at c=32 with instance reuse".into(),
                target: "≥ 0.6× raw hyper".into(),
                measured: format!("{:.2}× ({w:.0} vs {h:.0} rps)", w / h),
                met: Some(w / h >= 0.6),
                note: format!(
                    "needs {:.0} rps, {:.0} short",
                    0.6 * h,
                    (0.6 * h - w).max(0.0)
                ),
            },
            _ => Check {
                section: "throughput",
                issue: 3,
                what: "hello throughput at c=32 with instance reuse".into(),
                target: "≥ 0.6× raw hyper".into(),
                measured: "–".into(),
                met: None,
                note: t["targets"]["wisp_reuse"]["error"]
                    .as_str()
                    .unwrap_or("a figure is missing")
                    .into(),
            },
        });
        let added = f(&t["added_p50_us_c1"]);
        out.push(Check {
            section: "throughput",
            issue: 3,
            what: "added p50 latency at c=1 (Wisp − hyper)".into(),
            target: "≤ 30 µs".into(),
            measured: added.map(|a| format!("{a:.0} µs")).unwrap_or("–".into()),
            met: added.map(|a| a <= 30.0),
            note: added
                .map(|a| format!("{:.0} µs over", a - 30.0))
                .unwrap_or_else(|| "a figure is missing".into()),
        });
        let w256 = point(t, "wisp", 256);
        let p99 = w256.and_then(|p| f(&p["p99_ms"]));
        let errs = w256.and_then(|p| p["errors"].as_u64());
        let hyper99 = point(t, "hyper", 256).and_then(|p| f(&p["p99_ms"]));
        out.push(Check {
            section: "throughput",
            issue: 19,
            what: "Wisp p99 at c=256, fresh instance per request, and errors".into(),
            target: "≤ 1.5× hyper's p99 in the same run, 0 errors".into(),
            measured: match (p99, hyper99, errs) {
                (Some(p), Some(h), Some(e)) => {
                    format!("{:.2}× ({p:.2} vs {h:.2} ms), {e} errors", p / h)
                }
                _ => "–".into(),
            },
            met: match (p99, hyper99, errs) {
                (Some(p), Some(h), Some(e)) if h > 0.0 => Some(p <= 1.5 * h && e == 0),
                _ => None,
            },
            note: match (p99, hyper99, errs) {
                (Some(p), Some(h), Some(e)) => format!(
                    "p99 {:.2} ms over 1.5× hyper's; {e} errors",
                    (p - 1.5 * h).max(0.0)
                ),
                _ => "a figure is missing".into(),
            },
        });
        let u = &t["unknown_names"];
        let flood = f(&u["flood_over_hello_c32"]);
        out.push(Check {
            section: "throughput",
            issue: 19,
            what: "a flood of unknown function names at c=32, rps".into(),
            target: "≥ 1× hello's at c=32".into(),
            measured: flood
                .map(|r| format!("{r:.2}× ({} rps)", num(&u["flood"]["rps"], 0)))
                .unwrap_or("–".into()),
            met: flood.map(|r| r >= 1.0),
            note: match flood {
                Some(r) => format!("{:.0} % short", (1.0 - r) * 100.0),
                None => u["error"].as_str().unwrap_or("a figure is missing").into(),
            },
        });
        for (beside, ratio, what) in [
            (
                "hello_beside_hostile",
                "hello_p99_hostile_over_hello",
                "hello's p99 at c=32 beside the hostile `hoard` at c=32",
            ),
            (
                "hello_beside_flood",
                "hello_p99_flood_over_hello",
                "hello's p99 at c=32 beside that flood",
            ),
        ] {
            let r = f(&u[ratio]);
            out.push(Check {
                section: "throughput",
                issue: 19,
                what: what.into(),
                target: "≤ 1.1× its p99 beside as much hello traffic".into(),
                measured: r
                    .map(|r| {
                        format!(
                            "{r:.2}× ({} vs {} ms)",
                            num(&u[beside]["p99_ms"], 2),
                            num(&u["hello_beside_hello"]["p99_ms"], 2)
                        )
                    })
                    .unwrap_or("–".into()),
                met: r.map(|r| r <= 1.1),
                note: match r {
                    Some(r) => format!("{:.0} % over", (r - 1.1).max(0.0) * 100.0),
                    None => u["error"].as_str().unwrap_or("a figure is missing").into(),
                },
            });
        }
        let wp = f(&t["targets"]["wisp"]["peak_rss_mib"]);
        let tp = f(&t["targets"]["wasmtime_serve"]["peak_rss_mib"]);
        out.push(Check {
            section: "throughput",
            issue: 3,
            what: "peak RSS with one function under load".into(),
            target: "≤ wasmtime serve's".into(),
            measured: match (wp, tp) {
                (Some(w), Some(x)) => format!("{w:.0} MiB vs {x:.0} MiB"),
                _ => "–".into(),
            },
            met: match (wp, tp) {
                (Some(w), Some(x)) => Some(w <= x),
                _ => None,
            },
            note: match (wp, tp) {
                (Some(w), Some(x)) => format!("{:.0} MiB over", w - x),
                _ => "a figure is missing".into(),
            },
        });
    }

    if ran("cold") {
        let c = &r["cold"];
        let p99 = f(&c["first_request_after_restart"]["p99_ms"]);
        out.push(Check {
            section: "cold",
            issue: 3,
            what: "first request after a restart, p99".into(),
            target: "≤ 2 ms".into(),
            measured: p99.map(|v| format!("{v:.2} ms")).unwrap_or("–".into()),
            met: p99.map(|v| v <= 2.0),
            note: p99
                .map(|v| format!("{:.2} ms over", v - 2.0))
                .unwrap_or_default(),
        });
        let ready = f(&c["start_to_ready"]["ms"]);
        let n = c["start_to_ready"]["functions"].as_u64().unwrap_or(0);
        out.push(Check {
            section: "cold",
            issue: 3,
            what: format!("start-to-ready with {} functions deployed", int(&n.into())),
            target: "≤ 1 s (with 10,000)".into(),
            measured: ready.map(|v| format!("{v:.0} ms")).unwrap_or("–".into()),
            met: ready
                .map(|v| v <= 1000.0 && n >= 10_000)
                .filter(|_| n >= 10_000)
                .or(
                    // A quick run measures fewer functions: not the target.
                    None,
                ),
            note: if n < 10_000 {
                format!("measured with {n} functions only (quick run or budget)")
            } else {
                ready
                    .map(|v| format!("{:.0} ms over", v - 1000.0))
                    .unwrap_or_default()
            },
        });
        let d = f(&c["deploy_to_first_response"]["p50_ms"]);
        out.push(Check {
            section: "cold",
            issue: 3,
            what: "deploy to first response for hello (p50)".into(),
            target: "≤ 300 ms".into(),
            measured: d.map(|v| format!("{v:.0} ms")).unwrap_or("–".into()),
            met: d.map(|v| v <= 300.0),
            note: d
                .map(|v| format!("{:.0} ms over", v - 300.0))
                .unwrap_or_default(),
        });
    }

    if ran("burst") {
        let b = &r["burst"];
        let errs = b["after_deploy"]["errors"]
            .as_u64()
            .zip(b["after_restart"]["errors"].as_u64())
            .map(|(a, c)| a + c);
        out.push(Check {
            section: "burst",
            issue: 3,
            what: "256 concurrent requests on a cold function: errors".into(),
            target: "0".into(),
            measured: errs.map(|e| e.to_string()).unwrap_or("–".into()),
            met: errs.map(|e| e == 0),
            note: errs.map(|e| format!("{e} errors")).unwrap_or_default(),
        });
    }

    if ran("density") {
        let level = r["density"]["levels"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["functions"].as_u64() == Some(100_000)));
        let (measured, met, note) = match level {
            Some(l) if l["skipped"].is_string() => (
                "–".into(),
                None,
                l["skipped"].as_str().unwrap_or_default().to_string(),
            ),
            Some(l) => {
                // The highest of the idle readings: after deploying, after
                // a restart, and after the idle unload.
                let rss = [
                    "rss_idle_after_deploy_mib",
                    "rss_idle_after_restart_mib",
                    "rss_after_idle_unload_mib",
                ]
                .iter()
                .filter_map(|k| f(&l[*k]))
                .reduce(f64::max);
                let n = l["deployed_total"].as_u64().unwrap_or(0);
                match rss {
                    Some(v) if n >= 100_000 => (
                        format!("{v:.0} MiB (highest idle reading)"),
                        Some(v <= 1024.0),
                        format!("{:.0} MiB over", v - 1024.0),
                    ),
                    Some(v) => (
                        format!("{v:.0} MiB with {n} functions"),
                        None,
                        format!("only {n} functions were deployed within the time budget"),
                    ),
                    None => ("–".into(), None, "no RSS reading".into()),
                }
            }
            None => (
                "–".into(),
                None,
                "a quick run deploys 1,000 functions only".into(),
            ),
        };
        out.push(Check {
            section: "density",
            issue: 3,
            what: "100,000 idle deployed functions, server RSS".into(),
            target: "≤ 1 GiB".into(),
            measured,
            met,
            note,
        });
    }

    if ran("async") {
        let a = &r["async"];
        for (key, how) in [
            ("batch", "batches of 100 events per request"),
            ("single", "one event per request"),
        ] {
            let v = &a["accept"][key];
            let rate = f(&v["accepted_per_second"]);
            let refused = v["throttled_events"].as_u64().unwrap_or(0);
            let errors = v["errors"].as_u64().unwrap_or(0);
            out.push(Check {
                section: "async",
                issue: 4,
                what: format!("accepted events/s (durable), {how}"),
                target: "≥ 20,000".into(),
                measured: match rate {
                    Some(x) if refused + errors > 0 => format!(
                        "{} /s ({refused} events refused with 429, {errors} errors)",
                        int(&x.into())
                    ),
                    Some(x) => format!("{} /s", int(&x.into())),
                    None => "–".into(),
                },
                met: rate.map(|x| x >= 20_000.0 && errors == 0),
                note: match rate {
                    Some(x) => format!("{} /s short", int(&(20_000.0 - x).max(0.0).into())),
                    None => v["error"].as_str().unwrap_or("not measured").into(),
                },
            });
        }
        let v = &a["end_to_end"]["batch"];
        let rate = f(&v["completed_per_second"]);
        let clean = v["any_failed_or_dead"].as_bool() == Some(false);
        out.push(Check {
            section: "async",
            issue: 4,
            what: "completed events/s end to end (ingress to recorded success, no-op function)"
                .into(),
            target: "≥ 10,000".into(),
            measured: rate
                .map(|x| format!("{} /s", int(&x.into())))
                .unwrap_or("–".into()),
            met: rate.map(|x| x >= 10_000.0 && clean),
            note: match rate {
                Some(x) => format!("{} /s short", int(&(10_000.0 - x).max(0.0).into())),
                None => v["error"].as_str().unwrap_or("not measured").into(),
            },
        });
    }
    if r["sections"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == "soak"))
        && !r["soak"].is_null()
    {
        soak_checks(r, &mut out);
    }
    out
}

/// The hand-written analysis of a section, `bench/analysis/<section>.md`,
/// kept apart so that regenerating the report never loses it.
fn analysis(section: &str) -> Option<String> {
    std::fs::read_to_string(repo_root().join(format!("bench/analysis/{section}.md")))
        .ok()
        .filter(|t| !t.trim().is_empty())
}

/// Appends the hand-written analysis of `section`; whether there was one.
fn push_analysis(md: &mut String, section: &str) -> bool {
    let Some(text) = analysis(section) else {
        return false;
    };
    let _ = writeln!(
        md,
        "**Analysis** (written by hand in `bench/analysis/{section}.md`; it may describe an earlier run than the figures above):\n\n{}\n",
        text.trim()
    );
    true
}

fn targets_table(md: &mut String, checks: &[Check], section: &str) {
    let mine: Vec<&Check> = checks.iter().filter(|c| c.section == section).collect();
    if mine.is_empty() {
        return;
    }
    let mut issues: Vec<String> = Vec::new();
    for c in &mine {
        if !issues.contains(&c.issue.to_string()) {
            issues.push(c.issue.to_string());
        }
    }
    let _ = writeln!(
        md,
        "Targets (issue{} {}):\n\n| target | goal | measured | verdict |\n|---|---|---|---|",
        if issues.len() > 1 { "s" } else { "" },
        issues.join(", ")
    );
    for c in &mine {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            c.what,
            c.target,
            c.measured,
            c.verdict()
        );
    }
    md.push('\n');
    let missed: Vec<&&Check> = mine.iter().filter(|c| c.met == Some(false)).collect();
    if !missed.is_empty() {
        md.push_str("Missed in this run:\n\n");
        for c in &missed {
            let _ = writeln!(
                md,
                "- {}: measured {}, goal {} ({}).",
                c.what, c.measured, c.target, c.note
            );
        }
        md.push('\n');
    }
    if !push_analysis(md, section) && !missed.is_empty() {
        let _ = writeln!(
            md,
            "> **Analysis (placeholder, to be written in `bench/analysis/{section}.md`):** \
             profile (`perf` or callgrind) of where the time or memory goes: _to do_. Next step: _to do_.\n"
        );
    }
    for c in mine.iter().filter(|c| c.met.is_none()) {
        let _ = writeln!(md, "Not measured: {}: {}.\n", c.what, c.note);
    }
}

fn label(key: &str) -> &'static str {
    match key {
        "hyper" => "hyper (plain server)",
        "wasmtime_serve" => "wasmtime serve",
        "wasmtime_serve_reuse" => "wasmtime serve, instance reuse",
        "wisp" => "Wisp `/fn/hello`",
        "wisp_reuse" => "Wisp, instance reuse",
        _ => "?",
    }
}

fn throughput(md: &mut String, r: &Value, checks: &[Check]) {
    let t = &r["throughput"];
    md.push_str("## Warm throughput and latency\n\n");
    if let Some(s) = t["skipped"].as_str() {
        let _ = writeln!(md, "Not run: {s}.\n");
        return;
    }
    let _ = writeln!(
        md,
        "`hello` (`Hello from Wisp!\\n`, `text/plain`) on every server, loaded by {} for {} s per point over keep-alive \
         connections on 127.0.0.1, after a 1 s warm-up. The load generator shares the two cores with the server. \
         \"× hyper\" is requests per second relative to the hyper baseline at the same concurrency. Server CPU is \
         the server process's user + system time (`/proc/<pid>/stat`) over the point, divided by the requests \
         served. `wasmtime serve` runs the same `hello.wasm` as `wasmtime serve --addr 127.0.0.1:PORT -Scli \
         hello.wasm` (`-Scli` because the guest imports `wasi:cli`; otherwise its defaults, which use the \
         pooling allocator where the machine allows it). Wisp's `hello` is deployed with \
         `max_concurrency: 1000` so that c=256 measures speed rather than the default admission \
         limit. All servers are started and warmed up first, then the points run interleaved (c=1 on each \
         server, then c=32, then c=256) so that background load on the shared machine hits them alike.\n",
        t["load_generator"].as_str().unwrap_or("?"),
        num(&t["seconds_per_point"], 0)
    );
    md.push_str("| server | c | rps | × hyper | p50 ms | p99 ms | errors | server CPU µs/req |\n|---|---|---|---|---|---|---|---|\n");
    for key in [
        "hyper",
        "wasmtime_serve",
        "wasmtime_serve_reuse",
        "wisp",
        "wisp_reuse",
    ] {
        let target = &t["targets"][key];
        if let Some(e) = target["error"].as_str() {
            let _ = writeln!(md, "| {} | | not measured: {e} | | | | | |", label(key));
            continue;
        }
        for c in CONCURRENCY {
            let Some(p) = point(t, key, c) else { continue };
            let _ = writeln!(
                md,
                "| {} | {c} | {} | {} | {} | {} | {} | {} |",
                label(key),
                num(&p["rps"], 0),
                num(&t["rps_ratio_to_hyper"][key][format!("c{c}")], 3),
                num(&p["p50_ms"], 3),
                num(&p["p99_ms"], 3),
                p["errors"],
                num(&p["cpu_us_per_req"], 1),
            );
        }
    }
    md.push('\n');
    let _ = writeln!(
        md,
        "Added p50 latency at c=1 (Wisp − hyper): {} µs. Wisp ÷ wasmtime serve at c=32: {}×.\n",
        num(&t["added_p50_us_c1"], 0),
        num(&t["wisp_over_wasmtime_serve_c32"], 2)
    );
    md.push_str(
        "Peak RSS (`VmHWM`) of each server after all its load points, and what its \
         resident set was made of at the end: file-backed pages (its own code and \
         libraries) and anonymous memory (heap, stacks, instance memory). Every \
         server's program is read through once before the servers start, so that \
         all are wholly in the page cache (how much of a mapped file is cached \
         changes how much of it a page fault maps):\n\n\
         | server | peak RSS MiB | file-backed MiB | anonymous MiB |\n|---|---|---|---|\n",
    );
    for key in [
        "hyper",
        "wasmtime_serve",
        "wasmtime_serve_reuse",
        "wisp",
        "wisp_reuse",
    ] {
        if t["targets"][key]["error"].is_null() {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                label(key),
                num(&t["targets"][key]["peak_rss_mib"], 1),
                num(&t["targets"][key]["rss_file_mib"], 1),
                num(&t["targets"][key]["rss_anon_mib"], 1)
            );
        }
    }
    md.push('\n');
    let u = &t["unknown_names"];
    if u["flood"].is_object() {
        let _ = writeln!(
            md,
            "Unknown function names: requests for `{}` (a new random name each, so none is cached \
             by name; Wisp answers 404) against the Wisp server at c=32, then `hello` at c=32 \
             beside that flood, and beside a second `hello` load at c=32 (two load generators at \
             once, sharing the cores with the server), and beside the hostile `hoard` at c=32 \
             (each of its requests asks the host to hold 1.2 GB of headers and is stopped at its \
             limit with 500).\n\n\
             | load | rps | p50 ms | p99 ms |\n|---|---|---|---|",
            u["pattern"].as_str().unwrap_or("?")
        );
        for (label, v) in [
            ("unknown names alone", &u["flood"]),
            ("hello beside the flood", &u["hello_beside_flood"]),
            ("hello beside hello", &u["hello_beside_hello"]),
            (
                "hello beside the hostile `hoard`",
                &u["hello_beside_hostile"],
            ),
        ] {
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} |",
                num(&v["rps"], 0),
                num(&v["p50_ms"], 3),
                num(&v["p99_ms"], 3)
            );
        }
        md.push('\n');
    } else if let Some(e) = u["error"].as_str() {
        let _ = writeln!(md, "Unknown function names: not measured: {e}.\n");
    }
    if let Some(flags) = t["targets"]["wasmtime_serve_reuse"]["flags"].as_array() {
        let flags: Vec<&str> = flags.iter().filter_map(|f| f.as_str()).collect();
        let _ = writeln!(
            md,
            "wasmtime serve with instance reuse ran with `{}`.\n",
            flags.join(" ")
        );
    }
    if let Some(cfg) = t["targets"]["wisp_reuse"]["config"].as_object() {
        let _ = writeln!(
            md,
            "Wisp with instance reuse ran with spec `{}`.\n",
            Value::Object(cfg.clone())
        );
    }
    targets_table(md, checks, "throughput");
}

fn ms_row(md: &mut String, label: &str, v: &Value) {
    let _ = writeln!(
        md,
        "| {label} | {} | {} | {} |",
        num(&v["p50_ms"], 3),
        num(&v["p99_ms"], 3),
        num(&v["max_ms"], 3)
    );
}

fn cold(md: &mut String, r: &Value, checks: &[Check]) {
    let c = &r["cold"];
    md.push_str("## Cold starts\n\n");
    let _ = writeln!(
        md,
        "{} distinct functions (the `hello` example with a unique custom section each, so every one has its own \
         digest and compiled artifact), invoked one at a time. Each request is timed by the client over an \
         already-open keep-alive connection (a `/v1/health` request opens it first), in milliseconds.\n",
        c["functions"]
    );
    md.push_str("| case | p50 | p99 | max |\n|---|---|---|---|\n");
    ms_row(
        md,
        "first request after deploy (never invoked; component loaded from the compiled cache)",
        &c["first_request_after_deploy"],
    );
    ms_row(
        md,
        "first request after a kill -9 and restart (compiled artifact on disk, no recompile)",
        &c["first_request_after_restart"],
    );
    ms_row(
        md,
        "warm request (component in memory, fresh instance)",
        &c["warm_request"],
    );
    ms_row(
        md,
        "deploy to first response (upload + validate + compile + create + first request)",
        &c["deploy_to_first_response"],
    );
    md.push('\n');
    md.push_str("Instantiation alone, as the server reports it (`faas_init_duration_seconds` on `GET /metrics`):\n\n");
    for (label, key) in [
        ("after deploy", "server_init_duration_after_deploy"),
        ("after restart", "server_init_duration_after_restart"),
    ] {
        let m = &c[key];
        if m["available"].as_bool() == Some(true) {
            let _ = writeln!(
                md,
                "- {label}: mean {} ms over {} cold starts (p50 ≤ {} ms, p99 ≤ {} ms by histogram bucket).",
                num(&m["mean_ms"], 3),
                m["count"],
                num(&m["p50_bucket_le_ms"], 3),
                num(&m["p99_bucket_le_ms"], 3)
            );
        } else {
            let _ = writeln!(
                md,
                "- {label}: n/a: {}.",
                m["note"].as_str().unwrap_or("not measured")
            );
        }
    }
    md.push('\n');
    let s = &c["start_to_ready"];
    if s.is_object() {
        let _ = writeln!(
            md,
            "Start-to-ready: {} ms from spawning `wisp server` on a data directory holding {} functions until \
             `/v1/health` answers (measured in the {} section).\n",
            num(&s["ms"], 0),
            int(&s["functions"]),
            s["measured_in"].as_str().unwrap_or("?")
        );
    }
    if c["errors"].as_u64().unwrap_or(0) > 0 {
        let _ = writeln!(
            md,
            "Errors during this section: {} (first: {}).\n",
            c["errors"], c["first_errors"]
        );
    }
    targets_table(md, checks, "cold");
}

fn burst(md: &mut String, r: &Value, checks: &[Check]) {
    let b = &r["burst"];
    md.push_str("## Burst\n\n");
    let _ = writeln!(
        md,
        "{} GETs released at the same instant, each on its own new connection, at a function that has never \
         been invoked (just deployed, or deployed before a kill -9 and restart); one trial per function. \
         \"All served\" is the time from the release until the last response is complete. The functions have \
         `max_concurrency: 1000`; the last row uses the server's default spec (its default `max_concurrency` and admission queue).\n",
        b["requests"]
    );
    md.push_str("| case | trials | all served p50 ms | all served max ms | request p99 ms | errors |\n|---|---|---|---|---|---|\n");
    for (label, key) in [
        ("cold, after deploy", "after_deploy"),
        ("cold, after restart", "after_restart"),
    ] {
        let v = &b[key];
        let p99 = v["trials"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|x| f(&x["latency"]["p99_ms"]))
                    .fold(f64::NAN, f64::max)
            })
            .map(Value::from)
            .unwrap_or(Value::Null);
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} |",
            v["all_served"]["n"],
            num(&v["all_served"]["p50_ms"], 1),
            num(&v["all_served"]["max_ms"], 1),
            num(&p99, 1),
            v["errors"]
        );
    }
    let d = &b["default_spec"];
    let _ = writeln!(
        md,
        "| default spec, after deploy | 1 | {} | {} | {} | {} (statuses {}) |",
        num(&d["all_served_ms"], 1),
        num(&d["all_served_ms"], 1),
        num(&d["latency"]["p99_ms"], 1),
        d["errors"],
        d["status"]
    );
    md.push('\n');
    targets_table(md, checks, "burst");
}

fn density(md: &mut String, r: &Value, checks: &[Check]) {
    let d = &r["density"];
    md.push_str("## Density\n\n");
    let _ = writeln!(
        md,
        "Distinct functions (variants of `hello`, each its own digest) deployed with {} concurrent clients (upload \
         + `PUT`). Compiling 100,000 components would take hours here and about 45 GB of compiled code, so the \
         server compiles the first functions of the run (rate \"compiled\") and, for the rest, the harness \
         pre-seeds the server's compiled-code cache with a hard link to one compiled hello under the variant's \
         digest (rate \"cached\": upload, hashing, loading and link-checking the cached code, and the metadata \
         commit, without Cranelift). RSS is the server's `VmRSS`: idle after deploying, idle after a restart \
         (nothing loaded), after invoking every function once ({} clients), and after the idle unload. \
         Start-to-ready is from spawning `wisp server` on that data directory until `/v1/health` answers. \
         The server ran with {} (its other limits at their defaults). Free disk before: {} GiB.\n",
        d["client_concurrency"],
        d["client_concurrency"],
        d["server_flags"]
            .as_str()
            .filter(|f| !f.is_empty())
            .map(|f| format!("`{f}`"))
            .unwrap_or("no extra flags".into()),
        num(&d["free_disk_gib_before"], 1)
    );
    md.push_str("| functions | deploy/s compiled | deploy/s cached | deploy errors | RSS idle after deploy MiB | RSS idle after restart MiB | RSS after invoking each MiB | peak RSS MiB | RSS after idle unload MiB | start-to-ready ms | invoke errors |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut notes = Vec::new();
    for l in d["levels"].as_array().cloned().unwrap_or_default() {
        if let Some(s) = l["skipped"].as_str() {
            let _ = writeln!(md, "| {} | {s} | | | | | | | | | |", l["functions"]);
            continue;
        }
        let dep = &l["deploy"];
        let errs = dep["compiled_by_server"]["errors"].as_u64().unwrap_or(0)
            + dep["pre_seeded"]["errors"].as_u64().unwrap_or(0);
        let unload = match &l["rss_after_idle_unload_mib"] {
            Value::String(s) => s.clone(),
            v => num(v, 0),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {errs} | {} | {} | {} | {} | {unload} | {} | {} |",
            int(&l["deployed_total"]),
            num(&dep["compiled_by_server"]["per_second"], 1),
            num(&dep["pre_seeded"]["per_second"], 1),
            num(&l["rss_idle_after_deploy_mib"], 0),
            num(&l["rss_idle_after_restart_mib"], 0),
            num(&l["rss_after_invoking_each_mib"], 0),
            num(&l["peak_rss_mib"], 0),
            num(&l["start_to_ready_ms"], 0),
            l["invoke_each_once"]["errors"],
        );
        if let Some(s) = l["invoke_each_once"]["stopped_early"].as_str() {
            notes.push(format!(
                "{} functions: invoking each once stopped after {} invocations: {s}.",
                l["deployed_total"], l["invoke_each_once"]["invoked"]
            ));
        }
        if let Some(e) = l["invoke_each_once"]["first_error"].as_str() {
            notes.push(format!(
                "{} functions: first invoke error: {e}.",
                l["deployed_total"]
            ));
        }
        for k in ["compiled_by_server", "pre_seeded"] {
            if let Some(e) = dep[k]["first_error"].as_str() {
                notes.push(format!(
                    "{} functions: first deploy error: {e}.",
                    l["deployed_total"]
                ));
            }
            if dep[k]["stopped_by_time_budget"].as_bool() == Some(true) {
                notes.push(format!(
                    "{} functions: the deploy stopped at the harness's time budget.",
                    l["functions"]
                ));
            }
        }
    }
    md.push('\n');
    for n in notes {
        let _ = writeln!(md, "- {n}");
    }
    md.push('\n');
    targets_table(md, checks, "density");
}

/// `n (min–max)` of a section's trials of `key`, or the one figure.
fn trials(v: &Value, key: &str) -> String {
    let rates: Vec<f64> = v["trials"][key]
        .as_array()
        .map(|a| a.iter().filter_map(f).collect())
        .unwrap_or_default();
    let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = rates.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match rates.len() {
        0 => "–".into(),
        1 => "1".into(),
        n => format!("{n} ({}–{})", int(&lo.into()), int(&hi.into())),
    }
}

fn asynchronous(md: &mut String, r: &Value, checks: &[Check]) {
    let a = &r["async"];
    md.push_str("## Asynchronous invocation\n\n");
    let single = &a["accept"]["single"];
    let batch = &a["accept"]["batch"];
    let _ = writeln!(
        md,
        "CloudEvents posted to `POST /v1/functions/{{name}}/events` on a release server with its defaults \
         (the queue is {}), by in-process clients (reqwest, keep-alive connections on 127.0.0.1) that share the two cores \
         with the server. Each run starts a fresh server (an empty queue) and spreads its events round-robin \
         over functions deployed from `hello` (the no-op: 200 and a short text), so that no function's queue \
         reaches its depth limit of 10,000; a 429 would be counted, not retried. A 202 means the events are \
         committed to disk. The throughput runs are repeated ({} trials, each on a fresh server) and the table \
         shows the median trial, with the range of the trials' rates.\n",
        a["durability"].as_str().unwrap_or("?"),
        a["trials"]
    );
    md.push_str(
        "**Accept path.** Events posted flat out; the rate is events answered 202 per second of posting wall \
         time, from the first request to the last answer. The dispatcher runs the accepted events meanwhile, \
         as it would in production (\"run meanwhile\"). Single events are structured mode \
         (`application/cloudevents+json`), batches are batch mode (`application/cloudevents-batch+json`). \
         CPU is user + system time from `/proc`, of the server and of the harness (the clients), per accepted \
         event; \"cores busy\" is the same CPU time over the wall time (the machine has two).\n\n",
    );
    md.push_str(
        "| ingress | clients | functions | events accepted | refused (429) | errors | seconds | accepted events/s | trials (range) | 202 latency p50 ms | 202 latency p99 ms | run meanwhile | server CPU µs/event | harness CPU µs/event | cores busy: server, harness |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (label, v) in [
        ("one event per request", single),
        ("batches of 100 events", batch),
    ] {
        if let Some(e) = v["error"].as_str() {
            let _ = writeln!(
                md,
                "| {label} | not measured: {e} | | | | | | | | | | | | | |"
            );
            continue;
        }
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} | {} | **{}** | {} | {} | {} | {} | {} | {} | {}, {} |",
            v["clients"],
            v["functions"],
            int(&v["accepted_events"]),
            int(&v["throttled_events"]),
            v["errors"],
            num(&v["seconds"], 2),
            int(&v["accepted_per_second"]),
            trials(v, "accepted_per_second"),
            num(&v["ack_latency"]["p50_ms"], 2),
            num(&v["ack_latency"]["p99_ms"], 2),
            int(&v["run_by_dispatcher_while_posting"]),
            num(&v["server_cpu_us_per_event"], 1),
            num(&v["harness_cpu_us_per_event"], 1),
            num(&v["server_cores_busy"], 2),
            num(&v["harness_cores_busy"], 2),
        );
    }
    md.push('\n');
    md.push_str(
        "**End to end.** The events are posted flat out to a fresh server, and the clock runs from the first \
         request until every invocation is recorded final: the harness polls `faas_invocations_total` on \
         `/metrics` every 20 ms until all have run, then lists each function's `queued`, `running` and \
         `retrying` invocations until none is left (a run counts once its success is committed). \
         \"Failed or dead\" checks the listings for those statuses afterwards.\n\n",
    );
    md.push_str(
        "| ingress | clients | functions | events | posting s | all final s | completed events/s | trials (range) | failed or dead | function errors | server CPU µs/event | harness CPU µs/event | cores busy: server, harness |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (label, key) in [
        ("batches of 100 events", "batch"),
        ("one event per request", "single"),
    ] {
        let v = &a["end_to_end"][key];
        if let Some(e) = v["error"].as_str() {
            let _ = writeln!(md, "| {label} | not measured: {e} | | | | | | | | | | | |");
            continue;
        }
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} | **{}** | {} | {} | {} | {} | {} | {}, {} |",
            v["clients"],
            v["functions"],
            int(&v["posting"]["accepted_events"]),
            num(&v["posting"]["seconds"], 2),
            num(&v["seconds_to_all_final"], 2),
            int(&v["completed_per_second"]),
            trials(v, "completed_per_second"),
            v["any_failed_or_dead"],
            v["function_errors"],
            num(&v["server_cpu_us_per_event"], 1),
            num(&v["harness_cpu_us_per_event"], 1),
            num(&v["server_cores_busy"], 2),
            num(&v["harness_cores_busy"], 2),
        );
    }
    md.push('\n');
    let l = &a["latency_at_half_peak"];
    if let Some(e) = l["error"].as_str() {
        let _ = writeln!(md, "**Enqueue-to-start latency**: not measured: {e}.\n");
    } else {
        let _ = writeln!(
            md,
            "**Enqueue-to-start latency at half of peak load.** Single events posted at a steady {} events/s \
             (half of the better median end-to-end rate above) for {} s to a fresh server ({} functions; at most 256 \
             requests in flight), achieved {} events/s ({} accepted, {} refused, {} errors). After all were \
             final, {} invocations sampled evenly over the run were read back with `GET /v1/invocations/{{id}}` \
             ({} unreadable or not succeeded); both timestamps are the server's.\n",
            int(&l["target_rate"]),
            l["seconds"],
            l["functions"],
            int(&l["achieved_rate"]),
            int(&l["posting"]["accepted_events"]),
            int(&l["posting"]["throttled_events"]),
            l["posting"]["errors"],
            l["sampled"],
            l["sample_unreadable_or_not_succeeded"],
        );
        md.push_str("| interval | p50 ms | p99 ms | max ms |\n|---|---|---|---|\n");
        ms_row(
            md,
            "enqueue to start (`attempts[0].started_at − enqueued_at`)",
            &l["enqueue_to_start"],
        );
        ms_row(
            md,
            "enqueue to finish (`attempts[0].finished_at − enqueued_at`)",
            &l["enqueue_to_finish"],
        );
        ms_row(
            md,
            "202 answer, seen by the client (the durable commit)",
            &l["posting"]["ack_latency"],
        );
        md.push('\n');
    }
    targets_table(md, checks, "async");
}

/// A reading that cannot be negative, clamped at 0 (`/proc` readings taken
/// a moment apart can differ by a tick).
fn nonnegative(v: &Value) -> Value {
    f(v).map_or(Value::Null, |x| x.max(0.0).into())
}

/// `p50 / p99` of a latency summary, in milliseconds.
fn p50_p99(v: &Value) -> String {
    if v["n"].as_u64().unwrap_or(0) == 0 {
        return "–".into();
    }
    format!("{} / {}", num(&v["p50_ms"], 1), num(&v["p99_ms"], 1))
}

fn triggers(md: &mut String, r: &Value) {
    let t = &r["triggers"];
    md.push_str("## Triggers\n\n");
    let _ = writeln!(
        md,
        "Messages published to a broker on 127.0.0.1 by one in-process publisher, and delivered by a trigger \
         (`POST /v1/triggers`) of a release server to `hello` (the no-op) through the durable queue. Each run starts \
         a fresh server (an empty data directory) and uses its own JetStream stream, RabbitMQ queue, MQTT topic and \
         client id, or Redis stream, removed afterwards; each source runs with its defaults. Every message is a binary-mode \
         CloudEvent (`ce-*` headers, user properties or fields) whose `time` is its publish time. `hello` is deployed \
         effectively once (`async_policy.semantics`), so that a message the broker delivers twice is queued once and \
         the invocations count distinct messages; the JetStream and Redis sources give every event an idempotency key \
         anyway, and this gives the RabbitMQ and MQTT events one too (their CloudEvent `source` and `id`), so every \
         broker's events cost the queue the same. The publisher, the server and the broker share the machine's {} cores.\n",
        r["cores"]
    );
    let _ = writeln!(
        md,
        "**Throughput.** {} messages published as fast as the publisher goes, pipelined, with at most {} \
         unconfirmed (each confirmed by the broker: JetStream publish acks, AMQP publisher confirms, MQTT PUBACKs, \
         replies to pipelined `XADD`s). Mosquitto drops QoS 1 messages beyond 1,000 queued for one subscriber \
         (`max_queued_messages`, its default), so the MQTT publisher stays at most {} messages ahead of the \
         invocations that have run. The clock runs from the first publish until every invocation is final: the harness \
         polls the trigger's `delivered` counter (`GET /v1/triggers/{{name}}`) and `faas_invocations_total` every \
         20 ms, then lists `queued`, `running` and `retrying` invocations until none is left. \"all queued\" is when \
         the trigger had queued the last message (on disk; only then is it acknowledged to the broker). {} trials, \
         each on a fresh server; the table shows the median trial and the range. CPU is user + system time from \
         `/proc` of the server, the broker's processes and the harness, per message over the whole run; \"cores busy\" \
         is the same over the wall time, and \"other work\" is the machine's busy time (`/proc/stat`) less those \
         three: the other jobs on the shared machine, which take CPU the server would otherwise get.\n",
        int(&t["messages"]),
        int(&t["publish_window"]),
        t["mqtt_lead"],
        t["trials"]
    );
    md.push_str(
        "| broker | published/s | all queued s | all final s | completed messages/s | trials (range) | failed or dead | server CPU µs/msg | broker CPU µs/msg | harness CPU µs/msg | cores busy: server, broker, harness, other work |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let brokers = ["nats", "rabbitmq", "mqtt", "redis"];
    let mut notes = Vec::new();
    for key in brokers {
        let b = &t["brokers"][key];
        let label = b["label"].as_str().unwrap_or(key);
        let v = &b["throughput"];
        if let Some(e) = b["error"].as_str().or(v["error"].as_str()) {
            let _ = writeln!(md, "| {label} | not measured: {e} | | | | | | | | | |");
            continue;
        }
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | **{}** | {} | {} | {} | {} | {} | {}, {}, {}, {} |",
            int(&v["published_per_second"]),
            num(&v["seconds_to_all_queued"], 2),
            num(&v["seconds_to_all_final"], 2),
            int(&v["completed_per_second"]),
            trials(v, "completed_per_second"),
            v["any_failed_or_dead"],
            num(&v["server_cpu_us_per_message"], 1),
            num(&v["broker_cpu_us_per_message"], 1),
            num(&v["harness_cpu_us_per_message"], 1),
            num(&v["server_cores_busy"], 2),
            num(&v["broker_cores_busy"], 2),
            num(&v["harness_cores_busy"], 2),
            num(&nonnegative(&v["other_processes_cores_busy"]), 2),
        );
        if let Some(e) = v["trigger_last_error"].as_str() {
            notes.push(format!(
                "{label}, throughput run: {} events refused by Wisp and left to the broker to deliver again; \
                 the trigger's last error: {e}.",
                v["trigger_failed"]
            ));
        }
        let extra = v["trigger_delivered"]
            .as_u64()
            .zip(v["messages"].as_u64())
            .map_or(0, |(d, m)| d.saturating_sub(m));
        if extra > 0 {
            notes.push(format!(
                "{label}, throughput run: the broker delivered {extra} messages twice (queued once)."
            ));
        }
        if v["function_errors"].as_u64().unwrap_or(0) > 0 {
            notes.push(format!(
                "{label}: {} function errors.",
                v["function_errors"]
            ));
        }
        if let Some(errors) = v["trials"]["errors"].as_array().filter(|e| !e.is_empty()) {
            notes.push(format!(
                "{label}: failed trials: {}.",
                Value::from(errors.clone())
            ));
        }
    }
    md.push('\n');
    if !notes.is_empty() {
        for n in notes.drain(..) {
            let _ = writeln!(md, "- {n}");
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "**Latency at half of peak.** Messages published at a steady half of the broker's median throughput for \
         {} s to a fresh server. Each invocation is joined to the publish record \
         of its message through its idempotency key: the JetStream source keys an event by its stream sequence \
         (from the publish ack) and the Redis source by its entry id (the `XADD` reply); the RabbitMQ and MQTT \
         sources set no key, so the effectively-once function's key (the CloudEvent's `source` and `id`) carries \
         the message's id. The harness reads the newest 1,000 invocations (`GET /v1/functions/hello/invocations`, \
         any status) every {} ms during the run and once at the end, and re-reads by id those not yet final, so the \
         sample covers the run without regard to how long an invocation took (all of it when fewer than about \
         3,000 messages/s are published). Publish times are the harness's clock, the others the server's; both are the \
         same machine's wall clock. Figures are p50 / p99 in milliseconds.\n",
        t["latency_seconds"], t["latency_listing_every_ms"]
    );
    md.push_str(
        "| broker | rate messages/s (achieved) | sampled of published | publish → queued | publish → start | queued → start | publish → finish | cores busy: server, other work |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for key in brokers {
        let b = &t["brokers"][key];
        let label = b["label"].as_str().unwrap_or(key);
        let l = &b["latency_at_half_peak"];
        if let Some(e) = b["error"].as_str().or(l["error"].as_str()) {
            let _ = writeln!(md, "| {label} | not measured: {e} | | | | | | |");
            continue;
        }
        if let Some(e) = l["trigger_last_error"].as_str() {
            notes.push(format!(
                "{label}, latency run: the trigger's last error: {e}."
            ));
        }
        let _ = writeln!(
            md,
            "| {label} | {} ({}) | {} of {} | {} | **{}** | {} | {} | {}, {} |",
            int(&l["target_rate"]),
            int(&l["achieved_rate"]),
            int(&l["sampled"]),
            int(&l["published"]),
            p50_p99(&l["publish_to_queued"]),
            p50_p99(&l["publish_to_start"]),
            p50_p99(&l["queued_to_start"]),
            p50_p99(&l["publish_to_finish"]),
            num(&l["server_cores_busy"], 2),
            num(&nonnegative(&l["other_processes_cores_busy"]), 2),
        );
    }
    md.push('\n');
    for n in &notes {
        let _ = writeln!(md, "- {n}");
    }
    if !notes.is_empty() {
        md.push('\n');
    }
    md.push_str("Publishers and brokers:\n\n");
    for key in brokers {
        let b = &t["brokers"][key];
        if b.is_null() {
            continue;
        }
        let _ = writeln!(
            md,
            "- {} {} at {}: {}; trigger source `{}`.",
            b["label"].as_str().unwrap_or(key),
            b["version"].as_str().unwrap_or("(version unknown)"),
            b["address"].as_str().unwrap_or("?"),
            b["publisher"].as_str().unwrap_or("?"),
            b["source"]
        );
    }
    md.push('\n');
    push_analysis(md, "triggers");
}

/// Which run measured each section: sections measured by the same run are
/// listed together (`runs` in the JSON; a file without it is one run).
fn runs_line(r: &Value) -> String {
    let sections: Vec<&str> = r["sections"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
        .unwrap_or_default();
    let quick = |q: &Value| {
        if q.as_bool() == Some(true) {
            ", **--quick** (smaller counts, 3 s load points)"
        } else {
            ""
        }
    };
    let Some(runs) = r["runs"].as_object().filter(|m| !m.is_empty()) else {
        return format!(
            "Run: {}{}; sections: {}; took {} s.",
            r["date"].as_str().unwrap_or("?"),
            quick(&r["quick"]),
            sections.join(", "),
            r["total_seconds"]
        );
    };
    // (date and mode of a run, its sections), in section order.
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for s in &sections {
        // A section asked for in this run has no entry until it has run.
        let Some(run) = runs.get(*s) else { continue };
        let key = format!(
            "{}{}",
            run["date"].as_str().unwrap_or("?"),
            quick(&run["quick"])
        );
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(s),
            None => groups.push((key, vec![s])),
        }
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|(k, list)| format!("{} measured {k}", list.join(", ")))
        .collect();
    format!(
        "Runs: {}. The latest run took {} s.",
        parts.join("; "),
        r["total_seconds"]
    )
}

/// The whole `docs/benchmarks.md`.
pub fn markdown(r: &Value) -> String {
    let checks = checks(r);
    let mut md = String::new();
    md.push_str("# Benchmarks\n\n");
    md.push_str(
        "Generated by the benchmark harness in `bench/` from `bench/results/latest.json`; do not edit by hand \
         (the analysis under each section comes from `bench/analysis/<section>.md`).\n\n\
         ```sh\n\
         cargo run --release -p wisp-bench                                      # everything (about 25 minutes)\n\
         cargo run --release -p wisp-bench -- throughput async                  # or some sections (the others are kept)\n\
         cargo run --release -p wisp-bench -- --quick                           # smaller counts, 3 s load points\n\
         cargo run --release -p wisp-bench -- --report-only                     # rewrite this file from the JSON\n\
         ```\n\n\
         The harness builds the release `wisp`, installs `oha` (or falls back to `wrk`) and `wasmtime-cli` \
         pinned to the wasmtime version Wisp links into `~/.cache/wisp-bench` (once: 15 to 25 minutes of \
         compiling on two cores), and sends traffic only to 127.0.0.1 (the triggers section expects NATS with JetStream, \
         RabbitMQ, Mosquitto and Redis there, on their default ports, where the tests find them; the tests' \
         `WISP_TEST_*_URL` variables move both). Every figure in a section comes from one run \
         on the same machine as its baselines, so the ratios between servers are meaningful; absolute figures are not comparable across machines. The machine is shared \
         with other work, so expect noise of ±10 % or more.\n\n",
    );
    let _ = writeln!(
        md,
        "{} On {} cores ({}). wasmtime serve: {}.\n",
        runs_line(r),
        r["cores"],
        r["cpu"].as_str().unwrap_or("?"),
        r["wasmtime_serve"]["version"]
            .as_str()
            .or(r["wasmtime_serve"]["error"].as_str())
            .unwrap_or("?"),
    );
    md.push_str(
        "## Targets at a glance\n\n| target | goal | measured | verdict |\n|---|---|---|---|\n",
    );
    for c in &checks {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            c.what,
            c.target,
            c.measured,
            c.verdict()
        );
    }
    md.push('\n');
    let ran = |s: &str| {
        r["sections"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == s))
            && !r[s].is_null()
    };
    if ran("throughput") {
        throughput(&mut md, r, &checks);
    }
    if ran("cold") {
        cold(&mut md, r, &checks);
    }
    if ran("burst") {
        burst(&mut md, r, &checks);
    }
    if ran("density") {
        density(&mut md, r, &checks);
    }
    if ran("async") {
        asynchronous(&mut md, r, &checks);
    }
    if ran("triggers") {
        triggers(&mut md, r);
    }
    if ran("soak") {
        soak(&mut md, r, &checks);
    }
    md
}

/// The soak's targets: nothing grows, nothing fails but the hostile
/// function.
fn soak_checks(r: &Value, out: &mut Vec<Check>) {
    let s = &r["soak"];
    for (field, what) in [
        ("rss_mib", "soak: RSS over the last third of the run"),
        ("fds", "soak: open file descriptors over the last third"),
    ] {
        let ratio = f(&s["last_third_over_first"][field]);
        out.push(Check {
            section: "soak",
            issue: 19,
            what: what.into(),
            target: "within 10 % of the first third".into(),
            measured: ratio.map(|x| format!("{x:.3}×")).unwrap_or("–".into()),
            met: ratio.map(|x| (0.9..=1.1).contains(&x)),
            note: match ratio {
                Some(x) => format!("{:.0} % off", ((x - 1.0).abs() - 0.1).max(0.0) * 100.0),
                None => s["error"].as_str().unwrap_or("a figure is missing").into(),
            },
        });
    }
    let unexpected = s["unexpected"].as_u64();
    out.push(Check {
        section: "soak",
        issue: 19,
        what: "soak: failures other than the hostile function's own".into(),
        target: "0".into(),
        measured: unexpected.map(|n| n.to_string()).unwrap_or("–".into()),
        met: unexpected.map(|n| n == 0 && s["alive"] == true),
        note: "see the examples in the soak section".into(),
    });
}

fn soak(md: &mut String, r: &Value, checks: &[Check]) {
    let s = &r["soak"];
    md.push_str(
        "## Soak

",
    );
    if let Some(e) = s["error"].as_str() {
        let _ = writeln!(md, "Not run: {e}.\n");
        return;
    }
    let _ = writeln!(
        md,
        "One server for {} s under a mixed load, all at once: `hello` with a fresh instance per \
         request (4 loops) and with instance reuse (4 loops), asynchronous invocations of `echo` \
         through `/fn/` (one every 20 ms), a cron trigger firing `echo` every second, a function \
         deployed, called and deleted every 200 ms, requests for names nobody deployed (2 loops) \
         and the hostile `hoard` asking the host to hold 1.2 GB of headers (2 loops; each request \
         is stopped at its limit with 500 `memory_limit_exceeded`, which is what it expects). \
         Sampled every {} s.\n\n\
         | load | as expected | unexpected |\n|---|---|---|",
        s["seconds"], s["sample_every_s"]
    );
    if let Some(loads) = s["loads"].as_object() {
        for (k, v) in loads {
            let _ = writeln!(
                md,
                "| {k} | {} | {} |",
                int(&v["ok"]),
                int(&v["unexpected"])
            );
        }
    }
    md.push('\n');
    if let Some(loads) = s["loads"].as_object() {
        for (k, v) in loads {
            if let Some(ex) = v["examples"].as_array().filter(|a| !a.is_empty()) {
                let _ = writeln!(
                    md,
                    "Unexpected answers to {k}, first few: {}.\n",
                    Value::Array(ex.clone())
                );
            }
        }
    }
    md.push_str("| s | RSS MiB | fds | threads | wisp.db MiB | wisp.db-wal MiB | queue.db MiB | queue.db-wal MiB |\n|---|---|---|---|---|---|---|---|\n");
    for x in s["samples"].as_array().into_iter().flatten() {
        let q = &x["sqlite_mib"];
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            x["seconds"],
            num(&x["rss_mib"], 1),
            x["fds"],
            x["threads"],
            num(&q["wisp.db"], 2),
            num(&q["wisp.db-wal"], 2),
            num(&q["queue.db"], 2),
            num(&q["queue.db-wal"], 2),
        );
    }
    md.push('\n');
    targets_table(md, checks, "soak");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn separates_thousands() {
        assert_eq!(int(&json!(100000)), "100,000");
        assert_eq!(int(&json!(999)), "999");
        assert_eq!(int(&json!(1000.0)), "1,000");
        assert_eq!(int(&Value::Null), "–");
    }

    #[test]
    fn renders_an_empty_run() {
        let md = markdown(
            &json!({"sections": ["throughput", "cold", "burst", "density", "async", "triggers", "soak"], "async": {}, "triggers": {}, "soak": {}}),
        );
        assert!(md.starts_with("# Benchmarks"));
        assert!(md.contains("## Asynchronous invocation"));
        assert!(md.contains("## Triggers"));
        assert!(md.contains("## Soak"));
    }
}
