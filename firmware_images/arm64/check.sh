#!/usr/bin/env bash
# arm64 check: the agent installed from aarch64 wheels and run on Debian bookworm
# arm64 under qemu-user emulation (binfmt), fully offline inside the chroot.
#
#   sudo firmware_images/arm64/check.sh            # from the repository root, as root
#
# Steps (each prints its time):
#   1. host tools: debootstrap, qemu-user-static, binfmt-support (apt-get if missing);
#      binfmt_misc mounted and qemu-aarch64 enabled
#   2. root file system: Debian bookworm arm64 (minbase + python3, python3-venv) built
#      once with debootstrap and cached as a tarball in $EDGE_ARM64_CACHE
#   3. wheels: the runtime dependencies of pyproject.toml downloaded on the host for
#      the aarch64 manylinux tags (cached, keyed by the dependency list), plus the
#      project's own pure-Python wheel built from this checkout
#   4. a fresh copy of the root file system, /proc and a minimal /dev mounted (never
#      the host's /sys: onnxruntime crashes under qemu when it reads it), wheels and
#      bundled models copied in, then smoke.sh run inside with QEMU_CPU=cortex-a76
#   5. mounts removed and the copy deleted, on success and on failure alike
#
# Environment:
#   EDGE_ARM64_CACHE   cache directory     (default /var/cache/edge-agent-arm64)
#   EDGE_ARM64_WORK    work directory      (default /var/tmp/edge-agent-arm64)
#   DEBIAN_MIRROR      bookworm mirror     (default http://deb.debian.org/debian)
#   QEMU_CPU           emulated CPU        (default cortex-a76, the Pi 5's core; qemu's
#                                           default CPU exposes SVE and numpy then raises
#                                           spurious floating-point warnings)
#   EDGE_ARM64_KEEP=1  keep the root file system copy after the run (debugging)
#   EDGE_ARM64_REFRESH=1  rebuild the cached root file system and wheels
#
# Cost on a 2-vCPU x86_64 host: about 5 minutes the first time (debootstrap: 3-4), about
# 1.5 minutes with the cache (see firmware_images/README.md).
# Exit status: 0 when every smoke step passed, non-zero otherwise.
set -Eeuo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${EDGE_ARM64_CACHE:-/var/cache/edge-agent-arm64}"
WORK="${EDGE_ARM64_WORK:-/var/tmp/edge-agent-arm64}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
export QEMU_CPU="${QEMU_CPU:-cortex-a76}"
ROOTFS_TAR="$CACHE/$SUITE-arm64-minbase-py311.tar.gz"
ROOT="$WORK/root"
PLATFORMS=(manylinux2014_aarch64 manylinux_2_17_aarch64 manylinux_2_28_aarch64)

T0=$(date +%s)
# shellcheck source=firmware_images/lib/chroot.sh
. "$HERE/../lib/chroot.sh"
log() { printf '[arm64 %4ds] %s\n' "$(($(date +%s) - T0))" "$*"; }
die() { log "FAIL: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot and mount need it)"
[ "$(uname -m)" = x86_64 ] || [ "$(uname -m)" = aarch64 ] || die "unsupported host $(uname -m)"

release_mounts() { release_mounts_under "$ROOT"; }
stop_chroot_processes() { stop_processes_rooted_at "$ROOT"; }

remove_root() {
    stop_chroot_processes
    release_mounts || die "refusing to delete $ROOT while something is mounted there"
    rm -rf --one-file-system "$ROOT"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -d "$ROOT" ]; then
        stop_chroot_processes
        release_mounts || true
        if [ "${EDGE_ARM64_KEEP:-0}" = 1 ]; then
            log "kept $ROOT (EDGE_ARM64_KEEP=1)"
        elif [ -z "$(mounts_under "$ROOT")" ]; then
            rm -rf --one-file-system "$ROOT"
        fi
    fi
    if [ "$rc" -eq 0 ]; then
        log "arm64 check PASSED in $(($(date +%s) - T0)) s"
    else
        log "arm64 check FAILED (exit $rc) after $(($(date +%s) - T0)) s"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$CACHE" "$WORK"
# a previous run that was killed may have left its copy (and mounts) behind
[ -e "$ROOT" ] && { log "removing the copy left by an earlier run"; remove_root; }

# -- 1. host tools and binfmt ------------------------------------------------------------------
step=$(date +%s)
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
[ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
command -v update-binfmts >/dev/null || need+=(binfmt-support)
install_packages "${need[@]}"
if [ "$(uname -m)" = x86_64 ]; then
    enable_qemu_aarch64
    INTERP="$(awk '/^interpreter/ { print $2 }' /proc/sys/fs/binfmt_misc/qemu-aarch64)"
    log "binfmt: qemu-aarch64 enabled ($INTERP, flags: $(awk '/^flags/ { print $2 }' /proc/sys/fs/binfmt_misc/qemu-aarch64)), QEMU_CPU=$QEMU_CPU"
else
    INTERP=""
    log "host is aarch64: no emulation needed"
fi
log "host tools ready in $(($(date +%s) - step)) s"

# -- 2. root file system (cached) ----------------------------------------------------------------
step=$(date +%s)
[ "${EDGE_ARM64_REFRESH:-0}" = 1 ] && rm -f "$ROOTFS_TAR"
if [ -s "$ROOTFS_TAR" ]; then
    log "root file system: cached $ROOTFS_TAR"
else
    log "root file system: debootstrap $SUITE arm64 from $MIRROR (several minutes, once)"
    debootstrap_tarball arm64 python3,python3-venv "$ROOTFS_TAR" "$WORK/rootfs-build" "$WORK/debootstrap.log"
    log "root file system built and cached ($(du -h "$ROOTFS_TAR" | cut -f1)) in $(($(date +%s) - step)) s"
fi

# -- 3. wheels -----------------------------------------------------------------------------------
step=$(date +%s)
PY="$REPO/.venv/bin/python"
[ -x "$PY" ] || PY="$(command -v python3)"
"$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip (create the venv: make setup)"
mapfile -t DEPS < <("$PY" - "$REPO/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
EOF
)
key="$(printf '%s\n' "${DEPS[@]}" "${PLATFORMS[@]}" cp311 | sha256sum | cut -c1-16)"
WHEELS="$CACHE/wheels-$key"
[ "${EDGE_ARM64_REFRESH:-0}" = 1 ] && rm -rf "$WHEELS"
if [ -e "$WHEELS/.complete" ]; then
    cached=("$WHEELS"/*.whl)
    log "wheels: cached $WHEELS (${#cached[@]} files)"
else
    rm -rf "$WHEELS" && mkdir -p "$WHEELS.tmp"
    plat=(); for p in "${PLATFORMS[@]}"; do plat+=(--platform "$p"); done
    log "wheels: pip download ${#DEPS[@]} runtime dependencies for aarch64"
    "$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
        --python-version 3.11 --implementation cp "${plat[@]}" -d "$WHEELS.tmp" "${DEPS[@]}" ||
        die "an aarch64 wheel is missing for a runtime dependency"
    touch "$WHEELS.tmp/.complete" && mv "$WHEELS.tmp" "$WHEELS"
fi
PROJECT_WHEELS="$WORK/project-wheel"
rm -rf "$PROJECT_WHEELS" && mkdir -p "$PROJECT_WHEELS"
# offline when the host's setuptools can build wheels itself, else in pip's isolated build env
build_opts=()
"$PY" - <<'EOF' 2>/dev/null && build_opts=(--no-build-isolation)
import importlib.util, setuptools
ok = importlib.util.find_spec("wheel") or tuple(int(x) for x in setuptools.__version__.split(".")[:2]) >= (70, 1)
raise SystemExit(0 if ok else 1)
EOF
# from a copy of the sources: setuptools writes build/ and *.egg-info next to them
SRC="$WORK/project-src"
rm -rf "$SRC" && mkdir -p "$SRC"
(cd "$REPO" && tar --exclude=__pycache__ -cf - pyproject.toml README.md edge_agent cloud_sync) | tar -C "$SRC" -xf -
"$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps "${build_opts[@]}" \
    -w "$PROJECT_WHEELS" "$SRC" >"$WORK/project-wheel.log" 2>&1 ||
    { grep -v 'WARNING: Location' "$WORK/project-wheel.log" | tail -20; die "building the project wheel failed"; }
rm -rf "$SRC"
log "wheels ready in $(($(date +%s) - step)) s: $(ls "$PROJECT_WHEELS")"

# -- 4. the run --------------------------------------------------------------------------------
step=$(date +%s)
mkdir -p "$ROOT"
tar -C "$ROOT" --numeric-owner -xzf "$ROOTFS_TAR"
if [ -n "$INTERP" ] && [ ! -x "$ROOT$INTERP" ]; then
    # without binfmt's F flag the interpreter must exist inside the chroot
    mkdir -p "$ROOT$(dirname "$INTERP")" && cp /usr/bin/qemu-aarch64-static "$ROOT$INTERP"
fi
mkdir -p "$ROOT/wheels" "$ROOT/opt/edge-agent/models" "$ROOT/smoke"
cp "$WHEELS"/*.whl "$PROJECT_WHEELS"/*.whl "$ROOT/wheels/"
(cd "$REPO/models" && tar --exclude=scripts --exclude=__pycache__ -cf - .) | tar -C "$ROOT/opt/edge-agent/models" -xf -
cp "$HERE/smoke.sh" "$ROOT/smoke/smoke.sh"

mount -t proc proc "$ROOT/proc"
minimal_dev "$ROOT" edge-arm64-dev
mount -t tmpfs -o mode=1777,nosuid,size=256m edge-arm64-tmp "$ROOT/tmp"
log "chroot ready in $(($(date +%s) - step)) s; running the smoke inside"

step=$(date +%s)
in_background env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 QEMU_CPU="$QEMU_CPU" SMOKE_PORT="${SMOKE_PORT:-18080}" \
    chroot "$ROOT" /bin/sh /smoke/smoke.sh
log "smoke inside the arm64 chroot passed in $(($(date +%s) - step)) s"
