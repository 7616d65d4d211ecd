//! Real lockd replicas (`mafs lockd` processes) on 127.0.0.1 for end-to-end tests, and the
//! `mafs lock` / `mafs lockd` commands run against them. Every process is killed on drop.
//!
//! A cluster started with [`LockdCluster::start_partitionable`] routes every replica-to-replica
//! link and every client-to-replica path through its own proxy ([`crate::net_proxy`]), so a
//! test can cut one replica off from its peers, from its clients, or both, while all run.
//! Replica `i` is told that peer `j` lives at the proxy of link i->j; clients get the proxy of
//! link 0->j (0 stands for "the clients"). Administrative commands go straight to the replicas.
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use crate::net_proxy::{LinkMode, Net};
use crate::{free_port, mafs_bin, wait_until};

/// The id that stands for the clients in link names.
pub const CLIENTS: u64 = 0;

pub struct Replica {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// One row of `mafs lockd status`: how a replica sees itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub id: u64,
    pub role: String,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub snapshot: u64,
}

pub struct LockdCluster {
    pub dir: tempfile::TempDir,
    pub replicas: Vec<Replica>,
    extra: Vec<String>,
    net: Option<Net>,
}

impl LockdCluster {
    /// Starts `n` bootstrap replicas with ids 1..=n; `extra` goes to every `mafs lockd`.
    pub fn start(n: u64, extra: &[&str]) -> LockdCluster {
        Self::launch(n, extra, false)
    }

    /// Like [`start`](Self::start), with every link behind a proxy that [`cut`](Self::cut),
    /// [`isolate`](Self::isolate) and [`heal`](Self::heal) control.
    pub fn start_partitionable(n: u64, extra: &[&str]) -> LockdCluster {
        Self::launch(n, extra, true)
    }

    fn launch(n: u64, extra: &[&str], proxied: bool) -> LockdCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c =
            LockdCluster { dir, replicas: Vec::new(), extra: extra.iter().map(|s| s.to_string()).collect(), net: proxied.then(Net::new) };
        for id in 1..=n {
            c.add_replica(id);
        }
        if let Some(net) = &mut c.net {
            for to in &c.replicas {
                for from in (0..=n).filter(|f| *f != to.id) {
                    net.link(from, to.id, &to.addr);
                }
            }
        }
        for id in 1..=n {
            c.spawn(id, false);
        }
        c
    }

    /// Registers replica `id` with a free port and an empty data directory, not started (for a
    /// replica to add with `add-member` and start with `spawn(id, true)`); returns its address.
    pub fn add_replica(&mut self, id: u64) -> String {
        let addr = format!("127.0.0.1:{}", free_port());
        self.replicas.push(Replica {
            id,
            addr: addr.clone(),
            data_dir: self.dir.path().join(format!("d{id}")),
            log: self.dir.path().join(format!("lockd-{id}.log")),
            child: None,
        });
        addr
    }

    /// Where replica `from` (or the clients, `CLIENTS`) sends to reach replica `to`.
    pub fn addr_of(&self, from: u64, to: u64) -> String {
        match &self.net {
            Some(net) if from != to => net.get(from, to).addr.clone(),
            _ => self.replica(to).addr.clone(),
        }
    }

    fn net(&self) -> &Net {
        self.net.as_ref().expect("a cluster started with start_partitionable")
    }

    /// Cuts (or heals, with `Pass`) both directions between `a` and `b`; either may be `CLIENTS`
    /// (the clients' direction towards a replica is the only one there is).
    pub fn cut(&self, a: u64, b: u64, mode: LinkMode) {
        for (from, to) in [(a, b), (b, a)] {
            if to != CLIENTS {
                self.net().set(from, to, mode);
            }
        }
    }

    /// Cuts `id` off from every other replica; its clients still reach it.
    pub fn isolate(&self, id: u64, mode: LinkMode) {
        for other in self.replicas.iter().map(|r| r.id).filter(|o| *o != id) {
            self.cut(id, other, mode);
        }
    }

    pub fn heal(&self) {
        self.net().heal();
    }

    fn idx(&self, id: u64) -> usize {
        self.replicas.iter().position(|r| r.id == id).unwrap_or_else(|| panic!("no replica {id}"))
    }

    pub fn replica(&self, id: u64) -> &Replica {
        &self.replicas[self.idx(id)]
    }

    /// Starts replica `id` (again), from its data directory; `join` for a replica added to a
    /// running cluster.
    pub fn spawn(&mut self, id: u64, join: bool) {
        let i = self.idx(id);
        let r = &self.replicas[i];
        let mut cmd = Command::new(mafs_bin());
        cmd.args(["lockd", "--id", &id.to_string(), "--listen", &r.addr, "--data-dir"]).arg(&r.data_dir);
        for p in self.replicas.iter().filter(|p| p.id != id) {
            cmd.args(["--peer", &format!("{}={}", p.id, self.addr_of(id, p.id))]);
        }
        if join {
            cmd.arg("--join");
        }
        cmd.args(&self.extra);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&r.log).expect("replica log");
        let err = log.try_clone().expect("log fd");
        let child = cmd.stdout(log).stderr(err).spawn().expect("spawn mafs lockd");
        self.replicas[i].child = Some(child);
    }

    /// kill -9, and reap it.
    pub fn kill(&mut self, id: u64) {
        let i = self.idx(id);
        if let Some(mut c) = self.replicas[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP (`stop`) or SIGCONT the replica: a replica that is alive but silent.
    pub fn freeze(&self, id: u64, stop: bool) {
        let child = self.replica(id).child.as_ref().unwrap_or_else(|| panic!("replica {id} is not running"));
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: signalling our own child process, which we have not reaped.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "signal replica {id}");
    }

    /// Sends `sig` to the replica's process.
    pub fn signal(&self, id: u64, sig: libc::c_int) {
        let child = self.replica(id).child.as_ref().unwrap_or_else(|| panic!("replica {id} is not running"));
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        // SAFETY: signalling our own child process, which we have not reaped.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "signal replica {id}");
    }

    /// The replica's exit status, if it exits within `timeout` (reaped then).
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> Option<ExitStatus> {
        let i = self.idx(id);
        let mut status = None;
        wait_until(timeout, || {
            status = self.replicas[i].child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            status.is_some()
        });
        if status.is_some() {
            self.replicas[i].child = None;
        }
        status
    }

    /// The replica's whole log so far.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.replica(id).log).unwrap_or_default()
    }

    pub fn wipe(&mut self, id: u64) {
        let d = self.replica(id).data_dir.clone();
        let _ = std::fs::remove_dir_all(d);
    }

    /// Endpoints of every replica through links of one client's own (`client`, not a replica
    /// id nor `CLIENTS`), which [`Self::cut_client`] cuts without touching other clients.
    pub fn client_link(&mut self, client: u64) -> String {
        let targets: Vec<(u64, String)> = self.replicas.iter().map(|r| (r.id, r.addr.clone())).collect();
        let net = self.net.as_mut().expect("a cluster started with start_partitionable");
        targets.iter().map(|(id, addr)| net.link(client, *id, addr)).collect::<Vec<_>>().join(",")
    }

    /// Sets every link of `client` (made by [`Self::client_link`]) to `mode`.
    pub fn cut_client(&self, client: u64, mode: LinkMode) {
        for r in &self.replicas {
            self.net().set(client, r.id, mode);
        }
    }

    /// What clients are given: every replica, through the client links when proxied.
    pub fn endpoints(&self) -> String {
        self.endpoints_of(&self.replicas.iter().map(|r| r.id).collect::<Vec<_>>())
    }

    /// Client endpoints of the replicas `ids` only.
    pub fn endpoints_of(&self, ids: &[u64]) -> String {
        ids.iter().map(|id| self.addr_of(CLIENTS, *id)).collect::<Vec<_>>().join(",")
    }

    /// The replicas' own addresses, past any proxy (what the tests observe through).
    pub fn admin_endpoints(&self) -> String {
        self.replicas.iter().map(|r| r.addr.clone()).collect::<Vec<_>>().join(",")
    }

    pub fn log_tail(&self, id: u64) -> String {
        let s = std::fs::read_to_string(&self.replica(id).log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// `mafs lockd ARGS --endpoints <all>` (straight to the replicas, past any proxy).
    pub fn lockd(&self, args: &[&str]) -> Output {
        Command::new(mafs_bin())
            .arg("lockd")
            .args(args)
            .args(["--endpoints", &self.admin_endpoints()])
            .stdin(Stdio::null())
            .output()
            .expect("run mafs lockd")
    }

    /// `mafs lock --endpoints <all> --mode MODE --timeout 60 RESOURCE COMMAND...`
    pub fn lock_cmd(&self, mode: &str, resource: &str, command: &[&str]) -> Command {
        self.lock_cmd_at(&self.endpoints(), mode, resource, command)
    }

    /// `mafs lock --endpoints ENDPOINTS --mode MODE --timeout 60 RESOURCE COMMAND...`
    pub fn lock_cmd_at(&self, endpoints: &str, mode: &str, resource: &str, command: &[&str]) -> Command {
        let mut c = Command::new(mafs_bin());
        c.args(["lock", "--endpoints", endpoints, "--mode", mode, "--timeout", "60", resource]);
        c.args(command);
        c.stdin(Stdio::null());
        c
    }

    /// The leader id that `mafs lockd status` reports, if any.
    pub fn leader(&self) -> Option<u64> {
        let out = self.lockd(&["status"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let first = text.lines().next()?;
        first.strip_prefix("leader: ")?.split_whitespace().next()?.parse().ok()
    }

    pub fn wait_leader(&self, timeout: Duration) -> u64 {
        let mut found = None;
        wait_until(timeout, || {
            found = self.leader();
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no leader within {timeout:?}; replica 1 log:\n{}", self.log_tail(1)))
    }

    /// Every reachable replica's own view, from the table `mafs lockd status` prints.
    pub fn statuses(&self) -> Vec<ReplicaStatus> {
        let out = self.lockd(&["status"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .skip_while(|l| !l.starts_with("ENDPOINT"))
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() < 7 {
                    return None;
                }
                Some(ReplicaStatus {
                    id: f[1].parse().ok()?,
                    role: f[2].to_string(),
                    term: f[3].parse().ok()?,
                    commit: f[4].parse().ok()?,
                    applied: f[5].parse().ok()?,
                    snapshot: f[6].parse().ok()?,
                })
            })
            .collect()
    }

    /// Every replica but `not`.
    pub fn others(&self, not: u64) -> Vec<u64> {
        self.replicas.iter().map(|r| r.id).filter(|id| *id != not).collect()
    }

    /// Whether replica `id` becomes a follower that has applied all the leader committed.
    pub fn wait_caught_up(&self, id: u64, timeout: Duration) -> bool {
        wait_until(timeout, || {
            let st = self.statuses();
            let lead = st.iter().find(|s| s.role == "leader").map(|s| s.commit).unwrap_or(u64::MAX);
            st.iter().any(|s| s.id == id && s.role == "follower" && s.applied >= lead)
        })
    }

    /// The second half of the documented replace of replica `id` (removed and stopped
    /// already): wipe its data directory, `add-member`, start it with `--join`, and wait until
    /// it has caught up.
    pub fn add_back(&mut self, id: u64) {
        self.wipe(id);
        let addr = self.replica(id).addr.clone();
        let out = self.lockd(&["add-member", "--id", &id.to_string(), "--addr", &addr]);
        assert!(out.status.success(), "add-member: {}", String::from_utf8_lossy(&out.stderr));
        self.spawn(id, true);
        let caught_up = self.wait_caught_up(id, Duration::from_secs(30));
        assert!(caught_up, "replica {id} did not catch up: {:?}\n{}", self.statuses(), self.log_tail(id));
    }

    pub fn status_of(&self, id: u64) -> Option<ReplicaStatus> {
        self.statuses().into_iter().find(|s| s.id == id)
    }
}

impl Drop for LockdCluster {
    fn drop(&mut self) {
        for r in &mut self.replicas {
            if let Some(mut c) = r.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
