//! Schemas of the OpenAPI document that are not a Rust type of the API:
//! ids, queue names and number ranges of query parameters, each built from
//! the rule or limit the server checks, so that the document and the
//! checks cannot drift apart.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use wisp_core::names::string_schema;

/// An invocation (and dead letter) id.
pub struct InvocationId;

impl utoipa::PartialSchema for InvocationId {
    fn schema() -> RefOr<Schema> {
        string_schema(
            wisp_queue::id::ID_PATTERN,
            Some(wisp_queue::id::ID_LEN),
            "32 lowercase hex digits",
        )
    }
}

impl utoipa::ToSchema for InvocationId {}

/// A dead-letter queue name, as `wisp_core::destination::check_queue_name`
/// accepts it.
pub struct DeadLetterQueueName;

impl utoipa::PartialSchema for DeadLetterQueueName {
    fn schema() -> RefOr<Schema> {
        string_schema(
            wisp_core::destination::QUEUE_NAME_PATTERN,
            Some(wisp_core::destination::MAX_QUEUE_NAME_LEN),
            "`default`, or a name from an `on_failure = \"dlq:QUEUE\"`",
        )
    }
}

impl utoipa::ToSchema for DeadLetterQueueName {}

/// An integer from 1 to `max`.
fn count(max: u32) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
            utoipa::openapi::KnownFormat::Int32,
        )))
        .minimum(Some(1))
        .maximum(Some(max))
        .into()
}

/// `limit` of the list of dead letters and of a function's invocations.
pub fn queue_list_limit() -> RefOr<Schema> {
    count(wisp_queue::limits::MAX_LIST_LIMIT)
}

/// `limit` of a log query.
pub fn log_limit() -> RefOr<Schema> {
    count(wisp_core::limits::MAX_LOG_QUERY_LIMIT)
}

/// An invocation's status, as `GET /v1/functions/{name}/invocations`
/// filters by it.
pub fn invocation_status() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(
            wisp_queue::Status::ALL
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
        ))
        .into()
}

/// The path and query an asynchronous invocation's function sees.
pub fn request_path() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^/"))
        .description(Some("starts with `/`"))
        .into()
}

/// Raw bytes of a request body.
pub struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Binary,
            )))
            .into()
    }
}

impl utoipa::ToSchema for Binary {}

/// A label selector, `key=value` pairs separated by commas.
pub fn label_selector() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(wisp_core::spec::LABEL_SELECTOR_PATTERN))
        .into()
}
