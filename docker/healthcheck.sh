#!/bin/bash
# boomerang-healthcheck [PATH]: GET PATH (default /health) from the boomerang
# server in this container and exit 0 on a 200 answer, 1 otherwise.
#
# It speaks HTTP/1.1 through bash's /dev/tcp, so the slim image needs no curl
# (curl would add libcurl and about a dozen libraries for one request).
#
# The address comes from the same environment variables the binaries read, so a
# container configured through them needs nothing more:
#   BOOMERANG_HEALTH_ADDR      HOST:PORT to ask, if set
#   BOOMERANG_METRICS_LISTEN   else this (the primary's --metrics-listen)
#   BOOMERANG_LISTEN           else this (primary, sidecar, replica --listen)
#   otherwise 127.0.0.1:8080, the sidecar's default
# A wildcard host (0.0.0.0, ::) is asked on loopback. Paths other than /health
# need the app token on a sidecar started with --app-token-file: it is sent from
# BOOMERANG_APP_TOKEN_FILE when that is set.
set -u

path=${1:-/health}
addr=${BOOMERANG_HEALTH_ADDR:-${BOOMERANG_METRICS_LISTEN:-${BOOMERANG_LISTEN:-127.0.0.1:8080}}}
host=${addr%:*}
port=${addr##*:}
host=${host#[}
host=${host%]}
case $host in
'' | 0.0.0.0 | '*') host=127.0.0.1 ;;
:: | 0:0:0:0:0:0:0:0) host=::1 ;;
esac

# The connect itself fails fast on a closed port; HEALTHCHECK --timeout bounds the rest.
if ! exec 3<>"/dev/tcp/$host/$port"; then
    echo "boomerang-healthcheck: cannot connect to $host:$port"
    exit 1
fi
request="GET $path HTTP/1.1"$'\r\n'"Host: $host"$'\r\n'"Connection: close"$'\r\n'
if [ "$path" != /health ] && [ -n "${BOOMERANG_APP_TOKEN_FILE:-}" ]; then
    IFS= read -r token <"$BOOMERANG_APP_TOKEN_FILE" || true
    request+="Authorization: Bearer $token"$'\r\n'
fi
printf '%s\r\n' "$request" >&3

if ! IFS= read -r -t 5 status <&3; then
    echo "boomerang-healthcheck: no answer from $host:$port"
    exit 1
fi
status=${status%$'\r'}
case $status in
"HTTP/1."?" 200"*) exit 0 ;;
esac
# Show why: the status line and the start of the body (e.g. /ready's reason).
body=$(timeout 1 cat <&3 | sed -n '/^\r\{0,1\}$/,$p' | head -c 300)
echo "boomerang-healthcheck: GET $path: $status ${body//[$'\r\n']/ }"
exit 1
