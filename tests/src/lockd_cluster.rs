//! Real lockd replicas (`mafs lockd` processes) on 127.0.0.1 for end-to-end tests, and the
//! `mafs lock` / `mafs lockd` commands run against them. Every process is killed on drop.
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::{free_port, mafs_bin, wait_until};

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
}

impl LockdCluster {
    /// Starts `n` bootstrap replicas with ids 1..=n; `extra` goes to every `mafs lockd`.
    pub fn start(n: u64, extra: &[&str]) -> LockdCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let replicas = (1..=n)
            .map(|id| Replica {
                id,
                addr: format!("127.0.0.1:{}", free_port()),
                data_dir: dir.path().join(format!("d{id}")),
                log: dir.path().join(format!("lockd-{id}.log")),
                child: None,
            })
            .collect();
        let mut c = LockdCluster { dir, replicas, extra: extra.iter().map(|s| s.to_string()).collect() };
        for id in 1..=n {
            c.spawn(id, false);
        }
        c
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
            cmd.args(["--peer", &format!("{}={}", p.id, p.addr)]);
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

    pub fn wipe(&mut self, id: u64) {
        let d = self.replica(id).data_dir.clone();
        let _ = std::fs::remove_dir_all(d);
    }

    pub fn endpoints(&self) -> String {
        self.replicas.iter().map(|r| r.addr.clone()).collect::<Vec<_>>().join(",")
    }

    pub fn log_tail(&self, id: u64) -> String {
        let s = std::fs::read_to_string(&self.replica(id).log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// `mafs lockd ARGS --endpoints <all>`.
    pub fn lockd(&self, args: &[&str]) -> Output {
        Command::new(mafs_bin())
            .arg("lockd")
            .args(args)
            .args(["--endpoints", &self.endpoints()])
            .stdin(Stdio::null())
            .output()
            .expect("run mafs lockd")
    }

    /// `mafs lock --endpoints <all> --mode MODE --timeout 60 RESOURCE COMMAND...`
    pub fn lock_cmd(&self, mode: &str, resource: &str, command: &[&str]) -> Command {
        let mut c = Command::new(mafs_bin());
        c.args(["lock", "--endpoints", &self.endpoints(), "--mode", mode, "--timeout", "60", resource]);
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
