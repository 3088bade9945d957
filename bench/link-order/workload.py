#!/usr/bin/env python3
"""The run that `generate.sh` profiles: what a server does in the benchmark.

Starts `wisp server` on a free loopback port with a fresh data directory,
deploys `hello`, calls it one at a time and then from 32 and 256
connections at once (a few seconds each), reads the metrics, and stops the
server with SIGTERM so that it writes its profile on the way out.

`--light` makes the run shorter (for a server slowed down by probes);
`--cache-dir DIR` is passed to the server, so that a second run with the
same directory finds `hello` compiled and starts no compiler process.

Usage: workload.py WISP_BINARY HELLO_WASM [--light] [--cache-dir DIR]
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    res = conn.getresponse()
    data = res.read()
    if res.status >= 300:
        raise RuntimeError(f"{method} {path}: {res.status} {data[:200]!r}")
    return data


def load(port, connections, seconds):
    """Calls /fn/hello from `connections` keep-alive connections for `seconds`."""
    deadline = time.monotonic() + seconds
    counts = []

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        n = 0
        while time.monotonic() < deadline:
            request(conn, "GET", "/fn/hello")
            n += 1
        conn.close()
        counts.append(n)

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


def main():
    wisp, hello = sys.argv[1], sys.argv[2]
    light = "--light" in sys.argv
    args = [wisp, "server", "--listen", f"127.0.0.1:{free_port()}"]
    if "--cache-dir" in sys.argv:
        args += ["--cache-dir", sys.argv[sys.argv.index("--cache-dir") + 1]]
    port = int(args[3].rsplit(":", 1)[1])
    data = tempfile.mkdtemp(prefix="wisp-link-order-")
    server = subprocess.Popen(
        args + ["--data-dir", data],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(1200):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                request(conn, "GET", "/v1/health")
                break
            except (OSError, RuntimeError):
                time.sleep(0.05)
        else:
            raise RuntimeError("the server did not come up")
        with open(hello, "rb") as f:
            wasm = f.read()
        up = json.loads(
            request(conn, "POST", "/v1/artifacts", wasm, {"content-type": "application/wasm"})
        )
        spec = json.dumps({"code_digest": up["digest"], "max_concurrency": 1000})
        request(conn, "PUT", "/v1/functions/hello", spec, {"content-type": "application/json"})
        for _ in range(200 if light else 2000):
            request(conn, "GET", "/fn/hello")
        for connections in (32, 256):
            n = load(port, connections, 1 if light else 3)
            print(f"c={connections}: {n} requests", file=sys.stderr)
        request(conn, "GET", "/metrics")
        request(conn, "GET", "/v1/functions/hello")
        conn.close()
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    print(f"server pid {server.pid} exited with {code}", file=sys.stderr)
    print(server.pid)


if __name__ == "__main__":
    main()
