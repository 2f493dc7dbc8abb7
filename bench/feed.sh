#!/usr/bin/env bash
# The live event feed under load: a fresh release server whose executor runs nothing (every
# submission is one feed entry), feedbench subscribing many SSE clients while it submits.
#   bench/feed.sh [subscribers] [entries per second] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clusterra/target}"
cargo build --release -q -p cli -p bench
bin="$CARGO_TARGET_DIR/release"
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
CLUSTERRA_EXECUTOR_SLOTS=0 CLUSTERRA_LOG=warn "$bin/clusterra" serve --data-dir "$dir/data" --listen 127.0.0.1:0 > "$dir/out" &
pid=$!
for _ in $(seq 100); do grep -q listening "$dir/out" 2>/dev/null && break; sleep 0.1; done
url=$(head -1 "$dir/out" | sed 's/.* on //')
token=$("$bin/clusterra" token mint --data-dir "$dir/data" --email bench@clusterra.local --admin)
"$bin/feedbench" --url "$url" --token "$token" --server-pid "$pid" \
  --subscribers "${1:-10000}" --rate "${2:-500}" --seconds "${3:-10}"
