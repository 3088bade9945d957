//! Prometheus metrics at `GET /metrics`: per-version counters and duration
//! histograms fed by every [`InvocationRecord`], plus runtime gauges read
//! from [`wisp_core::RuntimeState::snapshot`] at scrape time, encoded in the
//! OpenMetrics text format by `prometheus-client`.
//!
//! ```
//! use wisp_api::metrics::Metrics;
//! let metrics = Metrics::default();
//! let text = metrics.encode(wisp_core::RuntimeSnapshot::default(), 0).unwrap();
//! assert!(text.contains("# TYPE faas_invocations counter"));
//! assert!(text.ends_with("# EOF\n"));
//! ```
//!
//! The request path pays one read lock, one hash lookup by function name
//! and a few relaxed atomic increments per record; nothing is allocated
//! except the first time a version is seen. Each version costs about 700
//! bytes, so memory grows with the number of versions invoked, not with
//! traffic. The series of a function are removed when it is deleted.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, LabelSetEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use wisp_core::{
    ErrorCode, FastMap, FunctionName, InvocationOutcome, InvocationRecord, InvokeError,
    RuntimeSnapshot, VersionId,
};

/// `Content-Type` of the `/metrics` response.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const S: u64 = 1_000_000_000;

/// Histogram upper bounds in nanoseconds: from `first` (1, 2.5 or 5 times
/// a power of ten, at least 1 µs) up in 1-2.5-5 steps, then `tail`, then
/// `u64::MAX` (the `+Inf` bucket); `N` counts them all.
const fn bounds<const N: usize>(first: u64, tail: &[u64]) -> [u64; N] {
    let mut out = [u64::MAX; N];
    let steps = N - tail.len() - 1;
    let mut value = first;
    let mut i = 0;
    while i < steps {
        out[i] = value;
        let mut lead = value;
        while lead >= 10 {
            lead /= 10;
        }
        // 1 → 2.5 → 5 → 10
        value = if lead == 1 { value * 5 / 2 } else { value * 2 };
        i += 1;
    }
    let mut j = 0;
    while j < tail.len() {
        out[steps + j] = tail[j];
        j += 1;
    }
    out
}

/// Upper bounds of `faas_invoke_duration_seconds`: 50 µs to 10 s in 1-2.5-5
/// steps, then 30 and 60 s.
const INVOKE_BOUNDS_NS: [u64; 20] = bounds(50_000, &[30 * S, 60 * S]);

/// Upper bounds of `faas_init_duration_seconds`: 100 µs to 10 s.
const INIT_BOUNDS_NS: [u64; 17] = bounds(100_000, &[]);

/// Upper bounds of `wisp_instantiate_duration_seconds`: 1 µs to 100 ms.
const INSTANTIATE_BOUNDS_NS: [u64; 17] = bounds(1_000, &[]);

/// Values of the `reason` label of `wisp_invocation_failures_total`.
const REASONS: [&str; 5] = [
    "trap",
    "memory_limit",
    "timeout",
    "no_response",
    "unavailable",
];
/// Index of `timeout` in [`REASONS`].
const TIMEOUT: usize = 2;
/// Values of the `status_class` label of `wisp_http_responses_total`.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The [`REASONS`] index of a failure, or `None` for a request refused
/// with 429 (not an invocation that ran). Exhaustive on purpose: a new
/// error must be classified here.
fn failure_reason(e: &InvokeError) -> Option<usize> {
    match e {
        InvokeError::Throttled { .. } | InvokeError::Overloaded { .. } => None,
        InvokeError::Trapped { .. } => Some(0),
        InvokeError::MemoryLimit { .. } | InvokeError::HostLimit { .. } => Some(1),
        InvokeError::Timeout { .. } => Some(TIMEOUT),
        InvokeError::NoResponse { .. } => Some(3),
        InvokeError::Unavailable { .. } => Some(4),
    }
}

/// A histogram of durations with fixed bounds and atomic buckets.
#[derive(Debug)]
struct Histogram<const N: usize> {
    bounds: &'static [u64; N],
    /// Observations per bucket (not cumulative).
    counts: [AtomicU64; N],
    sum_ns: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: &'static [u64; N]) -> Self {
        Histogram {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self.bounds.iter().position(|&b| ns <= b).unwrap_or(N - 1);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    fn encode(&self, enc: &mut MetricEncoder) -> fmt::Result {
        let buckets: [(f64, u64); N] = std::array::from_fn(|i| {
            let bound = match self.bounds[i] {
                u64::MAX => f64::INFINITY,
                ns => ns as f64 / 1e9,
            };
            (bound, self.counts[i].load(Relaxed))
        });
        // The count is the sum of the buckets, so it always equals `+Inf`.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        enc.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// Everything counted for one version.
#[derive(Debug)]
struct VersionMetrics {
    invocations: AtomicU64,
    throttles: AtomicU64,
    cold_starts: AtomicU64,
    failures: [AtomicU64; REASONS.len()],
    responses: [AtomicU64; STATUS_CLASSES.len()],
    duration: Histogram<{ INVOKE_BOUNDS_NS.len() }>,
    init: Histogram<{ INIT_BOUNDS_NS.len() }>,
    instantiate: Histogram<{ INSTANTIATE_BOUNDS_NS.len() }>,
}

impl Default for VersionMetrics {
    fn default() -> Self {
        VersionMetrics {
            invocations: AtomicU64::new(0),
            throttles: AtomicU64::new(0),
            cold_starts: AtomicU64::new(0),
            failures: Default::default(),
            responses: Default::default(),
            duration: Histogram::new(&INVOKE_BOUNDS_NS),
            init: Histogram::new(&INIT_BOUNDS_NS),
            instantiate: Histogram::new(&INSTANTIATE_BOUNDS_NS),
        }
    }
}

impl VersionMetrics {
    fn record(&self, r: &InvocationRecord) {
        // A load happened even if the request was then refused (capacity
        // is checked after loading), so cold starts are counted first.
        if r.cold_start {
            self.cold_starts.fetch_add(1, Relaxed);
            if let Some(init) = r.init_duration {
                self.init.observe(init);
            }
        }
        if let Some(d) = r.instantiate_duration {
            self.instantiate.observe(d);
        }
        match &r.outcome {
            InvocationOutcome::Failed(e) => match failure_reason(e) {
                Some(reason) => {
                    self.failures[reason].fetch_add(1, Relaxed);
                }
                None => {
                    self.throttles.fetch_add(1, Relaxed);
                    return;
                }
            },
            InvocationOutcome::Completed { status } => {
                if let 100..=599 = status {
                    self.responses[usize::from(status / 100 - 1)].fetch_add(1, Relaxed);
                }
            }
        }
        self.invocations.fetch_add(1, Relaxed);
        self.duration.observe(r.duration);
    }

    fn errors(&self) -> u64 {
        (self.failures.iter().enumerate())
            .filter(|(i, _)| *i != TIMEOUT)
            .map(|(_, n)| n.load(Relaxed))
            .sum()
    }
}

type Versions = Vec<(VersionId, Arc<VersionMetrics>)>;

/// Per-version invocation metrics, keyed by function then version.
#[derive(Debug, Default)]
pub struct Metrics {
    functions: RwLock<FastMap<FunctionName, Versions>>,
}

fn find(versions: &Versions, version: VersionId) -> Option<&Arc<VersionMetrics>> {
    versions.iter().find(|(v, _)| *v == version).map(|(_, m)| m)
}

impl Metrics {
    /// Counts one invocation record.
    pub fn record(&self, r: &InvocationRecord) {
        {
            let functions = self.functions.read().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = functions.get(&r.function).and_then(|v| find(v, r.version)) {
                m.record(r);
                return;
            }
        }
        let m = {
            let mut functions = self.functions.write().unwrap_or_else(|e| e.into_inner());
            let versions = functions.entry(r.function.clone()).or_default();
            match find(versions, r.version) {
                Some(m) => m.clone(),
                None => {
                    let m = Arc::new(VersionMetrics::default());
                    versions.push((r.version, m.clone()));
                    m
                }
            }
        };
        m.record(r);
    }

    /// Drops every series of `function` (when it is deleted).
    pub fn forget_function(&self, function: &FunctionName) {
        let mut functions = self.functions.write().unwrap_or_else(|e| e.into_inner());
        functions.remove(function);
    }

    /// Drops the series of one version (when it is deleted).
    pub fn forget_version(&self, function: &FunctionName, version: VersionId) {
        let mut functions = self.functions.write().unwrap_or_else(|e| e.into_inner());
        if let Some(versions) = functions.get_mut(function) {
            versions.retain(|(v, _)| *v != version);
            if versions.is_empty() {
                functions.remove(function);
            }
        }
    }

    /// Every series, sorted by function and version. The lock is held only
    /// while copying the list, not while encoding.
    fn series(&self) -> Vec<Series> {
        let functions = self.functions.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Series> = functions
            .iter()
            .flat_map(|(f, versions)| {
                versions.iter().map(|(v, m)| Series {
                    function: f.clone(),
                    version: *v,
                    metrics: m.clone(),
                })
            })
            .collect();
        drop(functions);
        out.sort_by(|a, b| (&a.function, a.version).cmp(&(&b.function, b.version)));
        out
    }

    /// The whole exposition, in the OpenMetrics text format (ending in
    /// `# EOF`), with the runtime gauges of `runtime` and the count of
    /// dropped log records.
    pub fn encode(
        &self,
        runtime: RuntimeSnapshot,
        dropped_logs: u64,
    ) -> Result<String, fmt::Error> {
        let counters = ServerCounters {
            dropped_logs,
            ..ServerCounters::default()
        };
        self.encode_with_triggers(runtime, counters, Vec::new())
    }

    /// [`encode`](Self::encode) with all the server-wide counters, plus
    /// the status of each trigger.
    pub fn encode_with_triggers(
        &self,
        mut runtime: RuntimeSnapshot,
        counters: ServerCounters,
        mut triggers: Vec<TriggerSample>,
    ) -> Result<String, fmt::Error> {
        triggers.sort_by(|a, b| a.name.cmp(&b.name));
        runtime
            .versions
            .sort_by(|a, b| (&a.function, a.version).cmp(&(&b.function, b.version)));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape {
            series: self.series(),
            runtime,
            counters,
            triggers,
        }));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

/// One version's metrics, copied out for a scrape.
#[derive(Debug)]
struct Series {
    function: FunctionName,
    version: VersionId,
    metrics: Arc<VersionMetrics>,
}

/// The `function` and `version` labels, and optionally one more.
struct Labels<'a> {
    function: &'a FunctionName,
    version: VersionId,
    extra: Option<(&'static str, &'static str)>,
}

fn label(enc: &mut LabelSetEncoder, key: &str, value: impl fmt::Display) -> fmt::Result {
    let mut label = enc.encode_label();
    let mut key_enc = label.encode_label_key()?;
    key_enc.write_str(key)?;
    let mut value_enc = key_enc.encode_label_value()?;
    write!(value_enc, "{value}")?;
    value_enc.finish()
}

impl EncodeLabelSet for Labels<'_> {
    fn encode(&self, enc: &mut LabelSetEncoder) -> fmt::Result {
        label(enc, "function", self.function.as_str())?;
        label(enc, "version", self.version)?;
        if let Some((key, value)) = self.extra {
            label(enc, key, value)?;
        }
        Ok(())
    }
}

/// One trigger's status, as a scrape sees it.
#[derive(Debug, Clone)]
pub struct TriggerSample {
    /// The trigger's name.
    pub name: String,
    /// Its source's kind (`cron`, `nats`, ...).
    pub kind: &'static str,
    /// Its status.
    pub status: wisp_triggers::Status,
}

/// The `trigger` and `kind` labels, and optionally `outcome`.
struct TriggerLabels<'a> {
    sample: &'a TriggerSample,
    outcome: Option<&'static str>,
}

impl EncodeLabelSet for TriggerLabels<'_> {
    fn encode(&self, enc: &mut LabelSetEncoder) -> fmt::Result {
        label(enc, "trigger", &self.sample.name)?;
        label(enc, "kind", self.sample.kind)?;
        if let Some(o) = self.outcome {
            label(enc, "outcome", o)?;
        }
        Ok(())
    }
}

/// Server-wide counters kept outside the per-version series.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServerCounters {
    /// Log records dropped because the log writer fell behind.
    pub dropped_logs: u64,
    /// What the sweeps of unreferenced code removed since start (uploaded
    /// components and compiled code together).
    pub swept: wisp_core::Swept,
}

/// What one scrape encodes.
#[derive(Debug)]
struct Scrape {
    series: Vec<Series>,
    runtime: RuntimeSnapshot,
    counters: ServerCounters,
    triggers: Vec<TriggerSample>,
}

/// Encodes one metric family with a series per item of `items`;
/// `each` writes the samples of one item given its label set.
fn family<'a, T: 'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    items: impl IntoIterator<Item = &'a T>,
    mut each: impl FnMut(&'a T, &mut MetricEncoder) -> fmt::Result,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, unit, metric_type)?;
    for item in items {
        each(item, &mut metric)?;
    }
    Ok(())
}

fn counter(enc: &mut MetricEncoder, labels: &Labels, value: u64) -> fmt::Result {
    enc.encode_family(labels)?
        .encode_counter::<NoLabelSet, u64, u64>(&value, None)
}

fn gauge(enc: &mut MetricEncoder, labels: &Labels, value: u64) -> fmt::Result {
    enc.encode_family(labels)?.encode_gauge(&value)
}

impl Scrape {
    /// A counter family with one series per version.
    fn per_version_counter(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: fn(&VersionMetrics) -> u64,
    ) -> fmt::Result {
        family(
            enc,
            name,
            help,
            None,
            MetricType::Counter,
            &self.series,
            |s, m| counter(m, &s.labels(None), value(&s.metrics)),
        )
    }

    /// A counter family with one series per version and value of an extra
    /// label, leaving out the zeros.
    fn per_label_counter(
        &self,
        enc: &mut DescriptorEncoder,
        (name, help, key): (&str, &str, &'static str),
        values: &'static [&'static str],
        counts: fn(&VersionMetrics) -> &[AtomicU64],
    ) -> fmt::Result {
        family(
            enc,
            name,
            help,
            None,
            MetricType::Counter,
            &self.series,
            |s, m| {
                for (value, n) in values.iter().zip(counts(&s.metrics)) {
                    let n = n.load(Relaxed);
                    if n > 0 {
                        counter(m, &s.labels(Some((key, value))), n)?;
                    }
                }
                Ok(())
            },
        )
    }

    fn histogram<const N: usize>(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        histogram: fn(&VersionMetrics) -> &Histogram<N>,
    ) -> fmt::Result {
        family(
            enc,
            name,
            help,
            Some(&Unit::Seconds),
            MetricType::Histogram,
            &self.series,
            |s, m| {
                let labels = s.labels(None);
                histogram(&s.metrics).encode(&mut m.encode_family(&labels)?)
            },
        )
    }
}

impl Series {
    fn labels(&self, extra: Option<(&'static str, &'static str)>) -> Labels<'_> {
        Labels {
            function: &self.function,
            version: self.version,
            extra,
        }
    }
}

fn single(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    value: u64,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, metric_type)?;
    match metric_type {
        MetricType::Counter => m.encode_counter::<NoLabelSet, u64, u64>(&value, None),
        _ => m.encode_gauge(&value),
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let enc = &mut enc;
        self.per_version_counter(
            enc,
            "faas_invocations",
            "Invocations that ran (throttled requests are not counted), by function and version.",
            |m| m.invocations.load(Relaxed),
        )?;
        self.per_version_counter(
            enc,
            "faas_errors",
            "Invocations that failed: trapped, exceeded their memory limit, sent no response or could not start. Timeouts are counted in faas_timeouts_total instead.",
            VersionMetrics::errors,
        )?;
        self.per_version_counter(
            enc,
            "faas_timeouts",
            "Invocations stopped at their timeout.",
            |m| m.failures[TIMEOUT].load(Relaxed),
        )?;
        self.per_label_counter(
            enc,
            (
                "wisp_invocation_failures",
                "Failed invocations by reason: trap, memory_limit, timeout, no_response or unavailable. Reasons that never happened are left out.",
                "reason",
            ),
            &REASONS,
            |m| &m.failures,
        )?;
        self.per_version_counter(
            enc,
            "wisp_throttles",
            "Requests refused with 429: the version was at its concurrency limit (and its queue full or its wait over), or the server at its instance or instance-memory capacity.",
            |m| m.throttles.load(Relaxed),
        )?;
        self.per_version_counter(
            enc,
            "faas_coldstarts",
            "Cold starts: requests that had to load their component into memory first (a request refused with 429 after loading counts too).",
            |m| m.cold_starts.load(Relaxed),
        )?;
        self.histogram(
            enc,
            "faas_invoke_duration",
            "Duration of invocations that ran, from their arrival at the runtime (so including any wait in the queue and the loading of a cold start) to the end of the response body or the failure.",
            |m| &m.duration,
        )?;
        self.histogram(
            enc,
            "faas_init_duration",
            "Time cold starts spent loading the component into memory.",
            |m| &m.init,
        )?;
        self.histogram(
            enc,
            "wisp_instantiate_duration",
            "Time spent creating an instance from the loaded component (pooling allocator and copy-on-write memory image), for requests that created one on their path (not for instances made ahead of a busy version's next request).",
            |m| &m.instantiate,
        )?;
        self.per_label_counter(
            enc,
            (
                "wisp_http_responses",
                "Responses functions sent, by status class (1xx to 5xx). Classes never sent are left out.",
                "status_class",
            ),
            &STATUS_CLASSES,
            |m| &m.responses,
        )?;
        let versions = &self.runtime.versions;
        family(
            enc,
            "wisp_concurrency_in_use",
            "Invocations running now, by function and version (a version the runtime does not report has none).",
            None,
            MetricType::Gauge,
            versions,
            |g, m| {
                let labels = Labels {
                    function: &g.function,
                    version: g.version,
                    extra: None,
                };
                gauge(m, &labels, g.in_use)
            },
        )?;
        family(
            enc,
            "wisp_queue_depth",
            "Requests waiting for a concurrency slot now, by function and version (a version the runtime does not report has none).",
            None,
            MetricType::Gauge,
            versions,
            |g, m| {
                let labels = Labels {
                    function: &g.function,
                    version: g.version,
                    extra: None,
                };
                gauge(m, &labels, g.queued)
            },
        )?;
        let rt = &self.runtime;
        single(
            enc,
            "wisp_loaded_components",
            "Components loaded in memory, ready to instantiate.",
            None,
            MetricType::Gauge,
            rt.loaded_components,
        )?;
        single(
            enc,
            "wisp_loaded_component",
            "Bytes of compiled code the loaded components map.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            rt.loaded_bytes,
        )?;
        single(
            enc,
            "wisp_instances",
            "Instances alive now, across all functions, including idle reusable ones.",
            None,
            MetricType::Gauge,
            rt.instances,
        )?;
        single(
            enc,
            "wisp_instance_memory",
            "Sum of the memory limits of the instances alive now.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            rt.instance_memory_bytes,
        )?;
        single(
            enc,
            "wisp_log_records_dropped",
            "Captured log records dropped because the log writer fell behind.",
            None,
            MetricType::Counter,
            self.counters.dropped_logs,
        )?;
        single(
            enc,
            "wisp_code_swept_files",
            "Files of code that nothing refers to any more (uploaded components, compiled code) removed by the sweep since the server started.",
            None,
            MetricType::Counter,
            self.counters.swept.files,
        )?;
        single(
            enc,
            "wisp_code_swept",
            "Bytes of code that nothing refers to any more removed by the sweep since the server started.",
            Some(&Unit::Bytes),
            MetricType::Counter,
            self.counters.swept.bytes,
        )?;
        family(
            enc,
            "wisp_trigger_up",
            "1 while a trigger is active (connected and delivering), 0 while it is starting, degraded or disabled; by trigger and source kind.",
            None,
            MetricType::Gauge,
            &self.triggers,
            |t, m| {
                let up = u64::from(t.status.state == wisp_triggers::State::Active);
                m.encode_family(&TriggerLabels {
                    sample: t,
                    outcome: None,
                })?
                .encode_gauge(&up)
            },
        )?;
        family(
            enc,
            "wisp_trigger_events",
            "Events a trigger handled since the server started, by outcome: delivered (queued for the function), failed (not queued, or invalid), filtered (dropped by the filters).",
            None,
            MetricType::Counter,
            &self.triggers,
            |t, m| {
                let s = &t.status;
                for (outcome, n) in [
                    ("delivered", s.delivered),
                    ("failed", s.failed),
                    ("filtered", s.filtered),
                ] {
                    m.encode_family(&TriggerLabels {
                        sample: t,
                        outcome: Some(outcome),
                    })?
                    .encode_counter::<NoLabelSet, u64, u64>(&n, None)?;
                }
                Ok(())
            },
        )
    }
}

/// Prometheus metrics in the OpenMetrics text format (see docs/metrics.md).
/// Open like `/v1/health`: no token needed.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Every metric, in the OpenMetrics 1.0 text format",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)))]
pub async fn scrape(State(app): State<AppState>) -> Response {
    // Encoding thousands of series is CPU work; keep it off the I/O threads.
    let encoded = tokio::task::spawn_blocking(move || {
        let runtime = app.runtime_state.snapshot();
        let telemetry = &app.telemetry;
        let triggers = app
            .triggers
            .statuses()
            .into_iter()
            .map(|(name, kind, status)| TriggerSample { name, kind, status })
            .collect();
        telemetry.metrics().encode_with_triggers(
            runtime,
            ServerCounters {
                dropped_logs: telemetry.dropped_logs(),
                swept: app.artifacts.swept_total(),
            },
            triggers,
        )
    })
    .await;
    match encoded {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        _ => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "could not encode the metrics",
        )
        .into_response(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::Utc;
    use std::collections::{BTreeMap, HashSet};
    use wisp_core::{LogCapture, VersionGauges};

    pub(crate) fn name(s: &str) -> FunctionName {
        s.parse().unwrap()
    }

    #[test]
    fn bucket_bounds_step_1_2_5_to_their_ends() {
        const US: u64 = 1_000;
        let seconds = |b: &[u64]| -> Vec<f64> { b.iter().map(|&n| n as f64 / S as f64).collect() };
        assert_eq!(
            seconds(&INSTANTIATE_BOUNDS_NS[..4]),
            [1e-6, 2.5e-6, 5e-6, 1e-5]
        );
        assert_eq!(INSTANTIATE_BOUNDS_NS[15], 100_000 * US);
        assert_eq!(INIT_BOUNDS_NS[0], 100 * US);
        assert_eq!(INIT_BOUNDS_NS[15], 10 * S);
        assert_eq!(INVOKE_BOUNDS_NS[..3], [50 * US, 100 * US, 250 * US]);
        assert_eq!(
            INVOKE_BOUNDS_NS[15..],
            [5 * S, 10 * S, 30 * S, 60 * S, u64::MAX]
        );
        for b in [
            &INVOKE_BOUNDS_NS[..],
            &INIT_BOUNDS_NS,
            &INSTANTIATE_BOUNDS_NS,
        ] {
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
            assert_eq!(b.last(), Some(&u64::MAX));
        }
    }

    pub(crate) fn rec(
        function: &str,
        version: VersionId,
        duration: Duration,
        init: Option<Duration>,
        outcome: InvocationOutcome,
    ) -> InvocationRecord {
        InvocationRecord {
            request_id: "r".into(),
            function: name(function),
            version,
            started_at: Utc::now(),
            duration,
            cold_start: init.is_some(),
            init_duration: init,
            // A cold start here also created its instance, in 20 µs.
            instantiate_duration: init.map(|_| Duration::from_micros(20)),
            outcome,
            stdout: LogCapture::default(),
            stderr: LogCapture::default(),
        }
    }

    pub(crate) fn ok(status: u16) -> InvocationOutcome {
        InvocationOutcome::Completed { status }
    }

    fn failed(e: InvokeError) -> InvocationOutcome {
        InvocationOutcome::Failed(e)
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// A parsed exposition: every sample, checked for syntax, and checked
    /// to belong to a family with HELP and TYPE.
    struct Exposition(Vec<(String, BTreeMap<String, String>, f64)>);

    impl Exposition {
        fn parse(text: &str) -> Exposition {
            assert!(text.ends_with("# EOF\n"), "{text}");
            let ident = |s: &str| {
                !s.is_empty()
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !s.starts_with(|c: char| c.is_ascii_digit())
            };
            let mut helped = HashSet::new();
            let mut typed = HashSet::new();
            let mut samples = Vec::new();
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("# HELP ") {
                    let (name, help) = rest.split_once(' ').expect(line);
                    assert!(help.len() > 10 && help.ends_with('.'), "{line}");
                    helped.insert(name.to_string());
                } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let (name, kind) = rest.split_once(' ').expect(line);
                    assert!(helped.contains(name), "TYPE before HELP: {line}");
                    assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                    typed.insert(name.to_string());
                } else if line.starts_with("# UNIT ") || line == "# EOF" {
                } else {
                    assert!(!line.starts_with('#'), "unknown comment: {line}");
                    let (series, value) = line.rsplit_once(' ').expect(line);
                    let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
                    let (name, labels) = match series.split_once('{') {
                        Some((name, rest)) => {
                            let body = rest.strip_suffix('}').expect(line);
                            let labels = body
                                .split(',')
                                .map(|pair| {
                                    let (k, v) = pair.split_once('=').expect(line);
                                    assert!(ident(k), "{line}");
                                    let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                                    (k.to_string(), v.expect(line).to_string())
                                })
                                .collect();
                            (name, labels)
                        }
                        None => (series, BTreeMap::new()),
                    };
                    assert!(ident(name), "{line}");
                    let family = ["_total", "_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                        .unwrap_or(name);
                    assert!(typed.contains(family), "no TYPE for {line}");
                    samples.push((name.to_string(), labels, value));
                }
            }
            Exposition(samples)
        }

        /// The value of the sample with exactly this name and label set.
        fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            let want: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            self.0
                .iter()
                .find(|(n, l, _)| n == name && *l == want)
                .map(|(_, _, v)| *v)
        }
    }

    fn labels<'a>(f: &'a str, v: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut out = vec![("function", f), ("version", v)];
        out.extend_from_slice(extra);
        out
    }

    #[test]
    fn records_map_to_metrics() {
        let m = Metrics::default();
        let latest = VersionId::Latest;
        let v3 = VersionId::Published(3);
        let trap = || {
            failed(InvokeError::Trapped {
                message: "x".into(),
            })
        };
        m.record(&rec("hello", latest, us(30), Some(us(1500)), ok(200)));
        m.record(&rec("hello", latest, us(3000), None, ok(200)));
        m.record(&rec("hello", latest, Duration::from_secs(2), None, ok(404)));
        m.record(&rec("panic", latest, us(200), Some(us(800)), trap()));
        m.record(&rec("panic", latest, us(200), None, trap()));
        let timeout = failed(InvokeError::Timeout { timeout_ms: 200 });
        m.record(&rec("sleep", v3, Duration::from_millis(200), None, timeout));
        let throttled = failed(InvokeError::Throttled { limit: 1 });
        m.record(&rec("sleep", v3, us(5), None, throttled));
        // Refused for capacity after the load: a cold start, not an invocation.
        let overloaded = failed(InvokeError::Overloaded {
            resource: "instance".into(),
        });
        m.record(&rec("sleep", v3, us(5), Some(us(300)), overloaded));
        for e in [
            InvokeError::MemoryLimit { memory_mib: 1 },
            InvokeError::NoResponse {
                message: "x".into(),
            },
            InvokeError::Unavailable {
                message: "x".into(),
            },
        ] {
            m.record(&rec("misc", latest, us(10), None, failed(e)));
        }
        let x = Exposition::parse(&m.encode(RuntimeSnapshot::default(), 0).unwrap());
        let hello = labels("hello", "latest", &[]);
        let panic = labels("panic", "latest", &[]);
        let sleep = labels("sleep", "3", &[]);
        let misc = labels("misc", "latest", &[]);

        assert_eq!(x.get("faas_invocations_total", &hello), Some(3.0));
        assert_eq!(x.get("faas_invocations_total", &panic), Some(2.0));
        // Requests refused with 429 are not invocations.
        assert_eq!(x.get("faas_invocations_total", &sleep), Some(1.0));
        assert_eq!(x.get("faas_invocations_total", &misc), Some(3.0));

        assert_eq!(x.get("faas_errors_total", &hello), Some(0.0));
        assert_eq!(x.get("faas_errors_total", &panic), Some(2.0));
        // Timeouts are counted apart from errors.
        assert_eq!(x.get("faas_errors_total", &sleep), Some(0.0));
        assert_eq!(x.get("faas_errors_total", &misc), Some(3.0));
        assert_eq!(x.get("faas_timeouts_total", &sleep), Some(1.0));
        assert_eq!(x.get("faas_timeouts_total", &panic), Some(0.0));

        let failures = |f: &str, v: &str, reason: &str| {
            x.get(
                "wisp_invocation_failures_total",
                &labels(f, v, &[("reason", reason)]),
            )
        };
        assert_eq!(failures("panic", "latest", "trap"), Some(2.0));
        assert_eq!(
            failures("panic", "latest", "timeout"),
            None,
            "zeros are left out"
        );
        assert_eq!(failures("sleep", "3", "timeout"), Some(1.0));
        assert_eq!(failures("misc", "latest", "memory_limit"), Some(1.0));
        assert_eq!(failures("misc", "latest", "no_response"), Some(1.0));
        assert_eq!(failures("misc", "latest", "unavailable"), Some(1.0));

        assert_eq!(x.get("wisp_throttles_total", &sleep), Some(2.0));
        assert_eq!(x.get("wisp_throttles_total", &hello), Some(0.0));
        assert_eq!(x.get("faas_coldstarts_total", &hello), Some(1.0));
        assert_eq!(x.get("faas_coldstarts_total", &panic), Some(1.0));
        assert_eq!(x.get("faas_coldstarts_total", &sleep), Some(1.0));

        let class = |c: &str| {
            x.get(
                "wisp_http_responses_total",
                &labels("hello", "latest", &[("status_class", c)]),
            )
        };
        assert_eq!(class("2xx"), Some(2.0));
        assert_eq!(class("4xx"), Some(1.0));
        assert_eq!(class("5xx"), None);

        // Durations 30 µs, 3 ms and 2 s, in cumulative buckets.
        let bucket = |name: &str, le: &str| x.get(name, &labels("hello", "latest", &[("le", le)]));
        let invoke = "faas_invoke_duration_seconds_bucket";
        assert_eq!(
            x.get("faas_invoke_duration_seconds_count", &hello),
            Some(3.0)
        );
        let sum = x.get("faas_invoke_duration_seconds_sum", &hello).unwrap();
        assert!((sum - 2.00303).abs() < 1e-9, "{sum}");
        assert_eq!(bucket(invoke, "0.00005"), Some(1.0));
        assert_eq!(bucket(invoke, "0.001"), Some(1.0));
        assert_eq!(bucket(invoke, "0.005"), Some(2.0));
        assert_eq!(bucket(invoke, "1.0"), Some(2.0));
        assert_eq!(bucket(invoke, "2.5"), Some(3.0));
        assert_eq!(bucket(invoke, "60.0"), Some(3.0));
        assert_eq!(bucket(invoke, "+Inf"), Some(3.0));
        // Throttles have no duration.
        assert_eq!(
            x.get("faas_invoke_duration_seconds_count", &sleep),
            Some(1.0)
        );

        let init = "faas_init_duration_seconds_bucket";
        assert_eq!(x.get("faas_init_duration_seconds_count", &hello), Some(1.0));
        assert_eq!(
            x.get("faas_init_duration_seconds_sum", &hello),
            Some(0.0015)
        );
        assert_eq!(bucket(init, "0.0001"), Some(0.0));
        assert_eq!(bucket(init, "0.001"), Some(0.0));
        assert_eq!(bucket(init, "0.0025"), Some(1.0));
        assert_eq!(bucket(init, "+Inf"), Some(1.0));
        assert_eq!(x.get("faas_init_duration_seconds_count", &sleep), Some(1.0));
    }

    #[test]
    fn bucket_bounds_are_inclusive() {
        let m = Metrics::default();
        for d in [us(50), us(51), Duration::from_secs(3600)] {
            m.record(&rec("f", VersionId::Latest, d, None, ok(200)));
        }
        let text = m.encode(RuntimeSnapshot::default(), 0).unwrap();
        let x = Exposition::parse(&text);
        let b = |le: &str| {
            x.get(
                "faas_invoke_duration_seconds_bucket",
                &labels("f", "latest", &[("le", le)]),
            )
        };
        assert_eq!(b("0.00005"), Some(1.0));
        assert_eq!(b("0.0001"), Some(2.0));
        assert_eq!(b("60.0"), Some(2.0));
        assert_eq!(b("+Inf"), Some(3.0));
        let buckets =
            x.0.iter()
                .filter(|(n, _, _)| n == "faas_invoke_duration_seconds_bucket")
                .count();
        assert_eq!(buckets, INVOKE_BOUNDS_NS.len());
        // Statuses outside 100..=599 count as invocations, in no class.
        m.record(&rec("f", VersionId::Latest, us(1), None, ok(999)));
        let x = Exposition::parse(&m.encode(RuntimeSnapshot::default(), 0).unwrap());
        assert_eq!(
            x.get("faas_invocations_total", &labels("f", "latest", &[])),
            Some(4.0)
        );
        let classes: f64 =
            x.0.iter()
                .filter(|(n, _, _)| n == "wisp_http_responses_total")
                .map(|(_, _, v)| v)
                .sum();
        assert_eq!(classes, 3.0);
    }

    #[test]
    fn runtime_gauges_come_from_the_snapshot() {
        let snapshot = RuntimeSnapshot {
            loaded_components: 4,
            loaded_bytes: 123_456,
            instances: 7,
            instance_memory_bytes: 7 << 20,
            versions: vec![
                VersionGauges {
                    function: name("zeta"),
                    version: VersionId::Published(2),
                    in_use: 3,
                    queued: 5,
                },
                VersionGauges {
                    function: name("alpha"),
                    version: VersionId::Latest,
                    in_use: 1,
                    queued: 0,
                },
            ],
        };
        let text = Metrics::default().encode(snapshot, 9).unwrap();
        let x = Exposition::parse(&text);
        let zeta = labels("zeta", "2", &[]);
        let alpha = labels("alpha", "latest", &[]);
        assert_eq!(x.get("wisp_concurrency_in_use", &zeta), Some(3.0));
        assert_eq!(x.get("wisp_queue_depth", &zeta), Some(5.0));
        assert_eq!(x.get("wisp_concurrency_in_use", &alpha), Some(1.0));
        assert_eq!(x.get("wisp_queue_depth", &alpha), Some(0.0));
        assert_eq!(x.get("wisp_loaded_components", &[]), Some(4.0));
        assert_eq!(x.get("wisp_loaded_component_bytes", &[]), Some(123_456.0));
        assert_eq!(x.get("wisp_instances", &[]), Some(7.0));
        assert_eq!(
            x.get("wisp_instance_memory_bytes", &[]),
            Some((7 << 20) as f64)
        );
        assert_eq!(x.get("wisp_log_records_dropped_total", &[]), Some(9.0));
        let swept = Metrics::default()
            .encode_with_triggers(
                RuntimeSnapshot::default(),
                ServerCounters {
                    dropped_logs: 0,
                    swept: wisp_core::Swept {
                        files: 3,
                        bytes: 4096,
                    },
                },
                Vec::new(),
            )
            .unwrap();
        let swept = Exposition::parse(&swept);
        assert_eq!(swept.get("wisp_code_swept_files_total", &[]), Some(3.0));
        assert_eq!(swept.get("wisp_code_swept_bytes_total", &[]), Some(4096.0));
        // Sorted by function, for a stable output.
        let a = text.find(r#"wisp_queue_depth{function="alpha""#).unwrap();
        let z = text.find(r#"wisp_queue_depth{function="zeta""#).unwrap();
        assert!(a < z);
    }

    #[test]
    fn every_metric_is_described_even_before_any_invocation() {
        let text = Metrics::default()
            .encode(RuntimeSnapshot::default(), 0)
            .unwrap();
        Exposition::parse(&text);
        let expected = [
            ("faas_invocations", "counter"),
            ("faas_errors", "counter"),
            ("faas_timeouts", "counter"),
            ("wisp_invocation_failures", "counter"),
            ("wisp_throttles", "counter"),
            ("faas_coldstarts", "counter"),
            ("faas_invoke_duration_seconds", "histogram"),
            ("faas_init_duration_seconds", "histogram"),
            ("wisp_instantiate_duration_seconds", "histogram"),
            ("wisp_http_responses", "counter"),
            ("wisp_concurrency_in_use", "gauge"),
            ("wisp_queue_depth", "gauge"),
            ("wisp_loaded_components", "gauge"),
            ("wisp_loaded_component_bytes", "gauge"),
            ("wisp_instances", "gauge"),
            ("wisp_instance_memory_bytes", "gauge"),
            ("wisp_log_records_dropped", "counter"),
            ("wisp_code_swept_files", "counter"),
            ("wisp_code_swept_bytes", "counter"),
            ("wisp_trigger_up", "gauge"),
            ("wisp_trigger_events", "counter"),
        ];
        for (name, kind) in expected {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}\n{text}"
            );
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
        assert_eq!(text.matches("# TYPE ").count(), expected.len(), "{text}");
    }

    #[test]
    fn trigger_states_and_counters() {
        let status = |state, delivered, failed, filtered| wisp_triggers::Status {
            state,
            last_error: None,
            last_error_at: None,
            delivered,
            failed,
            filtered,
        };
        let samples = vec![
            TriggerSample {
                name: "orders".into(),
                kind: "nats",
                status: status(wisp_triggers::State::Degraded, 5, 2, 1),
            },
            TriggerSample {
                name: "nightly".into(),
                kind: "cron",
                status: status(wisp_triggers::State::Active, 3, 0, 0),
            },
        ];
        let text = Metrics::default()
            .encode_with_triggers(
                RuntimeSnapshot::default(),
                ServerCounters::default(),
                samples,
            )
            .unwrap();
        let x = Exposition::parse(&text);
        let orders = [("trigger", "orders"), ("kind", "nats")];
        assert_eq!(x.get("wisp_trigger_up", &orders), Some(0.0));
        assert_eq!(
            x.get(
                "wisp_trigger_up",
                &[("trigger", "nightly"), ("kind", "cron")]
            ),
            Some(1.0)
        );
        for (outcome, n) in [("delivered", 5.0), ("failed", 2.0), ("filtered", 1.0)] {
            let mut labels = orders.to_vec();
            labels.push(("outcome", outcome));
            assert_eq!(
                x.get("wisp_trigger_events_total", &labels),
                Some(n),
                "{outcome}"
            );
        }
        // Sorted by trigger name.
        assert!(
            text.find("trigger=\"nightly\"").unwrap() < text.find("trigger=\"orders\"").unwrap()
        );
    }

    #[test]
    fn forgetting_removes_series() {
        let m = Metrics::default();
        for (f, v) in [
            ("a", VersionId::Latest),
            ("a", VersionId::Published(1)),
            ("b", VersionId::Latest),
        ] {
            m.record(&rec(f, v, us(10), None, ok(200)));
        }
        let count = |m: &Metrics, f: &str, v: &str| {
            let x = Exposition::parse(&m.encode(RuntimeSnapshot::default(), 0).unwrap());
            x.get("faas_invocations_total", &labels(f, v, &[]))
        };
        m.forget_version(&name("a"), VersionId::Published(1));
        assert_eq!(count(&m, "a", "latest"), Some(1.0));
        assert_eq!(count(&m, "a", "1"), None);
        m.forget_function(&name("a"));
        assert_eq!(count(&m, "a", "latest"), None);
        assert_eq!(count(&m, "b", "latest"), Some(1.0));
        let text = m.encode(RuntimeSnapshot::default(), 0).unwrap();
        assert!(!text.contains(r#"function="a""#), "{text}");
        // A function created again starts from zero.
        m.record(&rec("a", VersionId::Latest, us(10), None, ok(200)));
        assert_eq!(count(&m, "a", "latest"), Some(1.0));
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let m = Arc::new(Metrics::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        let f = if i % 2 == 0 { "even" } else { "odd" };
                        let v = VersionId::Published(t + 1);
                        m.record(&rec(f, v, us(10), None, ok(200)));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let x = Exposition::parse(&m.encode(RuntimeSnapshot::default(), 0).unwrap());
        for t in 1..=4 {
            for f in ["even", "odd"] {
                let v = t.to_string();
                let l = labels(f, &v, &[]);
                assert_eq!(x.get("faas_invocations_total", &l), Some(500.0), "{l:?}");
                assert_eq!(x.get("faas_invoke_duration_seconds_count", &l), Some(500.0));
            }
        }
    }
}
