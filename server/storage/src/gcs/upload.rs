//! Streamed writes to `gs://`: one resumable upload session per object.
//!
//! Parts are sent as chunks of the session as they come, each a multiple
//! of 256 KiB (GCS's rule for every chunk but the last), and at least one
//! byte is always held back: the last chunk must carry the total size,
//! which is known only at `complete`. Parts of `write.part_size` (a multiple
//! of 256 KiB by default) go out whole, without a copy; other sizes are
//! regrouped. Bytes the server did not keep (a 308 acknowledging less than
//! was sent) go out again with the next chunk.
//!
//! Nothing is visible before the last chunk: `abort`, a failed chunk or an
//! upload dropped unfinished cancels the session (DELETE), which discards
//! everything sent; a session nobody cancels expires on the server within
//! a week, still invisible.

use std::collections::VecDeque;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use gcloud_storage::client::Client;
use gcloud_storage::http::objects::upload::{Media, UploadObjectRequest, UploadType};
use gcloud_storage::http::resumable_upload_client::{
    ChunkSize, ResumableUploadClient, UploadStatus,
};

use super::{CHUNK_GRANULARITY, http, meta_of};
use crate::{ErrorKind, MultipartUpload, ObjectMeta, ObjectUri, Result, StorageError};

/// An upload in progress.
pub(super) struct GcsUpload {
    /// `None` once completed or cancelled.
    session: Option<ResumableUploadClient>,
    uri: ObjectUri,
    /// Bytes the server has kept.
    sent: u64,
    /// Bytes not sent yet, in order.
    held: VecDeque<Bytes>,
    held_len: u64,
}

impl std::fmt::Debug for GcsUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the session URL: it is a capability to write the object.
        f.debug_struct("GcsUpload")
            .field("uri", &self.uri.to_string())
            .field("sent", &self.sent)
            .field("held", &self.held_len)
            .finish_non_exhaustive()
    }
}

impl GcsUpload {
    /// Opens a session for `name` in `uri`'s bucket.
    pub(super) async fn start(api: &Client, uri: &ObjectUri, name: String) -> Result<Self> {
        let shown = uri.to_string();
        let req = UploadObjectRequest {
            bucket: uri.bucket().to_owned(),
            ..UploadObjectRequest::default()
        };
        let session = api
            .prepare_resumable_upload(&req, &UploadType::Simple(Media::new(name)))
            .await
            .map_err(|e| http::api_error(&shown, "upload", e))?;
        Ok(GcsUpload {
            session: Some(session),
            uri: uri.clone(),
            sent: 0,
            held: VecDeque::new(),
            held_len: 0,
        })
    }

    /// The first `n` held bytes, as one buffer (no copy when they are one
    /// part).
    fn take(&mut self, n: u64) -> Bytes {
        if self.held.front().is_some_and(|b| b.len() as u64 == n) {
            self.held_len -= n;
            return self.held.pop_front().expect("checked");
        }
        let mut out = BytesMut::with_capacity(n as usize);
        while (out.len() as u64) < n {
            let mut front = self.held.pop_front().expect("n is at most what is held");
            let want = (n - out.len() as u64) as usize;
            if front.len() > want {
                let rest = front.split_off(want);
                self.held.push_front(rest);
            }
            out.extend_from_slice(&front);
        }
        self.held_len -= n;
        out.freeze()
    }

    fn session(&self) -> Result<&ResumableUploadClient> {
        self.session.as_ref().ok_or_else(|| {
            StorageError::new(
                ErrorKind::Other,
                self.uri.to_string(),
                "upload already ended",
            )
        })
    }

    /// Sends `chunk` at `self.sent`, with the total size when it is the
    /// last; what the server did not keep is held again.
    async fn send(&mut self, chunk: Bytes, total: Option<u64>) -> Result<Option<ObjectMeta>> {
        let shown = self.uri.to_string();
        let len = chunk.len() as u64;
        let size = match total {
            Some(total) if len == 0 => ChunkSize::new(total, total, Some(total)),
            _ => ChunkSize::new(self.sent, self.sent + len - 1, total),
        };
        let status = self
            .session()?
            .upload_multiple_chunk(chunk.clone(), &size)
            .await
            .map_err(|e| http::api_error(&shown, "upload", e))?;
        match (status, total) {
            (UploadStatus::Ok(object), Some(_)) => meta_of(&self.uri, &object).map(Some),
            (UploadStatus::ResumeIncomplete(kept), None) => {
                let kept_to = kept.last_byte + 1;
                if kept_to <= self.sent || kept_to > self.sent + len {
                    return Err(StorageError::protocol(
                        shown,
                        format!(
                            "gcs upload: sent bytes {}..{}, the server reports 0..{kept_to}",
                            self.sent,
                            self.sent + len
                        ),
                    ));
                }
                if kept_to < self.sent + len {
                    let rest = chunk.slice((kept_to - self.sent) as usize..);
                    self.held_len += rest.len() as u64;
                    self.held.push_front(rest);
                }
                self.sent = kept_to;
                Ok(None)
            }
            (UploadStatus::Ok(_), None) => Err(StorageError::protocol(
                shown,
                "gcs upload: the object was finished before its last chunk",
            )),
            _ => Err(StorageError::protocol(
                shown,
                "gcs upload: the server kept none of the chunk",
            )),
        }
    }

    async fn cancel(&mut self) -> Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        session
            .cancel()
            .await
            .map_err(|e| http::api_error(&self.uri.to_string(), "abort upload", e))
    }
}

#[async_trait]
impl MultipartUpload for GcsUpload {
    async fn put_part(&mut self, data: Bytes) -> Result<()> {
        self.held_len += data.len() as u64;
        self.held.push_back(data);
        // Everything but the last byte, in whole 256 KiB units.
        let ready = (self.held_len.saturating_sub(1) / CHUNK_GRANULARITY) * CHUNK_GRANULARITY;
        if ready == 0 {
            return Ok(());
        }
        let chunk = self.take(ready);
        if let Err(e) = self.send(chunk, None).await {
            let _ = self.cancel().await;
            return Err(e);
        }
        Ok(())
    }

    async fn complete(mut self: Box<Self>) -> Result<ObjectMeta> {
        let len = self.held_len;
        let chunk = self.take(len);
        let total = self.sent + len;
        match self.send(chunk, Some(total)).await {
            Ok(Some(meta)) => {
                self.session = None;
                Ok(meta)
            }
            Ok(None) => Err(StorageError::protocol(
                self.uri.to_string(),
                "gcs upload: the last chunk did not finish the object",
            )),
            Err(e) => {
                let _ = self.cancel().await;
                Err(e)
            }
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.cancel().await
    }
}

impl Drop for GcsUpload {
    fn drop(&mut self) {
        // Dropped unfinished (the writer went away): cancel in the
        // background, so the session's bytes are discarded now.
        if let Some(session) = self.session.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = session.cancel().await;
            });
        }
    }
}
