#!/usr/bin/env bash
# Start viking on this machine (embedded store, local Docker) and run a first
# job. Installs what is missing (scripts/prereqs.sh run): protoc and protobuf's
# include files (the etcd client's build script compiles etcd's .proto files) and
# a static busybox, from which it makes the first job's image (there is no
# registry to pull from). On a machine without apt it names what is missing.
#
#   scripts/quickstart.sh
#
# Afterwards: target/release/viking ps, viking run ..., and
# `kill $(cat $VIKING_DATA/server.pid)` to stop the server.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "quickstart: $*"; }
export VIKING_DATA=${VIKING_DATA:-/var/lib/viking}
listen=${VIKING_LISTEN:-127.0.0.1:8791}

scripts/prereqs.sh run
scripts/test-images.sh

log "building viking (release)"
cargo build --release --quiet -p viking
viking=$PWD/target/release/viking
install -m 0755 "$viking" /usr/local/bin/viking 2>/dev/null || true

mkdir -p "$VIKING_DATA"
if [ -f "$VIKING_DATA/server.pid" ] && kill -0 "$(cat "$VIKING_DATA/server.pid")" 2>/dev/null; then
    log "viking server already running (pid $(cat "$VIKING_DATA/server.pid"))"
else
    log "starting viking server on $listen (data in $VIKING_DATA, log in $VIKING_DATA/server.log)"
    nohup "$viking" server --listen "$listen" --data-dir "$VIKING_DATA" >>"$VIKING_DATA/server.log" 2>&1 &
    echo $! >"$VIKING_DATA/server.pid"
fi
for _ in $(seq 1 100); do
    "$viking" --server "http://$listen" hosts >/dev/null 2>&1 && break
    sleep 0.1
done
"$viking" --server "http://$listen" hosts

log "a first job: echo hello | viking run viking-test/busybox tr a-z A-Z | viking run viking-test/busybox rev"
echo hello | "$viking" --server "http://$listen" run viking-test/busybox tr a-z A-Z |
    "$viking" --server "http://$listen" run viking-test/busybox rev
