//! The HTTP face of Wisp: the control-plane REST API under `/v1` (with its
//! OpenAPI document generated from the Rust types at `/v1/openapi.json`)
//! and the data plane under `/fn/NAME[:QUALIFIER]/...`.
//!
//! This crate never links wasmtime: it reaches the runtime only through the
//! [`wisp_core::Invoker`] and [`wisp_core::Preparer`] traits, and the store
//! through [`wisp_store::MetadataStore`].
//!
//! ```no_run
//! # fn demo(app: wisp_api::AppState) {
//! let router: axum::Router = wisp_api::router(app.clone());
//! // Or, with the data plane ahead of the router, for `axum::serve`:
//! let surface = wisp_api::Surface::new(app).into_make_service();
//! # }
//! ```

pub mod artifacts;
pub mod asynchronous;
pub mod auth;
pub mod dataplane;
pub mod deadletters;
pub mod error;
pub mod events;
pub mod extract;
pub mod functions;
pub mod metrics;
pub mod schema;
pub mod telemetry;
pub mod triggers;

use axum::Json;
use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use error::ApiError;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wisp_core::{
    ErrorCode, FunctionName, Health, Invoker, Preparer, RuntimeState, ValidationError,
};
use wisp_store::MetadataStore;

pub use artifacts::{Artifacts, SweepError};
pub use telemetry::Telemetry;

/// Everything the handlers share.
pub struct App {
    /// Function metadata.
    pub store: Arc<dyn MetadataStore>,
    /// Uploaded components.
    pub artifacts: Artifacts,
    /// Validates and compiles components at upload.
    pub preparer: Arc<dyn Preparer>,
    /// Runs functions.
    pub invoker: Arc<dyn Invoker>,
    /// Stats and logs.
    pub telemetry: Arc<Telemetry>,
    /// Live runtime gauges, for `/metrics`.
    pub runtime_state: Arc<dyn RuntimeState>,
    /// Durable queue of asynchronous invocations.
    pub queue: Arc<dyn wisp_queue::InvocationQueue>,
    /// Wakes the dispatcher when something is queued.
    pub dispatcher_wake: tokio::sync::Notify,
    /// Trigger definitions and source cursors.
    pub trigger_store: Arc<dyn wisp_store::TriggerStore>,
    /// The running trigger sources.
    pub triggers: Arc<wisp_triggers::Manager>,
    /// Bearer token the control API requires, if any.
    pub token: Option<String>,
    /// Largest request body forwarded to a function.
    pub max_invoke_body: usize,
}

/// Shared handler state.
pub type AppState = Arc<App>;

/// Parses a function name from a path, as a 400 naming the field.
pub(crate) fn function_name(s: &str) -> Result<FunctionName, ApiError> {
    s.parse()
        .map_err(|e| ValidationError::new("name", format!("`{s}`: {e}")).into())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Wisp control API", description = "Deploy, version and invoke WebAssembly functions."),
    tags(
        (name = "functions", description = "Create, read, update and delete functions"),
        (name = "versions", description = "Immutable published versions"),
        (name = "aliases", description = "Named pointers at versions, with weighted routing"),
        (name = "artifacts", description = "Component uploads"),
        (name = "observability", description = "Logs and stats"),
        (name = "invocations", description = "Asynchronous invocations"),
        (name = "deadletters", description = "Dead-letter queue: inspect, delete and replay failed asynchronous invocations"),
        (name = "triggers", description = "Event sources connected to functions: cron, webhooks, NATS, RabbitMQ, MQTT, Redis"),
        (name = "system", description = "Health and metrics"),
    ),
    components(schemas(wisp_core::ErrorBody, wisp_core::ErrorCode))
)]
struct ApiDoc;

/// Server liveness and version.
#[utoipa::path(get, path = "/v1/health", tag = "system", responses((status = 200, body = Health)))]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// The API's routes and the OpenAPI document describing exactly them.
fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use functions::*;
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_functions, create_function))
        .routes(routes!(
            get_function,
            put_function,
            patch_function,
            delete_function
        ))
        .routes(routes!(publish_version, list_versions))
        .routes(routes!(get_version, delete_version))
        .routes(routes!(create_alias, list_aliases))
        .routes(routes!(get_alias, update_alias, delete_alias))
        .routes(routes!(
            asynchronous::invoke_async,
            asynchronous::list_invocations
        ))
        .routes(routes!(asynchronous::get_invocation))
        .routes(routes!(deadletters::list_deadletters))
        .routes(routes!(
            deadletters::get_deadletter,
            deadletters::delete_deadletter
        ))
        .routes(routes!(deadletters::replay_deadletter))
        .routes(routes!(deadletters::replay_all_deadletters))
        .routes(routes!(events::post_events))
        .routes(routes!(triggers::list_triggers, triggers::create_trigger))
        .routes(routes!(
            triggers::get_trigger,
            triggers::put_trigger,
            triggers::delete_trigger
        ))
        .routes(routes!(triggers::enable_trigger))
        .routes(routes!(triggers::disable_trigger))
        .routes(routes!(telemetry::get_logs))
        .routes(routes!(telemetry::get_stats))
        .routes(routes!(artifacts::upload_artifact))
        .routes(routes!(artifacts::get_artifact))
        .split_for_parts()
}

/// `doc` with the routes that need no token: health, metrics, webhooks.
fn with_unauthenticated_routes(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    document_errors(&mut doc, true);
    let (_, mut open_doc) = OpenApiRouter::<AppState>::new()
        .routes(routes!(health))
        .routes(routes!(metrics::scrape))
        .routes(routes!(triggers::webhook))
        .split_for_parts();
    document_errors(&mut open_doc, false);
    doc.merge(open_doc);
    document_optional_bodies(&mut doc);
    doc
}

/// Operations whose body may be left out: an empty update changes nothing,
/// and an invocation or a webhook delivery may carry no body. (Every other
/// body has a field that is required.)
const OPTIONAL_BODIES: [(&str, &str); 3] = [
    ("patch", "/v1/functions/{name}"),
    ("post", "/v1/functions/{name}/invocations"),
    ("post", "/hooks/{name}"),
];

/// Marks the bodies of [`OPTIONAL_BODIES`] as optional.
fn document_optional_bodies(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::Required;
    for (method, path) in OPTIONAL_BODIES {
        let op = doc.paths.paths.get_mut(path).and_then(|item| match method {
            "post" => item.post.as_mut(),
            "put" => item.put.as_mut(),
            "patch" => item.patch.as_mut(),
            _ => None,
        });
        if let Some(utoipa::openapi::RefOr::T(body)) = op.and_then(|op| op.request_body.as_mut()) {
            body.required = Some(Required::False);
        }
    }
}

/// Adds the errors every operation of a kind can answer, the same way the
/// handlers reach them: 400 where a parameter or a body is parsed (every
/// handler checks its input), 413 where a body is read (always with a
/// limit), and 401 where the control API's token is checked.
fn document_errors(doc: &mut utoipa::openapi::OpenApi, token: bool) {
    use utoipa::openapi::{Content, Ref, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("ErrorBody"))),
            )
            .build()
    };
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            let responses = &mut op.responses.responses;
            let mut add = |status: &str, description: &str| {
                responses
                    .entry(status.to_string())
                    .or_insert_with(|| error(description).into());
            };
            if op.parameters.as_ref().is_some_and(|p| !p.is_empty()) || op.request_body.is_some() {
                add(
                    "400",
                    "The input is invalid: `invalid_request` or `invalid_field`",
                );
            }
            if op.request_body.is_some() {
                add("413", "The body is over its limit: `payload_too_large`");
            }
            if token {
                add(
                    "401",
                    "The bearer token is missing or wrong: `unauthorized`",
                );
            }
        }
    }
}

/// `GET /v1/openapi.json`: the document, serialized once when the router
/// is built (about 56 KB), so a request copies no tree of maps and
/// serializes nothing.
fn openapi_route(doc: utoipa::openapi::OpenApi) -> axum::routing::MethodRouter<AppState> {
    let json = match serde_json::to_vec(&doc) {
        Ok(json) => Ok(bytes::Bytes::from(json)),
        Err(e) => Err(format!("the OpenAPI document could not be serialized: {e}")),
    };
    get(move || {
        let json = json.clone();
        async move {
            match json {
                Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
                Err(message) => ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    message,
                )
                .into_response(),
            }
        }
    })
}

async fn no_route(req: Request) -> ApiError {
    let _ = req;
    ApiError::no_route()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "this method is not allowed on this route; see /v1/openapi.json",
    )
}

/// The whole HTTP surface as one service, the data plane first: a request
/// under `/fn/` goes straight to [`dataplane::invoke`], the rest through
/// [`router`] (which routes `/fn/` the same way). The invocation path skips
/// the router's matching, parameter extraction and boxing.
#[derive(Clone)]
pub struct Surface {
    app: AppState,
    router: Router,
}

impl Surface {
    /// The surface of `app`.
    pub fn new(app: AppState) -> Self {
        Surface {
            router: router(app.clone()),
            app,
        }
    }

    /// For `axum::serve`: every connection gets a clone.
    pub fn into_make_service(self) -> tower::make::Shared<Self> {
        tower::make::Shared::new(self)
    }
}

/// Whether a path is the data plane's: `/fn/` and a target after it.
fn is_data_plane(path: &str) -> bool {
    path.len() > "/fn/".len() && path.starts_with("/fn/")
}

impl tower::Service<Request> for Surface {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if is_data_plane(req.uri().path()) {
            let app = self.app.clone();
            Box::pin(async move { Ok(dataplane::invoke(axum::extract::State(app), req).await) })
        } else {
            Box::pin(tower::Service::call(&mut self.router, req))
        }
    }
}

/// The whole HTTP surface: control API, health, metrics, OpenAPI and data
/// plane. Health and metrics are open; the control API needs the token.
pub fn router(app: AppState) -> Router {
    // One build of the routes gives both the router and the document.
    let (api, doc) = api();
    let openapi_json = openapi_route(with_unauthenticated_routes(doc));
    let api = api.route_layer(axum::middleware::from_fn_with_state(
        app.clone(),
        auth::require_token,
    ));
    Router::new()
        .merge(api)
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics::scrape))
        .route("/v1/openapi.json", openapi_json)
        .route("/fn/{*rest}", any(dataplane::invoke))
        .route("/hooks/{name}", axum::routing::post(triggers::webhook))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

#[cfg(test)]
mod tests {
    use super::is_data_plane;

    #[test]
    fn only_data_plane_paths_with_a_target_skip_the_router() {
        assert!(is_data_plane("/fn/hello"));
        assert!(is_data_plane("/fn/hello:2/a/b"));
        // No target: the router's 404, as before.
        assert!(!is_data_plane("/fn/"));
        assert!(!is_data_plane("/fn"));
        assert!(!is_data_plane("/fnx/hello"));
        assert!(!is_data_plane("/v1/functions/hello"));
    }
}
