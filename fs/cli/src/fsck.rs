//! `mafs fsck`: runs the checker and maps its outcome to fsck(8) exit codes.
use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;
use mafs_core::device::{FileDevice, OpenOptions};

/// The nodes lockd shows on `volume`'s slots, as "node N on slot S" lines (empty: none). The
/// volume's flock only keeps out mounts of this host, and multi-mount protection needs a
/// mount to have written its slot for a while: lockd knows every node at once.
fn nodes_in_lockd(volume: &Path, endpoints: &[String]) -> anyhow::Result<Vec<String>> {
    let dev = FileDevice::open(volume, &OpenOptions { read_only: true, direct: true, ..Default::default() })
        .with_context(|| format!("cannot open {}", volume.display()))?;
    let Ok((sb, _)) = mafs_core::volume::read_superblock(&dev) else {
        return Ok(Vec::new()); // no readable superblock: no cluster can be using it by its uuid
    };
    let names = mafs_cluster::VolumeNames::new(&sb.uuid_string());
    let held = crate::status::lockd_holders(endpoints, &names.slot_prefix()).with_context(|| {
        format!(
            "cannot tell whether cluster nodes use the volume; start lockd, or leave out --lockd (and ${}) to rely on \
             multi-mount protection alone",
            crate::cluster_mount::ENDPOINTS_ENV
        )
    })?;
    Ok(held
        .iter()
        .filter_map(|h| {
            let slot = names.slot_of(&h.resource)?;
            let dead = if h.recovering { ", dead and not recovered yet" } else { "" };
            Some(format!("node {} on slot {slot} (lockd session {}{dead})", h.node_name, h.session_id))
        })
        .collect())
}

pub fn run(volume: &Path, repair: bool, override_mmp: bool, endpoints: Vec<String>) -> anyhow::Result<i32> {
    if !endpoints.is_empty() {
        let nodes = match nodes_in_lockd(volume, &endpoints) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("mafs fsck: {e:#}");
                return Ok(8);
            }
        };
        if !nodes.is_empty() {
            eprintln!(
                "mafs fsck: {} is in use by cluster nodes, as lockd at {} shows:\n  {}\nunmount them first (a dead node's \
                 slot is freed once a live node or the next mount has recovered it); fsck changed nothing",
                volume.display(),
                endpoints.join(","),
                nodes.join("\n  ")
            );
            return Ok(8);
        }
    }
    // A large volume takes a while: on a terminal, say how far the scans have come.
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg}: {pos}/{len} allocation groups [{bar:30}] {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let progress = |what: &str, done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
            b.set_message(what.to_string());
        }
    };
    let checked = mafs_core::fsck::check_path(volume, repair, override_mmp, &progress);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let report = match checked {
        Ok(r) => r,
        Err(e) => {
            // fsck(8): 8 is an operational error (the volume could not be checked at all).
            eprintln!("mafs fsck: cannot check {}: {e}", volume.display());
            return Ok(8);
        }
    };
    for line in &report.notes {
        println!("{line}");
    }
    for p in &report.problems {
        println!("PROBLEM: {p}");
    }
    for f in &report.fixed {
        println!("FIXED: {f}");
    }
    for p in report.remaining.iter().flatten() {
        println!("LEFT: {p}");
    }
    println!("{}", report.summary());
    Ok(report.exit_code())
}
