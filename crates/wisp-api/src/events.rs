//! CloudEvents ingress: `POST /v1/functions/{name}/events` takes events in
//! binary, structured or batch mode, validates them, and queues each one as
//! a binary-mode request for the function (202 once all are on disk).

use crate::asynchronous::{PARTITION_KEY_HEADER, enqueue};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, read_body};
use crate::{AppState, function_name};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Request, StatusCode};
use serde::Deserialize;
use wisp_core::{ErrorBody, ErrorCode, Qualifier, ValidationError};
use wisp_events::{AttributesReader, Event, EventError};
use wisp_queue::{NewInvocation, StoredRequest};

/// Largest events request body (a whole batch), in bytes.
pub const MAX_EVENTS_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Query of `POST /v1/functions/{name}/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Version, alias or `latest` (the default), resolved when each event runs.
    qualifier: Option<String>,
}

impl From<EventError> for ApiError {
    fn from(e: EventError) -> Self {
        let status = e.status_code();
        let code = match status.as_u16() {
            413 => ErrorCode::PayloadTooLarge,
            _ if e.attribute().is_some() => ErrorCode::InvalidField,
            _ => ErrorCode::InvalidRequest,
        };
        let mut err = ApiError::new(
            StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_REQUEST),
            code,
            e.to_string(),
        );
        err.body.field = e.attribute().map(str::to_string);
        err
    }
}

/// The queued form of one event: a binary-mode POST to `/`, ordered by the
/// `partitionkey` extension when present, and for effectively-once
/// functions deduplicated by `source` + `id` (CloudEvents' identity of an
/// event).
pub(crate) fn invocation(
    name: &wisp_core::FunctionName,
    qualifier: &str,
    policy: &wisp_core::AsyncConfig,
    event: &Event,
) -> NewInvocation {
    let request = wisp_events::to_binary_request(event, "/");
    let (parts, body) = request.into_parts();
    let headers = parts
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let mut inv = NewInvocation::new(
        name.clone(),
        qualifier,
        StoredRequest {
            method: "POST".into(),
            path_and_query: "/".into(),
            headers,
            body: body.to_vec(),
        },
    );
    inv.partition_key = event
        .extension("partitionkey")
        .map(|v| v.to_string())
        .filter(|k| !k.is_empty());
    if policy.semantics == wisp_core::Semantics::EffectivelyOnce {
        inv.idempotency_key = Some(format!("{}\u{0}{}", event.source(), event.id()));
    }
    inv.policy = crate::asynchronous::queue_policy(policy);
    inv
}

/// Accept CloudEvents for a function: binary mode (`ce-*` headers),
/// structured (`application/cloudevents+json`) or batch
/// (`application/cloudevents-batch+json`). Each event is queued as an
/// asynchronous invocation under the function's `async_policy`; for an
/// effectively-once function, an event whose `source` and `id` were seen
/// before (within the idempotency window) gets its original invocation id.
#[utoipa::path(post, path = "/v1/functions/{name}/events", tag = "invocations",
    params(("name" = String, Path, description = "Function name"), EventsQuery),
    request_body(content = Vec<u8>, content_type = "application/cloudevents+json"),
    responses((status = 202, body = serde_json::Value), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn post_events(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let name = function_name(&name)?;
    let qualifier = q.qualifier.unwrap_or_else(|| "latest".into());
    let parsed: Qualifier = qualifier
        .parse()
        .map_err(|e| ValidationError::new("qualifier", format!("{e}")))?;
    let resolved = app.store.resolve(&name, &parsed).await?;
    let policy = resolved.primary.config.async_policy.clone();
    let bytes = read_body(body, MAX_EVENTS_BODY_BYTES).await?;
    let mut request = Request::new(());
    *request.headers_mut() = headers.clone();
    *request.method_mut() = http::Method::POST;
    let (parts, ()) = request.into_parts();
    let events = wisp_events::parse_request(&parts, bytes)?;
    let mut batch: Vec<NewInvocation> = events
        .iter()
        .map(|e| invocation(&name, &qualifier, &policy, e))
        .collect();
    // A partition key header applies to events that do not carry one.
    if let Some(key) = headers
        .get(PARTITION_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        for inv in batch.iter_mut().filter(|i| i.partition_key.is_none()) {
            inv.partition_key = Some(key.to_string());
        }
    }
    let accepted = enqueue(&app, batch).await?;
    let accepted: Vec<serde_json::Value> = accepted
        .into_iter()
        .zip(&events)
        .map(|(mut a, e)| {
            a["event_id"] = serde_json::Value::String(e.id().to_string());
            a
        })
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "accepted": accepted })),
    ))
}
