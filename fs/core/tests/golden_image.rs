//! A volume made by mkfs and the filesystem code as they were when it was written
//! (`fs/core/tests/golden/volume-1.img.gz`), with a known tree: small files, a large file of many
//! extents, a directory large enough for a multi-node index, extended attributes in an inode
//! and in blocks of their own, symlinks inline and in a block, a hard link, a device node.
//! Today's code must check it clean and read back exactly that tree, so that a change of the
//! on-disk format is a deliberate one that shows in review (and comes with a new image and a
//! way to read the old one), never an accident.
//!
//! To write a new image on purpose: `cargo test -p mafs-core --test golden_image -- --ignored
//! write_the_golden_image`, then commit the file.
use mafs_core::device::CrashDevice;
use mafs_core::filesystem::attr::XattrSet;
use mafs_core::filesystem::namespace::NewNode;
use mafs_core::filesystem::{Caller, Fs};
use mafs_core::format::InodeNo;
use mafs_core::fsck;
use mafs_core::mkfs::{mkfs, MkfsOptions};
use mafs_core::volume::Volume;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

const ROOT_USER: Caller = Caller::ROOT;
const SIZE: u64 = 64 << 20;

fn image_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/volume-1.img.gz")
}

fn content(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (seed.wrapping_mul(131) + j * 7 + j / 4096) as u8).collect()
}

fn node(mode: u32) -> NewNode<'static> {
    NewNode { mode, rdev: 0, symlink_target: None }
}

/// What the image holds: path -> (kind, bytes).
enum Want {
    File(Vec<u8>),
    Dir,
    Symlink(String),
}

fn tree() -> Vec<(String, Want)> {
    let mut t = vec![("docs".to_string(), Want::Dir), ("big".to_string(), Want::Dir)];
    t.push(("docs/hello.txt".into(), Want::File(b"hello, golden volume\n".to_vec())));
    t.push(("docs/inline".into(), Want::File(content(1, 1000))));
    t.push(("large.bin".into(), Want::File(content(2, 3 << 20))));
    for i in 0..600 {
        t.push((format!("big/entry-{i:04}-with-a-name-long-enough-to-fill-nodes"), Want::File(content(i + 10, i % 300))));
    }
    t.push(("short-link".into(), Want::Symlink("docs/hello.txt".into())));
    t.push(("long-link".into(), Want::Symlink(format!("/{}", "deep/".repeat(200)))));
    t
}

fn write_tree(fs: &Fs) {
    let root = fs.root();
    let mut dirs = std::collections::HashMap::new();
    dirs.insert(String::new(), root);
    for (path, want) in tree() {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", &path));
        let p = dirs[parent];
        match want {
            Want::Dir => {
                let d = fs.create(p, name.as_bytes(), node(libc::S_IFDIR | 0o755), ROOT_USER).expect("mkdir");
                dirs.insert(path.clone(), d.ino);
            }
            Want::File(data) => {
                let f = fs.create(p, name.as_bytes(), node(libc::S_IFREG | 0o644), ROOT_USER).expect("create");
                if path == "large.bin" {
                    // Written in separate runs with holes between: an extent map of many nodes.
                    for (k, chunk) in data.chunks(8192).enumerate() {
                        if k % 2 == 0 {
                            fs.write(f.ino, (k * 8192) as u64, chunk).expect("write");
                        }
                    }
                } else {
                    fs.write(f.ino, 0, &data).expect("write");
                }
            }
            Want::Symlink(target) => {
                let n = NewNode { mode: libc::S_IFLNK | 0o777, rdev: 0, symlink_target: Some(target.as_bytes()) };
                fs.create(p, name.as_bytes(), n, ROOT_USER).expect("symlink");
            }
        }
    }
    let hello = fs.lookup(dirs["docs"], b"hello.txt").expect("hello");
    fs.setxattr(hello.ino, b"user.small", Some(b"inline value"), XattrSet::Any).expect("xattr");
    fs.setxattr(hello.ino, b"user.big", Some(&content(3, 3000)), XattrSet::Any).expect("xattr");
    fs.link(hello.ino, dirs["docs"], b"hello-again.txt").expect("link");
    fs.create(root, b"null", NewNode { mode: libc::S_IFCHR | 0o666, rdev: libc::makedev(1, 3), symlink_target: None }, ROOT_USER)
        .expect("mknod");
}

/// The expected bytes of `large.bin`: the written runs, zeros in the holes.
fn large_expected() -> Vec<u8> {
    let data = content(2, 3 << 20);
    let mut out = vec![0u8; data.len()];
    let mut end = 0;
    for (k, chunk) in data.chunks(8192).enumerate() {
        if k % 2 == 0 {
            out[k * 8192..k * 8192 + chunk.len()].copy_from_slice(chunk);
            end = k * 8192 + chunk.len();
        }
    }
    // The size ends where the last run written ends.
    out.truncate(end);
    out
}

fn lookup(fs: &Fs, path: &str) -> InodeNo {
    path.split('/').fold(fs.root(), |ino, part| fs.lookup(ino, part.as_bytes()).unwrap_or_else(|e| panic!("{path}: {e}")).ino)
}

#[test]
#[ignore = "writes the checked-in image; run on purpose when the format changes"]
fn write_the_golden_image() {
    let dev = Arc::new(CrashDevice::new(SIZE));
    mkfs(&*dev, &MkfsOptions { slots: 2, label: "golden".into(), ..Default::default() }).expect("mkfs");
    let vol = Volume::open(dev.clone(), 0, "golden", 4096).expect("open");
    let fs = Fs::new(vol).expect("fs");
    write_tree(&fs);
    fs.close().expect("close");
    let img = dev.crash_image(|_| true);
    let mut gz = Command::new("gzip").arg("-9").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("gzip");
    let mut stdin = gz.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&img).expect("feed gzip"));
    let out = gz.wait_with_output().expect("gzip");
    writer.join().expect("writer");
    std::fs::write(image_path(), out.stdout).expect("write image");
}

#[test]
fn the_golden_image_checks_clean_and_reads_back_its_tree() {
    let out = Command::new("gzip").arg("-dc").arg(image_path()).output().expect("gzip -dc");
    assert!(out.status.success(), "cannot decompress {}", image_path().display());
    assert_eq!(out.stdout.len() as u64, SIZE);
    let dev = Arc::new(CrashDevice::from_image(out.stdout));
    let r = fsck::check(dev.clone(), false).expect("fsck");
    assert_eq!(r.exit_code(), 0, "the golden image does not check clean: {:?}", r.problems);
    let vol = Volume::open(dev.clone(), 0, "today", 4096).expect("open");
    let fs = Fs::new(vol).expect("fs");
    assert_eq!(fs.vol.sb.label, "golden");
    for (path, want) in tree() {
        let ino = lookup(&fs, &path);
        let attr = fs.getattr(ino).expect("getattr");
        match want {
            Want::Dir => assert_eq!(attr.mode & libc::S_IFMT, libc::S_IFDIR, "{path}"),
            Want::File(data) => {
                let data = if path == "large.bin" { large_expected() } else { data };
                assert_eq!(attr.size, data.len() as u64, "{path}: size");
                assert_eq!(fs.read(ino, 0, data.len() as u32 + 1).expect("read"), data, "{path}: content");
            }
            Want::Symlink(target) => assert_eq!(fs.readlink(ino).expect("readlink"), target.as_bytes(), "{path}"),
        }
    }
    let mut names = 0;
    fs.readdir(lookup(&fs, "big"), 0, &mut |_, _, name, _| {
        if name != b"." && name != b".." {
            names += 1;
        }
        true
    })
    .expect("readdir");
    assert_eq!(names, 600);
    let hello = lookup(&fs, "docs/hello.txt");
    assert_eq!(lookup(&fs, "docs/hello-again.txt"), hello);
    assert_eq!(fs.getattr(hello).expect("getattr").nlink, 2);
    assert_eq!(fs.getxattr(hello, b"user.small").expect("xattr"), b"inline value");
    assert_eq!(fs.getxattr(hello, b"user.big").expect("xattr"), content(3, 3000));
    let null = fs.getattr(lookup(&fs, "null")).expect("null");
    assert_eq!(null.mode & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(null.rdev, libc::makedev(1, 3));
    fs.close().expect("close");
}
