#!/usr/bin/env bash
# Filesystem benchmark of issue 2: mafs (standalone FUSE mount of a volume file) vs ext4 on a loop
# device over a file vs fio on a plain file (the device limit), side by side in one run, targets
# alternated and repeated; prints medians and ratios (and writes them to $WORK/summary.md).
# The small-file phases also run on fuse_ceiling (bench/src/bin/fuse_ceiling.rs), an in-memory FUSE
# filesystem with mafs's FUSE settings: what any FUSE filesystem mounted like mafs can reach.
#
# Usage (as root): bench/fs-bench.sh
# Environment:
#   WORK=/var/tmp/mafs-bench  scratch directory on the disk under test (volume files live here)
#   REPS=5                    repetitions of every target (order rotated each repetition)
#   SF_REPS=2                 smallfiles runs per target per repetition
#   FILES=10000               files per smallfiles run
#   RAND_SECS=10              runtime of each 4 KiB random job
#   SEQ_SIZE=1G               size of the sequential file
#   NOBUILD=1                 skip `cargo build --release`
#   STRACE=1                  count FUSE requests (reads of /dev/fuse) during mafs stat phases
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-/var/tmp/mafs-bench}"
REPS="${REPS:-5}"
SF_REPS="${SF_REPS:-2}"
export FILES="${FILES:-10000}"
RAND_SECS="${RAND_SECS:-10}"
export SEQ_SIZE="${SEQ_SIZE:-1G}"
VOL_SIZE="${VOL_SIZE:-4G}"
STRACE="${STRACE:-1}"
MAFS="$REPO/target/release/mafs"
SMALLFILES="$REPO/target/release/smallfiles"
CEILING="$REPO/target/release/fuse_ceiling"

[ "$(id -u)" = 0 ] || { echo "fs-bench.sh: run as root (mount, losetup, drop_caches)" >&2; exit 1; }

need_pkg() { # command package
    command -v "$1" >/dev/null 2>&1 && return
    echo "installing $2" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null || {
        apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null; }
}
need_pkg fio fio
need_pkg mkfs.ext4 e2fsprogs
need_pkg python3 python3
[ "$STRACE" = 1 ] && need_pkg strace strace

if [ "${NOBUILD:-0}" != 1 ]; then
    (cd "$REPO" && cargo build --release -p mafs-cli -p mafs-bench)
fi

mkdir -p "$WORK"
RES="$WORK/results"
rm -rf "$RES" && mkdir -p "$RES"
MAFS_VOL="$WORK/mafs.vol";  MAFS_MNT="$WORK/mafs.mnt"
EXT4_IMG="$WORK/ext4.img";  EXT4_MNT="$WORK/ext4.mnt"
RAW_DIR="$WORK/raw"          # fio on a plain file of the host filesystem: the device limit
# smallfiles only: an in-memory FUSE filesystem with mafs's FUSE settings (bench/src/bin/fuse_ceiling.rs)
CEIL_MNT="$WORK/ceiling.mnt"
mkdir -p "$MAFS_MNT" "$EXT4_MNT" "$RAW_DIR" "$CEIL_MNT"
MAFS_PID=""; CEIL_PID=""

cleanup() {
    set +e
    if mountpoint -q "$MAFS_MNT"; then umount "$MAFS_MNT"; fi
    if [ -n "$MAFS_PID" ]; then wait "$MAFS_PID" 2>/dev/null; fi
    if mountpoint -q "$EXT4_MNT"; then umount "$EXT4_MNT"; fi
    if mountpoint -q "$CEIL_MNT"; then umount "$CEIL_MNT"; fi
    if [ -n "$CEIL_PID" ]; then wait "$CEIL_PID" 2>/dev/null; fi
}
trap cleanup EXIT

# --- set up the targets -----------------------------------------------------------------------
cleanup; trap cleanup EXIT
rm -f "$MAFS_VOL" "$EXT4_IMG" "$RAW_DIR"/*
"$MAFS" mkfs "$MAFS_VOL" --size "$VOL_SIZE" >/dev/null
"$MAFS" mount "$MAFS_VOL" "$MAFS_MNT" --standalone >"$WORK/mafs-mount.log" 2>&1 &
MAFS_PID=$!
for _ in $(seq 100); do mountpoint -q "$MAFS_MNT" && break; sleep 0.1; done
mountpoint -q "$MAFS_MNT" || { echo "mafs did not mount; see $WORK/mafs-mount.log" >&2; exit 1; }
truncate -s "$VOL_SIZE" "$EXT4_IMG"
mkfs.ext4 -F -q "$EXT4_IMG"
mount -o loop "$EXT4_IMG" "$EXT4_MNT"
"$CEILING" "$CEIL_MNT" >"$WORK/ceiling-mount.log" 2>&1 &
CEIL_PID=$!
for _ in $(seq 100); do mountpoint -q "$CEIL_MNT" && break; sleep 0.1; done
mountpoint -q "$CEIL_MNT" || { echo "fuse_ceiling did not mount; see $WORK/ceiling-mount.log" >&2; exit 1; }

dir_of() { case "$1" in mafs) echo "$MAFS_MNT" ;; ext4) echo "$EXT4_MNT" ;; raw) echo "$RAW_DIR" ;; ceiling) echo "$CEIL_MNT" ;; esac; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# fio JOBNAME TARGET REP extra-args...: one job, JSON result in $RES/TARGET.REP.JOBNAME.json
run_fio() {
    local job=$1 target=$2 rep=$3; shift 3
    local d; d="$(dir_of "$target")"
    fio --name="$job" --filename="$d/fio.dat" --ioengine=psync --direct=0 --iodepth=1 \
        --output-format=json --output="$RES/$target.$rep.$job.json" "$@" >/dev/null
}

run_smallfiles() { # TARGET REP: SF_REPS runs, JSON results in $RES/TARGET.REP.N.smallfiles.json
    local t=$1 rep=$2 s
    for s in $(seq "$SF_REPS"); do
        "$SMALLFILES" "$(dir_of "$t")" --files "$FILES" --json --label "$t" >"$RES/$t.$rep.$s.smallfiles.json"
        sync
    done
}

bench_target() { # TARGET REP
    local t=$1 rep=$2 d; d="$(dir_of "$t")"
    echo "== rep $rep: $t ($(date -u +%H:%M:%S))" >&2
    if [ "$t" = ceiling ]; then
        run_smallfiles "$t" "$rep"
        return
    fi
    rm -f "$d/fio.dat"; sync
    # sequential 1 MiB write of a fresh file, durable at the end (the fsync is inside fio's runtime)
    run_fio seqwrite "$t" "$rep" --rw=write --bs=1M --size="$SEQ_SIZE" --end_fsync=1
    drop_caches
    run_fio seqread "$t" "$rep" --rw=read --bs=1M --size="$SEQ_SIZE"
    drop_caches
    run_fio randread "$t" "$rep" --rw=randread --bs=4k --size="$SEQ_SIZE" --time_based --runtime="$RAND_SECS"
    drop_caches
    run_fio randread4 "$t" "$rep" --rw=randread --bs=4k --size="$SEQ_SIZE" --time_based --runtime="$RAND_SECS" \
        --numjobs=4 --group_reporting
    drop_caches
    run_fio randwrite "$t" "$rep" --rw=randwrite --bs=4k --size="$SEQ_SIZE" --time_based --runtime="$RAND_SECS" \
        --end_fsync=1
    rm -f "$d/fio.dat"; sync
    if [ "$t" != raw ]; then
        run_smallfiles "$t" "$rep"
    fi
}

TARGETS=(mafs ext4 raw ceiling)
for rep in $(seq "$REPS"); do
    for i in 0 1 2 3; do
        bench_target "${TARGETS[$(( (i + rep - 1) % 4 ))]}" "$rep"
    done
done

# --- FUSE request count of the stat phases (a separate, untimed run under strace) -------------
if [ "$STRACE" = 1 ]; then
    fuse_requests() { # PHASE: reads of /dev/fuse by the mount process while PHASE runs
        local out="$RES/strace.$1.txt" sp
        strace -c -f -e trace=read -p "$MAFS_PID" -o "$out" 2>/dev/null & sp=$!
        sleep 1
        "$SMALLFILES" "$MAFS_MNT" --files "$FILES" --phases "$1" >/dev/null
        sleep 0.5; kill -INT "$sp"; wait "$sp" || true
        awk '$NF == "read" { n = $4 } END { print n + 0 }' "$out"
    }
    "$SMALLFILES" "$MAFS_MNT" --files "$FILES" --phases create >/dev/null
    echo "stat $(fuse_requests stat)" >"$RES/fuse-requests.txt"
    echo "warmstat $(fuse_requests warmstat)" >>"$RES/fuse-requests.txt"
    "$SMALLFILES" "$MAFS_MNT" --files "$FILES" --phases unlink >/dev/null
fi

umount "$MAFS_MNT"; wait "$MAFS_PID"; MAFS_PID=""
umount "$EXT4_MNT"
umount "$CEIL_MNT"; wait "$CEIL_PID"; CEIL_PID=""
"$MAFS" fsck "$MAFS_VOL" >"$RES/fsck.txt" 2>&1 && echo "fsck: $(cat "$RES/fsck.txt")" >&2 || {
    echo "fsck of the mafs volume after the run FAILED:" >&2; cat "$RES/fsck.txt" >&2; }

# --- medians and ratios -----------------------------------------------------------------------
{
    echo "run finished $(date -u '+%Y-%m-%d %H:%M UTC'); mafs at $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- fs 2>/dev/null || echo ' (fs/ with uncommitted changes)')"
    echo "machine: $(nproc) CPUs, $(free -g | awk '/Mem:/ {print $2}') GiB RAM, kernel $(uname -r); host fs $(findmnt -no FSTYPE --target "$WORK") on $(findmnt -no SOURCE --target "$WORK")"
    echo "reps: $REPS (targets rotated), smallfiles runs per rep: $SF_REPS, files: $FILES, random jobs: ${RAND_SECS}s"
    echo
} | tee "$WORK/summary.md"
python3 - "$RES" "$REPS" <<'EOF' | tee -a "$WORK/summary.md"
import glob, json, os, statistics, sys
res, reps = sys.argv[1], int(sys.argv[2])
seq = os.environ.get("SEQ_SIZE", "1G").replace("G", " GiB").replace("M", " MiB")
def med(xs): return statistics.median(xs) if xs else None
fio_jobs = [("seqwrite", "write", "bw", f"seq 1 MiB write, {seq} + fsync (MB/s)"),
            ("seqread", "read", "bw", f"seq 1 MiB read of it, cold cache (MB/s)"),
            ("randread", "read", "iops", "4 KiB random read, 1 job, cold start (IOPS)"),
            ("randread4", "read", "iops", "4 KiB random read, 4 jobs (IOPS)"),
            ("randwrite", "write", "iops", "4 KiB random write + end fsync (IOPS)")]
sf = [("create", "create 100-byte files (ops/s)"), ("stat", "stat after write (ops/s)"),
      ("warmstat", "warm stat (ops/s)"), ("unlink", "unlink (ops/s)")]
targets = {"seqwrite": 0.7, "seqread": 0.7, "randread": 1.0, "create": 0.15, "unlink": 0.3,
           "stat": 0.06, "warmstat": 0.5}
rows, samples, failed = [], {}, []
def load(f):
    # fio prints errors ahead of its JSON; a failed smallfiles run leaves an empty file
    t = open(f).read()
    return json.loads(t[t.index("{"):]) if "{" in t else None
for job, kind, metric, title in fio_jobs:
    vals = {}
    for t in ("mafs", "ext4", "raw"):
        xs = []
        for f in sorted(glob.glob(f"{res}/{t}.*.{job}.json")):
            j = load(f)
            if j is None or j["jobs"][0]["error"] != 0:
                failed.append(os.path.basename(f)); continue
            j = j["jobs"][0][kind]
            # fio's "bw" is KiB/s; report MB/s (10^6)
            xs.append(j["bw"] * 1024 / 1e6 if metric == "bw" else j["iops"])
        vals[t] = med(xs); samples[(job, t)] = xs
    rows.append((job, title, vals))
for ph, title in sf:
    vals = {}
    for t in ("mafs", "ext4", "ceiling"):
        xs = []
        for f in sorted(glob.glob(f"{res}/{t}.*.smallfiles.json")):
            j = load(f)
            if j is None:
                if ph == "create": failed.append(os.path.basename(f))
                continue
            xs.append(j[ph]["ops_per_sec"])
        vals[t] = med(xs); samples[(ph, t)] = xs
    vals["raw"] = None
    rows.append((ph, title, vals))
def fmt(x): return "—" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:.1f}")
def ratio(a, b): return None if a is None or b is None or b == 0 else a / b
print(f"| test | mafs | ext4 (loop) | raw file | mafs/ext4 | mafs/raw | target (mafs/ext4) |")
print("|---|---:|---:|---:|---:|---:|---|")
for key, title, v in rows:
    r = ratio(v["mafs"], v["ext4"]); rr = ratio(v["mafs"], v["raw"])
    tgt = targets.get(key)
    verdict = "—" if tgt is None else f"≥ {tgt}: " + ("**met**" if r is not None and r >= tgt else "**not met**")
    print(f"| {title} | {fmt(v['mafs'])} | {fmt(v['ext4'])} | {fmt(v['raw'])} | "
          f"{'—' if r is None else f'{r:.2f}'} | {'—' if rr is None else f'{rr:.2f}'} | {verdict} |")
print()
print("Against the FUSE ceiling: `fuse_ceiling`, an in-memory filesystem that answers every request at")
print("once, mounted with mafs's FUSE settings (default_permissions, POSIX ACLs, xattrs, the same init")
print("and open flags and TTLs), so it gets the same requests per operation as mafs:")
print()
print("| phase | mafs | ext4 (loop) | FUSE ceiling | mafs/ext4 | ceiling/ext4 | mafs/ceiling | target (mafs/ext4) |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for key, title, v in rows:
    if "ceiling" not in v:
        continue
    r, c, m = ratio(v["mafs"], v["ext4"]), ratio(v["ceiling"], v["ext4"]), ratio(v["mafs"], v["ceiling"])
    f2 = lambda x: "—" if x is None else f"{x:.2f}"
    tgt = targets.get(key)
    print(f"| {title} | {fmt(v['mafs'])} | {fmt(v['ext4'])} | {fmt(v['ceiling'])} | {f2(r)} | {f2(c)} | {f2(m)} | {'—' if tgt is None else f'≥ {tgt}'} |")
print()
print("Samples (every repetition, in run order):")
for (k, t), xs in samples.items():
    if xs: print(f"- {k} {t}: " + ", ".join(fmt(x) for x in xs))
if failed:
    print()
    print(f"FAILED runs (left out of the medians): {', '.join(failed)}")
p = os.path.join(res, "fuse-requests.txt")
if os.path.exists(p):
    print()
    for line in open(p):
        ph, n = line.split()
        print(f"- FUSE requests (reads of /dev/fuse by the mount) during the {ph} phase of {os.environ.get('FILES', '10000')} files: {n}")
EOF
echo "results: $RES, summary: $WORK/summary.md" >&2
