#!/usr/bin/env bash
# boomerang: the region figures of BENCHMARKS.md (issue 5), the last part of
# `make bench` (tests/bench/run.sh calls it; BENCH_REGIONS=0 skips it).
#
# For each one-way delay d in BENCH_REGION_DELAYS, BENCH_RUNS times: the region
# test's topology (tests/regions/run.sh: network namespaces when root, else
# loopback) with one app region, A, at d ms one way from the primary:
#
#   region P   boomerang-primary; sidecar D straight to it (the commit-time baseline)
#   region A   relay -> primary, d ms each way; sidecar A through it; the app
#
# and its steady scenario: boomerang-bench --proxy D --proxy A for
# BENCH_REGION_SECONDS at BENCH_REGION_RATE operations/s (open loop, 20% writes,
# split between D and A), visibility sampled on BENCH_REGION_VIS_SAMPLE of the
# writes, every write read back with its token. Each run is a fresh topology
# (new databases, new processes), bounded in time.
#
# From each run's bench report: A's write-ack p50/p99 (and D's: the commit
# time), A's local read p50/p99, visibility lag of D's writes on A (D sits next
# to the primary, so this lag is A's one-way delay plus a constant), RYW
# violations, errors. Prints a markdown table of the medians over runs and the
# load average, writes every figure to OUT/regions-figures.json, and copies the
# bench's SVG charts of the median run of each delay (by the visibility p99) to
# BENCH_REGION_SVG_DIR/regions-<d>ms-{timeline,distribution}.svg.
#
# Environment: BOOMERANG_BIN (./bin), BENCH_BUILD (build), BENCH_RUNS (3),
# BENCH_REGION_DELAYS ("0 20 40 80"), BENCH_REGION_SECONDS (20),
# BENCH_REGION_RATE (100), BENCH_REGION_WRITE_RATIO (0.2),
# BENCH_REGION_VIS_SAMPLE (0.2), BENCH_REGION_OUT (BENCH_BUILD/bench-regions:
# each run's logs and reports, kept), BENCH_REGION_SVG_DIR (docs/bench; empty:
# no copy), and the region test's REGIONS_MODE (auto|netns|loopback).
set -u

root=$(cd "$(dirname "$0")/../.." && pwd)
export BOOMERANG_BIN=${BOOMERANG_BIN:-$root/bin}
build=${BENCH_BUILD:-build}
runs=${BENCH_RUNS:-3}
delays=${BENCH_REGION_DELAYS:-0 20 40 80}
secs=${BENCH_REGION_SECONDS:-20}
rate=${BENCH_REGION_RATE:-100}
wratio=${BENCH_REGION_WRITE_RATIO:-0.2}
vis=${BENCH_REGION_VIS_SAMPLE:-0.2}
out=${BENCH_REGION_OUT:-$root/$build/bench-regions}
svg_dir=${BENCH_REGION_SVG_DIR-$root/docs/bench}
failed=0

log() {
    echo "regions bench: $*" >&2
}

for b in boomerang-primary boomerang-proxy boomerang-bench relay; do
    if [ ! -x "$BOOMERANG_BIN/$b" ]; then
        log "$BOOMERANG_BIN/$b not found; run 'make' first"
        exit 1
    fi
done
if ! command -v node >/dev/null; then
    echo "## Regions: not measured (node, which drives tests/regions/, is not installed)"
    exit 0
fi

# median of the arguments (numbers; "-" when there are none)
median() {
    printf '%s\n' "$@" | grep -v '^-*$' | sort -g | awk '{v[NR] = $1} END {
        if (NR == 0) { print "-"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

declare -A res # res[DELAY.FIELD] = " value value ..." (one per run)

# extract DIR: one line "name value" per figure of the run in DIR (its
# regions.json and the bench's report), in milliseconds.
extract() {
    node -e '
const fs = require("fs"), path = require("path");
const dir = process.argv[1];
const figs = JSON.parse(fs.readFileSync(path.join(dir, "regions.json"), "utf8"));
const run = fs.readdirSync(dir).find((n) => n.startsWith("run-"));
const r = JSON.parse(fs.readFileSync(path.join(dir, run, "steady.json"), "utf8"));
const pp = r.per_proxy, D = pp[0], A = pp[1];
const v = D.visibility_to.find((x) => x.to === 1);
const ms = (us) => (us / 1000).toFixed(3);
const o = {
    mode: figs.mode, load: figs.load,
    commit_p50: ms(D.write_ack.p50_us), commit_p99: ms(D.write_ack.p99_us), commit_mean: ms(D.write_ack.mean_us),
    wack_p50: ms(A.write_ack.p50_us), wack_p99: ms(A.write_ack.p99_us), wack_mean: ms(A.write_ack.mean_us),
    wack_n: A.write_ack.count,
    read_p50: ms(A.read.p50_us), read_p99: ms(A.read.p99_us), read_n: A.read.count,
    vis_p50: ms(v.p50_us), vis_p99: ms(v.p99_us), vis_max: ms(v.max_us), vis_min: ms(v.min_us),
    vis_mean: ms(v.mean_us), vis_n: v.count, vis_lost: v.lost,
    ryw_violations: r.ryw.violations, ryw_reads: r.ryw.reads, errors: r.error_count,
    checks_failed: figs.checks.filter((c) => !c.ok).map((c) => c.what.replace(/\s+/g, "_")).join(",") || "none",
};
for (const [k, x] of Object.entries(o)) console.log(k, x);
' "$1"
}

# one_run DELAY RUN: the topology at DELAY ms, one steady load; fills res[].
one_run() {
    local d=$1 r=$2 rdir="$out/d$1-r$2" rc k v
    rm -rf "$rdir"
    mkdir -p "$rdir"
    REGIONS_DELAYS="A=$d" REGIONS_SCENARIOS=steady REGIONS_STEADY_SECONDS=$secs \
        REGIONS_RATE=$rate REGIONS_VIS_SAMPLE=$vis REGIONS_LOAD=bench REGIONS_OUT=$rdir \
        REGIONS_LOAD_ARGS="--write-ratio $wratio --svg-prefix $rdir/chart" \
        timeout $((secs + 240)) "$root/tests/regions/run.sh" >"$rdir/run.log" 2>&1
    rc=$?
    res[$d.load1]+=" $(cut -d' ' -f1 /proc/loadavg)"
    if ! extract "$rdir" >"$rdir/figures.txt" 2>"$rdir/extract.err"; then
        log "${d} ms, run $r: no figures (region test exit $rc); see $rdir/run.log:"
        grep -v '^ *\[' "$rdir/run.log" | tail -8 >&2
        failed=1
        return 1
    fi
    while read -r k v; do
        res[$d.$k]+=" $v"
    done <"$rdir/figures.txt"
    res[$d.runs]+=" $r"
    log "${d} ms, run $r: exit $rc; $(tr '\n' ' ' <"$rdir/figures.txt")"
}

# field DELAY NAME: the median over runs
med() {
    # shellcheck disable=SC2086 # a list of numbers
    median ${res[$1.$2]:-}
}

# sum DELAY NAME: the sum over runs
sum() {
    # shellcheck disable=SC2086 # a list of numbers
    printf '%s\n' ${res[$1.$2]:-} | awk '{s += $1} END {print s + 0}'
}

# pick DELAY: the run whose visibility p99 is the median one (lower middle)
pick() {
    local i
    local -a rr vv
    read -r -a rr <<<"${res[$1.runs]:-}"
    read -r -a vv <<<"${res[$1.vis_p99]:-}"
    [ ${#rr[@]} -gt 0 ] || return 1
    for i in "${!rr[@]}"; do echo "${vv[$i]} ${rr[$i]}"; done | sort -g |
        awk '{r[NR] = $2} END {print r[int((NR + 1) / 2)]}'
}

# per-run derived figures: floor = 2 d + commit, ratio (of p50s, and of means:
# the histogram's quantiles are bucket midpoints, ±3.1%, its means are exact),
# lag - delay (p50, mean, min)
derive() {
    local d=$1 i
    local -a cc ww vp vm cm wm vn
    read -r -a cc <<<"${res[$d.commit_p50]:-}"
    read -r -a cm <<<"${res[$d.commit_mean]:-}"
    read -r -a wm <<<"${res[$d.wack_mean]:-}"
    read -r -a vn <<<"${res[$d.vis_min]:-}"
    read -r -a ww <<<"${res[$d.wack_p50]:-}"
    read -r -a vp <<<"${res[$d.vis_p50]:-}"
    read -r -a vm <<<"${res[$d.vis_mean]:-}"
    for i in "${!cc[@]}"; do
        res[$d.floor]+=" $(awk -v d="$d" -v c="${cc[$i]}" 'BEGIN { printf "%.3f", 2 * d + c }')"
        res[$d.ratio]+=" $(awk -v d="$d" -v c="${cc[$i]}" -v w="${ww[$i]}" \
            'BEGIN { printf "%.3f", w / (2 * d + c) }')"
        res[$d.ratio_mean]+=" $(awk -v d="$d" -v c="${cm[$i]}" -v w="${wm[$i]}" \
            'BEGIN { printf "%.3f", w / (2 * d + c) }')"
        res[$d.lagmin]+=" $(awk -v d="$d" -v v="${vn[$i]}" 'BEGIN { printf "%.3f", v - d }')"
        res[$d.lag50]+=" $(awk -v d="$d" -v v="${vp[$i]}" 'BEGIN { printf "%.3f", v - d }')"
        res[$d.lagmean]+=" $(awk -v d="$d" -v v="${vm[$i]}" 'BEGIN { printf "%.3f", v - d }')"
    done
}

# fmt DECIMALS X: X rounded, or "-" (and no "-0.0")
fmt() {
    awk -v n="$1" -v x="$2" 'BEGIN { if (x == "-" || x == "") { print "-"; exit }
        v = sprintf("%." n "f", x); if (v + 0 == 0) v = sprintf("%." n "f", 0); print v }'
}
f1() { fmt 1 "$1"; }
f2() { fmt 2 "$1"; }

print_table() {
    local d cf
    echo
    echo "| one-way delay | write-ack p50 / p99 ms | floor: 2 × delay + commit ms | p50 / floor (means) |" \
        "local read p50 / p99 ms | visibility p50 / p99 / max ms | lag − delay: mean (p50, min) ms |" \
        "RYW violations (reads with a token) | errors |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for d in $delays; do
        echo "| $d ms | $(f1 "$(med "$d" wack_p50)") / $(f1 "$(med "$d" wack_p99)") |" \
            "$(f1 "$(med "$d" floor)") (commit $(f1 "$(med "$d" commit_p50)")) |" \
            "$(f2 "$(med "$d" ratio)") ($(f2 "$(med "$d" ratio_mean)")) |" \
            "$(f2 "$(med "$d" read_p50)") / $(f2 "$(med "$d" read_p99)") |" \
            "$(f1 "$(med "$d" vis_p50)") / $(f1 "$(med "$d" vis_p99)") / $(f1 "$(med "$d" vis_max)") |" \
            "$(f1 "$(med "$d" lagmean)") ($(f1 "$(med "$d" lag50)"), $(f1 "$(med "$d" lagmin)")) |" \
            "$(sum "$d" ryw_violations) ($(sum "$d" ryw_reads)) | $(sum "$d" errors) |"
    done
    echo
    echo "Per run: A's write-ack p50 ms; its ratio to the floor; visibility p99 ms (samples);" \
        "1-minute load average after the run; checks of the region test that failed:"
    echo
    for d in $delays; do
        cf=${res[$d.checks_failed]:- -}
        cf=${cf# }
        echo "- $d ms: write-ack p50${res[$d.wack_p50]:- -}; ratio${res[$d.ratio]:- -};" \
            "visibility p99${res[$d.vis_p99]:- -} (n${res[$d.vis_n]:- -}); load${res[$d.load1]:- -};" \
            "failed checks: ${cf// /; }"
    done
}

# figures as JSON (medians and per-run lists) for BENCHMARKS.md
write_json() {
    local d k first=1
    {
        printf '{"delays_ms":[%s],"seconds":%s,"runs":%s,"rate":%s,"write_ratio":%s,' \
            "$(echo "$delays" | tr ' ' ',')" "$secs" "$runs" "$rate" "$wratio"
        printf '"visibility_sample":%s,"load_start":"%s","load_end":"%s","by_delay":{' \
            "$vis" "$load0" "$(cut -d' ' -f1-3 /proc/loadavg)"
        for d in $delays; do
            [ $first = 1 ] || printf ','
            first=0
            printf '"%s":{' "$d"
            local f2nd=1
            # shellcheck disable=SC2086 # lists of numbers
            for k in commit_p50 commit_p99 commit_mean wack_p50 wack_p99 wack_mean floor ratio \
                ratio_mean read_p50 read_p99 vis_p50 vis_p99 vis_max vis_min vis_mean vis_n lag50 \
                lagmean lagmin load1; do
                [ $f2nd = 1 ] || printf ','
                f2nd=0
                printf '"%s":{"median":%s,"runs":[%s]}' "$k" "$(med "$d" "$k" | sed 's/^-$/null/')" \
                    "$(printf '%s\n' ${res[$d.$k]:-} | paste -sd,)"
            done
            printf ',"ryw_violations":%s,"ryw_reads":%s,"errors":%s,"median_run":"%s"}' \
                "$(sum "$d" ryw_violations)" "$(sum "$d" ryw_reads)" "$(sum "$d" errors)" \
                "$(pick "$d" || echo)"
        done
        printf '}}\n'
    } >"$out/regions-figures.json"
}

copy_svgs() {
    local d r k
    [ -n "$svg_dir" ] || return 0
    mkdir -p "$svg_dir"
    for d in $delays; do
        r=$(pick "$d") || continue
        for k in timeline distribution; do
            if [ -f "$out/d$d-r$r/chart-$k.svg" ]; then
                cp "$out/d$d-r$r/chart-$k.svg" "$svg_dir/regions-${d}ms-$k.svg"
            else
                log "${d} ms: run $r wrote no $k chart"
                failed=1
            fi
        done
        log "${d} ms: charts of run $r -> $svg_dir/regions-${d}ms-{timeline,distribution}.svg"
    done
}

# ---- main ------------------------------------------------------------------------

mkdir -p "$out"
load0=$(cut -d' ' -f1-3 /proc/loadavg)
log "delays '$delays' ms one way, $runs runs of ${secs}s each, $rate ops/s, writes $wratio," \
    "visibility sample $vis; $(nproc) CPUs, load $load0; runs in $out"
for d in $delays; do
    for r in $(seq "$runs"); do
        one_run "$d" "$r"
    done
    derive "$d"
done
mode=$(awk '$1 == "mode" {print $2; exit}' "$out"/d*-r*/figures.txt 2>/dev/null)
echo "## Regions: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, load average at the start $load0;" \
    "mode ${mode:-?}; $runs runs of ${secs}s per delay at $rate ops/s, medians"
print_table
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
write_json
copy_svgs
log "figures in $out/regions-figures.json"
exit $failed
