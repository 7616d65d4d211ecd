//! A store in a local directory (or a mounted network filesystem): one file per object,
//! written to a temporary name, synced, then renamed into place.
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::Store;
use crate::error::{Result, SnapshotError};

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn open(dir: &str) -> Result<LocalStore> {
        let root = PathBuf::from(dir);
        std::fs::create_dir_all(root.join("tmp")).map_err(|e| SnapshotError::store(dir, format!("cannot create it: {e}")))?;
        Ok(LocalStore { root })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn fail(&self, what: String, e: std::io::Error) -> SnapshotError {
        let hint = match e.raw_os_error() {
            Some(libc::ENOSPC) => "; the store's filesystem is full: free space there or use another store",
            Some(libc::EACCES) | Some(libc::EPERM) => "; check the store directory's permissions",
            _ => "",
        };
        SnapshotError::store(&self.describe(), format!("{what}: {e}{hint}"))
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Store for LocalStore {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        use std::io::Write;
        let dest = self.path(key);
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|e| self.fail(format!("cannot create {}", parent.display()), e))?;
        let tmp = self.root.join("tmp").join(format!("{}.{:016x}", std::process::id(), rand::random::<u64>()));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_data()?;
            std::fs::rename(&tmp, &dest)?;
            sync_dir(&parent)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(self.fail(format!("cannot write {key}"), e));
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(key)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.fail(format!("cannot read {key}"), e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, SystemTime)>> {
        let mut out = Vec::new();
        let mut dirs = vec![self.path(prefix.trim_end_matches('/'))];
        while let Some(d) = dirs.pop() {
            let entries = match std::fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.fail(format!("cannot list {}", d.display()), e)),
            };
            for e in entries {
                let e = e.map_err(|e| self.fail(format!("cannot list {}", d.display()), e))?;
                let meta = match e.metadata() {
                    Ok(m) => m,
                    // Deleted while listed.
                    Err(_) => continue,
                };
                if meta.is_dir() {
                    dirs.push(e.path());
                } else if let Ok(rel) = e.path().strip_prefix(&self.root) {
                    out.push((rel.to_string_lossy().into_owned(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        match std::fs::remove_file(self.path(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.fail(format!("cannot delete {key}"), e)),
        }
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}
