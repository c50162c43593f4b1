#!/usr/bin/env bash
# etcd stays small and quiet, the long version of
# crates/viking/tests/etcd_quota.rs: the test harness's three-host cluster
# on an etcd with an 8 MiB backend quota (--quota-backend-bytes 8388608),
# servers with --compact-window 10, for N minutes (default 10) of churn (a
# job run and removed and a container killed every round) with host n3
# killed and brought back every minute; then a minute of idle.
#
# Prints, from `etcdctl endpoint status -w json` and its revision counter:
# etcd's database size over time (one line a round), and the writes per
# second per idle host. It fails if etcd raises an alarm (NOSPACE) or its
# database reaches the quota.
#
#   scripts/etcd-soak.sh               # 10 minutes
#   scripts/etcd-soak.sh --minutes 3
#
# Needs root (Docker), etcd and etcdctl, and the images of
# `scripts/test-images.sh --node`.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=10
while [ $# -gt 0 ]; do
    case "$1" in
    --minutes)
        minutes=${2:?--minutes needs a number}
        shift 2
        ;;
    -h | --help)
        sed -n '2,19p' "$0"
        exit 0
        ;;
    *)
        echo "etcd-soak: unknown argument $1 (see --help)" >&2
        exit 2
        ;;
    esac
done
case "$minutes" in
'' | *[!0-9]* | 0)
    echo "etcd-soak: --minutes must be a whole number of minutes, at least 1" >&2
    exit 2
    ;;
esac
command -v etcdctl >/dev/null || {
    echo "etcd-soak: etcdctl is required (Debian: etcd-client)" >&2
    exit 1
}

echo "etcd-soak: $minutes minutes, etcd quota 8 MiB, a host rejoining every minute" >&2
out=$(mktemp /tmp/etcd-soak.XXXXXX)
# The figures as they come; everything in $out for a failure.
set +e
VIKING_SOAK_MINUTES=$minutes cargo test -p viking --test etcd_quota -- \
    --ignored --exact soak --nocapture 2>&1 | tee "$out" |
    grep --line-buffered '^soak: ' | sed -u 's/^soak: //'
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
    echo "etcd-soak: FAILED (exit $status):" >&2
    grep -A8 'panicked' "$out" >&2 || grep -v '^soak: ' "$out" | tail -60 >&2
    echo "etcd-soak: the whole output (with every server's log) is in $out" >&2
    exit "$status"
fi
rm -f "$out"
