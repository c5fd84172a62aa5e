#!/usr/bin/env bash
# `make demo`: a primary on the embedded demo database (demo/seed.sql) in
# ./demo-data, listening on 127.0.0.1:5001, and a sidecar in front of it on
# 127.0.0.1:8080 (replica in demo-data/replica.db). Point @libsql/client at
# http://127.0.0.1:8080. Ctrl-C stops both cleanly.
#
# Environment: DEMO_PRIMARY (127.0.0.1:5001), DEMO_PROXY (127.0.0.1:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
primary_addr=${DEMO_PRIMARY:-127.0.0.1:5001}
proxy_addr=${DEMO_PROXY:-127.0.0.1:8080}
mkdir -p demo-data

bin/boomerang-primary --db demo-data/demo.db --listen "$primary_addr" --init-sql demo/seed.sql &
primary_pid=$!
stop() {
    kill "$primary_pid" 2>/dev/null || true
    wait "$primary_pid" 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

echo "demo: primary on $primary_addr serving demo-data/demo.db"
echo "demo: sidecar on http://$proxy_addr (try: curl -s http://$proxy_addr/v1/status)"
echo "demo: Ctrl-C stops both"
bin/boomerang-proxy --primary "http://$primary_addr" --replica demo-data/replica.db \
    --listen "$proxy_addr" "$@"
