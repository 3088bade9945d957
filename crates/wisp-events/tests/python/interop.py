#!/usr/bin/env python3
"""CloudEvents interoperability helper for wisp-events' tests/python_sdk.rs.

Uses the official CloudEvents SDK for Python (PyPI `cloudevents`); no network.

    python3 interop.py produce        events the SDK encodes, as JSON on stdout
    python3 interop.py consume        HTTP messages (JSON on stdin) that the SDK
                                      parses; summaries as JSON on stdout

Both the SDK's current API (`cloudevents.core`, SDK 2.x) and its legacy API
(`cloudevents.conversion` / `cloudevents.http`, moved to `cloudevents.v1` in
2.x) are exercised when installed. The events and their values are fixed:
the Rust test checks them one by one.
"""

import base64
import json
import sys
from datetime import datetime, timezone

import cloudevents

try:  # SDK 2.x: the current API.
    from cloudevents.core.bindings import http as core_http
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent as CoreEvent
except ImportError:  # SDK 1.x
    core_http = None

try:  # SDK 1.x
    from cloudevents import conversion as legacy_conversion
    from cloudevents.http import CloudEvent as LegacyEvent
    from cloudevents.http import from_http as legacy_from_http
except ImportError:  # SDK 2.x keeps the 1.x API under cloudevents.v1
    from cloudevents.v1 import conversion as legacy_conversion
    from cloudevents.v1.http import CloudEvent as LegacyEvent
    from cloudevents.v1.http import from_http as legacy_from_http

# No SDK version offers a batch encoder today; use it if one appears.
legacy_to_batch = getattr(legacy_conversion, "to_batch", None)

TIME = datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=timezone.utc)
TIME_TEXT = "2024-05-01T12:00:00.5Z"
BYTES = b"\x00\xffbinary\x80"


def message(name, api, headers, body):
    if isinstance(body, str):
        body = body.encode("utf-8")
    return {
        "name": name,
        "api": api,
        "headers": {k.lower(): str(v) for k, v in headers.items()},
        "body_base64": base64.b64encode(body or b"").decode("ascii"),
    }


def core_attributes(**extra):
    attributes = {
        "specversion": "1.0",
        "id": "py-core-1",
        "source": "/python/sdk",
        "type": "com.example.interop",
        "subject": 'héllo wörld 100% "quoted"',
        "time": TIME,
        "dataschema": "https://example.com/schema.json",
        "datacontenttype": "application/json",
        "partitionkey": "p 1 ü",
    }
    attributes.update(extra)
    return attributes


def legacy_attributes(**extra):
    # The legacy API does not percent-encode header values: ASCII only, no `%`.
    attributes = {
        "specversion": "1.0",
        "id": "py-legacy-1",
        "source": "/python/legacy",
        "type": "com.example.interop",
        "subject": "hello legacy",
        "time": TIME_TEXT,
        "dataschema": "https://example.com/schema.json",
        "datacontenttype": "application/json",
        "partitionkey": "p-2",
    }
    attributes.update(extra)
    return attributes


def produce():
    cases = []
    data = {"n": 1, "s": "x", "list": [1, 2]}
    if core_http is not None:
        fmt = JSONFormat()
        event = CoreEvent(core_attributes(), data)
        m = core_http.to_binary(event, fmt)
        cases.append(message("core-binary-json", "core", m.headers, m.body))
        m = core_http.to_structured(event, fmt)
        cases.append(message("core-structured-json", "core", m.headers, m.body))

        binary = CoreEvent(
            core_attributes(id="py-core-2", datacontenttype="application/octet-stream"),
            BYTES,
        )
        m = core_http.to_binary(binary, fmt)
        cases.append(message("core-binary-bytes", "core", m.headers, m.body))
        m = core_http.to_structured(binary, fmt)
        cases.append(message("core-structured-bytes", "core", m.headers, m.body))

        text = CoreEvent(
            core_attributes(id="py-core-3", datacontenttype="text/plain"), "plain text ✓"
        )
        m = core_http.to_binary(text, fmt)
        cases.append(message("core-binary-text", "core", m.headers, m.body))

    event = LegacyEvent(legacy_attributes(), data)
    headers, body = legacy_conversion.to_binary(event)
    cases.append(message("legacy-binary-json", "legacy", headers, body))
    headers, body = legacy_conversion.to_structured(event)
    cases.append(message("legacy-structured-json", "legacy", headers, body))
    binary = LegacyEvent(
        legacy_attributes(id="py-legacy-2", datacontenttype="application/octet-stream"),
        BYTES,
    )
    headers, body = legacy_conversion.to_structured(binary)
    cases.append(message("legacy-structured-bytes", "legacy", headers, body))

    batch_events = [
        LegacyEvent(legacy_attributes(id="py-batch-%d" % i, retries=i), {"i": i})
        for i in range(3)
    ]
    if legacy_to_batch is not None:
        headers, body = legacy_to_batch(batch_events)
    else:
        body = "[" + ",".join(
            legacy_conversion.to_json(e).decode("utf-8") for e in batch_events
        ) + "]"
        headers = {"content-type": "application/cloudevents-batch+json"}
    cases.append(message("legacy-batch", "legacy", headers, body))

    json.dump(
        {
            "sdk_version": cloudevents.__version__,
            "apis": (["core"] if core_http is not None else []) + ["legacy"],
            "batch_helper": legacy_to_batch is not None,
            "cases": cases,
        },
        sys.stdout,
    )


def normalise_time(value):
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.astimezone(timezone.utc).isoformat()


def summary(attributes, data):
    known = {"specversion", "id", "source", "type", "subject", "time",
             "dataschema", "datacontenttype"}
    out = {k: attributes.get(k) for k in known}
    out["time"] = normalise_time(attributes.get("time"))
    out["extensions"] = {k: v for k, v in attributes.items() if k not in known}
    if data is None:
        out["data"] = None
    elif isinstance(data, (bytes, bytearray)):
        out["data"] = {"base64": base64.b64encode(bytes(data)).decode("ascii")}
    elif isinstance(data, str):
        out["data"] = {"text": data}
    else:
        out["data"] = {"json": data}
    return out


def consume():
    request = json.load(sys.stdin)
    results = []
    for case in request["cases"]:
        headers = case["headers"]
        body = base64.b64decode(case["body_base64"])
        result = {"name": case["name"]}
        if core_http is not None:
            m = core_http.HTTPMessage(headers=dict(headers), body=body)
            event = core_http.from_http(m, JSONFormat())
            result["core"] = summary(dict(event.get_attributes()), event.get_data())
        event = legacy_from_http(dict(headers), body)
        result["legacy"] = summary(dict(event.get_attributes()), event.get_data())
        results.append(result)
    json.dump({"sdk_version": cloudevents.__version__, "results": results}, sys.stdout)


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("produce", "consume"):
        sys.exit(__doc__)
    produce() if sys.argv[1] == "produce" else consume()
