#!/usr/bin/env bash
# Brings mafs up end to end on a volume file, with a default for every setting:
# builds mafs, formats ./mafs-data/volume.img (2 GiB, sparse) unless it exists, and mounts
# it at ./mafs-data/mnt in the foreground. Ctrl-C (or `mafs umount ./mafs-data/mnt` from
# another shell) unmounts and leaves the volume clean.
#   MAFS_VOLUME, MAFS_MOUNTPOINT, MAFS_SIZE override the defaults.
set -euo pipefail
cd "$(dirname "$0")"
if [ "$(id -u)" != 0 ]; then
    echo "quickstart.sh: mounting a FUSE filesystem with allow_other needs root; run it with sudo" >&2
    exit 2
fi
vol=${MAFS_VOLUME:-$PWD/mafs-data/volume.img}
mnt=${MAFS_MOUNTPOINT:-$PWD/mafs-data/mnt}
size=${MAFS_SIZE:-2G}
cargo build --release -p mafs-cli
mafs=$PWD/target/release/mafs
mkdir -p "$(dirname "$vol")" "$mnt"
if [ ! -e "$vol" ]; then
    "$mafs" mkfs "$vol" --size "$size" --label quickstart
fi
"$mafs" info "$vol"
echo "mounting $vol on $mnt (Ctrl-C to unmount)"
exec "$mafs" mount "$vol" "$mnt" --standalone
