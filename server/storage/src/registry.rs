//! Which backend serves which URI.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::azure::{AzureBackends, AzureConfig};
use crate::direct::{DirectConfig, DirectStorage};
use crate::file::FileStorage;
use crate::gcs::{GcsConfig, GcsStorage};
use crate::oplog::{OpLog, RecordingStorage};
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
    /// Local files read with `O_DIRECT` through io_uring.
    pub direct: DirectConfig,
    /// S3 and S3-compatible servers.
    pub s3: S3Config,
    /// Google Cloud Storage.
    pub gcs: GcsConfig,
    /// Azure Blob Storage.
    pub azure: AzureConfig,
}

/// Every configured backend.
#[derive(Debug)]
pub struct Backends {
    file: Arc<FileStorage>,
    direct: Arc<DirectStorage>,
    s3: S3Backends,
    gcs: Arc<GcsStorage>,
    azure: AzureBackends,
    /// Serves `file://` instead of `file` (tests of the layers above).
    #[cfg(feature = "fault-injection")]
    file_override: Option<Arc<dyn Storage>>,
    /// Records every operation while it is on.
    oplog: Option<OpLog>,
}

impl Backends {
    /// Builds the backends; loads cloud credentials chains once.
    pub async fn new(config: &StorageConfig) -> Result<Self> {
        Ok(Backends {
            file: Arc::new(FileStorage::new(&config.file.roots)?),
            direct: Arc::new(DirectStorage::new(&config.direct)?),
            s3: S3Backends::new(&config.s3).await?,
            gcs: Arc::new(GcsStorage::new(&config.gcs)?),
            azure: AzureBackends::new(&config.azure)?,
            #[cfg(feature = "fault-injection")]
            file_override: None,
            oplog: None,
        })
    }

    /// Records the operations of every backend in `log` while it is on
    /// (each ranged part of the RangeEngine as the GET it is).
    pub fn with_oplog(mut self, log: OpLog) -> Self {
        self.oplog = Some(log);
        self
    }

    /// The `file://` backend, for wrapping.
    #[cfg(feature = "fault-injection")]
    pub fn file(&self) -> Arc<dyn Storage> {
        self.file.clone()
    }

    /// Serves `file://` URIs with `storage` (a fault-injecting double).
    #[cfg(feature = "fault-injection")]
    pub fn with_file(mut self, storage: Arc<dyn Storage>) -> Self {
        self.file_override = Some(storage);
        self
    }

    /// Registers the backends' own metrics (the S3 gateways') in `registry`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.s3.metrics().register(registry);
        self.direct.metrics().register(registry);
    }

    /// The backend serving `uri` (recorded while the operation log is on).
    pub fn for_uri(&self, uri: &ObjectUri) -> Result<Arc<dyn Storage>> {
        let storage = self.backend(uri)?;
        Ok(match &self.oplog {
            Some(log) if log.is_enabled() => Arc::new(RecordingStorage::new(storage, log.clone())),
            _ => storage,
        })
    }

    fn backend(&self, uri: &ObjectUri) -> Result<Arc<dyn Storage>> {
        match uri.scheme() {
            #[cfg(feature = "fault-injection")]
            Scheme::File if self.file_override.is_some() => {
                Ok(self.file_override.clone().expect("checked"))
            }
            Scheme::File => Ok(self.file.clone()),
            Scheme::Direct => Ok(self.direct.clone()),
            Scheme::S3 => self.s3.for_uri(uri),
            Scheme::Gs => Ok(self.gcs.clone()),
            Scheme::Az => self.azure.for_uri(uri),
        }
    }
}
