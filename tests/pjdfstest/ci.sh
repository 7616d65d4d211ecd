#!/usr/bin/env bash
# CI entry point of the POSIX conformance harness: ext4 baseline, then a fresh
# standalone mafs mount of a sparse volume file, pjdfstest against it with
# the known-failures check, unmount, and (report only) mafs fsck.
#
# Usage (as root, from the repo root, after the workspace is built):
#   tests/pjdfstest/ci.sh
#
# Environment:
#   MAFS                 the mafs binary (default: target/release/mafs, then
#                        target/debug/mafs, then mafs on PATH)
#   MAFS_MOUNT_ARGS      extra arguments for `mafs mount` (e.g. FUSE options);
#                        default empty
#   PJDFSTEST_REQUIRE=1  fail (instead of skipping) when there is no mafs
#                        binary or it has no `mount` command yet
#   SKIP_EXT4=1          do not run the ext4 baseline
#   SKIP_INSTALL=1       do not run install-deps.sh
# Results: target/pjdfstest/results-{ext4,mafs}.tsv (+ .log).
# The last line printed is the mafs count "N passed, N failed, N skipped".
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
log() { printf '[pjdfstest-ci] %s\n' "$*" >&2; }
die() { printf '[pjdfstest-ci] ERROR: %s\n' "$*" >&2; exit 2; }

[[ $(id -u) -eq 0 ]] || die "must run as root (mount, user switching)"
[[ "${SKIP_INSTALL:-0}" == 1 ]] || "$here/install-deps.sh"

rc_ext4=0
if [[ "${SKIP_EXT4:-0}" != 1 ]]; then
    log "ext4 baseline"
    "$here/ext4-baseline.sh" || rc_ext4=$?
    ((rc_ext4 <= 1)) || die "ext4 baseline could not run (status $rc_ext4)"
fi

mafs="${MAFS:-}"
if [[ -z "$mafs" ]]; then
    for c in "$repo/target/release/mafs" "$repo/target/debug/mafs" "$(command -v mafs 2>/dev/null || true)"; do
        [[ -n "$c" && -x "$c" ]] && { mafs="$c"; break; }
    done
fi
skip_or_die() {
    if [[ "${PJDFSTEST_REQUIRE:-0}" == 1 ]]; then die "$1"; fi
    log "SKIPPED mafs run: $1"
    exit 0
}
[[ -n "$mafs" && -x "$mafs" ]] || skip_or_die "no mafs binary (build the workspace first)"
timeout 30 "$mafs" mount --help >/dev/null 2>&1 || skip_or_die "$mafs has no working 'mount' command yet"

work="$(mktemp -d "${TMPDIR:-/var/tmp}/mafs-pjdfstest-ci.XXXXXX")"
chmod 0755 "$work"
vol="$work/volume.img" mnt="$work/mnt" mount_pid=""
mkdir -p "$mnt"
cleanup() {
    local rc=$?
    if mountpoint -q "$mnt" 2>/dev/null; then
        timeout 30 umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    fi
    if [[ -n "$mount_pid" ]] && kill -0 "$mount_pid" 2>/dev/null; then
        kill "$mount_pid" 2>/dev/null || true
        sleep 1
        kill -9 "$mount_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "mkfs: $mafs mkfs $vol --size 4G"
timeout 120 "$mafs" mkfs "$vol" --size 4G
read -r -a extra <<< "${MAFS_MOUNT_ARGS:-}"
log "mount: $mafs mount $vol $mnt --standalone ${extra[*]}"
"$mafs" mount "$vol" "$mnt" --standalone "${extra[@]}" > "$work/mount.log" 2>&1 &
mount_pid=$!
for _ in $(seq 1 60); do
    mountpoint -q "$mnt" && break
    if ! kill -0 "$mount_pid" 2>/dev/null; then
        wait "$mount_pid" && mrc=0 || mrc=$?
        mountpoint -q "$mnt" && break  # a mount command that daemonizes
        cat "$work/mount.log" >&2
        die "mafs mount exited with status $mrc before the mount appeared"
    fi
    sleep 0.5
done
mountpoint -q "$mnt" || { cat "$work/mount.log" >&2; die "mafs mount did not appear within 30s"; }
chmod 0755 "$mnt"
log "mounted: $(findmnt -n -o SOURCE,FSTYPE,OPTIONS "$mnt" | tr -s ' ')"

rc=0
"$here/run.sh" "$mnt" --fs mafs --check-known "$here/known-failures-mafs.txt" > "$work/run.out" || rc=$?
mafs_counts="$(tail -n 1 "$work/run.out")"

log "unmounting"
timeout 60 umount "$mnt" || { log "umount failed; lazy unmount"; umount -l "$mnt"; rc=1; }
if [[ -n "$mount_pid" ]]; then
    for _ in $(seq 1 60); do kill -0 "$mount_pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$mount_pid" 2>/dev/null && log "WARNING: mafs mount process still running after umount"
fi
if timeout 30 "$mafs" fsck --help >/dev/null 2>&1; then
    if timeout 300 "$mafs" fsck "$vol" >&2; then
        log "fsck after pjdfstest: clean"
    else
        log "fsck after pjdfstest: NOT clean (status $?)"
        rc=1
    fi
fi

if [[ "${SKIP_EXT4:-0}" != 1 ]]; then
    log "ext4 baseline: $(awk -F'\t' '!/^#/ {c[$2]++} END {printf "%d passed, %d failed, %d skipped", c["pass"], c["fail"], c["skip"]}' \
        "$repo/target/pjdfstest/results-ext4.tsv")"
fi
echo "pjdfstest-mafs: $mafs_counts"
exit "$rc"
