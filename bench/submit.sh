#!/usr/bin/env bash
# Submission throughput through HTTP with jobs left pending: a fresh release server whose local
# executor runs nothing (executor_slots = 0), loaded by submitbench on loopback.
#   bench/submit.sh [requests] [concurrency]
. "$(dirname "$0")/lib.sh"
CLUSTERRA_EXECUTOR_SLOTS=0 start_server
"$bin/submitbench" --url "$url/v1/clusters/local/jobs" --token "$(mint_token)" --requests "${1:-5000}" --concurrency "${2:-32}"
