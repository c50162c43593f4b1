#!/usr/bin/env bash
# Benchmarks embassy (crates/viking-embassy) against a direct connection,
# socat and HAProxy on loopback: throughput of one 1 GiB transfer and
# p50/p99 of 20,000 64-byte round trips. Prints a markdown table.
#
# Usage: scripts/bench-embassy.sh
# Tunables (environment): EMBASSY_BENCH_BYTES, EMBASSY_BENCH_ROUNDS,
# EMBASSY_BENCH_MSG, EMBASSY_BENCH_RUNS (see benches/proxy.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v socat >/dev/null || missing+=(socat)
command -v haproxy >/dev/null && [ -x "$(command -v haproxy)" ] || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The bench profile is the release profile.
exec cargo bench -p viking-embassy --bench proxy
