//! Which backend serves which URI.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::file::FileStorage;
use crate::s3::{S3Backends, S3Config};
use crate::{ObjectUri, Result, Scheme, Storage};

/// `[storage.file]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Directories `file://` URIs may name. Empty: every `file://` request is refused.
    pub roots: Vec<PathBuf>,
}

/// `[storage]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Local files.
    pub file: FileConfig,
    /// S3 and S3-compatible servers.
    pub s3: S3Config,
}

/// Every configured backend.
#[derive(Debug)]
pub struct Backends {
    file: Arc<FileStorage>,
    s3: S3Backends,
}

impl Backends {
    /// Builds the backends; loads cloud credentials chains once.
    pub async fn new(config: &StorageConfig) -> Result<Self> {
        Ok(Backends {
            file: Arc::new(FileStorage::new(&config.file.roots)?),
            s3: S3Backends::new(&config.s3).await?,
        })
    }

    /// The backend serving `uri`.
    pub fn for_uri(&self, uri: &ObjectUri) -> Result<Arc<dyn Storage>> {
        match uri.scheme() {
            Scheme::File => Ok(self.file.clone()),
            Scheme::S3 => self.s3.for_uri(uri),
        }
    }
}
