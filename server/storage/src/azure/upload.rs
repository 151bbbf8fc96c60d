//! Streamed writes to `az://`: staged blocks, then one commit.
//!
//! Each part is staged as a block (Put Block) as it comes; `complete`
//! commits the list (Put Block List), which is when the blob appears,
//! whole. Block IDs are this upload's random 16-byte id and the part's
//! number, so two uploads of one name at once never take each other's
//! blocks. `abort` and failures commit nothing: the blob is untouched, and
//! the service discards uncommitted blocks after a week (there is no call
//! that deletes them sooner without committing a blob).

use async_trait::async_trait;
use azure_storage_blob::BlobClient;
use azure_storage_blob::models::{BlockBlobClientCommitBlockListResultHeaders, BlockLookupList};
use bytes::Bytes;

use super::{content, error, system_time};
use crate::{MultipartUpload, ObjectMeta, ObjectUri, Result, StorageError};

/// An upload in progress.
pub(super) struct AzureUpload {
    blob: BlobClient,
    uri: String,
    id: [u8; 16],
    blocks: Vec<Vec<u8>>,
    size: u64,
}

impl std::fmt::Debug for AzureUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureUpload")
            .field("uri", &self.uri)
            .field("blocks", &self.blocks.len())
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl AzureUpload {
    pub(super) fn new(blob: BlobClient, uri: &ObjectUri) -> Self {
        AzureUpload {
            blob,
            uri: uri.to_string(),
            id: rand::random(),
            blocks: Vec::new(),
            size: 0,
        }
    }

    /// The ID of block `n`: upload id, then the number (24 bytes, the same
    /// length for every block as the service requires).
    fn block_id(&self, n: u64) -> Vec<u8> {
        let mut id = self.id.to_vec();
        id.extend_from_slice(&n.to_be_bytes());
        id
    }
}

#[async_trait]
impl MultipartUpload for AzureUpload {
    async fn put_part(&mut self, data: Bytes) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let id = self.block_id(self.blocks.len() as u64);
        let len = data.len() as u64;
        self.blob
            .block_blob_client()
            .stage_block(&id, len, content(data), None)
            .await
            .map_err(|e| error(&self.uri, "stage block", e))?;
        self.blocks.push(id);
        self.size += len;
        Ok(())
    }

    async fn complete(self: Box<Self>) -> Result<ObjectMeta> {
        let list = BlockLookupList {
            latest: Some(self.blocks.clone()),
            ..BlockLookupList::default()
        };
        let content = list.try_into().map_err(|_| {
            StorageError::new(
                crate::ErrorKind::Other,
                &self.uri,
                "azure commit: cannot encode the block list",
            )
        })?;
        let out = self
            .blob
            .block_blob_client()
            .commit_block_list(content, None)
            .await
            .map_err(|e| error(&self.uri, "commit", e))?;
        let bad = |_| StorageError::protocol(&self.uri, "azure commit: malformed headers");
        Ok(ObjectMeta {
            uri: self.uri.clone(),
            size: self.size,
            etag: out.etag().map_err(bad)?.map(|e| e.to_string()),
            last_modified: out.last_modified().map_err(bad)?.map(system_time),
            version: None,
        })
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
