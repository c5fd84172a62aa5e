#!/usr/bin/env bash
# boomerang: `make test-regions`. Three regions (P: the primary; A and B: a
# sidecar and its app each) with one-way delays of 40 ms (A) and 80 ms (B)
# between the sidecars and the primary, given by bin/relay; then three bounded
# scenarios under load (steady, a 10 s partition of B, a sidecar killed and
# restarted), checked against the bench's JSON report. Prints a table of checks
# and writes the figures to tests/regions/out/regions.json.
#
# Mode: network namespaces (tests/regions/netns.sh: one per region on a bridge
# in a namespace of its own, 10.77.0.0/24) when this runs as root and the kernel
# allows it; otherwise loopback with the same relays. REGIONS_MODE=netns|loopback
# forces one. The namespaces are named bmr-<this PID>-*, removed on exit by the
# trap, and stale ones of earlier runs (their PID gone) are swept first.
#
# Environment: BOOMERANG_BIN (default ./bin), REGIONS_MODE, REGIONS_OUT (default
# tests/regions/out), REGIONS_QUICK=1 (shorter runs), and the driver's variables
# (tests/regions/regions.mjs: REGIONS_LOAD, REGIONS_SCENARIOS, REGIONS_RATE).
set -u

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export BOOMERANG_BIN=${BOOMERANG_BIN:-$root/bin}
out=${REGIONS_OUT:-$here/out}
id=$$
mode=${REGIONS_MODE:-auto}
quick=()
[ "${REGIONS_QUICK:-0}" = 1 ] && quick=(--quick)

for b in boomerang-primary boomerang-proxy relay; do
    if [ ! -x "$BOOMERANG_BIN/$b" ]; then
        echo "regions: $BOOMERANG_BIN/$b not found; run 'make' first" >&2
        exit 1
    fi
done
command -v node >/dev/null || { echo "regions: node not found" >&2; exit 1; }

if [ "$mode" = auto ]; then
    if "$here/netns.sh" check 2>/dev/null; then mode=netns; else mode=loopback; fi
fi

driver=""
# shellcheck disable=SC2317 # called from the traps
cleanup() {
    if [ -n "$driver" ] && kill -0 "$driver" 2>/dev/null; then
        kill -TERM "$driver" 2>/dev/null # the driver stops its processes by PID
        wait "$driver" 2>/dev/null
    fi
    [ "$mode" = netns ] && "$here/netns.sh" down "$id"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$out"
echo "regions: mode $mode (run $id)"
if [ "$mode" = netns ]; then
    "$here/netns.sh" sweep
    "$here/netns.sh" up "$id" || exit 1
    # The driver runs in region A: it is region A's app, and from there it
    # reaches every region's address; it starts the others' processes with
    # `ip netns exec`.
    set -- ip netns exec "bmr-$id-a" node "$here/regions.mjs" --mode netns
else
    set -- node "$here/regions.mjs" --mode loopback
fi
# In the background, so that a signal to this script runs the trap at once
# (bash runs traps only between commands, and `wait` is interruptible).
timeout 600 "$@" --id "$id" --out "$out" "${quick[@]}" &
driver=$!
wait "$driver"
rc=$?
driver=""
exit $rc
