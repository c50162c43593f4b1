#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: installs the packages the
# tests need (scripts/prereqs.sh test: protoc and protobuf's include files,
# busybox, etcd, debootstrap, promtool, chromium), builds the test images
# once per machine (viking-test/busybox, viking-test/node), then runs every
# test against the real Docker engine and real etcd.
#
#   scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/test-images.sh --node
# Leftovers of an interrupted earlier run (containers, networks) go first.
docker ps -aq --filter label=viking-test=1 | xargs -r docker rm -f >/dev/null
docker network ls -q --filter label=viking-test=1 | xargs -r docker network rm >/dev/null || true

# Two test threads: every test drives real containers on a 2-core machine.
cargo build --workspace --all-targets --quiet
# Bounded as a whole: a test that hangs fails the run (every command the
# harness runs is bounded too, see viking_testkit::command_deadline).
timeout --kill-after=30s "${VIKING_TEST_TIMEOUT:-40m}" \
    cargo test --workspace --quiet -- --test-threads="${VIKING_TEST_THREADS:-2}" "$@"
