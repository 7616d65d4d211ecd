#!/usr/bin/env bash
# Small-file phases (create, stat, warm stat, unlink) of two mafs builds side by side in one run:
# each build mounts its own volume file (standalone), the two are alternated every repetition,
# and the medians and the ratio after/before are printed (and written to $WORK/summary.md).
# Used to show that a change (a refactor, say) costs no speed.
#
# Usage (as root): bench/compare-builds.sh BEFORE_REV [AFTER_REV]
#   BEFORE_REV, AFTER_REV  git revisions (AFTER defaults to the working tree); each is built in
#                          its own worktree under $WORK (release), or give MAFS_BEFORE/MAFS_AFTER
#                          as paths to ready binaries.
# Environment: WORK=/var/tmp/mafs-compare  REPS=7  FILES=10000  VOL_SIZE=2G
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-/var/tmp/mafs-compare}"
REPS="${REPS:-7}"
FILES="${FILES:-10000}"
VOL_SIZE="${VOL_SIZE:-2G}"
[ "$(id -u)" = 0 ] || { echo "compare-builds.sh: run as root (FUSE mounts)" >&2; exit 1; }
[ $# -ge 1 ] || [ -n "${MAFS_BEFORE:-}" ] || { sed -n 2,11p "$0" >&2; exit 2; }
mkdir -p "$WORK"

build_rev() { # REV NAME -> prints the binary's path
    local wt="$WORK/src-$2"
    rm -rf "$wt"; git -C "$REPO" worktree prune
    git -C "$REPO" worktree add --detach "$wt" "$1" >/dev/null 2>&1
    (cd "$wt" && CARGO_TARGET_DIR="$WORK/target-$2" cargo build --release -q --bin mafs >&2)
    git -C "$REPO" worktree remove --force "$wt" >/dev/null 2>&1 || true
    echo "$WORK/target-$2/release/mafs"
}

(cd "$REPO" && cargo build --release -q -p mafs-bench --bin smallfiles)
SMALLFILES="$REPO/target/release/smallfiles"
BEFORE="${MAFS_BEFORE:-$(build_rev "$1" before)}"
if [ -n "${MAFS_AFTER:-}" ]; then
    AFTER="$MAFS_AFTER"
elif [ $# -ge 2 ]; then
    AFTER="$(build_rev "$2" after)"
else
    (cd "$REPO" && cargo build --release -q --bin mafs)
    AFTER="$REPO/target/release/mafs"
fi

RES="$WORK/results"; rm -rf "$RES"; mkdir -p "$RES"
PIDS=()
cleanup() {
    set +e
    for n in before after; do mountpoint -q "$WORK/$n.mnt" && umount "$WORK/$n.mnt"; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
}
trap cleanup EXIT
for n in before after; do
    bin=$([ $n = before ] && echo "$BEFORE" || echo "$AFTER")
    mkdir -p "$WORK/$n.mnt"; rm -f "$WORK/$n.vol"
    "$bin" mkfs "$WORK/$n.vol" --size "$VOL_SIZE" >/dev/null
    "$bin" mount "$WORK/$n.vol" "$WORK/$n.mnt" --standalone >"$WORK/$n.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do mountpoint -q "$WORK/$n.mnt" && break; sleep 0.1; done
    mountpoint -q "$WORK/$n.mnt" || { echo "$n build did not mount; see $WORK/$n.log" >&2; exit 1; }
done

for rep in $(seq "$REPS"); do
    order="before after"; [ $((rep % 2)) = 0 ] && order="after before"
    for n in $order; do
        sync; echo 3 >/proc/sys/vm/drop_caches
        "$SMALLFILES" "$WORK/$n.mnt" --files "$FILES" --json --label "$n" >"$RES/$n.$rep.json"
    done
done

{
    echo "# compare-builds: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
    echo "before: ${1:-$BEFORE}   after: ${2:-working tree}   reps: $REPS (alternated), files: $FILES"
    echo
} | tee "$WORK/summary.md"
python3 - "$RES" <<'EOF' | tee -a "$WORK/summary.md"
import json, glob, statistics, sys
res = sys.argv[1]
runs = {n: [json.load(open(f)) for f in sorted(glob.glob(f"{res}/{n}.*.json"))] for n in ("before", "after")}
print("| phase | before ops/s (median) | after ops/s (median) | after/before |")
print("|---|---|---|---|")
for phase in ("create", "stat", "warmstat", "unlink"):
    b = statistics.median(r[phase]["ops_per_sec"] for r in runs["before"])
    a = statistics.median(r[phase]["ops_per_sec"] for r in runs["after"])
    print(f"| {phase} | {b:,.0f} | {a:,.0f} | {a / b:.2f} |")
EOF
