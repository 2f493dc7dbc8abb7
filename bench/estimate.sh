#!/usr/bin/env bash
# What a job estimate costs while the cluster holds a queue: a fresh release server whose local
# executor runs nothing (executor_slots = 0), N jobs submitted through HTTP (they stay PENDING),
# then wrk POSTs one body to `POST /v1/clusters/local/jobs/estimate` for SECONDS, and the log's
# position is compared before and after (an estimate appends nothing).
#   bench/estimate.sh [N] [SECONDS]
. "$(dirname "$0")/lib.sh"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
n="${1:-100000}"
seconds="${2:-10}"
CLUSTERRA_EXECUTOR_SLOTS=0 start_server
token=$(mint_token --admin)
echo "filling the queue: $n submits through HTTP"
fill_queue "$token" "$n"
cat > "$dir/estimate.lua" <<LUA
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer $token"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{"job": {"name": "estimate", "script": "#!/bin/bash\nsrun ./solver\n", "environment": ["PATH=/usr/bin:/bin"], "current_working_directory": "/mnt/efs", "tasks": 16, "time_limit": {"set": true, "number": 120}}}]]
LUA
sleep 3 # the poll cycle reads the fill
before=$(curl -s "$url/readyz" | sed -n 's/.*"log_position":\([0-9]*\).*/\1/p')
echo "POST /v1/clusters/local/jobs/estimate, 4 connections, ${seconds} s, $n jobs queued:"
wrk -t 2 -c 4 -d "${seconds}s" --latency -s "$dir/estimate.lua" "$url/v1/clusters/local/jobs/estimate" | grep -E "Requests/sec|50%|99%|Non-2xx"
after=$(curl -s "$url/readyz" | sed -n 's/.*"log_position":\([0-9]*\).*/\1/p')
echo "log position before $before, after $after"
curl -s -X POST -H "Authorization: Bearer $token" -H "Content-Type: application/json" \
  --data '{"job": {"name": "estimate", "script": "#!/bin/bash\ntrue\n", "environment": ["PATH=/usr/bin:/bin"], "current_working_directory": "/mnt/efs", "tasks": 16, "time_limit": {"set": true, "number": 120}}}' \
  "$url/v1/clusters/local/jobs/estimate"
echo
