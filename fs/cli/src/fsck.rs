//! `mafs fsck`: runs the checker and maps its outcome to fsck(8) exit codes.
use std::io::IsTerminal;
use std::path::Path;

pub fn run(volume: &Path, repair: bool, override_mmp: bool) -> anyhow::Result<i32> {
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
