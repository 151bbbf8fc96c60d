//! Reassembling the results of a `ReadMany` call.
//!
//! The daemon streams the chunks of many objects over one call. The protocol
//! guarantees that the chunks of one item arrive back to back: its first chunk
//! carries the metadata, its last one has `last` set, and a failed item is a
//! single message with `error` (and `last`). So at most one item is ever being
//! assembled, and [`Reassembler`] is a small state machine over that item.
//!
//! The stream yields exactly one result per requested item, whatever happens:
//! if the call fails midway (the daemon went away, a chunk broke the
//! protocol), every item without a result yet gets that error. Callers can
//! therefore count results instead of tracking which items are still owed.
//!
//! A single-chunk item is handed out without a copy; a multi-chunk item is
//! copied once into a buffer sized from its metadata.

use std::collections::VecDeque;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use sluice_proto::v1::{ObjectMeta, ReadManyResponse};

use crate::error::{Error, Result};
use crate::read::expected_len;

/// One object (or byte range of one) to read with `read_many`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadItem {
    /// The object.
    pub uri: String,
    /// The bytes to read; `None` for all (see [`crate::Client::read`]).
    pub range: Option<Range<u64>>,
}

impl From<String> for ReadItem {
    fn from(uri: String) -> Self {
        ReadItem { uri, range: None }
    }
}

impl From<&str> for ReadItem {
    fn from(uri: &str) -> Self {
        uri.to_owned().into()
    }
}

impl From<(String, Range<u64>)> for ReadItem {
    fn from((uri, range): (String, Range<u64>)) -> Self {
        ReadItem {
            uri,
            range: Some(range),
        }
    }
}

/// The result of one item: its index in the request, and its metadata and data.
pub type ItemResult = (usize, Result<(ObjectMeta, Bytes)>);

/// The item being assembled.
#[derive(Debug)]
struct Partial {
    index: usize,
    meta: ObjectMeta,
    chunks: Vec<Bytes>,
    next_offset: u64,
    received: u64,
}

/// Turns the messages of a `ReadMany` call into per-item results.
#[derive(Debug)]
pub(crate) struct Reassembler {
    items: Vec<ReadItem>,
    done: Vec<bool>,
    outstanding: usize,
    current: Option<Partial>,
}

impl Reassembler {
    pub(crate) fn new(items: Vec<ReadItem>) -> Self {
        let n = items.len();
        Reassembler {
            items,
            done: vec![false; n],
            outstanding: n,
            current: None,
        }
    }

    /// Items without a result yet.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Feeds one message; returns the item it completed, if any. An `Err`
    /// means the stream broke the protocol and cannot be trusted further.
    pub(crate) fn feed(&mut self, message: ReadManyResponse) -> Result<Option<ItemResult>, String> {
        let index = message.index as usize;
        if index >= self.items.len() || self.done[index] {
            return Err(format!("unexpected message for item {index}"));
        }
        if let Some(current) = &self.current
            && current.index != index
        {
            return Err(format!(
                "item {index} interleaved with item {}",
                current.index
            ));
        }
        if let Some(error) = message.error {
            self.current = None;
            return Ok(Some(
                self.complete(index, Err(Error::item(error.code, error.message))),
            ));
        }
        let mut partial = match self.current.take() {
            Some(partial) => partial,
            None => self.begin(index, message.meta)?,
        };
        if !message.data.is_empty() {
            if message.offset != partial.next_offset {
                return Err(format!(
                    "item {index}: chunk at offset {}, expected {}",
                    message.offset, partial.next_offset
                ));
            }
            partial.next_offset += message.data.len() as u64;
            partial.received += message.data.len() as u64;
            partial.chunks.push(message.data);
        }
        if !message.last {
            self.current = Some(partial);
            return Ok(None);
        }
        let result = self.finish(partial);
        Ok(Some(self.complete(index, result)))
    }

    fn begin(&self, index: usize, meta: Option<ObjectMeta>) -> Result<Partial, String> {
        let meta = meta.ok_or_else(|| format!("item {index}: first chunk has no metadata"))?;
        let start = self.items[index].range.as_ref().map_or(0, |r| r.start);
        Ok(Partial {
            index,
            meta,
            chunks: Vec::new(),
            next_offset: start,
            received: 0,
        })
    }

    /// Checks a complete item's length and joins its chunks.
    fn finish(&self, partial: Partial) -> Result<(ObjectMeta, Bytes)> {
        let item = &self.items[partial.index];
        let expected = expected_len(partial.meta.size, item.range.as_ref());
        if partial.received != expected {
            return Err(Error::protocol(
                &item.uri,
                format!("read {} bytes, expected {expected}", partial.received),
            ));
        }
        let data = match <[Bytes; 1]>::try_from(partial.chunks) {
            Ok([single]) => single,
            Err(chunks) => {
                let mut buf = crate::pool::take(expected as usize);
                for chunk in &chunks {
                    buf.extend_from_slice(chunk);
                }
                crate::pool::bytes(buf)
            }
        };
        Ok((partial.meta, data))
    }

    fn complete(&mut self, index: usize, result: Result<(ObjectMeta, Bytes)>) -> ItemResult {
        self.done[index] = true;
        self.outstanding -= 1;
        (index, result)
    }

    /// Ends the call: every item without a result gets one from `error`.
    pub(crate) fn fail_remaining(&mut self, error: impl Fn(&str) -> Error) -> Vec<ItemResult> {
        self.current = None;
        let remaining: Vec<usize> = (0..self.items.len()).filter(|&i| !self.done[i]).collect();
        remaining
            .into_iter()
            .map(|i| {
                let result = Err(error(&self.items[i].uri));
                self.complete(i, result)
            })
            .collect()
    }
}

/// The results of a `read_many` call, one per item, in the order the daemon
/// delivers them (request order when asked for `ordered`).
pub struct ReadManyStream {
    inner: BoxStream<'static, Result<ReadManyResponse, tonic::Status>>,
    reassembler: Reassembler,
    ready: VecDeque<ItemResult>,
}

impl ReadManyStream {
    pub(crate) fn new(
        items: Vec<ReadItem>,
        inner: impl Stream<Item = Result<ReadManyResponse, tonic::Status>> + Send + 'static,
    ) -> Self {
        ReadManyStream {
            inner: inner.boxed(),
            reassembler: Reassembler::new(items),
            ready: VecDeque::new(),
        }
    }
}

impl std::fmt::Debug for ReadManyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadManyStream")
            .field("outstanding", &self.reassembler.outstanding())
            .finish_non_exhaustive()
    }
}

impl Stream for ReadManyStream {
    type Item = ItemResult;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ItemResult>> {
        let this = &mut *self;
        loop {
            if let Some(result) = this.ready.pop_front() {
                return Poll::Ready(Some(result));
            }
            if this.reassembler.outstanding() == 0 {
                return Poll::Ready(None);
            }
            let failed = match ready!(this.inner.poll_next_unpin(cx)) {
                Some(Ok(message)) => match this.reassembler.feed(message) {
                    Ok(completed) => {
                        this.ready.extend(completed);
                        continue;
                    }
                    Err(reason) => this
                        .reassembler
                        .fail_remaining(|uri| Error::protocol(uri, reason.clone())),
                },
                Some(Err(status)) => this.reassembler.fail_remaining(|_| status.clone().into()),
                None => this.reassembler.fail_remaining(|uri| {
                    Error::protocol(uri, "read_many stream ended before the item")
                }),
            };
            this.ready.extend(failed);
        }
    }
}

#[cfg(test)]
mod tests;
