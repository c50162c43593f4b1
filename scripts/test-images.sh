#!/usr/bin/env bash
# Builds the local images used by viking's multi-host tests (no registry needed).
#
#   scripts/test-images.sh          # packages (prereqs.sh run) + viking-test/busybox:latest
#   scripts/test-images.sh --node   # packages (prereqs.sh test) + viking-test/node:latest (once per machine)
#
# Idempotent: installs only missing packages and builds only missing images.
# Must run as root (apt-get, debootstrap, docker). See docs in /work/shared/docs/test-cluster.md.
set -euo pipefail

BUSYBOX_IMAGE=viking-test/busybox:latest
NODE_IMAGE=viking-test/node:latest
SUITE=${VIKING_TEST_SUITE:-bookworm}
MIRROR=${VIKING_TEST_MIRROR:-http://deb.debian.org/debian}

# Applets linked into the busybox job image.
APPLETS=(sh ash cat echo tr rev sleep nc httpd env true false hostname wc head tail dd ls
    mkdir id printf test '[' seq yes date grep sed cut sort uniq kill ps pidof wget rm cp mv
    touch ln stat tee xargs timeout uname whoami awk expr basename dirname sync md5sum
    sha256sum ip ifconfig ping)

NODE_PACKAGES=docker.io,iptables,conntrack,ca-certificates,etcd-server,etcd-client,procps,iproute2,curl

want_node=0
for arg in "$@"; do
    case "$arg" in
    --node) want_node=1 ;;
    -h | --help)
        sed -n '2,8p' "$0"
        exit 0
        ;;
    *)
        echo "unknown argument: $arg" >&2
        exit 2
        ;;
    esac
done

log() { echo "test-images: $*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "test-images: must run as root" >&2
    exit 1
fi

# --- packages --------------------------------------------------------------------
if [ "$want_node" -eq 1 ]; then scripts_level=test; else scripts_level=run; fi
"$(dirname "$0")/prereqs.sh" "$scripts_level"

command -v docker >/dev/null || {
    echo "test-images: docker CLI not found" >&2
    exit 1
}

# --- busybox job image -------------------------------------------------------------
if docker image inspect "$BUSYBOX_IMAGE" >/dev/null 2>&1; then
    log "$BUSYBOX_IMAGE present"
else
    log "importing $BUSYBOX_IMAGE"
    bb=$(command -v busybox || true)
    [ -n "$bb" ] || bb=/bin/busybox
    d=$(mktemp -d)
    trap 'rm -rf "$d"' EXIT
    cp "$bb" "$d/busybox"
    mkdir -p "$d/bin" "$d/tmp" "$d/etc" "$d/var/www"
    chmod 1777 "$d/tmp"
    for a in "${APPLETS[@]}"; do ln -sf /busybox "$d/bin/$a"; done
    echo 'root:x:0:0:root:/:/bin/sh' >"$d/etc/passwd"
    echo 'root:x:0:' >"$d/etc/group"
    tar --numeric-owner -C "$d" -c . | docker import -c 'ENV PATH=/bin' - "$BUSYBOX_IMAGE" >/dev/null
    rm -rf "$d"
    trap - EXIT
    out=$(docker run --rm "$BUSYBOX_IMAGE" sh -c 'echo hi | tr a-z A-Z')
    [ "$out" = "HI" ] || {
        echo "test-images: busybox image check failed: $out" >&2
        exit 1
    }
    log "$BUSYBOX_IMAGE ready"
fi

# --- node image ----------------------------------------------------------------------
if [ "$want_node" -eq 1 ]; then
    # An image made from another package list is made again.
    have=$(docker image inspect -f '{{index .Config.Labels "viking.node-packages"}}' "$NODE_IMAGE" 2>/dev/null || true)
    if [ "$have" = "$NODE_PACKAGES" ]; then
        log "$NODE_IMAGE present"
    else
        start=$(date +%s)
        root=$(mktemp -d /var/tmp/viking-node-rootfs.XXXXXX)
        trap 'rm -rf "$root"' EXIT
        log "debootstrap $SUITE into $root (packages: $NODE_PACKAGES)"
        debootstrap --variant=minbase --include="$NODE_PACKAGES" "$SUITE" "$root" "$MIRROR" \
            >"$root.log" 2>&1 || {
            tail -n 30 "$root.log" >&2
            exit 1
        }
        rm -f "$root.log"
        # Keep it lean: no package caches, docs or man pages.
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
            "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
        log "importing $NODE_IMAGE"
        tar --numeric-owner -C "$root" -c . |
            docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
                -c "LABEL viking.node-packages=$NODE_PACKAGES" - "$NODE_IMAGE" >/dev/null
        rm -rf "$root"
        trap - EXIT
        log "$NODE_IMAGE ready in $(($(date +%s) - start)) s"
    fi
fi
log "done"
