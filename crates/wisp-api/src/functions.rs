//! `/v1/functions`: create, read, update, delete, publish, versions and aliases.

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery};
use crate::{AppState, function_name};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use std::sync::Arc;
use wisp_core::spec::validate_label;
use wisp_core::{
    Alias, AliasInput, AliasList, AliasName, Deployment, ErrorBody, Function, FunctionInput,
    FunctionList, FunctionName, FunctionVersion, ValidationError, VersionId, VersionList,
};
use wisp_store::WriteMode;

fn alias_name(s: &str) -> Result<AliasName, ApiError> {
    s.parse()
        .map_err(|e| ValidationError::new("alias", format!("{e}")).into())
}

fn version_number(s: &str) -> Result<u32, ApiError> {
    match s.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(ValidationError::new(
            "version",
            format!("`{s}` is not a published version number (1, 2, 3, ...)"),
        )
        .into()),
    }
}

/// Query of `GET /v1/functions`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Label selector: `key=value` pairs separated by commas; all must match.
    #[param(schema_with = crate::schema::label_selector)]
    label: Option<String>,
}

fn parse_selector(s: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            ValidationError::new("label", format!("`{part}` is not of the form key=value"))
        })?;
        validate_label(k, v)
            .map_err(|_| ValidationError::new("label", format!("`{part}` is not a valid label")))?;
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Brings the runtime's warm state in line with a version's `min_instances`.
/// The write it follows is already committed, so a failure is only logged.
async fn warm(app: &AppState, version: &FunctionVersion) {
    let deployment = Arc::new(Deployment {
        function: version.name.clone(),
        version: version.version,
        code_digest: version.code_digest.clone(),
        config: version.config.clone(),
    });
    if let Err(e) = app.invoker.warm(deployment).await {
        tracing::warn!(function = %version.name, version = %version.version, error = %e, "could not warm");
    }
}

/// Writes `latest` of a function, checking that the artifact it refers to
/// exists (and keeping the sweep of unreferenced code away from it until
/// the write is committed), then warms it as its `min_instances` asks.
async fn write_function(
    app: &AppState,
    name: FunctionName,
    input: &FunctionInput,
    mode: WriteMode,
) -> ApiResult<(Function, bool)> {
    let claim = app.artifacts.claim().await;
    let size = match input.digest()? {
        None => 0,
        Some(digest) => match app.artifacts.touch(&digest).await? {
            Some(info) => info.size,
            None => {
                return Err(wisp_store::StoreError::ArtifactNotFound(digest.to_string()).into());
            }
        },
    };
    let written = app.store.put_function(name, input, size, mode).await?;
    drop(claim);
    warm(app, &written.0.latest).await;
    Ok(written)
}

/// List functions, optionally filtered by labels.
#[utoipa::path(get, path = "/v1/functions", tag = "functions", params(ListQuery),
    responses((status = 200, body = FunctionList), (status = 400, body = ErrorBody)))]
pub async fn list_functions(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<FunctionList>> {
    let selector = parse_selector(q.label.as_deref().unwrap_or(""))?;
    let functions = app.store.list_functions(&selector).await?;
    Ok(Json(FunctionList { functions }))
}

/// Create a function; `name` and `code_digest` are required.
#[utoipa::path(post, path = "/v1/functions", tag = "functions", request_body = inline(crate::schema::FunctionCreate),
    responses((status = 201, body = Function), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_function(
    State(app): State<AppState>,
    ApiJson(input): ApiJson<FunctionInput>,
) -> ApiResult<(StatusCode, Json<Function>)> {
    let name = input
        .function_name()?
        .ok_or_else(|| ValidationError::new("name", "is required"))?;
    let (function, _) = write_function(&app, name, &input, WriteMode::Create).await?;
    Ok((StatusCode::CREATED, Json(function)))
}

/// Get a function with its versions and aliases.
#[utoipa::path(get, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Function name")),
    responses((status = 200, body = Function), (status = 404, body = ErrorBody)))]
pub async fn get_function(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Function>> {
    Ok(Json(app.store.get_function(&function_name(&name)?).await?))
}

/// Create or replace `latest`; fields not given take their defaults.
#[utoipa::path(put, path = "/v1/functions/{name}", tag = "functions", request_body = inline(crate::schema::FunctionReplace),
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Function name")),
    responses((status = 200, body = Function), (status = 201, body = Function), (status = 400, body = ErrorBody)))]
pub async fn put_function(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiJson(input): ApiJson<FunctionInput>,
) -> ApiResult<(StatusCode, Json<Function>)> {
    let name = function_name(&name)?;
    let (function, created) = write_function(&app, name, &input, WriteMode::Replace).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(function)))
}

/// Change the given fields of `latest`.
#[utoipa::path(patch, path = "/v1/functions/{name}", tag = "functions", request_body = inline(crate::schema::FunctionUpdate),
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Function name")),
    responses((status = 200, body = Function), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn patch_function(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiJson(input): ApiJson<FunctionInput>,
) -> ApiResult<Json<Function>> {
    let name = function_name(&name)?;
    let (function, _) = write_function(&app, name, &input, WriteMode::Patch).await?;
    Ok(Json(function))
}

/// Delete a function with all its versions and aliases.
#[utoipa::path(delete, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Function name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_function(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let name = function_name(&name)?;
    app.store.delete_function(&name).await?;
    app.invoker.release(&name, None);
    app.telemetry.forget_function(&name);
    Ok(StatusCode::NO_CONTENT)
}

/// Publish `latest` as the next immutable version (or return the newest
/// version if nothing changed since it).
#[utoipa::path(post, path = "/v1/functions/{name}/versions", tag = "versions",
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Function name")),
    responses((status = 201, body = FunctionVersion), (status = 200, body = FunctionVersion), (status = 404, body = ErrorBody)))]
pub async fn publish_version(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<FunctionVersion>)> {
    let (version, created) = app.store.publish(&function_name(&name)?).await?;
    warm(&app, &version).await;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(version)))
}

/// List published versions.
#[utoipa::path(get, path = "/v1/functions/{name}/versions", tag = "versions",
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Function name")),
    responses((status = 200, body = VersionList), (status = 404, body = ErrorBody)))]
pub async fn list_versions(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<VersionList>> {
    let versions = app.store.list_versions(&function_name(&name)?).await?;
    Ok(Json(VersionList { versions }))
}

/// Get one published version.
#[utoipa::path(get, path = "/v1/functions/{name}/versions/{version}", tag = "versions",
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Function name"), ("version" = u32, Path, minimum = 1, description = "Version number")),
    responses((status = 200, body = FunctionVersion), (status = 404, body = ErrorBody)))]
pub async fn get_version(
    State(app): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<FunctionVersion>> {
    let name = function_name(&name)?;
    Ok(Json(
        app.store
            .get_version(&name, version_number(&version)?)
            .await?,
    ))
}

/// Delete one published version; 409 if an alias points at it.
#[utoipa::path(delete, path = "/v1/functions/{name}/versions/{version}", tag = "versions",
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Function name"), ("version" = u32, Path, minimum = 1, description = "Version number")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_version(
    State(app): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let name = function_name(&name)?;
    let number = version_number(&version)?;
    app.store.delete_version(&name, number).await?;
    app.invoker
        .release(&name, Some(VersionId::Published(number)));
    app.telemetry
        .forget_version(&name, VersionId::Published(number));
    Ok(StatusCode::NO_CONTENT)
}

/// Create an alias.
#[utoipa::path(post, path = "/v1/functions/{name}/aliases", tag = "aliases", request_body = inline(crate::schema::AliasCreate),
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Function name")),
    responses((status = 201, body = Alias), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_alias(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiJson(input): ApiJson<AliasInput>,
) -> ApiResult<(StatusCode, Json<Alias>)> {
    let name = function_name(&name)?;
    let alias = input
        .name
        .as_deref()
        .ok_or_else(|| ValidationError::new("name", "is required"))
        .map_err(ApiError::from)
        .and_then(|a| {
            a.parse::<AliasName>()
                .map_err(|e| ValidationError::new("name", format!("{e}")).into())
        })?;
    let (version, routing) = input.validate()?;
    let alias = app
        .store
        .create_alias(&name, &alias, version, routing)
        .await?;
    Ok((StatusCode::CREATED, Json(alias)))
}

/// List a function's aliases.
#[utoipa::path(get, path = "/v1/functions/{name}/aliases", tag = "aliases",
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Function name")),
    responses((status = 200, body = AliasList), (status = 404, body = ErrorBody)))]
pub async fn list_aliases(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<AliasList>> {
    let aliases = app.store.list_aliases(&function_name(&name)?).await?;
    Ok(Json(AliasList { aliases }))
}

/// Get one alias.
#[utoipa::path(get, path = "/v1/functions/{name}/aliases/{alias}", tag = "aliases",
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Function name"), ("alias" = inline(wisp_core::AliasName), Path, description = "Alias name")),
    responses((status = 200, body = Alias), (status = 404, body = ErrorBody)))]
pub async fn get_alias(
    State(app): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
) -> ApiResult<Json<Alias>> {
    let name = function_name(&name)?;
    Ok(Json(
        app.store.get_alias(&name, &alias_name(&alias)?).await?,
    ))
}

/// Repoint an alias (its version and routing are replaced).
#[utoipa::path(put, path = "/v1/functions/{name}/aliases/{alias}", tag = "aliases", request_body = inline(crate::schema::AliasUpdate),
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Function name"), ("alias" = inline(wisp_core::AliasName), Path, description = "Alias name")),
    responses((status = 200, body = Alias), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_alias(
    State(app): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
    ApiJson(input): ApiJson<AliasInput>,
) -> ApiResult<Json<Alias>> {
    let name = function_name(&name)?;
    let alias = alias_name(&alias)?;
    if input.name.as_deref().is_some_and(|n| n != alias.as_str()) {
        return Err(ValidationError::new("name", "does not match the alias in the path").into());
    }
    let (version, routing) = input.validate()?;
    Ok(Json(
        app.store
            .update_alias(&name, &alias, version, routing)
            .await?,
    ))
}

/// Delete an alias.
#[utoipa::path(delete, path = "/v1/functions/{name}/aliases/{alias}", tag = "aliases",
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Function name"), ("alias" = inline(wisp_core::AliasName), Path, description = "Alias name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_alias(
    State(app): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let name = function_name(&name)?;
    app.store.delete_alias(&name, &alias_name(&alias)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
