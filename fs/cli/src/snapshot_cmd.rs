//! `mafs snapshot create|list|show|diff|delete` and `mafs restore`.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use mafs_snapshot::freeze::{ClusterFreeze, Freezer, StandaloneFreeze, Unmounted};
use mafs_snapshot::manifest::Manifest;
use mafs_snapshot::{catalog, store};

/// Where snapshots go when no --store is given (and $MAFS_STORE is not set).
pub const DEFAULT_STORE: &str = "/var/lib/mafs/snapshots";

pub fn store_spec(given: Option<String>) -> String {
    given.or_else(|| std::env::var("MAFS_STORE").ok()).unwrap_or_else(|| DEFAULT_STORE.to_string())
}

/// Parses `K=V`.
pub fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("a tag is KEY=VALUE, not {s:?}")),
    }
}

/// How the volume's writers are held: lockd for a cluster, the control socket of a standalone
/// mount on this host, or nothing for a volume nobody has mounted.
fn freezer_for(volume: &Path, endpoints: Vec<String>) -> anyhow::Result<Box<dyn Freezer>> {
    let dev = mafs_snapshot::volume_io::open_volume(volume, true)?;
    let (sb, _) = mafs_core::volume::read_superblock(&*dev).with_context(|| format!("cannot read {}", volume.display()))?;
    let uuid = sb.uuid_string();
    if !endpoints.is_empty() {
        return Ok(Box::new(ClusterFreeze::connect(&endpoints, &uuid)?));
    }
    if let Some(f) = StandaloneFreeze::find(&uuid) {
        return Ok(Box::new(f));
    }
    let claim = mafs_core::claim::claim_volume(volume, Duration::ZERO).with_context(|| {
        format!(
            "{} is in use on this host but no standalone mount of it answers: if cluster nodes mount it, give --lockd HOST:PORT[,...]",
            volume.display()
        )
    })?;
    let slots: Vec<u32> = (0..sb.layout.slot_count).collect();
    mafs_core::mmp::ensure_not_live(&*dev, &sb, &slots, &mafs_core::mmp::this_host(), "taking a snapshot without --lockd")
        .context("the volume is mounted on another host; give --lockd to freeze its cluster")?;
    Ok(Box::new(Unmounted::new(claim)))
}

pub fn create(volume: &Path, store_spec: &str, endpoints: Vec<String>, tags: Vec<(String, String)>, full: bool) -> anyhow::Result<i32> {
    let store = store::open(store_spec)?;
    let freezer = freezer_for(volume, endpoints)?;
    let opts = mafs_snapshot::create::CreateOptions { tags: tags.into_iter().collect::<BTreeMap<_, _>>(), workers: 4, full };
    let start = std::time::Instant::now();
    let m = mafs_snapshot::create::create(volume, store, &*freezer, &opts)
        .with_context(|| format!("snapshot of {} failed; nothing was added to the store's list of snapshots", volume.display()))?;
    let i = &m.info;
    let read = i.chunks_read * mafs_snapshot::volume_io::CHUNK_BYTES;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "snapshot of {} ({}): {} chunks read ({} MiB, {:.1} MiB/s), {} bytes added to {store_spec}, writers held {} ms{}",
        volume.display(),
        freezer.describe(),
        i.chunks_read,
        read >> 20,
        read as f64 / 1048576.0 / secs.max(1e-9),
        i.bytes_added,
        i.frozen_ms,
        i.parent.as_ref().map(|p| format!(", incremental on {p}")).unwrap_or_default()
    );
    println!("{}", i.id);
    Ok(0)
}

fn tags_text(m: &Manifest) -> String {
    m.info.tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

pub fn list(store_spec: &str, volume_uuid: Option<&str>) -> anyhow::Result<i32> {
    let store = store::open(store_spec)?;
    println!("{:<32} {:<20} {:<36} {:>8} {:>12}  TAGS", "SNAPSHOT", "CREATED (UTC)", "VOLUME", "READ", "ADDED");
    for m in catalog::all(&*store)? {
        let i = &m.info;
        if volume_uuid.is_some_and(|u| u != i.volume_uuid) {
            continue;
        }
        println!(
            "{:<32} {:<20} {:<36} {:>8} {:>12}  {}",
            i.id,
            time_text(i.created),
            i.volume_uuid,
            i.chunks_read,
            i.bytes_added,
            tags_text(&m)
        );
    }
    Ok(0)
}

fn time_text(secs: i64) -> String {
    // The id carries the date already; print it in the usual form.
    let id = mafs_snapshot::manifest::new_id(secs);
    let t = &id[5..20];
    format!("{}-{}-{} {}:{}:{}", &t[0..4], &t[4..6], &t[6..8], &t[9..11], &t[11..13], &t[13..15])
}

pub fn show(store_spec: &str, id: &str) -> anyhow::Result<i32> {
    let store = store::open(store_spec)?;
    let m = catalog::read(&*store, id)?;
    let i = &m.info;
    println!("snapshot:      {}", i.id);
    println!("created:       {} UTC", time_text(i.created));
    println!("volume:        {} {}", i.volume_uuid, if i.label.is_empty() { String::new() } else { format!("({})", i.label) });
    println!("size:          {} bytes", i.total_blocks * 4096);
    println!("parent:        {}", i.parent.as_deref().unwrap_or("none (full)"));
    println!(
        "chunks:        {} of {} KiB, {} of them zeros",
        m.chunks.len(),
        i.chunk_blocks * 4,
        m.chunks.iter().filter(|c| c.is_zero()).count()
    );
    println!("chunks read:   {}", i.chunks_read);
    println!("bytes added:   {}", i.bytes_added);
    println!("writers held:  {} ms", i.frozen_ms);
    println!("generation:    {}", i.generation);
    println!("tags:          {}", tags_text(&m));
    Ok(0)
}

/// The chunks that differ between two snapshots of one volume (EBS's ListChangedBlocks).
pub fn diff(store_spec: &str, a: &str, b: &str) -> anyhow::Result<i32> {
    let store = store::open(store_spec)?;
    let (ma, mb) = (catalog::read(&*store, a)?, catalog::read(&*store, b)?);
    if ma.info.volume_uuid != mb.info.volume_uuid {
        anyhow::bail!(
            "{a} is of volume {} and {b} of volume {}: diff compares snapshots of one volume",
            ma.info.volume_uuid,
            mb.info.volume_uuid
        );
    }
    let len = ma.info.chunk_blocks * 4096;
    println!("# block size {len}; CHUNK OFFSET FIRST SECOND (zero: all zeros)");
    let name = |c: &mafs_snapshot::chunk::ChunkId| if c.is_zero() { "zero".to_string() } else { c.hex() };
    let n = ma.chunks.len().max(mb.chunks.len());
    let zero = mafs_snapshot::chunk::ChunkId::ZERO;
    let mut changed = 0;
    for c in 0..n {
        let (x, y) = (ma.chunks.get(c).unwrap_or(&zero), mb.chunks.get(c).unwrap_or(&zero));
        if x != y {
            changed += 1;
            println!("{c} {} {} {}", c as u64 * len, name(x), name(y));
        }
    }
    eprintln!("{changed} of {n} chunks differ");
    Ok(0)
}

pub fn delete(store_spec: &str, ids: &[String]) -> anyhow::Result<i32> {
    let store = store::open(store_spec)?;
    let c = mafs_snapshot::gc::delete(store, ids, Duration::from_secs(600))?;
    eprintln!("deleted {} snapshot(s); {} unused chunks removed, {} kept", ids.len(), c.chunks_deleted, c.chunks_kept);
    Ok(0)
}

pub fn restore(store_spec: &str, id: &str, target: &Path, size: Option<u64>) -> anyhow::Result<i32> {
    let store = store::open(store_spec)?;
    let start = std::time::Instant::now();
    let opts = mafs_snapshot::restore::RestoreOptions { workers: 4, size, uuid: None };
    let uuid = mafs_snapshot::restore::restore(store, id, target, &opts)
        .with_context(|| format!("cannot restore {id} to {}", target.display()))?;
    eprintln!("restored {id} to {} in {:.1} s; the new volume's UUID is {uuid}", target.display(), start.elapsed().as_secs_f64());
    println!("{uuid}");
    Ok(0)
}
