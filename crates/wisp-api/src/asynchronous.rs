//! Asynchronous invocation: `POST /v1/functions/{name}/invocations` answers
//! 202 once the request is durably queued; the [`Dispatcher`] leases queued
//! invocations and runs them through the same [`wisp_core::Invoker`] as the
//! data plane, retrying and dead-lettering per the policy.

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, read_body};
use crate::{AppState, function_name};
use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};
use wisp_core::{ErrorBody, FunctionName, InvokeError, Qualifier, ValidationError};
use wisp_queue::{
    Completion, Enqueued, Invocation, LeaseToken, Leased, NewInvocation, Status, StoredRequest,
    StoredResponse,
};

/// Request header naming the partition key (ordered delivery per key).
pub const PARTITION_KEY_HEADER: &str = "x-wisp-partition-key";
/// Request header carrying an idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "x-wisp-idempotency-key";

/// Query of `POST /v1/functions/{name}/invocations`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AsyncQuery {
    /// Version, alias or `latest` (the default), resolved when it runs.
    #[param(value_type = Option<wisp_core::Qualifier>, inline)]
    qualifier: Option<String>,
    /// Path and query the function sees (default `/`).
    #[param(schema_with = crate::schema::request_path)]
    path: Option<String>,
}

/// Queue an invocation. The body and headers are passed to the function as
/// a POST to `path`. Answers 202 with the invocation id once it is on disk;
/// an idempotency key seen before answers 202 with the original id.
#[utoipa::path(post, path = "/v1/functions/{name}/invocations", tag = "invocations",
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Function name"), AsyncQuery),
    request_body(content = inline(crate::schema::Binary), content_type = "application/octet-stream"),
    responses((status = 202, body = serde_json::Value), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn invoke_async(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<AsyncQuery>,
    request: Request,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    let name = function_name(&name)?;
    let qualifier = q.qualifier.unwrap_or_else(|| "latest".into());
    let path = q.path.unwrap_or_else(|| "/".into());
    if !path.starts_with('/') {
        return Err(ValidationError::new("path", "must start with `/`").into());
    }
    let (parts, body) = request.into_parts();
    let body = read_body(body, wisp_queue::limits::MAX_BODY_BYTES).await?;
    let request = StoredRequest {
        method: "POST".into(),
        path_and_query: path,
        headers: forwarded_headers(&parts.headers),
        body: body.into(),
    };
    let accepted = enqueue_request(&app, name, qualifier, request, &parts.headers).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// Queues one request for `name:qualifier` (which must resolve now:
/// unknown targets are refused rather than dead-lettered later), taking the
/// partition and idempotency keys from `headers`.
pub(crate) async fn enqueue_request(
    app: &AppState,
    name: FunctionName,
    qualifier: String,
    request: StoredRequest,
    headers: &HeaderMap,
) -> ApiResult<Accepted> {
    let parsed: Qualifier = qualifier
        .parse()
        .map_err(|e| ValidationError::new("qualifier", format!("{e}")))?;
    let resolved = app.store.resolve(&name, &parsed).await?;
    let policy = queue_policy(&resolved.primary.config.async_policy);
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let mut invocation = NewInvocation::new(name, qualifier, request);
    invocation.policy = policy;
    invocation.partition_key = header(PARTITION_KEY_HEADER);
    invocation.idempotency_key = header(IDEMPOTENCY_KEY_HEADER);
    let mut accepted = enqueue(app, vec![invocation]).await?;
    accepted
        .pop()
        .ok_or_else(|| ApiError::internal("the queue answered nothing for the invocation"))
}

/// The queue's form of a function's asynchronous policy.
pub(crate) fn queue_policy(c: &wisp_core::AsyncConfig) -> wisp_queue::policy::AsyncPolicy {
    use wisp_queue::policy::Semantics as Q;
    wisp_queue::policy::AsyncPolicy {
        max_retries: c.max_retries,
        backoff_min: Duration::from_millis(c.backoff_min_ms),
        backoff_max: Duration::from_millis(c.backoff_max_ms),
        max_event_age: Duration::from_millis(c.max_event_age_ms),
        semantics: match c.semantics {
            wisp_core::Semantics::AtLeastOnce => Q::AtLeastOnce,
            wisp_core::Semantics::AtMostOnce => Q::AtMostOnce,
            wisp_core::Semantics::EffectivelyOnce => Q::EffectivelyOnce,
        },
        idempotency_window: Duration::from_millis(c.idempotency_window_ms),
        retry_on_4xx: c.retry_on_4xx,
        // `on_failure = "dlq:QUEUE"` keeps dead invocations in that queue.
        dead_letter_queue: c
            .on_failure
            .as_deref()
            .and_then(|d| d.parse::<wisp_core::Destination>().ok())
            .and_then(|d| d.dead_letter_queue().map(str::to_string)),
    }
}

/// Request headers worth keeping for a queued invocation.
pub(crate) fn forwarded_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "host" | "authorization" | "content-length" | "connection" | "transfer-encoding"
            ) && !k.as_str().starts_with("x-wisp-")
        })
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// One queued invocation, as a 202 answers it:
/// `{"id": ..., "status_url": "/v1/invocations/{id}", "duplicate": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The invocation id (the original one for a duplicate).
    pub id: String,
    /// Whether an invocation with the same idempotency key was accepted before.
    pub duplicate: bool,
}

impl Accepted {
    /// Writes the three fields into a JSON object being serialized.
    pub(crate) fn write_fields<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("status_url", &format_args!("/v1/invocations/{}", self.id))?;
        map.serialize_entry("duplicate", &self.duplicate)
    }
}

impl Serialize for Accepted {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(3))?;
        self.write_fields(&mut map)?;
        map.end()
    }
}

/// Enqueues a batch and describes each result as the 202 body does; a
/// full queue refuses the whole request with 429.
pub(crate) async fn enqueue(app: &AppState, batch: Vec<NewInvocation>) -> ApiResult<Vec<Accepted>> {
    let results = app.queue.enqueue(batch).await?;
    let mut out = Vec::with_capacity(results.len());
    for result in results {
        let (id, duplicate) = match result {
            Enqueued::Accepted { id } => (id, false),
            Enqueued::Duplicate { id } => (id, true),
            Enqueued::Full { function } => {
                return Err(ApiError::throttled(format!(
                    "the queue of `{function}` is full; retry later"
                )));
            }
        };
        out.push(Accepted { id, duplicate });
    }
    app.dispatcher_wake.notify_one();
    Ok(out)
}

/// The JSON form of an invocation (bodies as lossy UTF-8 text).
fn invocation_json(inv: &Invocation) -> serde_json::Value {
    serde_json::json!({
        "id": inv.id,
        "function": inv.function,
        "qualifier": inv.qualifier,
        "status": inv.status.as_str(),
        "attempts": inv.attempts,
        "enqueued_at": inv.enqueued_at,
        "updated_at": inv.updated_at,
        "next_attempt_at": inv.next_attempt_at,
        "error": inv.error,
        "partition_key": inv.partition_key,
        "idempotency_key": inv.idempotency_key,
        "replayed_from": inv.replayed_from,
        "replayed_as": inv.replayed_as,
        "result": inv.result.as_ref().map(|r| serde_json::json!({
            "status": r.status,
            "headers": r.headers,
            "body": String::from_utf8_lossy(&r.body),
            "truncated": r.truncated,
        })),
    })
}

/// One asynchronous invocation: status, attempts and result.
#[utoipa::path(get, path = "/v1/invocations/{id}", tag = "invocations",
    params(("id" = inline(crate::schema::InvocationId), Path, description = "Invocation id")),
    responses((status = 200, body = serde_json::Value), (status = 404, body = ErrorBody)))]
pub async fn get_invocation(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    match app.queue.get(&id).await? {
        Some(inv) => Ok(Json(invocation_json(&inv))),
        None => Err(ApiError::invocation_not_found(&id)),
    }
}

/// Query of `GET /v1/functions/{name}/invocations`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this status.
    #[param(schema_with = crate::schema::invocation_status)]
    status: Option<String>,
    /// At most this many (1 to 1000, default 100).
    #[param(schema_with = crate::schema::queue_list_limit)]
    limit: Option<u32>,
}

/// Recent asynchronous invocations of a function, newest first.
#[utoipa::path(get, path = "/v1/functions/{name}/invocations", tag = "invocations",
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Function name"), ListQuery),
    responses((status = 200, body = serde_json::Value), (status = 400, body = ErrorBody)))]
pub async fn list_invocations(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let name = function_name(&name)?;
    let status = q
        .status
        .map(|s| {
            s.parse::<Status>()
                .map_err(|e| ValidationError::new("status", e.to_string()))
        })
        .transpose()?;
    let limit = crate::deadletters::list_limit(q.limit)?;
    let list = app.queue.list(&name, status, limit, None).await?;
    let list: Vec<serde_json::Value> = list.iter().map(invocation_json).collect();
    Ok(Json(serde_json::json!({ "invocations": list })))
}

/// Runs queued invocations in the background.
///
/// The dispatch loop leases runnable invocations in batches, ahead of free
/// execution slots, and each runs on a task of its own. Finished attempts
/// go to a recorder task that records everything finished meanwhile with
/// one [`complete_many`](wisp_queue::InvocationQueue::complete_many) call:
/// under load one queue write carries many leases and many completions.
pub struct Dispatcher;

/// Lease visibility: longer than any function timeout, so a running
/// invocation is never handed out twice.
const VISIBILITY: Duration = Duration::from_secs(16 * 60);
/// Asynchronous invocations running at once.
const CONCURRENCY: usize = 64;
/// Invocations held at once: running, leased and waiting for a slot, or
/// finished and waiting for their outcome to be recorded. Bounds the
/// requests kept in memory.
const IN_FLIGHT: usize = 2 * CONCURRENCY;
/// While invocations are in flight, the dispatcher waits for room for this
/// many before it leases again, so that leases come in batches.
const MIN_LEASE: usize = 16;
/// Most outcomes recorded with one queue write.
const COMPLETION_BATCH: usize = 256;
/// Response bytes read from a function for the stored result.
const RESULT_READ_LIMIT: usize = wisp_queue::limits::MAX_RESULT_BYTES + 1;

/// An outcome waiting to be recorded, and who waits for its status.
type Outcome = (
    LeaseToken,
    Completion,
    oneshot::Sender<Result<Status, wisp_queue::QueueError>>,
);

impl Dispatcher {
    /// Starts the dispatch loop and the recorder on the current tokio runtime.
    pub fn start(app: AppState) {
        let (record, outcomes) = mpsc::unbounded_channel();
        tokio::spawn(record_outcomes(app.clone(), outcomes));
        tokio::spawn(async move {
            let running = Arc::new(Semaphore::new(CONCURRENCY));
            let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
            loop {
                // Room for a batch (everything, when nothing is in flight),
                // plus whatever else is free.
                let Ok(mut room) = in_flight.clone().acquire_many_owned(MIN_LEASE as u32).await
                else {
                    return;
                };
                let more = in_flight.available_permits() as u32;
                if more > 0
                    && let Ok(extra) = in_flight.clone().try_acquire_many_owned(more)
                {
                    room.merge(extra);
                }
                let max = room.num_permits().min(wisp_queue::limits::MAX_LEASE_BATCH);
                let leased = match app.queue.lease(max, VISIBILITY).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not lease invocations");
                        drop(room);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if leased.is_empty() {
                    drop(room);
                    // Woken by a new enqueue, or poll for retries coming due.
                    let _ = tokio::time::timeout(
                        Duration::from_millis(250),
                        app.dispatcher_wake.notified(),
                    )
                    .await;
                    continue;
                }
                for item in leased {
                    // One unit of room each (the lease took no more than there was).
                    let held = room.split(1);
                    let (app, running, record) = (app.clone(), running.clone(), record.clone());
                    tokio::spawn(async move {
                        run_one(&app, item, &running, &record).await;
                        drop(held);
                    });
                }
                // Whatever room the lease did not fill is given back here.
                drop(room);
            }
        });
    }
}

/// Records outcomes as they come, everything that arrived meanwhile with
/// one queue write, and answers each with its new status.
async fn record_outcomes(app: AppState, mut outcomes: mpsc::UnboundedReceiver<Outcome>) {
    let mut buf = Vec::with_capacity(COMPLETION_BATCH);
    while outcomes.recv_many(&mut buf, COMPLETION_BATCH).await > 0 {
        let mut batch = Vec::with_capacity(buf.len());
        let mut waiting = Vec::with_capacity(buf.len());
        for (lease, completion, reply) in buf.drain(..) {
            batch.push((lease, completion));
            waiting.push(reply);
        }
        match app.queue.complete_many(batch).await {
            Ok(statuses) => {
                for (reply, status) in waiting.into_iter().zip(statuses) {
                    let _ = reply.send(status);
                }
            }
            Err(e) => {
                let e = e.to_string();
                for reply in waiting {
                    let _ = reply.send(Err(wisp_queue::QueueError::Database(e.clone())));
                }
            }
        }
    }
}

/// Runs one leased invocation when a slot is free, has its outcome
/// recorded, then delivers it to its destination.
async fn run_one(
    app: &AppState,
    item: Leased,
    running: &Arc<Semaphore>,
    record: &mpsc::UnboundedSender<Outcome>,
) {
    let Ok(slot) = running.acquire().await else {
        return;
    };
    // The outcome is kept for delivery only if the function has a
    // destination for it (as resolved for this attempt).
    let (result, on_success, on_failure) = match resolve(app, &item).await {
        Ok(resolved) => {
            let policy = &resolved.primary.config.async_policy;
            let wanted = (policy.on_success.is_some(), policy.on_failure.is_some());
            (execute(app, &item, &resolved).await, wanted.0, wanted.1)
        }
        Err(failed) => (Ok(failed), false, false),
    };
    drop(slot);
    let lease = item.lease.clone();
    let completion = match result {
        Ok(c) => c,
        Err(Released(delay)) => {
            if let Err(e) = app.queue.release(&lease, delay).await {
                tracing::warn!(error = %e, "could not release an invocation");
            }
            return;
        }
    };
    let outcome = match &completion {
        Completion::Succeeded { response } if on_success => Some(Ok(response.clone())),
        Completion::Failed { error, .. } if on_failure => Some(Err(error.clone())),
        _ => None,
    };
    let (reply, status) = oneshot::channel();
    let recorded = match record.send((lease, completion, reply)) {
        Ok(()) => status.await.unwrap_or(Err(wisp_queue::QueueError::Closed)),
        Err(_) => Err(wisp_queue::QueueError::Closed),
    };
    match recorded {
        Ok(status) => {
            if let Some(outcome) = outcome {
                destinations::deliver(app, &item, status, outcome).await;
            }
        }
        Err(e) => {
            tracing::warn!(id = %item.lease.id, error = %e, "could not record an invocation's outcome")
        }
    }
}

/// On-success and on-failure destinations: an event to another function
/// or to a broker (NATS, RabbitMQ, MQTT, Redis), or a named dead-letter
/// queue.
mod destinations {
    use super::*;
    use wisp_core::Destination;
    use wisp_events::{Event, EventBuilder, EventBuilderV10};

    fn event(item: &Leased, kind: &str, data: serde_json::Value) -> Option<Event> {
        let inv = &item.invocation;
        EventBuilderV10::new()
            .id(format!("{}-{kind}", inv.id))
            .source(format!("/wisp/functions/{}", inv.function))
            .ty(format!("wisp.invocation.{kind}"))
            .subject(inv.id.clone())
            .data("application/json", data)
            .build()
            .ok()
    }

    /// The event an on-success destination gets: the function's reply
    /// event if it answered with one, else the response wrapped.
    fn success_event(item: &Leased, response: &StoredResponse) -> Option<Event> {
        let mut builder = http::Response::builder().status(response.status);
        for (k, v) in &response.headers {
            builder = builder.header(k, v);
        }
        if let Ok(res) = builder.body(()) {
            let (parts, ()) = res.into_parts();
            match wisp_events::reply_from_response(
                &parts,
                bytes::Bytes::from(response.body.clone()),
            ) {
                Ok(Some(reply)) => return Some(reply),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(id = %item.invocation.id, error = %e, "invalid reply event")
                }
            }
        }
        event(
            item,
            "succeeded",
            serde_json::json!({
                "invocation_id": item.invocation.id,
                "function": item.invocation.function,
                "status": response.status,
                "body": String::from_utf8_lossy(&response.body),
            }),
        )
    }

    /// Sends the outcome of a finished invocation to its function's
    /// destination: queued for a function, published (on a task of its
    /// own, with retries) for a broker; nothing for a named dead-letter
    /// queue, which the queue already filled.
    pub(super) async fn deliver(
        app: &AppState,
        item: &Leased,
        status: Status,
        outcome: Result<StoredResponse, String>,
    ) {
        let inv = &item.invocation;
        let Ok(qualifier) = inv.qualifier.parse::<Qualifier>() else {
            return;
        };
        let Ok(resolved) = app.store.resolve(&inv.function, &qualifier).await else {
            return;
        };
        let policy = &resolved.primary.config.async_policy;
        let configured = match (status, &outcome) {
            (Status::Succeeded, Ok(_)) => &policy.on_success,
            (Status::Dead | Status::Failed, Err(_)) => &policy.on_failure,
            _ => return,
        };
        let Some(configured) = configured else { return };
        let destination = match configured.parse::<Destination>() {
            Ok(Destination::DeadLetterQueue(_)) => return,
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(id = %inv.id, destination = %wisp_core::destination::redact(configured), error = %e, "invalid destination; event not delivered");
                return;
            }
        };
        let event = match (&outcome, status) {
            (Ok(response), Status::Succeeded) => success_event(item, response),
            (Err(error), _) => event(
                item,
                "failed",
                serde_json::json!({
                    "invocation_id": inv.id,
                    "function": inv.function,
                    "error": error,
                    "attempt": item.attempt,
                    "request": {
                        "method": item.request.method,
                        "path": item.request.path_and_query,
                        "body": String::from_utf8_lossy(&item.request.body),
                    },
                }),
            ),
            _ => None,
        };
        let Some(event) = event else { return };
        let target = match destination {
            Destination::Function(target) => target,
            Destination::Broker(broker) => {
                wisp_triggers::Publisher::shared()
                    .publish_detached(broker, event)
                    .await;
                return;
            }
            Destination::DeadLetterQueue(_) => return,
        };
        let resolved = match app.store.resolve(&target.name, &target.qualifier).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(id = %inv.id, destination = %target, error = %e, "destination unavailable; event not delivered");
                return;
            }
        };
        let dest_policy = resolved.primary.config.async_policy.clone();
        let next = crate::events::invocation(
            &target.name,
            &target.qualifier.to_string(),
            &dest_policy,
            &event,
        );
        if let Err(e) = enqueue(app, vec![next]).await {
            tracing::warn!(id = %inv.id, destination = %target, error = %e, "could not queue the destination event");
        }
    }
}

/// Reads a response body, keeping at most [`RESULT_READ_LIMIT`] bytes
/// (the rest is drained so the function can finish).
async fn read_capped(mut body: wisp_core::Body) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            let room = RESULT_READ_LIMIT.saturating_sub(out.len());
            out.extend_from_slice(&data[..room.min(data.len())]);
        }
    }
    Ok(out)
}

/// Handing the invocation back without counting an attempt.
struct Released(Duration);

fn failed(outcome: &str, error: String, retryable: bool) -> Completion {
    Completion::Failed {
        error,
        outcome: outcome.to_string(),
        retryable,
    }
}

/// What the invocation's qualifier resolves to now, or the failure to
/// record if it no longer resolves.
async fn resolve(app: &AppState, item: &Leased) -> Result<wisp_store::Resolved, Completion> {
    let inv = &item.invocation;
    let Ok(qualifier) = inv.qualifier.parse::<Qualifier>() else {
        return Err(failed(
            "invalid",
            format!("`{}` is not a qualifier", inv.qualifier),
            false,
        ));
    };
    app.store
        .resolve(&inv.function, &qualifier)
        .await
        .map_err(|e| failed("not found", e.to_string(), false))
}

async fn execute(
    app: &AppState,
    item: &Leased,
    resolved: &wisp_store::Resolved,
) -> Result<Completion, Released> {
    let inv = &item.invocation;
    let deployment = resolved.pick(rand::random::<f64>()).clone();
    let req = &item.request;
    let mut builder = http::Request::builder()
        .method(req.method.as_str())
        .uri(format!("http://localhost{}", req.path_and_query));
    for (k, v) in &req.headers {
        builder = builder.header(k, v);
    }
    let body = http_body_util::Full::new(bytes::Bytes::from(req.body.clone()))
        .map_err(|never: std::convert::Infallible| -> wisp_core::BoxError { match never {} })
        .boxed_unsync();
    let request = match builder.body(body) {
        Ok(r) => r,
        Err(e) => {
            return Ok(failed(
                "invalid",
                format!("the stored request is unusable: {e}"),
                false,
            ));
        }
    };
    let semantics_at_most_once = matches!(
        item.policy.semantics,
        wisp_queue::policy::Semantics::AtMostOnce
    );
    if semantics_at_most_once && app.queue.mark_started(&item.lease).await.is_err() {
        return Err(Released(Duration::from_secs(1)));
    }
    match app
        .invoker
        .invoke(deployment, inv.id.clone(), request)
        .await
    {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let bytes = match read_capped(body).await {
                Ok(b) => b,
                Err(e) => {
                    return Ok(failed(
                        "body",
                        format!("reading the response failed: {e}"),
                        true,
                    ));
                }
            };
            let status = parts.status.as_u16();
            let headers = parts
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                .collect();
            if status >= 400 {
                let retryable = status >= 500 || item.policy.retry_on_4xx;
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
                return Ok(failed(
                    &status.to_string(),
                    format!("the function answered {status}: {text}"),
                    retryable,
                ));
            }
            Ok(Completion::Succeeded {
                response: StoredResponse::capped(status, headers, bytes),
            })
        }
        Err(InvokeError::Throttled { .. } | InvokeError::Overloaded { .. }) => {
            // Not an attempt: the function never ran. Async work honours
            // the function's concurrency like sync traffic does.
            Err(Released(Duration::from_millis(200)))
        }
        Err(e) => {
            let outcome = match &e {
                InvokeError::Timeout { .. } => "timeout",
                InvokeError::MemoryLimit { .. } | InvokeError::HostLimit { .. } => "memory limit",
                InvokeError::Trapped { .. } => "trap",
                InvokeError::NoResponse { .. } => "no response",
                _ => "unavailable",
            };
            Ok(failed(outcome, e.to_string(), true))
        }
    }
}
