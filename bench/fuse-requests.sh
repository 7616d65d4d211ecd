#!/usr/bin/env bash
# Counts the FUSE requests a command causes, by opcode and by node (the command's parent
# directory vs. other inodes), by tracing the mount process's reads of /dev/fuse with strace.
# Every read of /dev/fuse is one request; the opcode and node id are decoded from the
# fuse_in_header at the start of each read.
#
# Usage (as root): bench/fuse-requests.sh MOUNTPOINT COMMAND [ARGS...]
#   e.g. bench/fuse-requests.sh /mnt/m target/release/smallfiles /mnt/m --files 1000 --phases create
# The tracer slows the mount down: use it to count, never to time.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,9p' "$0" >&2; exit 2; }
MNT="$(realpath "$1")"; shift
command -v strace >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q strace >/dev/null

# the serving process: one that has /dev/fuse open and names the mount point on its command line
PID=""
for p in /proc/[0-9]*; do
    if ls -l "$p/fd" 2>/dev/null | grep -q ' /dev/fuse$' && tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q -- "$(basename "$MNT")"; then
        PID="${p#/proc/}"; break
    fi
done
[ -n "$PID" ] || { echo "no process serving $MNT found" >&2; exit 1; }
FD="$(ls -l /proc/"$PID"/fd | awk '$NF == "/dev/fuse" { print $(NF-2); exit }')"

OUT="$(mktemp)"
strace -f -e trace=read -e read="$FD" -p "$PID" -o "$OUT" 2>/dev/null & SP=$!
sleep 1
"$@"
sleep 0.5
kill -INT "$SP"; wait "$SP" || true

python3 - "$OUT" <<'EOF'
import collections, sys
names = {1: "LOOKUP", 2: "FORGET", 3: "GETATTR", 4: "SETATTR", 5: "READLINK", 6: "SYMLINK", 8: "MKNOD",
         9: "MKDIR", 10: "UNLINK", 11: "RMDIR", 12: "RENAME", 13: "LINK", 14: "OPEN", 15: "READ",
         16: "WRITE", 17: "STATFS", 18: "RELEASE", 20: "FSYNC", 21: "SETXATTR", 22: "GETXATTR",
         23: "LISTXATTR", 24: "REMOVEXATTR", 25: "FLUSH", 27: "OPENDIR", 28: "READDIR",
         29: "RELEASEDIR", 30: "FSYNCDIR", 34: "ACCESS", 35: "CREATE", 42: "BATCH_FORGET",
         43: "FALLOCATE", 44: "READDIRPLUS", 45: "RENAME2", 46: "LSEEK"}
reqs, op = [], None
for line in open(sys.argv[1]):
    # fuse_in_header: len u32, opcode u32, unique u64 | nodeid u64, ...
    if "| 00000  " in line:
        b = line.split("| 00000  ")[1].split()[:16]
        op = int("".join(reversed(b[4:8])), 16)
    elif "| 00010  " in line and op is not None:
        b = line.split("| 00010  ")[1].split()[:8]
        reqs.append((op, int("".join(reversed(b)), 16)))
        op = None
dirops = collections.Counter(n for o, n in reqs if o in (1, 9, 10, 11, 35))
parent = dirops.most_common(1)[0][0] if dirops else None
c = collections.Counter((names.get(o, str(o)), "parent dir" if n == parent else "other") for o, n in reqs)
print(f"{len(reqs)} FUSE requests")
for (name, node), n in sorted(c.items(), key=lambda x: -x[1]):
    print(f"  {name:<12} {node:<10} {n}")
EOF
rm -f "$OUT"
