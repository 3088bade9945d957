//! `/v1/artifacts`: upload a component; it is validated and compiled before
//! anything is stored.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{read_body, too_large};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use wisp_core::limits::MAX_ARTIFACT_BYTES;
use wisp_core::{ArtifactInfo, Digest, ErrorBody, ErrorCode, Preparer, Swept, ValidationError};
use wisp_store::artifacts::ArtifactDir;

/// Async access to the artifact directory (its I/O is blocking), and the
/// sweep that removes the code nothing refers to any more.
#[derive(Clone)]
pub struct Artifacts {
    dir: Arc<ArtifactDir>,
    /// Held shared by every write that refers to an artifact, from checking
    /// that it exists until the write is committed, and exclusively by a
    /// sweep, so that a sweep never removes code a write is about to refer
    /// to.
    claims: Arc<tokio::sync::RwLock<()>>,
    /// Files and bytes the sweeps removed since start.
    swept: Arc<SweptTotals>,
}

/// Running totals of what the sweeps removed.
#[derive(Default)]
struct SweptTotals {
    files: AtomicU64,
    bytes: AtomicU64,
}

/// Why a sweep of unreferenced code did not finish (it removed nothing, or
/// only part of what it would have).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The store could not list the code its functions refer to.
    #[error("could not list the code functions refer to: {0}")]
    Store(#[from] wisp_store::StoreError),
    /// A file could not be listed or removed.
    #[error("could not sweep the artifact directory: {0}")]
    Io(#[from] std::io::Error),
}

impl Artifacts {
    /// Wraps the artifact directory.
    pub fn new(dir: Arc<ArtifactDir>) -> Self {
        Artifacts {
            dir,
            claims: Arc::new(tokio::sync::RwLock::new(())),
            swept: Arc::default(),
        }
    }

    /// Adds what a sweep removed to the totals (`/metrics`).
    pub fn record_swept(&self, swept: Swept) {
        self.swept.files.fetch_add(swept.files, Ordering::Relaxed);
        self.swept.bytes.fetch_add(swept.bytes, Ordering::Relaxed);
    }

    /// What the sweeps removed since start.
    pub fn swept_total(&self) -> Swept {
        Swept {
            files: self.swept.files.load(Ordering::Relaxed),
            bytes: self.swept.bytes.load(Ordering::Relaxed),
        }
    }

    /// Size of a stored artifact, if present.
    pub async fn info(&self, digest: &Digest) -> Result<Option<ArtifactInfo>, std::io::Error> {
        let dir = self.dir.clone();
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || dir.info(&digest))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Size of a stored artifact, if present, marking it as just used.
    /// Callers about to refer to it hold [`Artifacts::claim`] meanwhile.
    pub(crate) async fn touch(
        &self,
        digest: &Digest,
    ) -> Result<Option<ArtifactInfo>, std::io::Error> {
        let dir = self.dir.clone();
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || dir.touch(&digest))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Keeps sweeps out until the guard is dropped.
    pub(crate) async fn claim(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.claims.clone().read_owned().await
    }

    /// Removes the artifacts that no function's `latest` and no published
    /// version refers to and that were last uploaded or referred to more
    /// than `grace` ago. Answers what it removed and the digests of the
    /// artifacts left, whose compiled code is to be kept. Writes that refer
    /// to an artifact wait while it runs.
    pub async fn sweep(
        &self,
        store: &dyn wisp_store::MetadataStore,
        grace: std::time::Duration,
    ) -> Result<(HashSet<Digest>, Swept), SweepError> {
        let _exclusive = self.claims.write().await;
        let keep = store.code_digests().await?;
        let dir = self.dir.clone();
        let (swept, left) = tokio::task::spawn_blocking(move || {
            Ok::<_, SweepError>(dir.sweep_unreferenced(&keep, grace)?)
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok((left, swept))
    }

    /// Takes an upload: waits (at most `slot_wait`) for one of
    /// `preparer`'s compile slots, only then reads the body (at most
    /// [`MAX_ARTIFACT_BYTES`]), has `preparer` compile it in that slot and
    /// stores it. So no more uploads are held in memory than can be
    /// compiled at once. Answers 201 for new code, 200 for code stored
    /// already.
    pub async fn upload(
        &self,
        preparer: &dyn Preparer,
        body: Body,
        slot_wait: Duration,
    ) -> ApiResult<(StatusCode, ArtifactInfo)> {
        // A body that says it is too large does not wait for a slot.
        if axum::body::HttpBody::size_hint(&body).lower() > MAX_ARTIFACT_BYTES as u64 {
            return Err(too_large(MAX_ARTIFACT_BYTES));
        }
        let slot = tokio::time::timeout(slot_wait, preparer.reserve())
            .await
            .map_err(|_| compiler_busy(slot_wait))??;
        let bytes = read_body(body, MAX_ARTIFACT_BYTES).await?;
        let digest = Digest::of(&bytes);
        // Uploading code already stored starts its grace period over.
        if let Some(info) = self.touch(&digest).await? {
            return Ok((StatusCode::OK, info));
        }
        preparer
            .prepare(slot, digest.clone(), bytes.clone())
            .await?;
        let info = self.put(&digest, bytes).await?;
        Ok((StatusCode::CREATED, info))
    }

    async fn put(
        &self,
        digest: &Digest,
        bytes: axum::body::Bytes,
    ) -> std::io::Result<ArtifactInfo> {
        let dir = self.dir.clone();
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || dir.put(&digest, &bytes))
            .await
            .map_err(std::io::Error::other)?
    }
}

/// Media types of an upload; a request without a `Content-Type` is taken
/// as raw bytes too.
pub const UPLOAD_MEDIA_TYPES: [&str; 2] = ["application/wasm", "application/octet-stream"];

/// Seconds an upload refused for want of a compile slot is told to wait.
const COMPILER_BUSY_RETRY_AFTER_SECS: u64 = 5;

/// 503 `compiler_busy`: no compile slot freed within `waited`.
fn compiler_busy(waited: Duration) -> ApiError {
    let mut err = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::CompilerBusy,
        format!(
            "the server is compiling as many components as it compiles at once (one per CPU \
             core) and none finished within {} s; the upload was not read: send it again \
             after Retry-After",
            waited.as_secs()
        ),
    );
    err.retry_after = Some(COMPILER_BUSY_RETRY_AFTER_SECS);
    err
}

/// Upload a component (the raw `.wasm` bytes as the body, as
/// `application/wasm` or `application/octet-stream`). It is validated,
/// linked against Wisp's host interfaces and compiled before it is stored;
/// uploading the same bytes again is a no-op that answers 200. The body is
/// read only once a compile slot is free; after a bounded wait without one
/// (see docs/limits.md) the answer is 503 `compiler_busy` with
/// `Retry-After`.
#[utoipa::path(post, path = "/v1/artifacts", tag = "artifacts",
    request_body(content(
        (inline(crate::schema::Binary) = "application/wasm"),
        (inline(crate::schema::Binary) = "application/octet-stream"))),
    responses((status = 201, body = ArtifactInfo), (status = 200, body = ArtifactInfo),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn upload_artifact(
    State(app): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<ArtifactInfo>)> {
    crate::extract::require_media_type(&headers, &UPLOAD_MEDIA_TYPES)?;
    let wait = Duration::from_secs(wisp_core::limits::COMPILE_SLOT_WAIT_SECS);
    let (status, info) = app
        .artifacts
        .upload(app.preparer.as_ref(), body, wait)
        .await?;
    Ok((status, Json(info)))
}

/// Look up an uploaded artifact.
#[utoipa::path(get, path = "/v1/artifacts/{digest}", tag = "artifacts",
    params(("digest" = inline(wisp_core::Digest), Path, description = "sha256:<hex>")),
    responses((status = 200, body = ArtifactInfo), (status = 404, body = ErrorBody)))]
pub async fn get_artifact(
    State(app): State<AppState>,
    Path(digest): Path<String>,
) -> ApiResult<Json<ArtifactInfo>> {
    let digest: Digest = digest
        .parse()
        .map_err(|e| ValidationError::new("digest", format!("{e}")))?;
    match app.artifacts.info(&digest).await? {
        Some(info) => Ok(Json(info)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::ArtifactNotFound,
            format!("no artifact {digest} has been uploaded"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::sync::atomic::AtomicBool;
    use std::task::{Context, Poll};
    use tokio::sync::{Semaphore, watch};
    use wisp_core::{BoxFuture, CompileSlot, PrepareError};

    /// A preparer with one compile slot whose compiles wait until the test
    /// lets them finish; it counts the reservations and compiles begun.
    struct OneSlot {
        slot: Arc<Semaphore>,
        finish: Semaphore,
        reserves: watch::Sender<usize>,
        prepares: watch::Sender<usize>,
    }

    impl OneSlot {
        fn new() -> Arc<Self> {
            Arc::new(OneSlot {
                slot: Arc::new(Semaphore::new(1)),
                finish: Semaphore::new(0),
                reserves: watch::Sender::new(0),
                prepares: watch::Sender::new(0),
            })
        }
    }

    impl Preparer for OneSlot {
        fn reserve(&self) -> BoxFuture<'_, Result<CompileSlot, PrepareError>> {
            Box::pin(async move {
                self.reserves.send_modify(|n| *n += 1);
                let permit = self.slot.clone().acquire_owned().await.unwrap();
                Ok(CompileSlot::new(permit))
            })
        }

        fn prepare(
            &self,
            slot: CompileSlot,
            _: Digest,
            _: bytes::Bytes,
        ) -> BoxFuture<'_, Result<(), PrepareError>> {
            Box::pin(async move {
                let _slot = slot;
                self.prepares.send_modify(|n| *n += 1);
                self.finish.acquire().await.unwrap().forget();
                Ok(())
            })
        }
    }

    /// A body that records whether it was read.
    struct Watched {
        data: Option<bytes::Bytes>,
        size: u64,
        read: Arc<AtomicBool>,
    }

    /// A body of `data` that says it holds `size` bytes (`data`'s length
    /// if `None`).
    fn watched(data: &'static [u8], size: Option<u64>) -> (Body, Arc<AtomicBool>) {
        let read = Arc::new(AtomicBool::new(false));
        let body = Watched {
            data: Some(bytes::Bytes::from_static(data)),
            size: size.unwrap_or(data.len() as u64),
            read: read.clone(),
        };
        (Body::new(body), read)
    }

    impl http_body::Body for Watched {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            self.read.store(true, Ordering::SeqCst);
            Poll::Ready(self.data.take().map(|d| Ok(http_body::Frame::data(d))))
        }

        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(self.size)
        }
    }

    fn artifacts() -> (tempfile::TempDir, Artifacts) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ArtifactDir::open(tmp.path()).unwrap();
        (tmp, Artifacts::new(Arc::new(dir)))
    }

    const LONG: Duration = Duration::from_secs(3600);

    /// Starts an upload of `body` on a task of its own.
    fn upload(
        artifacts: &Artifacts,
        preparer: &Arc<OneSlot>,
        body: Body,
        wait: Duration,
    ) -> tokio::task::JoinHandle<ApiResult<(StatusCode, ArtifactInfo)>> {
        let (artifacts, preparer) = (artifacts.clone(), preparer.clone());
        tokio::spawn(async move { artifacts.upload(preparer.as_ref(), body, wait).await })
    }

    /// Waits until `count` has reached `n`.
    async fn reach(count: &watch::Sender<usize>, n: usize) {
        count.subscribe().wait_for(|c| *c >= n).await.unwrap();
    }

    /// Artifacts, and a preparer whose only slot a first upload holds,
    /// compiling until the test lets it finish.
    async fn slot_taken() -> (
        tempfile::TempDir,
        Artifacts,
        Arc<OneSlot>,
        tokio::task::JoinHandle<ApiResult<(StatusCode, ArtifactInfo)>>,
    ) {
        let (tmp, artifacts) = artifacts();
        let preparer = OneSlot::new();
        let (body, _) = watched(b"\0asm first", None);
        let first = upload(&artifacts, &preparer, body, LONG);
        reach(&preparer.prepares, 1).await;
        (tmp, artifacts, preparer, first)
    }

    #[tokio::test]
    async fn an_upload_body_is_read_only_once_a_compile_slot_is_free() {
        let (_tmp, artifacts, preparer, first) = slot_taken().await;
        let (second_body, second_read) = watched(b"\0asm second", None);
        let second = upload(&artifacts, &preparer, second_body, LONG);
        reach(&preparer.reserves, 2).await;
        assert!(
            !second_read.load(Ordering::SeqCst),
            "the second upload's body is not read (not buffered) while it waits for a slot"
        );

        preparer.finish.add_permits(1);
        let (status, _) = first.await.unwrap().unwrap();
        assert_eq!(status, StatusCode::CREATED);
        reach(&preparer.prepares, 2).await;
        assert!(
            second_read.load(Ordering::SeqCst),
            "read once the slot was free"
        );
        preparer.finish.add_permits(1);
        let (status, info) = second.await.unwrap().unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(info.size, 11);
        assert!(artifacts.info(&info.digest).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn an_upload_that_waits_too_long_is_refused_unread() {
        let (_tmp, artifacts, preparer, first) = slot_taken().await;
        let (body, read) = watched(b"\0asm second", None);
        let err = upload(&artifacts, &preparer, body, Duration::ZERO)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.body.code, ErrorCode::CompilerBusy);
        assert_eq!(err.retry_after, Some(COMPILER_BUSY_RETRY_AFTER_SECS));
        assert!(!read.load(Ordering::SeqCst), "{}", err.body.message);

        // A body that says it is over the limit is refused at once.
        let (body, read) = watched(b"", Some(MAX_ARTIFACT_BYTES as u64 + 1));
        let err = upload(&artifacts, &preparer, body, LONG)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(!read.load(Ordering::SeqCst));

        preparer.finish.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap().0, StatusCode::CREATED);
    }
}
