//! Per-invocation telemetry: in-memory stats over a sliding window,
//! Prometheus metrics (see [`crate::metrics`]), and captured output handed
//! to the store's log in batches.

use crate::error::ApiResult;
use crate::extract::ApiQuery;
use crate::metrics::Metrics;
use crate::{AppState, function_name};
use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use wisp_core::{
    DurationPercentiles, ErrorBody, FastMap, FunctionName, FunctionStats, InvocationOutcome,
    InvocationRecord, InvocationSink, InvokeError, LogPage, LogStream, ValidationError, VersionId,
    VersionStats,
};
use wisp_store::{LogQuery, MetadataStore, NewLogRecord};

/// Length of the stats window.
pub const STATS_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Width of one stats bucket.
const BUCKET_SECS: i64 = 60;
/// Duration samples kept per bucket (reservoir sampling beyond that).
const SAMPLES_PER_BUCKET: usize = 2048;
/// Log records waiting to be written; beyond this they are dropped and counted.
const LOG_QUEUE: usize = 16_384;

#[derive(Debug, Default, Clone)]
struct Bucket {
    start: i64,
    invocations: u64,
    errors: u64,
    timeouts: u64,
    throttles: u64,
    cold_starts: u64,
    seen: u64,
    samples: Vec<f64>,
}

/// The buckets of each version of a function.
type Versions = Vec<(VersionId, Vec<Bucket>)>;

/// The stats windows of every function invoked within the window.
#[derive(Default)]
struct Windows {
    /// By function, then version: a record is filed without building (and
    /// allocating) an owned key.
    functions: FastMap<FunctionName, Versions>,
    /// Start of the bucket when expired buckets were last dropped.
    pruned_at: i64,
}

impl Windows {
    /// Drops every bucket older than the window, and the versions and
    /// functions left without one, so that what is kept is what was
    /// invoked in the last window.
    fn prune(&mut self, horizon: i64) {
        self.functions.retain(|_, versions| {
            versions.retain_mut(|(_, buckets)| {
                buckets.retain(|b| b.start + BUCKET_SECS > horizon);
                !buckets.is_empty()
            });
            !versions.is_empty()
        });
    }
}

/// Collects invocation records. Cheap to call from the request path.
pub struct Telemetry {
    windows: Mutex<Windows>,
    metrics: Metrics,
    logs: mpsc::Sender<NewLogRecord>,
    dropped_logs: AtomicU64,
}

impl Telemetry {
    /// Starts the background log writer on the current tokio runtime.
    pub fn new(store: Arc<dyn MetadataStore>) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(LOG_QUEUE);
        tokio::spawn(write_logs(store, rx));
        Arc::new(Telemetry {
            windows: Mutex::new(Windows::default()),
            metrics: Metrics::default(),
            logs: tx,
            dropped_logs: AtomicU64::new(0),
        })
    }

    /// Log records dropped because the writer fell behind.
    pub fn dropped_logs(&self) -> u64 {
        self.dropped_logs.load(Ordering::Relaxed)
    }

    /// The Prometheus metrics of every invocation recorded so far.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Drops everything kept about `function` (when it is deleted): its
    /// stats windows and its metric series, so that a function created
    /// again under its name starts from zero.
    pub fn forget_function(&self, function: &FunctionName) {
        self.lock_windows().functions.remove(function);
        self.metrics.forget_function(function);
    }

    /// Drops everything kept about one version (when it is deleted).
    pub fn forget_version(&self, function: &FunctionName, version: VersionId) {
        let mut windows = self.lock_windows();
        if let Some(versions) = windows.functions.get_mut(function) {
            versions.retain(|(v, _)| *v != version);
            if versions.is_empty() {
                windows.functions.remove(function);
            }
        }
        drop(windows);
        self.metrics.forget_version(function, version);
    }

    fn lock_windows(&self) -> std::sync::MutexGuard<'_, Windows> {
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self, record: NewLogRecord) {
        if self.logs.try_send(record).is_err() {
            self.dropped_logs.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn update_stats(&self, r: &InvocationRecord) {
        let now = Utc::now().timestamp();
        let start = now - now.rem_euclid(BUCKET_SECS);
        let horizon = now - STATS_WINDOW.as_secs() as i64;
        let mut windows = self.lock_windows();
        // Once a bucket width, what has left the window goes (functions
        // no longer invoked included).
        if windows.pruned_at != start {
            windows.pruned_at = start;
            windows.prune(horizon);
        }
        let functions = &mut windows.functions;
        let versions = match functions.get_mut(&r.function) {
            Some(versions) => versions,
            None => functions.entry(r.function.clone()).or_default(),
        };
        let i = match versions.iter().position(|(v, _)| *v == r.version) {
            Some(i) => i,
            None => {
                versions.push((r.version, Vec::new()));
                versions.len() - 1
            }
        };
        let buckets = &mut versions[i].1;
        if buckets.last().is_none_or(|b| b.start != start) {
            buckets.push(Bucket {
                start,
                ..Default::default()
            });
        }
        let b = buckets.last_mut().expect("just pushed");
        match &r.outcome {
            InvocationOutcome::Failed(
                InvokeError::Throttled { .. } | InvokeError::Overloaded { .. },
            ) => {
                b.throttles += 1;
                return;
            }
            InvocationOutcome::Failed(InvokeError::Timeout { .. }) => b.timeouts += 1,
            InvocationOutcome::Failed(_) => b.errors += 1,
            InvocationOutcome::Completed { .. } => {}
        }
        b.invocations += 1;
        if r.cold_start {
            b.cold_starts += 1;
        }
        let ms = r.duration.as_secs_f64() * 1000.0;
        b.seen += 1;
        if b.samples.len() < SAMPLES_PER_BUCKET {
            b.samples.push(ms);
        } else {
            let slot = rand::random_range(0..b.seen) as usize;
            if slot < SAMPLES_PER_BUCKET {
                b.samples[slot] = ms;
            }
        }
    }

    /// Stats of one function over the window.
    pub fn stats(&self, function: &FunctionName) -> FunctionStats {
        let horizon = Utc::now().timestamp() - STATS_WINDOW.as_secs() as i64;
        let windows = self.lock_windows();
        let mut per_version: Vec<(VersionId, Vec<&Bucket>)> = windows
            .functions
            .get(function)
            .into_iter()
            .flatten()
            .map(|(v, buckets)| {
                let live = buckets
                    .iter()
                    .filter(|b| b.start + BUCKET_SECS > horizon)
                    .collect();
                (*v, live)
            })
            .filter(|(_, b): &(VersionId, Vec<&Bucket>)| !b.is_empty())
            .collect();
        per_version.sort_by_key(|(v, _)| *v);
        let all: Vec<&Bucket> = per_version.iter().flat_map(|(_, b)| b.clone()).collect();
        FunctionStats {
            function: function.clone(),
            window_seconds: STATS_WINDOW.as_secs(),
            total: summarize("all".into(), &all),
            versions: per_version
                .iter()
                .map(|(v, b)| summarize(v.to_string(), b))
                .collect(),
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summarize(version: String, buckets: &[&Bucket]) -> VersionStats {
    let mut samples: Vec<f64> = buckets
        .iter()
        .flat_map(|b| b.samples.iter().copied())
        .collect();
    samples.sort_by(f64::total_cmp);
    let sum = |f: fn(&Bucket) -> u64| buckets.iter().map(|b| f(b)).sum();
    VersionStats {
        version,
        invocations: sum(|b| b.invocations),
        errors: sum(|b| b.errors),
        timeouts: sum(|b| b.timeouts),
        throttles: sum(|b| b.throttles),
        cold_starts: sum(|b| b.cold_starts),
        duration_ms: DurationPercentiles {
            p50: percentile(&samples, 50.0),
            p90: percentile(&samples, 90.0),
            p99: percentile(&samples, 99.0),
        },
    }
}

impl InvocationSink for Telemetry {
    fn record(&self, r: InvocationRecord) {
        self.metrics.record(&r);
        self.update_stats(&r);
        let base = |stream: LogStream, message: String, truncated: bool| NewLogRecord {
            request_id: r.request_id.clone(),
            timestamp: r.started_at,
            function: r.function.clone(),
            version: r.version,
            stream,
            message,
            truncated,
        };
        for (stream, capture) in [
            (LogStream::Stdout, &r.stdout),
            (LogStream::Stderr, &r.stderr),
        ] {
            if !capture.bytes.is_empty() || capture.truncated {
                let text = String::from_utf8_lossy(&capture.bytes).into_owned();
                self.log(base(stream, text, capture.truncated));
            }
        }
        if let InvocationOutcome::Failed(e) = &r.outcome {
            self.log(base(LogStream::System, e.to_string(), false));
        }
    }
}

async fn write_logs(store: Arc<dyn MetadataStore>, mut rx: mpsc::Receiver<NewLogRecord>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 512).await > 0 {
        if let Err(e) = store.append_logs(std::mem::take(&mut batch)).await {
            tracing::warn!(error = %e, "could not write invocation logs");
        }
    }
}

/// Query of `GET /v1/functions/{name}/logs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Only this invocation.
    request_id: Option<String>,
    /// Only invocations started at or after this RFC 3339 time.
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    since: Option<String>,
    /// Only records after this id (from `next_after`).
    after: Option<i64>,
    /// At most this many records (1 to 1000; default 100).
    #[param(schema_with = crate::schema::log_limit)]
    limit: Option<u32>,
}

/// Read a function's captured output.
#[utoipa::path(get, path = "/v1/functions/{name}/logs", tag = "observability",
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Function name"), LogsQuery),
    responses((status = 200, body = LogPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_logs(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> ApiResult<Json<LogPage>> {
    let name = function_name(&name)?;
    app.store.get_function(&name).await?;
    let since = q
        .since
        .as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| ValidationError::new("since", format!("not an RFC 3339 time: {e}")))
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=wisp_core::limits::MAX_LOG_QUERY_LIMIT).contains(&limit) {
        return Err(ValidationError::new(
            "limit",
            format!(
                "must be from 1 to {}",
                wisp_core::limits::MAX_LOG_QUERY_LIMIT
            ),
        )
        .into());
    }
    let page = app
        .store
        .query_logs(
            &name,
            LogQuery {
                request_id: q.request_id,
                since,
                after: q.after,
                limit,
            },
        )
        .await?;
    Ok(Json(page))
}

/// Invocation counters and duration percentiles over the last 15 minutes.
#[utoipa::path(get, path = "/v1/functions/{name}/stats", tag = "observability",
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Function name")),
    responses((status = 200, body = FunctionStats), (status = 404, body = ErrorBody)))]
pub async fn get_stats(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<FunctionStats>> {
    let name = function_name(&name)?;
    app.store.get_function(&name).await?;
    Ok(Json(app.telemetry.stats(&name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::{name, ok, rec};

    fn telemetry() -> Arc<Telemetry> {
        let store = wisp_store::sqlite::SqliteStore::open_in_memory().unwrap();
        Telemetry::new(Arc::new(store))
    }

    fn invoke(t: &Telemetry, function: &str, version: VersionId) {
        t.record(rec(
            function,
            version,
            Duration::from_millis(3),
            None,
            ok(200),
        ));
    }

    fn has_series(t: &Telemetry, function: &str) -> bool {
        let text = t
            .metrics()
            .encode(wisp_core::RuntimeSnapshot::default(), 0)
            .unwrap();
        text.contains(&format!("function=\"{function}\""))
    }

    #[tokio::test]
    async fn deleted_functions_and_versions_keep_no_stats() {
        let t = telemetry();
        let f = name("f");
        invoke(&t, "f", VersionId::Latest);
        invoke(&t, "f", VersionId::Published(1));
        invoke(&t, "g", VersionId::Latest);
        assert_eq!(t.stats(&f).total.invocations, 2);

        t.forget_version(&f, VersionId::Published(1));
        let stats = t.stats(&f);
        assert_eq!(stats.total.invocations, 1);
        assert_eq!(stats.versions.len(), 1);

        t.forget_function(&f);
        assert_eq!(t.stats(&f).total.invocations, 0);
        assert!(!t.lock_windows().functions.contains_key(&f), "nothing kept");
        assert!(!has_series(&t, "f"), "no metric series either");

        // A function created again under the name starts from zero.
        invoke(&t, "f", VersionId::Latest);
        assert_eq!(t.stats(&f).total.invocations, 1);
        assert_eq!(t.stats(&name("g")).total.invocations, 1, "others untouched");
        assert!(has_series(&t, "g"));
    }

    #[test]
    fn pruning_drops_what_left_the_window() {
        let bucket = |start| Bucket {
            start,
            invocations: 1,
            ..Default::default()
        };
        let mut w = Windows::default();
        w.functions
            .insert(name("old"), vec![(VersionId::Latest, vec![bucket(0)])]);
        w.functions.insert(
            name("mixed"),
            vec![
                (VersionId::Latest, vec![bucket(0), bucket(1200)]),
                (VersionId::Published(1), vec![bucket(60)]),
            ],
        );
        w.prune(1000);
        assert!(!w.functions.contains_key(&name("old")));
        let mixed = &w.functions[&name("mixed")];
        assert_eq!(mixed.len(), 1, "the version with nothing left goes");
        assert_eq!(mixed[0].1.len(), 1);
        assert_eq!(mixed[0].1[0].start, 1200);
    }
}
