#!/usr/bin/env bash
# Job logs under load: a fresh release server, tailbench following one log with many SSE clients
# while lines are appended, then a big log read from offset 0.
#   bench/logs.sh [clients] [lines per second] [seconds] [big MiB]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clusterra/target}"
export CLUSTERRA_S3_LISTEN=127.0.0.1:0  # the embedded object store on a free port
cargo build --release -q -p cli -p bench
bin="$CARGO_TARGET_DIR/release"
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
CLUSTERRA_POLL_INTERVAL_MS=200 CLUSTERRA_LOG=warn "$bin/clusterra" serve --data-dir "$dir/data" --listen 127.0.0.1:0 > "$dir/out" &
pid=$!
for _ in $(seq 100); do grep -q "clusterra listening" "$dir/out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n "s/^clusterra listening on //p" "$dir/out")
token=$("$bin/clusterra" token mint --data-dir "$dir/data" --email bench@clusterra.local)
"$bin/tailbench" --url "$url" --token "$token" --efs "$dir/data/efs" --server-pid "$pid" \
  --clients "${1:-1000}" --rate "${2:-1000}" --seconds "${3:-10}" --big-mib "${4:-1024}"
