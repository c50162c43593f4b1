#!/usr/bin/env bash
# What TLS costs, in one run (issue 15): the harness's 2-node clusters
# (node containers with their own Docker engines, each cluster with its own
# etcd), one over TLS (its own CA, etcd with client certificates, the API and
# the calls between servers over TLS) and one in plain HTTP
# (`--insecure-http`, plain etcd), both from the same release build, measured
# interleaved so the machine's noise hits both alike. Every call goes to n1
# and the job is pinned to n2:
#
#   1. `viking run -d` latency: BENCH_N (20) runs each, median, ratio
#      tls/plain (target <= 1.10);
#   2. the cross-host pipe: BENCH_PIPE_RUNS (3) runs each of BENCH_PIPE_MIB
#      (200) MiB through `viking run -i --viking-host n2 busybox cat | wc -c`
#      (the byte count is checked), MiB/s median, ratio (target >= 0.9).
#
#   scripts/bench-tls.sh                 # builds viking --release first
#   BENCH_BUILD=0 scripts/bench-tls.sh   # uses the release binary as it is
#
# Needs `scripts/test-images.sh --node`. The measuring code is the ignored
# test `bench_tls_against_plain` in crates/viking/tests/tls_outside.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "bench-tls: $*" >&2; }
target=${CARGO_TARGET_DIR:-$PWD/target}
if [ "${BENCH_BUILD:-1}" = 1 ]; then
    log "building viking (release)"
    cargo build --release --quiet -p viking
fi
viking=$target/release/viking
[ -x "$viking" ] || { log "no release binary at $viking"; exit 1; }
log "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' (with local changes)'), $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ)"
VIKING_BENCH_BIN=$viking cargo test --quiet -p viking --test tls_outside -- \
    --ignored --exact bench_tls_against_plain --nocapture --test-threads=1
