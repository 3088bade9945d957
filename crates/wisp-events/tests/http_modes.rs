//! The public API end to end: the three HTTP modes, every validation error
//! naming its attribute, encoding for functions, round trips, and replies.

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use http::{HeaderValue, StatusCode};
use serde_json::{Value, json};
use wisp_events::{
    AttributesReader, AttributesWriter, BATCH_CONTENT_TYPE, Data, Event, EventBuilder,
    EventBuilderV10, EventError, ExtensionValue, MAX_ATTRIBUTE_BYTES, MAX_BATCH_EVENTS,
    MAX_EXTENSIONS, STRUCTURED_CONTENT_TYPE, decode_header_value, encode_header_value,
    from_structured_json, parse_request, reply_from_response, to_batch_json, to_binary_request,
    to_structured_json, validate,
};

// ---------- helpers ----------

fn parts(headers: &[(&str, &[u8])]) -> http::request::Parts {
    let mut builder = http::Request::post("/events");
    for (name, value) in headers {
        builder = builder.header(*name, HeaderValue::from_bytes(value).unwrap());
    }
    builder.body(()).unwrap().into_parts().0
}

fn binary(extra: &[(&str, &str)], body: &[u8]) -> Result<Vec<Event>, EventError> {
    let mut headers: Vec<(&str, &[u8])> = vec![
        ("ce-specversion", b"1.0"),
        ("ce-id", b"evt-1"),
        ("ce-source", b"/orders"),
        ("ce-type", b"com.example.created"),
    ];
    for (name, value) in extra {
        headers.retain(|(n, _)| n != name);
        headers.push((name, value.as_bytes()));
    }
    parse_request(&parts(&headers), Bytes::copy_from_slice(body))
}

/// A binary request with exactly these headers.
fn binary_exact(headers: &[(&str, &str)]) -> Result<Vec<Event>, EventError> {
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    parse_request(&parts(&headers), Bytes::new())
}

fn one(events: Result<Vec<Event>, EventError>) -> Event {
    let mut events = events.unwrap();
    assert_eq!(events.len(), 1);
    events.remove(0)
}

fn base() -> Value {
    json!({"specversion": "1.0", "id": "evt-1", "source": "/orders", "type": "com.example.created"})
}

fn with(mut value: Value, key: &str, member: Value) -> Value {
    value.as_object_mut().unwrap().insert(key.into(), member);
    value
}

fn without(mut value: Value, key: &str) -> Value {
    value.as_object_mut().unwrap().remove(key);
    value
}

fn structured(value: &Value) -> Result<Vec<Event>, EventError> {
    structured_as(STRUCTURED_CONTENT_TYPE, value)
}

fn structured_as(content_type: &str, value: &Value) -> Result<Vec<Event>, EventError> {
    parse_request(
        &parts(&[("content-type", content_type.as_bytes())]),
        Bytes::from(value.to_string()),
    )
}

fn batch(value: &Value) -> Result<Vec<Event>, EventError> {
    structured_as(BATCH_CONTENT_TYPE, value)
}

fn ext(event: &Event, name: &str) -> ExtensionValue {
    event
        .extension(name)
        .unwrap_or_else(|| panic!("no extension {name}"))
        .clone()
}

/// The error names `attribute`, and its message mentions it.
fn assert_names(result: Result<Vec<Event>, EventError>, attribute: &str) -> EventError {
    let error = result.expect_err("expected an error");
    assert_eq!(error.attribute(), Some(attribute), "{error:?}");
    assert!(
        error.to_string().contains(&format!("`{attribute}`")),
        "message does not name `{attribute}`: {error}"
    );
    error
}

fn response(headers: &[(&str, &str)]) -> http::response::Parts {
    let mut builder = http::Response::builder().status(200);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

// ---------- binary mode ----------

#[test]
fn binary_minimal_event() {
    let event = one(binary(&[], b""));
    assert_eq!(event.id(), "evt-1");
    assert_eq!(event.source(), "/orders");
    assert_eq!(event.ty(), "com.example.created");
    assert_eq!(event.specversion().as_str(), "1.0");
    assert_eq!(event.datacontenttype(), None);
    assert_eq!(event.subject(), None);
    assert_eq!(event.time(), None);
    assert!(event.data().is_none());
    assert_eq!(event.iter_extensions().count(), 0);
}

#[test]
fn binary_every_attribute_json_data_and_extensions() {
    let event = one(binary(
        &[
            ("ce-subject", "order/42"),
            ("ce-time", "2024-05-01T14:00:00.250+02:00"),
            ("ce-dataschema", "https://example.com/order.json"),
            ("ce-partitionkey", "customer-7"),
            ("ce-traceparent", "00-abc-def-01"),
            ("content-type", "application/json; charset=utf-8"),
        ],
        br#"{"total": 12.5, "items": [1, 2]}"#,
    ));
    assert_eq!(event.subject(), Some("order/42"));
    assert_eq!(
        event.time(),
        Some(
            &(Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
                + chrono::Duration::milliseconds(250))
        )
    );
    assert_eq!(
        event.dataschema().map(|u| u.as_str()),
        Some("https://example.com/order.json")
    );
    assert_eq!(
        event.datacontenttype(),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        event.data(),
        Some(&Data::Json(json!({"total": 12.5, "items": [1, 2]})))
    );
    assert_eq!(ext(&event, "partitionkey"), "customer-7".into());
    assert_eq!(ext(&event, "traceparent"), "00-abc-def-01".into());
}

#[test]
fn binary_header_values_are_percent_decoded() {
    let event = one(binary(
        &[
            ("ce-subject", "h%C3%A9llo%20w%C3%B6rld%20100%25"),
            ("ce-source", "/caf%25C3%25A9"),
            ("ce-myext", "a%22quoted%22%0Aline"),
            ("ce-lenient", "100% sure"),
            ("ce-quoted", "\"say \\\"hi\\\"%21\""),
        ],
        b"",
    ));
    assert_eq!(event.subject(), Some("héllo wörld 100%"));
    // One round of decoding: the URI's own escapes survive.
    assert_eq!(event.source(), "/caf%C3%A9");
    assert_eq!(ext(&event, "myext"), "a\"quoted\"\nline".into());
    assert_eq!(ext(&event, "lenient"), "100% sure".into());
    assert_eq!(ext(&event, "quoted"), "say \"hi\"!".into());
}

#[test]
fn binary_raw_utf8_header_values_are_accepted() {
    let headers: Vec<(&str, &[u8])> = vec![
        ("ce-specversion", b"1.0"),
        ("ce-id", b"1"),
        ("ce-source", b"/s"),
        ("ce-type", b"t"),
        ("ce-subject", "crème".as_bytes()),
    ];
    let event = one(parse_request(&parts(&headers), Bytes::new()));
    assert_eq!(event.subject(), Some("crème"));
}

#[test]
fn binary_value_not_utf8_after_decoding_names_the_attribute() {
    let error = assert_names(binary(&[("ce-subject", "%FF%FE")], b""), "subject");
    assert!(error.to_string().contains("UTF-8"), "{error}");
}

#[test]
fn binary_data_kinds_follow_the_content_type() {
    let text = one(binary(
        &[("content-type", "text/plain")],
        "héllo".as_bytes(),
    ));
    assert_eq!(text.data(), Some(&Data::String("héllo".into())));

    let bytes = one(binary(
        &[("content-type", "application/octet-stream")],
        &[0, 159, 146, 150],
    ));
    assert_eq!(bytes.data(), Some(&Data::Binary(vec![0, 159, 146, 150])));

    let suffix = one(binary(
        &[("content-type", "application/vnd.order+json")],
        br#"[1,2]"#,
    ));
    assert_eq!(suffix.data(), Some(&Data::Json(json!([1, 2]))));

    // Declared JSON that is not JSON is kept as bytes, unchanged.
    let broken = one(binary(&[("content-type", "application/json")], b"{nope"));
    assert_eq!(broken.data(), Some(&Data::Binary(b"{nope".to_vec())));

    // No content type: bytes.
    let untyped = one(binary(&[], b"{}"));
    assert_eq!(untyped.data(), Some(&Data::Binary(b"{}".to_vec())));
}

#[test]
fn binary_ce_datacontenttype_is_a_fallback_for_content_type() {
    let event = one(binary(&[("ce-datacontenttype", "text/csv")], b"a,b"));
    assert_eq!(event.datacontenttype(), Some("text/csv"));
    assert_eq!(event.data(), Some(&Data::String("a,b".into())));
    let event = one(binary(
        &[
            ("ce-datacontenttype", "text/csv"),
            ("content-type", "text/plain"),
        ],
        b"a,b",
    ));
    assert_eq!(event.datacontenttype(), Some("text/plain"));
}

#[test]
fn binary_repeated_header_is_refused() {
    let headers: Vec<(&str, &[u8])> = vec![
        ("ce-specversion", b"1.0"),
        ("ce-id", b"1"),
        ("ce-id", b"2"),
        ("ce-source", b"/s"),
        ("ce-type", b"t"),
    ];
    let error = assert_names(parse_request(&parts(&headers), Bytes::new()), "id");
    assert!(error.to_string().contains("more than once"), "{error}");
}

// ---------- structured mode ----------

#[test]
fn structured_event_with_json_data_and_charset() {
    let value = with(
        with(
            with(base(), "data", json!({"total": 12})),
            "datacontenttype",
            json!("application/json"),
        ),
        "subject",
        json!("order/42"),
    );
    for ct in [
        "application/cloudevents+json",
        "application/cloudevents+json; charset=UTF-8",
        "Application/CloudEvents+JSON;charset=\"utf-8\"",
    ] {
        let event = one(structured_as(ct, &value));
        assert_eq!(event.id(), "evt-1");
        assert_eq!(event.subject(), Some("order/42"));
        assert_eq!(event.data(), Some(&Data::Json(json!({"total": 12}))));
    }
    let error = structured_as("application/cloudevents+json; charset=latin1", &value).unwrap_err();
    assert!(matches!(error, EventError::InvalidJson { .. }), "{error:?}");
}

#[test]
fn structured_mode_ignores_ce_headers() {
    let headers: Vec<(&str, &[u8])> = vec![
        ("content-type", STRUCTURED_CONTENT_TYPE.as_bytes()),
        ("ce-id", b"from-header"),
    ];
    let event = one(parse_request(
        &parts(&headers),
        Bytes::from(base().to_string()),
    ));
    assert_eq!(event.id(), "evt-1");
}

#[test]
fn structured_data_base64_is_binary_data() {
    let value = with(
        with(base(), "data_base64", json!("AJ+SlmhpIQ==")),
        "datacontenttype",
        json!("application/octet-stream"),
    );
    let event = one(structured(&value));
    let mut expected = vec![0, 0x9f, 0x92, 0x96];
    expected.extend_from_slice(b"hi!");
    assert_eq!(event.data(), Some(&Data::Binary(expected.clone())));

    // Padding is optional when reading.
    let unpadded = with(base(), "data_base64", json!("AJ+SlmhpIQ"));
    assert_eq!(
        one(structured(&unpadded)).data(),
        Some(&Data::Binary(expected))
    );

    let bad = with(base(), "data_base64", json!("not base64!"));
    assert_names(structured(&bad), "data_base64");

    let both = with(with(base(), "data_base64", json!("AA==")), "data", json!(1));
    let error = assert_names(structured(&both), "data_base64");
    assert!(error.to_string().contains("not both"), "{error}");
}

#[test]
fn structured_data_json_versus_text() {
    // No datacontenttype means JSON.
    let untyped = with(base(), "data", json!("just a string"));
    assert_eq!(
        one(structured(&untyped)).data(),
        Some(&Data::Json(json!("just a string")))
    );
    // A non-JSON content type with a string is text.
    let text = with(
        with(base(), "data", json!("line one\nline two")),
        "datacontenttype",
        json!("text/plain"),
    );
    assert_eq!(
        one(structured(&text)).data(),
        Some(&Data::String("line one\nline two".into()))
    );
    // `data: null` is no data.
    let null = with(base(), "data", Value::Null);
    assert!(one(structured(&null)).data().is_none());
}

#[test]
fn structured_extensions_keep_their_json_types() {
    let value = with(
        with(
            with(with(base(), "tenant", json!("acme")), "retries", json!(3)),
            "sampled",
            json!(true),
        ),
        "ignored",
        Value::Null,
    );
    let event = one(structured(&value));
    assert_eq!(ext(&event, "tenant"), ExtensionValue::String("acme".into()));
    assert_eq!(ext(&event, "retries"), ExtensionValue::Integer(3));
    assert_eq!(ext(&event, "sampled"), ExtensionValue::Boolean(true));
    assert!(event.extension("ignored").is_none());

    for bad in [json!(1.5), json!({"a": 1}), json!([1])] {
        let error = assert_names(structured(&with(base(), "weird", bad)), "weird");
        assert!(
            error
                .to_string()
                .contains("string, a boolean or an integer")
        );
    }
}

#[test]
fn structured_body_must_be_a_json_object() {
    let not_json = parse_request(
        &parts(&[("content-type", STRUCTURED_CONTENT_TYPE.as_bytes())]),
        Bytes::from_static(b"{\"id\": "),
    )
    .unwrap_err();
    assert!(matches!(
        not_json,
        EventError::InvalidJson { index: None, .. }
    ));
    assert_eq!(not_json.status_code(), StatusCode::BAD_REQUEST);

    let array = structured(&json!([base()])).unwrap_err();
    assert!(array.to_string().contains("JSON object"), "{array}");
}

// ---------- batch mode ----------

#[test]
fn batch_of_events() {
    let events = batch(&json!([
        with(base(), "id", json!("a")),
        with(with(base(), "id", json!("b")), "data_base64", json!("AQI=")),
        with(with(base(), "id", json!("c")), "tenant", json!("acme")),
    ]))
    .unwrap();
    let ids: Vec<_> = events.iter().map(|e| e.id()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(events[1].data(), Some(&Data::Binary(vec![1, 2])));
    assert_eq!(ext(&events[2], "tenant"), "acme".into());
}

#[test]
fn batch_must_not_be_empty() {
    let error = batch(&json!([])).unwrap_err();
    assert_eq!(error, EventError::EmptyBatch);
    assert_eq!(error.status_code(), StatusCode::BAD_REQUEST);
    assert!(error.to_string().contains("at least one event"));
}

#[test]
fn batch_has_a_size_limit() {
    let events: Vec<Value> = (0..MAX_BATCH_EVENTS)
        .map(|i| with(base(), "id", json!(i.to_string())))
        .collect();
    assert_eq!(
        batch(&Value::Array(events.clone())).unwrap().len(),
        MAX_BATCH_EVENTS
    );

    let mut over = events;
    over.push(base());
    let error = batch(&Value::Array(over)).unwrap_err();
    assert_eq!(
        error,
        EventError::TooManyEvents {
            count: MAX_BATCH_EVENTS + 1,
            limit: MAX_BATCH_EVENTS
        }
    );
    assert_eq!(error.status_code(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[test]
fn batch_error_names_the_attribute_and_the_event() {
    let error = batch(&json!([base(), base(), without(base(), "id")])).unwrap_err();
    assert_eq!(error.attribute(), Some("id"));
    assert_eq!(error.index(), Some(2));
    assert_eq!(
        error.to_string(),
        "CloudEvent is missing the required attribute `id` (event 3 of the batch, index 2)"
    );

    let error = batch(&json!([base(), "not an event"])).unwrap_err();
    assert!(
        matches!(error, EventError::InvalidJson { index: Some(1), .. }),
        "{error:?}"
    );

    let error = batch(&base()).unwrap_err();
    assert!(error.to_string().contains("JSON array"), "{error}");
}

// ---------- validation: every error names its attribute ----------

#[test]
fn missing_required_attributes_are_named_in_every_mode() {
    for attribute in ["specversion", "id", "source", "type"] {
        let error = assert_names(structured(&without(base(), attribute)), attribute);
        assert_eq!(
            error.to_string(),
            format!("CloudEvent is missing the required attribute `{attribute}`")
        );
        assert_eq!(error.index(), None);
        assert_eq!(error.status_code(), StatusCode::BAD_REQUEST);

        let mut headers = vec![
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
        ];
        let header = format!("ce-{attribute}");
        headers.retain(|(name, _)| *name != header);
        let error = assert_names(binary_exact(&headers), attribute);
        assert!(matches!(error, EventError::MissingAttribute { .. }));
    }
}

#[test]
fn required_attributes_must_not_be_empty() {
    for attribute in ["id", "source", "type"] {
        let error = assert_names(structured(&with(base(), attribute, json!(""))), attribute);
        assert!(error.to_string().contains("must not be empty"), "{error}");
        let header = format!("ce-{attribute}");
        assert_names(binary(&[(&header, "")], b""), attribute);
    }
}

#[test]
fn attributes_must_be_json_strings() {
    for attribute in ["specversion", "id", "source", "type", "subject", "time"] {
        let error = assert_names(structured(&with(base(), attribute, json!(7))), attribute);
        assert!(error.to_string().contains("JSON string"), "{error}");
    }
}

#[test]
fn only_specversion_1_0_is_supported() {
    let error = structured(&with(base(), "specversion", json!("0.3"))).unwrap_err();
    assert_eq!(
        error,
        EventError::UnsupportedSpecVersion {
            version: "0.3".into(),
            index: None
        }
    );
    assert_eq!(error.attribute(), Some("specversion"));
    assert!(error.to_string().contains("`specversion`"));
    let error = binary(&[("ce-specversion", "2.0")], b"").unwrap_err();
    assert_eq!(error.attribute(), Some("specversion"));
}

#[test]
fn source_must_be_a_uri_reference() {
    for good in [
        "/orders",
        "https://example.com/shop?x=1#frag",
        "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
        "mailto:ops@example.com",
        "orders",
        "./a%20b",
        "//host:8080/x",
    ] {
        one(structured(&with(base(), "source", json!(good))));
    }
    for bad in [
        "has space",
        "1abc:x",
        ":x",
        "/a%zz",
        "/a#b#c",
        "/é",
        "a\"b",
        "{x}",
    ] {
        let error = assert_names(structured(&with(base(), "source", json!(bad))), "source");
        assert!(
            error.to_string().contains("URI-reference"),
            "{bad}: {error}"
        );
    }
}

#[test]
fn time_must_be_rfc_3339() {
    let ok = one(structured(&with(
        base(),
        "time",
        json!("2024-05-01T12:00:00Z"),
    )));
    assert_eq!(
        ok.time(),
        Some(&Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap())
    );
    for bad in [
        "2024-05-01",
        "yesterday",
        "2024-05-01T12:00:00",
        "1714564800",
    ] {
        let error = assert_names(structured(&with(base(), "time", json!(bad))), "time");
        assert!(error.to_string().contains("RFC 3339"), "{error}");
        assert_names(binary(&[("ce-time", bad)], b""), "time");
    }
}

#[test]
fn dataschema_must_be_an_absolute_uri() {
    let ok = one(structured(&with(
        base(),
        "dataschema",
        json!("urn:schema:order"),
    )));
    assert_eq!(
        ok.dataschema().map(|u| u.as_str()),
        Some("urn:schema:order")
    );
    for bad in ["/relative/schema.json", "", "http://exa mple.com"] {
        assert_names(
            structured(&with(base(), "dataschema", json!(bad))),
            "dataschema",
        );
    }
}

#[test]
fn datacontenttype_must_be_a_media_type() {
    for bad in ["json", "", "application/", "text /plain"] {
        assert_names(
            structured(&with(base(), "datacontenttype", json!(bad))),
            "datacontenttype",
        );
    }
    assert_names(
        binary(&[("content-type", "json")], b"{}"),
        "datacontenttype",
    );
}

#[test]
fn subject_must_not_be_empty_when_present() {
    assert_names(structured(&with(base(), "subject", json!(""))), "subject");
    assert_names(binary(&[("ce-subject", "")], b""), "subject");
}

#[test]
fn extension_names_follow_the_spec() {
    let long = "a".repeat(21);
    for bad in ["myExt", "my_ext", long.as_str(), "ünïcode"] {
        let error = assert_names(structured(&with(base(), bad, json!("v"))), bad);
        assert!(error.to_string().contains("lowercase"), "{error}");
    }
    assert_names(binary(&[("ce-my-ext", "v")], b""), "my-ext");
    let twenty = "a1".repeat(10);
    let event = one(binary(&[(&format!("ce-{twenty}"), "v")], b""));
    assert_eq!(ext(&event, &twenty), "v".into());
    // `data` is reserved for the payload.
    let error = assert_names(binary(&[("ce-data", "x")], b""), "data");
    assert!(error.to_string().contains("reserved"), "{error}");
}

#[test]
fn attribute_values_are_size_bounded() {
    let big = "x".repeat(MAX_ATTRIBUTE_BYTES + 1);
    let fits = "x".repeat(MAX_ATTRIBUTE_BYTES);
    one(structured(&with(base(), "subject", json!(fits))));
    for attribute in ["id", "type", "subject", "tenant"] {
        let error = assert_names(structured(&with(base(), attribute, json!(big))), attribute);
        assert_eq!(
            error,
            EventError::TooLarge {
                attribute: attribute.into(),
                size: MAX_ATTRIBUTE_BYTES + 1,
                limit: MAX_ATTRIBUTE_BYTES,
                index: None
            }
        );
        assert_eq!(error.status_code(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    // In binary mode the limit applies after percent-decoding.
    let encoded = "%41".repeat(MAX_ATTRIBUTE_BYTES);
    one(binary(&[("ce-subject", encoded.as_str())], b""));
    let error = binary(&[("ce-subject", big.as_str())], b"").unwrap_err();
    assert_eq!(error.attribute(), Some("subject"));
}

#[test]
fn extension_count_is_bounded() {
    let mut value = base();
    for i in 0..=MAX_EXTENSIONS {
        value = with(value, &format!("ext{i}"), json!("v"));
    }
    let error = structured(&value).unwrap_err();
    assert_eq!(
        error,
        EventError::TooManyExtensions {
            count: MAX_EXTENSIONS + 1,
            limit: MAX_EXTENSIONS,
            index: None
        }
    );
}

#[test]
fn not_an_event_says_what_is_expected() {
    let error = parse_request(
        &parts(&[("content-type", b"application/json")]),
        Bytes::from_static(b"{}"),
    )
    .unwrap_err();
    assert_eq!(
        error,
        EventError::NotAnEvent {
            content_type: Some("application/json".into())
        }
    );
    assert_eq!(error.status_code(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error.attribute(), None);
    let message = error.to_string();
    for expected in [
        "ce-specversion",
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
        "application/json",
    ] {
        assert!(message.contains(expected), "{message}");
    }

    let error = parse_request(&parts(&[]), Bytes::new()).unwrap_err();
    assert!(error.to_string().contains("no content-type"), "{error}");

    // Another event format is not supported.
    let error = structured_as("application/cloudevents+xml", &base()).unwrap_err();
    assert!(matches!(error, EventError::NotAnEvent { .. }), "{error:?}");
}

// ---------- encoding for functions ----------

fn sample_event() -> Event {
    EventBuilderV10::new()
        .id("evt-9")
        .source("https://example.com/shop")
        .ty("com.example.paid")
        .subject("order 42 — paid")
        .time(Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap())
        .extension("tenant", "ac me%")
        .extension("retries", 3i64)
        .extension("sampled", true)
        .data("application/json", json!({"amount": 10}))
        .build()
        .unwrap()
}

#[test]
fn binary_request_carries_attributes_in_headers_and_data_in_the_body() {
    let request = to_binary_request(&sample_event(), "/hooks/paid?x=1");
    assert_eq!(request.method(), http::Method::POST);
    assert_eq!(request.uri(), "/hooks/paid?x=1");
    let h = request.headers();
    assert_eq!(h["ce-specversion"], "1.0");
    assert_eq!(h["ce-id"], "evt-9");
    assert_eq!(h["ce-source"], "https://example.com/shop");
    assert_eq!(h["ce-type"], "com.example.paid");
    assert_eq!(h["ce-subject"], "order%2042%20%E2%80%94%20paid");
    assert_eq!(h["ce-time"], "2024-05-01T12:00:00Z");
    assert_eq!(h["ce-tenant"], "ac%20me%25");
    assert_eq!(h["ce-retries"], "3");
    assert_eq!(h["ce-sampled"], "true");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(
        serde_json::from_slice::<Value>(request.body()).unwrap(),
        json!({"amount": 10})
    );

    // An invalid path falls back to `/`.
    assert_eq!(to_binary_request(&sample_event(), "not a path").uri(), "/");
}

#[test]
fn binary_request_bodies_for_each_data_kind() {
    let mut event = sample_event();
    event.set_data("text/plain", "héllo");
    let request = to_binary_request(&event, "/");
    assert_eq!(request.headers()["content-type"], "text/plain");
    assert_eq!(&request.body()[..], "héllo".as_bytes());

    event.set_data("image/png", vec![0x89u8, b'P', b'N', b'G']);
    let request = to_binary_request(&event, "/");
    assert_eq!(&request.body()[..], &[0x89, b'P', b'N', b'G']);

    // JSON data without a content type is sent as application/json.
    let mut event = EventBuilderV10::new()
        .id("1")
        .source("/s")
        .ty("t")
        .build()
        .unwrap();
    let request = to_binary_request(&event, "/");
    assert!(request.headers().get("content-type").is_none());
    assert!(request.body().is_empty());
    event.set_data_unchecked(json!([1, 2]));
    let request = to_binary_request(&event, "/");
    assert_eq!(request.headers()["content-type"], "application/json");
    assert_eq!(&request.body()[..], b"[1,2]");
}

fn reparse(request: http::Request<Bytes>) -> Event {
    let (parts, body) = request.into_parts();
    one(parse_request(&parts, body))
}

#[test]
fn binary_round_trip_keeps_everything() {
    let event = one(binary(
        &[
            ("ce-subject", "sp%20ace"),
            ("ce-time", "2024-05-01T12:00:00.123456Z"),
            ("ce-dataschema", "https://example.com/s.json"),
            ("ce-partitionkey", "k%C3%A9y"),
            ("content-type", "application/json"),
        ],
        br#"{"a":1}"#,
    ));
    let again = reparse(to_binary_request(&event, "/"));
    assert_eq!(again, event);
    assert_eq!(ext(&again, "partitionkey"), "kéy".into());
}

#[test]
fn structured_to_binary_round_trip_keeps_extensions_as_strings() {
    let value = with(
        with(
            with(
                with(base(), "tenant", json!("a c m e")),
                "retries",
                json!(3),
            ),
            "sampled",
            json!(false),
        ),
        "data",
        json!({"x": "y"}),
    );
    let event = one(structured(&value));
    let again = reparse(to_binary_request(&event, "/"));
    assert_eq!(
        ext(&again, "tenant"),
        ExtensionValue::String("a c m e".into())
    );
    assert_eq!(ext(&again, "retries"), ExtensionValue::String("3".into()));
    assert_eq!(
        ext(&again, "sampled"),
        ExtensionValue::String("false".into())
    );
    assert_eq!(again.data(), Some(&Data::Json(json!({"x": "y"}))));
    assert_eq!(again.datacontenttype(), Some("application/json"));
    assert_eq!(again.id(), event.id());
    assert_eq!(again.source(), event.source());
    assert_eq!(again.ty(), event.ty());
}

#[test]
fn structured_json_round_trip_keeps_extension_types() {
    let event = sample_event();
    let value = to_structured_json(&event);
    assert_eq!(value["specversion"], "1.0");
    assert_eq!(value["time"], "2024-05-01T12:00:00Z");
    assert_eq!(value["retries"], 3);
    assert_eq!(value["sampled"], true);
    assert_eq!(value["tenant"], "ac me%");
    assert_eq!(value["data"], json!({"amount": 10}));
    assert_eq!(from_structured_json(value.clone()).unwrap(), event);
    // And through a structured-mode request.
    assert_eq!(one(structured(&value)), event);
}

#[test]
fn structured_json_uses_data_base64_for_bytes_and_data_for_text() {
    let mut event = sample_event();
    event.set_data("application/octet-stream", vec![0u8, 255, 1]);
    let value = to_structured_json(&event);
    assert_eq!(value["data_base64"], "AP8B");
    assert!(value.get("data").is_none());
    assert_eq!(from_structured_json(value).unwrap(), event);

    event.set_data("text/plain", "plain text");
    let value = to_structured_json(&event);
    assert_eq!(value["data"], "plain text");
    assert_eq!(from_structured_json(value).unwrap(), event);
}

#[test]
fn batch_json_round_trip() {
    let mut second = sample_event();
    second.set_id("evt-10");
    let events = vec![sample_event(), second];
    let value = to_batch_json(&events);
    assert_eq!(value.as_array().unwrap().len(), 2);
    assert_eq!(batch(&value).unwrap(), events);
}

#[test]
fn percent_encoding_of_header_values() {
    assert_eq!(
        encode_header_value("plain-value_1.2~x"),
        "plain-value_1.2~x"
    );
    assert_eq!(encode_header_value("a b\"c%d"), "a%20b%22c%25d");
    assert_eq!(encode_header_value("é€\n\t"), "%C3%A9%E2%82%AC%0A%09");
    let printable: String = (0x21u8..=0x7e)
        .map(char::from)
        .filter(|c| *c != '"' && *c != '%')
        .collect();
    assert_eq!(encode_header_value(&printable), printable);
    for value in ["a b\"c%d", "é€\n\t", "100%", "%20", "\u{1F600}", ""] {
        assert_eq!(
            decode_header_value(encode_header_value(value).as_bytes()).unwrap(),
            value
        );
    }
    assert_eq!(decode_header_value(b"  %41b  ").unwrap(), "Ab");
    assert_eq!(decode_header_value(b"\"a\\\\b\"").unwrap(), "a\\b");
    assert!(decode_header_value(b"\"a\\\"").is_err());
}

// ---------- replies ----------

#[test]
fn plain_responses_are_not_replies() {
    for headers in [
        vec![],
        vec![("content-type", "application/json")],
        vec![("content-type", "text/plain"), ("x-ce-id", "1")],
    ] {
        let reply = reply_from_response(&response(&headers), Bytes::from_static(b"{}")).unwrap();
        assert_eq!(reply, None);
    }
}

#[test]
fn binary_response_is_a_reply() {
    let reply = reply_from_response(
        &response(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "reply-1"),
            ("ce-source", "/fn/charge"),
            ("ce-type", "com.example.charged"),
            ("ce-tenant", "acme"),
            ("content-type", "application/json"),
        ]),
        Bytes::from_static(br#"{"ok":true}"#),
    )
    .unwrap()
    .expect("a reply");
    assert_eq!(reply.id(), "reply-1");
    assert_eq!(reply.ty(), "com.example.charged");
    assert_eq!(ext(&reply, "tenant"), "acme".into());
    assert_eq!(reply.data(), Some(&Data::Json(json!({"ok": true}))));
}

#[test]
fn structured_response_is_a_reply() {
    let body = with(base(), "data", json!([1]));
    let reply = reply_from_response(
        &response(&[(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )]),
        Bytes::from(body.to_string()),
    )
    .unwrap()
    .expect("a reply");
    assert_eq!(reply.id(), "evt-1");
    assert_eq!(reply.data(), Some(&Data::Json(json!([1]))));
}

#[test]
fn broken_or_batch_replies_are_errors() {
    let error = reply_from_response(
        &response(&[
            ("ce-specversion", "1.0"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
        ]),
        Bytes::new(),
    )
    .unwrap_err();
    assert_eq!(error.attribute(), Some("id"));

    let error = reply_from_response(
        &response(&[("content-type", BATCH_CONTENT_TYPE)]),
        Bytes::from(json!([base()]).to_string()),
    )
    .unwrap_err();
    assert_eq!(error, EventError::BatchReply);
}

#[test]
fn a_reply_is_forwarded_with_the_same_headers() {
    // Function reply (binary) -> event -> next function's request: same headers.
    let reply = reply_from_response(
        &response(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "r"),
            ("ce-source", "/fn/a"),
            ("ce-type", "t"),
            ("ce-note", "x%20y"),
        ]),
        Bytes::new(),
    )
    .unwrap()
    .unwrap();
    let request = to_binary_request(&reply, "/");
    assert_eq!(request.headers()["ce-note"], "x%20y");
}

// ---------- validate() for events built by hand ----------

#[test]
fn validate_checks_hand_built_events() {
    validate(&sample_event()).unwrap();
    let mut event = sample_event();
    event.set_extension("Bad", "v");
    assert_eq!(validate(&event).unwrap_err().attribute(), Some("Bad"));
    let mut event = sample_event();
    event.set_extension("id", "v");
    assert_eq!(validate(&event).unwrap_err().attribute(), Some("id"));
    let event = EventBuilderV10::new()
        .id("")
        .source("/s")
        .ty("t")
        .build()
        .unwrap();
    assert_eq!(validate(&event).unwrap_err().attribute(), Some("id"));
}
