//! A node's write workload that logs, on the host, every write it made durable: the record
//! the cluster and snapshot tests check a volume against.
use std::fs;
use std::path::Path;

/// The size of the `i`th file a [`Writer`] makes: never the same twice in a row, so a file
/// cut short or taken from the wrong round shows.
pub fn written_size(i: u64) -> u64 {
    4096 + (i % 50) * 509
}

/// A node's write workload in a child process (its own process group, so it stops at once):
/// each round writes `tmpI`, fsyncs it, renames it to `fI`, fsyncs the directory, appends a
/// record to the shared `journal` (O_APPEND from every node) and fsyncs it, and only then logs
/// `ok I MD5` on the host; every 20th round it logs `del J` and unlinks an old file. The log
/// is on the host's own disk, so a line in it is a write the node had made durable. A
/// workload started again on a node mounted again goes on after the last number it began.
pub struct Writer {
    pub child: std::process::Child,
    log: std::path::PathBuf,
}

impl Writer {
    pub fn start(mnt: &Path, name: &str, log: std::path::PathBuf) -> Writer {
        use std::os::unix::process::CommandExt;
        let script = format!(
            r#"d={m}/{n}; i=$(cat {log}.next 2>/dev/null || echo 0)
            while true; do
              echo $((i + 1)) > {log}.next.new && mv {log}.next.new {log}.next
              s=$((4096 + (i % 50) * 509))
              head -c $s /dev/urandom > $d/tmp$i && sync $d/tmp$i && mv $d/tmp$i $d/f$i && sync $d || exit 3
              echo "{n} rec $i" >> {m}/journal && sync {m}/journal || exit 4
              sum=$(md5sum < $d/f$i) || exit 6
              echo "ok $i ${{sum%% *}}" >> {log}
              if [ $((i % 20)) = 19 ]; then echo "del $((i - 19))" >> {log}; rm -f $d/f$((i - 19)) || exit 5; fi
              i=$((i + 1))
            done"#,
            m = mnt.display(),
            n = name,
            log = log.display()
        );
        let child = std::process::Command::new("sh")
            .args(["-c", &script])
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log.with_extension("err")).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        Writer { child, log }
    }

    /// Why the workload stopped on its own, if it did: its exit and what it printed.
    pub fn stopped(&mut self) -> Option<String> {
        let st = self.child.try_wait().unwrap()?;
        Some(format!("{st}: {}", fs::read_to_string(self.log.with_extension("err")).unwrap_or_default()))
    }

    /// What it has logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The number of the next round it will begin: no file it has begun is numbered higher.
    pub fn next_round(&self) -> u64 {
        fs::read_to_string(format!("{}.next", self.log.display())).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }

    pub fn logged(&self) -> usize {
        fs::read_to_string(&self.log).map(|l| l.lines().filter(|l| l.starts_with("ok ")).count()).unwrap_or(0)
    }

    /// Stops the workload; panics if it had stopped on its own (a system call failed on a
    /// node that was not killed).
    pub fn stop_expecting_no_error(mut self, who: &str) {
        let early = self.stopped();
        self.stop();
        assert!(early.is_none(), "{who}'s workload stopped on its own: {early:?}");
    }

    /// Kills the whole process group (the shell and whatever it runs now).
    pub fn stop(&mut self) {
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}
