//! The gate of a standalone mount's requests, which a snapshot can close: `freeze` waits until
//! no request is inside and keeps new ones out until the freeze is dropped. A cluster node's
//! gate is the volume lock instead (`mafs-cluster`), frozen through lockd.
use std::cell::Cell;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::error::Result;
use crate::locks::{Access, ClusterHold, VolumeGate};

#[derive(Default)]
struct State {
    inside: usize,
    frozen: bool,
}

#[derive(Default)]
pub struct FreezeGate {
    state: Mutex<State>,
    changed: Condvar,
}

thread_local! {
    /// Holds this thread has: a request already inside goes on in (it may enter again for a
    /// step of its own), so a freeze waiting for it to leave never waits for itself.
    static HELD: Cell<usize> = const { Cell::new(0) };
}

struct Inside(Arc<FreezeGate>);

impl Drop for Inside {
    fn drop(&mut self) {
        HELD.with(|h| h.set(h.get().saturating_sub(1)));
        let mut st = self.0.state.lock();
        st.inside -= 1;
        if st.inside == 0 {
            self.0.changed.notify_all();
        }
    }
}

/// The volume frozen: requests wait until this is dropped.
pub struct Frozen(Arc<FreezeGate>);

impl Drop for Frozen {
    fn drop(&mut self) {
        self.0.state.lock().frozen = false;
        self.0.changed.notify_all();
    }
}

impl FreezeGate {
    pub fn new() -> Arc<FreezeGate> {
        Arc::new(FreezeGate::default())
    }

    /// Keeps new requests out and waits for those inside to leave. One freeze at a time.
    pub fn freeze(self: &Arc<Self>) -> Frozen {
        let mut st = self.state.lock();
        while st.frozen {
            self.changed.wait(&mut st);
        }
        st.frozen = true;
        while st.inside > 0 {
            self.changed.wait(&mut st);
        }
        Frozen(self.clone())
    }
}

/// [`VolumeGate`] for an `Arc<FreezeGate>`, so a hold can keep the gate alive.
pub struct StandaloneGate(pub Arc<FreezeGate>);

impl VolumeGate for StandaloneGate {
    fn enter(&self, _access: Access) -> Result<ClusterHold> {
        let nested = HELD.with(|h| h.get()) > 0;
        let mut st = self.0.state.lock();
        while st.frozen && !nested {
            self.0.changed.wait(&mut st);
        }
        st.inside += 1;
        drop(st);
        HELD.with(|h| h.set(h.get() + 1));
        Ok(Box::new(Inside(self.0.clone())))
    }
}

/// Where a standalone mount of the volume `uuid` listens for `freeze` (the mount's control
/// socket, `mafs-fuse`'s `control.rs`; protocol in docs/snapshots.md).
pub fn control_socket_path(uuid: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/run/mafs/control-{uuid}.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_freeze_waits_for_requests_inside_and_holds_new_ones_until_thawed() {
        let g = FreezeGate::new();
        let gate = Arc::new(StandaloneGate(g.clone()));
        let inside = gate.enter(Access::Write).expect("enter");
        let (tx, rx) = std::sync::mpsc::channel();
        let g2 = g.clone();
        let freezer = std::thread::spawn(move || {
            let f = g2.freeze();
            tx.send(()).expect("send");
            std::thread::sleep(Duration::from_millis(200));
            drop(f);
        });
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "froze while a request was inside");
        // Nested entry of a request already inside is not held.
        drop(gate.enter(Access::Read).expect("nested enter"));
        drop(inside);
        rx.recv_timeout(Duration::from_secs(5)).expect("froze once the request left");
        let t = std::time::Instant::now();
        let gate2 = gate.clone();
        std::thread::spawn(move || drop(gate2.enter(Access::Write).expect("enter after thaw"))).join().expect("join");
        assert!(t.elapsed() >= Duration::from_millis(100), "a new request went in while frozen");
        freezer.join().expect("freezer");
    }
}
