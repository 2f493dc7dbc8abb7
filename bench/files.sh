#!/usr/bin/env bash
# Files: presigned-URL issuance through HTTP, then a large upload and download through the
# embedded object store, against a fresh release server on its defaults (SQLite, embedded store).
#   bench/files.sh [presigns] [concurrency] [transfer MiB]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clusterra/target}"
export CLUSTERRA_S3_LISTEN=127.0.0.1:0  # the embedded object store on a free port
cargo build --release -q -p cli -p bench
bin="$CARGO_TARGET_DIR/release"
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
CLUSTERRA_LOG=warn "$bin/clusterra" serve --data-dir "$dir/data" --listen 127.0.0.1:0 > "$dir/out" &
pid=$!
for _ in $(seq 100); do grep -q "clusterra listening" "$dir/out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n "s/^clusterra listening on //p" "$dir/out")
token=$("$bin/clusterra" token mint --data-dir "$dir/data" --email bench@clusterra.local)
"$bin/filesbench" --url "$url" --token "$token" --presigns "${1:-20000}" --concurrency "${2:-32}" --transfer-mib "${3:-1024}"
echo "server RSS after: $(grep VmRSS /proc/$pid/status | awk '{print $2}') KiB, peak $(grep VmHWM /proc/$pid/status | awk '{print $2}') KiB"
