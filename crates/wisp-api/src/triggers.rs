//! Triggers over HTTP: `/v1/triggers` to create, replace, list, get,
//! delete, enable and disable them; `POST /hooks/{name}` where webhook
//! triggers receive requests; and [`QueueSink`], the durable queue as the
//! trigger sources see it.

use crate::error::{ApiError, ApiResult};
use crate::extract::read_body;
use crate::{App, AppState};
use async_trait::async_trait;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use std::sync::Weak;
use std::time::Duration;
use wisp_core::{ErrorBody, ErrorCode, FunctionName, Target, ValidationError};
use wisp_queue::{Enqueued, Status as QueueStatus, StoredRequest};
use wisp_store::{StoreError, StoredTrigger};
use wisp_triggers::{
    BatchOutcome, CursorStore, Delivery, EventSink, Message, SinkError, SourceConfig, Trigger,
    TriggerSpec,
};

/// Largest trigger definition accepted, in bytes.
const MAX_SPEC_BODY: usize = wisp_store::triggers::MAX_TRIGGER_SPEC_BYTES;

/// The durable queue behind [`EventSink`], holding the app weakly (the app
/// owns the trigger manager, which owns this).
pub struct QueueSink(pub Weak<App>);

impl QueueSink {
    fn app(&self) -> Result<AppState, SinkError> {
        self.0
            .upgrade()
            .ok_or_else(|| SinkError::Unavailable("the server is shutting down".into()))
    }
}

fn sink_queue_error(e: wisp_queue::QueueError) -> SinkError {
    match e {
        wisp_queue::QueueError::Full { .. } => SinkError::Full,
        other => SinkError::Unavailable(other.to_string()),
    }
}

async fn target_policy(app: &App, target: &Target) -> Result<wisp_core::AsyncConfig, SinkError> {
    let resolved = app
        .store
        .resolve(&target.name, &target.qualifier)
        .await
        .map_err(|e| SinkError::Target(e.to_string()))?;
    Ok(resolved.primary.config.async_policy.clone())
}

#[async_trait]
impl EventSink for QueueSink {
    async fn enqueue(&self, target: &Target, deliveries: Vec<Delivery>) -> Result<(), SinkError> {
        let app = self.app()?;
        let policy = target_policy(&app, target).await?;
        let qualifier = target.qualifier.to_string();
        let mut batch = Vec::with_capacity(deliveries.len());
        for chunk in deliveries.chunks(wisp_queue::limits::MAX_BATCH_LEN) {
            batch.clear();
            for d in chunk {
                let mut inv =
                    crate::events::invocation(&target.name, &qualifier, &policy, &d.event);
                if d.partition_key.is_some() {
                    inv.partition_key = d.partition_key.clone();
                }
                if d.idempotency_key.is_some() {
                    inv.idempotency_key = d.idempotency_key.clone();
                }
                batch.push(inv);
            }
            let results = app
                .queue
                .enqueue(std::mem::take(&mut batch))
                .await
                .map_err(sink_queue_error)?;
            app.dispatcher_wake.notify_one();
            if results.iter().any(|r| matches!(r, Enqueued::Full { .. })) {
                return Err(SinkError::Full);
            }
        }
        Ok(())
    }

    async fn run_batch(
        &self,
        target: &Target,
        key: &str,
        events: Vec<wisp_events::Event>,
    ) -> Result<BatchOutcome, SinkError> {
        let id = {
            let app = self.app()?;
            let policy = target_policy(&app, target).await?;
            let body = serde_json::to_vec(&wisp_events::to_batch_json(&events))
                .map_err(|e| SinkError::Unavailable(e.to_string()))?;
            let mut inv = wisp_queue::NewInvocation::new(
                target.name.clone(),
                target.qualifier.to_string(),
                StoredRequest {
                    method: "POST".into(),
                    path_and_query: "/".into(),
                    headers: vec![(
                        "content-type".into(),
                        "application/cloudevents-batch+json".into(),
                    )],
                    body,
                },
            );
            inv.policy = crate::asynchronous::queue_policy(&policy);
            inv.partition_key = Some(format!("stream/{key}"));
            let results = app
                .queue
                .enqueue(vec![inv])
                .await
                .map_err(sink_queue_error)?;
            app.dispatcher_wake.notify_one();
            match results.into_iter().next() {
                Some(Enqueued::Accepted { id } | Enqueued::Duplicate { id }) => id,
                _ => return Err(SinkError::Full),
            }
        };
        // Wait for the outcome, retries included. The caller stops waiting
        // (drops this future) when its trigger is stopped.
        let mut delay = Duration::from_millis(2);
        loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
            let app = self.app()?;
            let inv = app
                .queue
                .get(&id)
                .await
                .map_err(|e| SinkError::Unavailable(e.to_string()))?
                .ok_or_else(|| SinkError::Unavailable(format!("invocation {id} vanished")))?;
            match inv.status {
                QueueStatus::Succeeded => return Ok(BatchOutcome::Succeeded),
                QueueStatus::Failed | QueueStatus::Dead => {
                    return Ok(BatchOutcome::Failed {
                        invocation_id: id,
                        error: inv.error.unwrap_or_default(),
                    });
                }
                _ => {}
            }
        }
    }

    async fn forget_dead_letter(&self, invocation_id: &str) -> Result<(), SinkError> {
        let app = self.app()?;
        app.queue
            .delete_dead(invocation_id)
            .await
            .map(|_| ())
            .map_err(|e| SinkError::Unavailable(e.to_string()))
    }
}

#[async_trait]
impl CursorStore for QueueSink {
    async fn load_cursor(&self, trigger: &str) -> Result<Option<String>, SinkError> {
        let app = self.app()?;
        app.trigger_store
            .trigger_cursor(trigger)
            .await
            .map_err(|e| SinkError::Unavailable(e.to_string()))
    }

    async fn save_cursor(&self, trigger: &str, cursor: &str) -> Result<(), SinkError> {
        let app = self.app()?;
        app.trigger_store
            .save_trigger_cursor(trigger, cursor)
            .await
            .map_err(|e| SinkError::Unavailable(e.to_string()))
    }
}

fn trigger_name(s: &str) -> Result<String, ApiError> {
    // The same rule as function names.
    s.parse::<FunctionName>()
        .map(|n| n.to_string())
        .map_err(|e| ValidationError::new("name", format!("`{s}`: {e}")).into())
}

fn parse_spec(value: serde_json::Value) -> Result<TriggerSpec, ApiError> {
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("invalid trigger definition: {e}")))
}

fn decode(stored: &StoredTrigger) -> Result<Trigger, ApiError> {
    let spec: TriggerSpec = serde_json::from_str(&stored.spec).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            format!("stored trigger `{}` is unreadable: {e}", stored.name),
        )
    })?;
    Ok(Trigger {
        name: stored.name.clone(),
        spec,
        created_at: stored.created_at,
        updated_at: stored.updated_at,
    })
}

fn view(app: &App, t: &Trigger) -> serde_json::Value {
    let mut spec = t.spec.clone();
    spec.source = spec.source.redacted();
    let mut v = serde_json::to_value(&spec).unwrap_or_default();
    let status = app.triggers.status(&t.name);
    v["name"] = t.name.clone().into();
    v["status"] = serde_json::to_value(status).unwrap_or_default();
    v["created_at"] = serde_json::to_value(t.created_at).unwrap_or_default();
    v["updated_at"] = serde_json::to_value(t.updated_at).unwrap_or_default();
    if matches!(t.spec.source, SourceConfig::Webhook(_)) {
        v["webhook_path"] = format!("/hooks/{}", t.name).into();
    }
    v
}

/// Validates, checks the target exists, stores and (re)starts a trigger.
async fn save(
    app: &AppState,
    name: &str,
    spec: TriggerSpec,
    create: bool,
) -> ApiResult<serde_json::Value> {
    let target = spec.validate()?;
    if let SourceConfig::Webhook(w) = &spec.source
        && w.secret.is_none()
        && app.token.is_some()
    {
        return Err(ValidationError::new(
            "source.secret",
            "this server requires its token, so a webhook needs a secret: without one anybody \
             could queue work through /hooks/NAME; give `source.secret` (1 to 256 bytes) and \
             have the sender sign each body with it",
        )
        .into());
    }
    app.store
        .resolve(&target.name, &target.qualifier)
        .await
        .map_err(|e| match e {
            StoreError::FunctionNotFound(_)
            | StoreError::VersionNotFound { .. }
            | StoreError::AliasNotFound { .. } => {
                let mut err: ApiError = e.into();
                err.body.field = Some("target".into());
                err
            }
            other => other.into(),
        })?;
    // Keep a cron trigger's position when its schedule is unchanged.
    let keep_cursor = match app.trigger_store.get_trigger(name).await {
        Ok(old) => decode(&old).is_ok_and(|o| o.spec.source == spec.source),
        Err(_) => false,
    };
    let json = serde_json::to_string(&spec).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let stored = app
        .trigger_store
        .put_trigger(name, json, create, keep_cursor)
        .await?;
    let trigger = decode(&stored)?;
    app.triggers.apply(trigger.clone());
    Ok(view(app, &trigger))
}

/// Create a trigger: `name` plus the definition (`target`, `source`,
/// optional `filters`, `enabled`, `description`).
#[utoipa::path(post, path = "/v1/triggers", tag = "triggers",
    request_body = serde_json::Value,
    responses((status = 201, body = serde_json::Value), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_trigger(
    State(app): State<AppState>,
    body: Body,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let bytes = read_body(body, MAX_SPEC_BODY).await?;
    let mut value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let name = match value.as_object_mut().and_then(|o| o.remove("name")) {
        Some(serde_json::Value::String(n)) => trigger_name(&n)?,
        _ => return Err(ValidationError::new("name", "a trigger needs a `name` (string)").into()),
    };
    let spec = parse_spec(value)?;
    let view = save(&app, &name, spec, true).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Create or replace a trigger with this name.
#[utoipa::path(put, path = "/v1/triggers/{name}", tag = "triggers",
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Trigger name (the rule of function names)")),
    request_body = TriggerSpec,
    responses((status = 200, body = serde_json::Value), (status = 201, body = serde_json::Value),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_trigger(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let name = trigger_name(&name)?;
    let bytes = read_body(body, MAX_SPEC_BODY).await?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let spec = parse_spec(value)?;
    let exists = app.trigger_store.get_trigger(&name).await.is_ok();
    let view = save(&app, &name, spec, !exists).await?;
    let status = if exists {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(view)))
}

/// Every trigger, with its status.
#[utoipa::path(get, path = "/v1/triggers", tag = "triggers",
    responses((status = 200, body = serde_json::Value)))]
pub async fn list_triggers(State(app): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let stored = app.trigger_store.list_triggers().await?;
    let mut out = Vec::with_capacity(stored.len());
    for s in &stored {
        out.push(view(&app, &decode(s)?));
    }
    Ok(Json(serde_json::json!({ "triggers": out })))
}

/// One trigger, with its status.
#[utoipa::path(get, path = "/v1/triggers/{name}", tag = "triggers",
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Trigger name (the rule of function names)")),
    responses((status = 200, body = serde_json::Value), (status = 404, body = ErrorBody)))]
pub async fn get_trigger(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let stored = app.trigger_store.get_trigger(&trigger_name(&name)?).await?;
    Ok(Json(view(&app, &decode(&stored)?)))
}

/// Delete a trigger; its source stops.
#[utoipa::path(delete, path = "/v1/triggers/{name}", tag = "triggers",
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Trigger name (the rule of function names)")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_trigger(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let name = trigger_name(&name)?;
    app.trigger_store.delete_trigger(&name).await?;
    app.triggers.remove(&name);
    Ok(StatusCode::NO_CONTENT)
}

async fn set_enabled(app: &AppState, name: &str, enabled: bool) -> ApiResult<serde_json::Value> {
    let name = &trigger_name(name)?;
    let stored = app.trigger_store.get_trigger(name).await?;
    let mut trigger = decode(&stored)?;
    trigger.spec.enabled = enabled;
    save(app, name, trigger.spec, false).await
}

/// Enable a trigger: its source starts consuming.
#[utoipa::path(post, path = "/v1/triggers/{name}/enable", tag = "triggers",
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Trigger name (the rule of function names)")),
    responses((status = 200, body = serde_json::Value), (status = 404, body = ErrorBody)))]
pub async fn enable_trigger(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(set_enabled(&app, &name, true).await?))
}

/// Disable a trigger: its source stops; the definition is kept.
#[utoipa::path(post, path = "/v1/triggers/{name}/disable", tag = "triggers",
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Trigger name (the rule of function names)")),
    responses((status = 200, body = serde_json::Value), (status = 404, body = ErrorBody)))]
pub async fn disable_trigger(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(set_enabled(&app, &name, false).await?))
}

/// Why a webhook request was refused. On a server that requires its token
/// the answer is the same for every name, known or not.
fn refused(
    name: &str,
    config: Option<&wisp_triggers::sources::webhook::WebhookConfig>,
    strict: bool,
) -> ApiError {
    let message = match config {
        _ if strict => "no webhook trigger with this name accepts this request: there is none, \
             it has no secret, or the signature header is missing or does not match the body \
             signed with the trigger's secret"
            .to_string(),
        None => {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::TriggerNotFound,
                format!("no enabled webhook trigger `{name}`"),
            );
        }
        Some(w) => format!(
            "the `{}` header is missing or does not match the body signed with the trigger's secret",
            w.signature_header
        ),
    };
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::InvalidSignature,
        message,
    )
}

/// Headers a webhook's event does not keep.
const DROPPED_HOOK_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "content-length",
    "connection",
    "transfer-encoding",
    "content-type",
];

/// A webhook delivery: verified against the trigger's secret (401 and
/// nothing queued if the signature is missing or wrong), then queued as
/// one event (202 once it is on disk). On a server that requires its
/// token, a webhook without a secret takes nothing, and an unknown name
/// gets the same 401 as a bad signature, after the same work.
#[utoipa::path(post, path = "/hooks/{name}", tag = "triggers",
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Webhook trigger name")),
    request_body(content = inline(crate::schema::Binary), content_type = "application/octet-stream"),
    responses((status = 202, body = serde_json::Value), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn webhook(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let strict = app.token.is_some();
    let ctx = app.triggers.webhook(&name);
    let config = ctx.as_ref().and_then(|c| match &c.trigger.spec.source {
        SourceConfig::Webhook(w) => Some(w),
        _ => None,
    });
    let body = read_body(body, wisp_triggers::sources::webhook::MAX_BODY_BYTES).await?;
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    // The work of checking a signature, for a request refused without one,
    // so that it takes as long as one with a wrong signature.
    let as_if_checked = || {
        std::hint::black_box(wisp_triggers::sources::webhook::sign(&name, &body));
    };
    let verified = match (config, &ctx) {
        (Some(w), Some(ctx)) if strict && w.secret.is_none() => {
            as_if_checked();
            ctx.health.error(
                "a webhook request was refused: this server requires its token, so the \
                 trigger needs a secret",
            );
            false
        }
        (Some(w), Some(ctx)) => {
            let ok = w.verify(header(&w.signature_header), &body);
            if !ok {
                ctx.health
                    .error("a webhook request with a missing or wrong signature was refused");
            }
            ok
        }
        _ => {
            as_if_checked();
            false
        }
    };
    let (Some(config), Some(ctx), true) = (config, &ctx, verified) else {
        return Err(refused(&name, config, strict));
    };
    let mut kept: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| {
            !DROPPED_HOOK_HEADERS.contains(&k.as_str()) && k.as_str() != config.signature_header
        })
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    if let Some(ct) = header("content-type") {
        kept.push(("content-type".into(), ct.to_string()));
    }
    let event = wisp_triggers::message_event(Message {
        ty: "wisp.webhook".into(),
        source: format!("/hooks/{name}"),
        subject: header(&config.event_type_header).map(str::to_string),
        id: header(&config.delivery_id_header).map(str::to_string),
        headers: kept,
        body,
        extensions: vec![],
    })
    .map_err(ApiError::from)?;
    let id = wisp_events::AttributesReader::id(&event).to_string();
    ctx.dispatch(vec![Delivery::new(event)]).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "accepted": true, "event_id": id })),
    ))
}
