# Shared steps of the root checks (arm64/check.sh, image/check.sh): sourced, not run.
# The caller defines log and die (its own prefix) and runs as root.
# shellcheck shell=bash

# bash runs a trap only once the foreground command ends: long steps run in the
# background and are waited for, so Ctrl-C or SIGTERM cleans up at once
in_background() {
    "$@" &
    wait "$!"
}

# every mount point at or below $1, deepest first
mounts_under() {
    awk -v p="$1" '$2 == p || index($2, p "/") == 1 { print $2 }' /proc/self/mounts | sort -r
}

# unmount everything at or below $1 (lazily when busy); fails when something is left
release_mounts_under() {
    local m
    for m in $(mounts_under "$1"); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    if [ -n "$(mounts_under "$1")" ]; then
        log "still mounted under $1: $(mounts_under "$1" | tr '\n' ' ')"
        return 1
    fi
}

# processes whose root directory is $1 are a smoke's own (one left by an interrupted run)
stop_processes_rooted_at() {
    local p pids=()
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$1" ] && pids+=("${p#/proc/}")
    done
    [ "${#pids[@]}" -eq 0 ] && return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    sleep 2
    kill -KILL "${pids[@]}" 2>/dev/null || true
}

# apt-get install the Debian packages named (nothing when none)
install_packages() {
    [ "$#" -gt 0 ] || return 0
    log "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# binfmt_misc mounted and qemu-user's aarch64 handler registered and enabled
enable_qemu_aarch64() {
    [ -e /proc/sys/fs/binfmt_misc/status ] ||
        mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc ||
        die "cannot mount binfmt_misc"
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --import qemu-aarch64 >/dev/null 2>&1 || true
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null ||
        die "binfmt handler qemu-aarch64 is not enabled (update-binfmts --enable qemu-aarch64)"
}

# a minimal /dev of our own in root $1 (a tmpfs named $2): the host's /dev and /sys stay out
minimal_dev() {
    local root="$1" name="$2" node
    mount -t tmpfs -o mode=0755,nosuid,size=64m "$name" "$root/dev"
    for node in "null c 1 3" "zero c 1 5" "full c 1 7" "random c 1 8" "urandom c 1 9" "tty c 5 0"; do
        # shellcheck disable=SC2086 # split "name type major minor" on purpose
        set -- $node
        mknod -m 0666 "$root/dev/$1" "$2" "$3" "$4"
    done
    mkdir -p "$root/dev/shm" "$root/dev/pts"
    ln -s /proc/self/fd "$root/dev/fd"
    ln -s /proc/self/fd/0 "$root/dev/stdin"
    ln -s /proc/self/fd/1 "$root/dev/stdout"
    ln -s /proc/self/fd/2 "$root/dev/stderr"
}

# Debian $SUITE minbase for arch $1 with packages $2 (comma list) from $MIRROR, built in
# directory $4 (log $5) and packed as the tarball $3; nothing is kept but the tarball
debootstrap_tarball() {
    local arch="$1" packages="$2" tarball="$3" build="$4" logfile="$5"
    release_mounts_under "$build" || die "mounts left under $build"
    rm -rf --one-file-system "$build"
    in_background debootstrap --arch="$arch" --variant=minbase --include="$packages" \
        "$SUITE" "$build" "$MIRROR" >"$logfile" 2>&1 ||
        { tail -20 "$logfile"; release_mounts_under "$build" || true; die "debootstrap failed (log: $logfile)"; }
    # debootstrap may leave /proc or /sys mounted in the new root
    release_mounts_under "$build" || die "debootstrap left mounts under $build"
    chroot "$build" apt-get clean
    rm -rf "$build"/var/lib/apt/lists/* "$build"/var/cache/apt/*.bin "$build"/var/log/*.log
    tar -C "$build" --numeric-owner -czf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf --one-file-system "$build"
}
