//! `mafs info`: the superblock, slots and free space in readable form.
use anyhow::Context;
use mafs_core::device::{BlockDevice, FileDevice, OpenOptions};
use mafs_core::format::ag::AgHeader;
use mafs_core::format::slot::SlotState;
use mafs_core::format::{BlockNo, BLOCK_SIZE};
use mafs_core::journal::read_slot;
use mafs_core::volume::read_superblock;
use std::path::Path;

pub fn run(volume: &Path) -> anyhow::Result<i32> {
    mafs_core::claim::check_volume_path(volume)?;
    let dev = FileDevice::open(volume, &OpenOptions { read_only: true, ..Default::default() })
        .with_context(|| format!("cannot open {}", volume.display()))?;
    let (sb, backup) = read_superblock(&dev).with_context(|| format!("{} is not a readable mafs volume", volume.display()))?;
    let l = &sb.layout;
    println!("volume:          {}", volume.display());
    if backup {
        println!("WARNING:         primary superblock damaged; showing the backup copy (run `mafs fsck --repair`)");
    }
    println!("uuid:            {}", sb.uuid_string());
    println!("label:           {}", if sb.label.is_empty() { "(none)" } else { &sb.label });
    println!("size:            {} bytes ({} blocks of 4096)", bytes(l.total_blocks), l.total_blocks);
    println!("node slots:      {} (journal {} MiB each)", l.slot_count, bytes(l.journal_blocks as u64) >> 20);
    println!("alloc groups:    {} of {} MiB", l.ag_count, bytes(l.ag_blocks as u64) >> 20);
    println!("root inode:      {}", sb.root_ino);
    let mut free = 0u64;
    let mut b = vec![0u8; BLOCK_SIZE];
    for a in 0..l.ag_count {
        dev.read_at(&mut b, BlockNo(l.ag_first_block(a)).byte_offset())?;
        free += AgHeader::of(&b).free();
    }
    let total = l.data_blocks();
    println!(
        "free space:      {} of {} MiB ({:.1}% used)",
        bytes(free) >> 20,
        bytes(total) >> 20,
        100.0 * (total - free.min(total)) as f64 / total as f64
    );
    println!("slots:");
    for s in 0..l.slot_count {
        match read_slot(&dev, &sb, s) {
            Ok(h) => println!(
                "  {s:3}  {:8}  generation {:5}  owner {:20}  next journal seq {}",
                if h.state == SlotState::Clean { "clean" } else { "IN USE" },
                h.generation,
                if h.owner.is_empty() { "-" } else { &h.owner },
                h.tail_seq
            ),
            Err(e) => println!("  {s:3}  unreadable: {e}"),
        }
    }
    Ok(0)
}

/// Bytes in `blocks` blocks.
fn bytes(blocks: u64) -> u64 {
    blocks * BLOCK_SIZE as u64
}
