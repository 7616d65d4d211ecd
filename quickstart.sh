#!/usr/bin/env bash
# Brings a local mafs cluster up end to end, with a default for every setting: builds mafs,
# then `mafs cluster up`: formats ./mafs-data/volume.mafs (4 GiB, sparse) unless it exists,
# starts lockd, and mounts three nodes at ./mafs-data/node1, node2 and node3 — three mount
# points that show the same files. Stop it with
#   sudo target/release/mafs cluster down --dir ./mafs-data
#   MAFS_DIR, MAFS_NODES, MAFS_SIZE override the defaults.
set -euo pipefail
cd "$(dirname "$0")"
if [ "$(id -u)" != 0 ]; then
    echo "quickstart.sh: mounting FUSE filesystems with allow_other needs root; run it with sudo" >&2
    exit 2
fi
cargo build --release -p mafs-cli
exec "$PWD/target/release/mafs" cluster up --dir "${MAFS_DIR:-$PWD/mafs-data}" --nodes "${MAFS_NODES:-3}" --size "${MAFS_SIZE:-4G}"
