#!/usr/bin/env bash
# Chaos on the test harness (crates/viking/examples/chaos.rs): five hosts, 30
# jobs, and for N minutes a random fault every few seconds (a host killed and
# brought back, cut off and healed, a server or a Docker engine frozen and
# thawed, every server restarted at once), checking after each that every job
# runs exactly once, none is lost and no container is stopped by mistake.
# Its last line is JSON; the exit status is 1 when an invariant failed.
#
#   scripts/chaos.sh [--minutes N] [--seed S]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-images.sh --node >/dev/null
cargo build --quiet -p viking --bins --examples
exec "${CARGO_TARGET_DIR:-target}/debug/examples/chaos" "$@"
