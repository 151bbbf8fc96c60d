//! [`RecordingStorage`]: a [`Storage`] that records every operation of the
//! backend it wraps in an [`OpLog`].
//!
//! | trait method | `op` | `bytes` | notes |
//! |---|---|---|---|
//! | `head` | `STAT` | 0 | |
//! | `get` | `GET` | delivered | first byte when the response head arrives; end when the body is finished or dropped (dropped short: "canceled after N of M bytes"); the range asked for in `range_offset`/`range_length` |
//! | `read_into` | `GET` | the part's length | a RangeEngine part: always ranged |
//! | `list` | `LIST` | 0 | `n_objects`: the page's objects and prefixes |
//! | `put` | `PUT` | the object's size | |
//! | `start_multipart`, `put_part`, `complete`, `abort` | `MPU_START`, `MPU_PART`, `MPU_COMPLETE`, `MPU_ABORT` | the part's size for `MPU_PART` | |
//! | `delete` | `DELETE` | 0 | |
//!
//! The `file` column is the URI as the daemon prints it. URIs here hold no
//! query strings or credentials (a `?` is part of the key, taken
//! literally), so nothing is cut from them: a replay needs the exact key.
//! The `endpoint` column is [`endpoint_name`]: scheme and configured host
//! or account, a closed set.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use super::{InFlight, OpLog, op};
use crate::{
    BufResult, ByteStream, GetOptions, GetResult, ListOptions, ListPage, MultipartUpload,
    ObjectMeta, ObjectUri, ReadBuf, Result, Scheme, Storage, StorageError, Version,
};

/// The `endpoint` column for `uri`: `file://`, `s3://` (the default
/// endpoint), `s3://host:port`, `gs://`, `az://account`.
pub fn endpoint_name(uri: &ObjectUri) -> Cow<'static, str> {
    match (uri.scheme(), uri.endpoint()) {
        (scheme, Some(host)) => Cow::Owned(format!("{}://{host}", scheme.as_str())),
        (Scheme::File, None) => Cow::Borrowed("file://"),
        (Scheme::Direct, None) => Cow::Borrowed("direct://"),
        (Scheme::S3, None) => Cow::Borrowed("s3://"),
        (Scheme::Gs, None) => Cow::Borrowed("gs://"),
        (Scheme::Az, None) => Cow::Borrowed("az://"),
    }
}

/// The text of the `error` column: kind and message (the URI is in `file`).
fn error_text(e: &StorageError) -> String {
    format!("{}: {}", e.kind(), e.message())
}

/// A backend whose operations are recorded.
#[derive(Debug)]
pub struct RecordingStorage {
    inner: Arc<dyn Storage>,
    log: OpLog,
}

impl RecordingStorage {
    /// Records the operations of `inner` in `log`.
    pub fn new(inner: Arc<dyn Storage>, log: OpLog) -> Self {
        RecordingStorage { inner, log }
    }

    fn begin(&self, op: &'static str, uri: &ObjectUri) -> Option<InFlight> {
        begin(&self.log, op, uri)
    }
}

fn begin(log: &OpLog, op: &'static str, uri: &ObjectUri) -> Option<InFlight> {
    log.begin(op, uri.to_string())
        .map(|f| f.endpoint(endpoint_name(uri)))
}

/// Ends `op` with the outcome of `res`, `bytes` moved on success.
fn end<T>(op: InFlight, res: &Result<T>, bytes: u64) {
    match res {
        Ok(_) => op.done(bytes),
        Err(e) => op.failed(0, error_text(e)),
    }
}

#[async_trait]
impl Storage for RecordingStorage {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn head(&self, uri: &ObjectUri) -> Result<ObjectMeta> {
        let op = self.begin(op::STAT, uri);
        let res = self.inner.head(uri).await;
        if let Some(op) = op {
            end(op, &res, 0);
        }
        res
    }

    async fn get(&self, uri: &ObjectUri, opts: GetOptions) -> Result<GetResult> {
        let Some(mut op) = self.begin(op::GET, uri) else {
            return self.inner.get(uri, opts).await;
        };
        if let Some(r) = &opts.range {
            let length = (r.end != u64::MAX).then(|| r.end.saturating_sub(r.start));
            op = op.range(r.start, length);
        }
        let mut res = match self.inner.get(uri, opts).await {
            Ok(res) => res,
            Err(e) => {
                op.failed(0, error_text(&e));
                return Err(e);
            }
        };
        op.first_byte();
        res.body = Box::pin(RecordedBody {
            inner: res.body,
            op: Some(op),
            bytes: 0,
            expected: res.range.end - res.range.start,
        });
        Ok(res)
    }

    async fn list(&self, prefix: &ObjectUri, opts: &ListOptions) -> Result<ListPage> {
        let op = self.begin(op::LIST, prefix);
        let res = self.inner.list(prefix, opts).await;
        if let Some(mut op) = op {
            if let Ok(page) = &res {
                op.objects((page.objects.len() + page.common_prefixes.len()) as u64);
            }
            end(op, &res, 0);
        }
        res
    }

    async fn put(&self, uri: &ObjectUri, data: Bytes) -> Result<ObjectMeta> {
        let op = self.begin(op::PUT, uri);
        let len = data.len() as u64;
        let res = self.inner.put(uri, data).await;
        if let Some(op) = op {
            end(op, &res, len);
        }
        res
    }

    async fn start_multipart(&self, uri: &ObjectUri) -> Result<Box<dyn MultipartUpload>> {
        let op = self.begin(op::MPU_START, uri);
        let res = self.inner.start_multipart(uri).await;
        if let Some(op) = op {
            end(op, &res, 0);
        }
        let inner = res?;
        Ok(Box::new(RecordingUpload {
            inner,
            log: self.log.clone(),
            uri: uri.clone(),
        }))
    }

    fn min_part_size(&self) -> u64 {
        self.inner.min_part_size()
    }

    async fn delete(&self, uri: &ObjectUri) -> Result<()> {
        let op = self.begin(op::DELETE, uri);
        let res = self.inner.delete(uri).await;
        if let Some(op) = op {
            end(op, &res, 0);
        }
        res
    }

    async fn read_into(
        &self,
        uri: &ObjectUri,
        offset: u64,
        expect: &Version,
        dst: ReadBuf,
    ) -> BufResult {
        let len = dst.len() as u64;
        let op = self
            .begin(op::GET, uri)
            .map(|op| op.range(offset, Some(len)));
        let (res, dst) = self.inner.read_into(uri, offset, expect, dst).await;
        if let Some(op) = op {
            end(op, &res, len);
        }
        (res, dst)
    }

    fn alignment(&self) -> u64 {
        self.inner.alignment()
    }

    fn learns_part_size(&self) -> bool {
        self.inner.learns_part_size()
    }
}

/// The body of a recorded `get`: counts what it delivers and ends the
/// record when it is finished, fails, or is dropped.
struct RecordedBody {
    inner: ByteStream,
    op: Option<InFlight>,
    bytes: u64,
    expected: u64,
}

impl Stream for RecordedBody {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let next = this.inner.as_mut().poll_next(cx);
        match &next {
            Poll::Ready(Some(Ok(chunk))) => this.bytes += chunk.len() as u64,
            Poll::Ready(Some(Err(e))) => {
                if let Some(op) = this.op.take() {
                    op.failed(this.bytes, error_text(e));
                }
            }
            Poll::Ready(None) => {
                if let Some(op) = this.op.take() {
                    op.done(this.bytes);
                }
            }
            Poll::Pending => {}
        }
        next
    }
}

impl Drop for RecordedBody {
    fn drop(&mut self) {
        let Some(op) = self.op.take() else {
            return;
        };
        // Everything read but the end of the stream not polled for: done.
        if self.bytes >= self.expected {
            op.done(self.bytes);
        } else {
            let why = format!("canceled after {} of {} bytes", self.bytes, self.expected);
            op.failed(self.bytes, why);
        }
    }
}

/// A multipart upload whose steps are recorded.
#[derive(Debug)]
struct RecordingUpload {
    inner: Box<dyn MultipartUpload>,
    log: OpLog,
    uri: ObjectUri,
}

#[async_trait]
impl MultipartUpload for RecordingUpload {
    async fn put_part(&mut self, data: Bytes) -> Result<()> {
        let op = begin(&self.log, op::MPU_PART, &self.uri);
        let len = data.len() as u64;
        let res = self.inner.put_part(data).await;
        if let Some(op) = op {
            end(op, &res, len);
        }
        res
    }

    async fn complete(self: Box<Self>) -> Result<ObjectMeta> {
        let op = begin(&self.log, op::MPU_COMPLETE, &self.uri);
        let res = self.inner.complete().await;
        if let Some(op) = op {
            end(op, &res, 0);
        }
        res
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        let op = begin(&self.log, op::MPU_ABORT, &self.uri);
        let res = self.inner.abort().await;
        if let Some(op) = op {
            end(op, &res, 0);
        }
        res
    }
}
