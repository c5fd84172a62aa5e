#!/usr/bin/env bash
# boomerang: the sidecar's benchmarks (issue 4), the last part of `make bench`
# (tests/bench/run.sh calls it; BENCH_PROXY=0 skips it).
#
#   1. reads   a fresh boomerang-primary; boomerang-proxy --threads T in front
#              (T in BENCH_PROXY_THREADS, one proxy each, own replica file);
#              kv(id INTEGER PRIMARY KEY, v TEXT) with BENCH_PROXY_ROWS rows,
#              created through a proxy (POST /v2/pipeline with curl); every
#              proxy waits until its applied_txid is the primary's head. Then
#              wrk -t2 -c16 -d8s --latency with tests/bench/proxy_read.lua (a
#              Hrana execute of SELECT v FROM kv WHERE id = ?, random id) against
#              each proxy, and against nginx with T workers (a temp config on
#              loopback) twice: the same script, which nginx answers with a static
#              `return 200` (same client work, the comparison the ratios use),
#              and plain GET of a 3-byte static file (as machine-floor.md measured
#              it, 1 worker 53.6k req/s). The three alternate, BENCH_RUNS times;
#              medians of req/s, p50, p99, and of the server processes' CPU
#              time per request (/proc/PID/stat utime + stime; nginx: master and
#              workers). wrk and the servers share the vCPUs.
#   2. writes  bin/relay --delay-ms BENCH_PROXY_DELAY_MS between a proxy and the
#              primary (both directions: the write and the replication stream
#              back); bench_proxy --mode write: BENCH_PROXY_WRITES single-row
#              INSERTs, one connection, closed loop, first as is (the answer
#              waits until the replica applied the commit), then with
#              Boomerang-Max-Wait-Ms: 0 (answered at primary commit; counts the
#              answers carrying Boomerang-Applied: 0). Alternating, BENCH_RUNS
#              times.
#   3. pg      PostgreSQL 15 + streaming standby + pgpool-II, from the peer
#              scripts in BENCH_PG_PEER (../shared/peers/pg: up.sh, down.sh,
#              pgryw.c), on their own free ports and in a temp dir, pgpool with
#              disable_load_balance_on_write=off (reads go to the standby) and
#              remote_apply for the read-your-writes write. Alternating with the
#              same measurement through a loopback proxy (no relay):
#              point reads with 1 and 16 connections (bench_proxy --mode read
#              vs pgryw read), INSERT latency (bench_proxy --mode write vs pgryw
#              write -S = remote_apply, and without -S = primary commit), and
#              pgryw ryw -S once (INSERT then SELECT through pgpool: misses).
#              If the peer can't start, says so and goes on.
#
# Every process is started here, tracked by PID and stopped by PID (the pg
# peer by its own down.sh, which uses its PID files); every wait is bounded;
# files live in a temp dir under the build directory, removed at exit.
#
# Environment: BOOMERANG_BIN (./bin), BENCH_BUILD (build), BENCH_RUNS (3),
# BENCH_PROXY_PHASES ("read write pg"), BENCH_PROXY_SECONDS (8),
# BENCH_PROXY_CONNS (16), BENCH_PROXY_WRK_THREADS (2), BENCH_PROXY_THREADS
# ("1 2"), BENCH_PROXY_ROWS (10000), BENCH_PROXY_WRITES (300),
# BENCH_PROXY_DELAY_MS (20), BENCH_PROXY_FLAGS (extra boomerang-proxy flags),
# BENCH_PG_PEER (../shared/peers/pg), BENCH_PG_SECONDS (5: each pg/loopback
# comparison step), BENCH_PG_WRITES (3000: loopback INSERTs per run).
set -u

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${BOOMERANG_BIN:-$root/bin}
build=${BENCH_BUILD:-build}
runs=${BENCH_RUNS:-3}
phases=${BENCH_PROXY_PHASES:-read write pg}
secs=${BENCH_PROXY_SECONDS:-8}
conns=${BENCH_PROXY_CONNS:-16}
wrk_threads=${BENCH_PROXY_WRK_THREADS:-2}
threads_list=${BENCH_PROXY_THREADS:-1 2}
rows=${BENCH_PROXY_ROWS:-10000}
writes=${BENCH_PROXY_WRITES:-300}
delay=${BENCH_PROXY_DELAY_MS:-20}
read -r -a proxy_flags <<<"${BENCH_PROXY_FLAGS:-}"
pg_peer=${BENCH_PG_PEER:-$root/../shared/peers/pg}
pg_secs=${BENCH_PG_SECONDS:-5}
pg_writes=${BENCH_PG_WRITES:-3000}

primary=$bin/boomerang-primary
proxy=$bin/boomerang-proxy
relay=$bin/relay
client=$root/$build/bench/bench_proxy
lua=$root/tests/bench/proxy_read.lua

log() { echo "bench: $*" >&2; }

for b in "$primary" "$proxy" "$relay" "$client"; do
    if [ ! -x "$b" ]; then
        log "$b not found; run 'make bench' (it builds it)"
        exit 1
    fi
done
for t in wrk nginx curl python3; do
    if ! command -v "$t" >/dev/null; then
        log "$t not found (scripts/deps.sh bench installs it)"
        exit 1
    fi
done

mkdir -p "$root/$build"
dir=$(mktemp -d "$root/$build/bench-proxy.XXXXXX")
chmod 711 "$dir" # nginx's workers (nobody) and PostgreSQL (postgres) look inside
pids=()          # every process started here and not yet stopped
url=""           # the primary, http://127.0.0.1:PORT
pg_up=0          # the pg peer was started (down.sh must run)
pg_note=""       # why the pg comparison is missing, if it is
failed=0
tck=$(getconf CLK_TCK)
declare -A res          # res[KEY.FIELD] = space-separated values, one per run
declare -A proxy_port   # by name
declare -A proxy_pid
declare -A nginx_port   # by worker count
nginx_pids=()           # the nginx masters
pg_ok=0                 # the pg peer is up and pgryw built

# forget PID...: drop from pids (after a successful wait: never signal a reaped PID)
forget() {
    local keep=() q p
    for q in "${pids[@]}"; do
        for p in "$@"; do [ "$q" = "$p" ] && continue 2; done
        keep+=("$q")
    done
    pids=("${keep[@]}")
}

# stop_pids PID...: SIGTERM, up to 10 s to exit, then SIGKILL; forget them.
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

pg_down() {
    [ $pg_up = 1 ] || return 0
    timeout 120 "$pg_peer/down.sh" >"$dir/pg-down.log" 2>&1 || log "pg down.sh failed"
    pg_up=0
}

# shellcheck disable=SC2317 # called from the trap
cleanup() {
    [ ${#pids[@]} -gt 0 ] && stop_pids "${pids[@]}"
    pg_down
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

# free_port: a loopback TCP port that was free a moment ago (for nginx and pg,
# which can't report an ephemeral one)
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# json_field JSON NAME: the number after "NAME":
json_field() {
    printf '%s\n' "$1" | sed -n "s/.*\"$2\":\(-\{0,1\}[0-9.]*\).*/\1/p"
}

# kv_field LINE NAME: the value of NAME=value in a RESULT line
kv_field() {
    printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1
}

# median of the arguments (numbers)
median() {
    printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {
        if (NR == 0) { print "-"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# med KEY.FIELD: the median of res[KEY.FIELD]
med() {
    # shellcheck disable=SC2086 # split the list of values
    median ${res[$1]:-}
}

# sum KEY.FIELD
sum() {
    # shellcheck disable=SC2086
    printf '%s\n' ${res[$1]:-} | awk '{s += $1} END {print s + 0}'
}

# fmt N: rounded, with thousands separators ("-" stays "-")
fmt() {
    case $1 in
    '' | -) echo - ;;
    *) printf '%.0f\n' "$1" | sed ':a; s/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/; ta' ;;
    esac
}

# ratio A B: A/B with two decimals ("-" if either is missing)
ratio() {
    case "$1 $2" in
    *-* | ' '* | *' ') echo - ;;
    *) awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f\n", a / b; else print "-" }' ;;
    esac
}

# ---- servers ---------------------------------------------------------------------

start_primary() {
    local port
    "$primary" --db "$dir/p.db" --listen 127.0.0.1:0 2>"$dir/primary.log" &
    ppid=$!
    pids+=("$ppid")
    if ! port=$(wait_log "$dir/primary.log" '.*listening on [^ ]*:\([0-9][0-9]*\) (h2c).*' "$ppid"); then
        log "boomerang-primary did not start:"
        tail -5 "$dir/primary.log" >&2
        return 1
    fi
    url=http://127.0.0.1:$port
}

# primary_head: the primary's head txid (its /v1/status, HTTP/1.1 on --listen)
primary_head() {
    json_field "$(curl -sf --max-time 5 "$url/v1/status")" head_txid
}

# start_proxy NAME PRIMARY_URL THREADS: its own replica file; sets
# proxy_port[NAME] and proxy_pid[NAME].
start_proxy() {
    local name=$1 p port
    "$proxy" --primary "$2" --replica "$dir/$name.db" --listen 127.0.0.1:0 --threads "$3" \
        "${proxy_flags[@]}" 2>"$dir/$name.log" &
    p=$!
    pids+=("$p")
    proxy_pid[$name]=$p
    if ! port=$(wait_log "$dir/$name.log" \
        '.*listening on 127\.0\.0\.1:\([0-9][0-9]*\) (http).*' "$p"); then
        log "boomerang-proxy ($name) did not start:"
        tail -5 "$dir/$name.log" >&2
        return 1
    fi
    proxy_port[$name]=$port
}

stop_proxy() {
    stop_pids "${proxy_pid[$1]}"
    unset "proxy_pid[$1]" "proxy_port[$1]"
    rm -rf "$dir/$1.db" "$dir/$1.db"-* # -wal, -shm and the replica's state dir
}

# wait_applied NAME: until the proxy's /v1/status applied_txid reaches the
# primary's head (at most 60 s).
wait_applied() {
    local head st applied _
    head=$(primary_head)
    [ -n "$head" ] || { log "no head txid from the primary"; return 1; }
    for _ in $(seq 600); do
        st=$(curl -sf --max-time 5 "http://127.0.0.1:${proxy_port[$1]}/v1/status")
        applied=$(json_field "$st" applied_txid)
        if [ -n "$applied" ] && [ "$applied" -ge "$head" ]; then
            return 0
        fi
        sleep 0.1
    done
    log "proxy $1 did not reach the primary's head txid $head within 60 s: $st"
    return 1
}

# hrana NAME JSON: POST /v2/pipeline to proxy NAME; fails unless 200 with no
# per-request error. Prints the body.
hrana() {
    local code body
    code=$(curl -sS --max-time 60 -o "$dir/hrana.out" -w '%{http_code}' \
        -H 'Content-Type: application/json' --data-binary "$2" \
        "http://127.0.0.1:${proxy_port[$1]}/v2/pipeline") || return 1
    body=$(cat "$dir/hrana.out")
    case "$code $body" in
    200\ *'"error"'*) ;;
    '200 '*)
        printf '%s\n' "$body"
        return 0
        ;;
    esac
    log "pipeline through $1 answered $code: $(printf '%s' "$body" | head -c 300)"
    return 1
}

# setup_tables NAME: kv with $rows rows and the INSERT target w, through proxy NAME
setup_tables() {
    local ins="INSERT INTO kv(id, v) WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1"
    ins="$ins FROM c WHERE i < $rows) SELECT i, lower(hex(randomblob(16))) FROM c"
    hrana "$1" '{"requests":[
        {"type":"execute","stmt":{"sql":"CREATE TABLE kv(id INTEGER PRIMARY KEY, v TEXT)"}},
        {"type":"execute","stmt":{"sql":"CREATE TABLE w(id INTEGER PRIMARY KEY, v TEXT)"}},
        {"type":"execute","stmt":{"sql":"'"$ins"'"}},
        {"type":"close"}]}' >/dev/null
}

# check_read NAME: one point read answers the row
check_read() {
    local out
    out=$(hrana "$1" '{"requests":[{"type":"execute","stmt":{"sql":"SELECT v FROM kv WHERE id = ?",
        "args":[{"type":"integer","value":"'"$rows"'"}]}},{"type":"close"}]}') || return 1
    case $out in
    *'"rows":[['*) return 0 ;;
    esac
    log "a point read through $1 found no row: $out"
    return 1
}

# metric NAME PATTERN: the first sample of the proxy's /metrics matching PATTERN
metric() {
    curl -sf --max-time 5 "http://127.0.0.1:${proxy_port[$1]}/metrics" |
        grep -F "$2" | grep -v '^#' | awk '{print $2; exit}'
}

# start_nginx WORKERS: a temp config serving a 3-byte static file at / and a
# static `return 200` for POST /v2/pipeline; sets nginx_port[WORKERS].
start_nginx() {
    local w=$1 d=$dir/nginx$1 port p _
    mkdir -p "$d/html" "$d/tmp" "$d/logs"
    printf 'ok\n' >"$d/html/index.html"
    chmod -R a+rX "$d"
    port=$(free_port)
    cat >"$d/nginx.conf" <<EOF
worker_processes $w;
daemon off;
pid $d/nginx.pid;
error_log $d/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    default_type text/plain;
    keepalive_requests 10000000; # like the proxy: never close a busy keep-alive connection
    client_body_temp_path $d/tmp;
    server {
        listen 127.0.0.1:$port;
        root $d/html;
        location = /v2/pipeline { return 200 "ok\n"; }
    }
}
EOF
    nginx -p "$d/" -c "$d/nginx.conf" -e "$d/logs/error.log" 2>"$d/logs/stderr" &
    p=$!
    pids+=("$p")
    nginx_pids+=("$p")
    for _ in $(seq 100); do
        if curl -sf --max-time 1 -o /dev/null "http://127.0.0.1:$port/"; then
            nginx_port[$w]=$port
            return 0
        fi
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    log "nginx ($w workers) did not start:"
    cat "$d/logs/stderr" "$d/logs/error.log" >&2 2>/dev/null
    return 1
}

# ---- 1. reads ----------------------------------------------------------------------

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

# tree PID: PID and its children (nginx's master and its workers)
tree() {
    echo "$1"
    ps -o pid= --ppid "$1" | tr -d ' '
}

# wrk_run KEY PORT GET PID...: one wrk run (GET 1: plain GET /); appends to
# res[KEY.*], with the CPU time the server PIDs used per request.
wrk_run() {
    local key=$1 port=$2 get=$3 out line e f c0 c1
    shift 3
    c0=$(proc_cpu_ticks "$@")
    out=$(BENCH_ROWS=$rows BENCH_WRK_GET=$get timeout $((secs + 30)) wrk -t"$wrk_threads" \
        -c"$conns" -d"${secs}s" --latency -s "$lua" "http://127.0.0.1:$port/" 2>&1)
    c1=$(proc_cpu_ticks "$@")
    if ! line=$(printf '%s\n' "$out" | grep '^RESULT'); then
        log "wrk ($key) failed:"
        printf '%s\n' "$out" | tail -5 >&2
        failed=1
        return 1
    fi
    res[$key.cpu_us]+=" $(awk -v a="$c0" -v b="$c1" -v hz="$tck" -v n="$(kv_field "$line" requests)" \
        'BEGIN { if (n > 0) printf "%.1f", (b - a) / hz * 1e6 / n; else print 0 }')"
    log "$key: ${line#RESULT } server_cpu_us_per_req=${res[$key.cpu_us]##* }"
    for f in rps p50_us p99_us non200 hrana_errors; do
        res[$key.$f]+=" $(kv_field "$line" $f)"
    done
    e=0
    for f in connect read write timeout; do
        e=$((e + $(kv_field "$line" errors_$f)))
    done
    res[$key.errors]+=" $e"
}

phase_read() {
    local t r i first=1 order k np
    for t in $threads_list; do
        start_nginx "$t" || return 1
        start_proxy "r$t" "$url" "$t" || return 1
        if [ $first = 1 ]; then
            setup_tables "r$t" || return 1
            first=0
        fi
    done
    for t in $threads_list; do
        wait_applied "r$t" || return 1
        check_read "r$t" || return 1
        res[r$t.fwd0]=$(metric "r$t" 'reads_total{route="primary"}')
    done
    log "reads: $runs runs of ${secs}s each, wrk -t$wrk_threads -c$conns, $rows rows," \
        "proxy --threads / nginx workers: $threads_list"
    for r in $(seq "$runs"); do
        i=0 # index of nginx_pids: one nginx per entry of threads_list, in order
        for t in $threads_list; do
            # rotate the order so that no server always runs first or last
            case $(((r + t) % 3)) in
            0) order="get post proxy" ;;
            1) order="proxy get post" ;;
            *) order="post proxy get" ;;
            esac
            mapfile -t np < <(tree "${nginx_pids[$i]}")
            for k in $order; do
                case $k in
                get) wrk_run "nginx_get.$t" "${nginx_port[$t]}" 1 "${np[@]}" ;;
                post) wrk_run "nginx.$t" "${nginx_port[$t]}" 0 "${np[@]}" ;;
                proxy) wrk_run "proxy.$t" "${proxy_port[r$t]}" 0 "${proxy_pid[r$t]}" ;;
                esac
            done
            i=$((i + 1))
        done
    done
    for t in $threads_list; do
        k=$(metric "r$t" 'reads_total{route="primary"}')
        res[r$t.fwd]=$((${k:-0} - ${res[r$t.fwd0]:-0}))
        res[r$t.local]=$(metric "r$t" 'reads_total{route="local"}')
        stop_proxy "r$t"
    done
    stop_pids "${nginx_pids[@]}"
    nginx_pids=()
    print_read
}

print_read() {
    local t n p g
    echo
    echo "### Local point reads: wrk -t$wrk_threads -c$conns -d${secs}s --latency, median of $runs runs"
    echo
    echo "| server | req/s | p50 µs | p99 µs | server CPU µs/request | non-200 (all runs) |" \
        "200 with a Hrana error | socket errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for t in $threads_list; do
        for k in "proxy.$t|boomerang-proxy --threads $t (Hrana POST, point read)" \
            "nginx.$t|nginx $t worker(s), same script (POST, static \`return 200\`)" \
            "nginx_get.$t|nginx $t worker(s), GET 3-byte static file"; do
            echo "| ${k#*|} | $(fmt "$(med "${k%%|*}.rps")") | $(fmt "$(med "${k%%|*}.p50_us")") |" \
                "$(fmt "$(med "${k%%|*}.p99_us")") | $(med "${k%%|*}.cpu_us") |" \
                "$(sum "${k%%|*}.non200") |" \
                "$(sum "${k%%|*}.hrana_errors") | $(sum "${k%%|*}.errors") |"
        done
    done
    echo
    echo "| proxy threads = nginx workers | throughput proxy/nginx (target ≥ 0.70) |" \
        "p50 proxy/nginx (target ≤ 1.3) | same vs nginx GET static file: throughput, p50 |" \
        "reads forwarded to the primary |"
    echo "|---:|---:|---:|---:|---:|"
    for t in $threads_list; do
        p=proxy.$t n=nginx.$t g=nginx_get.$t
        echo "| $t | $(ratio "$(med "$p.rps")" "$(med "$n.rps")") |" \
            "$(ratio "$(med "$p.p50_us")" "$(med "$n.p50_us")") |" \
            "$(ratio "$(med "$p.rps")" "$(med "$g.rps")"), $(ratio "$(med "$p.p50_us")" "$(med "$g.p50_us")") |" \
            "${res[r$t.fwd]:-?} of $(fmt "${res[r$t.local]:-0}") |"
    done
}

# ---- 2. write-ack latency ---------------------------------------------------------

# write_run KEY NAME COUNT [FLAGS]: bench_proxy --mode write through proxy NAME
write_run() {
    local key=$1 name=$2 count=$3 out f
    shift 3
    if ! out=$(timeout $((count * (2 * delay + 200) / 1000 + 60)) "$client" --mode write \
        --url "http://127.0.0.1:${proxy_port[$name]}" --count "$count" "$@"); then
        log "$key: bench_proxy failed: $out"
        failed=1
    fi
    [ -n "$out" ] || return 1
    log "$key: $out"
    for f in p50_us p90_us p99_us max_us mean_us unapplied errors n; do
        res[$key.$f]+=" $(json_field "$out" $f)"
    done
}

phase_write() {
    local rp rport r
    "$relay" --listen 127.0.0.1:0 --target "${url#http://}" --delay-ms "$delay" \
        2>"$dir/relay.log" &
    rp=$!
    pids+=("$rp")
    if ! rport=$(wait_log "$dir/relay.log" \
        '.*relay listening on 127\.0\.0\.1:\([0-9][0-9]*\).*' "$rp"); then
        log "relay did not start:"
        tail -5 "$dir/relay.log" >&2
        return 1
    fi
    start_proxy wd "http://127.0.0.1:$rport" 2 || return 1
    wait_applied wd || return 1
    log "writes: $runs runs of $writes INSERTs each way, relay ${delay} ms one way"
    for r in $(seq "$runs"); do
        if [ $((r % 2)) = 1 ]; then
            write_run wait wd "$writes"
            write_run nowait wd "$writes" --max-wait-ms 0
        else
            write_run nowait wd "$writes" --max-wait-ms 0
            write_run wait wd "$writes"
        fi
    done
    stop_proxy wd
    stop_pids "$rp"
    print_write
}

print_write() {
    local k
    echo
    echo "### Write-ack latency through the sidecar, ${delay} ms one-way relay to the primary:" \
        "$writes INSERTs, 1 connection, closed loop, median of $runs runs"
    echo
    echo "| answer | p50 µs | p90 µs | p99 µs | max µs | Boomerang-Applied: 0 (all runs) | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for k in "wait|after the local replica applied it (default)" \
        "nowait|at primary commit (\`Boomerang-Max-Wait-Ms: 0\`)"; do
        echo "| ${k#*|} | $(fmt "$(med "${k%%|*}.p50_us")") | $(fmt "$(med "${k%%|*}.p90_us")") |" \
            "$(fmt "$(med "${k%%|*}.p99_us")") | $(fmt "$(med "${k%%|*}.max_us")") |" \
            "$(sum "${k%%|*}.unapplied") of $(sum "${k%%|*}.n") | $(sum "${k%%|*}.errors") |"
    done
    echo
    echo "wait/no-wait (target ≤ 1.05): p50 $(ratio "$(med wait.p50_us)" "$(med nowait.p50_us)")," \
        "p99 $(ratio "$(med wait.p99_us)" "$(med nowait.p99_us)")"
}

# ---- 3. PostgreSQL 15 + pgpool-II, and the same through a loopback proxy ---------------

pg_start() {
    if [ ! -x "$pg_peer/up.sh" ] || [ ! -f "$pg_peer/pgryw.c" ]; then
        pg_note="the pg peer scripts are not in $pg_peer (set BENCH_PG_PEER)"
        return 1
    fi
    export PG_RUN=$dir/pg PGPOOL_LB_ON_WRITE=off
    PG_PRIMARY_PORT=$(free_port) PG_STANDBY_PORT=$(free_port) PGPOOL_PORT=$(free_port)
    PCP_PORT=$(free_port)
    export PG_PRIMARY_PORT PG_STANDBY_PORT PGPOOL_PORT PCP_PORT
    pg_up=1
    log "pg: starting the peer (PostgreSQL 15 primary :$PG_PRIMARY_PORT, standby" \
        ":$PG_STANDBY_PORT, pgpool :$PGPOOL_PORT) with $pg_peer/up.sh"
    if ! timeout 600 "$pg_peer/up.sh" >"$dir/pg-up.log" 2>&1; then
        pg_note="the pg peer did not start: $(tail -3 "$dir/pg-up.log" | tr '\n' ' ')"
        return 1
    fi
    if ! gcc -O2 -Wall -o "$dir/pgryw" "$pg_peer/pgryw.c" -I/usr/include/postgresql -lpq \
        -lpthread 2>"$dir/pgryw-cc.log"; then
        pg_note="pgryw.c did not build: $(head -3 "$dir/pgryw-cc.log" | tr '\n' ' ')"
        return 1
    fi
    pg_conn="host=127.0.0.1 port=$PGPOOL_PORT user=postgres dbname=bench"
    pg_version=$(psql -X -h 127.0.0.1 -p "$PG_PRIMARY_PORT" -U postgres -d bench -tAc \
        'show server_version' 2>/dev/null)
    pg_version="PostgreSQL ${pg_version:-15}, $(pgpool --version 2>&1 | head -1)"
    pg_ok=1
}

# pg_run KEY ARGS...: one pgryw run; appends its RESULT fields to res[KEY.*]
pg_run() {
    local key=$1 line f
    shift
    if ! line=$(timeout $((pg_secs + 60)) "$dir/pgryw" "$@" 2>"$dir/pgryw.err" | grep '^RESULT'); then
        log "pg $key failed: $(tail -3 "$dir/pgryw.err")"
        failed=1
        return 1
    fi
    log "pg $key: ${line#RESULT }"
    for f in reads_per_s writes_per_s lat_p50_us lat_p99_us served_by_port misses n \
        reads_on_standby write_p50_us write_p99_us read_p50_us read_p99_us pair_p50_us \
        pair_p99_us; do
        res[$key.$f]+=" $(kv_field "$line" $f)"
    done
}

# bread_run KEY CONNS: bench_proxy --mode read through proxy lb
bread_run() {
    local out f
    if ! out=$(timeout $((pg_secs + 60)) "$client" --mode read --conns "$2" --rows "$rows" \
        --seconds "$pg_secs" --url "http://127.0.0.1:${proxy_port[lb]}"); then
        log "$1: bench_proxy failed: $out"
        failed=1
    fi
    [ -n "$out" ] || return 1
    log "$1: $out"
    for f in per_s p50_us p99_us errors; do
        res[$1.$f]+=" $(json_field "$out" $f)"
    done
}

phase_pg() {
    local r
    start_proxy lb "$url" 2 || return 1
    wait_applied lb || return 1
    pg_start || log "pg: $pg_note; measuring the sidecar side only"
    log "pg comparison: $runs runs, ${pg_secs}s per read step, $pg_writes loopback INSERTs"
    for r in $(seq "$runs"); do
        bread_run b.read1 1
        [ $pg_ok = 1 ] && pg_run pg.read1 read "$pg_conn" -d "$pg_secs" -t 1 -n "$rows"
        bread_run b.readc "$conns"
        [ $pg_ok = 1 ] &&
            pg_run pg.readc read "$pg_conn" -d "$pg_secs" -t "$conns" -n "$rows"
        write_run lwait lb "$pg_writes"
        [ $pg_ok = 1 ] && pg_run pg.wapply write "$pg_conn" -d "$pg_secs" -S
        write_run lnowait lb "$pg_writes" --max-wait-ms 0
        [ $pg_ok = 1 ] && pg_run pg.wlocal write "$pg_conn" -d "$pg_secs"
    done
    [ $pg_ok = 1 ] &&
        pg_run pg.ryw ryw "$pg_conn" -d "$pg_secs" -P "$PG_PRIMARY_PORT" -S
    stop_proxy lb
    pg_down
    print_pg
}

print_pg() {
    echo
    echo "### Against PostgreSQL 15 + pgpool-II (streaming standby, loopback), median of $runs runs"
    echo
    if [ -n "$pg_note" ]; then
        echo "PostgreSQL: not measured: $pg_note"
        echo
    else
        echo "${pg_version:-}; pgpool disable_load_balance_on_write=off, backend weights 0/1 (every read"
        echo "to the standby); read-your-writes by \`SET synchronous_commit = remote_apply\`. Client:"
        echo "the peer's pgryw (libpq, one thread per connection); for boomerang: bench_proxy"
        echo "(HTTP/1.1 keep-alive, one thread per connection) through a proxy --threads 2 on loopback."
        echo
    fi
    echo "| measurement | boomerang p50 / p99 µs | rate/s | PostgreSQL + pgpool p50 / p99 µs | rate/s |" \
        "boomerang/pg p50 | rate ratio |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    pg_row "point read, 1 connection" b.read1 per_s pg.read1 reads_per_s
    pg_row "point read, $conns connections" b.readc per_s pg.readc reads_per_s
    pg_row "INSERT, answered once the local replica / standby applied it (read-your-writes)" \
        lwait "" pg.wapply writes_per_s
    pg_row "INSERT, answered at primary commit" lnowait "" pg.wlocal writes_per_s
    echo
    echo "boomerang: $(sum lwait.unapplied) of $(sum lwait.n) waited writes and" \
        "$(sum lnowait.unapplied) of $(sum lnowait.n) \`Max-Wait-Ms: 0\` writes carried" \
        "Boomerang-Applied: 0; errors $(($(sum b.read1.errors) + $(sum b.readc.errors) + \
        $(sum lwait.errors) + $(sum lnowait.errors)))."
    if [ -z "$pg_note" ] && [ -n "${res[pg.ryw.n]:-}" ]; then
        echo "pg read-your-writes check (pgryw ryw -S, INSERT then SELECT through pgpool," \
            "${pg_secs}s): ${res[pg.ryw.n]# } pairs, ${res[pg.ryw.misses]# } misses," \
            "${res[pg.ryw.reads_on_standby]# } reads on the standby; pair p50" \
            "$(fmt "${res[pg.ryw.pair_p50_us]# }") µs, p99 $(fmt "${res[pg.ryw.pair_p99_us]# }") µs."
    fi
}

# pg_row LABEL BKEY BRATEFIELD PKEY PRATEFIELD (BRATEFIELD "": 1e6/mean)
pg_row() {
    local b=$2 p=$4 brate prate
    if [ -n "$3" ]; then
        brate=$(med "$b.$3")
    else
        brate=$(awk -v m="$(med "$b.mean_us")" 'BEGIN { if (m > 0) printf "%.0f", 1e6 / m; else print "-" }')
    fi
    prate=$(med "$p.$5")
    echo "| $1 | $(fmt "$(med "$b.p50_us")") / $(fmt "$(med "$b.p99_us")") | $(fmt "$brate") |" \
        "$(fmt "$(med "$p.lat_p50_us")") / $(fmt "$(med "$p.lat_p99_us")") | $(fmt "$prate") |" \
        "$(ratio "$(med "$b.p50_us")" "$(med "$p.lat_p50_us")") | $(ratio "$brate" "$prate") |"
}

# ---- main ------------------------------------------------------------------------

load0=$(cut -d' ' -f1-3 /proc/loadavg)
log "sidecar benchmarks: phases '$phases', $(nproc) CPUs, load $load0"
echo "## Sidecar: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, load average at the start $load0;" \
    "$(nginx -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
start_primary || exit 1
for ph in $phases; do
    case $ph in
    read) phase_read || failed=1 ;;
    write) phase_write || failed=1 ;;
    pg) phase_pg || failed=1 ;;
    *)
        log "unknown phase '$ph'"
        failed=1
        ;;
    esac
done
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
log "done"
exit $failed
