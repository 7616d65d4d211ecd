//! Multi-mount protection, as ext4's MMP: what keeps two hosts from mounting one slot of a
//! shared volume `--standalone` (the volume claim's flock only excludes processes of one host).
//!
//! A mounted node changes its slot header's `mmp_seq` every [`INTERVAL`] (and the journal
//! bumps `generation` at every mount); a clean unmount sets `mmp_seq` to 0. Another node that
//! finds a slot with a non-zero `mmp_seq` or in use watches it for [`WATCH`]: if it changed,
//! the mount there is alive and the slot is refused, naming the host; if not, that node died
//! and the slot may be recovered. Taking a slot writes a random `mmp_seq` and reads it back
//! after [`CLAIM_WAIT`]: of two nodes that found the slot free at the same moment, only the
//! one whose value is still there goes on.
//!
//! On the host named as the slot's owner the wait is skipped when the last update is older
//! than a watch by that host's own clock: the mount is certainly gone. Otherwise (a crash just
//! now, or a second path to the same device on one host) it watches like anyone else.
use crate::device::BlockDevice;
use crate::error::{FsError, Result};
use crate::format::slot::{SlotHeader, SlotState};
use crate::format::superblock::Superblock;
use crate::journal::{read_slot, write_slot};
use std::time::Duration;

/// How often a mounted node shows it is alive.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// How long a slot that looks used is watched: over two updates.
pub const WATCH: Duration = Duration::from_millis(2 * 1000 + 500);
/// How long a claim waits for a rival's claim to land before reading its own back.
pub const CLAIM_WAIT: Duration = Duration::from_millis(500);

/// This host's name, as mounts record it as a slot's owner.
pub fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

/// The slot header as the device holds it now, not as this host's cache remembers it.
fn read_fresh(dev: &dyn BlockDevice, sb: &Superblock, slot: u32) -> Result<SlotHeader> {
    let blk = sb.layout.slot_header_blkno(slot);
    dev.forget_cached(crate::format::BlockNo(blk).byte_offset(), crate::format::BLOCK_SIZE as u64);
    read_slot(dev, sb, slot)
}

/// A slot this host owned whose last update is older than a watch, by this host's clock (the
/// one that wrote it): its mount is certainly gone, no need to watch. On another host the
/// clocks differ and only watching tells; on this one it still does for a mount that updated
/// lately (a crash just now, or a second mount through another path to the same device).
fn silent_here(h: &SlotHeader, our_host: &str) -> bool {
    let now = crate::format::inode::Timespec::now().sec;
    h.owner == our_host && now.saturating_sub(h.mmp_time) > WATCH.as_secs() as i64 + 1
}

fn looks_used(h: &SlotHeader) -> bool {
    h.state == SlotState::InUse || h.mmp_seq != 0
}

fn holder(slot: u32, h: &SlotHeader, action: &str) -> FsError {
    let host = if h.owner.is_empty() { "another host" } else { &h.owner };
    FsError::Busy(format!(
        "slot {slot} of the volume is in use by {host}: its multi-mount protection sequence is still changing, so that mount is alive. \
         {action} while it is mounted there is not safe: unmount it on {host} first. If {host} is known to be dead and cut off from the device, \
         give --override-mmp"
    ))
}

/// Refuses if any of `slots` is used by a live mount on another host. Waits [`WATCH`] when a
/// slot looks used by another host (a live mount, or one that died).
pub fn ensure_not_live(dev: &dyn BlockDevice, sb: &Superblock, slots: &[u32], our_host: &str, action: &str) -> Result<()> {
    let mut watched = Vec::new();
    for &s in slots {
        if let Ok(h) = read_fresh(dev, sb, s) {
            if looks_used(&h) && !silent_here(&h, our_host) {
                watched.push((s, h));
            }
        }
    }
    if watched.is_empty() {
        return Ok(());
    }
    tracing::info!("slot(s) {:?} look used by another host; watching them for {WATCH:?}", watched.iter().map(|w| w.0).collect::<Vec<_>>());
    std::thread::sleep(WATCH);
    for (s, before) in watched {
        let now = read_fresh(dev, sb, s)?;
        if now.mmp_seq != before.mmp_seq || now.generation != before.generation {
            return Err(holder(s, &now, action));
        }
    }
    Ok(())
}

/// Takes `slot` for a mount by `our_host` (after [`ensure_not_live`]): writes a random
/// sequence and checks, [`CLAIM_WAIT`] later, that no other node has written its own.
pub fn claim(dev: &dyn BlockDevice, sb: &Superblock, slot: u32, our_host: &str) -> Result<()> {
    let mut h = read_fresh(dev, sb, slot)?;
    // Named at once: a host the slot's old owner would take for itself must not skip the watch.
    h.owner = our_host.to_string();
    let mine = u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap_or([1; 8])).max(1);
    h.mmp_seq = mine;
    h.mmp_time = crate::format::inode::Timespec::now().sec;
    write_slot(dev, &sb.layout, &mut h, sb.crc_seed())?;
    std::thread::sleep(CLAIM_WAIT);
    let now = read_fresh(dev, sb, slot)?;
    if now.mmp_seq != mine {
        let other = if now.owner.is_empty() || now.owner == our_host { "another node".to_string() } else { now.owner.clone() };
        return Err(FsError::Busy(format!(
            "{other} is mounting slot {slot} of the volume at the same moment; try again, or use another --slot"
        )));
    }
    Ok(())
}

/// One step of keeping a slot's claim alive while no journal owns its header yet (replay).
pub fn touch(dev: &dyn BlockDevice, sb: &Superblock, slot: u32) -> Result<()> {
    let mut h = read_slot(dev, sb, slot)?;
    h.mmp_seq = h.mmp_seq.wrapping_add(1).max(1);
    h.mmp_time = crate::format::inode::Timespec::now().sec;
    write_slot(dev, &sb.layout, &mut h, sb.crc_seed())
}
