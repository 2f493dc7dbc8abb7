#!/usr/bin/env bash
# What reading money costs while a workspace holds many jobs: a fresh release server whose local
# executor runs nothing (executor_slots = 0), N jobs submitted through HTTP by one user (they stay
# PENDING), then wrk reads `GET /v1/users/me` and the workspace's usage for SECONDS each.
#   bench/usage.sh [N] [SECONDS]
. "$(dirname "$0")/lib.sh"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
n="${1:-20000}"
seconds="${2:-10}"
CLUSTERRA_EXECUTOR_SLOTS=0 start_server
token=$(mint_token --admin)
echo "filling the workspace: $n submits through HTTP"
fill_queue "$token" "$n"
cat > "$dir/auth.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $token"
LUA
for path in /v1/users/me /v1/workspaces/default/usage; do
  echo "GET $path, 4 connections, ${seconds} s:"
  wrk -t 2 -c 4 -d "${seconds}s" --latency -s "$dir/auth.lua" "$url$path" | grep -E "Requests/sec|50%|99%|Non-2xx"
done
