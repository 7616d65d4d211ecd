//! `mafs mkfs`: checks everything it can before it touches the volume, refuses to overwrite
//! anything already there without `--force`, and leaves nothing behind when it fails (a file it
//! created is removed, a file it grew is cut back to its old length).
use anyhow::{bail, Context};
use mafs_core::device::{BlockDevice, FileDevice, OpenOptions};
use mafs_core::mkfs::MkfsOptions;
use std::path::Path;
use std::time::Duration;

pub fn run(volume: &Path, size: Option<u64>, opts: &MkfsOptions, override_mmp: bool) -> anyhow::Result<i32> {
    // A dangling symlink exists too: mkfs must neither format its target nor remove it.
    let existed = volume.symlink_metadata().is_ok();
    if !existed && size.is_none() {
        bail!("{} does not exist: give --size to create a volume file", volume.display());
    }
    let old_len = if existed {
        mafs_core::claim::check_volume_path(volume)?;
        Some(std::fs::metadata(volume).with_context(|| format!("cannot open {}", volume.display()))?.len())
    } else {
        None
    };
    // Held while formatting: nothing else on this machine uses the volume meanwhile.
    let _claim = if existed { Some(mafs_core::claim::claim_volume(volume, Duration::from_secs(1))?) } else { None };
    if existed {
        let dev = FileDevice::open(volume, &OpenOptions { read_only: true, ..Default::default() })
            .with_context(|| format!("cannot open {}", volume.display()))?;
        if let Some(s) = size {
            if dev.is_block_device() && s > dev.size() {
                bail!("cannot format {}: the device holds {} bytes, less than --size {s}", volume.display(), dev.size());
            }
        }
        // What the formatted volume will span: a block device whole, a file grown to --size.
        let target = if dev.is_block_device() { dev.size() } else { size.unwrap_or(0).max(dev.size()) };
        mafs_core::mkfs::check_options(target, opts).with_context(|| format!("cannot format {}", volume.display()))?;
        // Even --force does not format a volume another host has mounted right now.
        if let (false, Ok((sb, _))) = (override_mmp, mafs_core::volume::read_superblock(&dev)) {
            let slots: Vec<u32> = (0..sb.layout.slot_count).collect();
            mafs_core::mmp::ensure_not_live(&dev, &sb, &slots, &mafs_core::mmp::this_host(), "formatting it")
                .with_context(|| format!("cannot format {}", volume.display()))?;
        }
        if !opts.force {
            if let Some(what) = mafs_core::probe::existing_contents(&dev) {
                bail!("{} already holds {what}; mkfs refuses to overwrite it. Give --force to format it anyway (everything on it will be lost)", volume.display());
            }
        }
    } else if let Some(s) = size {
        mafs_core::mkfs::check_options(s, opts).with_context(|| format!("cannot format {}", volume.display()))?;
    }

    let formatted = (|| -> anyhow::Result<mafs_core::format::superblock::Superblock> {
        let dev = FileDevice::open(volume, &OpenOptions { create: true, size, ..Default::default() })
            .with_context(|| format!("cannot open {}", volume.display()))?;
        if let Some(s) = size {
            if dev.size() < s {
                bail!("{} holds only {} bytes, less than --size {s}", volume.display(), dev.size());
            }
        }
        // Checked above already; the library checks again for its other callers.
        let opts = MkfsOptions { force: true, ..opts.clone() };
        mafs_core::mkfs::mkfs(&dev, &opts).with_context(|| format!("cannot format {}", volume.display()))
    })();
    let sb = match formatted {
        Ok(sb) => sb,
        Err(e) => {
            match old_len {
                None => drop(std::fs::remove_file(volume)),
                Some(len) => {
                    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(volume) {
                        if f.metadata().is_ok_and(|m| m.is_file() && m.len() > len) {
                            let _ = f.set_len(len);
                        }
                    }
                }
            }
            return Err(e);
        }
    };
    println!(
        "formatted {}: {} bytes, {} slots, {} allocation groups, uuid {}",
        volume.display(),
        sb.layout.total_blocks * 4096,
        sb.layout.slot_count,
        sb.layout.ag_count,
        sb.uuid_string()
    );
    Ok(0)
}
