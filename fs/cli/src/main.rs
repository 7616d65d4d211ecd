//! `mafs`: the one command-line program: format, mount, check and inspect volumes, and run or
//! use lockd.
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Every FUSE request allocates a little (tree nodes, replies, block images); glibc's malloc
/// showed up as a fifth of the mount's CPU time in a create/unlink profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cluster_cmd;
mod cluster_mount;
mod fsck;
mod image_cmd;
mod info;
mod mkfs;
mod size_arg;
mod snapshot_cmd;
mod status;
mod umount;

#[derive(Parser)]
#[command(name = "mafs", version, about = "mafs: a cluster-aware shared-disk filesystem")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new volume in a file (sparse) or on a block device.
    Mkfs {
        volume: PathBuf,
        /// Size, e.g. 2G, 1T, 512M (required for a file that does not exist yet; a block
        /// device uses its whole size when omitted).
        #[arg(long, value_parser = size_arg::parse_size)]
        size: Option<u64>,
        /// Node slots: how many nodes may mount the volume at once.
        #[arg(long, default_value_t = 8)]
        slots: u32,
        /// A name for the volume, up to 64 bytes, shown by `mafs info`.
        #[arg(long, default_value = "")]
        label: String,
        /// Journal size per slot, e.g. 32M (default: 32 MiB, less on small volumes).
        #[arg(long, value_parser = size_arg::parse_size)]
        journal_size: Option<u64>,
        /// Overwrite whatever the device holds (another filesystem, data, a mafs volume):
        /// without it mkfs refuses any device that is not empty.
        #[arg(long)]
        force: bool,
        /// Format even if a slot looks mounted by another host right now (only when that host
        /// is known dead and cut off from the device).
        #[arg(long)]
        override_mmp: bool,
    },
    /// Mount a volume (runs in the foreground until unmounted).
    Mount {
        volume: PathBuf,
        mountpoint: PathBuf,
        /// Mount without a lock service: this host alone uses the volume, and multi-mount
        /// protection refuses a slot another host has mounted.
        #[arg(long, conflicts_with_all = ["lockd", "node_name"])]
        standalone: bool,
        /// Mount as a node of the volume's cluster, taking locks from these lockd replicas
        /// (HOST:PORT, comma-separated; default: $MAFS_LOCKD_ENDPOINTS).
        #[arg(long, value_name = "HOST:PORT[,...]")]
        lockd: Option<String>,
        /// The node's name, unique on the volume (default: the host name).
        #[arg(long)]
        node_name: Option<String>,
        /// Bypass the host page cache for device I/O (O_DIRECT).
        #[arg(long)]
        direct_io: bool,
        /// Memory for file data read or written lately, kept while the node holds the files'
        /// locks, when device I/O bypasses the host page cache (a cluster node, or
        /// --direct-io); 0 turns it off. K, M, G suffixes.
        #[arg(long, default_value = "256M", value_parser = size_arg::parse_size)]
        data_cache: u64,
        /// FUSE worker threads (default: one per CPU, 2 to 8).
        #[arg(long, default_value_t = default_threads())]
        threads: usize,
        /// Seconds between journal commits when nothing asks for one sooner.
        #[arg(long, default_value_t = 5)]
        commit_interval: u64,
        /// Seconds the kernel may cache attributes and names (a cluster node: at most half its
        /// lockd lease, so that a node frozen with a full cache stops trusting it before the
        /// others can take the volume over).
        #[arg(long, default_value_t = 60)]
        attr_timeout: u64,
        /// Node slot to use (each mounting node needs its own; default: 0 standalone, the
        /// first free one in a cluster).
        #[arg(long)]
        slot: Option<u32>,
        /// Mount even if the slot looks mounted by another host (only when that host is known
        /// dead and cut off from the device).
        #[arg(long)]
        override_mmp: bool,
        /// Most lockd locks a cluster node keeps cached for re-use; past it, the least recently
        /// used ones no request needs are written back and given up.
        #[arg(long, default_value_t = mafs_cluster::DEFAULT_MAX_CACHED_LOCKS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(100..))]
        max_cached_locks: usize,
    },
    /// Unmount a mafs mount point and wait until its volume is clean.
    Umount {
        mountpoint: PathBuf,
        /// Seconds to wait for the mount process to leave the volume clean; past them, say
        /// what still holds it.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Check a volume; with --repair, fix what can be fixed. Exit codes follow fsck(8).
    Fsck {
        volume: PathBuf,
        /// Write the fixes (and replay unclean journals); without it fsck writes nothing.
        #[arg(long)]
        repair: bool,
        /// Check even if a slot looks mounted by another host (only when that host is known
        /// dead and cut off from the device).
        #[arg(long)]
        override_mmp: bool,
        /// lockd replicas, HOST:PORT comma-separated (default: $MAFS_LOCKD_ENDPOINTS): fsck
        /// then refuses while lockd shows cluster nodes on the volume, on any host.
        #[arg(long, value_name = "HOST:PORT[,...]")]
        lockd: Option<String>,
    },
    /// Show the superblock, slots and free space of a volume.
    Info { volume: PathBuf },
    /// Show a volume's slots and, with lockd, the nodes mounted on them: their sessions, how
    /// many locks each holds (and how many exclusively), and nodes being recovered.
    Status {
        volume: PathBuf,
        /// lockd replicas, HOST:PORT comma-separated (default: $MAFS_LOCKD_ENDPOINTS).
        #[arg(long, value_name = "HOST:PORT[,...]")]
        lockd: Option<String>,
    },
    /// A local cluster in one directory: a volume file, lockd, and nodes mounted at DIR/node1..N.
    /// Snapshots of a volume kept in a store off the volume: create, list, show, diff, delete.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Write a snapshot out as a new volume (a file or an empty block device) with a UUID of
    /// its own, every chunk checked.
    Restore {
        /// The snapshot's id (`mafs snapshot list`).
        snapshot: String,
        /// The new volume: a path that does not exist yet, or an empty block device.
        new_volume: PathBuf,
        /// Where the snapshot is: a directory, file://PATH or s3://BUCKET[/PREFIX] (default:
        /// $MAFS_STORE, else /var/lib/mafs/snapshots).
        #[arg(long)]
        store: Option<String>,
        /// Size of the new volume file (at least the snapshot's volume; growing is not
        /// supported yet).
        #[arg(long, value_parser = size_arg::parse_size)]
        size: Option<u64>,
    },
    /// Golden images: build a volume from a directory tree, launch volumes from it.
    #[command(subcommand)]
    Image(ImageCommand),
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Run a lockd replica, or administer lockd (status, dump, membership).
    Lockd(lockd_cli::LockdCommand),
    /// Run a command while holding a cluster-wide lock.
    Lock(lockd_cli::LockCommand),
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Take a consistent snapshot while the volume is in use; prints the new id last.
    Create {
        volume: PathBuf,
        /// Where to keep it: a directory, file://PATH or s3://BUCKET[/PREFIX] (default:
        /// $MAFS_STORE, else /var/lib/mafs/snapshots).
        #[arg(long)]
        store: Option<String>,
        /// The lockd replicas of the volume's cluster, to freeze its nodes (HOST:PORT,
        /// comma-separated; default: $MAFS_LOCKD_ENDPOINTS). Without it, a standalone mount on
        /// this host is frozen through its control socket, or the volume must be unmounted.
        #[arg(long, value_name = "HOST:PORT[,...]")]
        lockd: Option<String>,
        /// A KEY=VALUE to keep with the snapshot (repeatable).
        #[arg(long = "tag", value_parser = snapshot_cmd::parse_tag)]
        tags: Vec<(String, String)>,
        /// Read every chunk, even if an earlier snapshot of the volume would let this one read
        /// only the changed ones.
        #[arg(long)]
        full: bool,
    },
    /// List the snapshots in a store, oldest first.
    List {
        /// The store (default: $MAFS_STORE, else /var/lib/mafs/snapshots).
        #[arg(long)]
        store: Option<String>,
        /// Only the snapshots of the volume with this UUID.
        #[arg(long)]
        volume_uuid: Option<String>,
    },
    /// Describe one snapshot.
    Show {
        snapshot: String,
        /// The store (default: $MAFS_STORE, else /var/lib/mafs/snapshots).
        #[arg(long)]
        store: Option<String>,
    },
    /// List the chunks that differ between two snapshots of one volume.
    Diff {
        first: String,
        second: String,
        /// The store (default: $MAFS_STORE, else /var/lib/mafs/snapshots).
        #[arg(long)]
        store: Option<String>,
    },
    /// Delete snapshots and every chunk no remaining snapshot needs.
    Delete {
        #[arg(required = true)]
        snapshots: Vec<String>,
        /// The store (default: $MAFS_STORE, else /var/lib/mafs/snapshots).
        #[arg(long)]
        store: Option<String>,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Make a volume file from a directory tree (owners, modes, times, extended attributes,
    /// ACLs, symlinks, hard links, device nodes, sparse files); the same tree gives the same
    /// bytes. Prints the image's UUID last.
    Build {
        /// The tree to copy.
        #[arg(long)]
        from: PathBuf,
        /// The image's size, e.g. 1G.
        #[arg(long, value_parser = size_arg::parse_size)]
        size: u64,
        /// The image file to make (must not exist).
        image: PathBuf,
        /// Node slots of the volumes launched from it.
        #[arg(long, default_value_t = 8)]
        slots: u32,
        /// A name for the volume, up to 64 bytes.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Make volumes from an image, each with a UUID of its own, sharing the image's blocks
    /// where the host filesystem can (reflink), sparse copies otherwise. Prints their paths.
    Launch {
        image: PathBuf,
        /// How many volumes.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// The folder to make them in.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Make (or reuse) DIR/volume.mafs, start lockd and mount N nodes; returns once all are
    /// mounted, printing the mount points.
    Up {
        /// Directory of the cluster: volume, lockd data, logs, and the mount points node1..N.
        #[arg(long)]
        dir: PathBuf,
        /// Nodes to mount (each its own process and mount point).
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Size of a new volume file (sparse).
        #[arg(long, default_value = "4G", value_parser = size_arg::parse_size)]
        size: u64,
        /// lockd replicas: 1, or 3 to survive the loss of one.
        #[arg(long, default_value_t = 1)]
        replicas: u32,
    },
    /// Unmount every node of DIR's cluster (each writes the volume back) and stop lockd.
    Down {
        /// Directory of the cluster, as given to `up`.
        #[arg(long)]
        dir: PathBuf,
        /// Seconds each node gets to write back and leave.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MAFS_LOG").unwrap_or_else(|_| "info,fuser::session=error".into()))
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if prints_and_exits(&cli.command) {
        // Rust ignores SIGPIPE, so `mafs info | head -2` would end in a "Broken pipe" panic;
        // a command that only prints should just stop, as ls and cat do. Not for mount and
        // the lockd replica, which must never die of a closed socket or pipe.
        // SAFETY: setting a signal's disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("mafs: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Commands whose whole job is printing a report.
fn prints_and_exits(c: &Command) -> bool {
    match c {
        Command::Info { .. } | Command::Fsck { .. } | Command::Status { .. } => true,
        Command::Lockd(l) => l.action.is_some(),
        _ => false,
    }
}

fn run_snapshot(c: SnapshotCommand) -> anyhow::Result<i32> {
    match c {
        SnapshotCommand::Create { volume, store, lockd, tags, full } => {
            snapshot_cmd::create(&volume, &snapshot_cmd::store_spec(store), cluster_mount::endpoints(lockd), tags, full)
        }
        SnapshotCommand::List { store, volume_uuid } => snapshot_cmd::list(&snapshot_cmd::store_spec(store), volume_uuid.as_deref()),
        SnapshotCommand::Show { snapshot, store } => snapshot_cmd::show(&snapshot_cmd::store_spec(store), &snapshot),
        SnapshotCommand::Diff { first, second, store } => snapshot_cmd::diff(&snapshot_cmd::store_spec(store), &first, &second),
        SnapshotCommand::Delete { snapshots, store } => snapshot_cmd::delete(&snapshot_cmd::store_spec(store), &snapshots),
    }
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Mkfs { volume, size, slots, label, journal_size, force, override_mmp } => {
            let opts =
                mafs_core::mkfs::MkfsOptions { slots, label, journal_blocks: journal_size.map(|j| (j / 4096) as u32), force, uuid: None };
            mkfs::run(&volume, size, &opts, override_mmp)
        }
        Command::Mount {
            volume,
            mountpoint,
            standalone,
            lockd,
            node_name,
            direct_io,
            data_cache,
            threads,
            commit_interval,
            attr_timeout,
            slot,
            override_mmp,
            max_cached_locks,
        } => {
            let endpoints = cluster_mount::endpoints(lockd);
            if !standalone && endpoints.is_empty() {
                anyhow::bail!(
                    "say how this node shares the volume: --lockd HOST:PORT[,...] (or ${}) to mount it as a cluster node, \
                     or --standalone if this host alone uses it",
                    cluster_mount::ENDPOINTS_ENV
                );
            }
            let cfg = mafs_fuse::mount::MountConfig {
                volume,
                mountpoint,
                direct_io,
                data_cache,
                slot: slot.unwrap_or(0),
                threads,
                commit_interval: Duration::from_secs(commit_interval.max(1)),
                attr_ttl: Duration::from_secs(attr_timeout),
                node_name: node_name.unwrap_or_else(hostname),
                override_mmp,
            };
            if standalone {
                mafs_fuse::mount::mount(&cfg, None)?;
            } else {
                cluster_mount::run(&cfg, endpoints, slot, max_cached_locks)?;
            }
            Ok(0)
        }
        Command::Umount { mountpoint, timeout } => {
            let volume = mount_source(&mountpoint)?;
            umount::run(&mountpoint, volume, Duration::from_secs(timeout))
        }
        Command::Fsck { volume, repair, override_mmp, lockd } => fsck::run(&volume, repair, override_mmp, cluster_mount::endpoints(lockd)),
        Command::Info { volume } => info::run(&volume),
        Command::Status { volume, lockd } => status::run(&volume, cluster_mount::endpoints(lockd)),
        Command::Snapshot(c) => run_snapshot(c),
        Command::Restore { snapshot, new_volume, store, size } => {
            snapshot_cmd::restore(&snapshot_cmd::store_spec(store), &snapshot, &new_volume, size)
        }
        Command::Image(ImageCommand::Build { from, size, image, slots, label }) => image_cmd::build(&from, size, &image, slots, label),
        Command::Image(ImageCommand::Launch { image, count, out }) => image_cmd::launch(&image, count, &out),
        Command::Cluster(ClusterCommand::Up { dir, nodes, size, replicas }) => {
            cluster_cmd::up(&dir, &cluster_cmd::UpOptions { nodes, size, replicas })
        }
        Command::Cluster(ClusterCommand::Down { dir, timeout }) => cluster_cmd::down(&dir, Duration::from_secs(timeout)),
        Command::Lockd(cmd) => lockd_cli::run_lockd(cmd),
        Command::Lock(cmd) => lockd_cli::run_lock(cmd),
    }
}

/// More FUSE threads than CPUs only adds context switches (measured: 2 threads beat 4 on a
/// 2-core machine; 1 thread halves throughput).
fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 8)
}

fn hostname() -> String {
    mafs_core::mmp::this_host()
}

/// The volume file behind a mafs mount point, from /proc/self/mounts.
fn mount_source(mountpoint: &std::path::Path) -> anyhow::Result<Option<PathBuf>> {
    let canon = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("cannot read /proc/self/mounts")?;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() >= 3 && f[1].replace("\\040", " ") == canon {
            // Plain "fuse": mounted by a mafs from before `subtype=mafs` was passed to the kernel.
            if f[2] != "fuse.mafs" && f[2] != "fuse" {
                anyhow::bail!("{} is not a mafs mount (it is {})", mountpoint.display(), f[2]);
            }
            return Ok(Some(PathBuf::from(f[0].replace("\\040", " "))));
        }
    }
    anyhow::bail!("{} is not mounted", mountpoint.display())
}
