#!/usr/bin/env bash
# `make demo`: start a primary on the embedded demo database (demo/seed.sql)
# in ./demo-data, listening on 127.0.0.1:5001. Ctrl-C stops it cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p demo-data
echo "demo: primary on 127.0.0.1:5001 serving demo-data/demo.db (Ctrl-C to stop)"
exec bin/boomerang-primary --db demo-data/demo.db --listen 127.0.0.1:5001 \
    --init-sql demo/seed.sql "$@"
