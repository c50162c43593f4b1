#!/usr/bin/env bash
# What TLS costs, in one run: two release `viking server`s on this machine,
# one serving its API over TLS (certificates from `viking ca`) and one in
# plain HTTP, measured interleaved so machine noise hits both equally:
#
#   1. `viking run -d` latency: N runs each (a daemonized busybox job,
#      removed afterwards); medians and the ratio tls/plain (target <= 1.10);
#   2. piping: P alternating runs each of a 200 MiB file through
#      `viking run -i viking-test/busybox cat` into `wc -c` (the byte count
#      is checked); MiB/s medians and the ratio tls/plain (target >= 0.9).
#
#   scripts/bench-tls.sh                 # N=20, P=3
#   BENCH_BUILD=0 scripts/bench-tls.sh   # use target/release/viking as it is
set -euo pipefail
cd "$(dirname "$0")/.."

N=${BENCH_N:-20}
PIPE_RUNS=${BENCH_PIPE_RUNS:-3}
PIPE_MIB=${BENCH_PIPE_MIB:-200}
IMAGE=viking-test/busybox
log() { echo "bench-tls: $*" >&2; }
die() { log "$*"; exit 1; }
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "image $IMAGE missing: run scripts/test-images.sh"
if [ "${BENCH_BUILD:-1}" = 1 ]; then
    log "building viking (release)"
    cargo build --release --quiet -p viking
fi
viking=$PWD/target/release/viking
tmp=$(mktemp -d /tmp/viking-bench-tls.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    docker ps -aq --filter "label=viking.cluster=/bench-tls-$$" | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker ps -aq --filter "label=viking.cluster=/bench-plain-$$" | xargs -r docker rm -f >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export VIKING_TOKEN=bench-$(python3 -c 'import secrets; print(secrets.token_hex(16))')

"$viking" ca init --dir "$tmp/pki" >/dev/null
"$viking" ca issue bench --ip 127.0.0.1 --dir "$tmp/pki" >/dev/null
tls_port=$(free_port)
plain_port=$(free_port)
"$viking" server --name bench-tls --listen "127.0.0.1:$tls_port" --data-dir "$tmp/tls" \
    --key "/bench-tls-$$" --tls-cert "$tmp/pki/bench.pem" --tls-key "$tmp/pki/bench-key.pem" \
    --ca "$tmp/pki/ca.pem" >"$tmp/tls.log" 2>&1 &
pids+=($!)
"$viking" server --name bench-plain --listen "127.0.0.1:$plain_port" --data-dir "$tmp/plain" \
    --key "/bench-plain-$$" >"$tmp/plain.log" 2>&1 &
pids+=($!)
v_tls() { "$viking" --server "https://127.0.0.1:$tls_port" --ca "$tmp/pki/ca.pem" "$@"; }
v_plain() { "$viking" --server "http://127.0.0.1:$plain_port" "$@"; }
for i in $(seq 1 150); do
    v_tls hosts >/dev/null 2>&1 && v_plain hosts >/dev/null 2>&1 && break
    [ "$i" -lt 150 ] || { tail -5 "$tmp/tls.log" "$tmp/plain.log" >&2; die "servers did not answer"; }
    sleep 0.1
done

now_ns() { date +%s%N; }
median() { python3 -c 'import statistics,sys; print(statistics.median(float(l) for l in open(sys.argv[1]) if l.strip()))' "$1"; }
calc() { python3 -c "print(f'{($1):.2f}')"; }
run_ms() { # WHO NAME
    local t0 t1
    t0=$(now_ns)
    "v_$1" run -d --name "$2" "$IMAGE" sleep 600 >/dev/null 2>"$tmp/err" || { cat "$tmp/err" >&2; die "run failed"; }
    t1=$(now_ns)
    echo $(((t1 - t0) / 1000))
}

log "run -d: $N interleaved runs each"
: >"$tmp/run.tls"; : >"$tmp/run.plain"
for i in $(seq 1 "$N"); do
    if [ $((i % 2)) = 1 ]; then
        run_ms tls "j$i" >>"$tmp/run.tls"; run_ms plain "j$i" >>"$tmp/run.plain"
    else
        run_ms plain "j$i" >>"$tmp/run.plain"; run_ms tls "j$i" >>"$tmp/run.tls"
    fi
done
run_t=$(calc "$(median "$tmp/run.tls") / 1000")
run_p=$(calc "$(median "$tmp/run.plain") / 1000")
run_ratio=$(calc "$run_t / $run_p")

bytes=$((PIPE_MIB * 1024 * 1024))
head -c "$bytes" /dev/urandom >"$tmp/payload"
pipe_mibs() {
    local t0 t1 count
    t0=$(now_ns)
    count=$("v_$1" run -i "$IMAGE" cat <"$tmp/payload" | wc -c)
    t1=$(now_ns)
    [ "$count" = "$bytes" ] || die "$1 piped $count bytes, expected $bytes"
    calc "$PIPE_MIB / (($t1 - $t0) / 1e9)"
}
log "piping: $PIPE_RUNS alternating runs each"
: >"$tmp/pipe.tls"; : >"$tmp/pipe.plain"
for i in $(seq 1 "$PIPE_RUNS"); do
    if [ $((i % 2)) = 1 ]; then
        pipe_mibs tls >>"$tmp/pipe.tls"; pipe_mibs plain >>"$tmp/pipe.plain"
    else
        pipe_mibs plain >>"$tmp/pipe.plain"; pipe_mibs tls >>"$tmp/pipe.tls"
    fi
done
pipe_t=$(calc "$(median "$tmp/pipe.tls")")
pipe_p=$(calc "$(median "$tmp/pipe.plain")")
pipe_ratio=$(calc "$pipe_t / $pipe_p")
verdict() { python3 -c "print('met' if $1 else 'MISSED')"; }
echo
echo "TLS against plain HTTP ($(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ))"
echo
echo "| benchmark | tls | plain | tls/plain | target | |"
echo "|---|---:|---:|---:|---:|---|"
echo "| \`viking run -d\`, median of $N | $run_t ms | $run_p ms | $run_ratio | <= 1.10 | $(verdict "$run_ratio <= 1.10") |"
echo "| piping $PIPE_MIB MiB through \`run -i cat\`, median of $PIPE_RUNS | $pipe_t MiB/s | $pipe_p MiB/s | $pipe_ratio | >= 0.9 | $(verdict "$pipe_ratio >= 0.9") |"
