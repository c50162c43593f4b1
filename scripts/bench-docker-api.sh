#!/usr/bin/env bash
# The cost of viking's Docker Engine API (issue 20), on this machine:
# `docker run --rm IMAGE true` through a local viking server against the
# same on the local engine, alternating, and a 100 MiB pipe through
# `docker run -i --rm IMAGE cat` both ways. Prints a markdown table.
#
#   scripts/bench-docker-api.sh            # DOCKER_BENCH_RUNS=15, DOCKER_BENCH_PIPES=5
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-images.sh >/dev/null
cargo build --release --quiet -p viking
viking=$PWD/target/release/viking
dir=$(mktemp -d /tmp/viking-bench-docker.XXXXXX)
port=${DOCKER_BENCH_PORT:-18795}
"$viking" server --listen "127.0.0.1:$port" --data-dir "$dir/data" --key /bench-docker \
    --name bench-docker --embassy-mode proxy >"$dir/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do
    [ -f "$dir/data/token" ] && "$viking" --server "http://127.0.0.1:$port" --token-file "$dir/data/token" hosts >/dev/null 2>&1 && break
    sleep 0.1
done
mkdir -p "$dir/docker"
printf '{"HttpHeaders":{"Authorization":"Bearer %s"}}' "$(cat "$dir/data/token")" >"$dir/docker/config.json"
DOCKER_BENCH_DIR=$dir DOCKER_BENCH_PORT=$port python3 - <<'PY'
import os, statistics, subprocess, time
runs = int(os.environ.get("DOCKER_BENCH_RUNS", "15"))
pipes = int(os.environ.get("DOCKER_BENCH_PIPES", "5"))
d, port = os.environ["DOCKER_BENCH_DIR"], os.environ["DOCKER_BENCH_PORT"]
img = "viking-test/busybox"
local = {"env": dict(os.environ), "cmd": ["docker"]}
venv = dict(os.environ, DOCKER_CONFIG=f"{d}/docker")
venv.pop("DOCKER_HOST", None)
viking = {"env": venv, "cmd": ["docker", "-H", f"tcp://127.0.0.1:{port}"]}

def timed(path, args, stdin=None):
    t = time.perf_counter()
    subprocess.run(path["cmd"] + args, env=path["env"], stdin=stdin,
                   stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t

true = ["run", "--rm", img, "true"]
for p in (local, viking):
    timed(p, true)  # warm up
lt, vt = [], []
for _ in range(runs):
    lt.append(timed(local, true))
    vt.append(timed(viking, true))
size = 100 << 20
blob = f"{d}/blob"
with open(blob, "wb") as f:
    f.write(os.urandom(size))
cat = ["run", "-i", "--rm", img, "cat"]
lp, vp = [], []
for _ in range(pipes):
    for p, out in ((local, lp), (viking, vp)):
        with open(blob, "rb") as f:
            out.append(size / (1 << 20) / timed(p, cat, stdin=f))
ml, mv = statistics.median(lt), statistics.median(vt)
pl, pv = statistics.median(lp), statistics.median(vp)
print(f"`docker run --rm {img} true`, {runs} alternating runs each; 100 MiB through `docker run -i --rm {img} cat`, {pipes} each; medians")
print()
print("| what | local engine | through viking | viking / local |")
print("|---|---:|---:|---:|")
print(f"| `docker run --rm true` (s) | {ml:.3f} | {mv:.3f} | {mv/ml:.2f}× |")
print(f"| 100 MiB pipe (MiB/s) | {pl:.0f} | {pv:.0f} | {pv/pl:.2f}× |")
PY
