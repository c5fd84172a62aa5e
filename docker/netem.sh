#!/bin/bash
# boomerang-netem PEER:DELAY_MS[:JITTER_MS] ...
#
# Adds a one-way delay to the packets this network namespace sends towards each
# PEER (a host name), with netem on the interface that reaches it, then stays up
# so that compose can report it healthy (the file /run/netem.ready) and so that
# `docker compose logs` shows what it set. It runs in the namespace of the
# container it delays (compose: network_mode "service:NAME", cap_add NET_ADMIN).
#
# netem only delays what an interface sends. A region's link gets its delay in
# both directions by running this on both ends: the sidecar delays what it sends
# to the primary, and the primary delays what it sends to that sidecar. Each
# region reaches the primary over its own network, so every link is one interface
# at each end, and a delay on it touches no other traffic: neither loopback (the
# health checks) nor the region's own network (the app and the load tester).
#
# A PEER that is this namespace's own address (the primary's name on a region's
# network) selects the interface holding that address; any other PEER selects
# the interface of the route to it.
set -euo pipefail

ready=/run/netem.ready

resolve() { # NAME -> its IPv4 address, waiting up to 60 s for the DNS entry
    local i addr
    for i in $(seq 600); do
        addr=$(getent ahostsv4 "$1" | awk 'NR == 1 { print $1 }')
        if [ -n "$addr" ]; then
            echo "$addr"
            return 0
        fi
        sleep 0.1
    done
    echo "boomerang-netem: cannot resolve $1" >&2
    return 1
}

device_for() { # IPv4 ADDRESS -> the interface that holds it or routes to it
    local dev
    dev=$(ip -o -4 addr show | awk -v a="$1" '{ split($4, p, "/") } p[1] == a { print $2; exit }')
    if [ -z "$dev" ]; then
        dev=$(ip -o -4 route get "$1" | sed -n 's/.* dev \([^ ]*\).*/\1/p')
    fi
    [ -n "$dev" ] || { echo "boomerang-netem: no interface reaches $1" >&2; return 1; }
    echo "$dev"
}

[ $# -gt 0 ] || { echo "usage: boomerang-netem PEER:DELAY_MS[:JITTER_MS] ..." >&2; exit 2; }
for spec in "$@"; do
    if ! [[ $spec =~ ^[A-Za-z0-9._-]+:[0-9]+(:[0-9]+)?$ ]]; then
        echo "boomerang-netem: bad spec '$spec' (want PEER:DELAY_MS[:JITTER_MS])" >&2
        exit 2
    fi
done

rm -f "$ready"
declare -A done_for
for spec in "$@"; do
    IFS=: read -r peer delay jitter <<<"$spec"
    jitter=${jitter:-0}
    addr=$(resolve "$peer")
    dev=$(device_for "$addr")
    if [ -n "${done_for[$dev]:-}" ]; then
        echo "boomerang-netem: $peer and ${done_for[$dev]} share $dev; cannot delay them apart" >&2
        exit 1
    fi
    done_for[$dev]=$peer
    args=(delay "${delay}ms")
    # netem's jitter reorders packets (each gets its own delay); TCP absorbs
    # that, at the cost of some retransmissions.
    [ "$jitter" -eq 0 ] || args+=("${jitter}ms")
    # The default queue (1000 packets) would drop packets in flight on a fast
    # link with a long delay; a generous limit keeps the delay the only effect.
    tc qdisc replace dev "$dev" root netem "${args[@]}" limit 100000
    echo "boomerang-netem: $dev (towards $peer, $addr): $(tc qdisc show dev "$dev" root)"
done
touch "$ready"

# Stay up until compose stops the service; the qdiscs live as long as the namespace.
trap 'exit 0' TERM INT
sleep infinity &
wait
