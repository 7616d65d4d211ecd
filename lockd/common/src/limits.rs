//! The limits every replica enforces, checked by the client too where the caller can still
//! hear about it.
use crate::error_kind::ErrorKind;

/// Longest resource name in bytes. Keeps a hostile client from bloating the log and snapshots.
pub const MAX_RESOURCE_NAME: usize = 256;
/// Largest lock value block in bytes (the Linux DLM uses 32 or 64).
pub const MAX_LVB: usize = 64;
pub const MAX_NODE_NAME: usize = 256;
/// Most resources one TryLockMany or ReleaseMany names: its log entry stays small (≈ 300 KiB
/// at most).
pub const MAX_TRY_MANY: usize = 1024;

/// A resource name or lock value block outside the limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("invalid resource name: {0}")]
    BadResource(String),
    #[error("lock value block of {0} bytes exceeds the {MAX_LVB}-byte limit")]
    LvbTooLarge(usize),
    #[error("invalid batch request: {0}")]
    BadBatch(String),
}

impl InputError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            InputError::BadResource(_) => ErrorKind::BadResource,
            InputError::LvbTooLarge(_) => ErrorKind::LvbTooLarge,
            InputError::BadBatch(_) => ErrorKind::Invalid,
        }
    }
}

/// 1..=[`MAX_RESOURCE_NAME`] bytes without NUL.
pub fn validate_resource(name: &str) -> Result<(), InputError> {
    if name.is_empty() {
        return Err(InputError::BadResource("empty".into()));
    }
    if name.len() > MAX_RESOURCE_NAME {
        return Err(InputError::BadResource(format!("{} bytes, the limit is {MAX_RESOURCE_NAME}", name.len())));
    }
    if name.contains('\0') {
        return Err(InputError::BadResource("contains NUL".into()));
    }
    Ok(())
}

/// The resources of one TryLockMany or ReleaseMany: 1..=[`MAX_TRY_MANY`] valid names, none
/// twice (a repeat would be answered twice from one grant, which a caller could not tell
/// apart).
pub fn validate_many(names: &[String]) -> Result<(), InputError> {
    if names.is_empty() || names.len() > MAX_TRY_MANY {
        return Err(InputError::BadBatch(format!("{} resources, must be 1..={MAX_TRY_MANY}", names.len())));
    }
    let mut seen = std::collections::HashSet::with_capacity(names.len());
    for n in names {
        validate_resource(n)?;
        if !seen.insert(n.as_str()) {
            return Err(InputError::BadBatch(format!("{n:?} named twice")));
        }
    }
    Ok(())
}

/// At most [`MAX_LVB`] bytes (no block at all is fine).
pub fn validate_lvb(lvb: Option<&[u8]>) -> Result<(), InputError> {
    match lvb {
        Some(v) if v.len() > MAX_LVB => Err(InputError::LvbTooLarge(v.len())),
        _ => Ok(()),
    }
}

impl From<InputError> for tonic::Status {
    fn from(e: InputError) -> tonic::Status {
        crate::wire::status(e.kind(), e.to_string())
    }
}
