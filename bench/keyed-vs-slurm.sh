#!/usr/bin/env bash
# Keyed submissions (each with its own Idempotency-Key) through Clusterra to the real Slurm of
# scripts/slurm-local (needs root), beside slurmrestd taking the same body itself, in one run with
# one load generator (wrk, from Debian), while QUEUED held jobs already wait in Slurm; and
# slurmrestd's /ping latency measured by a second wrk during each run (is it still responsive?).
# Every job is submitted held, so nothing runs. A fresh release server on its embedded defaults
# registers the Slurm as cluster `real` (poll cycle every second, as by default).
#   bench/keyed-vs-slurm.sh [QUEUED (default 10000)]   SECONDS_PER_RUN=5, CONNECTIONS=16, ROUNDS=2
# The /ping probe pings back to back (a closed loop: it takes whatever share of Slurm's core the
# submits leave, 100-260 pings/s here); PING_EVERY_MS=N waits N ms after each answer instead
# (N=10: ~30-40 pings/s), so the probe is hardly a load of its own.
# SEPARATE_CORES=1 pins Slurm's daemons to CPU 0 and Clusterra and both wrk to CPU 1 (taskset):
# Slurm has the same one core in both runs, as it would on a head node of its own, and Clusterra
# pays for its own work instead of taking it from Slurm's.
. "$(dirname "$0")/lib.sh"
queued="${1:-10000}"
secs="${SECONDS_PER_RUN:-5}"
conns="${CONNECTIONS:-16}"
ping_every="${PING_EVERY_MS:-0}"
rounds="${ROUNDS:-2}"
[[ "$rounds" =~ ^[1-9][0-9]?$ ]] || { echo "ROUNDS must be from 1 to 99" >&2; exit 2; }
[[ "$ping_every" =~ ^[0-9]+$ ]] || { echo "PING_EVERY_MS must be a whole number of milliseconds" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
# A fresh slurmctld (-c: no jobs from an earlier run) that takes the queue and both runs.
scripts/slurm-local stop >/dev/null 2>&1 || true
eval "$(CLUSTERRA_SLURM_MAX_JOBS=$((queued + 40000)) scripts/slurm-local start)"
on_exit 'scripts/slurm-local stop >/dev/null 2>&1 || true'
CLUSTERRA_EXECUTOR_SLOTS=0 start_server
token=$(mint_token --admin)

echo "queueing $queued held jobs in Slurm first"
"$bin/submitbench" --url "$SLURMRESTD_URL/slurm/v0.0.44/job/submit" --token "$SLURM_JWT" \
  --slurmrestd-user "$SLURM_USER_NAME" --requests "$queued" --concurrency 16 --max-seconds 3600

mkdir -p "$dir/data/slurm-tokens"
printf '%s' "$SLURM_JWT" > "$dir/data/slurm-tokens/default.real.jwt"
curl -sf -X POST "$url/v1/clusters" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d "{\"id\": \"real\", \"name\": \"Real Slurm\", \"region\": \"local\", \"bucket\": \"real-bucket\", \"slurm\": {\"url\": \"$SLURMRESTD_URL\", \"user\": \"$SLURM_USER_NAME\"}}" >/dev/null

job='"name": "bench", "script": "#!/bin/bash\\nsrun hostname\\n", "environment": ["PATH=/usr/local/bin:/usr/bin:/bin"], "tasks": 1, "cpus_per_task": 1, "memory_per_node": {"set": true, "infinite": false, "number": 512}, "time_limit": {"set": true, "infinite": false, "number": 10}, "current_working_directory": "/tmp", "hold": true'
slurm_lua "$dir/slurm.lua" "{\"job\": {$job}}"
cat > "$dir/ping.lua" <<LUA
wrk.headers["X-SLURM-USER-NAME"] = "$SLURM_USER_NAME"
wrk.headers["X-SLURM-USER-TOKEN"] = "$SLURM_JWT"
LUA
if [ "$ping_every" != 0 ]; then
  echo "function delay() return $ping_every end" >> "$dir/ping.lua"
fi

# Wait until the cluster is connected (its token file read, its directory entry built).
for _ in $(seq 100); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "$url/v1/clusters/real/jobs" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -H "Idempotency-Key: bench-warmup" -d "{\"job\": {$job}}")
  [ "$code" = 201 ] || [ "$code" = 200 ] && break
  sleep 0.2
done
[ "$code" = 201 ] || [ "$code" = 200 ] || { echo "the cluster never connected (last status $code)" >&2; exit 1; }

# CPU seconds a process has used (user + system), from /proc.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0; }
daemons="clusterra:$pid slurmctld:$(pgrep -xo slurmctld) slurmrestd:$(pgrep -xo slurmrestd)"
load=()
if [ "${SEPARATE_CORES:-0}" = 1 ]; then
  for p in $(pgrep -x slurmctld) $(pgrep -x slurmrestd) $(pgrep -x slurmd); do taskset -a -p -c 0 "$p" >/dev/null; done
  taskset -a -p -c 1 "$pid" >/dev/null
  load=(taskset -c 1)
  echo "Slurm's daemons on CPU 0; Clusterra and wrk on CPU 1"
fi
run() { # name url script
  echo "== $1, $conns connections, ${secs} s from $(date -u +%T) UTC (slurmrestd /ping from one more connection meanwhile)"
  local before=() d
  for d in $daemons; do before+=("$(cpu "${d#*:}")"); done
  "${load[@]}" wrk -t1 -c1 -d"$((secs + 1))s" --latency -s "$dir/ping.lua" "$SLURMRESTD_URL/slurm/v0.0.44/ping" > "$dir/ping.out" &
  local ping=$!
  "${load[@]}" wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$3" "$2" > "$dir/run.out"
  grep -E "Requests/sec|Latency |99%|50%|Non-2xx|Socket errors|requests in" "$dir/run.out"
  wait "$ping"
  echo "   /ping during the run:"; grep -E "Requests/sec| 50%| 99%|Non-2xx" "$dir/ping.out" | sed 's/^/   /'
  # name, submits/s, /ping p99 (for the summary)
  echo "$1 $(awk '/^Requests\/sec/ {print $2}' "$dir/run.out") $(awk '/ 99%/ {print $2}' "$dir/ping.out")" >> "$dir/rounds"
  local i=0 line="   CPU seconds used during the run:"
  for d in $daemons; do
    line+=" ${d%%:*} $(awk -v a="$(cpu "${d#*:}")" -v b="${before[$i]}" 'BEGIN {printf "%.2f", a - b}')"
    i=$((i + 1))
  done
  echo "$line"
}
for round in $(seq "$rounds"); do
  keyed_lua "$dir/clusterra.lua" "$round-$RANDOM" "$token" "{\"job\": {$job}}"
  run Clusterra "$url/v1/clusters/real/jobs" "$dir/clusterra.lua"
  run slurmrestd "$SLURMRESTD_URL/slurm/v0.0.44/job/submit" "$dir/slurm.lua"
done
# Slurm's own rate falls as its queue grows, and each round runs Clusterra first: besides the
# same-round ratio, each Clusterra run is also set against the mean of the slurmrestd runs just
# before and just after it.
echo "summary (submits/s; the ratio to the same round's slurmrestd run, and to the mean of the slurmrestd runs either side):"
awk '$1 == "Clusterra" {c[++n] = $2; p[n] = $3} $1 == "slurmrestd" {s[n] = $2}
  END {for (i = 1; i <= n; i++) {
    m = (i > 1) ? (s[i - 1] + s[i]) / 2 : s[i]
    printf "  round %d: Clusterra %.0f, slurmrestd %.0f, ratio %.3f, to the runs either side %.3f; /ping p99 in Clusterra'"'"'s run %s\n", i, c[i], s[i], c[i] / s[i], c[i] / m, p[i]
  }}' "$dir/rounds"
echo "jobs in Slurm at the end: $(curl -s "$SLURMRESTD_URL/slurm/v0.0.44/jobs/state/" -H "X-SLURM-USER-NAME: $SLURM_USER_NAME" -H "X-SLURM-USER-TOKEN: $SLURM_JWT" | grep -o '"job_id"' | wc -l)"
