//! `mafs image build` and `mafs image launch`: the AMI workflow (configure once, launch many).
use std::path::Path;

use anyhow::Context;

pub fn build(from: &Path, size: u64, image: &Path, slots: u32, label: String) -> anyhow::Result<i32> {
    let start = std::time::Instant::now();
    let opts = mafs_snapshot::image::BuildOptions { size, slots, label };
    let b = mafs_snapshot::image::build(from, image, &opts)
        .with_context(|| format!("cannot build {} from {}", image.display(), from.display()))?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "built {} from {}: {} entries, {} MiB of file data in {secs:.1} s ({:.0} MiB/s); UUID {}",
        image.display(),
        from.display(),
        b.entries,
        b.bytes >> 20,
        b.bytes as f64 / 1048576.0 / secs.max(1e-9),
        b.uuid
    );
    println!("{}", b.uuid);
    Ok(0)
}

pub fn launch(image: &Path, count: u32, out: &Path) -> anyhow::Result<i32> {
    let made =
        mafs_snapshot::image::launch(image, count, out).with_context(|| format!("cannot launch volumes from {}", image.display()))?;
    for (path, uuid, shared) in made {
        eprintln!("{}: UUID {uuid}, {}", path.display(), if shared { "blocks shared with the image (reflink)" } else { "sparse copy" });
        println!("{}", path.display());
    }
    Ok(0)
}
