//! The dead-letter queue over HTTP: asynchronous invocations that failed
//! every attempt they were allowed (or outlived their `max_event_age`) are
//! listed, inspected with their original request, deleted, or replayed as
//! new invocations, one or all of a function's, to their own qualifier or
//! another.
//!
//! A replayed dead letter leaves the queue; it stays readable, `dead`, at
//! `/v1/invocations/{id}`, and the new invocation runs at once.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wisp_core::{ErrorBody, FunctionName, Qualifier, ValidationError};
use wisp_queue::limits::MAX_LIST_LIMIT;
use wisp_queue::{AsyncPolicy, Attempt, DeadLetter, Invocation, StoredRequest};

/// Dead letters listed when no `limit` is given.
pub const DEFAULT_LIST_LIMIT: u32 = 100;

/// One attempt of a dead-lettered invocation.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptInfo {
    /// When it was leased (or marked started).
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// What happened, short: the function's status (`500`), `timeout`,
    /// `trap`, `lease expired`, ...
    pub outcome: String,
    /// Why it failed.
    pub error: Option<String>,
}

impl From<&Attempt> for AttemptInfo {
    fn from(a: &Attempt) -> Self {
        AttemptInfo {
            started_at: a.started_at,
            finished_at: a.finished_at,
            outcome: a.outcome.clone(),
            error: a.error.clone(),
        }
    }
}

/// A dead-lettered asynchronous invocation.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterInfo {
    /// The invocation id (32 lowercase hex digits).
    pub id: String,
    /// The function.
    pub function: String,
    /// The qualifier it ran under: `latest`, a version number or an alias.
    pub qualifier: String,
    /// Always `dead` in the dead-letter queue.
    pub status: String,
    /// Every attempt, oldest first, with its error and timestamps.
    pub attempts: Vec<AttemptInfo>,
    /// When it was accepted.
    pub enqueued_at: DateTime<Utc>,
    /// When it was dead-lettered.
    pub updated_at: DateTime<Utc>,
    /// The last attempt's error (or why it expired).
    pub error: Option<String>,
    /// Its partition key, if ordered.
    pub partition_key: Option<String>,
    /// Its idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// The dead letter this invocation replayed, if it was itself a replay.
    pub replayed_from: Option<String>,
    /// The dead-letter queue it is kept in: `default`, or the one its
    /// function's `on_failure` named (`dlq:QUEUE`).
    pub queue: String,
}

impl From<&Invocation> for DeadLetterInfo {
    fn from(inv: &Invocation) -> Self {
        DeadLetterInfo {
            id: inv.id.clone(),
            function: inv.function.to_string(),
            qualifier: inv.qualifier.clone(),
            status: inv.status.as_str().to_string(),
            attempts: inv.attempts.iter().map(AttemptInfo::from).collect(),
            enqueued_at: inv.enqueued_at,
            updated_at: inv.updated_at,
            error: inv.error.clone(),
            partition_key: inv.partition_key.clone(),
            idempotency_key: inv.idempotency_key.clone(),
            replayed_from: inv.replayed_from.clone(),
            queue: inv.dead_letter_queue.clone(),
        }
    }
}

/// A page of the dead-letter queue, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterList {
    /// The dead letters (without their requests).
    pub deadletters: Vec<DeadLetterInfo>,
    /// Pass as `before` for the next page; `null` when this page is the last.
    pub next_before: Option<String>,
}

/// The request a dead letter carried, as it was enqueued.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestInfo {
    /// The method, such as `POST`.
    pub method: String,
    /// The path and query the function saw.
    pub path_and_query: String,
    /// `[name, value]` pairs, in order.
    #[schema(value_type = Vec<Vec<String>>)]
    pub headers: Vec<(String, String)>,
    /// The body as UTF-8 text (invalid sequences replaced by U+FFFD).
    pub body: String,
    /// The exact body bytes, standard base64 with padding.
    pub body_base64: String,
}

impl From<&StoredRequest> for RequestInfo {
    fn from(r: &StoredRequest) -> Self {
        RequestInfo {
            method: r.method.clone(),
            path_and_query: r.path_and_query.clone(),
            headers: r.headers.clone(),
            body: String::from_utf8_lossy(&r.body).into_owned(),
            body_base64: base64(&r.body),
        }
    }
}

/// One dead letter with its original request and policy.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterDetail {
    /// The invocation.
    #[serde(flatten)]
    pub invocation: DeadLetterInfo,
    /// The original request; a replay sends it again unchanged.
    pub request: RequestInfo,
    /// The async policy it ran under (retries, backoff, event age,
    /// semantics); a replay reuses it.
    #[schema(value_type = Object)]
    pub policy: AsyncPolicy,
}

/// The answer to replaying one dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    /// The new invocation's id.
    pub id: String,
    /// Where to follow it: `/v1/invocations/{id}`.
    pub status_url: String,
    /// The dead letter it replays.
    pub replayed_from: String,
    /// The function.
    pub function: String,
    /// The qualifier the new invocation runs under.
    pub qualifier: String,
}

/// The answer to replaying a function's dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayedAll {
    /// How many dead letters were queued again.
    pub replayed: u64,
}

/// Query of `GET /v1/deadletters`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this function's dead letters (default: every function's).
    #[param(value_type = Option<FunctionName>, inline)]
    function: Option<String>,
    /// Only the dead letters of this dead-letter queue: `default`, or a
    /// name from an `on_failure = "dlq:QUEUE"` (default: every queue's).
    #[param(value_type = Option<crate::schema::DeadLetterQueueName>, inline)]
    queue: Option<String>,
    /// At most this many (1 to 1000, default 100).
    #[param(schema_with = crate::schema::queue_list_limit)]
    limit: Option<u32>,
    /// Only dead letters older than this id (a previous page's `next_before`).
    #[param(value_type = Option<crate::schema::InvocationId>, inline)]
    before: Option<String>,
}

/// Query of `POST /v1/deadletters/{id}/replay`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReplayQuery {
    /// Version, alias or `latest` to run the replay under (default: the
    /// dead letter's own qualifier).
    #[param(value_type = Option<Qualifier>, inline)]
    qualifier: Option<String>,
}

/// Query of `POST /v1/deadletters/replay`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReplayAllQuery {
    /// The function whose dead letters are replayed.
    #[param(required = true, value_type = FunctionName, inline)]
    function: Option<String>,
    /// Version, alias or `latest` to run the replays under (default: each
    /// dead letter's own qualifier).
    #[param(value_type = Option<Qualifier>, inline)]
    qualifier: Option<String>,
}

/// The dead-letter queue, newest first: of one function or of all, of one
/// named dead-letter queue or of all.
#[utoipa::path(get, path = "/v1/deadletters", tag = "deadletters", params(ListQuery),
    responses((status = 200, body = DeadLetterList), (status = 400, body = ErrorBody)))]
pub async fn list_deadletters(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<DeadLetterList>> {
    let function = q.function.as_deref().map(function_field).transpose()?;
    if let Some(queue) = &q.queue {
        wisp_core::destination::check_queue_name(queue)
            .map_err(|e| ValidationError::new("queue", e.to_string()))?;
    }
    let limit = list_limit(q.limit)?;
    if let Some(b) = &q.before
        && !wisp_queue::is_valid_id(b)
    {
        return Err(ValidationError::new(
            "before",
            "must be a dead letter id (32 lowercase hex digits), such as a previous page's `next_before`",
        )
        .into());
    }
    let list = app
        .queue
        .dead_letters(
            function.as_ref(),
            q.queue.as_deref(),
            limit,
            q.before.as_deref(),
        )
        .await?;
    let next_before = if list.len() == limit as usize {
        list.last().map(|i| i.id.clone())
    } else {
        None
    };
    Ok(Json(DeadLetterList {
        deadletters: list.iter().map(DeadLetterInfo::from).collect(),
        next_before,
    }))
}

/// One dead letter: every attempt's error, the original request and the policy.
#[utoipa::path(get, path = "/v1/deadletters/{id}", tag = "deadletters",
    params(("id" = inline(crate::schema::InvocationId), Path, description = "Dead letter (invocation) id")),
    responses((status = 200, body = DeadLetterDetail), (status = 404, body = ErrorBody)))]
pub async fn get_deadletter(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeadLetterDetail>> {
    let letter = find(&app, &id).await?;
    Ok(Json(DeadLetterDetail {
        invocation: DeadLetterInfo::from(&letter.invocation),
        request: RequestInfo::from(&letter.request),
        policy: letter.policy,
    }))
}

/// Delete a dead letter with its request.
#[utoipa::path(delete, path = "/v1/deadletters/{id}", tag = "deadletters",
    params(("id" = inline(crate::schema::InvocationId), Path, description = "Dead letter (invocation) id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_deadletter(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if app.queue.delete_dead(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&app, &id).await)
    }
}

/// Queue a dead letter's original request again as a new invocation, with
/// the same policy and partition key, under `qualifier` or its own. The
/// dead letter leaves the queue (it stays readable at `/v1/invocations/{id}`).
#[utoipa::path(post, path = "/v1/deadletters/{id}/replay", tag = "deadletters",
    params(("id" = inline(crate::schema::InvocationId), Path, description = "Dead letter (invocation) id"), ReplayQuery),
    responses((status = 202, body = Replayed), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn replay_deadletter(
    State(app): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ReplayQuery>,
) -> ApiResult<(StatusCode, Json<Replayed>)> {
    if let Some(qualifier) = &q.qualifier {
        qualifier_field(qualifier)?;
    }
    let letter = find(&app, &id).await?;
    // A target that does not resolve is refused now rather than dead-lettered again.
    let target = q
        .qualifier
        .as_deref()
        .unwrap_or(&letter.invocation.qualifier);
    let parsed = qualifier_field(target)?;
    app.store
        .resolve(&letter.invocation.function, &parsed)
        .await?;
    let qualifier = target.to_string();
    let new_id = app.queue.replay(&id, q.qualifier).await?;
    app.dispatcher_wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(Replayed {
            status_url: format!("/v1/invocations/{new_id}"),
            id: new_id,
            replayed_from: id,
            function: letter.invocation.function.to_string(),
            qualifier,
        }),
    ))
}

/// Replay every dead letter of a function, oldest first, under `qualifier`
/// or each one's own. Letters that die while this runs wait for the next
/// call; at the function's queue depth limit it stops early (429 if it
/// could replay none).
#[utoipa::path(post, path = "/v1/deadletters/replay", tag = "deadletters", params(ReplayAllQuery),
    responses((status = 202, body = ReplayedAll), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn replay_all_deadletters(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ReplayAllQuery>,
) -> ApiResult<(StatusCode, Json<ReplayedAll>)> {
    let Some(function) = q.function.as_deref() else {
        return Err(ValidationError::new(
            "function",
            "required: the function whose dead letters to replay",
        )
        .into());
    };
    let function = function_field(function)?;
    let parsed = match &q.qualifier {
        Some(qualifier) => qualifier_field(qualifier)?,
        None => Qualifier::Latest,
    };
    // An unknown function (or target qualifier) is a 404, not a silent zero.
    app.store.resolve(&function, &parsed).await?;
    let replayed = app.queue.replay_all(&function, q.qualifier).await?;
    if replayed > 0 {
        app.dispatcher_wake.notify_one();
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(ReplayedAll {
            replayed: replayed as u64,
        }),
    ))
}

/// The dead letter `id`, or a 404.
async fn find(app: &AppState, id: &str) -> ApiResult<DeadLetter> {
    match app.queue.dead_letter(id).await? {
        Some(letter) => Ok(letter),
        None => Err(not_found(app, id).await),
    }
}

/// 404 `dead_letter_not_found` for `id`, saying why when the invocation exists but is
/// not in the dead-letter queue (replayed, or never dead).
async fn not_found(app: &AppState, id: &str) -> ApiError {
    let message = match app.queue.get(id).await {
        Ok(Some(inv)) => match &inv.replayed_as {
            Some(new) => format!(
                "invocation `{id}` is no longer in the dead-letter queue: it was replayed as `{new}`"
            ),
            None => format!(
                "invocation `{id}` is not in the dead-letter queue (it is {})",
                inv.status
            ),
        },
        _ => format!("no dead letter `{id}`"),
    };
    ApiError::dead_letter_not_found(message)
}

/// The `limit` of a listing of the queue: 1 to `MAX_LIST_LIMIT`, by
/// default [`DEFAULT_LIST_LIMIT`].
pub(crate) fn list_limit(limit: Option<u32>) -> ApiResult<u32> {
    let limit = limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(
            ValidationError::new("limit", format!("must be from 1 to {MAX_LIST_LIMIT}")).into(),
        );
    }
    Ok(limit)
}

/// Parses the `function` query field.
fn function_field(s: &str) -> ApiResult<FunctionName> {
    s.parse()
        .map_err(|e| ValidationError::new("function", format!("`{s}`: {e}")).into())
}

/// Parses the `qualifier` query field.
fn qualifier_field(s: &str) -> ApiResult<Qualifier> {
    s.parse().map_err(|e| {
        ValidationError::new(
            "qualifier",
            format!("`{s}` is not `latest`, a version number or an alias name: {e}"),
        )
        .into()
    })
}

/// Standard base64 (RFC 4648 section 4) with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let triple = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(triple >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }
}
