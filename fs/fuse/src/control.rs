//! A standalone mount's control socket: how `mafs snapshot create` freezes a mount it cannot
//! reach through lockd. A client writes `freeze`; the mount keeps new requests out, waits for
//! those inside, commits its journal and writes everything home, and answers `frozen`. It
//! stays frozen until the client writes `thaw` (answered `thawed`) or goes away, so a client
//! that dies never leaves the mount frozen. Protocol: docs/snapshots.md.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mafs_core::freeze_gate::FreezeGate;

use crate::Current;

pub struct ControlSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlSocket {
    /// Listens at the volume's control socket path.
    pub fn start(uuid: &str, gate: Arc<FreezeGate>, current: Arc<Current>) -> std::io::Result<ControlSocket> {
        let path = mafs_core::freeze_gate::control_socket_path(uuid);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // One left by a mount that died: nobody listens there (the volume claim says no mount
        // of this volume is alive on this host).
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new().name("mafs-control".into()).spawn(move || serve(listener, gate, current, s))?;
        Ok(ControlSocket { path, stop, thread: Some(thread) })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: UnixListener, gate: Arc<FreezeGate>, current: Arc<Current>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(stream, &gate, &current) {
                    tracing::warn!("control socket: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                tracing::warn!("control socket: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// One client: a freeze held until it thaws or hangs up.
fn answer(stream: UnixStream, gate: &Arc<FreezeGate>, current: &Current) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.trim() != "freeze" {
        return out.write_all(format!("error: unknown request {:?}; the only one is freeze\n", line.trim()).as_bytes());
    }
    let frozen = gate.freeze();
    let fs = current.fs();
    if let Err(e) = fs.write_back() {
        drop(frozen);
        return out.write_all(format!("error: cannot write the volume back: {e}\n").as_bytes());
    }
    tracing::info!("frozen for a snapshot");
    out.write_all(b"frozen\n")?;
    line.clear();
    // A thaw, or the client gone (EOF or an error): either way the mount goes on.
    let _ = reader.read_line(&mut line);
    let refreshed = fs.vol.tracker.as_ref().map(|t| t.refresh()).transpose();
    drop(frozen);
    tracing::info!("thawed");
    match refreshed {
        Ok(_) => out.write_all(b"thawed\n"),
        Err(e) => {
            // A snapshot moves the generation on by one per freeze: assume it did, so marks
            // stay ahead of it (a mark too high costs a chunk read, one too low loses a change).
            if let Some(t) = &fs.vol.tracker {
                t.assume_next_generation();
            }
            tracing::error!("cannot read the change generation after a snapshot: {e}");
            out.write_all(format!("error: {e}\n").as_bytes())
        }
    }
}
