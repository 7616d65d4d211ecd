//! `mafs status`: a volume's slots as the volume records them, and, with lockd, which node and
//! session holds each, how many locks each node holds on the volume, and how many of them
//! exclusively (what a recovery of that node would keep until its journal is replayed).
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use lockd_client::Holder;
use mafs_core::device::{FileDevice, OpenOptions};
use mafs_core::format::slot::SlotState;
use mafs_core::journal::read_slot;
use mafs_core::volume::read_superblock;

pub fn run(volume: &Path, endpoints: Vec<String>) -> anyhow::Result<i32> {
    mafs_core::claim::check_volume_path(volume)?;
    // O_DIRECT: what the device holds now, not what this host's page cache remembers.
    let dev = FileDevice::open(volume, &OpenOptions { read_only: true, direct: true, ..Default::default() })
        .with_context(|| format!("cannot open {}", volume.display()))?;
    let (sb, _) = read_superblock(&dev).with_context(|| format!("{} is not a readable mafs volume", volume.display()))?;
    let names = mafs_cluster::VolumeNames::new(&sb.uuid_string());
    let held: Option<Vec<Holder>> = if endpoints.is_empty() { None } else { Some(lockd_holders(&endpoints, &names.prefix())?) };
    println!("volume {}  uuid {}  {} slots", volume.display(), sb.uuid_string(), sb.layout.slot_count);
    println!(
        "{:>4}  {:<8} {:<20} {:<20} {:>8} {:>6} {:>9}",
        "SLOT", "STATE", "OWNER (volume)", "NODE (lockd)", "SESSION", "LOCKS", "EXCLUSIVE"
    );
    // Per session: (locks, of which exclusive). The node's name and slot locks are always two
    // of its exclusive ones.
    let per_session: BTreeMap<u64, (usize, usize)> = held.iter().flatten().fold(BTreeMap::new(), |mut m, h| {
        let e = m.entry(h.session_id).or_insert((0, 0));
        e.0 += 1;
        e.1 += usize::from(h.mode == Some(lockd_client::Mode::EX));
        m
    });
    for s in 0..sb.layout.slot_count {
        let (state, owner) = match read_slot(&dev, &sb, s) {
            Ok(h) => {
                (if h.state == SlotState::Clean { "clean" } else { "in use" }, if h.owner.is_empty() { "-".to_string() } else { h.owner })
            }
            Err(e) => ("unreadable", e.to_string()),
        };
        let holder = held.iter().flatten().find(|h| names.slot_of(&h.resource) == Some(s));
        let (node, session, locks, exclusive) = match holder {
            Some(h) => {
                let node = if h.recovering { format!("{} (DEAD, recovering)", h.node_name) } else { h.node_name.clone() };
                let (locks, ex) = per_session.get(&h.session_id).copied().unwrap_or((0, 0));
                (node, h.session_id.to_string(), locks.to_string(), ex.to_string())
            }
            None if held.is_some() => ("-".into(), "-".into(), "-".into(), "-".into()),
            None => ("(give --lockd)".into(), "".into(), "".into(), "".into()),
        };
        println!("{s:>4}  {state:<8} {owner:<20} {node:<20} {session:>8} {locks:>6} {exclusive:>9}");
    }
    Ok(0)
}

/// What lockd at `endpoints` says is held under `prefix` (one volume's locks, or its slots').
pub(crate) fn lockd_holders(endpoints: &[String], prefix: &str) -> anyhow::Result<Vec<Holder>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the lockd client")?;
    rt.block_on(lockd_client::holders(endpoints, prefix)).with_context(|| format!("cannot ask lockd at {}", endpoints.join(",")))
}
