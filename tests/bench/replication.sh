#!/usr/bin/env bash
# boomerang: the replication benchmarks of `make bench` (called by run.sh).
#
#   1. lag       a fresh boomerang-primary; bench_replica --mode live (follow +
#                apply in process) waits until LIVE; boomerang-bench-primary
#                --rate 1000 writes open loop for BENCH_LAG_SECONDS; the replica
#                records, per transaction, its COMMIT time minus the primary's
#                commit time (TxnChunk.commit_time_us; one machine, one clock).
#   2. fan-out   BENCH_FANOUT real boomerang-replica processes (each its own
#                file, --listen for /metrics) follow one primary; the same
#                open-loop load runs for BENCH_FANOUT_SECONDS, first with no
#                replica (baseline), then with all of them. Lag comes from each
#                replica's boomerang_replica_apply_lag_seconds histogram (the
#                difference of two scrapes around the load); the primary's CPU
#                from /proc/PID/stat (utime + stime over the run, % of one
#                core) and its memory from /proc/PID/status (VmRSS, VmHWM).
#   3. apply     a replica synced at the start, then BENCH_APPLY_MB MiB of
#                multi-page transactions (8 clients x 4 rows of 16 KiB per
#                Execute, which group commit batches); bench_replica --mode
#                catchup on a copy of the synced replica: pages applied / time.
#   4. catch-up  the same with BENCH_CATCHUP_MB MiB of large blobs (16 rows of
#                1 MiB per Execute); the replica is BENCH_CATCHUP_MB behind and
#                streams from the log (--log-retain-mb 1024); then a new
#                replica of the same database, which gets a snapshot.
# Each measurement runs BENCH_RUNS times and the median is reported. The
# phases that write hundreds of MiB come last, so their writeback does not
# disturb the latency phases.
#
# Every process is started here, tracked by PID and stopped by PID; every wait
# is bounded; all files live in a temp dir under the build directory (the
# working disk, not a tmpfs), removed at exit.
#
# Environment: BOOMERANG_BIN (./bin), BENCH_BUILD (build), BENCH_RUNS (3),
# BENCH_RATE (1000), BENCH_LAG_SECONDS (10), BENCH_FANOUT (32),
# BENCH_FANOUT_SECONDS (10), BENCH_APPLY_MB (64), BENCH_CATCHUP_MB (256),
# BENCH_PHASES ("lag fanout apply catchup"), BENCH_CHECKPOINT_DIAG (1: also
# measure apply and catch-up with the replica's checkpoints deferred
# (--checkpoint-pages 4000000000), to show what the in-loop checkpoints cost;
# 0: only the default settings), BENCH_REPLICA_FLAGS (extra flags for the
# fan-out's boomerang-replica processes, e.g. "--checkpoint-pages 4000000000"),
# BENCH_SYNC (1: run sync(1) before each catch-up run, so that the writeback
# of the backlog the primary just wrote, and of the previous run's files, does
# not land in this run's checkpoint fsyncs; 0: no sync, as before 2026-11-21).
set -u

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${BOOMERANG_BIN:-$root/bin}
build=${BENCH_BUILD:-build}
runs=${BENCH_RUNS:-3}
rate=${BENCH_RATE:-1000}
lag_seconds=${BENCH_LAG_SECONDS:-10}
fanout=${BENCH_FANOUT:-32}
fanout_seconds=${BENCH_FANOUT_SECONDS:-10}
apply_mb=${BENCH_APPLY_MB:-64}
catchup_mb=${BENCH_CATCHUP_MB:-256}
phases=${BENCH_PHASES:-lag fanout apply catchup}
diag=${BENCH_CHECKPOINT_DIAG:-1}
sync_runs=${BENCH_SYNC:-1}
read -r -a replica_flags <<<"${BENCH_REPLICA_FLAGS:-}"
no_checkpoint=4000000000 # --checkpoint-pages: no checkpoint within a run

primary=$bin/boomerang-primary
replica=$bin/boomerang-replica
load=$bin/boomerang-bench-primary
brep=$root/$build/bench/bench_replica

for b in "$primary" "$replica" "$load" "$brep"; do
    if [ ! -x "$b" ]; then
        echo "bench: $b not found; run 'make bench' (it builds it)" >&2
        exit 1
    fi
done

mkdir -p "$root/$build"
dir=$(mktemp -d "$root/$build/bench-repl.XXXXXX")
pids=()     # every process started here and not yet stopped
ppid=""     # the primary
url=""      # http://127.0.0.1:PORT of the primary
failed=0
tck=$(getconf CLK_TCK)

log() { echo "bench: $*" >&2; }

# forget PID...: drop from pids (after a successful wait: never signal a reaped PID)
forget() {
    local keep=() q p
    for q in "${pids[@]}"; do
        for p in "$@"; do [ "$q" = "$p" ] && continue 2; done
        keep+=("$q")
    done
    pids=("${keep[@]}")
}

# stop PID...: SIGTERM, up to 10 s to exit, then SIGKILL; forget them.
stop_pids() {
    local p _ alive
    [ $# -gt 0 ] || return 0
    kill "$@" 2>/dev/null
    for _ in $(seq 100); do
        alive=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in "$@"; do
        kill -9 "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    forget "$@"
}

# shellcheck disable=SC2317 # called from the trap
cleanup() {
    [ ${#pids[@]} -gt 0 ] && stop_pids "${pids[@]}"
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_log FILE REGEX PID: until a line of FILE matches (prints the first
# match's first group), at most 10 s, or PID died. Returns 1 on failure.
wait_log() {
    local file=$1 re=$2 pid=$3 v _
    for _ in $(seq 200); do
        v=$(sed -n "s/$re/\\1/p" "$file" 2>/dev/null | head -1)
        if [ -n "$v" ]; then
            echo "$v"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    return 1
}

# start_primary DIR: a fresh primary on DIR/p.db; sets ppid and url.
start_primary() {
    local d=$1 port
    mkdir -p "$d"
    "$primary" --db "$d/p.db" --listen 127.0.0.1:0 --log-retain-mb 1024 2>"$d/primary.log" &
    ppid=$!
    pids+=("$ppid")
    if ! port=$(wait_log "$d/primary.log" '.*listening on [^ ]*:\([0-9][0-9]*\) (h2c).*' "$ppid"); then
        log "boomerang-primary did not start:"
        tail -5 "$d/primary.log" >&2
        return 1
    fi
    url=http://127.0.0.1:$port
    timeout 30 "$load" --url "$url" --setup || return 1
}

stop_primary() {
    [ -n "$ppid" ] && stop_pids "$ppid"
    ppid=""
}

# json_field JSON NAME: the number after "NAME":
json_field() {
    printf '%s\n' "$1" | sed -n "s/.*\"$2\":\(-\{0,1\}[0-9.]*\).*/\1/p"
}

# median of the arguments (numbers)
median() {
    printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {
        if (NR == 0) { print "-"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# fmt N: rounded, with thousands separators ("-" stays "-")
fmt() {
    case $1 in
    '' | -) echo - ;;
    *) printf '%.0f\n' "$1" | sed ':a; s/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/; ta' ;;
    esac
}

# copy_replica FROM TO: the replica file, its -wal/-shm and its state dir
# (the copy has the same content, so apply_open finds the same position).
copy_replica() {
    local f
    rm -rf "$2" "$2"-*
    for f in "$1" "$1"-*; do
        [ -e "$f" ] && cp -r "$f" "$2${f#"$1"}"
    done
}

# ---- 1. lag ----------------------------------------------------------------------

# Lag results: lagres[VARIANT.FIELD] = space-separated values, one per run.
declare -A lagres

# lag_run VARIANT [bench_replica flags]: one run on a new replica.
lag_run() {
    local v=$1 d=$dir/lag out w rp f
    shift
    rm -rf "$d/r.db" "$d"/r.db-*
    "$brep" --primary "$url" --replica "$d/r.db" --mode live --json \
        --max-seconds $((lag_seconds + 60)) "$@" >"$d/lag.json" 2>"$d/lag.err" &
    rp=$!
    pids+=("$rp")
    if ! wait_log "$d/lag.err" '\(bench_replica: live\).*' "$rp" >/dev/null; then
        log "lag: bench_replica did not go live"
        cat "$d/lag.err" >&2
        stop_pids "$rp"
        failed=1
        return
    fi
    w=$(timeout $((lag_seconds + 60)) "$load" --url "$url" --rate "$rate" \
        --duration "$lag_seconds" --json) || failed=1
    if ! wait "$rp"; then
        log "lag: bench_replica failed:"
        cat "$d/lag.err" >&2
        failed=1
    fi
    forget "$rp"
    out=$(cat "$d/lag.json")
    log "lag ($v): replica $out; writer $w"
    [ -n "$out" ] || return
    for f in txns p50_us p99_us max_us; do
        lagres[$v.$f]+=" $(json_field "$out" $f)"
    done
    lagres[$v.wp99]+=" $(json_field "$w" p99_us)"
    lagres[$v.late]+=" $(json_field "$w" late_max_us)"
}

# lag_row VARIANT LABEL
lag_row() {
    local f line="| $2 |"
    for f in txns p50_us p99_us max_us wp99 late; do
        # shellcheck disable=SC2086 # split the list of values
        line="$line $(fmt "$(median ${lagres[$1.$f]:-})") |"
    done
    # shellcheck disable=SC2086
    echo "$line $(printf '%s\n' ${lagres[$1.p99_us]:-} | sort -g | sed -n '1p;$p' | paste -sd-) |"
}

phase_lag() {
    local r
    start_primary "$dir/lag" || return 1
    log "lag: $runs runs of ${lag_seconds}s at $rate writes/s, one in-process replica"
    for r in $(seq "$runs"); do
        lag_run def
    done
    stop_primary
    rm -rf "$dir/lag"
    echo
    echo "replication lag, primary commit to replica commit, $rate writes/s open loop for" \
        "${lag_seconds}s, median of $runs runs:"
    echo
    echo "| replica | transactions | lag p50 µs | lag p99 µs | lag max µs |" \
        "write p99 µs (client) | calls issued late, max µs | p99 range over runs µs |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    lag_row def "in-process (follow + apply)"
}

# ---- 2. fan-out --------------------------------------------------------------------

# proc_cpu_ticks PID...: utime + stime summed (clock ticks)
proc_cpu_ticks() {
    local p s=0 f
    for p in "$@"; do
        # the comm field may hold spaces: count from the last ')'
        f=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        s=$((s + $(echo "$f" | awk '{print $12 + $13}')))
    done
    echo $s
}

# mib KB: kB as MiB with one decimal
mib() {
    awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'
}

# proc_kb PID FIELD: VmRSS / VmHWM in kB
proc_kb() {
    awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"
}

# lag_quantiles BEFORE AFTER...: pairs of /metrics scrapes (before_i after_i,
# interleaved); prints "p50 p99 worst_p99 max_bucket count" in µs from the
# bucket differences, interpolated linearly within a bucket as Prometheus'
# histogram_quantile does; max_bucket is the upper bound of the highest
# bucket that received anything.
lag_quantiles() {
    awk '
    # q: quantile phi of cumulative counts cnt[1..nb] with upper bounds ub[]
    function q(cnt, nb, phi,   rank, i, prev, lo) {
        if (cnt[nb] == 0) return 0
        rank = phi * cnt[nb]; prev = 0; lo = 0
        for (i = 1; i <= nb; i++) {
            if (cnt[i] >= rank) {
                if (ub[i] == "+Inf") return lo
                return lo + (ub[i] - lo) * (rank - prev) / (cnt[i] - prev)
            }
            prev = cnt[i]; lo = ub[i]
        }
        return lo
    }
    FNR == 1 { nf++; nb = 0 }
    /^boomerang_replica_apply_lag_seconds_bucket/ {
        le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le)
        ub[++nb] = le; v[nf, nb] = $2
    }
    END {
        worst = 0; maxb = 0
        for (r = 1; r < nf; r += 2) {
            for (i = 1; i <= nb; i++) { c[i] = v[r + 1, i] - v[r, i]; all[i] += c[i] }
            p = q(c, nb, 0.99); if (p > worst) worst = p
            for (i = 1; i <= nb; i++)
                if (c[i] > (i > 1 ? c[i - 1] : 0) && (ub[i] == "+Inf" ? 1e9 : ub[i]) > maxb)
                    maxb = ub[i] == "+Inf" ? 1e9 : ub[i]
        }
        printf "%.0f %.0f %.0f %.0f %d\n", q(all, nb, 0.50) * 1e6, q(all, nb, 0.99) * 1e6,
            worst * 1e6, maxb * 1e6, all[nb]
    }' "$@"
}

# scrape_all TAG: GET /metrics of every replica into $fd/TAG.<i>
scrape_all() {
    local i
    for i in $(seq "$fanout"); do
        curl -sf --max-time 5 "http://127.0.0.1:${mports[$i]}/metrics" >"$fd/$1.$i" || return 1
    done
}

# all_live: every replica LIVE with lag_txids 0 (1 if not)
all_live() {
    local i st
    for i in $(seq "$fanout"); do
        st=$(curl -sf --max-time 5 "http://127.0.0.1:${mports[$i]}/v1/status") || return 1
        case $st in *'"state":"LIVE"'*'"lag_txids":0,'*) ;; *) return 1 ;; esac
    done
    return 0
}

# wait_all_live SECONDS
wait_all_live() {
    local _
    for _ in $(seq $(($1 * 10))); do
        all_live && return 0
        sleep 0.1
    done
    return 1
}

# fanout_load: run the load; sets cpu_pct (primary), rcpu_pct (replicas),
# wtps, drain_s. Measures from just before the load to the moment every
# replica has caught up.
fanout_load() {
    local c0 c1 rc0 rc1 t0 t1 tl w
    c0=$(proc_cpu_ticks "$ppid")
    rc0=$(proc_cpu_ticks "${rpids[@]}")
    t0=$(date +%s.%N)
    w=$(timeout $((fanout_seconds + 60)) "$load" --url "$url" --rate "$rate" \
        --duration "$fanout_seconds" --json) || failed=1
    tl=$(date +%s.%N)
    if [ ${#rpids[@]} -gt 0 ] && ! wait_all_live 60; then
        log "fan-out: replicas did not catch up within 60 s"
        failed=1
    fi
    t1=$(date +%s.%N)
    c1=$(proc_cpu_ticks "$ppid")
    rc1=$(proc_cpu_ticks "${rpids[@]}")
    cpu_pct=$(awk -v a="$c0" -v b="$c1" -v t0="$t0" -v t1="$t1" -v hz="$tck" \
        'BEGIN { printf "%.1f", (b - a) / hz / (t1 - t0) * 100 }')
    rcpu_pct=$(awk -v a="$rc0" -v b="$rc1" -v t0="$t0" -v t1="$t1" -v hz="$tck" \
        'BEGIN { printf "%.1f", (b - a) / hz / (t1 - t0) * 100 }')
    drain_s=$(awk -v a="$tl" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    wtps=$(json_field "$w" tps)
    log "fan-out load (${#rpids[@]} replicas): writer $w; primary CPU $cpu_pct%," \
        "replicas $rcpu_pct%, drain ${drain_s}s"
}

# start_replicas: BENCH_FANOUT boomerang-replica processes; sets rpids, mports.
start_replicas() {
    local i p mp
    rpids=() mports=()
    for i in $(seq "$fanout"); do
        "$replica" --primary "$url" --replica "$fd/r$i.db" --listen 127.0.0.1:0 \
            --log-level info "${replica_flags[@]}" 2>"$fd/r$i.log" &
        p=$!
        pids+=("$p")
        rpids+=("$p")
    done
    for i in $(seq "$fanout"); do
        if ! mp=$(wait_log "$fd/r$i.log" '.*listening on [^ ]*:\([0-9][0-9]*\) (http).*' \
            "${rpids[$((i - 1))]}"); then
            log "fan-out: replica $i did not start:"
            tail -5 "$fd/r$i.log" >&2
            return 1
        fi
        mports[i]=$mp
    done
    wait_all_live 60 || { log "fan-out: replicas did not go live within 60 s"; return 1; }
}

phase_fanout() {
    local r base=() cpu=() rcpu=() rss=() hwm=() rss0=() rss1=() p50=() p99=() worst=() maxb=()
    local tps=()
    local drain=() q
    log "fan-out: $runs runs, $fanout replicas, $rate writes/s for ${fanout_seconds}s"
    for r in $(seq "$runs"); do
        fd=$dir/fanout$r
        start_primary "$fd" || return 1
        rpids=()
        fanout_load # baseline: no replica
        base+=("$cpu_pct")
        rss0+=("$(proc_kb "$ppid" VmRSS)")
        if ! start_replicas; then
            failed=1
            stop_pids "${rpids[@]}"
            stop_primary
            continue
        fi
        rss1+=("$(proc_kb "$ppid" VmRSS)")
        scrape_all before || failed=1
        fanout_load
        scrape_all after || failed=1
        cpu+=("$cpu_pct")
        rcpu+=("$rcpu_pct")
        tps+=("$wtps")
        drain+=("$drain_s")
        rss+=("$(proc_kb "$ppid" VmRSS)")
        hwm+=("$(proc_kb "$ppid" VmHWM)")
        local files=() i
        for i in $(seq "$fanout"); do files+=("$fd/before.$i" "$fd/after.$i"); done
        read -r -a q <<<"$(lag_quantiles "${files[@]}")"
        log "fan-out run $r: lag p50 ${q[0]} µs, p99 ${q[1]} µs, worst replica p99 ${q[2]} µs," \
            "max bucket ${q[3]} µs, ${q[4]} transactions applied in all"
        p50+=("${q[0]}")
        p99+=("${q[1]}")
        worst+=("${q[2]}")
        maxb+=("${q[3]}")
        stop_pids "${rpids[@]}"
        stop_primary
        rm -rf "$fd"
    done
    echo
    echo "fan-out: $fanout boomerang-replica processes, $rate writes/s open loop for" \
        "${fanout_seconds}s, median of $runs runs:"
    echo
    echo "| replicas | writes/s | lag p50 µs | lag p99 µs | worst replica p99 µs |" \
        "lag max ≤ µs | catch-up after load s | primary CPU % | CPU % with 0 replicas |" \
        "replicas' CPU % (sum) | primary VmRSS MiB: no replica | after their snapshots |" \
        "after the load | VmHWM |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    echo "| $fanout | $(fmt "$(median "${tps[@]}")") | $(fmt "$(median "${p50[@]}")") |" \
        "$(fmt "$(median "${p99[@]}")") | $(fmt "$(median "${worst[@]}")") |" \
        "$(fmt "$(median "${maxb[@]}")") | $(median "${drain[@]}") | $(median "${cpu[@]}") |" \
        "$(median "${base[@]}") | $(median "${rcpu[@]}") | $(mib "$(median "${rss0[@]}")") |" \
        "$(mib "$(median "${rss1[@]}")") | $(mib "$(median "${rss[@]}")") |" \
        "$(mib "$(median "${hwm[@]}")") |"
}

# ---- 3, 4. apply throughput, catch-up, snapshot --------------------------------------

# backlog DIR MIB KIND: a primary with a replica synced at the start (DIR/r0.db)
# and then MIB MiB written: KIND "multi" (8 clients, 4 x 16 KiB rows per
# Execute) or "blob" (2 clients, 16 x 1 MiB rows per Execute).
backlog() {
    local d=$1 mib=$2 kind=$3 out sql rows bytes clients t0 t1
    start_primary "$d" || return 1
    if ! out=$(timeout 60 "$brep" --primary "$url" --replica "$d/r0.db" --mode catchup \
        --json 2>"$d/r0.err"); then
        log "syncing the first replica failed:"
        cat "$d/r0.err" >&2
        return 1
    fi
    if [ "$kind" = multi ]; then rows=4 bytes=16384 clients=8; else rows=16 bytes=1048576 clients=2; fi
    sql="WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $rows)"
    sql="$sql INSERT INTO bench(v) SELECT randomblob(?) FROM c"
    t0=$(date +%s.%N)
    if ! out=$(timeout 600 "$load" --url "$url" --sql "$sql" --row-bytes "$bytes" \
        --clients "$clients" --count $((mib * 1048576 / (rows * bytes))) --timeout 120 --json); then
        log "writing the backlog failed"
        return 1
    fi
    t1=$(date +%s.%N)
    log "backlog: $mib MiB ($kind) written in $(awk -v a="$t0" -v b="$t1" \
        'BEGIN { printf "%.1f", b - a }') s: $out"
}

# catchup_runs DIR FROM [bench_replica flags]: RUNS x bench_replica --mode
# catchup on a copy of FROM (or, with FROM "", on a new replica); fills the
# cu_* arrays.
catchup_runs() {
    local d=$1 from=$2 r out c0 c1
    shift 2
    cu_pages=() cu_pps=() cu_mibps=() cu_secs=() cu_txns=() cu_cpu=() cu_pcpu=()
    for r in $(seq "$runs"); do
        rm -rf "$d/c.db" "$d"/c.db-*
        [ -n "$from" ] && copy_replica "$from" "$d/c.db"
        [ "$sync_runs" = 1 ] && sync
        c0=$(proc_cpu_ticks "$ppid")
        if ! out=$(timeout 600 "$brep" --primary "$url" --replica "$d/c.db" --mode catchup \
            --max-seconds 590 --json "$@" 2>"$d/c.err"); then
            log "catch-up run $r failed:"
            cat "$d/c.err" >&2
            failed=1
            continue
        fi
        c1=$(proc_cpu_ticks "$ppid")
        log "catch-up run $r ($*): $out"
        if [ -n "$from" ] && [ "$(json_field "$out" snapshot_pages)" != 0 ]; then
            log "catch-up run $r got a snapshot instead of the log"
            failed=1
        fi
        cu_secs+=("$(json_field "$out" seconds)")
        cu_pages+=("$(json_field "$out" pages)")
        cu_txns+=("$(json_field "$out" txns)")
        cu_pps+=("$(json_field "$out" pages_per_s)")
        cu_mibps+=("$(json_field "$out" mib_per_s)")
        cu_cpu+=("$(json_field "$out" cpu_s)")
        cu_pcpu+=("$(awk -v a="$c0" -v b="$c1" -v hz="$tck" 'BEGIN { printf "%.2f", (b - a) / hz }')")
    done
    rm -rf "$d/c.db" "$d"/c.db-*
}

catchup_row() {
    echo "| $1 | $(fmt "$(median "${cu_txns[@]}")") | $(fmt "$(median "${cu_pages[@]}")") |" \
        "$(median "${cu_secs[@]}") | $(fmt "$(median "${cu_pps[@]}")") |" \
        "$(median "${cu_mibps[@]}") | $(printf '%s\n' "${cu_mibps[@]}" | sort -g | tail -1) |" \
        "$(median "${cu_cpu[@]}") | $(median "${cu_pcpu[@]}") |"
}

catchup_header() {
    echo
    echo "$1, median of $runs runs (4 KiB pages; MiB = 2^20 bytes of page data; CPU ="
    echo "user + system seconds during the run):"
    echo
    echo "| replica | transactions | pages | seconds | pages/s | MiB/s | best run MiB/s |" \
        "replica CPU s | primary CPU s |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
}

phase_apply() {
    local d=$dir/apply label
    log "apply: a replica $apply_mb MiB behind, multi-page transactions"
    backlog "$d" "$apply_mb" multi || { stop_primary; return 1; }
    label="$apply_mb MiB behind, from the log"
    catchup_runs "$d" "$d/r0.db"
    local rows=("$(catchup_row "$label")")
    if [ "$diag" = 1 ]; then
        catchup_runs "$d" "$d/r0.db" --checkpoint-pages "$no_checkpoint"
        rows+=("$(catchup_row "$label, checkpoints deferred (diagnostic)")")
    fi
    stop_primary
    catchup_header "apply throughput: a replica $apply_mb MiB of multi-page transactions behind"
    printf '%s\n' "${rows[@]}"
    rm -rf "$d"
}

phase_catchup() {
    local d=$dir/catchup label
    log "catch-up: a replica $catchup_mb MiB behind (1 MiB blobs), then a new replica"
    backlog "$d" "$catchup_mb" blob || { stop_primary; return 1; }
    label="$catchup_mb MiB behind, from the log"
    catchup_runs "$d" "$d/r0.db"
    local rows=("$(catchup_row "$label")")
    if [ "$diag" = 1 ]; then
        catchup_runs "$d" "$d/r0.db" --checkpoint-pages "$no_checkpoint"
        rows+=("$(catchup_row "$label, checkpoints deferred (diagnostic)")")
    fi
    catchup_runs "$d" ""
    rows+=("$(catchup_row "new replica: snapshot of the same database")")
    stop_primary
    catchup_header "catch-up: a replica $catchup_mb MiB of large blobs behind, and a new one"
    printf '%s\n' "${rows[@]}"
    rm -rf "$d"
}

for ph in $phases; do
    case $ph in
    lag) phase_lag || failed=1 ;;
    fanout) phase_fanout || failed=1 ;;
    apply) phase_apply || failed=1 ;;
    catchup) phase_catchup || failed=1 ;;
    *)
        log "unknown phase '$ph'"
        failed=1
        ;;
    esac
done
exit $failed
