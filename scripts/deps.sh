#!/usr/bin/env bash
# Installs everything boomerang needs on Debian 12: the -dev packages that the
# build links, the tools the tests drive, and the pinned Node test packages.
# It is idempotent and cheap when nothing is missing, so `make` and .ci/run
# both call it.
#
#   scripts/deps.sh build   compiler toolchain and libraries
#   scripts/deps.sh test    build + test tools (python grpcio, openssl CLI, iproute2 for the
#                           region test's namespaces, docker-compose to validate
#                           docker/compose.yaml) + npm ci
#   scripts/deps.sh bench   test + nginx and wrk
#   scripts/deps.sh dev     test + clang/libFuzzer, clang-format, valgrind
#   scripts/deps.sh docker  build + Debian's docker-compose (1.29), which
#                           tests/integration/docker.test.js uses to validate
#                           docker/compose.yaml (no Docker engine needed)
set -euo pipefail
cd "$(dirname "$0")/.."

build_pkgs="gcc make pkg-config libev-dev libnghttp2-dev libprotobuf-c-dev protobuf-c-compiler
  libssl-dev libjansson-dev libhttp-parser-dev libxxhash-dev"
test_pkgs="openssl python3 python3-grpcio python3-grpc-tools procps iproute2 docker-compose"
bench_pkgs="nginx-light wrk"
dev_pkgs="clang libclang-rt-14-dev clang-format valgrind"
docker_pkgs="docker-compose"

want=$build_pkgs
case "${1:-build}" in
build) ;;
test) want="$want $test_pkgs" ;;
bench) want="$want $test_pkgs $bench_pkgs" ;;
dev) want="$want $test_pkgs $dev_pkgs" ;;
docker) want="$want $docker_pkgs" ;;
*) echo "usage: $0 build|test|bench|dev|docker" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "deps: installing:$missing"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
fi

case "${1:-build}" in
test | bench | dev)
    # npm ci only when the lockfile changed since the last install.
    if [ ! -f node_modules/.package-lock.json ] || ! cmp -s package-lock.json node_modules/.boomerang-lock; then
        npm ci --no-audit --no-fund --loglevel=error
        cp package-lock.json node_modules/.boomerang-lock
    fi
    ;;
esac
