//! One invocation: admission (concurrency permit, bounded queue), loading,
//! an instance (fresh, or reused when the function opts in), the timeout,
//! and the record that reports how it went.

use crate::capture::Capture;
use crate::host::{DenyOutbound, Host, MemoryLimiter, RequestContext};
use crate::lanes::Fair;
use crate::pool::{Counted, LiveInstance, Loaded, Queued, Spare, VersionState};
use crate::response_body::{HeldEnd, take_ready};
use crate::{Inner, Runtime};
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};
use wisp_core::{
    Body, BoxError, BoxFuture, Deployment, FunctionName, InvocationOutcome, InvocationRecord,
    InvokeError, Invoker, LogCapture, RuntimeSnapshot, RuntimeState, VersionId,
};

const MIB: usize = 1024 * 1024;

/// Request header carrying the request id into the function.
pub const REQUEST_ID_HEADER: &str = "x-wisp-request-id";
const REQUEST_ID: http::HeaderName = http::HeaderName::from_static(REQUEST_ID_HEADER);

/// What is known about an invocation before it ends, to build its record.
struct Pending {
    deployment: Arc<Deployment>,
    request_id: String,
    started: Instant,
    started_at: chrono::DateTime<chrono::Utc>,
    init_duration: Option<Duration>,
    instantiate_duration: Option<Duration>,
}

impl Pending {
    fn finish(
        self,
        inner: &Inner,
        outcome: InvocationOutcome,
        stdout: LogCapture,
        stderr: LogCapture,
    ) {
        inner.sink.record(InvocationRecord {
            request_id: self.request_id,
            function: self.deployment.function.clone(),
            version: self.deployment.version,
            started_at: self.started_at,
            duration: self.started.elapsed(),
            cold_start: self.init_duration.is_some(),
            init_duration: self.init_duration,
            instantiate_duration: self.instantiate_duration,
            outcome,
            stdout,
            stderr,
        });
    }

    fn fail(self, inner: &Inner, error: InvokeError) -> InvokeError {
        let outcome = InvocationOutcome::Failed(error.clone());
        self.finish(inner, outcome, LogCapture::default(), LogCapture::default());
        error
    }
}

/// Waits for a permit of `semaphore` until `deadline`, counting the wait in `queued`.
async fn acquire(
    semaphore: &Arc<Semaphore>,
    permits: u32,
    deadline: tokio::time::Instant,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(p) = semaphore.clone().try_acquire_many_owned(permits) {
        return Some(p);
    }
    tokio::time::timeout_at(deadline, semaphore.clone().acquire_many_owned(permits))
        .await
        .ok()?
        .ok()
}

/// What an instance was made from: the loaded component and that
/// component's last-use clock.
type MadeFrom = (Arc<Loaded>, Arc<std::sync::atomic::AtomicU64>);

/// Longest a request needing capacity waits, past its own deadline, for
/// instances that are being torn down to give theirs back.
const TEARDOWN_GRACE: Duration = Duration::from_millis(100);

/// Most idle instances ended to make room for one new instance.
const MAX_EVICTIONS: usize = 16;

impl Inner {
    /// `permits` of server-wide capacity: at once, else after ending idle
    /// reusable instances (longest idle first, of any function), else
    /// after waiting until `deadline`. Idle instances never make a request
    /// that needs a new instance wait.
    async fn capacity(
        &self,
        semaphore: &Arc<Semaphore>,
        permits: u32,
        deadline: tokio::time::Instant,
    ) -> Option<OwnedSemaphorePermit> {
        for _ in 0..MAX_EVICTIONS {
            if let Ok(p) = semaphore.clone().try_acquire_many_owned(permits) {
                return Some(p);
            }
            if !self.pool.evict_idle() {
                break;
            }
        }
        // An instance done with but still being torn down frees its
        // capacity within moments: it is waited for even past the deadline
        // (a queue timeout of 0 must not refuse a request for it).
        let deadline = if self.pool.tearing_down() {
            deadline.max(tokio::time::Instant::now() + TEARDOWN_GRACE)
        } else {
            deadline
        };
        acquire(semaphore, permits, deadline).await
    }

    /// A concurrency permit of the version, for a request that found none
    /// free at once: after a bounded wait in its queue; `None` means
    /// throttle.
    async fn admit(&self, state: &VersionState, wait: Duration) -> Option<OwnedSemaphorePermit> {
        if state.queued.load(Ordering::SeqCst) >= self.config.queue_depth as u64 {
            return None;
        }
        let _queued = Queued::enter(&state.queued);
        tokio::time::timeout(wait, state.permits.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }

    /// A new, not yet instantiated instance holding its share of the
    /// server's capacity.
    async fn new_instance(
        &self,
        d: &Deployment,
        loaded: Arc<Loaded>,
        component_used: Arc<std::sync::atomic::AtomicU64>,
        deadline: tokio::time::Instant,
    ) -> Result<LiveInstance, InvokeError> {
        let memory_mib = d.config.memory_mib;
        if memory_mib > self.pool.max_memory_mib() {
            return Err(InvokeError::Unavailable {
                message: format!(
                    "memory_mib {memory_mib} is more than this server's instance memory capacity of {} MiB",
                    self.pool.max_memory_mib()
                ),
            });
        }
        let slot = self
            .capacity(&self.pool.instances, 1, deadline)
            .await
            .ok_or_else(|| InvokeError::Overloaded {
                resource: "instance".into(),
            })?;
        let memory = self
            .capacity(&self.pool.memory_mib, memory_mib, deadline)
            .await
            .ok_or_else(|| InvokeError::Overloaded {
                resource: "instance memory".into(),
            })?;
        Ok(self.build_instance(d, loaded, component_used, slot, memory))
    }

    /// A store for an instance whose capacity is held.
    fn build_instance(
        &self,
        d: &Deployment,
        loaded: Arc<Loaded>,
        component_used: Arc<std::sync::atomic::AtomicU64>,
        slot: OwnedSemaphorePermit,
        memory: OwnedSemaphorePermit,
    ) -> LiveInstance {
        let memory_mib = d.config.memory_mib;
        let Spare {
            mut host,
            stdout,
            stderr,
        } = self.pool.take_spare().unwrap_or_else(|| self.new_host());
        host.limiter = MemoryLimiter::new(memory_mib as usize * MIB);
        host.table
            .set_max_capacity(wisp_core::limits::max_host_resources(memory_mib));
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limiter);
        // Every epoch tick a running guest yields to the executor (and,
        // from then on, runs only in a lane: see [`crate::lanes`]), so a
        // CPU loop cannot hold a worker thread or keep another function's
        // requests waiting, and the timeout can stop it.
        store.epoch_deadline_callback(|mut ctx| {
            let host = ctx.data_mut();
            // A guest that has set its response head gets one tick more to
            // return: its response then ends (with its length) at once,
            // rather than when the guest is next given the CPU.
            if host.tail_grace
                && host
                    .head
                    .as_ref()
                    .is_some_and(|s| s.load(Ordering::Relaxed) != 0)
            {
                host.tail_grace = false;
                return Ok(wasmtime::UpdateDeadline::Continue(1));
            }
            Ok(crate::lanes::on_tick(&host.yielded))
        });
        LiveInstance {
            store,
            proxy: None,
            loaded,
            served: 0,
            digest: d.code_digest.clone(),
            memory_mib,
            component_used,
            stdout,
            stderr,
            _slot: slot,
            _memory: memory,
            counted: Some(Counted::new(&self.pool.census, memory_mib)),
        }
    }

    /// Makes the next instance of a busy version (or, `always`, of any)
    /// before its next request arrives, so that request finds it
    /// instantiated: only with capacity free now (it never waits, nor ends
    /// another instance for it), and under the function's timeout. It waits
    /// with the idle instances, which a request needing capacity may end,
    /// and is ended unused after [`crate::pool::PREMADE_IDLE_MS`] unless
    /// its version is kept warm (`min_instances`).
    async fn premake(
        &self,
        state: &VersionState,
        d: &Arc<Deployment>,
        made_from: MadeFrom,
        always: bool,
    ) {
        let (loaded, component_used) = made_from;
        if !(always || state.busy()) || state.has_idle(&d.code_digest, d.config.memory_mib) {
            return;
        }
        let memory_mib = d.config.memory_mib;
        let Ok(slot) = self.pool.instances.clone().try_acquire_owned() else {
            return;
        };
        let Ok(memory) = self
            .pool
            .memory_mib
            .clone()
            .try_acquire_many_owned(memory_mib)
        else {
            return;
        };
        let mut instance = self.build_instance(d, loaded, component_used, slot, memory);
        instance.store.data_mut().context = RequestContext {
            deployment: Some(d.clone()),
            request_id: String::new(),
        };
        instance.store.set_epoch_deadline(1);
        let timeout = Duration::from_millis(d.config.timeout_ms);
        let made = {
            let LiveInstance { store, loaded, .. } = &mut instance;
            tokio::time::timeout(timeout, loaded.pre.instantiate_async(&mut *store)).await
        };
        match made {
            Ok(Ok(proxy)) if !instance.store.data().limiter.exceeded => {
                instance.proxy = Some(proxy);
                instance.stdout.take();
                instance.stderr.take();
                state.put_idle(instance, self.pool.now());
            }
            _ => self.retire(instance),
        }
    }

    /// Host state for a new instance: captured stdout/stderr, no preopens,
    /// no sockets, outbound HTTP denied, `fields` resources bounded.
    fn new_host(&self) -> Spare {
        let stdout = Capture::new(self.config.log_limit);
        let stderr = Capture::new(self.config.log_limit);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(wisp_core::limits::MAX_FIELDS_BYTES);
        let host = Host {
            context: RequestContext::default(),
            wasi: wasi_ctx(&stdout, &stderr),
            http,
            table: ResourceTable::new(),
            hooks: DenyOutbound,
            limiter: MemoryLimiter::default(),
            yielded: Default::default(),
            head: None,
            tail_grace: false,
        };
        Spare {
            host,
            stdout,
            stderr,
        }
    }

    /// Ends an instance that will not serve again: its store (and so its
    /// pool slot) goes first, then its capacity permits; the host state is
    /// reset and kept for the next instance. Nothing of the guest survives
    /// in it: the resource table and the WASI context (so its randomness)
    /// are replaced, and the capture buffers were taken.
    fn retire(&self, instance: LiveInstance) {
        let LiveInstance {
            store,
            stdout,
            stderr,
            _slot,
            _memory,
            counted,
            ..
        } = instance;
        drop(counted);
        let mut host = store.into_data();
        drop((_slot, _memory));
        host.table = ResourceTable::new();
        host.context = RequestContext::default();
        host.head = None;
        host.wasi = wasi_ctx(&stdout, &stderr);
        self.pool.put_spare(Spare {
            host,
            stdout,
            stderr,
        });
    }

    async fn invoke(
        self: Arc<Self>,
        deployment: Arc<Deployment>,
        request_id: String,
        mut request: http::Request<Body>,
    ) -> Result<http::Response<Body>, InvokeError> {
        let mut pending = Pending {
            deployment: deployment.clone(),
            request_id,
            started: Instant::now(),
            started_at: chrono::Utc::now(),
            init_duration: None,
            instantiate_duration: None,
        };
        let config = &deployment.config;
        let timeout = Duration::from_millis(config.timeout_ms);
        let state = self.pool.version(
            &deployment.function,
            deployment.version,
            config.max_concurrency,
        );
        let wait = self.config.queue_timeout.min(timeout);
        // Futures of paths taken rarely are boxed where they are awaited:
        // this future, and the invocation's below, are moved into boxes on
        // every request, and their size is that of their largest state.
        let admitted = match state.permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => Box::pin(self.admit(&state, wait)).await,
        };
        let Some(function_permit) = admitted else {
            let limit = config.max_concurrency;
            return Err(pending.fail(&self, InvokeError::Throttled { limit }));
        };

        // An idle instance of this version needs nothing loaded: it keeps
        // what it was made from. Otherwise the component is loaded (on
        // first use) and a new instance made.
        let deadline;
        let mut instance = match state.take_idle(&deployment.code_digest, config.memory_mib) {
            Some(i) => {
                i.component_used.store(self.pool.now(), Ordering::Relaxed);
                deadline = tokio::time::Instant::now() + timeout;
                i
            }
            None => {
                let (loaded, component_used) =
                    match Box::pin(self.pool.load(&self, &deployment.code_digest)).await {
                        Ok((loaded, used, init)) => {
                            pending.init_duration = init;
                            (loaded, used)
                        }
                        Err(message) => {
                            return Err(pending.fail(&self, InvokeError::Unavailable { message }));
                        }
                    };
                deadline = tokio::time::Instant::now() + timeout;
                let capacity_deadline = tokio::time::Instant::now() + wait;
                let made = Box::pin(self.new_instance(
                    &deployment,
                    loaded,
                    component_used,
                    capacity_deadline,
                ));
                match made.await {
                    Ok(i) => i,
                    Err(e) => return Err(pending.fail(&self, e)),
                }
            }
        };

        // Per-request state of the store. The request id moves into the
        // store for `get-environment` and comes back for the record.
        if let Ok(v) = http::HeaderValue::from_str(&pending.request_id) {
            request.headers_mut().insert(REQUEST_ID, v);
        }
        let host = instance.store.data_mut();
        host.context = RequestContext {
            deployment: Some(deployment.clone()),
            request_id: std::mem::take(&mut pending.request_id),
        };
        host.limiter.exceeded = false;
        let status = Arc::new(AtomicU16::new(0));
        host.head = Some(status.clone());
        host.tail_grace = true;
        // The first yield is one tick from now (then one per tick, as set
        // up with the store).
        instance.store.set_epoch_deadline(1);

        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let set_status = status.clone();
        let prepared = (|| -> wasmtime::Result<_> {
            let request = request.map(|body| {
                body.map_err(|e: BoxError| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        wasmtime_wasi_http::Error::HttpRequestBodySize(None)
                    } else {
                        wasmtime_wasi_http::Error::InternalError(Some(e.to_string()))
                    }
                })
            });
            let mut http = instance.store.data_mut().http();
            let req = http.new_incoming_request(Scheme::Http, request)?;
            let out = http.new_response_outparam_from_callback(move |res| {
                if let Ok(r) = &res {
                    set_status.store(r.status().as_u16(), Ordering::SeqCst);
                }
                let _ = tx.send(res);
            })?;
            Ok((req, out))
        })();
        let (req, out) = match prepared {
            Ok(x) => x,
            Err(e) => {
                pending.request_id =
                    std::mem::take(&mut instance.store.data_mut().context.request_id);
                let message = format!("could not pass the request to the function: {e:#}");
                return Err(pending.fail(&self, InvokeError::Unavailable { message }));
            }
        };

        let inner = self.clone();
        let tenant = state.tenant.clone();
        let yielded = instance.store.data().yielded.clone();
        let reuse_limit = config.max_requests_per_instance;
        let memory_mib = config.memory_mib;
        let timeout_ms = config.timeout_ms;
        // An instance that may serve again holds its response's end until
        // it is back with the idle ones (see [`HeldEnd`]).
        let (release, released) = if reuse_limit > 1 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        // The whole invocation, to its record. It runs on this task until
        // the response head is set; a guest still running then (streaming
        // its body) goes on in a task of its own.
        let run = async move {
            let result = {
                let LiveInstance {
                    store,
                    proxy,
                    loaded,
                    ..
                } = &mut instance;
                let instantiated = &mut pending.instantiate_duration;
                let run = async {
                    if proxy.is_none() {
                        let started = Instant::now();
                        *proxy = Some(Box::pin(loaded.pre.instantiate_async(&mut *store)).await?);
                        *instantiated = Some(started.elapsed());
                    }
                    let proxy = proxy.as_ref().expect("instantiated above");
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut *store, req, out)
                        .await
                };
                tokio::time::timeout_at(deadline, run).await
            };
            let outcome = match result {
                Err(_) => InvocationOutcome::Failed(InvokeError::Timeout { timeout_ms }),
                Ok(Err(e)) if instance.store.data().limiter.exceeded => {
                    tracing::debug!(error = ?e, "memory limit hit");
                    InvocationOutcome::Failed(InvokeError::MemoryLimit { memory_mib })
                }
                Ok(Err(e)) => InvocationOutcome::Failed(match host_limit(&e, memory_mib) {
                    Some(message) => InvokeError::HostLimit { message },
                    None => InvokeError::Trapped {
                        message: format!("{e:?}"),
                    },
                }),
                Ok(Ok(())) => match status.load(Ordering::SeqCst) {
                    0 => InvocationOutcome::Failed(InvokeError::NoResponse {
                        message: "the handler returned without calling response-outparam.set"
                            .into(),
                    }),
                    status => InvocationOutcome::Completed { status },
                },
            };
            let (stdout, stderr) = (instance.stdout.take(), instance.stderr.take());
            let context = std::mem::take(&mut instance.store.data_mut().context);
            pending.request_id = context.request_id;
            instance.served += 1;
            // Only an instance that finished cleanly may serve again.
            let completed = matches!(outcome, InvocationOutcome::Completed { .. });
            let done = if completed && instance.served < reuse_limit {
                state.put_idle(instance, inner.pool.now());
                None
            } else {
                // Done with as the gauges see it; torn down below.
                instance.counted = None;
                Some(instance)
            };
            drop(release);
            drop(function_permit);
            let failure = match &outcome {
                InvocationOutcome::Failed(e) => Some(e.clone()),
                InvocationOutcome::Completed { .. } => None,
            };
            let deployment = pending.deployment.clone();
            pending.finish(&inner, outcome, stdout, stderr);
            if let Some(instance) = done {
                // With the response head out, the request's task returns
                // it before the store is torn down (resetting its memory
                // is the costliest part of an instance's life after
                // instantiation); this part goes on in a task of its own.
                if status.load(Ordering::SeqCst) != 0 {
                    tokio::task::yield_now().await;
                }
                // The instance was made from this deployment's component.
                let made_from = (instance.loaded.clone(), instance.component_used.clone());
                inner.retire(instance);
                // A failing function gets no capacity ahead of its requests.
                if completed {
                    Box::pin(inner.premake(&state, &deployment, made_from, false)).await;
                }
            }
            failure
        };
        let mut run = Detached(Some(Fair::new(
            Box::pin(run),
            self.lanes.clone(),
            tenant,
            yielded,
        )));

        // Drive the guest here until it sets the response head or ends.
        let ended = std::future::poll_fn(|cx| {
            if let Poll::Ready(failure) = run.poll(cx) {
                return Poll::Ready(Some(failure));
            }
            // The head is set (or the guest answered with an error code).
            // A guest that dropped its response-outparam unset is awaited:
            // how it ended says why there is no response.
            if rx.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(None)
            }
        })
        .await;
        match rx.try_recv() {
            Ok(Ok(response)) => {
                // A guest still running streams the rest of its body from a
                // task of its own.
                run.detach();
                let (head, body) = response.into_parts();
                let body = body.map_err(|e| Box::new(e) as BoxError);
                // An instance that may serve again and is still running
                // holds the end of its body; otherwise what the body has
                // ready goes out at once, the whole of it if it has ended.
                // (An invocation that ended here has released its instance.)
                let body = match released.filter(|_| ended.is_none()) {
                    Some(released) => HeldEnd::new(body, &head.headers, released).boxed_unsync(),
                    None => take_ready(body),
                };
                Ok(http::Response::from_parts(head, body))
            }
            Ok(Err(code)) => {
                run.detach();
                Err(InvokeError::NoResponse {
                    message: format!(
                        "the function answered with an error instead of a response: {code:?}"
                    ),
                })
            }
            Err(_) => match ended {
                Some(Some(failure)) => Err(failure),
                _ => Err(InvokeError::NoResponse {
                    message: "no response head was produced".into(),
                }),
            },
        }
    }

    /// Pins or unpins a version per its `min_instances`, loading it now
    /// and making its first instance ahead (kept until a request takes
    /// it), so that its first request finds it instantiated.
    async fn warm(self: Arc<Self>, d: Arc<Deployment>) -> Result<(), InvokeError> {
        let key = (d.function.clone(), d.version);
        if d.config.min_instances == 0 {
            self.pool.pin(key, None);
            return Ok(());
        }
        self.pool.pin(key, Some(d.code_digest.clone()));
        let (loaded, used, _) = self
            .pool
            .load(&self, &d.code_digest)
            .await
            .map_err(|message| InvokeError::Unavailable { message })?;
        let state = self
            .pool
            .version(&d.function, d.version, d.config.max_concurrency);
        state.end_premade_unlike(&d.code_digest, d.config.memory_mib);
        self.premake(&state, &d, (loaded, used), true).await;
        Ok(())
    }
}

/// The WASI context of an instance: output captured, no preopens, no
/// sockets, `wasi:random` requests bounded.
fn wasi_ctx(stdout: &Capture, stderr: &Capture) -> wasmtime_wasi::WasiCtx {
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .max_random_size(wisp_core::limits::MAX_RANDOM_BYTES);
    wasi.build()
}

/// Why a guest was stopped for what it made the host hold, if it was:
/// its resource table was full (it held as many host resources as its
/// memory limit allows), or it made a header map over the size limit.
fn host_limit(e: &wasmtime::Error, memory_mib: u32) -> Option<String> {
    use wasmtime::component::ResourceTableError;
    use wasmtime_wasi_http::FieldMapError;
    e.chain().find_map(|cause| {
        if let Some(ResourceTableError::Full) = cause.downcast_ref() {
            let limit = wisp_core::limits::max_host_resources(memory_mib);
            return Some(format!(
                "function held more than {limit} host resources at once (fields, bodies, \
                 streams, pollables), the most its memory_mib of {memory_mib} allows; drop \
                 those it no longer needs or raise memory_mib"
            ));
        }
        if let Some(FieldMapError::TotalSizeTooBig) = cause.downcast_ref() {
            return Some(format!(
                "function made a header or trailer map larger than {} bytes, the most one \
                 may hold",
                wisp_core::limits::MAX_FIELDS_BYTES
            ));
        }
        None
    })
}

/// An invocation's future, which runs only while it holds a lane.
type Run = Fair<Pin<Box<dyn Future<Output = Option<InvokeError>> + Send>>>;

/// An invocation being driven by the request's own task. When that task
/// stops polling it before it ends (the guest streams its body, or the
/// client went away), it goes on in a task of its own, so that every
/// invocation runs to its end and is recorded.
struct Detached(Option<Run>);

impl Detached {
    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Option<InvokeError>> {
        match &mut self.0 {
            Some(run) => {
                // A panic of the host side of an invocation fails that
                // invocation, not the connection it was driven from (as it
                // would in a task of its own).
                let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    Pin::new(&mut *run).poll(cx)
                }));
                let ready = polled.unwrap_or_else(|_| {
                    Poll::Ready(Some(InvokeError::Unavailable {
                        message: "the invocation task failed: it panicked".into(),
                    }))
                });
                if ready.is_ready() {
                    self.0 = None;
                }
                ready
            }
            None => Poll::Pending,
        }
    }

    /// Lets a still running invocation go on by itself.
    fn detach(&mut self) {
        if let Some(run) = self.0.take() {
            tokio::spawn(run);
        }
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(run) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => drop(handle.spawn(run)),
                // No runtime left (shutdown): the invocation is dropped.
                Err(_) => drop(run),
            }
        }
    }
}

impl Invoker for Runtime {
    fn invoke(
        &self,
        deployment: Arc<Deployment>,
        request_id: String,
        request: http::Request<Body>,
    ) -> BoxFuture<'_, Result<http::Response<Body>, InvokeError>> {
        Box::pin(self.inner.clone().invoke(deployment, request_id, request))
    }

    fn warm(&self, deployment: Arc<Deployment>) -> BoxFuture<'_, Result<(), InvokeError>> {
        Box::pin(self.inner.clone().warm(deployment))
    }

    fn release(&self, function: &FunctionName, version: Option<VersionId>) {
        self.inner.pool.release(function, version);
    }
}

impl RuntimeState for Runtime {
    fn snapshot(&self) -> RuntimeSnapshot {
        self.inner.pool.snapshot()
    }
}
