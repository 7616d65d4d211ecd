//! The limits every replica enforces, checked by the client too where the caller can still
//! hear about it.
use crate::error_kind::ErrorKind;

/// Longest resource name in bytes. Keeps a hostile client from bloating the log and snapshots.
pub const MAX_RESOURCE_NAME: usize = 256;
/// Largest lock value block in bytes (the Linux DLM uses 32 or 64).
pub const MAX_LVB: usize = 64;
pub const MAX_NODE_NAME: usize = 256;

/// A resource name or lock value block outside the limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("invalid resource name: {0}")]
    BadResource(String),
    #[error("lock value block of {0} bytes exceeds the {MAX_LVB}-byte limit")]
    LvbTooLarge(usize),
}

impl InputError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            InputError::BadResource(_) => ErrorKind::BadResource,
            InputError::LvbTooLarge(_) => ErrorKind::LvbTooLarge,
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
