//! Golden images (the AMI workflow): `build` makes a volume from a directory tree — the same
//! tree gives the same bytes — and `launch` makes volumes from an image, each with a UUID of
//! its own, sharing the image's blocks where the host filesystem can (reflink), sparse
//! copies otherwise.
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mafs_core::device::{BlockDevice, FileDevice, OpenOptions};
use mafs_core::filesystem::namespace::NewNode;
use mafs_core::filesystem::{attr::XattrSet, Caller, Fs, SetAttr};
use mafs_core::format::inode::Timespec;
use mafs_core::format::{BlockNo, InodeNo, BLOCK_SIZE};

use crate::error::{Result, SnapshotError};
use crate::source_tree::{self, Entry};

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub size: u64,
    pub slots: u32,
    pub label: String,
}

/// What a build made.
pub struct Built {
    pub uuid: String,
    pub entries: usize,
    pub bytes: u64,
}

/// Builds the image at `image` (which must not exist) from the tree at `from`.
pub fn build(from: &Path, image: &Path, opts: &BuildOptions) -> Result<Built> {
    if image.exists() {
        return Err(SnapshotError::Usage(format!("{} exists; an image build makes a new file", image.display())));
    }
    let entries = source_tree::walk(from)?;
    // Every time the filesystem takes from the clock is this one: the newest in the tree
    // (or $SOURCE_DATE_EPOCH), so the image depends on the tree alone.
    let newest = entries.iter().map(|e| (e.meta.mtime(), e.meta.mtime_nsec() as u32)).max().unwrap_or((0, 0));
    let epoch = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.parse().ok()).map(|s| (s, 0)).unwrap_or(newest);
    Timespec::fix_clock(Timespec { sec: epoch.0, nsec: epoch.1 });
    let dev: Arc<dyn BlockDevice> =
        Arc::new(FileDevice::open(image, &OpenOptions { create: true, size: Some(opts.size), ..Default::default() })?);
    let built = fill(from, &entries, &dev, opts);
    if built.is_err() {
        let _ = std::fs::remove_file(image);
    }
    built
}

fn fill(from: &Path, entries: &[Entry], dev: &Arc<dyn BlockDevice>, opts: &BuildOptions) -> Result<Built> {
    let size_seed = blake3::hash(format!("mafs image {} {}", opts.size, opts.slots).as_bytes());
    let mut seed_uuid = [0u8; 16];
    seed_uuid.copy_from_slice(&size_seed.as_bytes()[..16]);
    let mk = mafs_core::mkfs::MkfsOptions {
        slots: opts.slots,
        label: opts.label.clone(),
        journal_blocks: None,
        force: true,
        uuid: Some(seed_uuid),
    };
    let sb = mafs_core::mkfs::mkfs(&**dev, &mk)?;
    let fs = Fs::new(mafs_core::volume::Volume::open(dev.clone(), 0, "image", 4096)?)?;
    let mut b = Builder { fs: &fs, from, dirs: HashMap::new(), links: HashMap::new(), hash: blake3::Hasher::new(), bytes: 0 };
    let total: u64 = entries.iter().filter(|e| e.meta.is_file()).map(|e| e.meta.len()).sum();
    let bar = crate::progress::bytes_bar(total, "build");
    b.dirs.insert(PathBuf::new(), InodeNo(sb.root_ino));
    for e in &entries[1..] {
        b.add(e)?;
        if e.meta.is_file() {
            bar.inc(e.meta.len());
        }
    }
    // Directories last, deepest first: adding their entries changed their times, and a
    // default ACL set before would have been inherited by entries that have none.
    for e in entries.iter().rev().filter(|e| e.meta.is_dir()) {
        let ino = b.dirs[&e.rel];
        b.finish_attrs(e, ino)?;
    }
    bar.finish_and_clear();
    let (hash, bytes) = (b.hash.finalize(), b.bytes);
    fs.close()?;
    drop(fs);
    // The journals hold the build's transactions, in an order that may vary: all replayed
    // and retired, they are zeroed (the slot headers' copies at their ends stay).
    for s in 0..sb.layout.slot_count {
        let (start, len) = sb.layout.journal_ring(s);
        dev.zero_range(BlockNo(start).byte_offset(), len as u64 * BLOCK_SIZE as u64)?;
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&hash.as_bytes()[..16]);
    // A version-4-shaped UUID, as mkfs makes.
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    let sb = crate::identity::make_own(dev, uuid)?;
    Ok(Built { uuid: sb.uuid_string(), entries: entries.len(), bytes })
}

struct Builder<'a> {
    fs: &'a Fs,
    from: &'a Path,
    dirs: HashMap<PathBuf, InodeNo>,
    /// Source (device, inode) of files with more than one link -> the image's inode.
    links: HashMap<(u64, u64), InodeNo>,
    /// Of everything the image holds, in order: names the image.
    hash: blake3::Hasher,
    bytes: u64,
}

impl Builder<'_> {
    fn add(&mut self, e: &Entry) -> Result<()> {
        let parent = e.rel.parent().map(Path::to_path_buf).unwrap_or_default();
        let pino = *self.dirs.get(&parent).ok_or_else(|| SnapshotError::Usage(format!("{} has no parent in the tree", e.rel.display())))?;
        let name = e.rel.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
        let path = self.from.join(&e.rel);
        let ctx = |err: mafs_core::error::FsError| SnapshotError::Usage(format!("cannot add {} to the image: {err}", e.rel.display()));
        self.hash.update(e.rel.as_os_str().as_bytes());
        self.hash.update(&[0]);
        let m = &e.meta;
        if m.is_file() && m.nlink() > 1 {
            if let Some(&ino) = self.links.get(&source_tree::file_id(m)) {
                self.hash.update(format!("link {}", ino.get()).as_bytes());
                self.fs.link(ino, pino, &name).map_err(ctx)?;
                return Ok(());
            }
        }
        let t = m.file_type();
        let target = if t.is_symlink() {
            Some(std::fs::read_link(&path).map_err(|err| SnapshotError::io(format!("cannot read {}", path.display()), err))?)
        } else {
            None
        };
        let target_bytes = target.as_ref().map(|p| p.as_os_str().as_bytes().to_vec());
        let rdev = if t.is_block_device() || t.is_char_device() { m.rdev() } else { 0 };
        let node = NewNode { mode: m.mode(), rdev, symlink_target: target_bytes.as_deref() };
        let ino = self.fs.create(pino, &name, node, Caller::ROOT).map_err(ctx)?.ino;
        if let Some(t) = &target_bytes {
            self.hash.update(t);
        }
        if m.is_dir() {
            self.dirs.insert(e.rel.clone(), ino);
            return Ok(());
        }
        if m.is_file() {
            self.copy_data(&path, m.len(), ino)?;
            if m.nlink() > 1 {
                self.links.insert(source_tree::file_id(m), ino);
            }
        }
        self.finish_attrs(e, ino)
    }

    /// The file's data extents, written where they are (holes stay holes), and its size.
    fn copy_data(&mut self, path: &Path, size: u64, ino: InodeNo) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(path).map_err(|err| SnapshotError::io(format!("cannot read {}", path.display()), err))?;
        let mut buf = vec![0u8; 1 << 20];
        for (start, len) in source_tree::data_extents(&f, size)? {
            let mut at = start;
            while at < start + len {
                let n = ((start + len - at) as usize).min(buf.len());
                f.read_exact_at(&mut buf[..n], at).map_err(|err| SnapshotError::io(format!("cannot read {}", path.display()), err))?;
                self.hash.update(&at.to_le_bytes());
                self.hash.update(&buf[..n]);
                self.fs.write(ino, at, &buf[..n])?;
                at += n as u64;
            }
            self.bytes += len;
        }
        self.fs.setattr(ino, &SetAttr { size: Some(size), ..Default::default() })?;
        Ok(())
    }

    /// Owner, mode, extended attributes (ACLs among them) and times, in that order: a chown
    /// clears set-ID bits, and times go last since every change sets ctime.
    fn finish_attrs(&mut self, e: &Entry, ino: InodeNo) -> Result<()> {
        let m = &e.meta;
        let ctx = |err: mafs_core::error::FsError| SnapshotError::Usage(format!("cannot set the attributes of {}: {err}", e.rel.display()));
        self.hash.update(format!("{:o} {} {} {} {} {}", m.mode(), m.uid(), m.gid(), m.rdev(), m.mtime(), m.mtime_nsec()).as_bytes());
        self.fs.setattr(ino, &SetAttr { uid: Some(m.uid()), gid: Some(m.gid()), ..Default::default() }).map_err(ctx)?;
        if !m.file_type().is_symlink() {
            self.fs.setattr(ino, &SetAttr { mode: Some(m.mode() & 0o7777), ..Default::default() }).map_err(ctx)?;
        }
        for (name, value) in source_tree::xattrs(&self.from.join(&e.rel))? {
            self.hash.update(&name);
            self.hash.update(&value);
            self.fs.setxattr(ino, &name, Some(&value), XattrSet::Any).map_err(ctx)?;
        }
        // atime is the mtime: reading the tree to build it changes the tree's atimes.
        let mtime = Timespec { sec: m.mtime(), nsec: m.mtime_nsec() as u32 };
        self.fs.setattr(ino, &SetAttr { atime: Some(mtime), mtime: Some(mtime), ..Default::default() }).map_err(ctx)?;
        Ok(())
    }
}

/// Makes `count` volumes from `image` in `out` (named after the image, `-1`, `-2`, ...),
/// each with a new UUID; their paths.
pub fn launch(image: &Path, count: u32, out: &Path) -> Result<Vec<(PathBuf, String, bool)>> {
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(image, &OpenOptions { read_only: true, ..Default::default() })?);
    mafs_core::volume::read_superblock(&*dev)?;
    std::fs::create_dir_all(out).map_err(|e| SnapshotError::io(format!("cannot create {}", out.display()), e))?;
    let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "volume".into());
    let mut made = Vec::new();
    for k in 1..=count {
        let dest = out.join(format!("{stem}-{k}.img"));
        if dest.exists() {
            return Err(SnapshotError::Usage(format!("{} exists; launch makes new volumes", dest.display())));
        }
        let shared = copy_volume(image, &dest)?;
        let copy: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&dest, &OpenOptions::default())?);
        let sb = crate::identity::make_own(&copy, *uuid::Uuid::new_v4().as_bytes())?;
        made.push((dest, sb.uuid_string(), shared));
    }
    Ok(made)
}

/// Copies `from` to the new file `to`: a reflink (the copy shares every block until one is
/// written) where the host filesystem has them, else a sparse copy; whether it was a reflink.
fn copy_volume(from: &Path, to: &Path) -> Result<bool> {
    use std::os::unix::io::AsRawFd;
    let err = |e| SnapshotError::io(format!("cannot copy {} to {}", from.display(), to.display()), e);
    let src = std::fs::File::open(from).map_err(err)?;
    let dst = std::fs::OpenOptions::new().write(true).create_new(true).open(to).map_err(err)?;
    // FICLONE = _IOW(0x94, 9, int)
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: an ioctl on two open descriptors.
    if unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) } == 0 {
        return Ok(true);
    }
    let size = src.metadata().map_err(err)?.len();
    dst.set_len(size).map_err(err)?;
    let mut buf = vec![0u8; 1 << 20];
    use std::os::unix::fs::FileExt;
    for (start, len) in source_tree::data_extents(&src, size)? {
        let mut at = start;
        while at < start + len {
            let n = ((start + len - at) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], at).map_err(err)?;
            // Zeros inside a data extent stay holes in the copy.
            if buf[..n].iter().any(|&b| b != 0) {
                dst.write_all_at(&buf[..n], at).map_err(err)?;
            }
            at += n as u64;
        }
    }
    dst.sync_all().map_err(err)?;
    Ok(false)
}
