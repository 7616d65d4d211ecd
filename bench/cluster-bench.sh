#!/usr/bin/env bash
# Cluster-mode benchmark of issue 11, side by side in one run (medians of REPS repetitions):
#  (a) one node in cluster mode vs a standalone mount of the same kind of volume: small files
#      (create/stat/warmstat/unlink) and fio (sequential write and read, 4 KiB random read),
#      with the lockd commands the cluster node made (raft commit index before/after); also a
#      standalone mount with --direct-io (device I/O bypassing the host page cache, as a
#      cluster node's does), which separates what locks cost from what the page cache gives;
#  (b) 1, 2 and 3 nodes each creating small files in their own directory at once: aggregate rate;
#  (c) two nodes taking turns on one file (one O_APPEND write each, alternately): operations and
#      lock hand-overs per second, i.e. what a revocation costs;
#  (d) 1-3 nodes creating files in one shared directory at once.
# Usage (as root): bench/cluster-bench.sh      Environment: WORK, REPS=3, FILES=3000, NOBUILD=1
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-/var/tmp/mafs-cluster-bench}"
REPS="${REPS:-3}"
FILES="${FILES:-3000}"
MAFS="$REPO/target/release/mafs"
SMALLFILES="$REPO/target/release/smallfiles"
[ "$(id -u)" = 0 ] || { echo "cluster-bench.sh: run as root" >&2; exit 1; }
command -v fio >/dev/null || { apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q fio >/dev/null; }
[ "${NOBUILD:-0}" = 1 ] || (cd "$REPO" && cargo build --release -p mafs-cli -p mafs-bench)
mkdir -p "$WORK"; RES="$WORK/results"; rm -rf "$RES"; mkdir -p "$RES"
C="$WORK/cluster"; S="$WORK/standalone"; SD="$WORK/standalone-direct"
cleanup() {
    "$MAFS" cluster down --dir "$C" >/dev/null 2>&1 || true
    mountpoint -q "$S/mnt" 2>/dev/null && umount "$S/mnt"
    mountpoint -q "$SD/mnt" 2>/dev/null && umount "$SD/mnt"
    true
}
trap cleanup EXIT
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
commit_index() { "$MAFS" lockd status --endpoints "$(awk '/^lockd/ {print $3}' "$C/cluster.state")" --json | awk -F': ' '/"commit_index"/ {gsub(/,/,"",$2); print $2; exit}'; }
fio_job() { # dir name rw bs size|runtime
    fio --name="$2" --directory="$1" --rw="$3" --bs="$4" --size=256M --ioengine=psync --direct=0 \
        ${5:+--time_based --runtime=$5} --output-format=terse --terse-version=3 --group_reporting 2>/dev/null |
        awk -F";" -v rw="$3" '{printf "%.0f\n", (rw ~ /write/ ? $48 : $7) / 1024}'   # MiB/s: terse v3 fields 7 (read) and 48 (write) are KiB/s
}
up() { # nodes
    "$MAFS" cluster down --dir "$C" >/dev/null 2>&1 || true
    rm -rf "$C"; "$MAFS" cluster up --dir "$C" --nodes "$1" --size 8G >/dev/null
}

echo "== (a) one cluster node vs standalone"
rm -rf "$S" "$SD"; mkdir -p "$S/mnt" "$SD/mnt"
"$MAFS" mkfs "$S/vol" --size 8G >/dev/null
"$MAFS" mkfs "$SD/vol" --size 8G >/dev/null
"$MAFS" mount "$S/vol" "$S/mnt" --standalone >"$S/mount.log" 2>&1 &
"$MAFS" mount "$SD/vol" "$SD/mnt" --standalone --direct-io >"$SD/mount.log" 2>&1 &
up 1
for _ in $(seq 60); do mountpoint -q "$S/mnt" && mountpoint -q "$SD/mnt" && break; sleep 0.2; done
for r in $(seq "$REPS"); do
    for t in standalone direct cluster; do
        case $t in standalone) d="$S/mnt" ;; direct) d="$SD/mnt" ;; cluster) d="$C/node1" ;; esac
        before=$([ $t = cluster ] && commit_index || echo 0)
        "$SMALLFILES" "$d" --files "$FILES" --label "$t" >> "$RES/a-$t.txt"
        after=$([ $t = cluster ] && commit_index || echo 0)
        echo $((after - before)) >> "$RES/a-$t-lockd.txt"
        echo "$(fio_job "$d" seqw write 1M)" >> "$RES/a-$t-seqwrite.txt"
        sync; echo 3 > /proc/sys/vm/drop_caches
        echo "$(fio_job "$d" seqr read 1M)" >> "$RES/a-$t-seqread.txt"
        echo "$(fio_job "$d" randr randread 4k 5)" >> "$RES/a-$t-randread.txt"
        rm -f "$d"/seqw* "$d"/seqr* "$d"/randr*
    done
done
umount "$S/mnt"; umount "$SD/mnt"; wait
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
{
    echo "| workload | standalone | standalone --direct-io | cluster node | cluster / standalone | cluster / standalone --direct-io |"
    echo "|---|---|---|---|---|---|"
    for p in create stat warmstat unlink; do
        s=$(grep -h "phase=$p " "$RES/a-standalone.txt" | sed 's/.*ops_per_sec=//' | median)
        sd=$(grep -h "phase=$p " "$RES/a-direct.txt" | sed 's/.*ops_per_sec=//' | median)
        c=$(grep -h "phase=$p " "$RES/a-cluster.txt" | sed 's/.*ops_per_sec=//' | median)
        echo "| smallfiles $p ($FILES files), ops/s | $s | $sd | $c | $(ratio "$c" "$s") | $(ratio "$c" "$sd") |"
    done
    for k in seqwrite seqread randread; do
        s=$(median < "$RES/a-standalone-$k.txt"); sd=$(median < "$RES/a-direct-$k.txt"); c=$(median < "$RES/a-cluster-$k.txt")
        echo "| fio $k, MiB/s | $s | $sd | $c | $(ratio "$c" "$s") | $(ratio "$c" "$sd") |"
    done
    echo
    echo "lockd commands (raft entries) made by the cluster node in each smallfiles run of $((FILES * 4)) operations: $(tr '\n' ' ' < "$RES/a-cluster-lockd.txt")"
} | tee "$RES/a.md"

echo "== (b) N nodes, each creating in its own directory; (d) N nodes creating in one directory"
{
    echo "| nodes | own directories: creates/s (all nodes) | one shared directory: creates/s (all nodes) |"
    echo "|---|---|---|"
} > "$RES/bd.md"
for n in 1 2 3; do
    up "$n"
    for mode in own shared; do
        for r in $(seq "$REPS"); do
            start=$(date +%s.%N)
            for i in $(seq "$n"); do
                d=$([ $mode = own ] && echo "$C/node$i/own$i-$r" || echo "$C/node$i/shared-$r/n$i")
                mkdir -p "$(dirname "$d")" 2>/dev/null || true
                "$SMALLFILES" "$d" --files "$FILES" --phases create --keep > /dev/null &
            done
            wait
            end=$(date +%s.%N)
            awk -v s="$start" -v e="$end" -v f="$FILES" -v n="$n" 'BEGIN {printf "%.0f\n", n*f/(e-s)}' >> "$RES/$mode-$n.txt"
        done
    done
    echo "| $n | $(median < "$RES/own-$n.txt") | $(median < "$RES/shared-$n.txt") |" >> "$RES/bd.md"
done
cat "$RES/bd.md"

echo "== (c) two nodes taking turns on one file"
up 2
python3 - "$C/node1/pingpong" "$C/node2/pingpong" "$REPS" <<'PY' | tee "$RES/c.md"
import os, sys, time, statistics
a, b, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
open(a, "w").close()
rates = []
for _ in range(reps):
    fa = os.open(a, os.O_WRONLY | os.O_APPEND); fb = os.open(b, os.O_WRONLY | os.O_APPEND)
    n = 400; t = time.time()
    for i in range(n):
        os.write(fa if i % 2 == 0 else fb, b"x" * 64)
    rates.append(n / (time.time() - t))
    os.close(fa); os.close(fb)
r = statistics.median(rates)
print(f"alternating O_APPEND writes from two nodes: {r:.0f} writes/s, {r:.0f} lock hand-overs/s (each write takes the file's lock from the other node)")
PY
