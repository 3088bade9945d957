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
    /// Set when the guest yields at an epoch tick (see [`crate::lanes`]).
    pub(crate) yielded: crate::lanes::Yielded,
    /// The status of the invocation's response head once it is set (0
    /// before), and whether the guest may still run one tick past it
    /// without yielding, to return and so end its response at once.
    pub(crate) head: Option<std::sync::Arc<std::sync::atomic::AtomicU16>>,
    pub(crate) tail_grace: bool,
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
    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        wisp_core::limits::OUTGOING_BODY_BUFFER_CHUNKS
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        wisp_core::limits::OUTGOING_BODY_CHUNK_BYTES
    }

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

/// Bytes one element of a wasm table is counted as against `memory_mib`
/// (a function reference: one pointer).
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// Enforces a function's `memory_mib` on the sum of all the instance's
/// linear memories and tables (a component holds several core instances,
/// each with its own), and remembers whether a growth was refused so the
/// failure can name the limit.
#[derive(Debug, Default)]
pub struct MemoryLimiter {
    limit_bytes: usize,
    /// Bytes of every memory and table of the instance so far.
    used_bytes: usize,
    /// The growth granted last, taken back if it then failed.
    last_grant: usize,
    pub(crate) exceeded: bool,
}

impl MemoryLimiter {
    /// A limiter for a new instance with `limit_bytes` in all.
    pub(crate) fn new(limit_bytes: usize) -> Self {
        MemoryLimiter {
            limit_bytes,
            ..Self::default()
        }
    }

    /// Grants growing one memory or table from `current` to `desired`
    /// bytes if the instance's total stays within the limit.
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let more = desired.saturating_sub(current);
        let total = self.used_bytes.saturating_add(more);
        if total > self.limit_bytes {
            self.exceeded = true;
            self.last_grant = 0;
            return false;
        }
        self.used_bytes = total;
        self.last_grant = more;
        true
    }

    /// Takes back the last grant: the growth it allowed did not happen.
    fn grow_failed(&mut self) {
        self.used_bytes -= std::mem::take(&mut self.last_grant);
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
        ))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memories_and_tables_share_one_limit() {
        let mut limiter = MemoryLimiter::new(1000);
        // Two memories of 400 bytes each fit; a third does not.
        assert!(limiter.memory_growing(0, 400, None).unwrap());
        assert!(limiter.memory_growing(0, 400, None).unwrap());
        assert!(!limiter.exceeded);
        assert!(!limiter.memory_growing(0, 400, None).unwrap());
        assert!(limiter.exceeded);
        // Growing the first memory by 100 fits; a table of 13 elements
        // (104 bytes) then does not, one of 12 (96 bytes) does.
        assert!(limiter.memory_growing(400, 500, None).unwrap());
        assert!(
            !limiter
                .table_growing(0, 104 / TABLE_ELEMENT_BYTES, None)
                .unwrap()
        );
        assert!(
            limiter
                .table_growing(0, 96 / TABLE_ELEMENT_BYTES, None)
                .unwrap()
        );
    }

    /// A component of two core instances, each with a memory of two
    /// 64 KiB pages: 256 KiB in all, 128 KiB in each.
    const TWO_MEMORIES: &str = r#"(component
        (core module $m (memory 2))
        (core instance (instantiate $m))
        (core instance (instantiate $m)))"#;

    #[tokio::test]
    async fn memory_mib_bounds_the_sum_of_an_instances_memories() {
        let engine = wasmtime::Engine::new(&crate::engine_config(8, 1 << 20, true)).unwrap();
        let bytes = wat::parse_str(TWO_MEMORIES).unwrap();
        let component = wasmtime::component::Component::new(&engine, &bytes).unwrap();
        let linker = wasmtime::component::Linker::<MemoryLimiter>::new(&engine);
        // Each memory alone fits in 192 KiB; both together do not.
        for (limit_kib, fits) in [(192, false), (256, true)] {
            let mut store = wasmtime::Store::new(&engine, MemoryLimiter::new(limit_kib * 1024));
            store.limiter(|limiter| limiter);
            let made = linker.instantiate_async(&mut store, &component).await;
            assert_eq!(made.is_ok(), fits, "limit {limit_kib} KiB");
            assert_eq!(store.data().exceeded, !fits, "limit {limit_kib} KiB");
        }
    }

    #[test]
    fn a_failed_growth_gives_its_grant_back() {
        let mut limiter = MemoryLimiter::new(1000);
        assert!(limiter.memory_growing(0, 600, None).unwrap());
        assert!(limiter.memory_growing(600, 1000, None).unwrap());
        limiter
            .memory_grow_failed(wasmtime::format_err!("no memory"))
            .unwrap();
        // The 400 bytes that were never added are free again.
        assert!(limiter.memory_growing(0, 400, None).unwrap());
        assert!(!limiter.exceeded);
    }
}
