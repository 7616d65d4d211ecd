#!/usr/bin/env bash
# pjdfstest baseline on ext4: make a sparse image file, mkfs.ext4 it, loop-mount
# it, run tests/pjdfstest/run.sh on it with the same config as mafs, print the
# counts, then unmount and remove everything (also on failure or Ctrl-C).
#
# Usage (as root, from anywhere):
#   tests/pjdfstest/ext4-baseline.sh [--size SIZE] [--out FILE] [run.sh options...]
#
#   --size SIZE   image size for truncate(1) (default 1G; sparse, costs ~40 MiB)
#   --out FILE    result file (default: target/pjdfstest/results-ext4.tsv)
# Every other option (e.g. --no-remount, --timeout) is passed to run.sh.
# The image lives in a temporary directory under $TMPDIR (default /var/tmp,
# a real disk, not tmpfs).
#
# Exit status: run.sh's (0 = no test failed, 1 = some failed; the baseline is
# expected to have a few failures, see docs/pjdfstest.md), 2 on a set-up error.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

log() { printf '[ext4-baseline] %s\n' "$*" >&2; }
die() { printf '[ext4-baseline] ERROR: %s\n' "$*" >&2; exit 2; }

size=1G
out="$repo/target/pjdfstest/results-ext4.tsv"
pass=()
while (($#)); do
    case "$1" in
        --size) size="${2:?--size needs a value}"; shift 2 ;;
        --out) out="${2:?--out needs a value}"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) pass+=("$1"); shift ;;
    esac
done

[[ $(id -u) -eq 0 ]] || die "must run as root (mount -o loop)"
for t in mkfs.ext4 losetup mount umount truncate; do
    command -v "$t" >/dev/null || die "$t not found: run tests/pjdfstest/install-deps.sh"
done

work="$(mktemp -d "${TMPDIR:-/var/tmp}/mafs-ext4-baseline.XXXXXX")"
img="$work/ext4.img"
mnt="$work/mnt"
mounted=0
cleanup() {
    local rc=$?
    if ((mounted)); then
        umount "$mnt" 2>/dev/null || { sleep 1; umount "$mnt" 2>/dev/null; } || umount -l "$mnt" 2>/dev/null || true
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The dummy users must be able to reach the mount point.
chmod 0755 "$work"
mkdir -p "$mnt"
truncate -s "$size" "$img"
log "mkfs.ext4 on sparse $size image $img"
mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 "$img"
mount -o loop "$img" "$mnt"
mounted=1
chmod 0755 "$mnt"
log "mounted $(findmnt -n -o SOURCE,FSTYPE,OPTIONS "$mnt" | tr -s ' ')"

set +e
"$here/run.sh" "$mnt" --fs ext4 --out "$out" "${pass[@]}"
rc=$?
set -e
((rc <= 1)) || die "run.sh failed with status $rc"
exit "$rc"
