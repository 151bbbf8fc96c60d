//! Uploading one object: a header message, data chunks, then a trailer.
//!
//! Data reaches the daemon in chunks of [`DEFAULT_CHUNK_SIZE`] whatever size
//! the caller's pieces have: [`Rechunker`] slices large pieces (no copy) and
//! coalesces small ones (one copy), so message framing stays amortised and
//! no message approaches the size limit.
//!
//! Memory stays bounded: the request body is a stream that tonic polls only
//! as HTTP/2 flow control lets data out, so at most a chunk or two is held
//! here, whatever the object's size.
//!
//! The last message is a trailer with the number of bytes sent, and the
//! daemon commits the object only when it arrives and matches. So a local
//! read error simply ends the request stream without a trailer: the daemon
//! discards the upload, and the caller gets the I/O error. (Resetting the
//! call would not do: a tonic server reads a stream reset with `CANCEL` as
//! a clean end of the request stream.)

use std::io;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, stream};
use sluice_proto::DEFAULT_CHUNK_SIZE;
use sluice_proto::v1::write_request::Msg;
use sluice_proto::v1::{ObjectMeta, WriteHeader, WriteRequest, WriteTrailer};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::oneshot;

use crate::client::Grpc;
use crate::error::{Error, Result};

/// What the daemon reports about a completed upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The metadata of the new object.
    pub meta: ObjectMeta,
    /// Parts of the multipart upload; 0 or 1 for a single-shot upload.
    pub parts: u32,
}

/// Cuts a sequence of byte pieces into chunks of exactly `chunk_size` bytes,
/// except the last.
#[derive(Debug)]
pub(crate) struct Rechunker {
    chunk_size: usize,
    /// The unconsumed rest of the latest piece.
    pending: Bytes,
    /// Small pieces being coalesced; never holds a full chunk.
    buf: BytesMut,
}

impl Rechunker {
    pub(crate) fn new(chunk_size: usize) -> Self {
        assert!(chunk_size > 0, "chunk size must be positive");
        Rechunker {
            chunk_size,
            pending: Bytes::new(),
            buf: BytesMut::new(),
        }
    }

    /// Accepts a piece; call only once [`Self::next_chunk`] returned `None`.
    pub(crate) fn push(&mut self, piece: Bytes) {
        debug_assert!(self.pending.is_empty());
        self.pending = piece;
    }

    /// The next full chunk, if the data pushed so far holds one.
    pub(crate) fn next_chunk(&mut self) -> Option<Bytes> {
        while !self.pending.is_empty() {
            if self.buf.is_empty() && self.pending.len() >= self.chunk_size {
                return Some(self.pending.split_to(self.chunk_size));
            }
            let take = (self.chunk_size - self.buf.len()).min(self.pending.len());
            self.buf.extend_from_slice(&self.pending.split_to(take));
            if self.buf.len() == self.chunk_size {
                return Some(self.buf.split().freeze());
            }
        }
        None
    }

    /// The final, possibly short, chunk.
    pub(crate) fn finish(&mut self) -> Option<Bytes> {
        self.next_chunk()
            .or_else(|| (!self.buf.is_empty()).then(|| self.buf.split().freeze()))
    }
}

/// Re-cuts a stream of pieces into chunks of `chunk_size`.
pub(crate) fn rechunk<S, E>(
    pieces: S,
    chunk_size: usize,
) -> impl Stream<Item = Result<Bytes, E>> + Send
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: Send,
{
    let state = (pieces, Rechunker::new(chunk_size), false);
    stream::unfold(
        state,
        move |(mut pieces, mut chunker, mut ended)| async move {
            loop {
                if let Some(chunk) = chunker.next_chunk() {
                    return Some((Ok(chunk), (pieces, chunker, ended)));
                }
                if ended {
                    let last = chunker.finish()?;
                    return Some((Ok(last), (pieces, chunker, ended)));
                }
                match pieces.next().await {
                    Some(Ok(piece)) => chunker.push(piece),
                    Some(Err(error)) => {
                        // Nothing after an error: drop what was buffered and end.
                        let empty = Rechunker::new(chunk_size);
                        return Some((Err(error), (pieces, empty, true)));
                    }
                    None => ended = true,
                }
            }
        },
    )
}

/// The data of `reader` as chunks of `chunk_size`, each filled completely
/// (short reads are retried) except the last.
pub(crate) fn read_chunks<R>(
    reader: R,
    chunk_size: usize,
) -> impl Stream<Item = io::Result<Bytes>> + Send
where
    R: AsyncRead + Send + Unpin,
{
    stream::unfold(Some(reader), move |reader| async move {
        let mut reader = reader?;
        let mut buf = BytesMut::with_capacity(chunk_size);
        while buf.len() < chunk_size {
            match reader.read_buf(&mut buf).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Some((Err(error), None)),
            }
        }
        if buf.is_empty() {
            return None;
        }
        let more = (buf.len() == chunk_size).then_some(reader);
        Some((Ok(buf.freeze()), more))
    })
}

/// A reader that tells `progress` each count of bytes it yields.
pub(crate) struct Counting<R, F> {
    inner: R,
    progress: F,
}

impl<R, F> Counting<R, F> {
    pub(crate) fn new(inner: R, progress: F) -> Self {
        Counting { inner, progress }
    }
}

impl<R: AsyncRead + Unpin, F: Fn(u64) + Unpin> AsyncRead for Counting<R, F> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            (self.progress)(n as u64);
        }
        res
    }
}

/// Where the body stream of an upload stands.
enum BodyState<S> {
    /// Sending data; the count of bytes sent so far.
    Data(Pin<Box<S>>, u64, oneshot::Sender<io::Error>),
    /// Done: the trailer (or, after an error, nothing) has been sent.
    Done,
}

/// The messages after the header: data chunks, then the trailer; an error
/// goes to `error_tx` and ends the stream without a trailer.
fn body<S>(data: S, error_tx: oneshot::Sender<io::Error>) -> impl Stream<Item = WriteRequest> + Send
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    let message = |msg| WriteRequest { msg: Some(msg) };
    let state = BodyState::Data(Box::pin(data), 0, error_tx);
    stream::unfold(state, move |state| async move {
        let BodyState::Data(mut data, sent, error_tx) = state else {
            return None;
        };
        match data.next().await {
            Some(Ok(chunk)) => {
                let sent = sent + chunk.len() as u64;
                Some((
                    message(Msg::Data(chunk)),
                    BodyState::Data(data, sent, error_tx),
                ))
            }
            Some(Err(error)) => {
                let _ = error_tx.send(error);
                None
            }
            None => {
                let trailer = WriteTrailer { total_size: sent };
                Some((message(Msg::Trailer(trailer)), BodyState::Done))
            }
        }
    })
}

/// Uploads the chunks of `data` to `uri`; see the module documentation.
pub(crate) async fn upload<S>(
    mut client: Grpc,
    uri: &str,
    data: S,
    size_hint: u64,
) -> Result<Written>
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    let (error_tx, mut error_rx) = oneshot::channel();
    let header = WriteRequest {
        msg: Some(Msg::Header(WriteHeader {
            uri: uri.to_owned(),
            size_hint,
            ..Default::default()
        })),
    };
    let requests = stream::once(async { header }).chain(body(data, error_tx));
    let result = client.write(requests).await;
    // A local error is the cause of whatever the daemon answered.
    if let Ok(source) = error_rx.try_recv() {
        return Err(Error::Io {
            uri: uri.to_owned(),
            source,
        });
    }
    let response = result?.into_inner();
    let meta = response
        .meta
        .ok_or_else(|| Error::protocol(uri, "write response has no metadata"))?;
    Ok(Written {
        meta,
        parts: response.parts,
    })
}

/// [`upload`] for callers whose chunks cannot fail.
pub(crate) async fn upload_infallible<S>(
    client: Grpc,
    uri: &str,
    data: S,
    size_hint: u64,
) -> Result<Written>
where
    S: Stream<Item = Bytes> + Send + Unpin + 'static,
{
    let chunks = rechunk(data.map(Ok::<_, io::Error>), DEFAULT_CHUNK_SIZE);
    upload(client, uri, chunks, size_hint).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rechunk_all(pieces: &[Vec<u8>], chunk_size: usize) -> Vec<Bytes> {
        let mut chunker = Rechunker::new(chunk_size);
        let mut chunks = Vec::new();
        for piece in pieces {
            chunker.push(Bytes::from(piece.clone()));
            chunks.extend(std::iter::from_fn(|| chunker.next_chunk()));
        }
        chunks.extend(chunker.finish());
        chunks
    }

    proptest! {
        #[test]
        fn rechunking_keeps_the_bytes_and_fills_chunks(
            pieces in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..20),
            chunk_size in 1usize..16,
        ) {
            let chunks = rechunk_all(&pieces, chunk_size);
            let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            prop_assert_eq!(joined, pieces.concat());
            if let Some((last, full)) = chunks.split_last() {
                prop_assert!(full.iter().all(|c| c.len() == chunk_size));
                prop_assert!(!last.is_empty() && last.len() <= chunk_size);
            }
        }
    }

    #[test]
    fn large_piece_is_sliced_without_copy() {
        let piece = Bytes::from(vec![7u8; 10]);
        let mut chunker = Rechunker::new(4);
        chunker.push(piece.clone());
        let first = chunker.next_chunk().unwrap();
        assert_eq!(first.as_ptr(), piece.as_ptr());
        assert_eq!(first.len(), 4);
    }

    #[tokio::test]
    async fn reader_chunks_are_full_despite_short_reads() {
        let data: Vec<u8> = (0..100u8).collect();
        // A reader that returns at most 3 bytes per read.
        let reader = short_reads(&data, 3);
        let chunks: Vec<Bytes> = read_chunks(reader, 16).map(|c| c.unwrap()).collect().await;
        assert_eq!(
            chunks.iter().map(Bytes::len).collect::<Vec<_>>(),
            [16, 16, 16, 16, 16, 16, 4]
        );
        assert_eq!(chunks.concat(), data);
    }

    #[tokio::test]
    async fn reader_error_is_passed_on() {
        let reader = tokio::io::AsyncReadExt::chain(&b"abc"[..], FailingReader);
        let chunks: Vec<io::Result<Bytes>> = read_chunks(reader, 16).collect().await;
        assert_eq!(chunks.len(), 1);
        assert_eq!(
            chunks[0].as_ref().unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
    }

    fn short_reads(data: &[u8], max_read: usize) -> impl AsyncRead + Send + Unpin {
        let (mut tx, rx) = tokio::io::duplex(max_read);
        let data = data.to_vec();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&data).await.unwrap();
        });
        rx
    }

    fn kinds(messages: &[WriteRequest]) -> Vec<String> {
        messages
            .iter()
            .map(|m| match m.msg.as_ref().unwrap() {
                Msg::Header(_) => "header".to_owned(),
                Msg::Data(data) => format!("data {}", data.len()),
                Msg::Trailer(t) => format!("trailer {}", t.total_size),
                Msg::Shared(r) => format!("shared {}+{}", r.offset, r.length),
            })
            .collect()
    }

    #[tokio::test]
    async fn body_ends_with_a_trailer_counting_the_bytes() {
        let (tx, mut rx) = oneshot::channel();
        let data = stream::iter([
            Ok(Bytes::from_static(b"abc")),
            Ok(Bytes::from_static(b"de")),
        ]);
        let messages: Vec<WriteRequest> = body(data, tx).collect().await;
        assert_eq!(kinds(&messages), ["data 3", "data 2", "trailer 5"]);
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn body_error_ends_without_a_trailer() {
        let (tx, mut rx) = oneshot::channel();
        let data = stream::iter([
            Ok(Bytes::from_static(b"abc")),
            Err(io::ErrorKind::BrokenPipe.into()),
            Ok(Bytes::from_static(b"never")),
        ]);
        let messages: Vec<WriteRequest> = body(data, tx).collect().await;
        assert_eq!(kinds(&messages), ["data 3"]);
        assert_eq!(rx.try_recv().unwrap().kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test]
    async fn empty_body_is_just_a_trailer() {
        let (tx, _rx) = oneshot::channel();
        let messages: Vec<WriteRequest> = body(stream::empty(), tx).collect().await;
        assert_eq!(kinds(&messages), ["trailer 0"]);
    }

    struct FailingReader;

    impl AsyncRead for FailingReader {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
        }
    }
}
