#!/usr/bin/env bash
# Recovery time of a killed node (issue 12), with the default lease, REPS times:
# `mafs cluster up` with two nodes; node1 changes files and fsyncs (so it holds their locks
# with a journal to replay); kill -9 of node1; then node2 writes that file. Prints the time from the
# kill to node2's write returning, broken down from node2's log: until the survivor started
# the recovery (lockd's expiry of the lease + the survivors' poll), the recovery itself (replay
# + CompleteRecovery, as node2 logs it), and from there to the write's return (lockd's grant).
# Usage (as root): bench/recovery-bench.sh      Environment: WORK, REPS=5, NOBUILD=1
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-/var/tmp/mafs-recovery-bench}"
REPS="${REPS:-5}"
MAFS="$REPO/target/release/mafs"
[ "$(id -u)" = 0 ] || { echo "recovery-bench.sh: run as root" >&2; exit 1; }
[ "${NOBUILD:-0}" = 1 ] || (cd "$REPO" && cargo build --release -p mafs-cli)
C="$WORK/cluster"
trap '"$MAFS" cluster down --dir "$C" >/dev/null 2>&1 || true' EXIT
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# A log line's timestamp (tracing's RFC 3339, UTC) in seconds since the epoch.
stamp() { date -d "$(cut -c1-27 <<<"$1")" +%s.%N; }
mkdir -p "$WORK"; : > "$WORK/total"; : > "$WORK/detect"; : > "$WORK/recover"; : > "$WORK/grant"
for r in $(seq "$REPS"); do
    "$MAFS" cluster down --dir "$C" >/dev/null 2>&1 || true
    rm -rf "$C"; "$MAFS" cluster up --dir "$C" --nodes 2 --size 1G >/dev/null
    head -c 1M /dev/urandom > "$C/node1/f"
    for i in $(seq 50); do echo "$i" > "$C/node1/small$i"; done
    sync "$C/node1/f"   # committed to node1's journal, not yet all written home: a replay's work
    victim=$(awk '$1 == "node" && $3 ~ /node1$/ {print $2}' "$C/cluster.state")
    t0=$(date +%s.%N)
    kill -9 "$victim"
    echo "after the recovery" > "$C/node2/f"
    t1=$(date +%s.%N)
    umount -l "$C/node1" 2>/dev/null || true
    log="$C/logs/node2.log"
    started=$(grep -m1 "recovering its slot" "$log")
    done_line=$(grep -m1 "recovered slot" "$log")
    ts=$(stamp "$started"); td=$(stamp "$done_line")
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b - a}' >> "$WORK/total"
    awk -v a="$t0" -v b="$ts" 'BEGIN {printf "%.3f\n", b - a}' >> "$WORK/detect"
    awk -v a="$ts" -v b="$td" 'BEGIN {printf "%.3f\n", b - a}' >> "$WORK/recover"
    awk -v a="$td" -v b="$t1" 'BEGIN {printf "%.3f\n", b - a}' >> "$WORK/grant"
    echo "run $r: total $(tail -1 "$WORK/total") s (until recovery starts $(tail -1 "$WORK/detect") s, recovery $(tail -1 "$WORK/recover") s, then $(tail -1 "$WORK/grant") s); $(sed 's/.*recovered slot/recovered slot/' <<<"$done_line")"
done
echo "median of $REPS: total $(median < "$WORK/total") s = until the recovery starts $(median < "$WORK/detect") s + recovery $(median < "$WORK/recover") s + to the write's return $(median < "$WORK/grant") s"
echo "all totals: $(tr '\n' ' ' < "$WORK/total")"
