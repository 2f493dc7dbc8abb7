# Shared by the bench/*.sh scripts (sourced, not run): builds the release binaries, makes a scratch
# folder removed on exit, and starts a fresh server in it.
#   start_server [serve flags…]   (environment given before it reaches the server) sets pid, url
#   mint_token [token flags…]     prints a token for bench@clusterra.local
#   fill_queue TOKEN N            N submits to the local cluster through HTTP (32 clients)
#   settle TOKEN                  waits until the server has caught up with its log (every
#                                 projection, and the poll cycle's open-job index); prints how long
#   slurm_lua FILE BODY           a wrk script POSTing BODY to slurmrestd (scripts/slurm-local)
#   keyed_lua FILE NONCE TOKEN BODY  a wrk script POSTing BODY to Clusterra as TOKEN, each request
#                                 with its own Idempotency-Key (NONCE keeps runs apart)
#   on_exit 'command'             runs at exit, after the server is stopped
# BENCH_BIN=DIR runs the clusterra and bench binaries already in DIR (another build, for an A/B
# comparison) instead of building this checkout's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clusterra/target}"
export CLUSTERRA_S3_LISTEN=127.0.0.1:0  # the embedded object store on a free port
if [ -n "${BENCH_BIN:-}" ]; then
  bin=$BENCH_BIN
else
  cargo build --release -q -p cli -p bench
  bin="$CARGO_TARGET_DIR/release"
fi
dir=$(mktemp -d)
# A server running as root runs local jobs as an unprivileged user, who must pass through here.
chmod 711 "$dir"
pid=""
exit_cmds=""
on_exit() { exit_cmds="${exit_cmds:+$exit_cmds; }$1"; }
trap '[ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }; rm -rf "$dir"; eval "$exit_cmds"' EXIT

start_server() {
  CLUSTERRA_LOG="${CLUSTERRA_LOG:-warn}" "$bin/clusterra" serve --data-dir "$dir/data" --listen 127.0.0.1:0 "$@" > "$dir/out" &
  pid=$!
  for _ in $(seq 100); do grep -q "clusterra listening" "$dir/out" 2>/dev/null && break; sleep 0.1; done
  url=$(sed -n "s/^clusterra listening on //p" "$dir/out")
}

# Queues N jobs on the local cluster through HTTP as TOKEN's user (32 clients; they stay PENDING
# on a server whose executor runs nothing).
fill_queue() { # token n
  "$bin/submitbench" --url "$url/v1/clusters/local/jobs" --token "$1" --requests "$2" --concurrency 32 --max-seconds 3600
}

# A burst of submits leaves the server work to do after the last answer: the live projections
# and the poll cycle's open-job index fold what was appended. A measurement meant to see a server
# holding a queue (not one still taking in a burst) starts once that is done, as queuebench's
# first step tells it (three poll cycles in a row that read nothing new, no projection lagging).
settle() { # token
  "$bin/queuebench" --url "$url" --token "$1" --server-pid "$pid" --settle-only ||
    echo "the server did not settle: measuring anyway" >&2
}

mint_token() {
  "$bin/clusterra" token mint --data-dir "$dir/data" --email bench@clusterra.local "$@"
}

# Writes a wrk script that POSTs BODY to slurmrestd as the Slurm user of scripts/slurm-local.
slurm_lua() { # file body
  cat > "$1" <<LUA
wrk.method = "POST"
wrk.body = '$2'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-SLURM-USER-NAME"] = "$SLURM_USER_NAME"
wrk.headers["X-SLURM-USER-TOKEN"] = "$SLURM_JWT"
LUA
}

# Writes a wrk script that POSTs BODY to Clusterra as TOKEN, each request with a new
# Idempotency-Key: each wrk thread numbers its own keys, NONCE keeps runs apart.
keyed_lua() { # file nonce token body
  cat > "$1" <<LUA
local n, thread_no = 0, 0
local counter = 0
function setup(thread) counter = counter + 1; thread:set("no", counter) end
function init(args) thread_no = no end
function request()
  n = n + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer $3",
    ["Idempotency-Key"] = "bench-$2-" .. thread_no .. "-" .. n},
    '$4')
end
LUA
}
