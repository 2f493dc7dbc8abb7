#!/usr/bin/env bash
# Job logs under load: a fresh release server, tailbench following one log with many SSE clients
# while lines are appended, then a big log read from offset 0.
#   bench/logs.sh [clients] [lines per second] [seconds] [big MiB]
. "$(dirname "$0")/lib.sh"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
CLUSTERRA_POLL_INTERVAL_MS=200 start_server
"$bin/tailbench" --url "$url" --token "$(mint_token)" --efs "$dir/data/efs" --server-pid "$pid" \
  --clients "${1:-1000}" --rate "${2:-1000}" --seconds "${3:-10}" --big-mib "${4:-1024}"
