#!/usr/bin/env bash
# lockd vs etcd on this machine: three replicas of each on 127.0.0.1, driven side by side by
# bench/lockd-etcd (Rust clients on both sides). Installs etcd-server with apt if missing.
# Results go to stdout and into docs/benchmarks.md under "## lockd vs etcd".
#   usage: bench/lockd-vs-etcd.sh [--secs N] [--clients 1,8,64] [--handoffs N]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if ! command -v etcd >/dev/null; then
  apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null
fi
# etcd-client generates its code with protoc; put the vendored one on PATH (not in $PROTOC, which
# raft-proto's build script would also pick up and reject).
protoc_bin() { ls ~/.cargo/registry/src/*/protoc-bin-vendored-linux-x86_64-*/bin/protoc 2>/dev/null | head -n1; }
[ -n "$(protoc_bin)" ] || cargo fetch -q
mkdir -p "$ROOT/target/protoc-bin" && ln -sf "$(protoc_bin)" "$ROOT/target/protoc-bin/protoc"
export PATH="$ROOT/target/protoc-bin:$PATH"
cargo build --release -q -p mafs-cli
cargo build --release -q --manifest-path bench/lockd-etcd/Cargo.toml --target-dir "$ROOT/target"
MAFS=$ROOT/target/release/mafs
BENCH=$ROOT/target/release/lockd-etcd-bench

W=$(mktemp -d /tmp/lockd-bench.XXXX); pids=()
trap 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$W"' EXIT
base=$((21000 + RANDOM % 20000))
L=(0 $base $((base+1)) $((base+2)))            # lockd
EC=(0 $((base+3)) $((base+4)) $((base+5)))     # etcd clients
EP=(0 $((base+6)) $((base+7)) $((base+8)))     # etcd peers
cluster=""; for i in 1 2 3; do cluster+="${cluster:+,}e$i=http://127.0.0.1:${EP[$i]}"; done
for i in 1 2 3; do
  etcd --name e$i --data-dir "$W/e$i" \
    --listen-client-urls http://127.0.0.1:${EC[$i]} --advertise-client-urls http://127.0.0.1:${EC[$i]} \
    --listen-peer-urls http://127.0.0.1:${EP[$i]} --initial-advertise-peer-urls http://127.0.0.1:${EP[$i]} \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench \
    >"$W/etcd$i.log" 2>&1 & pids+=($!)
  peers=(); for j in 1 2 3; do [ $j = $i ] || peers+=(--peer $j=127.0.0.1:${L[$j]}); done
  MAFS_LOG=warn "$MAFS" lockd --id $i --listen 127.0.0.1:${L[$i]} "${peers[@]}" --data-dir "$W/l$i" \
    >"$W/lockd$i.log" 2>&1 & pids+=($!)
done
LE=127.0.0.1:${L[1]},127.0.0.1:${L[2]},127.0.0.1:${L[3]}
EE=http://127.0.0.1:${EC[1]},http://127.0.0.1:${EC[2]},http://127.0.0.1:${EC[3]}
for _ in $(seq 1 100); do "$MAFS" lockd status --endpoints "$LE" >/dev/null 2>&1 && break; sleep 0.1; done
etcd_up() { python3 -c "import urllib.request,sys; sys.exit(0 if b'true' in urllib.request.urlopen('http://127.0.0.1:${EC[1]}/health', timeout=1).read() else 1)" 2>/dev/null; }
for _ in $(seq 1 100); do etcd_up && break; sleep 0.1; done

cmd="bench/lockd-vs-etcd.sh $*"
"$BENCH" --lockd "$LE" --etcd "$EE" "$@" | tee "$W/result.md"

{
  echo "## lockd vs etcd"
  echo
  echo "Produced by \`$cmd\` on $(date -u +%Y-%m-%d), $(nproc) cores, $(etcd --version | head -n1), three"
  echo "replicas of each on 127.0.0.1 with their data directories in $(df -T /tmp | awk 'NR==2{print $2}') under /tmp, both"
  echo "driven by Rust gRPC clients (lockd's client library, the etcd-client crate with a lease, as"
  echo "\`etcdctl lock\` does). One cycle = exclusive acquire + release, each committed by the cluster."
  echo "Load average when the run ended: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews both sides)."
  echo
  cat "$W/result.md"
  echo
  echo 'Reading it: each cycle commits two log entries on both systems (acquire, release). Each lockd'
  echo 'commit is a client round trip to the leader, a round trip from the leader to a follower and one'
  echo 'fdatasync there (~0.11 ms alone on this disk; the leader'\''s own runs in parallel). On this 2-vCPU'
  echo 'VM the cost is mostly the four process wake-ups per commit (50-130 µs each, measured with'
  echo '`perf trace`), which is why each replica runs on one thread (docs/lockd.md). lockd'\''s release is'
  echo 'asynchronous, like `dlm_unlock`: `Session::release` returns once the release is sent, and the'
  echo 'next lock of the same resource carries it (docs/lockd.md, "Asynchronous release"), so a'
  echo 'sequential client'\''s release and next acquire share one replication round; a run ends only when'
  echo 'every release has committed. The "release awaited" row waits for each release'\''s commit inside'
  echo 'the cycle, as etcd'\''s unlock does: two rounds in a row. More clients share wake-ups and fsyncs'
  echo '(group commit). The hand-off is one commit: the release that dequeues the waiter grants it in'
  echo 'the same apply, and the waiter'\''s pending Lock call returns at once. A node working alone does not'
  echo 'pay even that: a lock it already caches is re-acquired with no network call at all (the cached'
  echo 're-acquire line).'
} > "$W/section.md"
python3 - "$ROOT/docs/benchmarks.md" "$W/section.md" <<'PY'
import re, sys
path, section = sys.argv[1], open(sys.argv[2]).read().rstrip() + "\n"
try:
    text = open(path).read()
except FileNotFoundError:
    text = "# Benchmarks\n"
# Replace only our own section: from its heading to the next "## " heading.
m = re.search(r"^## lockd vs etcd\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
if m:
    text = text[:m.start()] + section + ("\n" if text[m.end():] else "") + text[m.end():]
else:
    text = text.rstrip() + "\n\n" + section
open(path, "w").write(text)
PY
echo "results filed in docs/benchmarks.md"
