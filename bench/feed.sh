#!/usr/bin/env bash
# The live event feed under load: a fresh release server on a fresh PostgreSQL database, many SSE
# subscribers on one cluster's feed, events appended straight into the log (as another replica
# would) and delivered through NOTIFY → projection → fan-out. Needs DATABASE_URL (any database
# on the server; a scratch database is created beside it and dropped after) and psql.
#   bench/feed.sh [subscribers] [events per second] [seconds]
: "${DATABASE_URL:?set DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/postgres}"
. "$(dirname "$0")/lib.sh"
db="feedbench_$$"
db_url="${DATABASE_URL%/*}/$db"
psql -q "$DATABASE_URL" -c "CREATE DATABASE $db"
on_exit 'psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"'
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
start_server --database-url "$db_url"
"$bin/feedbench" --url "$url" --token "$(mint_token --database-url "$db_url" --admin)" --server-pid "$pid" --database-url "$db_url" \
  --subscribers "${1:-10000}" --rate "${2:-500}" --seconds "${3:-10}"
