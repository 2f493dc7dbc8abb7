#!/usr/bin/env bash
# Files: presigned-URL issuance through HTTP, then a large upload and download through the
# embedded object store, against a fresh release server on its defaults (SQLite, embedded store).
#   bench/files.sh [presigns] [concurrency] [transfer MiB]
. "$(dirname "$0")/lib.sh"
start_server
"$bin/filesbench" --url "$url" --token "$(mint_token)" --presigns "${1:-20000}" --concurrency "${2:-32}" --transfer-mib "${3:-1024}"
echo "server RSS after: $(grep VmRSS /proc/$pid/status | awk '{print $2}') KiB, peak $(grep VmHWM /proc/$pid/status | awk '{print $2}') KiB"
