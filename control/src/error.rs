//! The client side's error.

use crate::Failure;

/// Why a control request did not get its answer.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The daemon could not be reached or went away (the CLI's exit 3).
    #[error("{0}")]
    Unreachable(String),
    /// The daemon refused, the operation failed, or the reply was not understood.
    #[error(transparent)]
    Failed(#[from] Failure),
}

impl ControlError {
    /// A failure of `kind`.
    pub fn failed(kind: crate::ErrorKind, message: impl Into<String>) -> Self {
        Self::Failed(Failure::new(kind, message))
    }
}
