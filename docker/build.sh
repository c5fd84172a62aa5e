#!/usr/bin/env bash
# The build steps of docker/Dockerfile's build stage, kept here so that the
# Dockerfile and tests/integration/docker.test.js run the very same commands.
#
#   docker/build.sh deps    Debian packages: scripts/deps.sh build (the one list
#                           of build dependencies), plus nodejs and npm when
#                           SQLite has to be fetched (scripts/fetch-sqlite.sh
#                           takes it from the npm registry)
#   docker/build.sh build   a clean `make all`, then the five shipped binaries
#                           installed, stripped, in $PREFIX/bin
#
# Run from the repository root. Environment:
#   SQLITE_SRC  a directory holding sqlite3.c and sqlite3.h (SQLite >= 3.51.3) to
#               build against instead of fetching; relative to the repository
#               root or absolute. Empty or unset: fetch the pinned 3.54.1.
#   JOBS        parallel make jobs (default: the number of CPUs)
#   PREFIX      where the binaries go (default /opt/boomerang: $PREFIX/bin)
#   OUT         make's object and binary directory (default build-docker);
#               removed first, so every build starts clean
set -euo pipefail
cd "$(dirname "$0")/.."

binaries="boomerang-primary boomerang-proxy boomerang-replica boomerang-bench relay"
SQLITE_SRC=${SQLITE_SRC:-}
JOBS=${JOBS:-$(nproc)}
PREFIX=${PREFIX:-/opt/boomerang}
OUT=${OUT:-build-docker}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

deps() {
    scripts/deps.sh build
    # npm is needed only to fetch SQLite; a given amalgamation needs no network.
    if [ -z "$SQLITE_SRC" ] && ! command -v npm >/dev/null; then
        echo "docker/build.sh: installing nodejs and npm to fetch SQLite"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            ca-certificates nodejs npm
    fi
}

build() {
    local sqlite_arg=() b
    if [ -n "$SQLITE_SRC" ]; then
        if [ ! -f "$SQLITE_SRC/sqlite3.c" ] || [ ! -f "$SQLITE_SRC/sqlite3.h" ]; then
            echo "docker/build.sh: SQLITE_SRC=$SQLITE_SRC holds no sqlite3.c and sqlite3.h" >&2
            exit 1
        fi
        sqlite_arg=("SQLITE_SRC=$SQLITE_SRC")
    fi
    rm -rf "$OUT"
    make -j"$JOBS" BUILD="$OUT" BIN="$OUT/bin" "${sqlite_arg[@]}" all
    mkdir -p "$PREFIX/bin"
    for b in $binaries; do
        # A binary the Makefile did not make (its sources missing) fails the build
        # here rather than as a missing file in the runtime image.
        if [ ! -x "$OUT/bin/$b" ]; then
            echo "docker/build.sh: make built no $OUT/bin/$b" >&2
            exit 1
        fi
        # Stripped: the debug info is three quarters of each file.
        install -s -m 0755 "$OUT/bin/$b" "$PREFIX/bin/$b"
    done
    echo "docker/build.sh: installed $binaries in $PREFIX/bin"
}

case "${1:-}" in
deps) deps ;;
build) build ;;
*)
    echo "usage: $0 deps|build" >&2
    exit 2
    ;;
esac
