#!/usr/bin/env bash
# Snapshots (docs/benchmarks.md, "Snapshots"), on a two-node cluster (`mafs cluster up`) whose
# volume holds 1 GiB of random data, all in one run:
#   - the raw read rate of the volume file with O_DIRECT (dd, 4 MiB reads): the baseline;
#   - the first snapshot: time, throughput, bytes stored;
#   - a second snapshot after 1% of the data (10 MiB) is rewritten: time and bytes stored;
#   - the writers' pause: a node writes and fsyncs 4 KiB records in a loop and logs each
#     one's latency, before and during a third snapshot (p50, p99, max);
#   - restore throughput.
# Needs root (FUSE). Results in $OUT (default /var/tmp/mafs-snapshot-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
MAFS=${MAFS:-$PWD/target/release/mafs}
[ -n "${NOBUILD:-}" ] || cargo build --release -p mafs-cli
OUT=${OUT:-/var/tmp/mafs-snapshot-bench}
C=$OUT/cluster
rm -rf "$OUT" && mkdir -p "$OUT"
cleanup() { "$MAFS" cluster down --dir "$C" >/dev/null 2>&1 || true; }
trap cleanup EXIT
"$MAFS" cluster up --dir "$C" --nodes 2 --size 2G >"$OUT/up.log" 2>&1
EP=$(awk '/^lockd:/ {print $2}' "$OUT/up.log")
VOL=$(awk '/^volume:/ {print $2}' "$OUT/up.log")
N1=$(awk '/^mounted:/ {print $2; exit}' "$OUT/up.log")
STORE=$OUT/store
for i in $(seq 0 7); do head -c 128M /dev/urandom > "$N1/data$i"; done
sync "$N1"/data*

now() { date +%s.%N; }
snap() { # snap NAME: a snapshot, its time and what show says
    local t0 t1 id
    t0=$(now)
    id=$("$MAFS" snapshot create "$VOL" --lockd "$EP" --store "$STORE" 2>"$OUT/$1.log" | tail -1)
    t1=$(now)
    echo "$id" > "$OUT/$1.id"
    "$MAFS" snapshot show "$id" --store "$STORE" > "$OUT/$1.show"
    echo "$1: $(echo "$t1 - $t0" | bc) s; $(grep -E 'chunks read|bytes added|writers held' "$OUT/$1.show" | tr -s ' ' | paste -sd';')" | tee -a "$OUT/results"
}

raw0=$(now); dd if="$VOL" of=/dev/null bs=4M iflag=direct status=none; raw1=$(now)
size=$(stat -c %s "$VOL")
echo "raw O_DIRECT read of the volume ($((size >> 20)) MiB): $(echo "$raw1 - $raw0" | bc) s" | tee "$OUT/results"
snap first
dd if=/dev/urandom of="$N1/data3" bs=1M count=10 seek=40 conv=notrunc,fsync status=none
snap second

# The writers' pause: 4 KiB write + fsync per record, each one's latency in microseconds.
python3 - "$N1/probe" "$OUT/latency" <<'PY' &
import os, sys, time
f = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
out = open(sys.argv[2], "w")
buf = b"x" * 4096
end = time.time() + 12
while time.time() < end:
    t = time.time()
    os.pwrite(f, buf, 0)
    os.fsync(f)
    out.write("%f %d\n" % (t, (time.time() - t) * 1e6))
PY
probe=$!
sleep 4
s0=$(now); snap third; s1=$(now)
wait $probe
pct() { sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int(NR*p); if (i<1) i=1; print a[i]/1000 " ms"}'; }
echo "fsync'd 4 KiB writes before the snapshot: $(awk -v s="$s0" '$1 < s {print $2}' "$OUT/latency" | wc -l) ops, p50 $(awk -v s="$s0" '$1 < s {print $2}' "$OUT/latency" | pct 0.5), p99 $(awk -v s="$s0" '$1 < s {print $2}' "$OUT/latency" | pct 0.99)" | tee -a "$OUT/results"
echo "during the snapshot: $(awk -v s="$s0" -v e="$s1" '$1 >= s && $1 <= e {print $2}' "$OUT/latency" | wc -l) ops, p50 $(awk -v s="$s0" -v e="$s1" '$1 >= s && $1 <= e {print $2}' "$OUT/latency" | pct 0.5), p99 $(awk -v s="$s0" -v e="$s1" '$1 >= s && $1 <= e {print $2}' "$OUT/latency" | pct 0.99), max $(awk -v s="$s0" -v e="$s1" '$1 >= s && $1 <= e {print $2}' "$OUT/latency" | pct 1.0)" | tee -a "$OUT/results"

r0=$(now); "$MAFS" restore "$(cat "$OUT/first.id")" "$OUT/restored.img" --store "$STORE" >/dev/null 2>"$OUT/restore.log"; r1=$(now)
echo "restore of the first snapshot: $(echo "$r1 - $r0" | bc) s" | tee -a "$OUT/results"
du -sb "$STORE" | awk '{print "store: " $1 " bytes"}' | tee -a "$OUT/results"
