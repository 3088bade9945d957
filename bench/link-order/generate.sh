#!/usr/bin/env bash
# Rewrites crates/wisp-cli/link-order.txt: builds the release `wisp`,
# counts which of its functions a server runs (profile.py: a uprobe on
# every function, needs root and tracefs), and lists them, most calls
# first. See README.md in this directory.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release -p wisp-cli
(cd examples && cargo build --release -p hello)
list=$(mktemp)
trap 'rm -f "$list"' EXIT
python3 bench/link-order/profile.py target/release/wisp \
    examples/target/wasm32-wasip2/release/hello.wasm >"$list"
cp "$list" crates/wisp-cli/link-order.txt
echo "crates/wisp-cli/link-order.txt: $(wc -l <crates/wisp-cli/link-order.txt) functions" >&2
