//! What the runtime holds in memory, and for how long: loaded components
//! (scale from zero on first use, back to zero when idle, bounded by an LRU
//! cap by count and bytes), per-version admission (concurrency permits and
//! a bounded wait queue), idle reusable instances, and the server-wide
//! instance and instance-memory capacity.

use crate::capture::Capture;
use crate::host::Host;
use crate::{Inner, RuntimeConfig, lock};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wisp_core::{Digest, FastMap, FunctionName, RuntimeSnapshot, VersionGauges, VersionId};

/// A component ready to instantiate.
pub(crate) struct Loaded {
    pub(crate) pre: ProxyPre<Host>,
    /// Size of its compiled code in memory.
    pub(crate) bytes: usize,
}

struct Slot {
    cell: OnceCell<Result<Arc<Loaded>, String>>,
    /// Shared with the instances of the component, which keep it in use.
    last_used: Arc<AtomicU64>,
}

pub(crate) type VersionKey = (FunctionName, VersionId);

/// Most retired host states kept for reuse.
const MAX_SPARES: usize = 64;

/// The host state of a retired instance, reset: its WASI context (with the
/// capture streams wired in) is built once and serves many instances.
pub(crate) struct Spare {
    pub(crate) host: Host,
    pub(crate) stdout: Capture,
    pub(crate) stderr: Capture,
}

/// Instances alive as the gauges report them. An instance stops counting
/// when it is done with, which is before its store is torn down: teardown
/// may happen after the response has left, and a scrape right after a
/// response sees the instance gone.
#[derive(Default)]
pub(crate) struct Census {
    instances: AtomicU64,
    memory_mib: AtomicU64,
}

/// One instance's place in the [`Census`], given up when dropped.
pub(crate) struct Counted {
    census: Arc<Census>,
    memory_mib: u32,
}

impl Counted {
    pub(crate) fn new(census: &Arc<Census>, memory_mib: u32) -> Self {
        census.instances.fetch_add(1, Ordering::SeqCst);
        census
            .memory_mib
            .fetch_add(memory_mib as u64, Ordering::SeqCst);
        Counted {
            census: census.clone(),
            memory_mib,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.census.instances.fetch_sub(1, Ordering::SeqCst);
        self.census
            .memory_mib
            .fetch_sub(self.memory_mib as u64, Ordering::SeqCst);
    }
}

/// An instantiated component and the capacity it holds.
pub(crate) struct LiveInstance {
    pub(crate) store: Store<Host>,
    /// `None` until the first request instantiates it (or it is made ahead
    /// of its first request, for a busy version).
    pub(crate) proxy: Option<Proxy>,
    /// The component it is (or will be) instantiated from.
    pub(crate) loaded: Arc<Loaded>,
    pub(crate) served: u32,
    pub(crate) digest: Digest,
    /// The memory limit it was made with: an instance serves only requests
    /// of the same limit.
    pub(crate) memory_mib: u32,
    /// Last use of the component it was made from: reusing the instance
    /// counts as using the component.
    pub(crate) component_used: Arc<AtomicU64>,
    pub(crate) stdout: Capture,
    pub(crate) stderr: Capture,
    pub(crate) _slot: OwnedSemaphorePermit,
    pub(crate) _memory: OwnedSemaphorePermit,
    /// Taken when the instance is done with (see [`Census`]).
    pub(crate) counted: Option<Counted>,
}

/// Admission and idle instances of one version.
pub(crate) struct VersionState {
    pub(crate) limit: u32,
    /// The function's share of the CPU, one for all its versions.
    pub(crate) tenant: Arc<crate::lanes::Tenant>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) queued: AtomicU64,
    idle: Mutex<Vec<(LiveInstance, u64)>>,
    last_used: AtomicU64,
    /// When the request before the last one came, and how many came: a
    /// version with two requests within [`BUSY_WITHIN_MS`] is busy.
    before_last: AtomicU64,
    requests: AtomicU64,
}

/// Two requests of a version this close together (ms) make it busy: when
/// it retires a fresh instance, the next one is made ahead of the next
/// request.
pub(crate) const BUSY_WITHIN_MS: u64 = 1000;

/// An instance made ahead of a request and not used is ended after this
/// long (ms), or after the idle timeout if that is shorter.
pub(crate) const PREMADE_IDLE_MS: u64 = 30_000;

impl VersionState {
    /// An idle instance of `digest` with `memory_mib`, to reuse (or to use
    /// first, when it was made ahead), if any: the one used last, before
    /// any made ahead, so that requests in sequence go on with the same
    /// instance and an instance made ahead stays for a request that finds
    /// none.
    pub(crate) fn take_idle(&self, digest: &Digest, memory_mib: u32) -> Option<LiveInstance> {
        let mut idle = lock(&self.idle);
        let fits = |inst: &LiveInstance| inst.digest == *digest && inst.memory_mib == memory_mib;
        let i = idle
            .iter()
            .rposition(|(inst, _)| fits(inst) && inst.served > 0)
            .or_else(|| idle.iter().rposition(|(inst, _)| fits(inst)))?;
        // In order: the last one is the one used last.
        Some(idle.remove(i).0)
    }

    /// Ends the instances made ahead (never used) that a request with
    /// `digest` and `memory_mib` could not take.
    pub(crate) fn end_premade_unlike(&self, digest: &Digest, memory_mib: u32) {
        lock(&self.idle).retain(|(inst, _)| {
            inst.served > 0 || (inst.digest == *digest && inst.memory_mib == memory_mib)
        });
    }

    /// Whether an instance of `digest` with `memory_mib` is waiting.
    pub(crate) fn has_idle(&self, digest: &Digest, memory_mib: u32) -> bool {
        lock(&self.idle)
            .iter()
            .any(|(inst, _)| inst.digest == *digest && inst.memory_mib == memory_mib)
    }

    /// Whether the last two requests came within [`BUSY_WITHIN_MS`].
    pub(crate) fn busy(&self) -> bool {
        self.requests.load(Ordering::Relaxed) >= 2
            && self
                .last_used
                .load(Ordering::Relaxed)
                .saturating_sub(self.before_last.load(Ordering::Relaxed))
                <= BUSY_WITHIN_MS
    }

    /// Keeps an instance for the next request.
    pub(crate) fn put_idle(&self, instance: LiveInstance, now: u64) {
        lock(&self.idle).push((instance, now));
    }

    fn in_use(&self) -> u64 {
        (self.limit as u64).saturating_sub(self.permits.available_permits() as u64)
    }
}

/// Counts a waiting request for as long as it waits, even if cancelled.
pub(crate) struct Queued<'a>(&'a AtomicU64);

impl<'a> Queued<'a> {
    pub(crate) fn enter(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Queued(counter)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(crate) struct Pool {
    start: Instant,
    loaded: Mutex<FastMap<Digest, Arc<Slot>>>,
    pinned: Mutex<HashMap<VersionKey, Digest>>,
    /// By function, then version, so that the request path looks a version
    /// up without building (and allocating) an owned key.
    versions: Mutex<FastMap<FunctionName, FastMap<VersionId, Arc<VersionState>>>>,
    /// Host state of retired fresh instances, to build the next ones from.
    spares: Mutex<Vec<Spare>>,
    /// What the instance gauges report.
    pub(crate) census: Arc<Census>,
    pub(crate) instances: Arc<Semaphore>,
    pub(crate) memory_mib: Arc<Semaphore>,
    max_instances: u32,
    max_memory_mib: u32,
    idle_ms: u64,
    max_loaded: usize,
    max_loaded_bytes: usize,
}

impl Pool {
    pub(crate) fn new(config: &RuntimeConfig) -> Self {
        let max_instances = config.max_instances.max(1);
        let max_memory_mib = config.max_instance_memory_mib.max(1);
        Pool {
            start: Instant::now(),
            loaded: Mutex::new(FastMap::default()),
            pinned: Mutex::new(HashMap::new()),
            versions: Mutex::new(FastMap::default()),
            spares: Mutex::new(Vec::new()),
            census: Arc::default(),
            instances: Arc::new(Semaphore::new(max_instances as usize)),
            memory_mib: Arc::new(Semaphore::new(max_memory_mib as usize)),
            max_instances,
            max_memory_mib,
            idle_ms: config.idle_timeout.as_millis() as u64,
            max_loaded: config.max_loaded_components.max(1),
            max_loaded_bytes: config.max_loaded_bytes,
        }
    }

    /// Host state left by a retired instance, if any.
    pub(crate) fn take_spare(&self) -> Option<Spare> {
        lock(&self.spares).pop()
    }

    /// Keeps the host state of a retired instance for the next one (up to
    /// [`MAX_SPARES`]).
    pub(crate) fn put_spare(&self, spare: Spare) {
        let mut spares = lock(&self.spares);
        if spares.len() < MAX_SPARES {
            spares.push(spare);
        }
    }

    /// Ends the idle reusable instance, of any version, that has waited
    /// longest, so that its instance slot and memory serve a request that
    /// needs a new instance. False when no instance is idle.
    pub(crate) fn evict_idle(&self) -> bool {
        let oldest = lock(&self.versions)
            .values()
            .flat_map(|of_function| of_function.values())
            .filter_map(|state| {
                let since = lock(&state.idle).iter().map(|(_, since)| *since).min()?;
                Some((since, state.clone()))
            })
            .min_by_key(|(since, _)| *since);
        let Some((since, state)) = oldest else {
            return false;
        };
        let evicted = {
            let mut idle = lock(&state.idle);
            idle.iter()
                .position(|(_, t)| *t == since)
                .map(|i| idle.swap_remove(i).0)
        };
        // Dropped outside the lock: the store gives its pool slot back,
        // then the capacity permits go.
        drop(evicted);
        true
    }

    /// Milliseconds since the pool was created (a monotonic clock).
    pub(crate) fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Whether an instance that no longer counts still holds its
    /// capacity (its store is being torn down).
    pub(crate) fn tearing_down(&self) -> bool {
        let held = self.max_instances as u64 - self.instances.available_permits() as u64;
        held > self.census.instances.load(Ordering::SeqCst)
    }

    pub(crate) fn max_memory_mib(&self) -> u32 {
        self.max_memory_mib
    }

    pub(crate) fn loaded_count(&self) -> usize {
        lock(&self.loaded)
            .values()
            .filter(|s| matches!(s.cell.get(), Some(Ok(_))))
            .count()
    }

    /// Admission state of a version, created on first use. A changed
    /// `max_concurrency` (of `latest`) starts a fresh state; invocations
    /// already running finish under the old one.
    pub(crate) fn version(
        &self,
        function: &FunctionName,
        version: VersionId,
        limit: u32,
    ) -> Arc<VersionState> {
        let now = self.now();
        let mut versions = lock(&self.versions);
        // Looked up by reference first: the request path allocates nothing
        // for a version it has seen before.
        let state = match versions.get_mut(function) {
            Some(of_function) => {
                if !of_function.contains_key(&version) {
                    let tenant = of_function.values().next().map(|s| s.tenant.clone());
                    of_function.insert(version, new_state(limit, tenant.unwrap_or_default()));
                }
                of_function.get_mut(&version).expect("inserted above")
            }
            None => versions
                .entry(function.clone())
                .or_default()
                .entry(version)
                .or_insert_with(|| new_state(limit, Arc::default())),
        };
        if state.limit != limit {
            *state = new_state(limit, state.tenant.clone());
        }
        let before = state.last_used.swap(now, Ordering::Relaxed);
        state.before_last.store(before, Ordering::Relaxed);
        state.requests.fetch_add(1, Ordering::Relaxed);
        state.clone()
    }

    /// The loaded component for `digest`, loading it on first use (single
    /// flight), with its last-use clock (for its instances to keep it
    /// loaded). Returns how long loading took when this call loaded it.
    pub(crate) async fn load(
        &self,
        inner: &Arc<Inner>,
        digest: &Digest,
    ) -> Result<(Arc<Loaded>, Arc<AtomicU64>, Option<Duration>), String> {
        let slot = {
            let mut loaded = lock(&self.loaded);
            match loaded.get(digest) {
                Some(slot) => slot.clone(),
                None => loaded
                    .entry(digest.clone())
                    .or_insert_with(|| {
                        Arc::new(Slot {
                            cell: OnceCell::new(),
                            last_used: Arc::new(AtomicU64::new(0)),
                        })
                    })
                    .clone(),
            }
        };
        slot.last_used.store(self.now(), Ordering::Relaxed);
        let mut took = None;
        let result = slot
            .cell
            .get_or_init(|| async {
                let started = Instant::now();
                let result = inner.clone().load(digest.clone()).await.map(Arc::new);
                took = Some(started.elapsed());
                result
            })
            .await
            .clone();
        match result {
            Ok(loaded) => {
                if took.is_some() {
                    self.enforce_caps();
                }
                Ok((loaded, slot.last_used.clone(), took))
            }
            Err(e) => {
                // Failures are not cached: the next request tries again.
                let mut loaded = lock(&self.loaded);
                if loaded.get(digest).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                    loaded.remove(digest);
                }
                Err(e)
            }
        }
    }

    fn pinned_digests(&self) -> HashSet<Digest> {
        lock(&self.pinned).values().cloned().collect()
    }

    /// Keeps `digest` loaded for the version (or stops keeping it, with `None`).
    pub(crate) fn pin(&self, key: VersionKey, digest: Option<Digest>) {
        let mut pinned = lock(&self.pinned);
        match digest {
            Some(d) => {
                pinned.insert(key, d);
            }
            None => {
                pinned.remove(&key);
            }
        }
    }

    /// Forgets a deleted version, or every version of a deleted function.
    pub(crate) fn release(&self, function: &FunctionName, version: Option<VersionId>) {
        let gone = |(f, v): &VersionKey| f == function && version.is_none_or(|only| *v == only);
        lock(&self.pinned).retain(|k, _| !gone(k));
        let mut versions = lock(&self.versions);
        if let Some(of_function) = versions.get_mut(function) {
            of_function.retain(|v, _| version.is_some_and(|only| *v != only));
            if of_function.is_empty() {
                versions.remove(function);
            }
        }
    }

    /// Drops least recently used, unpinned components while over a cap.
    fn enforce_caps(&self) {
        let pinned = self.pinned_digests();
        let mut loaded = lock(&self.loaded);
        let size = |s: &Slot| match s.cell.get() {
            Some(Ok(l)) => l.bytes,
            _ => 0,
        };
        let mut count = loaded.len();
        let mut bytes: usize = loaded.values().map(|s| size(s)).sum();
        if count <= self.max_loaded && bytes <= self.max_loaded_bytes {
            return;
        }
        let mut candidates: Vec<(u64, Digest)> = loaded
            .iter()
            .filter(|(d, s)| !pinned.contains(*d) && s.cell.initialized())
            .map(|(d, s)| (s.last_used.load(Ordering::Relaxed), d.clone()))
            .collect();
        candidates.sort();
        for (_, digest) in candidates {
            if count <= self.max_loaded && bytes <= self.max_loaded_bytes {
                break;
            }
            if let Some(slot) = loaded.remove(&digest) {
                count -= 1;
                bytes -= size(&slot);
                tracing::debug!(%digest, "unloaded a component over the loaded-set cap");
            }
        }
    }

    /// Unloads idle components and instances, and forgets idle versions.
    pub(crate) fn sweep(&self) {
        let now = self.now();
        let idle = |t: u64| now.saturating_sub(t) >= self.idle_ms;
        let premade_idle = |t: u64| now.saturating_sub(t) >= self.idle_ms.min(PREMADE_IDLE_MS);
        let pinned = self.pinned_digests();
        lock(&self.loaded).retain(|digest, slot| {
            pinned.contains(digest)
                || !slot.cell.initialized()
                || !idle(slot.last_used.load(Ordering::Relaxed))
        });
        let pinned_versions = lock(&self.pinned).clone();
        lock(&self.versions).retain(|function, of_function| {
            of_function.retain(|version, state| {
                // A version kept warm keeps the instance made ahead for
                // its next request, however long that takes to come.
                let warm_digest = pinned_versions.get(&(function.clone(), *version));
                lock(&state.idle).retain(|(instance, since)| {
                    let unused = instance.served == 0;
                    (unused && warm_digest == Some(&instance.digest))
                        || (!idle(*since) && (!unused || !premade_idle(*since)))
                });
                let busy = state.in_use() > 0
                    || state.queued.load(Ordering::Relaxed) > 0
                    || !lock(&state.idle).is_empty();
                busy || !idle(state.last_used.load(Ordering::Relaxed))
            });
            !of_function.is_empty()
        });
        // Spare host state is cheap to rebuild; an idle server keeps none.
        if lock(&self.versions).is_empty() {
            lock(&self.spares).clear();
        }
    }

    pub(crate) fn snapshot(&self) -> RuntimeSnapshot {
        let (loaded_components, loaded_bytes) = {
            let loaded = lock(&self.loaded);
            let ready = loaded.values().filter_map(|s| match s.cell.get() {
                Some(Ok(l)) => Some(l.bytes as u64),
                _ => None,
            });
            ready.fold((0, 0), |(n, b), x| (n + 1, b + x))
        };
        let mut versions: Vec<VersionGauges> = lock(&self.versions)
            .iter()
            .flat_map(|(function, of_function)| {
                of_function.iter().map(|(version, s)| VersionGauges {
                    function: function.clone(),
                    version: *version,
                    in_use: s.in_use(),
                    queued: s.queued.load(Ordering::Relaxed),
                })
            })
            .collect();
        versions.sort_by(|a, b| (&a.function, a.version).cmp(&(&b.function, b.version)));
        let used_mib = self.census.memory_mib.load(Ordering::SeqCst);
        RuntimeSnapshot {
            loaded_components,
            loaded_bytes,
            instances: self.census.instances.load(Ordering::SeqCst),
            instance_memory_bytes: used_mib * 1024 * 1024,
            versions,
        }
    }
}

fn new_state(limit: u32, tenant: Arc<crate::lanes::Tenant>) -> Arc<VersionState> {
    Arc::new(VersionState {
        limit,
        tenant,
        permits: Arc::new(Semaphore::new(limit as usize)),
        queued: AtomicU64::new(0),
        idle: Mutex::new(Vec::new()),
        last_used: AtomicU64::new(0),
        before_last: AtomicU64::new(0),
        requests: AtomicU64::new(0),
    })
}

/// Sweeps idle state on an interval derived from the idle timeout.
pub(crate) fn start_sweeper(inner: Weak<Inner>) {
    let Some(strong) = inner.upgrade() else {
        return;
    };
    let every =
        (strong.config.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    drop(strong);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match inner.upgrade() {
                Some(inner) => inner.pool.sweep(),
                None => return,
            }
        }
    });
}
