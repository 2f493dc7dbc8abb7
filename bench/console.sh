#!/usr/bin/env bash
# What the console's jobs page costs with many jobs in the cluster: a fresh release server whose
# local executor runs nothing (executor_slots = 0), N jobs submitted through HTTP by one user
# (they stay PENDING) and 20 by another, then wrk reads console pages with a session cookie,
# one connection at a time (so the latency is the server's time per page plus loopback):
#   the jobs page of an admin (the first 50 of N), of the user with 20 jobs (a scan of the
#   cluster's jobs for theirs), of a state filter, and one job's page.
#   bench/console.sh [N] [SECONDS]
. "$(dirname "$0")/lib.sh"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
n="${1:-10000}"
seconds="${2:-10}"
CLUSTERRA_EXECUTOR_SLOTS=0 start_server
admin=$(mint_token --admin)
few=$("$bin/clusterra" token mint --data-dir "$dir/data" --email few@clusterra.local)
echo "filling the cluster: $n submits through HTTP, then 20 by another user"
fill_queue "$admin" "$n"
"$bin/submitbench" --url "$url/v1/clusters/local/jobs" --token "$few" --requests 20 --concurrency 4 --max-seconds 600
page() { # name token path
  cat > "$dir/cookie.lua" <<LUA
wrk.headers["Cookie"] = "clusterra_session=$2"
LUA
  echo "$1: GET $3, 1 connection, ${seconds} s:"
  wrk -t 1 -c 1 -d "${seconds}s" --latency -s "$dir/cookie.lua" "$url$3" | grep -E "Requests/sec|50%|99%|Non-2xx"
}
page "admin, first page" "$admin" "/jobs?cluster=local"
page "admin, PENDING filter" "$admin" "/jobs?cluster=local&state=PENDING"
page "user with 20 of the jobs" "$few" "/jobs?cluster=local"
page "one job" "$admin" "/jobs/$((n / 2))?cluster=local"
