#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this):
#   1. installs what the tests need (apt packages, pjdfstest, cargo-nextest, test users);
#   2. checks formatting (rustfmt) and lints (clippy, warnings are errors);
#   3. runs the filesystem core's and cluster mode's tests in a debug build (assertions on);
#   4. builds the workspace in release mode (the e2e tests drive target/release/mafs);
#   5. runs every unit, integration and end-to-end test (real FUSE mounts, real lockd
#      processes on 127.0.0.1, kill -9 crashes) under cargo-nextest;
#   6. runs the POSIX conformance suite pjdfstest on a fresh mafs mount (and on ext4 on a
#      loop device, for the side-by-side count in docs/pjdfstest.md).
# Needs root: FUSE mounts, loop devices and the unprivileged test users.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "tests/run.sh: run as root (it mounts FUSE and loop filesystems and creates test users)" >&2
    exit 2
fi

echo "== installing test dependencies"
bash tests/pjdfstest/install-deps.sh
if ! command -v cargo-nextest >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi
# The snapshot tests' S3-compatible server (started on 127.0.0.1 by fs_snapshot).
python3 -c 'import moto.server, flask, flask_cors' 2>/dev/null || python3 -m pip install --quiet 'moto[server]'
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
[ -e /dev/fuse ] || modprobe fuse

echo "== formatting and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== the filesystem core's and cluster mode's tests, debug build"
# Debug assertions on: every inode lock asserts its thread holds no journal handle (the lock
# order of fs/core/src/locks.rs), and arithmetic overflow panics instead of wrapping.
cargo nextest run -p mafs-core -p mafs-cluster --no-fail-fast

echo "== building (release)"
cargo build --release --workspace

echo "== unit, integration and end-to-end tests"
cargo nextest run --release --workspace --no-fail-fast

echo "== pjdfstest (POSIX conformance) on ext4 and on mafs"
SKIP_INSTALL=1 MAFS="$PWD/target/release/mafs" PJDFSTEST_REQUIRE=1 bash tests/pjdfstest/ci.sh

echo "== pjdfstest on a node of a two-node mafs cluster"
MAFS="$PWD/target/release/mafs" bash tests/pjdfstest/cluster.sh
