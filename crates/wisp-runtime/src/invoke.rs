//! One invocation: admission, loading, a fresh instance, the timeout, and
//! the record that reports how it went.

use crate::capture::Capture;
use crate::host::{DenyOutbound, Host, MemoryLimiter};
use crate::{Inner, Runtime, lock};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};
use wisp_core::{
    Body, BoxError, BoxFuture, Deployment, InvocationOutcome, InvocationRecord, InvokeError,
    Invoker, LogCapture,
};

const MIB: usize = 1024 * 1024;

/// What is known about an invocation before it ends, to build its record.
struct Pending {
    deployment: Arc<Deployment>,
    request_id: String,
    started: Instant,
    started_at: chrono::DateTime<chrono::Utc>,
    init_duration: Option<Duration>,
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
            outcome,
            stdout,
            stderr,
        });
    }

    fn fail(self, inner: &Inner, error: InvokeError) -> InvokeError {
        self.finish(
            inner,
            InvocationOutcome::Failed(error.clone()),
            LogCapture::default(),
            LogCapture::default(),
        );
        error
    }
}

impl Inner {
    /// A permit under the version's `max_concurrency`, or `None` when full.
    fn function_permit(&self, d: &Deployment) -> Option<OwnedSemaphorePermit> {
        let key = format!("{}:{}", d.function, d.version);
        let limit = d.config.max_concurrency;
        let semaphore = {
            let mut map = lock(&self.concurrency);
            let entry = map
                .entry(key)
                .or_insert_with(|| (limit, Arc::new(Semaphore::new(limit as usize))));
            if entry.0 != limit {
                // `latest` was reconfigured: new invocations count against
                // the new limit; running ones finish under the old one.
                *entry = (limit, Arc::new(Semaphore::new(limit as usize)));
            }
            entry.1.clone()
        };
        semaphore.try_acquire_owned().ok()
    }

    fn new_store(
        &self,
        d: &Deployment,
        request_id: &str,
        stdout: &Capture,
        stderr: &Capture,
    ) -> Store<Host> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for (k, v) in &d.config.env {
            wasi.env(k, v);
        }
        wasi.env("WISP_FUNCTION_NAME", d.function.as_str())
            .env("WISP_FUNCTION_VERSION", d.version.to_string())
            .env("WISP_REQUEST_ID", request_id)
            .env("WISP_MEMORY_LIMIT_MIB", d.config.memory_mib.to_string());
        let host = Host {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: DenyOutbound,
            limiter: MemoryLimiter {
                limit_bytes: d.config.memory_mib as usize * MIB,
                exceeded: false,
            },
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limiter);
        // Every epoch tick a running guest yields to the executor, so a CPU
        // loop cannot hold a worker thread and the timeout can stop it.
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        store
    }

    async fn invoke(
        self: Arc<Self>,
        deployment: Arc<Deployment>,
        request_id: String,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, InvokeError> {
        let mut pending = Pending {
            deployment: deployment.clone(),
            request_id,
            started: Instant::now(),
            started_at: chrono::Utc::now(),
            init_duration: None,
        };
        let Some(function_permit) = self.function_permit(&deployment) else {
            let limit = deployment.config.max_concurrency;
            return Err(pending.fail(&self, InvokeError::Throttled { limit }));
        };
        let pre = match self.load(&deployment.code_digest).await {
            Ok((pre, init)) => {
                pending.init_duration = init;
                pre
            }
            Err(message) => return Err(pending.fail(&self, InvokeError::Unavailable { message })),
        };
        let timeout_ms = deployment.config.timeout_ms;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let instance_permit =
            match tokio::time::timeout_at(deadline, self.instances.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) | Err(_) => {
                    return Err(pending.fail(&self, InvokeError::Timeout { timeout_ms }));
                }
            };

        let stdout = Capture::new(self.log_limit);
        let stderr = Capture::new(self.log_limit);
        let mut store = self.new_store(&deployment, &pending.request_id, &stdout, &stderr);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let status = Arc::new(AtomicU16::new(0));
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
            let mut http = store.data_mut().http();
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
                let message = format!("could not pass the request to the function: {e:#}");
                return Err(pending.fail(&self, InvokeError::Unavailable { message }));
            }
        };

        let inner = self.clone();
        let task = tokio::spawn(async move {
            let result = {
                let run = async {
                    let proxy = pre.instantiate_async(&mut store).await?;
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, req, out)
                        .await
                };
                tokio::time::timeout_at(deadline, run).await
            };
            let outcome = match result {
                Err(_) => InvocationOutcome::Failed(InvokeError::Timeout { timeout_ms }),
                Ok(Err(e)) if store.data().limiter.exceeded => {
                    tracing::debug!(error = ?e, "memory limit hit");
                    InvocationOutcome::Failed(InvokeError::MemoryLimit {
                        memory_mib: deployment.config.memory_mib,
                    })
                }
                Ok(Err(e)) => InvocationOutcome::Failed(InvokeError::Trapped {
                    message: format!("{e:?}"),
                }),
                Ok(Ok(())) => match status.load(Ordering::SeqCst) {
                    0 => InvocationOutcome::Failed(InvokeError::NoResponse {
                        message: "the handler returned without calling response-outparam.set"
                            .into(),
                    }),
                    status => InvocationOutcome::Completed { status },
                },
            };
            // Free the instance slot before reporting.
            drop(store);
            drop(instance_permit);
            drop(function_permit);
            pending.finish(&inner, outcome.clone(), stdout.take(), stderr.take());
            outcome
        });

        match rx.await {
            Ok(Ok(response)) => {
                Ok(response.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()))
            }
            Ok(Err(code)) => Err(InvokeError::NoResponse {
                message: format!(
                    "the function answered with an error instead of a response: {code:?}"
                ),
            }),
            Err(_) => match task.await {
                Ok(InvocationOutcome::Failed(e)) => Err(e),
                Ok(InvocationOutcome::Completed { .. }) => Err(InvokeError::NoResponse {
                    message: "no response head was produced".into(),
                }),
                Err(e) => Err(InvokeError::Unavailable {
                    message: format!("the invocation task failed: {e}"),
                }),
            },
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
}
