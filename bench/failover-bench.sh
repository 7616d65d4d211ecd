#!/usr/bin/env bash
# The two failure timings issue 12 asks for beside the recovery of a killed node
# (bench/recovery-bench.sh), REPS times each:
#  (1) a lockd election under load: `mafs cluster up` with 3 lockd replicas and 2 nodes that
#      change each other's directories all the time (every change a lock hand-over); kill -9
#      of the lockd leader; the time until another replica reports itself leader, and the longest
#      pause between two completed changes on either node around it (what applications feel);
#  (2) the replay of a full journal: a standalone volume (32 MiB journal per slot) whose mount
#      creates files and fsyncs them until its journal has wrapped, then kill -9; the next mount
#      replays it and logs how many transactions and blocks, and how long that took.
# Usage (as root): bench/failover-bench.sh      Environment: WORK, REPS=5, NOBUILD=1
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-/var/tmp/mafs-failover-bench}"
REPS="${REPS:-5}"
MAFS="$REPO/target/release/mafs"
[ "$(id -u)" = 0 ] || { echo "failover-bench.sh: run as root" >&2; exit 1; }
[ "${NOBUILD:-0}" = 1 ] || (cd "$REPO" && cargo build --release -p mafs-cli)
C="$WORK/cluster"; S="$WORK/standalone"
loads=()
cleanup() {
    for p in "${loads[@]}"; do kill "$p" 2>/dev/null || true; done
    "$MAFS" cluster down --dir "$C" >/dev/null 2>&1 || true
    mountpoint -q "$S/mnt" 2>/dev/null && umount -l "$S/mnt"
    true
}
trap cleanup EXIT
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
now() { date +%s.%N; }
mkdir -p "$WORK"; : > "$WORK/elect"; : > "$WORK/pause"; : > "$WORK/replay_ms"; : > "$WORK/replay_blocks"

# A node's load: one change in its own directory and one in the other's, each completion time
# appended to $3 (nanoseconds since the epoch).
load() {
    local mine=$1 theirs=$2 out=$3 i=0
    while true; do
        echo "$i" > "$mine/a$((i % 200))"
        echo "$i" > "$theirs/b-$(basename "$mine")"
        date +%s%N >> "$out"
        i=$((i + 1))
    done
}

echo "== (1) lockd leader killed under load"
for r in $(seq "$REPS"); do
    "$MAFS" cluster down --dir "$C" >/dev/null 2>&1 || true
    rm -rf "$C"; "$MAFS" cluster up --dir "$C" --nodes 2 --replicas 3 --size 1G >/dev/null
    endpoints=$(awk '/^lockd/ {print $3}' "$C/cluster.state" | paste -sd,)
    mkdir "$C/node1/d1" "$C/node1/d2"
    : > "$WORK/ops1"; : > "$WORK/ops2"
    load "$C/node1/d1" "$C/node1/d2" "$WORK/ops1" & loads=($!)
    load "$C/node2/d2" "$C/node2/d1" "$WORK/ops2" & loads+=($!)
    sleep 3
    leader=$("$MAFS" lockd status --endpoints "$endpoints" | awk '/^leader:/ {print $2; exit}')
    pid=$(awk '/^lockd/ {print $2}' "$C/cluster.state" | sed -n "${leader}p")
    others=$(awk '/^lockd/ {print $3}' "$C/cluster.state" | sed "${leader}d" | paste -sd,)
    t0=$(now); t0ns=$(date +%s%N)
    kill -9 "$pid"
    until "$MAFS" lockd status --endpoints "$others" 2>/dev/null | awk -v old="$leader" '/^leader:/ && $2 != old {found=1} END {exit !found}'; do
        sleep 0.02
    done
    t1=$(now)
    sleep 4
    for p in "${loads[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    loads=()
    # The longest gap between completed changes (either node) from 1 s before the kill on.
    pause=$(cat "$WORK/ops1" "$WORK/ops2" | sort -n | awk -v from=$((t0ns - 1000000000)) '$1 >= from { if (prev) { g = $1 - prev; if (g > max) max = g } prev = $1 } END {printf "%.3f\n", max / 1e9}')
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b - a}' >> "$WORK/elect"
    echo "$pause" >> "$WORK/pause"
    lost=$(cat "$C"/logs/node*.log | grep -c "session lost\|fenced" || true)
    echo "run $r: replica $leader killed; new leader after $(tail -1 "$WORK/elect") s; longest pause between changes $pause s; $(wc -l < "$WORK/ops1") + $(wc -l < "$WORK/ops2") changes; node log lines about lost sessions or fencing: $lost"
done
"$MAFS" cluster down --dir "$C" >/dev/null 2>&1 || true
echo "median of $REPS: new leader after $(median < "$WORK/elect") s; longest pause $(median < "$WORK/pause") s (all: $(tr '\n' ' ' < "$WORK/pause"))"

echo "== (2) replay of a full journal"
for r in $(seq "$REPS"); do
    mountpoint -q "$S/mnt" 2>/dev/null && umount -l "$S/mnt"
    rm -rf "$S"; mkdir -p "$S/mnt"
    "$MAFS" mkfs "$S/vol" --size 2G --slots 1 >/dev/null
    MAFS_LOG=info "$MAFS" mount "$S/vol" "$S/mnt" --standalone > "$S/mount1.log" 2>&1 &
    m=$!
    until mountpoint -q "$S/mnt"; do sleep 0.05; done
    # 200 new files, then fsync: a transaction of a few hundred blocks; 60 of them wrap a 32 MiB
    # ring (8,192 blocks) about twice.
    for j in $(seq 60); do
        mkdir "$S/mnt/d$j"
        for i in $(seq 200); do : > "$S/mnt/d$j/f$i"; done
        sync "$S/mnt/d$j"
    done
    kill -9 "$m"; wait "$m" 2>/dev/null || true
    umount -l "$S/mnt" 2>/dev/null || true
    MAFS_LOG=info "$MAFS" mount "$S/vol" "$S/mnt" --standalone > "$S/mount2.log" 2>&1 &
    m=$!
    until mountpoint -q "$S/mnt"; do sleep 0.05; done
    line=$(grep -m1 "replayed" "$S/mount2.log" || echo "replayed nothing")
    umount "$S/mnt"; wait "$m" || true
    # "replayed N journal transactions (B blocks) in T" (T as Rust prints a Duration).
    blocks=$(sed -n 's/.*(\([0-9]*\) blocks).*/\1/p' <<<"$line")
    ms=$(sed -n 's/.* in \([0-9.]*\)\(ms\|s\|µs\)$/\1 \2/p' <<<"$line" | awk '{print ($2 == "s") ? $1 * 1000 : ($2 == "µs") ? $1 / 1000 : $1}')
    echo "${ms:-0}" >> "$WORK/replay_ms"; echo "${blocks:-0}" >> "$WORK/replay_blocks"
    echo "run $r: ${line#*INFO }"
done
ms=$(median < "$WORK/replay_ms"); blocks=$(median < "$WORK/replay_blocks")
echo "median of $REPS: $blocks blocks replayed in $ms ms = $(awk -v b="$blocks" -v m="$ms" 'BEGIN {printf "%.0f", b * 4096 / 1048576 / (m / 1000)}') MiB/s"
