//! Schemas of the OpenAPI document that are not a Rust type of the API:
//! ids, queue names and number ranges of query parameters, each built from
//! the rule or limit the server checks, so that the document and the
//! checks cannot drift apart.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{Object, ObjectBuilder, Schema, SchemaType, Type};
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

/// The object schema `T` derives.
fn object_of<T: utoipa::PartialSchema>() -> Object {
    match T::schema() {
        RefOr::T(Schema::Object(o)) => o,
        _ => Object::new(),
    }
}

/// Changes property `name` of `o` (a field of a derived schema).
fn property(o: &mut Object, name: &str, change: impl FnOnce(&mut Object)) {
    if let Some(RefOr::T(Schema::Object(p))) = o.properties.get_mut(name) {
        change(p);
    }
}

/// Bounds of a number property.
fn range(o: &mut Object, name: &str, min: u64, max: u64) {
    property(o, name, |p| {
        p.minimum = Some(min.into());
        p.maximum = Some(max.into());
    });
}

/// Makes `fields` required and not `null`.
fn require(o: &mut Object, fields: &[&str]) {
    for field in fields {
        o.required.push(field.to_string());
        property(o, field, |p| {
            if let SchemaType::Array(types) = &p.schema_type
                && let Some(ty) = types.iter().find(|t| **t != Type::Null)
            {
                p.schema_type = SchemaType::Type(ty.clone());
            }
        });
    }
}

/// A string-to-string map property: at most `max` entries, names and
/// values matching their patterns.
fn map(o: &mut Object, name: &str, max: usize, names: &str, values: &str) {
    property(o, name, |p| {
        p.max_properties = Some(max);
        p.property_names = Some(Box::new(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(names))
                .into(),
        ));
        p.additional_properties = Some(Box::new(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(values))
                .into(),
        ));
    });
}

/// A function body with the rules of each field a JSON Schema can state
/// (from `wisp_core::limits` and the patterns of names and digests), and
/// `required` as the operation requires.
fn function_body(required: &[&str]) -> RefOr<Schema> {
    use wisp_core::limits::*;
    use wisp_core::spec::*;
    let mut o = object_of::<wisp_core::FunctionInput>();
    property(&mut o, "name", |p| {
        p.pattern = Some(wisp_core::names::NAME_PATTERN.into());
        p.max_length = Some(wisp_core::names::MAX_NAME_LEN);
    });
    property(&mut o, "code_digest", |p| {
        p.pattern = Some(wisp_core::digest::DIGEST_PATTERN.into());
    });
    property(&mut o, "description", |p| {
        p.max_length = Some(MAX_DESCRIPTION_CHARS);
    });
    map(
        &mut o,
        "labels",
        MAX_LABELS,
        LABEL_KEY_PATTERN,
        LABEL_VALUE_PATTERN,
    );
    map(
        &mut o,
        "env",
        MAX_ENV_VARS,
        ENV_NAME_PATTERN,
        ENV_VALUE_PATTERN,
    );
    range(
        &mut o,
        "memory_mib",
        MIN_MEMORY_MIB.into(),
        MAX_MEMORY_MIB.into(),
    );
    range(&mut o, "timeout_ms", MIN_TIMEOUT_MS, MAX_TIMEOUT_MS);
    range(&mut o, "max_concurrency", 1, MAX_CONCURRENCY.into());
    range(&mut o, "min_instances", 0, MAX_MIN_INSTANCES.into());
    range(
        &mut o,
        "max_requests_per_instance",
        1,
        MAX_REQUESTS_PER_INSTANCE.into(),
    );
    require(&mut o, required);
    o.into()
}

/// An alias body, with `required` as the operation requires.
fn alias_body(required: &[&str]) -> RefOr<Schema> {
    let mut o = object_of::<wisp_core::AliasInput>();
    property(&mut o, "name", |p| {
        p.pattern = Some(wisp_core::names::ALIAS_PATTERN.into());
        p.max_length = Some(wisp_core::names::MAX_NAME_LEN);
    });
    range(&mut o, "version", 1, u32::MAX.into());
    require(&mut o, required);
    o.into()
}

macro_rules! body_schema {
    ($(#[$doc:meta])* $ty:ident, $schema:expr, $base:ty) => {
        $(#[$doc])*
        pub struct $ty;

        impl utoipa::PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                $schema
            }
        }

        impl utoipa::ToSchema for $ty {
            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                <$base as utoipa::ToSchema>::schemas(schemas);
            }
        }
    };
}

body_schema!(
    /// `POST /v1/functions`: `name` and `code_digest` are required.
    FunctionCreate,
    function_body(&["name", "code_digest"]),
    wisp_core::FunctionInput
);
body_schema!(
    /// `PUT /v1/functions/{name}`: `code_digest` is required.
    FunctionReplace,
    function_body(&["code_digest"]),
    wisp_core::FunctionInput
);
body_schema!(
    /// `PATCH /v1/functions/{name}`: every field is optional.
    FunctionUpdate,
    function_body(&[]),
    wisp_core::FunctionInput
);
body_schema!(
    /// `POST /v1/functions/{name}/aliases`: `name` and `version` are required.
    AliasCreate,
    alias_body(&["name", "version"]),
    wisp_core::AliasInput
);
body_schema!(
    /// `PUT /v1/functions/{name}/aliases/{alias}`: `version` is required.
    AliasUpdate,
    alias_body(&["version"]),
    wisp_core::AliasInput
);
