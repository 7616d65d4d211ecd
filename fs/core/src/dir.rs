//! Directory index: entries live in the directory inode's tree, keyed by a 47-bit hash of the
//! name shifted left 16 bits plus a 16-bit collision counter. Lookup reads one leaf instead of
//! scanning the directory, and the key doubles as a readdir cookie that stays valid while the
//! directory changes (entries are returned in key order; an entry's key never changes).
//!
//! The entry record (key and value layout, name hash) is `format::dirent`.
use crate::btree::{TreeRead, TreeWrite};
use crate::error::{FsError, Result};
use crate::format::dirent::{encode_value, entry_key, key_counter, key_hash, name_hash, MAX_COUNTER};
pub use crate::format::dirent::{DirEntry, FIRST_ENTRY_KEY};
use crate::format::{InodeNo, MAX_NAME_LEN};

pub fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > MAX_NAME_LEN {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".." {
        return Err(FsError::Invalid("invalid file name"));
    }
    Ok(())
}

/// Finds `name` in the directory.
pub fn lookup(t: &TreeRead, name: &[u8]) -> Result<Option<DirEntry>> {
    let h = name_hash(name);
    let mut found = None;
    t.scan(entry_key(h, 0), &mut |k, v| {
        if key_hash(k) != h {
            return false;
        }
        match DirEntry::decode(k, v) {
            Some(e) if e.name == name => {
                found = Some(e);
                false
            }
            _ => true,
        }
    })?;
    Ok(found)
}

/// Adds an entry (the caller has checked that the name is absent); returns its key.
pub fn add(t: &mut TreeWrite, name: &[u8], ino: InodeNo, dtype: u8) -> Result<u64> {
    let h = name_hash(name);
    let mut next_free = 0u64;
    t.read.scan(entry_key(h, 0), &mut |k, _| {
        if key_hash(k) != h || key_counter(k) != next_free {
            return false;
        }
        next_free += 1;
        true
    })?;
    if next_free > MAX_COUNTER {
        return Err(FsError::NoSpace);
    }
    let key = entry_key(h, next_free);
    t.insert(key, &encode_value(ino, dtype, name))?;
    Ok(key)
}

/// Points an existing entry at another inode (rename over an existing name).
pub fn replace(t: &mut TreeWrite, key: u64, name: &[u8], ino: InodeNo, dtype: u8) -> Result<()> {
    t.insert(key, &encode_value(ino, dtype, name)).map(|_| ())
}

pub fn remove(t: &mut TreeWrite, key: u64) -> Result<()> {
    t.remove(key)?.ok_or(FsError::NotFound).map(|_| ())
}

/// Entries with key >= `from`, in key order, until `f` returns false.
pub fn list(t: &TreeRead, from: u64, f: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
    t.scan(from.max(FIRST_ENTRY_KEY), &mut |k, v| match DirEntry::decode(k, v) {
        Some(e) => f(e),
        None => true,
    })
}

pub fn dtype_of_mode(mode: u32) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => libc::DT_DIR,
        libc::S_IFREG => libc::DT_REG,
        libc::S_IFLNK => libc::DT_LNK,
        libc::S_IFIFO => libc::DT_FIFO,
        libc::S_IFCHR => libc::DT_CHR,
        libc::S_IFBLK => libc::DT_BLK,
        libc::S_IFSOCK => libc::DT_SOCK,
        _ => libc::DT_UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    //! Directory index: many names, forged hash collisions, readdir cookies that stay valid
    //! while the directory changes.
    use super::*;
    use crate::cache::MetaBuf;
    use crate::device::CrashDevice;
    use crate::volume::Volume;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn setup() -> (Arc<CrashDevice>, Volume, Arc<MetaBuf>) {
        let dev = crate::test_support::scratch_device();
        let vol = Volume::open(dev.clone(), 0, "dir-test", 1 << 16).expect("open");
        let buf = crate::test_support::new_tree_inode(&vol);
        (dev, vol, buf)
    }

    /// Runs `f` on the directory tree inside one transaction, then commits.
    fn change<T>(vol: &Volume, buf: &Arc<MetaBuf>, f: impl FnOnce(&mut TreeWrite) -> T) -> T {
        let h = vol.journal.begin().unwrap();
        let mut t = TreeWrite::new(&vol.cache, &vol.alloc, &h, buf);
        let r = f(&mut t);
        drop(h);
        vol.commit().unwrap();
        r
    }

    fn listing(vol: &Volume, buf: &Arc<MetaBuf>, from: u64) -> Vec<DirEntry> {
        let t = TreeRead { cache: &vol.cache, inode_buf: buf };
        let mut out = Vec::new();
        list(&t, from, &mut |e| {
            out.push(e);
            true
        })
        .unwrap();
        out
    }

    fn name_of(i: usize) -> Vec<u8> {
        // Lengths from a few bytes to 255.
        let mut n = format!("n{i}-").into_bytes();
        let len = ((i * 37) % 255 + 1).max(n.len());
        n.resize(len, b'x');
        n
    }

    #[test]
    fn many_names_are_found_listed_in_cookie_order_and_removed() {
        let (_dev, vol, buf) = setup();
        let mut model: BTreeMap<u64, (Vec<u8>, InodeNo)> = BTreeMap::new();
        let names: Vec<Vec<u8>> = (0..4000).map(name_of).collect();
        let uniq: std::collections::HashSet<&Vec<u8>> = names.iter().collect();
        assert_eq!(uniq.len(), names.len());
        for (c, chunk) in names.chunks(250).enumerate() {
            change(&vol, &buf, |t| {
                for (j, n) in chunk.iter().enumerate() {
                    let ino = InodeNo(1000 + (c * 250 + j) as u64);
                    let key = add(t, n, ino, libc::DT_REG).unwrap();
                    assert!(key >= FIRST_ENTRY_KEY);
                    assert_eq!(key >> 16, name_hash(n));
                    assert!(model.insert(key, (n.clone(), ino)).is_none(), "key {key} handed out twice");
                }
            });
        }
        let t = TreeRead { cache: &vol.cache, inode_buf: &buf };
        for (key, (n, ino)) in &model {
            let e = lookup(&t, n).unwrap().unwrap_or_else(|| panic!("{} not found", String::from_utf8_lossy(n)));
            assert_eq!((e.key, e.ino, &e.name, e.dtype), (*key, *ino, n, libc::DT_REG));
        }
        assert_eq!(lookup(&t, b"absent").unwrap(), None);
        // The listing is in key order and holds every entry once.
        let all = listing(&vol, &buf, 0);
        assert_eq!(all.iter().map(|e| e.key).collect::<Vec<_>>(), model.keys().copied().collect::<Vec<_>>());

        // A reader stops half way (cookie = last key returned + 1, as readdir does); the
        // directory changes under it; it resumes and sees every surviving entry after its
        // cookie exactly once, and entries keep their keys.
        let cookie = all[all.len() / 2].key + 1;
        let removed: Vec<u64> = model.keys().copied().step_by(3).collect();
        change(&vol, &buf, |t| {
            for k in &removed {
                remove(t, *k).unwrap();
            }
            assert!(matches!(remove(t, removed[0]), Err(FsError::NotFound)));
        });
        for k in &removed {
            model.remove(k);
        }
        let added: Vec<Vec<u8>> = (0..300).map(|i| format!("late-{i}").into_bytes()).collect();
        change(&vol, &buf, |t| {
            for (i, n) in added.iter().enumerate() {
                let ino = InodeNo(90_000 + i as u64);
                let key = add(t, n, ino, libc::DT_DIR).unwrap();
                model.insert(key, (n.clone(), ino));
            }
        });
        let rest = listing(&vol, &buf, cookie);
        let want: Vec<u64> = model.range(cookie..).map(|(k, _)| *k).collect();
        assert_eq!(rest.iter().map(|e| e.key).collect::<Vec<_>>(), want);
        for e in &rest {
            assert_eq!(model[&e.key], (e.name.clone(), e.ino), "entry kept its key");
        }
        // Replace points a name at another inode without moving it.
        let (k0, (n0, _)) = model.iter().next().map(|(k, v)| (*k, v.clone())).unwrap();
        change(&vol, &buf, |t| replace(t, k0, &n0, InodeNo(4242), libc::DT_LNK).unwrap());
        let t = TreeRead { cache: &vol.cache, inode_buf: &buf };
        let e = lookup(&t, &n0).unwrap().unwrap();
        assert_eq!((e.key, e.ino, e.dtype), (k0, InodeNo(4242), libc::DT_LNK));
        // Removing everything leaves an empty directory with no node blocks.
        let keys: Vec<u64> = model.keys().copied().collect();
        for chunk in keys.chunks(300) {
            change(&vol, &buf, |t| {
                for k in chunk {
                    remove(t, *k).unwrap();
                }
            });
        }
        assert!(listing(&vol, &buf, 0).is_empty());
        let t = TreeRead { cache: &vol.cache, inode_buf: &buf };
        assert!(t.node_blocks().unwrap().is_empty());
        assert_eq!(lookup(&t, &names[5]).unwrap(), None);
    }

    #[test]
    fn hash_collisions_get_distinct_keys_and_lookups_compare_names() {
        let (_dev, vol, buf) = setup();
        let target = b"target".as_slice();
        let h = name_hash(target);
        // Forge two entries whose (pretend) names hash like `target`, and neighbours in the
        // hash space on both sides.
        change(&vol, &buf, |t| {
            t.insert(h << 16, &encode_value(InodeNo(11), libc::DT_REG, b"impostor-0")).unwrap();
            t.insert((h << 16) | 1, &encode_value(InodeNo(12), libc::DT_REG, b"impostor-1")).unwrap();
            t.insert(((h - 1) << 16) | 0xffff, &encode_value(InodeNo(13), libc::DT_REG, target)).unwrap();
            t.insert((h + 1) << 16, &encode_value(InodeNo(14), libc::DT_REG, target)).unwrap();
        });
        let t = TreeRead { cache: &vol.cache, inode_buf: &buf };
        assert_eq!(lookup(&t, target).unwrap(), None, "entries under other hashes are not matches");
        let k = change(&vol, &buf, |t| add(t, target, InodeNo(500), libc::DT_REG).unwrap());
        assert_eq!(k, (h << 16) | 2, "next free collision counter");
        let t = TreeRead { cache: &vol.cache, inode_buf: &buf };
        let e = lookup(&t, target).unwrap().unwrap();
        assert_eq!((e.key, e.ino), (k, InodeNo(500)));
        // A gap in the counters is reused.
        change(&vol, &buf, |t| {
            remove(t, h << 16).unwrap();
            remove(t, k).unwrap();
        });
        let k2 = change(&vol, &buf, |t| add(t, target, InodeNo(501), libc::DT_REG).unwrap());
        assert_eq!(k2, h << 16);
        let t = TreeRead { cache: &vol.cache, inode_buf: &buf };
        assert_eq!(lookup(&t, target).unwrap().map(|e| e.ino), Some(InodeNo(501)));
        let listed: Vec<u64> = listing(&vol, &buf, 0).iter().map(|e| e.key).collect();
        assert_eq!(listed, vec![((h - 1) << 16) | 0xffff, h << 16, (h << 16) | 1, (h + 1) << 16]);
    }

    #[test]
    fn a_full_collision_chain_is_refused_not_wrapped() {
        let (_dev, vol, buf) = setup();
        let target = b"crowded".as_slice();
        let h = name_hash(target);
        for chunk in (0..=0xffffu64).collect::<Vec<_>>().chunks(4096) {
            change(&vol, &buf, |t| {
                for c in chunk {
                    t.insert((h << 16) | c, &encode_value(InodeNo(7), libc::DT_REG, format!("x{c}").as_bytes())).unwrap();
                }
            });
        }
        let r = change(&vol, &buf, |t| add(t, target, InodeNo(8), libc::DT_REG));
        assert!(matches!(r, Err(FsError::NoSpace)), "{r:?}");
        let t = TreeRead { cache: &vol.cache, inode_buf: &buf };
        assert_eq!(lookup(&t, target).unwrap(), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name(b"ok").is_ok());
        assert!(check_name(&[b'a'; 255]).is_ok());
        assert!(matches!(check_name(&[b'a'; 256]), Err(FsError::NameTooLong)));
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert!(matches!(check_name(bad), Err(FsError::Invalid(_))), "{bad:?}");
        }
        assert!(name_hash(b"a") >= 1 && name_hash(b"a") < 1 << 47);
        assert_ne!(name_hash(b"a"), name_hash(b"b"));
    }
}
