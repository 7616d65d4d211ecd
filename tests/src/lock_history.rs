//! A history of lock holds, recorded by the commands `mafs lock` runs, and the checker of what
//! a lock service promises about it: no two holders of conflicting modes of one resource at
//! once, every fencing token granted once, and tokens growing along each resource's
//! conflicting hand-offs. Times are CLOCK_REALTIME nanoseconds (`date +%s%N`), one clock for
//! every process on the machine.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Hold {
    pub token: u64,
    pub mode: String,
    pub resource: String,
    pub start: u128,
    pub end: u128,
    pub worker: usize,
}

/// Where the workers' critical sections write their start and end lines.
pub struct History {
    dir: PathBuf,
}

pub fn conflicts(a: &str, b: &str) -> bool {
    !(a == "PR" && b == "PR")
}

impl History {
    pub fn new(dir: &Path) -> History {
        std::fs::create_dir_all(dir).expect("history dir");
        History { dir: dir.to_path_buf() }
    }

    fn file(&self, worker: usize) -> PathBuf {
        self.dir.join(format!("w{worker}"))
    }

    /// The `sh -c` script of worker `worker`'s critical section: a start line, `hold`
    /// seconds, an end line.
    pub fn script(&self, worker: usize, hold: f64) -> String {
        format!(
            "echo start $(date +%s%N) $MAFS_FENCING_TOKEN $MAFS_LOCK_MODE $MAFS_LOCK_RESOURCE >> {f}; \
             sleep {hold}; echo end $(date +%s%N) $MAFS_FENCING_TOKEN >> {f}",
            f = self.file(worker).display()
        )
    }

    /// Every hold of workers `0..workers`. A start without an end is a critical section that
    /// `mafs lock` killed when its lock was lost; its last write was its start line, so it
    /// counts as held for that instant.
    pub fn holds(&self, workers: usize) -> Vec<Hold> {
        let mut out = Vec::new();
        for w in 0..workers {
            let text = std::fs::read_to_string(self.file(w)).unwrap_or_default();
            let mut open: Option<Hold> = None;
            for line in text.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                match f.as_slice() {
                    ["start", t, token, mode, res] => {
                        if let Some(h) = open.take() {
                            out.push(Hold { end: h.start, ..h });
                        }
                        open = Some(Hold {
                            token: token.parse().expect("token"),
                            mode: mode.to_string(),
                            resource: res.to_string(),
                            start: t.parse().expect("time"),
                            end: 0,
                            worker: w,
                        });
                    }
                    ["end", t, token] => {
                        let h = open.take().unwrap_or_else(|| panic!("worker {w}: end without start: {line}"));
                        assert_eq!(token.parse::<u64>().ok(), Some(h.token), "worker {w}: end of another hold: {line}");
                        out.push(Hold { end: t.parse().expect("time"), ..h });
                    }
                    _ => panic!("worker {w}: bad line {line:?}"),
                }
            }
            if let Some(h) = open {
                out.push(Hold { end: h.start, ..h });
            }
        }
        out
    }
}

/// Panics with the offending holds if the history breaks a promise.
pub fn check(holds: &[Hold]) {
    let mut by_token: BTreeMap<u64, &Hold> = BTreeMap::new();
    for h in holds {
        if let Some(prev) = by_token.insert(h.token, h) {
            panic!("token {} granted twice: {prev:?} and {h:?}", h.token);
        }
    }
    let mut by_res: BTreeMap<&str, Vec<&Hold>> = BTreeMap::new();
    for h in holds {
        by_res.entry(&h.resource).or_default().push(h);
    }
    for (res, hs) in &mut by_res {
        hs.sort_by_key(|h| h.start);
        for (i, a) in hs.iter().enumerate() {
            for b in &hs[i + 1..] {
                if b.start > a.end {
                    break;
                }
                assert!(!conflicts(&a.mode, &b.mode), "{res}: {a:?} overlaps {b:?}");
            }
        }
        // A conflicting successor was granted later, so its token must be larger.
        let mut last_ex: Option<&Hold> = None;
        let mut readers_since: Vec<&Hold> = Vec::new();
        for h in hs.iter() {
            if let Some(p) = last_ex {
                assert!(h.token > p.token, "{res}: token went backwards after {p:?}: {h:?}");
            }
            if h.mode == "EX" {
                for r in &readers_since {
                    assert!(h.token > r.token, "{res}: EX {h:?} got a smaller token than reader {r:?}");
                }
                readers_since.clear();
                last_ex = Some(h);
            } else {
                readers_since.push(h);
            }
        }
    }
}
