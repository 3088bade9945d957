//! `/v1/artifacts`: upload a component; it is validated and compiled before
//! anything is stored.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::read_body;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use std::sync::Arc;
use wisp_core::{ArtifactInfo, Digest, ErrorBody, ErrorCode, ValidationError};
use wisp_store::artifacts::ArtifactDir;

/// Async access to the artifact directory (its I/O is blocking).
#[derive(Clone)]
pub struct Artifacts(pub Arc<ArtifactDir>);

impl Artifacts {
    /// Size of a stored artifact, if present.
    pub async fn info(&self, digest: &Digest) -> Result<Option<ArtifactInfo>, std::io::Error> {
        let dir = self.0.clone();
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || dir.info(&digest))
            .await
            .map_err(std::io::Error::other)?
    }

    async fn put(
        &self,
        digest: &Digest,
        bytes: axum::body::Bytes,
    ) -> std::io::Result<ArtifactInfo> {
        let dir = self.0.clone();
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || dir.put(&digest, &bytes))
            .await
            .map_err(std::io::Error::other)?
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        tracing::error!(error = %e, "artifact storage failure");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            format!("artifact storage failed: {e}"),
        )
    }
}

/// Upload a component (the raw `.wasm` bytes as the body). It is validated,
/// linked against Wisp's host interfaces and compiled before it is stored;
/// uploading the same bytes again is a no-op that answers 200.
#[utoipa::path(post, path = "/v1/artifacts", tag = "artifacts",
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses((status = 201, body = ArtifactInfo), (status = 200, body = ArtifactInfo),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn upload_artifact(
    State(app): State<AppState>,
    body: Body,
) -> ApiResult<(StatusCode, Json<ArtifactInfo>)> {
    let bytes = read_body(body, wisp_core::limits::MAX_ARTIFACT_BYTES).await?;
    let digest = Digest::of(&bytes);
    if let Some(info) = app.artifacts.info(&digest).await? {
        return Ok((StatusCode::OK, Json(info)));
    }
    app.preparer.prepare(digest.clone(), bytes.clone()).await?;
    let info = app.artifacts.put(&digest, bytes).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// Look up an uploaded artifact.
#[utoipa::path(get, path = "/v1/artifacts/{digest}", tag = "artifacts",
    params(("digest" = String, Path, description = "sha256:<hex>")),
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
