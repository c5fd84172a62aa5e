#!/usr/bin/env bash
# boomerang: `make bench`. Measures the primary's write throughput and latency
# with group commit on and off, the cost of capture, and then (through
# tests/bench/replication.sh) replication lag, fan-out, apply throughput and
# catch-up.
#
# For each mode it starts bin/boomerang-primary on a fresh database in a temp
# dir (ephemeral loopback port, parsed from its "listening on HOST:PORT" log
# line), creates the bench table, and runs boomerang-bench-primary with 1, 16
# and 64 clients, BENCH_RUNS times each for BENCH_SECONDS, keeping the median
# of each figure. It prints a markdown table and the batched/unbatched
# throughput ratio at the highest client count. Every step is bounded in time.
#
# Environment: BOOMERANG_BIN (default ./bin), BENCH_SECONDS (5), BENCH_RUNS (3),
# BENCH_CLIENTS ("1 16 64"), BENCH_ROW_BYTES (100), BENCH_REPLICATION (1; 0
# skips the replication part; its own variables are in replication.sh),
# BENCH_PROXY (1; 0 skips the sidecar's part, tests/bench/proxy.sh).
set -u

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${BOOMERANG_BIN:-$root/bin}
seconds=${BENCH_SECONDS:-5}
runs=${BENCH_RUNS:-3}
clients_list=${BENCH_CLIENTS:-1 16 64}
row_bytes=${BENCH_ROW_BYTES:-100}
primary=$bin/boomerang-primary
bench=$bin/boomerang-bench-primary

for b in "$primary" "$bench"; do
    if [ ! -x "$b" ]; then
        echo "bench: $b not found; run 'make' first" >&2
        exit 1
    fi
done

# On the working disk (the repo's build directory), not a tmpfs: fsync is the point.
build=${BENCH_BUILD:-build}
mkdir -p "$root/$build"
dir=$(mktemp -d "$root/$build/bench.XXXXXX")
pid=""
failed=0

stop_primary() {
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null
    # give it 10 s to drain, then force
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    pid=""
}

# shellcheck disable=SC2317 # called from the trap
cleanup() {
    stop_primary
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_primary LOG [FLAGS...]: start it and set $port. Returns 1 on failure.
start_primary() {
    local log=$1
    shift
    "$primary" --db "$dir/bench.db" --listen 127.0.0.1:0 "$@" 2>"$log" &
    pid=$!
    port=""
    for _ in $(seq 100); do
        port=$(sed -n 's/.*listening on [^ ]*:\([0-9][0-9]*\) (h2c).*/\1/p' "$log" | head -1)
        [ -n "$port" ] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "bench: boomerang-primary did not start listening within 10 s:" >&2
    tail -20 "$log" >&2
    stop_primary
    return 1
}

# json_field JSON NAME: the number after "NAME":
json_field() {
    printf '%s\n' "$1" | sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p"
}

# median of the arguments (numbers)
median() {
    printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {
        if (NR == 0) { print "-"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# run_mode NAME [PRIMARY FLAGS...]: fills rows for this mode.
run_mode() {
    local mode=$1 log="$dir/primary-$1.log" n out r tps p50 p99
    shift
    rm -rf "$dir"/bench.db* # a fresh database (and replication log) per mode
    start_primary "$log" "$@" || return 1
    if ! timeout 30 "$bench" --url "http://127.0.0.1:$port" --setup; then
        echo "bench: creating the bench table failed" >&2
        stop_primary
        return 1
    fi
    for n in $clients_list; do
        tps=() p50=() p99=()
        for r in $(seq "$runs"); do
            if ! out=$(timeout $((seconds + 60)) "$bench" --url "http://127.0.0.1:$port" \
                --clients "$n" --duration "$seconds" --row-bytes "$row_bytes" --json); then
                echo "bench: $mode, $n clients, run $r: some calls failed" >&2
                failed=1
            fi
            [ -n "$out" ] || continue
            tps+=("$(json_field "$out" tps)")
            p50+=("$(json_field "$out" p50_us)")
            p99+=("$(json_field "$out" p99_us)")
        done
        rows+=("| $mode | $n | $(median "${tps[@]}") | $(median "${p50[@]}") | $(median "${p99[@]}") |")
        eval "tps_${mode}_$n=$(median "${tps[@]}")"
    done
    stop_primary
}

rows=()
echo "bench: group commit on and off; ${seconds}s per run, median of $runs runs, ${row_bytes}-byte rows" >&2
run_mode batched || exit 1
run_mode unbatched --no-group-commit || exit 1

echo
echo "| group commit | clients | tx/s | p50 µs | p99 µs |"
echo "|---|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
last=${clients_list##* }
on=$(eval echo "\${tps_batched_$last:-}")
off=$(eval echo "\${tps_unbatched_$last:-}")
if [ -n "$on" ] && [ -n "$off" ] && [ "$off" != "-" ] && [ "$on" != "-" ]; then
    echo
    awk -v on="$on" -v off="$off" -v n="$last" \
        'BEGIN { if (off > 0) printf "batched/unbatched throughput at %d clients: %.2fx\n", n, on / off }'
fi

# Capture cost: the same single-row commits with and without capture.
capture_bench=$root/$build/bench/bench_capture
if [ -x "$capture_bench" ]; then
    echo
    echo "capture + log cost per commit (median of 5 alternating rounds, synchronous=FULL):"
    echo
    echo "| directory | commits | SQLite commit alone µs | with capture µs | capture µs |"
    echo "|---|---:|---:|---:|---:|"
    timeout 300 "$capture_bench" "$dir" 3000 || failed=1
    if [ -d /dev/shm ]; then
        shm=$(mktemp -d /dev/shm/boomerang-bench.XXXXXX)
        timeout 300 "$capture_bench" "$shm" 3000 || failed=1
        rm -rf "$shm"
    fi
fi

# Replication: lag, fan-out, apply throughput, catch-up (its own driver; it
# reads the same environment). BENCH_REPLICATION=0 skips it.
if [ "${BENCH_REPLICATION:-1}" = 1 ]; then
    echo
    timeout 3600 "$root/tests/bench/replication.sh" || failed=1
fi

# The sidecar: local reads against nginx, write-ack latency, PostgreSQL +
# pgpool-II (its own driver; BENCH_PROXY=0 skips it).
if [ "${BENCH_PROXY:-1}" = 1 ]; then
    echo
    timeout 3600 "$root/tests/bench/proxy.sh" || failed=1
fi

# Regions (issue 5): write-ack and visibility lag at 0..80 ms one way, on the
# region test's topology (its own driver; BENCH_REGIONS=0 skips it).
if [ "${BENCH_REGIONS:-1}" = 1 ]; then
    echo
    timeout 3600 "$root/tests/bench/regions.sh" || failed=1
fi
exit $failed
