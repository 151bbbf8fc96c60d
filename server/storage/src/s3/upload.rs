//! PutObject and multipart uploads.
//!
//! A multipart upload numbers its parts 1, 2, … in the order `put_part` is
//! called and keeps their ETags for CompleteMultipartUpload. S3 wants at
//! least one part, so completing an upload without parts aborts it and
//! stores an empty object with PutObject instead.
//!
//! Cleanup: `complete` consumes the upload, so when CompleteMultipartUpload
//! fails it aborts the upload itself before returning the error (never
//! success). An upload dropped without `complete` or `abort` spawns a
//! best-effort AbortMultipartUpload on the current tokio runtime; the
//! bucket's lifecycle rule for incomplete uploads remains the backstop.

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use tokio::task::JoinSet;

use super::errors;
use crate::{ErrorKind, MultipartUpload, ObjectMeta, ObjectUri, Result, StorageError};

/// S3's smallest part, except the last one.
pub(super) const MIN_PART_SIZE: u64 = 5 << 20;

/// S3's largest part number.
const MAX_PARTS: i32 = 10_000;

/// Uploads over HTTPS (`unsigned`) go with `UNSIGNED-PAYLOAD` instead of a
/// SHA-256 of the body in the signature: TLS already protects the body and
/// the SDK's CRC32 checksum header lets the server verify it, so the hash —
/// 40 % of the daemon's CPU for a large upload — buys nothing there. Over
/// plain HTTP the payload stays signed: there the signature is the only
/// integrity check a tampering hop cannot redo — and, since it already lets
/// the server verify every byte, no CRC32 goes with it (the checksum would
/// cost both sides a pass over the body for nothing).
pub(super) async fn put(
    client: &Client,
    unsigned: bool,
    uri: &ObjectUri,
    data: Bytes,
) -> Result<ObjectMeta> {
    let size = data.len() as u64;
    let request = client
        .put_object()
        .bucket(uri.bucket())
        .key(uri.key())
        .content_length(size as i64)
        .body(ByteStream::from(data));
    let out = if unsigned {
        request.customize().disable_payload_signing().send().await
    } else {
        request
            .customize()
            .config_override(signed_only())
            .send()
            .await
    }
    .map_err(|e| errors::map(e, uri, "put"))?;
    Ok(ObjectMeta {
        uri: uri.to_string(),
        size,
        etag: out.e_tag().map(str::to_owned),
        last_modified: None,
        version: out.version_id().map(str::to_owned),
    })
}

/// For a request whose payload is signed: no checksum besides the signature's
/// SHA-256 (see [`put`]).
fn signed_only() -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::default()
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
}

/// A multipart upload in progress.
#[derive(Debug)]
pub(super) struct S3Upload {
    /// Parts go with `UNSIGNED-PAYLOAD` (see [`put`]).
    unsigned: bool,
    client: Client,
    uri: ObjectUri,
    upload_id: String,
    /// Parts stored, in any order (sorted when completing).
    parts: Vec<CompletedPart>,
    /// Parts on their way up: at most `concurrency`.
    in_flight: JoinSet<Result<(CompletedPart, u64)>>,
    concurrency: usize,
    /// The number of the next part.
    next: i32,
    size: u64,
    /// Completed or aborted: nothing for `Drop` to clean up.
    finished: bool,
}

impl S3Upload {
    /// Starts an upload whose parts go up `concurrency` at a time.
    pub(super) async fn start(
        client: &Client,
        unsigned: bool,
        concurrency: usize,
        uri: &ObjectUri,
    ) -> Result<Self> {
        let out = client
            .create_multipart_upload()
            .bucket(uri.bucket())
            .key(uri.key())
            .send()
            .await
            .map_err(|e| errors::map(e, uri, "start upload"))?;
        let upload_id = out
            .upload_id()
            .ok_or_else(|| {
                StorageError::protocol(
                    uri.to_string(),
                    "create multipart upload returned no upload id",
                )
            })?
            .to_owned();
        Ok(S3Upload {
            unsigned,
            client: client.clone(),
            uri: uri.clone(),
            upload_id,
            parts: Vec::new(),
            in_flight: JoinSet::new(),
            concurrency: concurrency.max(1),
            next: 1,
            size: 0,
            finished: false,
        })
    }

    /// Waits for one part in flight; its failure is the upload's.
    async fn reap(&mut self) -> Result<()> {
        match self.in_flight.join_next().await {
            None => Ok(()),
            Some(Ok(Ok((part, len)))) => {
                self.parts.push(part);
                self.size += len;
                Ok(())
            }
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(StorageError::new(
                ErrorKind::Other,
                self.uri.to_string(),
                "upload part task failed",
            )
            .with_source(e)),
        }
    }

    async fn send_abort(&self) -> Result<()> {
        match abort_request(&self.client, &self.uri, &self.upload_id).await {
            // Already gone (aborted, completed or expired): nothing is left.
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    async fn send_complete(&self) -> Result<ObjectMeta> {
        let parts = CompletedMultipartUpload::builder()
            .set_parts(Some(self.parts.clone()))
            .build();
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(self.uri.bucket())
            .key(self.uri.key())
            .upload_id(&self.upload_id)
            .multipart_upload(parts)
            .send()
            .await
            .map_err(|e| errors::map(e, &self.uri, "complete upload"))?;
        Ok(ObjectMeta {
            uri: self.uri.to_string(),
            size: self.size,
            etag: out.e_tag().map(str::to_owned),
            last_modified: None,
            version: out.version_id().map(str::to_owned),
        })
    }
}

async fn abort_request(client: &Client, uri: &ObjectUri, upload_id: &str) -> Result<()> {
    client
        .abort_multipart_upload()
        .bucket(uri.bucket())
        .key(uri.key())
        .upload_id(upload_id)
        .send()
        .await
        .map_err(|e| errors::map(e, uri, "abort upload"))?;
    Ok(())
}

#[async_trait]
impl MultipartUpload for S3Upload {
    /// Sends the part as a task of its own and returns once it is under
    /// way — after waiting for an earlier one if `concurrency` are in
    /// flight — so the caller gathers the next part meanwhile. A failed
    /// part fails the next call (or `complete`).
    async fn put_part(&mut self, data: Bytes) -> Result<()> {
        let number = self.next;
        if number > MAX_PARTS {
            return Err(StorageError::invalid(
                self.uri.to_string(),
                format!("s3 uploads have at most {MAX_PARTS} parts"),
            ));
        }
        while self.in_flight.len() >= self.concurrency {
            self.reap().await?;
        }
        self.next += 1;
        let len = data.len() as u64;
        let request = self
            .client
            .upload_part()
            .bucket(self.uri.bucket())
            .key(self.uri.key())
            .upload_id(&self.upload_id)
            .part_number(number)
            .content_length(len as i64)
            .body(ByteStream::from(data));
        let (unsigned, uri) = (self.unsigned, self.uri.clone());
        self.in_flight.spawn(async move {
            let out = if unsigned {
                request.customize().disable_payload_signing().send().await
            } else {
                request
                    .customize()
                    .config_override(signed_only())
                    .send()
                    .await
            }
            .map_err(|e| errors::map(e, &uri, "upload part"))?;
            let etag = out.e_tag().ok_or_else(|| {
                StorageError::protocol(uri.to_string(), "upload part returned no etag")
            })?;
            let part = CompletedPart::builder()
                .part_number(number)
                .e_tag(etag)
                .build();
            Ok((part, len))
        });
        Ok(())
    }

    async fn complete(mut self: Box<Self>) -> Result<ObjectMeta> {
        while !self.in_flight.is_empty() {
            self.reap().await?;
        }
        self.finished = true;
        self.parts.sort_by_key(|p| p.part_number());
        if self.parts.is_empty() {
            self.send_abort().await?;
            return put(&self.client, self.unsigned, &self.uri, Bytes::new()).await;
        }
        match self.send_complete().await {
            Ok(meta) => Ok(meta),
            Err(e) => {
                if let Err(abort) = self.send_abort().await {
                    tracing::warn!(uri = %self.uri, error = %abort, "abort after failed complete failed");
                }
                Err(e)
            }
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        // Parts still going up are stopped first: one finishing after the
        // abort would be stored (and billed) in an upload nobody completes.
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        self.finished = true;
        self.send_abort().await
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(uri = %self.uri, "multipart upload dropped outside a runtime; not aborted");
            return;
        };
        let (client, uri, upload_id) = (
            self.client.clone(),
            self.uri.clone(),
            std::mem::take(&mut self.upload_id),
        );
        // Best effort, owned by nobody: the upload is abandoned either way,
        // and the bucket's lifecycle rule collects what this misses.
        runtime.spawn(async move {
            if let Err(error) = abort_request(&client, &uri, &upload_id).await {
                tracing::warn!(%uri, %error, "abort of a dropped multipart upload failed");
            }
        });
    }
}
