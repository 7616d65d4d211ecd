//! `mafs cluster up` / `down`: a whole local cluster in one directory — a volume file, lockd
//! replicas and N nodes mounted at DIR/node1 … DIR/nodeN — for trying mafs out and for tests.
//! Every process runs detached (its own session, output in DIR/logs); DIR/cluster.state lists
//! them so that `down` can stop them in order: nodes first (each writes the volume back and
//! leaves lockd), lockd last.
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::umount::running;
use mafs_fuse::mount::is_mount_point as is_mounted;

/// How long `up` waits for every node to be mounted (a first mount of a new volume replays
/// nothing; the time goes to lockd's first election and each node's slot claim).
const MOUNT_WAIT: Duration = Duration::from_secs(90);

pub struct UpOptions {
    pub nodes: u32,
    pub size: u64,
    pub replicas: u32,
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("cluster.state")
}

pub fn volume_path(dir: &Path) -> PathBuf {
    dir.join("volume.mafs")
}

/// A port nobody listens on now, for a lockd replica.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

/// Starts `args` of this program detached (own session, no terminal), output to `log`.
fn spawn_detached(args: &[String], log: &Path) -> anyhow::Result<u32> {
    let exe = std::env::current_exe().context("cannot find the mafs program")?;
    let out = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setsid is async-signal-safe; a new session keeps the process alive when the
    // terminal that ran `cluster up` goes, and out of its Ctrl-C.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("cannot start mafs {}", args.join(" ")))?;
    Ok(child.id())
}

fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn up(dir: &Path, opts: &UpOptions) -> anyhow::Result<i32> {
    if opts.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if opts.replicas != 1 && opts.replicas != 3 {
        bail!("--replicas must be 1 or 3 (a lockd majority of 2 out of 3 survives one failure; 2 replicas survive none)");
    }
    if state_path(dir).exists() {
        bail!(
            "{} already has a cluster (see {}); run `mafs cluster down --dir {}` first",
            dir.display(),
            state_path(dir).display(),
            dir.display()
        );
    }
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let volume = volume_path(dir);
    if !volume.exists() {
        let mkfs = crate::mkfs::run(
            &volume,
            Some(opts.size),
            &mafs_core::mkfs::MkfsOptions {
                slots: opts.nodes.max(8),
                label: "mafs-cluster".into(),
                journal_blocks: None,
                force: false,
                uuid: None,
            },
            false,
        )?;
        if mkfs != 0 {
            bail!("mkfs of {} failed", volume.display());
        }
    }
    let mut state = std::fs::File::create(state_path(dir)).context("cannot write the cluster state file")?;
    let endpoints = start_lockd(dir, opts.replicas, &mut state)?;
    let nodes = start_nodes(dir, opts.nodes, &endpoints, &mut state)?;
    state.flush()?;
    wait_mounted(dir, &nodes)?;
    println!("lockd: {endpoints}");
    println!("volume: {}", volume.display());
    for n in &nodes {
        println!("mounted: {}", n.mountpoint.display());
    }
    println!("stop with: mafs cluster down --dir {}", dir.display());
    Ok(0)
}

/// Starts `replicas` lockd replicas on free ports; answers their endpoints.
fn start_lockd(dir: &Path, replicas: u32, state: &mut std::fs::File) -> anyhow::Result<String> {
    let addrs: Vec<String> = (0..replicas).map(|_| free_port().map(|p| format!("127.0.0.1:{p}"))).collect::<anyhow::Result<_>>()?;
    for (i, addr) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let mut args = vec!["lockd".into(), "--id".into(), id.to_string(), "--listen".into(), addr.clone()];
        args.extend(["--data-dir".into(), dir.join(format!("lockd-{id}")).display().to_string()]);
        for (j, peer) in addrs.iter().enumerate() {
            if j != i {
                args.extend(["--peer".into(), format!("{}={peer}", j + 1)]);
            }
        }
        let pid = spawn_detached(&args, &dir.join("logs").join(format!("lockd-{id}.log")))?;
        writeln!(state, "lockd {pid} {addr}")?;
    }
    Ok(addrs.join(","))
}

/// A node `up` started: its process, mount point and log.
struct Started {
    pid: u32,
    mountpoint: PathBuf,
    log: PathBuf,
}

/// Starts `count` nodes, mounted at DIR/node1.. (they wait for lockd if it is not up yet).
fn start_nodes(dir: &Path, count: u32, endpoints: &str, state: &mut std::fs::File) -> anyhow::Result<Vec<Started>> {
    let mut nodes = Vec::new();
    for n in 1..=count {
        let mp = dir.join(format!("node{n}"));
        std::fs::create_dir_all(&mp).with_context(|| format!("cannot create {}", mp.display()))?;
        let volume = volume_path(dir).display().to_string();
        let args = vec![
            "mount".into(),
            volume,
            mp.display().to_string(),
            "--lockd".into(),
            endpoints.into(),
            "--node-name".into(),
            format!("node{n}"),
        ];
        let log = dir.join("logs").join(format!("node{n}.log"));
        let pid = spawn_detached(&args, &log)?;
        writeln!(state, "node {pid} {}", mp.display())?;
        nodes.push(Started { pid, mountpoint: mp, log });
    }
    Ok(nodes)
}

/// Waits until every node is mounted, or says which one did not mount and why.
fn wait_mounted(dir: &Path, nodes: &[Started]) -> anyhow::Result<()> {
    let deadline = Instant::now() + MOUNT_WAIT;
    for n in nodes {
        while !is_mounted(&n.mountpoint) {
            if !running(n.pid) {
                bail!(
                    "node {} did not mount:\n{}\n(stop the rest with `mafs cluster down --dir {}`)",
                    n.mountpoint.display(),
                    tail(&n.log, 5),
                    dir.display()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "node {} is not mounted after {MOUNT_WAIT:?}; its log {} ends:\n{}",
                    n.mountpoint.display(),
                    n.log.display(),
                    tail(&n.log, 5)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

pub fn down(dir: &Path, wait: Duration) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(state_path(dir))
        .with_context(|| format!("no cluster in {} (no {})", dir.display(), state_path(dir).display()))?;
    let mut lockd = Vec::new();
    let mut failed = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.splitn(3, ' ').collect();
        let (Some(kind), Some(pid), Some(what)) = (f.first(), f.get(1).and_then(|p| p.parse::<u32>().ok()), f.get(2)) else { continue };
        match *kind {
            "node" => {
                if let Err(e) = stop_node(pid, Path::new(what), wait) {
                    failed.push(format!("{what}: {e:#}"));
                }
            }
            _ => lockd.push(pid),
        }
    }
    // lockd last: the nodes leave it (closing their sessions) as they unmount.
    for pid in &lockd {
        // SAFETY: kill(2) of a process this cluster started.
        unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while lockd.iter().any(|p| running(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in lockd.iter().filter(|p| running(**p)) {
        // SAFETY: as above; it did not stop on SIGTERM.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    if !failed.is_empty() {
        bail!("some nodes did not stop cleanly:\n{}", failed.join("\n"));
    }
    std::fs::remove_file(state_path(dir)).context("cannot remove the cluster state file")?;
    println!("cluster in {} stopped; the volume {} is clean", dir.display(), volume_path(dir).display());
    Ok(0)
}

/// Unmounts one node and waits for its process to write the volume back and leave lockd.
fn stop_node(pid: u32, mountpoint: &Path, wait: Duration) -> anyhow::Result<()> {
    if is_mounted(mountpoint) {
        let c = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()).context("mount point path has a NUL byte")?;
        // SAFETY: plain syscall with a valid C string.
        if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot unmount (busy? close what uses it)");
        }
    } else if running(pid) {
        // Not mounted yet (or any more) but running: ask it to stop as Ctrl-C would.
        // SAFETY: kill(2) of a process this cluster started.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let deadline = Instant::now() + wait;
    while running(pid) {
        if Instant::now() >= deadline {
            bail!("its mount process {pid} is still running after {wait:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
