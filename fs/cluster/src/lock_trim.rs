//! Keeping the number of locks a node caches bounded. A node keeps every lock it took after
//! use, so that taking it again costs no lockd round trip; left alone, a node that walks a
//! large tree would keep a lock per inode it ever touched, and lockd's table (and each of its
//! snapshots) would grow with them. Once a node caches more than its limit, the least
//! recently used inode and open locks that no request uses are given up, a batch at a time,
//! as GFS2 reclaims idle glocks: one write-back for the batch (commit, write home, retire the
//! journal, forget the blocks they cover), the kernel's caches under them dropped, then the
//! releases. A lock given up is simply taken again when next needed.
use std::sync::{Arc, Weak};
use std::time::Duration;

use lockd_client::Session;
use mafs_core::cache::Cover;
use mafs_core::format::InodeNo;

use crate::names::VolumeNames;
use crate::volume_lock::Attached;

/// Locks a node keeps cached by default: about 10,000 inodes' inode and open locks. lockd
/// holds some 300 bytes per lock.
pub const DEFAULT_MAX_CACHED_LOCKS: usize = 20_000;

/// How often a node looks whether it caches too many locks.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Starts trimming the locks of `session` down to `max` (to three quarters of it, so that a
/// node just over its limit does not give up a few locks every second).
pub(crate) fn start(runtime: &tokio::runtime::Handle, session: Weak<Session>, names: VolumeNames, attached: Arc<Attached>, max: usize) {
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(LOOK_EVERY).await;
            let Some(session) = session.upgrade() else { return };
            if session.is_lost() {
                return;
            }
            // The locks of inodes the node freed first, whatever the count: they would only
            // pile up (a node that makes and deletes files by the thousand reached its limit
            // within seconds, and then trimmed every second).
            let freed = std::mem::take(&mut *attached.freed.lock());
            if !freed.is_empty() {
                let given = give_up(&session, &names, &attached, freed.iter().map(|i| names.inode(i.get())).collect()).await;
                tracing::debug!(freed = freed.len(), given, "gave up the locks of freed inodes");
            }
            let cached = session.cached_count();
            if cached <= max {
                continue;
            }
            let victims = session.least_recently_used(cached - max * 3 / 4, |r| names.inode_of(r).is_some() || names.open_ino(r).is_some());
            let given = give_up(&session, &names, &attached, victims).await;
            tracing::debug!(cached, max, given, "gave up least recently used locks");
        }
    });
}

/// Gives up those of the inode and open locks `victims` (or, for an inode lock, also its open
/// lock) that are idle: the inode locks after a write-back, the open locks of inodes not open
/// here.
async fn give_up(session: &Session, names: &VolumeNames, attached: &Arc<Attached>, victims: Vec<String>) -> usize {
    let (inodes, mut opens): (Vec<String>, Vec<String>) = victims.into_iter().partition(|r| names.inode_of(r).is_some());
    opens.extend(inodes.iter().filter_map(|r| names.inode_of(r)).map(|i| names.open(i)));
    opens.sort_unstable();
    opens.dedup();
    trim(session, inodes, flush_inodes(names.clone(), attached.clone())).await
        + trim(session, opens, unopened(names.clone(), attached.clone())).await
}

/// Which locks of a batch to release, each with the lock value block to write.
type Released = Vec<(String, Option<Vec<u8>>)>;

async fn trim(session: &Session, resources: Vec<String>, flush: impl FnOnce(Vec<String>) -> Released + Send + 'static) -> usize {
    if resources.is_empty() {
        return 0;
    }
    match session.give_up_idle(resources, flush).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("could not give cached locks up: {e}");
            0
        }
    }
}

/// Writes back and forgets what the inode locks `resources` cover, drops what the kernel
/// caches under them, and answers them all to be released, with a new version in the lock
/// value block of those the node changed (none if the write-back failed: the journal then
/// stops the node, which withdraws). Nothing is kept for a later grant: a lock nobody else
/// holds loses its value block once released.
fn flush_inodes(names: VolumeNames, attached: Arc<Attached>) -> impl FnOnce(Vec<String>) -> Released + Send + 'static {
    move |resources| {
        let Some(fs) = attached.fs().and_then(|f| f.upgrade()) else { return Vec::new() };
        let session = attached.session();
        let inodes: Vec<(String, InodeNo)> = resources.into_iter().filter_map(|r| names.inode_of(&r).map(|i| (r, InodeNo(i)))).collect();
        // Known only before the write-back forgets them: whether the kernel's names go too.
        let kinds: Vec<(InodeNo, Option<bool>)> = inodes.iter().map(|&(_, i)| (i, fs.cached_is_dir(i))).collect();
        let covers: Vec<Cover> = inodes.iter().map(|&(_, i)| Cover::Inode(i)).collect();
        let mut changed = false;
        let released: Released = inodes
            .into_iter()
            .map(|(r, i)| {
                let h = crate::lock_value::hand_over(&fs, session.as_deref(), &r, i);
                changed |= h.changed;
                (r, h.lvb)
            })
            .collect();
        if let Err(e) = if changed { fs.write_back() } else { Ok(()) } {
            tracing::error!("cannot write back what {} cached inode locks cover to give them up: {e}; keeping them", covers.len());
            return Vec::new();
        }
        fs.forget_covers(&covers);
        attached.drop_kernel_inodes(&kinds);
        released
    }
}

/// The open locks of `resources` whose inodes are not open here: those go (an open one says
/// so to a node that would free the inode).
fn unopened(names: VolumeNames, attached: Arc<Attached>) -> impl FnOnce(Vec<String>) -> Released + Send + 'static {
    move |resources| {
        let Some(fs) = attached.fs().and_then(|f| f.upgrade()) else { return Vec::new() };
        resources.into_iter().filter(|r| names.open_ino(r).is_some_and(|i| !fs.is_open_here(InodeNo(i)))).map(|r| (r, None)).collect()
    }
}
