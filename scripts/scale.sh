#!/usr/bin/env bash
# Scale on hollow servers (crates/viking/examples/scale/main.rs, issue 17): one
# real etcd and N hollow servers (`viking server --runtime hollow`) in one
# process, each with its own store client, lease and watches; M daemonized
# jobs through the API of random servers with 32 clients; 10 % of the hosts
# killed at once; the leader killed; one server process's RSS. Its last line
# is JSON. A benchmark (release build), not a test.
#
#   scripts/scale.sh [--hosts N] [--jobs M] [--ttl S]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release -p viking --bins --example scale
ulimit -n "$(ulimit -Hn)"
exec "${CARGO_TARGET_DIR:-target}/release/examples/scale" "$@"
