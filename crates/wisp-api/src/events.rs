//! CloudEvents ingress: `POST /v1/functions/{name}/events` takes events in
//! binary, structured or batch mode, validates them, and queues each one as
//! a binary-mode request for the function (202 once all are on disk).
//!
//! Each event goes straight from the parsed [`Event`] to the stored request
//! (the headers and body of a binary-mode POST), without an intermediate
//! `http::Request`, and the answer is serialized from plain structs.

use crate::asynchronous::{Accepted, PARTITION_KEY_HEADER, enqueue};
use crate::error::ApiResult;
use crate::extract::{ApiQuery, read_body};
use crate::{AppState, function_name};
use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use wisp_core::{ErrorBody, Qualifier, ValidationError};
use wisp_events::{AttributesReader, Event};
use wisp_queue::{NewInvocation, StoredRequest};

/// Largest events request body (a whole batch), in bytes.
pub const MAX_EVENTS_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Query of `POST /v1/functions/{name}/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Version, alias or `latest` (the default), resolved when each event runs.
    #[param(value_type = Option<Qualifier>, inline)]
    qualifier: Option<String>,
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
    invocation_with(
        name,
        qualifier,
        policy.semantics,
        crate::asynchronous::queue_policy(policy),
        event,
    )
}

/// [`invocation`] with the queue's policy already made.
fn invocation_with(
    name: &wisp_core::FunctionName,
    qualifier: &str,
    semantics: wisp_core::Semantics,
    policy: wisp_queue::AsyncPolicy,
    event: &Event,
) -> NewInvocation {
    let mut inv = NewInvocation::new(name.clone(), qualifier, binary_request(event));
    inv.partition_key = event
        .extension("partitionkey")
        .map(|v| v.to_string())
        .filter(|k| !k.is_empty());
    if semantics == wisp_core::Semantics::EffectivelyOnce {
        inv.idempotency_key = Some(format!("{}\u{0}{}", event.source(), event.id()));
    }
    inv.policy = policy;
    inv
}

/// The event as the stored request of a binary-mode `POST /`: exactly the
/// headers and body [`wisp_events::to_binary_request`] gives, minus header
/// values that are not visible ASCII (which a stored request cannot keep),
/// built without a header map.
fn binary_request(event: &Event) -> StoredRequest {
    let mut headers: Vec<(String, String)> = Vec::with_capacity(8);
    wisp_events::for_each_attribute(event, |attribute, value| {
        let name = format!("{}{attribute}", wisp_events::HEADER_PREFIX);
        let value = wisp_events::encode_header_value(value);
        // A header map keeps one value per name, where it was first set.
        match headers.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => headers.push((name, value)),
        }
    });
    if let Some(ct) = wisp_events::binary_content_type(event)
        .filter(|ct| ct.bytes().all(|b| b == b'\t' || (32..127).contains(&b)))
    {
        headers.push(("content-type".into(), ct.to_string()));
    }
    let body = wisp_events::data_vec(event);
    StoredRequest {
        method: "POST".into(),
        path_and_query: "/".into(),
        headers,
        body,
    }
}

/// One accepted event, as the 202 lists it: the invocation's fields and
/// the event's id.
struct AcceptedEvent<'a> {
    accepted: Accepted,
    event_id: &'a str,
}

impl Serialize for AcceptedEvent<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(4))?;
        self.accepted.write_fields(&mut map)?;
        map.serialize_entry("event_id", self.event_id)?;
        map.end()
    }
}

/// The 202 body of `POST /v1/functions/{name}/events`.
#[derive(Serialize)]
struct EventsAccepted<'a> {
    accepted: Vec<AcceptedEvent<'a>>,
}

/// Accept CloudEvents for a function: binary mode (`ce-*` headers),
/// structured (`application/cloudevents+json`) or batch
/// (`application/cloudevents-batch+json`). Each event is queued as an
/// asynchronous invocation under the function's `async_policy`; for an
/// effectively-once function, an event whose `source` and `id` were seen
/// before (within the idempotency window) gets its original invocation id.
#[utoipa::path(post, path = "/v1/functions/{name}/events", tag = "invocations",
    params(("name" = inline(wisp_core::FunctionName), Path, description = "Function name"), EventsQuery),
    request_body(content = Vec<u8>, content_type = "application/cloudevents+json"),
    responses((status = 202, body = serde_json::Value), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn post_events(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
    request: Request,
) -> ApiResult<(StatusCode, axum::response::Response)> {
    let name = function_name(&name)?;
    let qualifier = q.qualifier.unwrap_or_else(|| "latest".into());
    let parsed: Qualifier = qualifier
        .parse()
        .map_err(|e| ValidationError::new("qualifier", format!("{e}")))?;
    let resolved = app.store.resolve(&name, &parsed).await?;
    let config = &resolved.primary.config.async_policy;
    let semantics = config.semantics;
    let policy = crate::asynchronous::queue_policy(config);
    // The route is a POST; the events are read from its own headers.
    let (parts, body) = request.into_parts();
    let bytes = read_body(body, MAX_EVENTS_BODY_BYTES).await?;
    let events = wisp_events::parse_request(&parts, bytes)?;
    // A partition key header applies to events that do not carry one.
    let partition_key = parts
        .headers
        .get(PARTITION_KEY_HEADER)
        .and_then(|v| v.to_str().ok());
    let batch: Vec<NewInvocation> = events
        .iter()
        .map(|e| {
            let mut inv = invocation_with(&name, &qualifier, semantics, policy.clone(), e);
            if inv.partition_key.is_none() {
                inv.partition_key = partition_key.map(str::to_string);
            }
            inv
        })
        .collect();
    let accepted = enqueue(&app, batch).await?;
    let body = EventsAccepted {
        accepted: accepted
            .into_iter()
            .zip(&events)
            .map(|(accepted, e)| AcceptedEvent {
                accepted,
                event_id: e.id(),
            })
            .collect(),
    };
    // Serialized here: the answer borrows the events.
    Ok((StatusCode::ACCEPTED, Json(body).into_response()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wisp_events::{EventBuilder, EventBuilderV10};

    /// What the stored request was before: the binary-mode request of
    /// `wisp_events`, its headers kept where they are visible ASCII.
    fn through_http(event: &Event) -> StoredRequest {
        let (parts, body) = wisp_events::to_binary_request(event, "/").into_parts();
        StoredRequest {
            method: "POST".into(),
            path_and_query: "/".into(),
            headers: parts
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                .collect(),
            body: body.to_vec(),
        }
    }

    #[test]
    fn events_are_stored_as_their_binary_mode_request() {
        let base = || {
            EventBuilderV10::new()
                .id("order 42/%")
                .source("/shop/orders")
                .ty("com.example.order.created")
        };
        let events = vec![
            base().build().unwrap(),
            base()
                .subject("customer \"7\"")
                .time("2025-01-02T03:04:05.123Z")
                .extension("zeta", "last")
                .extension("partitionkey", "customer 7")
                .extension("count", 42i64)
                .extension("flag", true)
                .data(
                    "application/json",
                    serde_json::json!({"total": 12, "é": [1, 2]}),
                )
                .build()
                .unwrap(),
            base()
                .data("text/plain; charset=utf-8", "hello\nthere")
                .build()
                .unwrap(),
            base()
                .data("application/octet-stream", vec![0u8, 159, 146, 150])
                .build()
                .unwrap(),
            base()
                .data("text/plain; name=\"héllo\"", "not ASCII, so not kept")
                .build()
                .unwrap(),
            {
                let mut e = base().build().unwrap();
                e.set_data_unchecked(serde_json::json!([1, 2, 3]));
                e
            },
        ];
        for event in &events {
            assert_eq!(binary_request(event), through_http(event), "{event}");
        }
        let with_time = binary_request(&events[1]);
        assert!(
            with_time
                .headers
                .contains(&("ce-time".into(), "2025-01-02T03:04:05.123Z".into()))
        );
        assert!(
            with_time
                .headers
                .contains(&("ce-partitionkey".into(), "customer%207".into()))
        );
    }
}
