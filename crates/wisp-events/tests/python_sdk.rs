//! Interoperability with the official CloudEvents SDK for Python (PyPI
//! `cloudevents`), through `tests/python/interop.py`.
//!
//! (a) The SDK encodes events in binary, structured and batch mode; Rust
//! parses each with `parse_request` and checks every attribute, the data and
//! the extensions. (b) Rust encodes reply events (binary with
//! `to_binary_request`, structured with `to_structured_json`); the SDK
//! parses them with its `from_http` and Rust checks what it read.
//!
//! Data goes through stdin/stdout, never the network. The SDK is installed
//! with pip when missing; if that fails the test fails, saying why.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};
use wisp_events::{
    AttributesReader, AttributesWriter, Data, Event, EventBuilder, EventBuilderV10, ExtensionValue,
    STRUCTURED_CONTENT_TYPE, parse_request, to_binary_request, to_structured_json,
};

/// Run `interop.py MODE`, feeding `input` on stdin; its JSON output.
fn interop(mode: &str, input: &Value) -> Value {
    wisp_testkit::python::run_json(&script(), mode, input)
}

fn script() -> PathBuf {
    // Read at run time: a cached build may come from a checkout elsewhere.
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("tests/python/interop.py")
}

fn sdk_major(version: &str) -> u32 {
    version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .expect("a version")
}

fn time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

// ---------- (a) Python encodes, Rust parses ----------

const PY_BYTES: &[u8] = b"\x00\xffbinary\x80";

fn py_json_data() -> Data {
    Data::Json(json!({"n": 1, "s": "x", "list": [1, 2]}))
}

struct Expected {
    id: String,
    source: &'static str,
    subject: &'static str,
    partitionkey: &'static str,
    datacontenttype: &'static str,
    data: Data,
}

fn check_python_event(case: &str, event: &Event, want: &Expected) {
    assert_eq!(event.specversion().as_str(), "1.0", "{case}");
    assert_eq!(event.id(), want.id, "{case}");
    assert_eq!(event.source(), want.source, "{case}");
    assert_eq!(event.ty(), "com.example.interop", "{case}");
    assert_eq!(event.subject(), Some(want.subject), "{case}");
    assert_eq!(
        event.time(),
        Some(&time("2024-05-01T12:00:00.5Z")),
        "{case}"
    );
    assert_eq!(
        event.dataschema().map(|u| u.as_str()),
        Some("https://example.com/schema.json"),
        "{case}"
    );
    assert_eq!(
        event.datacontenttype(),
        Some(want.datacontenttype),
        "{case}"
    );
    assert_eq!(
        event.extension("partitionkey"),
        Some(&ExtensionValue::String(want.partitionkey.into())),
        "{case}"
    );
    assert_eq!(event.data(), Some(&want.data), "{case}");
}

#[test]
fn python_sdk_events_parse_in_rust() {
    let produced = interop("produce", &Value::Null);
    let version = produced["sdk_version"].as_str().expect("sdk_version");
    let apis: Vec<&str> = produced["apis"]
        .as_array()
        .expect("apis")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    // SDK 2.x has the `cloudevents.core` API; make sure it was exercised.
    assert_eq!(
        apis.contains(&"core"),
        sdk_major(version) >= 2,
        "SDK {version}: {apis:?}"
    );
    eprintln!("CloudEvents SDK for Python {version}, APIs {apis:?}");

    let core_subject = "héllo wörld 100% \"quoted\"";
    let mut seen = Vec::new();
    for case in produced["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().unwrap();
        let mut builder = http::Request::post("/events");
        for (header, value) in case["headers"].as_object().unwrap() {
            builder = builder.header(header.as_str(), value.as_str().unwrap());
        }
        let (parts, ()) = builder.body(()).unwrap().into_parts();
        let body = BASE64
            .decode(case["body_base64"].as_str().unwrap())
            .unwrap();
        let events = parse_request(&parts, Bytes::from(body))
            .unwrap_or_else(|e| panic!("{name}: Rust refused the SDK's event: {e}"));
        seen.push(name.to_owned());

        let core = |id: &str, datacontenttype, data| Expected {
            id: id.to_owned(),
            source: "/python/sdk",
            subject: core_subject,
            partitionkey: "p 1 ü",
            datacontenttype,
            data,
        };
        let legacy = |id: &str, datacontenttype, data| Expected {
            id: id.to_owned(),
            source: "/python/legacy",
            subject: "hello legacy",
            partitionkey: "p-2",
            datacontenttype,
            data,
        };
        let want = match name {
            "core-binary-json" | "core-structured-json" => {
                core("py-core-1", "application/json", py_json_data())
            }
            "core-binary-bytes" | "core-structured-bytes" => core(
                "py-core-2",
                "application/octet-stream",
                Data::Binary(PY_BYTES.to_vec()),
            ),
            "core-binary-text" => core(
                "py-core-3",
                "text/plain",
                Data::String("plain text ✓".into()),
            ),
            "legacy-binary-json" | "legacy-structured-json" => {
                legacy("py-legacy-1", "application/json", py_json_data())
            }
            "legacy-structured-bytes" => legacy(
                "py-legacy-2",
                "application/octet-stream",
                Data::Binary(PY_BYTES.to_vec()),
            ),
            "legacy-batch" => {
                assert_eq!(events.len(), 3, "{name}");
                for (i, event) in events.iter().enumerate() {
                    let id = format!("py-batch-{i}");
                    let want = legacy(&id, "application/json", Data::Json(json!({"i": i})));
                    check_python_event(name, event, &want);
                    assert_eq!(
                        event.extension("retries"),
                        Some(&ExtensionValue::Integer(i as i64)),
                        "{name}: an integer extension keeps its type in JSON"
                    );
                }
                continue;
            }
            other => panic!("unexpected case {other}"),
        };
        assert_eq!(events.len(), 1, "{name}");
        check_python_event(name, &events[0], &want);
    }

    let mut expected = vec![
        "legacy-binary-json",
        "legacy-structured-json",
        "legacy-structured-bytes",
        "legacy-batch",
    ];
    if apis.contains(&"core") {
        expected.extend([
            "core-binary-json",
            "core-structured-json",
            "core-binary-bytes",
            "core-structured-bytes",
            "core-binary-text",
        ]);
    }
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected);
}

// ---------- (b) Rust encodes a reply, Python parses it ----------

const SUBJECT: &str = "réponse 100% \"ok\"";

fn reply_event() -> Event {
    let mut event = EventBuilderV10::new()
        .id("rust-reply-1")
        .source("/fn/rust-reply")
        .ty("com.example.reply")
        .subject(SUBJECT)
        .time(
            Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
                + chrono::Duration::milliseconds(250),
        )
        .extension("partitionkey", "k ü")
        .extension("retries", 3i64)
        .extension("sampled", true)
        .data("application/json", json!({"ok": true, "n": [1, 2]}))
        .build()
        .unwrap();
    event.set_dataschema(Some(
        url::Url::parse("https://example.com/reply.json").unwrap(),
    ));
    event
}

fn message_from_request(name: &str, request: http::Request<Bytes>) -> Value {
    let headers: serde_json::Map<String, Value> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap())))
        .collect();
    json!({"name": name, "headers": headers, "body_base64": BASE64.encode(request.body())})
}

fn structured_message(name: &str, event: &Event) -> Value {
    json!({
        "name": name,
        "headers": {"content-type": STRUCTURED_CONTENT_TYPE},
        "body_base64": BASE64.encode(to_structured_json(event).to_string()),
    })
}

/// The bytes of a summarised `data`, whether the SDK gave text or bytes.
fn summary_bytes(data: &Value) -> Vec<u8> {
    if let Some(text) = data["text"].as_str() {
        return text.as_bytes().to_vec();
    }
    BASE64
        .decode(data["base64"].as_str().expect("text or bytes"))
        .unwrap()
}

#[test]
fn rust_replies_parse_in_python_sdk() {
    let json_reply = reply_event();
    let mut bytes_reply = reply_event();
    bytes_reply.set_data("application/octet-stream", vec![0u8, 1, 254, 255]);
    let mut text_reply = reply_event();
    text_reply.set_data("text/plain", "texte ✓");

    let input = json!({"cases": [
        message_from_request("rust-binary-json", to_binary_request(&json_reply, "/")),
        structured_message("rust-structured-json", &json_reply),
        structured_message("rust-structured-bytes", &bytes_reply),
        message_from_request("rust-binary-text", to_binary_request(&text_reply, "/")),
    ]});
    let output = interop("consume", &input);
    let version = output["sdk_version"].as_str().unwrap();
    let results = output["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);

    for result in results {
        let name = result["name"].as_str().unwrap();
        let binary = name.starts_with("rust-binary");
        let (datacontenttype, data) = match name {
            "rust-binary-json" | "rust-structured-json" => (
                "application/json",
                json!({"json": {"ok": true, "n": [1, 2]}}),
            ),
            "rust-structured-bytes" => (
                "application/octet-stream",
                json!({"base64": BASE64.encode([0u8, 1, 254, 255])}),
            ),
            "rust-binary-text" => ("text/plain", json!({"text": "texte ✓"})),
            other => panic!("unexpected result {other}"),
        };
        // Binary mode carries extension values as strings.
        let (retries, sampled) = if binary {
            (json!("3"), json!("true"))
        } else {
            (json!(3), json!(true))
        };

        let mut parsers = vec!["legacy"];
        if sdk_major(version) >= 2 {
            parsers.push("core");
        }
        for parser in parsers {
            let got = &result[parser];
            let what = format!("{name} read by the SDK's {parser} from_http");
            assert!(got.is_object(), "{what}: {result}");
            assert_eq!(got["specversion"], "1.0", "{what}");
            assert_eq!(got["id"], "rust-reply-1", "{what}");
            assert_eq!(got["source"], "/fn/rust-reply", "{what}");
            assert_eq!(got["type"], "com.example.reply", "{what}");
            assert_eq!(got["datacontenttype"], datacontenttype, "{what}");
            assert_eq!(
                got["dataschema"], "https://example.com/reply.json",
                "{what}"
            );
            assert_eq!(
                time(got["time"].as_str().unwrap()),
                *json_reply.time().unwrap(),
                "{what}"
            );
            assert_eq!(got["extensions"]["retries"], retries, "{what}");
            assert_eq!(got["extensions"]["sampled"], sampled, "{what}");
            if parser == "legacy" && binary {
                // The legacy API does not percent-decode header values, and
                // reads a text body as bytes; it agrees on everything else.
                if data.get("json").is_some() {
                    assert_eq!(got["data"], data, "{what}");
                } else {
                    assert_eq!(summary_bytes(&got["data"]), summary_bytes(&data), "{what}");
                }
                continue;
            }
            assert_eq!(got["subject"], SUBJECT, "{what}");
            assert_eq!(got["extensions"]["partitionkey"], "k ü", "{what}");
            assert_eq!(got["data"], data, "{what}");
        }
    }
}
