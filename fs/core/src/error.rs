//! Typed errors of the mafs core. Each knows its errno value (`FsError::errno`, the one
//! mapping), which the FUSE glue hands to the kernel; the command line reports them with context.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum FsError {
    #[error("device I/O error at byte {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("short read at byte {offset}: wanted {wanted} bytes, device ended after {got}")]
    ShortRead { offset: u64, wanted: usize, got: usize },
    #[error("the device is full (ENOSPC) writing at byte {offset}")]
    DeviceFull { offset: u64 },
    #[error("corrupt metadata in block {block}: {what}. Run `mafs fsck` on the volume; do not mount it until it is repaired")]
    Corrupt { block: u64, what: String },
    /// The volume itself cannot be used (missing, a directory, ...); the text names it.
    #[error("{0}")]
    Volume(String),
    #[error("not a mafs volume: {0}")]
    NotMafs(String),
    #[error("unsupported volume format: {0}")]
    Unsupported(String),
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("no space left on the volume")]
    NoSpace,
    #[error("name longer than 255 bytes")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("no such extended attribute")]
    NoAttr,
    #[error("extended attribute value or list too large")]
    AttrTooBig,
    #[error("buffer too small for the result")]
    Range,
    #[error("file too large")]
    FileTooBig,
    #[error("too many links")]
    TooManyLinks,
    #[error("operation not supported")]
    NotSupported,
    #[error("{0}")]
    Busy(String),
    #[error("offset past the end of the file")]
    PastEnd,
    #[error("operation not permitted")]
    NotPermitted,
    /// The cluster lock service could not give this node a lock it needs (session lost, lockd
    /// out of reach): the operation did nothing.
    #[error("cluster lock service: {0}")]
    Cluster(String),
    #[error("the filesystem stopped writing after an earlier fatal error ({0}); unmount, run `mafs fsck`, and mount again")]
    Stopped(String),
    /// A cluster node past its lockd lease: other nodes may own what it would write.
    #[error("this node's lockd lease ran out ({0}): it fenced itself and writes nothing more to the shared volume; unmount it and mount it again")]
    Fenced(String),
}

pub type Result<T> = std::result::Result<T, FsError>;

impl FsError {
    /// Block `block` (a `BlockNo`, an `InodeNo` for an inode's own block, or a raw number)
    /// holds something it must not.
    pub fn corrupt(block: impl Into<u64>, what: impl Into<String>) -> Self {
        FsError::Corrupt { block: block.into(), what: what.into() }
    }

    /// The errno a POSIX caller should see for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            FsError::ShortRead { .. } | FsError::Corrupt { .. } | FsError::Stopped(_) | FsError::Cluster(_) | FsError::Fenced(_) => {
                libc::EIO
            }
            FsError::DeviceFull { .. } | FsError::NoSpace => libc::ENOSPC,
            FsError::NotMafs(_) | FsError::Unsupported(_) | FsError::Volume(_) => libc::EINVAL,
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NoAttr => libc::ENODATA,
            FsError::AttrTooBig => libc::E2BIG,
            FsError::Range => libc::ERANGE,
            FsError::FileTooBig => libc::EFBIG,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::NotPermitted => libc::EPERM,
            FsError::PastEnd => libc::ENXIO,
            FsError::Busy(_) => libc::EBUSY,
        }
    }
}
