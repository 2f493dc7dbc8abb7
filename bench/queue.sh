#!/usr/bin/env bash
# What a server costs while it holds a queue: a fresh release server whose local executor runs
# nothing (executor_slots = 0), N jobs submitted through HTTP (they stay PENDING), then
# queuebench measures the idle server's CPU and the poll cycle with 100 state changes.
#   bench/queue.sh N                          on the embedded default (SQLite)
#   DATABASE_URL=postgres://… bench/queue.sh N  on a scratch PostgreSQL database (dropped after)
# The queue is filled through the submit path, not by appending events: a job the local executor
# never received is one reconcile rightly records as vanished.
. "$(dirname "$0")/lib.sh"
n="${1:-100000}"
flags=()
db_flag=()
if [ -n "${DATABASE_URL:-}" ]; then
  db="queuebench_$$"
  db_url="${DATABASE_URL%/*}/$db"
  psql -q "$DATABASE_URL" -c "CREATE DATABASE $db"
  on_exit 'psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"'
  flags=(--database-url "$db_url")
  db_flag=(--database-url "$db_url")
fi
# On PostgreSQL the embedded `local` cluster is registered only when asked for.
CLUSTERRA_DEFAULT_CLUSTER=true CLUSTERRA_EXECUTOR_SLOTS=0 start_server "${flags[@]}"
token=$(mint_token "${db_flag[@]}")
echo "filling the queue: $n submits through HTTP"
fill_queue "$token" "$n"
"$bin/queuebench" --url "$url" --token "$token" --server-pid "$pid" --clk-tck "$(getconf CLK_TCK)" \
  --idle-seconds "${IDLE_SECONDS:-30}" --changes "${CHANGES:-100}"
echo "server RSS: $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status)"
