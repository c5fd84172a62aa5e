#!/usr/bin/env bash
# The region test's network: three regions as network namespaces on one bridge.
#
#   netns.sh check           exit 0 if namespaces can be made here (root, a kernel that allows it)
#   netns.sh up ID           make bmr-ID-br (the bridge), bmr-ID-p, bmr-ID-a, bmr-ID-b
#   netns.sh down ID         stop what runs in them (by PID) and delete them
#   netns.sh sweep           delete the bmr-* namespaces of runs whose PID is gone
#
# Layout (ID is the PID of the run that owns it, so a sweep can tell stale ones):
#
#   bmr-ID-p  eth0 10.77.0.1/24 --+
#   bmr-ID-a  eth0 10.77.0.2/24 --+-- br0 in bmr-ID-br
#   bmr-ID-b  eth0 10.77.0.3/24 --+
#
# The bridge lives in a namespace of its own, so the host's network is never
# touched, and concurrent runs each get a private 10.77.0.0/24. Each veth pair
# is created inside the namespaces (ip -n ... peer ... netns ...): no interface
# name ever appears in the root namespace.
set -u

regions="p a b"

addr_of() {
    case $1 in
        p) echo 10.77.0.1 ;;
        a) echo 10.77.0.2 ;;
        b) echo 10.77.0.3 ;;
    esac
}

die() {
    echo "netns: $*" >&2
    exit 1
}

# Stop every process in namespace $1 by PID (the run's own processes), then delete it.
del_ns() {
    local ns=$1 pids
    ip netns list 2>/dev/null | grep -q "^$ns\b" || return 0
    pids=$(ip netns pids "$ns" 2>/dev/null)
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086 # a list of PIDs
        kill -TERM $pids 2>/dev/null
        for _ in $(seq 50); do
            pids=$(ip netns pids "$ns" 2>/dev/null)
            [ -z "$pids" ] && break
            sleep 0.1
        done
        # shellcheck disable=SC2086
        [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
    fi
    ip netns del "$ns" 2>/dev/null || echo "netns: delete $ns failed" >&2
}

down() {
    local id=$1 r
    for r in $regions br; do del_ns "bmr-$id-$r"; done
}

up() {
    local id=$1 br="bmr-$1-br" r ns addr
    ip netns add "$br" || die "ip netns add $br failed"
    if ! { ip -n "$br" link set lo up && ip -n "$br" link add br0 type bridge &&
        ip -n "$br" link set br0 up; }; then
        down "$id"
        die "bridge in $br failed"
    fi
    for r in $regions; do
        ns="bmr-$id-$r"
        addr=$(addr_of "$r")
        if ! { ip netns add "$ns" &&
            ip -n "$br" link add "v$r" type veth peer name eth0 netns "$ns" &&
            ip -n "$br" link set "v$r" master br0 up &&
            ip -n "$ns" link set lo up &&
            ip -n "$ns" addr add "$addr/24" dev eth0 &&
            ip -n "$ns" link set eth0 up; }; then
            down "$id"
            die "region $r ($ns) failed"
        fi
    done
}

sweep() {
    local ns id
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^bmr-[0-9]+-(p|a|b|br|x)$'); do
        id=${ns#bmr-}
        id=${id%%-*}
        if ! kill -0 "$id" 2>/dev/null; then
            echo "netns: removing stale $ns (run $id is gone)" >&2
            del_ns "$ns"
        fi
    done
}

check() {
    local ns="bmr-$$-x"
    command -v ip >/dev/null || return 1
    [ "$(id -u)" = 0 ] || return 1
    ip netns add "$ns" 2>/dev/null || return 1
    ip -n "$ns" link set lo up 2>/dev/null
    local rc=$?
    ip netns del "$ns" 2>/dev/null
    return $rc
}

case "${1:-}" in
    check) check ;;
    up) [ -n "${2:-}" ] || die "up needs an ID"; up "$2" ;;
    down) [ -n "${2:-}" ] || die "down needs an ID"; down "$2" ;;
    sweep) sweep ;;
    *) die "usage: netns.sh check | up ID | down ID | sweep" ;;
esac
