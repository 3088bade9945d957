//! `/v1/artifacts`: upload a component; it is validated and compiled before
//! anything is stored.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::read_body;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use wisp_core::{ArtifactInfo, Digest, ErrorBody, ErrorCode, Swept, ValidationError};
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

/// Upload a component (the raw `.wasm` bytes as the body, as
/// `application/wasm` or `application/octet-stream`). It is validated,
/// linked against Wisp's host interfaces and compiled before it is stored;
/// uploading the same bytes again is a no-op that answers 200.
#[utoipa::path(post, path = "/v1/artifacts", tag = "artifacts",
    request_body(content(
        (inline(crate::schema::Binary) = "application/wasm"),
        (inline(crate::schema::Binary) = "application/octet-stream"))),
    responses((status = 201, body = ArtifactInfo), (status = 200, body = ArtifactInfo),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn upload_artifact(
    State(app): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<ArtifactInfo>)> {
    crate::extract::require_media_type(&headers, &UPLOAD_MEDIA_TYPES)?;
    let bytes = read_body(body, wisp_core::limits::MAX_ARTIFACT_BYTES).await?;
    let digest = Digest::of(&bytes);
    // Uploading code already stored starts its grace period over.
    if let Some(info) = app.artifacts.touch(&digest).await? {
        return Ok((StatusCode::OK, Json(info)));
    }
    app.preparer.prepare(digest.clone(), bytes.clone()).await?;
    let info = app.artifacts.put(&digest, bytes).await?;
    Ok((StatusCode::CREATED, Json(info)))
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
