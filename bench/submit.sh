#!/usr/bin/env bash
# Submission throughput through HTTP with jobs left pending: a fresh release server whose local
# executor runs nothing (executor_slots = 0), loaded by submitbench on loopback.
#   bench/submit.sh [requests] [concurrency]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clusterra/target}"
export CLUSTERRA_S3_LISTEN=127.0.0.1:0  # the embedded object store on a free port
cargo build --release -q -p cli -p bench
bin="$CARGO_TARGET_DIR/release"
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
CLUSTERRA_EXECUTOR_SLOTS=0 CLUSTERRA_LOG=warn "$bin/clusterra" serve --data-dir "$dir/data" --listen 127.0.0.1:0 > "$dir/out" &
pid=$!
for _ in $(seq 100); do grep -q "clusterra listening" "$dir/out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n "s/^clusterra listening on //p" "$dir/out")
token=$("$bin/clusterra" token mint --data-dir "$dir/data" --email bench@clusterra.local)
"$bin/submitbench" --url "$url/v1/clusters/local/jobs" --token "$token" --requests "${1:-5000}" --concurrency "${2:-32}"
