#!/usr/bin/env bash
# What the machine needs before viking builds or its tests run, in one place.
#
#   scripts/prereqs.sh build   # protoc and protobuf's include files (the etcd client's build script)
#   scripts/prereqs.sh run     # build + a static busybox (the first job's image) and conntrack
#   scripts/prereqs.sh test    # run + etcd and etcdctl (a real store), debootstrap (the node image), promtool, chromium
#
# Where apt-get exists (Debian, Ubuntu) the missing packages are installed, nothing else.
# Elsewhere it prints one line naming what is missing and exits 1, before any build starts.
# Docker and a Rust toolchain are the machine's own: they are checked, never installed.
set -euo pipefail

level=${1:-build}
case "$level" in
build | run | test) ;;
*)
    echo "prereqs: unknown level '$level' (build, run or test)" >&2
    exit 2
    ;;
esac

# protoc finds protobuf's well-known types in its own include directory or in PROTOC_INCLUDE.
has_proto_includes() {
    local dir
    for dir in "${PROTOC_INCLUDE:-}" /usr/include /usr/local/include; do
        [ -n "$dir" ] && [ -f "$dir/google/protobuf/descriptor.proto" ] &&
            [ -f "$dir/google/protobuf/struct.proto" ] && return 0
    done
    return 1
}

# The job image copies busybox into an empty image, so it must be linked statically.
has_static_busybox() {
    local bb
    bb=$(command -v busybox 2>/dev/null || echo /bin/busybox)
    [ -x "$bb" ] || return 1
    ! LC_ALL=C ldd "$bb" >/dev/null 2>&1
}

missing=()  # what a human reads
packages=() # what apt installs
need() { # need DESCRIPTION DEBIAN-PACKAGE CHECK...
    local what=$1 pkg=$2
    shift 2
    if ! "$@" >/dev/null 2>&1; then
        missing+=("$what")
        packages+=("$pkg")
    fi
}

need "protoc" protobuf-compiler command -v "${PROTOC:-protoc}"
need "protobuf's include files (google/protobuf/*.proto)" libprotobuf-dev has_proto_includes
if [ "$level" != build ]; then
    need "a static busybox" busybox-static has_static_busybox
    # embassy's kernel path forgets connections opening towards a removed endpoint.
    need "conntrack" conntrack command -v conntrack
fi
if [ "$level" = test ]; then
    need "etcd" etcd-server command -v "${VIKING_TEST_ETCD:-etcd}"
    need "etcdctl" etcd-client command -v etcdctl
    need "debootstrap" debootstrap command -v debootstrap
    # promtool checks the metrics' format (Debian's prometheus package).
    need "promtool" prometheus command -v promtool
    # The dashboard's test drives a real headless browser; a font for its screenshots.
    need "chromium" chromium command -v "${VIKING_TEST_CHROMIUM:-chromium}"
    need "a font (fonts-liberation)" fonts-liberation test -d /usr/share/fonts/truetype/liberation
fi

absent=()
command -v docker >/dev/null || absent+=("docker (Docker Engine and its CLI)")
command -v cargo >/dev/null || absent+=("cargo (a Rust toolchain, from rustup)")
if [ "${#absent[@]}" -gt 0 ]; then
    echo "prereqs: this machine needs $(
        IFS=,
        echo "${absent[*]}"
    ) before viking can be built; install them first" >&2
    exit 1
fi

[ "${#packages[@]}" -eq 0 ] && exit 0

list=$(printf '%s, ' "${missing[@]}")
list=${list%, }
if ! command -v apt-get >/dev/null; then
    echo "prereqs: missing $list; install them (Debian's packages: ${packages[*]}), then run this again" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "prereqs: missing $list; run as root so apt-get can install ${packages[*]}" >&2
    exit 1
fi
echo "prereqs: installing ${packages[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
