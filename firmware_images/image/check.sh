#!/usr/bin/env bash
# The image check: firmware_images/Dockerfile really built with buildah, then run.
#
#   sudo firmware_images/image/check.sh                 # amd64, from the repository root (make image)
#   sudo EDGE_IMAGE_ARCH=arm64 firmware_images/image/check.sh   # arm64 under qemu binfmt
#
# No container registry is needed: the base is Debian bookworm made locally with
# debootstrap (python3 3.11, python3-venv, python-is-python3, ca-certificates), imported
# into buildah's storage and passed as the Dockerfile's PYTHON_IMAGE build argument. The
# Dockerfile itself is unchanged (its default stays the official python:3.11-slim-bookworm).
#
# Steps (each prints its time):
#   1. host tools: buildah, debootstrap (apt-get if missing); for arm64 qemu-user-static and
#      binfmt's qemu-aarch64 handler
#   2. base: debootstrap bookworm once, cached as a tarball in $EDGE_IMAGE_CACHE, imported
#      into buildah storage (kept in $EDGE_IMAGE_CACHE/storage, vfs driver) as
#      localhost/edge-agent-base:bookworm-ARCH
#   3. build: `buildah bud --isolation chroot --format docker` of the Dockerfile (docker
#      format keeps its HEALTHCHECK); pip downloads the wheels from PyPI
#   4. run: a container from the image (`buildah run`; for arm64 a chroot of the mounted
#      container without the host's /sys, see below), its entry point and default command
#      (edge-agent serve) on a free port; the HEALTHCHECK command read from the image's config
#      must pass, then POST /predict (iris rows, right classes), `edge-agent backends`, the
#      user (uid 1000) and no build tools (smoke.sh)
#   5. mounts and the container removed, on success and on failure alike
#
# Environment:
#   EDGE_IMAGE_ARCH     amd64 (default) or arm64 (qemu-user emulation on an x86_64 host)
#   EDGE_IMAGE_CACHE    cache directory    (default /var/cache/edge-agent-image)
#   DEBIAN_MIRROR       bookworm mirror    (default http://deb.debian.org/debian)
#   EDGE_IMAGE_CA_BUNDLE  a CA bundle mounted read-only at /etc/ssl/certs/ca-certificates.crt
#                       during the build only, for pip behind a TLS-intercepting proxy
#                       (default: $PIP_CERT when set; never copied into the image)
#   EDGE_IMAGE_REFRESH=1  debootstrap the base again and drop every image in the storage
#
# Cost: see firmware_images/README.md ("The image check").
# Exit status: 0 when the image built and every run step passed, non-zero otherwise.
set -Eeuo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
ARCH="${EDGE_IMAGE_ARCH:-amd64}"
CACHE="${EDGE_IMAGE_CACHE:-/var/cache/edge-agent-image}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CA_BUNDLE="${EDGE_IMAGE_CA_BUNDLE:-${PIP_CERT:-}}"
SUITE=bookworm
PACKAGES=python3,python3-venv,python-is-python3,ca-certificates
ROOTFS_TAR="$CACHE/$SUITE-$ARCH-minbase-python3.tar.gz"
BASE="localhost/edge-agent-base:$SUITE-$ARCH"
IMAGE="localhost/edge-agent:$ARCH"
export QEMU_CPU="${QEMU_CPU:-cortex-a76}"
# buildah's own storage, apart from anything else on the host (one run root per cache)
RUNROOT="/run/edge-agent-image-$(printf '%s' "$CACHE" | sha256sum | cut -c1-12)"
BUILDAH=(buildah --root "$CACHE/storage" --runroot "$RUNROOT" --storage-driver vfs)
CTR=""
MNT=""

T0=$(date +%s)
# shellcheck source=firmware_images/lib/chroot.sh
. "$HERE/../lib/chroot.sh"
log() { printf '[image %4ds] %s\n' "$(($(date +%s) - T0))" "$*"; }
die() { log "FAIL: $*"; exit 1; }

stop_chroot_processes() { stop_processes_rooted_at "$MNT"; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$MNT" ]; then
        stop_chroot_processes
        # the mounts inside the container's root (its root itself is buildah's to release)
        for m in $(mounts_under "$MNT" | grep -vxF "$MNT"); do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
        done
        "${BUILDAH[@]}" umount "$CTR" >/dev/null 2>&1 || true
    fi
    if [ -n "$CTR" ]; then
        "${BUILDAH[@]}" rm "$CTR" >/dev/null 2>&1 || log "could not remove container $CTR"
    fi
    if [ "$rc" -eq 0 ]; then
        log "image check ($ARCH) PASSED in $(($(date +%s) - T0)) s"
    else
        log "image check ($ARCH) FAILED (exit $rc) after $(($(date +%s) - T0)) s"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and buildah's chroot isolation need it)"
case "$ARCH" in
    amd64 | arm64) ;;
    *) die "EDGE_IMAGE_ARCH must be amd64 or arm64, not $ARCH" ;;
esac
mkdir -p "$CACHE"

# -- 1. host tools -------------------------------------------------------------------------------
step=$(date +%s)
need=()
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
host_arch="$(dpkg --print-architecture 2>/dev/null || uname -m)"
if [ "$ARCH" != "$host_arch" ]; then
    [ "$ARCH" = arm64 ] || die "an $ARCH image on a $host_arch host is not supported"
    [ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
    command -v update-binfmts >/dev/null || need+=(binfmt-support)
fi
install_packages "${need[@]}"
if [ "$ARCH" != "$host_arch" ]; then
    enable_qemu_aarch64
    # buildah's chroot runs the image's binaries: only binfmt's F flag (interpreter opened at
    # registration) lets the kernel find qemu outside the container's root
    grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 ||
        die "binfmt handler qemu-aarch64 lacks the F (fix binary) flag: $(grep '^flags' /proc/sys/fs/binfmt_misc/qemu-aarch64)"
    log "binfmt: qemu-aarch64 enabled ($(grep '^flags' /proc/sys/fs/binfmt_misc/qemu-aarch64)), QEMU_CPU=$QEMU_CPU"
fi
log "host tools ready in $(($(date +%s) - step)) s: $(buildah --version)"

# -- 2. base image (cached) ---------------------------------------------------------------------
step=$(date +%s)
if [ "${EDGE_IMAGE_REFRESH:-0}" = 1 ]; then
    rm -f "$ROOTFS_TAR"
    "${BUILDAH[@]}" rmi --all --force >/dev/null 2>&1 || true
fi
if [ -s "$ROOTFS_TAR" ]; then
    log "base root file system: cached $ROOTFS_TAR"
else
    log "base root file system: debootstrap $SUITE $ARCH from $MIRROR (minutes, once)"
    debootstrap_tarball "$ARCH" "$PACKAGES" "$ROOTFS_TAR" "$CACHE/rootfs-build-$ARCH" "$CACHE/debootstrap-$ARCH.log"
    log "base root file system built and cached ($(du -h "$ROOTFS_TAR" | cut -f1))"
fi
digest="$(sha256sum "$ROOTFS_TAR" | cut -c1-16)"
have="$("${BUILDAH[@]}" inspect --type image --format '{{index .ImageAnnotations "org.edge-agent.rootfs"}}' "$BASE" 2>/dev/null || true)"
if [ "$have" != "$digest" ]; then
    log "importing the base into buildah storage as $BASE"
    ctr="$("${BUILDAH[@]}" from --arch "$ARCH" scratch)"
    "${BUILDAH[@]}" add "$ctr" "$ROOTFS_TAR" / >/dev/null
    "${BUILDAH[@]}" config --arch "$ARCH" --os linux \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
        --cmd python3 --annotation "org.edge-agent.rootfs=$digest" "$ctr"
    "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$BASE" >/dev/null
fi
probe="$("${BUILDAH[@]}" from --arch "$ARCH" --pull-never --quiet "$BASE")"
base_python="$("${BUILDAH[@]}" run --isolation chroot "$probe" -- python3 -V 2>&1 | tail -1)"
"${BUILDAH[@]}" rm "$probe" >/dev/null
log "base ready in $(($(date +%s) - step)) s: $BASE ($base_python)"

# -- 3. build -----------------------------------------------------------------------------------
step=$(date +%s)
build_opts=()
if [ -n "$CA_BUNDLE" ]; then
    [ -s "$CA_BUNDLE" ] || die "EDGE_IMAGE_CA_BUNDLE=$CA_BUNDLE is not a readable file"
    build_opts+=(--volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
    log "build: the CA bundle $CA_BUNDLE mounted for pip (build only, not in the image)"
fi
log "build: buildah bud $IMAGE from $BASE (--isolation chroot)"
# no --layers: with the vfs driver every cached step is a full copy of the root file system
# (about 19 GB and 2.5 times slower for this Dockerfile); each build starts from the base
in_background "${BUILDAH[@]}" bud --isolation chroot --format docker --pull=never \
    --arch "$ARCH" --ignorefile "$REPO/firmware_images/Dockerfile.dockerignore" \
    --build-arg "PYTHON_IMAGE=$BASE" "${build_opts[@]}" \
    -f "$REPO/firmware_images/Dockerfile" -t "$IMAGE" "$REPO" >"$CACHE/build-$ARCH.log" 2>&1 ||
    { tail -40 "$CACHE/build-$ARCH.log"; die "buildah bud failed (log: $CACHE/build-$ARCH.log)"; }
grep -E 'STEP [0-9]+/|Using cache' "$CACHE/build-$ARCH.log" | cut -c1-120 | sed 's/^/    /' || true
# the image this build replaced (now untagged) and nothing else
"${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
size="$("${BUILDAH[@]}" images --format '{{.Size}}' "$IMAGE" | head -1)"
log "built $IMAGE ($size) in $(($(date +%s) - step)) s"

# -- 4. run --------------------------------------------------------------------------------------
step=$(date +%s)
config="$("${BUILDAH[@]}" inspect --type image "$IMAGE" | python3 -c '
import json, sys
config = json.load(sys.stdin)["Docker"]["config"]
print(json.dumps((config.get("Healthcheck") or {}).get("Test")))
print(json.dumps(config.get("Entrypoint")))
print(json.dumps(config.get("Cmd")))
print(config.get("User") or "root")
print(config.get("WorkingDir") or "/")
print("\n".join(config.get("Env") or []))  # one VAR=value a line, last
')"
mapfile -t cfg <<<"$config"
health="${cfg[0]}" entrypoint="${cfg[1]}" command="${cfg[2]}" user="${cfg[3]}" workdir="${cfg[4]}"
image_env=("${cfg[@]:5}")
log "image config: HEALTHCHECK $health, ENTRYPOINT $entrypoint, CMD $command, USER $user, WORKDIR $workdir"
if [ "$health" = null ] || [ -z "$health" ]; then
    die "the image has no HEALTHCHECK (built without --format docker?)"
fi
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
CTR="$("${BUILDAH[@]}" from --arch "$ARCH" --pull-never --quiet "$IMAGE")"
"${BUILDAH[@]}" copy --quiet "$CTR" "$HERE/smoke.sh" /usr/local/share/edge-image-smoke.sh >/dev/null
smoke_env=(EDGE_PORT="$port" SMOKE_HEALTHCHECK="$health" SMOKE_ENTRYPOINT="$entrypoint" SMOKE_CMD="$command")
log "container $CTR ready in $(($(date +%s) - step)) s; running the smoke inside (gateway on 127.0.0.1:$port)"
step=$(date +%s)
if [ "$ARCH" = "$host_arch" ]; then
    # a container as `docker run` would start it: the image's user, environment and working
    # directory; the host's network (chroot isolation), so the gateway binds a free loopback port
    env_args=()
    for kv in "${smoke_env[@]}"; do env_args+=(--env "$kv"); done
    in_background "${BUILDAH[@]}" run --isolation chroot "${env_args[@]}" \
        "$CTR" -- /bin/sh /usr/local/share/edge-image-smoke.sh
else
    # Under qemu, buildah run always binds the host's /sys, and onnxruntime (cpuinfo) crashes
    # reading the host's CPU topology there ("qemu: uncaught target signal 11"). So the
    # container's root is mounted and entered with chroot as buildah run would, with the
    # image's user, environment and working directory, /proc, a minimal /dev and no /sys
    # (onnxruntime then warns that cpuinfo failed: expected).
    MNT="$("${BUILDAH[@]}" mount "$CTR")"
    mount -t proc proc "$MNT/proc"
    minimal_dev "$MNT" edge-image-dev
    mount -t tmpfs -o mode=1777,nosuid,size=256m edge-image-tmp "$MNT/tmp"
    uid="$(awk -F: -v u="$user" '$1 == u || $3 == u { print $3 ":" $4; exit }' "$MNT/etc/passwd")"
    [ -n "$uid" ] || die "user $user of the image is not in its /etc/passwd"
    # shellcheck disable=SC2016 # $1 is expanded by the inner sh
    in_background env -i "${image_env[@]}" HOME=/data QEMU_CPU="$QEMU_CPU" "${smoke_env[@]}" \
        chroot --userspec="$uid" "$MNT" /bin/sh -c 'cd "$1" && exec /bin/sh /usr/local/share/edge-image-smoke.sh' \
        sh "$workdir"
fi
log "smoke inside the $ARCH image passed in $(($(date +%s) - step)) s"
