//! smallfiles: metadata speed of a filesystem on small files.
//!
//! Phases (each timed on its own, in this order):
//! - `create`: N files of SIZE bytes in one directory, each `open(O_CREAT|O_WRONLY|O_TRUNC)`,
//!   one `write`, `close`;
//! - `stat`: `stat` of every file, right after the create phase wrote them (the kernel dropped
//!   cached attributes on write, so on FUSE each one costs a GETATTR);
//! - `warmstat`: `stat` of every file again, nothing having changed since (served from the
//!   kernel's attribute and entry caches when the filesystem allows it);
//! - `unlink`: `unlink` of every file.
//!
//! Usage: `smallfiles DIR [--files N] [--size BYTES] [--phases create,stat,warmstat,unlink]
//!         [--label L] [--json] [--keep]`
//! `--phases` runs a subset, so a driver can attach a tracer between phases (the tree stays in
//! `DIR/smallfiles.d` between runs when `unlink` is not among them). Output: one line per phase,
//! `phase=create ops=10000 secs=0.412 ops_per_sec=24271`, or one JSON object with `--json`.
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

struct Args {
    dir: PathBuf,
    files: usize,
    size: usize,
    phases: Vec<String>,
    label: String,
    json: bool,
    keep: bool,
}

fn usage() -> ! {
    eprintln!("usage: smallfiles DIR [--files N] [--size BYTES] [--phases create,stat,warmstat,unlink] [--label L] [--json] [--keep]");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        dir: PathBuf::new(),
        files: 10_000,
        size: 100,
        phases: ["create", "stat", "warmstat", "unlink"].iter().map(|s| s.to_string()).collect(),
        label: String::new(),
        json: false,
        keep: false,
    };
    let mut dir = None;
    while let Some(x) = it.next() {
        match x.as_str() {
            "--files" => a.files = it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage()),
            "--size" => a.size = it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage()),
            "--phases" => a.phases = it.next().unwrap_or_else(|| usage()).split(',').map(|s| s.trim().to_string()).collect(),
            "--label" => a.label = it.next().unwrap_or_else(|| usage()),
            "--json" => a.json = true,
            "--keep" => a.keep = true,
            "-h" | "--help" => usage(),
            s if s.starts_with('-') => usage(),
            s => dir = Some(PathBuf::from(s)),
        }
    }
    a.dir = dir.unwrap_or_else(|| usage());
    for p in &a.phases {
        if !["create", "stat", "warmstat", "unlink"].contains(&p.as_str()) {
            eprintln!("smallfiles: unknown phase {p}");
            usage();
        }
    }
    a
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn die(what: &str, p: &CString) -> ! {
    eprintln!("smallfiles: {what} {}: {}", p.to_string_lossy(), std::io::Error::last_os_error());
    std::process::exit(1)
}

fn main() {
    let a = parse_args();
    let tree = a.dir.join("smallfiles.d");
    // Paths are built before timing, so the phases measure only the system calls.
    let names: Vec<CString> = (0..a.files).map(|i| cpath(&tree.join(format!("f{i:06}")))).collect();
    let data = vec![b'x'; a.size];
    let mut results: Vec<(String, usize, f64)> = Vec::new();

    for phase in &a.phases {
        let t0 = Instant::now();
        match phase.as_str() {
            "create" => {
                if let Err(e) = std::fs::create_dir_all(&tree) {
                    eprintln!("smallfiles: cannot create {}: {e}", tree.display());
                    std::process::exit(1);
                }
                let t = Instant::now();
                for p in &names {
                    // SAFETY: plain syscalls on a valid C string and buffer.
                    unsafe {
                        let fd = libc::open(p.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC | libc::O_CLOEXEC, 0o644);
                        if fd < 0 {
                            die("open", p);
                        }
                        if libc::write(fd, data.as_ptr().cast(), data.len()) != data.len() as isize {
                            die("write", p);
                        }
                        if libc::close(fd) != 0 {
                            die("close", p);
                        }
                    }
                }
                results.push((phase.clone(), a.files, t.elapsed().as_secs_f64()));
                continue;
            }
            "stat" | "warmstat" => {
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                for p in &names {
                    // SAFETY: valid C string and stat buffer.
                    if unsafe { libc::stat(p.as_ptr(), &mut st) } != 0 {
                        die("stat", p);
                    }
                    if st.st_size as usize != a.size {
                        eprintln!("smallfiles: {} has size {}, expected {}", p.to_string_lossy(), st.st_size, a.size);
                        std::process::exit(1);
                    }
                }
            }
            "unlink" => {
                for p in &names {
                    // SAFETY: valid C string.
                    if unsafe { libc::unlink(p.as_ptr()) } != 0 {
                        die("unlink", p);
                    }
                }
            }
            _ => unreachable!(),
        }
        results.push((phase.clone(), a.files, t0.elapsed().as_secs_f64()));
    }
    if a.phases.iter().any(|p| p == "unlink") && !a.keep {
        let _ = std::fs::remove_dir(&tree);
    }

    if a.json {
        let body: Vec<String> = results
            .iter()
            .map(|(p, n, s)| format!("\"{p}\":{{\"ops\":{n},\"secs\":{s:.6},\"ops_per_sec\":{:.1}}}", *n as f64 / s))
            .collect();
        println!("{{\"label\":\"{}\",\"files\":{},\"size\":{},{}}}", a.label, a.files, a.size, body.join(","));
    } else {
        for (p, n, s) in &results {
            let label = if a.label.is_empty() { String::new() } else { format!("label={} ", a.label) };
            println!("{label}phase={p} ops={n} secs={s:.6} ops_per_sec={:.1}", *n as f64 / s);
        }
    }
}
