#!/usr/bin/env bash
# pjdfstest on one node of a two-node mafs cluster (`mafs cluster up`): the POSIX behaviour a
# standalone mount has must hold for a cluster node too (issue 11), with the same known gaps
# (known-failures-mafs.txt). The other node stays mounted throughout, so the volume lock moves
# between nodes whenever it looks at the tree; then both unmount and fsck must be clean.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
mafs="${MAFS:-$repo/target/release/mafs}"
log() { printf '[pjdfstest-cluster] %s\n' "$*" >&2; }
[[ $(id -u) -eq 0 ]] || { log "must run as root"; exit 2; }
work="$(mktemp -d "${TMPDIR:-/var/tmp}/mafs-pjdfstest-cluster.XXXXXX")"
chmod 0755 "$work"
cleanup() {
    local rc=$?
    timeout 120 "$mafs" cluster down --dir "$work" >/dev/null 2>&1 || true
    for n in 1 2; do mountpoint -q "$work/node$n" 2>/dev/null && umount -l "$work/node$n"; done
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
log "cluster up: $mafs cluster up --dir $work --nodes 2 --size 4G"
timeout 120 "$mafs" cluster up --dir "$work" --nodes 2 --size 4G >&2
chmod 0755 "$work/node1"
# The other node looks at what the tests make, taking the volume lock from node1 now and then.
( while mountpoint -q "$work/node2"; do ls -laR "$work/node2" >/dev/null 2>&1 || true; sleep 0.5; done ) &
watcher=$!
rc=0
"$here/run.sh" "$work/node1" --fs mafs --out "$repo/target/pjdfstest/results-mafs-cluster-node.tsv" --check-known "$here/known-failures-mafs.txt" > "$work/run.out" || rc=$?
kill "$watcher" 2>/dev/null || true
counts="$(tail -n 1 "$work/run.out")"
log "cluster down"
timeout 120 "$mafs" cluster down --dir "$work" >&2 || rc=1
if timeout 300 "$mafs" fsck "$work/volume.mafs" >&2; then
    log "fsck after pjdfstest on a cluster node: clean"
else
    log "fsck after pjdfstest on a cluster node: NOT clean"
    rc=1
fi
echo "pjdfstest-mafs-cluster-node: $counts"
exit "$rc"
