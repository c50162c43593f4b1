#!/usr/bin/env bash
# After scripts/quickstart.sh: a service reached through embassy on this
# machine, and which path carried it (the kernel's rules, or the proxy).
# CI runs it on a pristine Debian 12 machine (../shared/tools/fresh-machine),
# where embassy must have chosen the kernel path.
#
#   scripts/embassy-smoke.sh [--expect kernel|proxy]
set -euo pipefail
cd "$(dirname "$0")/.."
expect=${2:-}
[ "${1:-}" = --expect ] || expect=
export VIKING_DATA=${VIKING_DATA:-/var/lib/viking}
v() { target/release/viking --server "http://${VIKING_LISTEN:-127.0.0.1:8791}" "$@"; }

v rm -f smoke-web >/dev/null 2>&1 || true
v run -d --name smoke-web -p 8080 viking-test/busybox sh -c \
    'mkdir -p /w && echo answered-through-embassy > /w/index.html && exec httpd -f -p 8080 -h /w'
got=$(v run --link smoke-web viking-test/busybox sh -c \
    'for i in $(seq 50); do wget -q -O- http://$SMOKE_WEB_PORT_8080_TCP_ADDR:$SMOKE_WEB_PORT_8080_TCP_PORT/ && exit 0; sleep 0.2; done; exit 1')
echo "embassy-smoke: $got"
[ "$got" = answered-through-embassy ]
mode=proxy
grep -q "embassy: kernel mode" "$VIKING_DATA/server.log" && mode=kernel
echo "embassy-smoke: embassy's $mode path"
if [ "$mode" = kernel ]; then
    iptables -w -t nat -S VIKING-EMBASSY | grep -- "-j DNAT"
fi
v rm -f smoke-web >/dev/null
if [ -n "$expect" ] && [ "$mode" != "$expect" ]; then
    echo "embassy-smoke: expected the $expect path" >&2
    exit 1
fi
