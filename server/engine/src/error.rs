//! Errors of reads through the engine.

use std::sync::Arc;

use sluice_storage::{ErrorKind, ObjectUri, StorageError};

use crate::budget::BudgetError;

/// Why a read failed. Cheap to clone: one failed fetch answers every reader
/// that was waiting for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// The backend failed (or the object changed, or the request was invalid).
    #[error(transparent)]
    Storage(Arc<StorageError>),
    /// No memory within the deadline, or more than the whole budget.
    #[error("resource exhausted: {uri}: {source}")]
    Memory {
        /// The object being read.
        uri: String,
        /// What the budget said.
        #[source]
        source: BudgetError,
    },
}

impl ReadError {
    /// A budget failure while reading `uri`.
    pub fn memory(uri: &ObjectUri, source: BudgetError) -> Self {
        ReadError::Memory {
            uri: uri.to_string(),
            source,
        }
    }

    /// The storage error kind, if it is one.
    pub fn storage_kind(&self) -> Option<ErrorKind> {
        match self {
            ReadError::Storage(e) => Some(e.kind()),
            ReadError::Memory { .. } => None,
        }
    }
}

impl From<StorageError> for ReadError {
    fn from(e: StorageError) -> Self {
        ReadError::Storage(Arc::new(e))
    }
}
