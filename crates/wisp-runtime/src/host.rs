//! The per-invocation host state that lives in a wasmtime `Store`, and the
//! capability checks at the host boundary.

use std::sync::Arc;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};
use wisp_core::Deployment;

/// The request an instance is serving, from which
/// `wasi:cli/environment.get-environment` is answered. Set before each
/// request, so a reused instance sees the current request id; the list
/// itself is only built when the guest asks for it (most never do).
#[derive(Default)]
pub(crate) struct RequestContext {
    pub(crate) deployment: Option<Arc<Deployment>>,
    pub(crate) request_id: String,
}

impl RequestContext {
    /// The environment a request sees: the function's own, then the context.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        let Some(d) = &self.deployment else {
            return Vec::new();
        };
        let mut env = Vec::with_capacity(d.config.env.len() + 4);
        env.extend(d.config.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend([
            ("WISP_FUNCTION_NAME".into(), d.function.to_string()),
            ("WISP_FUNCTION_VERSION".into(), d.version.to_string()),
            ("WISP_REQUEST_ID".into(), self.request_id.clone()),
            (
                "WISP_MEMORY_LIMIT_MIB".into(),
                d.config.memory_mib.to_string(),
            ),
        ]);
        env
    }
}

/// State of one instance's store.
pub struct Host {
    pub(crate) context: RequestContext,
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    pub(crate) hooks: DenyOutbound,
    pub(crate) limiter: MemoryLimiter,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Outbound HTTP is a capability no function has been granted yet: every
/// `wasi:http/outgoing-handler` request is refused with `HTTP-request-denied`.
pub struct DenyOutbound;

/// wasmtime-wasi-http's default filter, shared: its default
/// `forbidden_header_filter` allocates a new closure on every header check.
static FORBIDDEN_HEADERS: std::sync::LazyLock<wasmtime_wasi_http::ForbiddenHeaderFilter> =
    std::sync::LazyLock::new(|| {
        Arc::new(|name| wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name))
    });

impl WasiHttpHooks for DenyOutbound {
    fn is_forbidden_header(&mut self, name: &http::HeaderName) -> bool {
        wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name)
    }

    fn forbidden_header_filter(&mut self) -> wasmtime_wasi_http::ForbiddenHeaderFilter {
        FORBIDDEN_HEADERS.clone()
    }

    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// Enforces a function's `memory_mib` on every linear memory, and remembers
/// whether a growth was refused so the failure can name the limit.
pub struct MemoryLimiter {
    pub(crate) limit_bytes: usize,
    pub(crate) exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit_bytes {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million entries is far beyond
        // any real program and bounds host memory per instance.
        Ok(desired <= 1_000_000)
    }
}
