#!/usr/bin/env bash
# Stress test for attached jobs: every byte of a job's output arrives exactly
# once, in order, whatever the timing (issue 13: output sometimes arrived
# twice). Runs N rounds of three attached jobs while every core is kept busy
# with `yes > /dev/null`:
#
#   echo:  viking run viking-test/busybox sh -c 'echo hej'       -> "hej\n"
#   seq:   viking run viking-test/busybox seq 1 2000             -> 1..2000
#   pipe:  seq 1 20000 | viking run -i viking-test/busybox cat   -> 1..20000
#
# and compares each job's stdout (and exit code 0) with the expected bytes.
# Prints the failures per kind and in total; exits 1 if there was any.
#
#   scripts/stress-attach.sh [N]            # N rounds (default 100), 3N jobs
#   STRESS_PARALLEL=2 scripts/stress-attach.sh 200   # 2 rounds at a time
#   STRESS_BUSY=0 scripts/stress-attach.sh  # no busy loops (default: nproc)
#   STRESS_KINDS="echo seq" scripts/stress-attach.sh      # only these kinds
#   STRESS_BUILD=0 scripts/stress-attach.sh # use the release binary as it is
#   VIKING_BIN=/path/to/viking scripts/stress-attach.sh   # that binary, no build
#
# viking is a release `viking server` started here with a temp data dir, its
# own cluster key and token, on a free loopback port (killed on exit, as are
# the busy loops). The binary is ${CARGO_TARGET_DIR:-target}/release/viking
# unless VIKING_BIN names one.
#
# Needs root (Docker), python3 and the image viking-test/busybox
# (scripts/test-images.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-100}
PARALLEL=${STRESS_PARALLEL:-1}
BUSY=${STRESS_BUSY:-$(nproc)}
KINDS=${STRESS_KINDS:-echo seq pipe}
IMAGE=viking-test/busybox

log() { echo "stress-attach: $*" >&2; }
die() {
    log "$*"
    exit 2
}

command -v python3 >/dev/null || die "python3 is required"
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "image $IMAGE missing: run scripts/test-images.sh"
if [ -n "${VIKING_BIN:-}" ]; then
    viking=$VIKING_BIN
else
    if [ "${STRESS_BUILD:-1}" = 1 ]; then
        log "building viking (release)"
        cargo build --release --quiet -p viking
    fi
    viking=${CARGO_TARGET_DIR:-$PWD/target}/release/viking
fi
[ -x "$viking" ] || die "$viking not found: cargo build --release -p viking"

tmp=$(mktemp -d /tmp/viking-stress-attach.XXXXXX)
server_pid=
busy_pids=()
cleanup() {
    for p in "${busy_pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the viking server ------------------------------------------------------------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export VIKING_SERVER=http://127.0.0.1:$port
VIKING_TOKEN=stress-$(python3 -c 'import secrets; print(secrets.token_hex(16))')
export VIKING_TOKEN
mkdir -p "$tmp/data"
log "starting viking server on 127.0.0.1:$port (data in $tmp/data)"
# VIKING_TOKEN is exported, so the server uses the same token as the CLI.
"$viking" server --name "stress-$$" --listen "127.0.0.1:$port" --data-dir "$tmp/data" \
    --key "/viking-stress-$$" >"$tmp/server.log" 2>&1 &
server_pid=$!
for i in $(seq 1 150); do
    "$viking" hosts >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || {
        tail -n 30 "$tmp/server.log" >&2
        die "viking server exited"
    }
    [ "$i" -lt 150 ] || {
        tail -n 30 "$tmp/server.log" >&2
        die "viking server did not answer in 15 s"
    }
    sleep 0.1
done

# --- expected outputs --------------------------------------------------------------
printf 'hej\n' >"$tmp/want.echo"
seq 1 2000 >"$tmp/want.seq"
seq 1 20000 >"$tmp/want.pipe"

# one KIND OUT: runs one job of KIND with its stdout in OUT; its exit code.
one() {
    case $1 in
    echo) "$viking" run "$IMAGE" sh -c 'echo hej' >"$2" 2>"$2.err" </dev/null ;;
    seq) "$viking" run "$IMAGE" seq 1 2000 >"$2" 2>"$2.err" </dev/null ;;
    pipe) "$viking" run -i "$IMAGE" cat <"$tmp/want.pipe" >"$2" 2>"$2.err" ;;
    esac
}

# check KIND OUT CODE: appends "ok KIND" or "fail KIND why" to the results.
check() {
    local kind=$1 out=$2 code=$3
    if [ "$code" != 0 ]; then
        echo "fail $kind exit code $code: $(head -c 300 "$out.err" | tr '\n' ' ')"
    elif ! cmp -s "$out" "$tmp/want.$kind"; then
        echo "fail $kind got $(wc -c <"$out") bytes, $(wc -l <"$out") lines (want $(wc -c <"$tmp/want.$kind") bytes); first lines: $(head -n 3 "$out" | tr '\n' ' ')"
    else
        echo "ok $kind"
    fi
}

# worker W: rounds W, W+PARALLEL, ... ; results in $tmp/results.W.
worker() {
    local w=$1 r kind out code
    for ((r = w; r <= N; r += PARALLEL)); do
        for kind in $KINDS; do
            out=$tmp/out.$w
            code=0
            one "$kind" "$out" || code=$?
            check "$kind" "$out" "$code" >>"$tmp/results.$w"
        done
    done
}

# --- load and runs -----------------------------------------------------------------
for _ in $(seq 1 "$BUSY"); do
    yes >/dev/null &
    busy_pids+=($!)
done
log "$N rounds ($KINDS), $PARALLEL at a time, $BUSY busy loops"
t0=$(date +%s)
worker_pids=()
for w in $(seq 1 "$PARALLEL"); do
    worker "$w" &
    worker_pids+=($!)
done
for p in "${worker_pids[@]}"; do
    wait "$p"
done
t1=$(date +%s)
for p in "${busy_pids[@]}"; do
    kill "$p" 2>/dev/null || true
done
busy_pids=()

cat "$tmp"/results.* >"$tmp/results"
grep '^fail' "$tmp/results" | head -n 20 >&2 || true
total=$(wc -l <"$tmp/results")
fails=$(grep -c '^fail' "$tmp/results" || true)
per_kind=""
for kind in $KINDS; do
    f=$(grep -c "^fail $kind " "$tmp/results" || true)
    n=$(grep -c " $kind\( \|$\)" "$tmp/results" || true)
    per_kind="$per_kind $kind $f/$n,"
done
echo "stress-attach: $fails failures in $total attached jobs (${per_kind# } in $((t1 - t0)) s, $BUSY busy loops, $PARALLEL at a time)"
[ "$fails" = 0 ]
