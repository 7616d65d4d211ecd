//! `mafs fsck`: runs the checker and maps its outcome to fsck(8) exit codes.
use std::path::Path;

pub fn run(volume: &Path, repair: bool) -> anyhow::Result<i32> {
    let report = match mafs::fsck::check_path(volume, repair) {
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
    println!("{}", report.summary());
    Ok(report.exit_code())
}
