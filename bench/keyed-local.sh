#!/usr/bin/env bash
# Clusterra's CPU per keyed submit (each request with its own Idempotency-Key) on the local
# cluster of a fresh release server on its embedded defaults whose executor runs nothing
# (executor_slots = 0): the server on CPU 1, wrk (from Debian) on CPU 0, so the server's CPU
# seconds are its own. Prints each round's rate, p99 and server CPU per submit.
#   bench/keyed-local.sh            SECONDS_PER_RUN=5, CONNECTIONS=16, ROUNDS=1
# For an A/B comparison, alternate fresh servers of two builds: BENCH_BIN=DIR (see lib.sh).
. "$(dirname "$0")/lib.sh"
secs="${SECONDS_PER_RUN:-5}"
conns="${CONNECTIONS:-16}"
rounds="${ROUNDS:-1}"
[[ "$rounds" =~ ^[1-9][0-9]?$ ]] || { echo "ROUNDS must be from 1 to 99" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
CLUSTERRA_EXECUTOR_SLOTS=0 start_server
taskset -a -p -c 1 "$pid" >/dev/null
token=$(mint_token)
job='"name": "bench", "script": "#!/bin/bash\\nsrun hostname\\n", "environment": ["PATH=/usr/local/bin:/usr/bin:/bin"], "tasks": 1, "cpus_per_task": 1, "memory_per_node": {"set": true, "infinite": false, "number": 512}, "time_limit": {"set": true, "infinite": false, "number": 10}, "current_working_directory": "/mnt/efs", "hold": true'
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
for r in $(seq "$rounds"); do
  keyed_lua "$dir/keyed.lua" "local-$r" "$token" "{\"job\": {$job}}"
  before=$(cpu "$pid")
  out=$(taskset -c 0 wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$dir/keyed.lua" "$url/v1/clusters/local/jobs")
  after=$(cpu "$pid")
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  failed=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  awk -v r="$r" -v n="$n" -v s="$secs" -v p99="$(echo "$out" | awk '$1=="99%" {print $2}')" \
    -v failed="${failed:-0}" -v before="$before" -v after="$after" \
    'BEGIN {c = after - before; printf "round %d: %d keyed submits (%.0f/s, p99 %s, non-2xx %d), server CPU %.2f s = %.0f us per submit\n", r, n, n / s, p99, failed, c, c * 1e6 / n}'
  sleep 2
done
