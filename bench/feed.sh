#!/usr/bin/env bash
# The live event feed under load: a fresh release server on a fresh PostgreSQL database, many SSE
# subscribers on one cluster's feed, events appended straight into the log (as another replica
# would) and delivered through NOTIFY → projection → fan-out. Needs DATABASE_URL (any database
# on the server; a scratch database is created beside it and dropped after) and psql.
#   bench/feed.sh [subscribers] [events per second] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATABASE_URL:?set DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/postgres}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clusterra/target}"
export CLUSTERRA_S3_LISTEN=127.0.0.1:0  # the embedded object store on a free port
cargo build --release -q -p cli -p bench
bin="$CARGO_TARGET_DIR/release"
dir=$(mktemp -d)
db="feedbench_$$"
url="${DATABASE_URL%/*}/$db"
psql -q "$DATABASE_URL" -c "CREATE DATABASE $db"
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"; psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"' EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
CLUSTERRA_LOG=warn "$bin/clusterra" serve --data-dir "$dir/data" --database-url "$url" --listen 127.0.0.1:0 > "$dir/out" &
pid=$!
for _ in $(seq 100); do grep -q "clusterra listening" "$dir/out" 2>/dev/null && break; sleep 0.1; done
base=$(sed -n "s/^clusterra listening on //p" "$dir/out")
token=$("$bin/clusterra" token mint --data-dir "$dir/data" --database-url "$url" --email bench@clusterra.local --admin)
"$bin/feedbench" --url "$base" --token "$token" --server-pid "$pid" --database-url "$url" \
  --subscribers "${1:-10000}" --rate "${2:-500}" --seconds "${3:-10}"
