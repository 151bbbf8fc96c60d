//! Reading one object: byte ranges and the chunk stream of a `Read` call.
//!
//! Ranges are Rust half-open ranges of object offsets; `start..u64::MAX`
//! means "from `start` to the end of the object" (the wire's `to_end`), so
//! callers never need the object's size up front.
//!
//! [`ReadStream`] checks the stream as it goes: the first message must carry
//! the object's metadata, every chunk must start where the previous one ended,
//! and the stream must deliver exactly the bytes the metadata and the range
//! promise. A daemon that drops the stream early therefore surfaces as an
//! error, never as a silently truncated object.

use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use sluice_proto::v1::{ByteRange, ObjectMeta, ReadResponse};

use crate::error::{Error, Result};

/// The wire form of an optional range. `None` reads the whole object.
pub(crate) fn to_wire(uri: &str, range: Option<&Range<u64>>) -> Result<Option<ByteRange>> {
    let Some(range) = range else {
        return Ok(None);
    };
    if range.start > range.end {
        return Err(Error::InvalidRange {
            uri: uri.to_owned(),
            start: range.start,
            end: range.end,
        });
    }
    Ok(Some(if range.end == u64::MAX {
        ByteRange {
            offset: range.start,
            length: 0,
            to_end: true,
        }
    } else {
        ByteRange {
            offset: range.start,
            length: range.end - range.start,
            to_end: false,
        }
    }))
}

/// The bytes a read of `range` must return from an object of `size` bytes: the
/// part of the range that lies inside the object.
pub(crate) fn expected_len(size: u64, range: Option<&Range<u64>>) -> u64 {
    match range {
        None => size,
        Some(range) => range.end.min(size).saturating_sub(range.start),
    }
}

/// The data of one object, as a stream of chunks, with its metadata.
///
/// Yields `Bytes` chunks in object order; an error ends the stream.
pub struct ReadStream {
    uri: String,
    meta: ObjectMeta,
    /// Data of the first message, handed out before polling the call again.
    first: Option<Bytes>,
    inner: BoxStream<'static, Result<ReadResponse, tonic::Status>>,
    /// Object offset the next chunk must start at.
    next_offset: u64,
    /// Bytes the stream delivers in all.
    total: u64,
    /// Bytes still owed by the daemon.
    remaining: u64,
    done: bool,
}

impl ReadStream {
    /// Waits for the first message of a `Read` call and checks it.
    pub(crate) async fn start(
        uri: &str,
        range: Option<&Range<u64>>,
        inner: impl Stream<Item = Result<ReadResponse, tonic::Status>> + Send + 'static,
    ) -> Result<Self> {
        let mut inner = inner.boxed();
        let first = match inner.next().await.transpose()? {
            Some(first) => first,
            None => {
                return Err(Error::protocol(
                    uri,
                    "read stream ended before the metadata",
                ));
            }
        };
        let Some(meta) = first.meta else {
            return Err(Error::protocol(uri, "first read message has no metadata"));
        };
        let start = range.map_or(0, |r| r.start);
        let total = expected_len(meta.size, range);
        let mut stream = ReadStream {
            uri: uri.to_owned(),
            total,
            remaining: total,
            meta,
            first: None,
            inner,
            next_offset: start,
            done: false,
        };
        let data = stream.accept(first.offset, first.data)?;
        stream.first = (!data.is_empty()).then_some(data);
        Ok(stream)
    }

    /// The object's metadata, from the first message.
    pub fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    /// The number of bytes this stream delivers in all.
    pub fn expected_len(&self) -> u64 {
        self.total
    }

    /// Checks a chunk against the offsets and length promised so far.
    fn accept(&mut self, offset: u64, data: Bytes) -> Result<Bytes> {
        if offset != self.next_offset && !data.is_empty() {
            return Err(Error::protocol(
                &self.uri,
                format!("chunk at offset {offset}, expected {}", self.next_offset),
            ));
        }
        let len = data.len() as u64;
        if len > self.remaining {
            return Err(Error::protocol(
                &self.uri,
                format!("{} bytes more than the object holds", len - self.remaining),
            ));
        }
        self.next_offset += len;
        self.remaining -= len;
        Ok(data)
    }

    /// Collects the whole stream into one buffer, allocated once.
    pub async fn into_bytes(mut self) -> Result<Bytes> {
        let expected = self.expected_len();
        let first = self.first.take().unwrap_or_default();
        if first.len() as u64 == expected {
            // One chunk holds everything: no copy. `next` still checks the end.
            return match self.next().await {
                None => Ok(first),
                Some(Err(error)) => Err(error),
                Some(Ok(_)) => Err(Error::protocol(&self.uri, "data after the end")),
            };
        }
        let capacity = usize::try_from(expected)
            .map_err(|_| Error::protocol(&self.uri, "object too large for memory"))?;
        let mut buf = crate::pool::take(capacity);
        buf.extend_from_slice(&first);
        while let Some(chunk) = self.next().await {
            buf.extend_from_slice(&chunk?);
        }
        if buf.len() as u64 != expected {
            return Err(Error::protocol(
                &self.uri,
                format!("read {} bytes, expected {expected}", buf.len()),
            ));
        }
        Ok(crate::pool::bytes(buf))
    }
}

impl std::fmt::Debug for ReadStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadStream")
            .field("uri", &self.uri)
            .field("meta", &self.meta)
            .field("next_offset", &self.next_offset)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl Stream for ReadStream {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let item = ready!(this.inner.poll_next_unpin(cx));
            let result = match item {
                Some(Ok(message)) => this.accept(message.offset, message.data),
                Some(Err(status)) => Err(Error::from(status)),
                None if this.remaining == 0 => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                None => Err(Error::protocol(
                    &this.uri,
                    format!("read stream ended {} bytes short", this.remaining),
                )),
            };
            match result {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => return Poll::Ready(Some(Ok(data))),
                Err(error) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_object_has_no_range() {
        assert_eq!(to_wire("u", None).unwrap(), None);
    }

    #[test]
    fn bounded_range_sends_a_length() {
        let wire = to_wire("u", Some(&(10..25))).unwrap().unwrap();
        assert_eq!((wire.offset, wire.length, wire.to_end), (10, 15, false));
    }

    #[test]
    fn open_range_reads_to_the_end() {
        let wire = to_wire("u", Some(&(7..u64::MAX))).unwrap().unwrap();
        assert_eq!((wire.offset, wire.length, wire.to_end), (7, 0, true));
    }

    #[test]
    fn empty_range_is_not_to_end() {
        let wire = to_wire("u", Some(&(4..4))).unwrap().unwrap();
        assert_eq!((wire.offset, wire.length, wire.to_end), (4, 0, false));
    }

    #[test]
    #[allow(clippy::reversed_empty_ranges)]
    fn reversed_range_is_refused_with_the_uri() {
        let error = to_wire("file:///a", Some(&(9..3))).unwrap_err();
        assert!(error.is_invalid_argument());
        assert!(error.to_string().contains("file:///a"), "{error}");
    }

    #[test]
    fn expected_len_clips_to_the_object() {
        assert_eq!(expected_len(100, None), 100);
        assert_eq!(expected_len(100, Some(&(10..20))), 10);
        assert_eq!(expected_len(100, Some(&(90..200))), 10);
        assert_eq!(expected_len(100, Some(&(50..u64::MAX))), 50);
        assert_eq!(expected_len(100, Some(&(150..u64::MAX))), 0);
    }

    fn message(
        meta: Option<u64>,
        offset: u64,
        data: &'static [u8],
    ) -> Result<ReadResponse, tonic::Status> {
        Ok(ReadResponse {
            meta: meta.map(|size| ObjectMeta {
                uri: "f://a".into(),
                size,
                ..Default::default()
            }),
            offset,
            data: Bytes::from_static(data),
        })
    }

    async fn read(
        range: Option<Range<u64>>,
        messages: Vec<Result<ReadResponse, tonic::Status>>,
    ) -> Result<Bytes> {
        let stream =
            ReadStream::start("f://a", range.as_ref(), futures::stream::iter(messages)).await?;
        stream.into_bytes().await
    }

    #[tokio::test]
    async fn chunks_are_joined_and_meta_kept() {
        let messages = vec![message(Some(5), 0, b"he"), message(None, 2, b"llo")];
        let stream = ReadStream::start("f://a", None, futures::stream::iter(messages))
            .await
            .unwrap();
        assert_eq!(stream.meta().size, 5);
        assert_eq!(stream.expected_len(), 5);
        assert_eq!(
            stream.into_bytes().await.unwrap(),
            Bytes::from_static(b"hello")
        );
    }

    #[tokio::test]
    async fn ranged_read_starts_at_the_offset() {
        let messages = vec![message(Some(100), 10, b""), message(None, 10, b"abc")];
        assert_eq!(
            read(Some(10..13), messages).await.unwrap(),
            Bytes::from_static(b"abc")
        );
    }

    #[tokio::test]
    async fn empty_object_reads_empty() {
        assert!(
            read(None, vec![message(Some(0), 0, b"")])
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn short_stream_is_an_error_naming_the_uri() {
        let error = read(None, vec![message(Some(10), 0, b"abc")])
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::DataLoss);
        assert!(error.to_string().contains("f://a"), "{error}");
        assert!(error.to_string().contains("7 bytes short"), "{error}");
    }

    #[tokio::test]
    async fn gap_and_excess_are_errors() {
        let gap = vec![message(Some(6), 0, b"abc"), message(None, 4, b"ef")];
        assert_eq!(
            read(None, gap).await.unwrap_err().code(),
            tonic::Code::DataLoss
        );
        let excess = vec![message(Some(2), 0, b"abc")];
        assert_eq!(
            read(None, excess).await.unwrap_err().code(),
            tonic::Code::DataLoss
        );
    }

    #[tokio::test]
    async fn missing_meta_and_status_errors() {
        let error = read(None, vec![message(None, 0, b"abc")])
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::DataLoss);
        let error = read(None, vec![]).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::DataLoss);
        let status = Err(tonic::Status::not_found("not found: f://a"));
        assert!(read(None, vec![status]).await.unwrap_err().is_not_found());
        let midway = vec![
            message(Some(6), 0, b"abc"),
            Err(tonic::Status::aborted("changed: f://a")),
        ];
        assert!(read(None, midway).await.unwrap_err().is_aborted());
    }
}
