#!/usr/bin/env bash
# Benchmarks `viking run` against `docker run` on this machine, in one run:
#
#   1. start-up: N runs each of `viking run viking-test/busybox true` and
#      `docker run --rm viking-test/busybox true`, interleaved run by run (and
#      alternating which goes first) so machine noise hits both equally;
#      prints each median and the ratio viking/docker (target <= 1.15);
#   2. piping: P alternating runs each of piping a 200 MiB file through
#      `viking run -i viking-test/busybox cat` and `docker run -i --rm
#      viking-test/busybox cat` into `wc -c` (the byte count is checked);
#      prints the MiB/s medians and the ratio viking/docker (target >= 0.8).
#
# viking is a release `viking server` started here with a temp data dir, its
# own cluster key and token, on a free loopback port (killed on exit).
#
#   scripts/bench-run.sh                  # N=30, P=3
#   BENCH_N=10 BENCH_PIPE_RUNS=5 scripts/bench-run.sh
#   BENCH_BUILD=0 scripts/bench-run.sh    # use target/release/viking as it is
#
# Needs root (Docker), python3 and the image viking-test/busybox
# (scripts/test-images.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${BENCH_N:-30}
PIPE_RUNS=${BENCH_PIPE_RUNS:-3}
PIPE_MIB=${BENCH_PIPE_MIB:-200}
WARMUP=${BENCH_WARMUP:-3}
IMAGE=viking-test/busybox
START_TARGET=1.15
PIPE_TARGET=0.8

log() { echo "bench-run: $*" >&2; }
die() {
    log "$*"
    exit 1
}

command -v python3 >/dev/null || die "python3 is required"
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "image $IMAGE missing: run scripts/test-images.sh"
if [ "${BENCH_BUILD:-1}" = 1 ]; then
    log "building viking (release)"
    cargo build --release --quiet -p viking
fi
viking=$PWD/target/release/viking
[ -x "$viking" ] || die "$viking not found: cargo build --release -p viking"

# --- the viking server ------------------------------------------------------------
tmp=$(mktemp -d /tmp/viking-bench.XXXXXX)
server_pid=
cleanup() {
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

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export VIKING_SERVER=http://127.0.0.1:$port
export VIKING_TOKEN=bench-$(python3 -c 'import secrets; print(secrets.token_hex(16))')
mkdir -p "$tmp/data"
log "starting viking server on 127.0.0.1:$port (data in $tmp/data)"
# VIKING_TOKEN is exported, so the server uses the same token as the CLI.
"$viking" server --name "bench-$$" --listen "127.0.0.1:$port" --data-dir "$tmp/data" \
    --key "/viking-bench-$$" >"$tmp/server.log" 2>&1 &
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

# --- helpers -----------------------------------------------------------------------
now_ns() { date +%s%N; }

# time_ms CMD...: runs CMD (stdout and stderr discarded), prints the elapsed ms;
# fails if CMD fails.
time_ms() {
    local t0 t1
    t0=$(now_ns)
    "$@" >/dev/null 2>"$tmp/err" || {
        cat "$tmp/err" >&2
        die "failed: $*"
    }
    t1=$(now_ns)
    echo $(((t1 - t0) / 1000))
}

# median FILE: median of the numbers in FILE (one a line).
median() { python3 -c 'import statistics,sys; print(statistics.median(float(l) for l in open(sys.argv[1]) if l.strip()))' "$1"; }
# calc EXPR: a python expression, printed with 2 decimals.
calc() { python3 -c "print(f'{($1):.2f}')"; }

viking_true() { "$viking" run "$IMAGE" true; }
docker_true() { docker run --rm "$IMAGE" true; }

# --- 1. start-up -------------------------------------------------------------------
log "start-up: $WARMUP warm-up runs each, then $N interleaved runs each"
for _ in $(seq 1 "$WARMUP"); do
    time_ms viking_true >/dev/null
    time_ms docker_true >/dev/null
done
: >"$tmp/start.viking"
: >"$tmp/start.docker"
for i in $(seq 1 "$N"); do
    if [ $((i % 2)) = 1 ]; then
        time_ms viking_true >>"$tmp/start.viking"
        time_ms docker_true >>"$tmp/start.docker"
    else
        time_ms docker_true >>"$tmp/start.docker"
        time_ms viking_true >>"$tmp/start.viking"
    fi
done
start_v=$(calc "$(median "$tmp/start.viking") / 1000")
start_d=$(calc "$(median "$tmp/start.docker") / 1000")
start_ratio=$(calc "$start_v / $start_d")
log "start-up medians: viking $start_v ms, docker $start_d ms, ratio $start_ratio"

# --- 2. piping ---------------------------------------------------------------------
bytes=$((PIPE_MIB * 1024 * 1024))
log "piping: writing a $PIPE_MIB MiB file"
head -c "$bytes" /dev/urandom >"$tmp/payload"

# pipe_mibs WHO: pipes the payload through WHO's cat into wc -c, checks the
# count, prints MiB/s.
pipe_mibs() {
    local t0 t1 count
    t0=$(now_ns)
    if [ "$1" = viking ]; then
        count=$("$viking" run -i "$IMAGE" cat <"$tmp/payload" | wc -c)
    else
        count=$(docker run -i --rm "$IMAGE" cat <"$tmp/payload" | wc -c)
    fi
    t1=$(now_ns)
    [ "$count" = "$bytes" ] || die "$1 piped $count bytes, expected $bytes"
    calc "$PIPE_MIB / (($t1 - $t0) / 1e9)"
}

log "piping: $PIPE_RUNS alternating runs each"
: >"$tmp/pipe.viking"
: >"$tmp/pipe.docker"
for i in $(seq 1 "$PIPE_RUNS"); do
    if [ $((i % 2)) = 1 ]; then
        pipe_mibs viking >>"$tmp/pipe.viking"
        pipe_mibs docker >>"$tmp/pipe.docker"
    else
        pipe_mibs docker >>"$tmp/pipe.docker"
        pipe_mibs viking >>"$tmp/pipe.viking"
    fi
done
pipe_v=$(calc "$(median "$tmp/pipe.viking")")
pipe_d=$(calc "$(median "$tmp/pipe.docker")")
pipe_ratio=$(calc "$pipe_v / $pipe_d")
log "piping runs (MiB/s): viking $(paste -sd' ' "$tmp/pipe.viking"), docker $(paste -sd' ' "$tmp/pipe.docker")"

verdict() { python3 -c "print('met' if $1 else 'MISSED')"; }

echo
echo "viking run vs docker run ($(nproc) CPUs, Docker $(docker version --format '{{.Server.Version}}'), $(date -u +%Y-%m-%dT%H:%MZ))"
echo
echo "| benchmark | viking | docker | viking/docker | target | |"
echo "|---|---:|---:|---:|---:|---|"
echo "| start-up: \`run $IMAGE true\`, median of $N | $start_v ms | $start_d ms | $start_ratio | <= $START_TARGET | $(verdict "$start_ratio <= $START_TARGET") |"
echo "| piping: $PIPE_MIB MiB through \`run -i $IMAGE cat\`, median of $PIPE_RUNS | $pipe_v MiB/s | $pipe_d MiB/s | $pipe_ratio | >= $PIPE_TARGET | $(verdict "$pipe_ratio >= $PIPE_TARGET") |"
