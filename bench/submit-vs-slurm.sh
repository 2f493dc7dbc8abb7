#!/usr/bin/env bash
# Submissions through HTTP, Clusterra beside slurmrestd, in one run with one load generator (wrk,
# from Debian): a fresh release server on its embedded defaults whose local executor runs
# nothing (executor_slots = 0), holding PREFILL jobs already queued, and the real Slurm of
# scripts/slurm-local (needs root) taking the same body submitted held (nothing runs). Each is
# driven at 16 and 64 connections for SECONDS seconds.
#   bench/submit-vs-slurm.sh [PREFILL (default 50000)]   SECONDS_PER_RUN=3 by default
# Each Clusterra run starts once the server has folded everything appended before it (`settle`
# in lib.sh: the live projections and the poll cycle's index), so it measures a server holding
# its queue, not one still taking in the fill or the run before; SETTLE=0 starts at once.
# The held jobs of each run stay queued in Slurm: a fresh slurmctld (no jobs from an earlier run)
# is started with MaxJobCount raised to 100,000 (10,000 by default), so no run meets the limit.
. "$(dirname "$0")/lib.sh"
prefill="${1:-50000}"
secs="${SECONDS_PER_RUN:-3}"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
scripts/slurm-local stop >/dev/null 2>&1 || true
eval "$(CLUSTERRA_SLURM_MAX_JOBS=100000 scripts/slurm-local start)"
on_exit 'scripts/slurm-local stop >/dev/null 2>&1 || true'
CLUSTERRA_EXECUTOR_SLOTS=0 start_server
token=$(mint_token)
echo "queueing $prefill jobs in Clusterra first"
fill_queue "$token" "$prefill"

job='"name": "bench", "script": "#!/bin/bash\\nsrun hostname\\n", "environment": ["PATH=/usr/local/bin:/usr/bin:/bin"], "tasks": 1, "cpus_per_task": 1, "memory_per_node": {"set": true, "infinite": false, "number": 512}, "time_limit": {"set": true, "infinite": false, "number": 10}'
cat > "$dir/clusterra.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"job": {$job, "current_working_directory": "/mnt/efs"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
LUA
slurm_lua "$dir/slurm.lua" "{\"job\": {$job, \"current_working_directory\": \"/tmp\", \"hold\": true}}"
run() { # name url script connections
  echo "== $1, $4 connections, ${secs} s"
  wrk -t2 -c"$4" -d"${secs}s" --latency -s "$3" "$2" | grep -E "Requests/sec|Latency |99%|50%|Non-2xx|Socket errors|requests in"
}
# Clusterra's server is stopped (SIGSTOP) while slurmrestd is measured, so work it still has
# queued from its own run (projectors, the poll cycle) takes no CPU from Slurm; Slurm's daemons
# keep running through Clusterra's runs.
for c in 16 64; do
  [ "${SETTLE:-1}" = 0 ] || settle "$token"
  run Clusterra "$url/v1/clusters/local/jobs" "$dir/clusterra.lua" "$c"
  kill -STOP "$pid"
  run slurmrestd "$SLURMRESTD_URL/slurm/v0.0.44/job/submit" "$dir/slurm.lua" "$c"
  kill -CONT "$pid"
done
