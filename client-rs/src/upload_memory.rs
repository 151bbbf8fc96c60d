//! Uploads through shared memory (`Upload`), for clients on the daemon's
//! node.
//!
//! Sending an object's bytes as gRPC messages costs a copy into each
//! message, the HTTP/2 framing, the socket's copy in and out of the kernel
//! and the daemon's decoding, on both sides. Instead, a client writes the
//! bytes into a memory file of its own ([`UploadMemory`], a ring of
//! [`SLOTS`] ranges of [`RANGE`] bytes), registered once on the daemon's
//! descriptor socket, and sends only `(offset, length)` messages; the daemon
//! copies each range straight into the upload's part and answers how many
//! bytes it is done with, so the client reuses the ring as it goes.
//!
//! A registration lives as long as its descriptor-socket connection, which
//! the memory keeps open. The [`Pool`] of one [`crate::Client`] keeps idle
//! memories for its next uploads; a memory inherited by a forked child is
//! never used there (parent and child would write the same ring). When the
//! daemon offers no registration (no descriptor socket, shared memory
//! turned off, an older daemon), the client uses `Write` instead, decided
//! before any of the caller's data is consumed.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_proto::fdpass::{self, TOKEN_LEN};
use sluice_proto::v1::write_request::Msg;
use sluice_proto::v1::{SharedRange, WriteHeader, WriteRequest, WriteTrailer, upload_response};
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use crate::client::Grpc;
use crate::error::{Error, Result};
use crate::write::Written;

/// Bytes per `shared` message.
pub(crate) const RANGE: usize = 4 << 20;
/// Ranges in the ring: how many the daemon may have to copy at once.
pub(crate) const SLOTS: usize = 4;
/// The memory file's size.
pub(crate) const RING: usize = RANGE * SLOTS;
/// Most ranges sent and not yet consumed (a caller that gives its bytes a
/// few at a time makes many small ranges).
const MAX_RANGES: usize = 64;
/// Idle memories one client keeps.
const MAX_IDLE: usize = 4;
/// How long the daemon may take to answer on the descriptor socket.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The writable mapping of an upload memory; a blocking read into it holds
/// it too, so it outlives an upload dropped while that read runs.
#[derive(Debug)]
struct Ring {
    base: NonNull<u8>,
}

// SAFETY: the mapping is written only by whoever holds the upload (its
// `&mut UploadMemory`, or the one blocking read it awaits) and unmapped in
// Drop.
unsafe impl Send for Ring {}
// SAFETY: as above; `&Ring` alone gives no access to the bytes.
unsafe impl Sync for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `register`; nothing refers
        // into it once the last holder is gone.
        unsafe { libc::munmap(self.base.as_ptr().cast(), RING) };
    }
}

/// A memory file registered with the daemon, mapped writable here.
#[derive(Debug)]
pub(crate) struct UploadMemory {
    ring: Arc<Ring>,
    token: [u8; TOKEN_LEN],
    /// The registration lasts while this stays open.
    conn: UnixStream,
    file: OwnedFd,
    /// The process that registered it.
    pid: u32,
}

impl UploadMemory {
    /// Creates the memory file and registers it on the descriptor socket
    /// at `path`. Blocking.
    pub(crate) fn register(path: &Path) -> io::Result<Self> {
        let conn = UnixStream::connect(path)?;
        // SAFETY: a valid C string; the result is checked.
        let fd = unsafe { libc::memfd_create(c"sluice-upload".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let file = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our descriptor.
        if unsafe { libc::ftruncate(file.as_raw_fd(), RING as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new shared mapping of the whole file; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RING,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ring = Ring {
            base: NonNull::new(base.cast())
                .ok_or_else(|| io::Error::other("mmap returned null"))?,
        };
        let mut memory = UploadMemory {
            ring: Arc::new(ring),
            token: [0; TOKEN_LEN],
            conn,
            file,
            pid: std::process::id(),
        };
        memory.conn.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        // The segment table comes first; an uploader has no use for it.
        drop(fdpass::recv_segments(&memory.conn)?);
        fdpass::send_registration(&memory.conn, memory.file.as_fd())?;
        memory.token = fdpass::recv_registered(&memory.conn)?.map_err(io::Error::other)?;
        Ok(memory)
    }

    /// Whether the registration still stands: registered by this process,
    /// and its connection not closed by the daemon (a restart).
    fn is_live(&self) -> bool {
        if self.pid != std::process::id() {
            return false;
        }
        let mut byte = 0u8;
        // SAFETY: peeks at most one byte into `byte`.
        let n = unsafe {
            libc::recv(
                self.conn.as_raw_fd(),
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }

    /// The ring's bytes `[at, at + len)`.
    fn slot(&mut self, at: usize, len: usize) -> &mut [u8] {
        assert!(at + len <= RING, "slot within the ring");
        // SAFETY: inside the live mapping, and `&mut self` makes this the
        // only reference into it (a blocking read into it is awaited
        // before the upload goes on).
        unsafe { std::slice::from_raw_parts_mut(self.ring.base.as_ptr().add(at), len) }
    }

    /// Fills `[at, at + len)` from `file` at `offset` on a blocking thread,
    /// with no copy in between; the count read and whether the file ended.
    async fn fill_from_file(
        &mut self,
        file: &Arc<std::fs::File>,
        offset: u64,
        at: usize,
        len: usize,
    ) -> io::Result<(usize, bool)> {
        assert!(at + len <= RING, "slot within the ring");
        let (ring, file) = (self.ring.clone(), file.clone());
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            // SAFETY: inside the mapping, which `ring` keeps alive; the
            // upload waits for this read before it touches the ring again.
            let buf = unsafe { std::slice::from_raw_parts_mut(ring.base.as_ptr().add(at), len) };
            let mut n = 0;
            while n < len {
                match file.read_at(&mut buf[n..], offset + n as u64) {
                    Ok(0) => return Ok((n, true)),
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok((n, false))
        })
        .await
        .unwrap_or_else(|_| Err(io::Error::other("reading the file panicked")))
    }
}

/// Where an upload's bytes come from.
pub(crate) enum Source<R> {
    /// Any reader: read into the ring.
    Reader(R),
    /// A file: read into the ring with `pread` on a blocking thread;
    /// `progress` is told each count read.
    File {
        file: Arc<std::fs::File>,
        progress: Box<dyn Fn(u64) + Send + Sync>,
    },
}

/// The upload memories of one client.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    /// The descriptor socket; `None`: not offered (a TCP address).
    path: Option<PathBuf>,
    idle: Mutex<Vec<UploadMemory>>,
    /// Set when the daemon offered no registration: use `Write` from then.
    off: AtomicBool,
}

impl Pool {
    /// Memories registered at `path`; none if `None`.
    pub(crate) fn new(path: Option<PathBuf>) -> Self {
        Pool {
            path,
            ..Pool::default()
        }
    }

    /// Whether uploads may use shared memory.
    pub(crate) fn enabled(&self) -> bool {
        self.path.is_some() && !self.off.load(Ordering::Relaxed)
    }

    /// Turns shared memory off for this client.
    pub(crate) fn disable(&self) {
        self.off.store(true, Ordering::Relaxed);
    }

    /// An idle memory, or a newly registered one; `None` when the daemon
    /// offers none (and from then on).
    pub(crate) async fn take(&self) -> Option<UploadMemory> {
        if !self.enabled() {
            return None;
        }
        // `try_lock`: a lock left held in a forked child never blocks.
        if let Ok(mut idle) = self.idle.try_lock() {
            while let Some(memory) = idle.pop() {
                if memory.is_live() {
                    return Some(memory);
                }
                // Stale, or inherited from the parent process: dropping it
                // unmaps and closes only this process's view of it.
            }
        }
        let path = self.path.clone()?;
        let registered = tokio::task::spawn_blocking(move || UploadMemory::register(&path))
            .await
            .unwrap_or_else(|_| Err(io::Error::other("registering upload memory panicked")));
        match registered {
            Ok(memory) => Some(memory),
            Err(_) => {
                // Not offered here: the bytes go on the stream (`Write`).
                self.disable();
                None
            }
        }
    }

    /// Keeps `memory` for the next upload.
    pub(crate) fn give_back(&self, memory: UploadMemory) {
        if let Ok(mut idle) = self.idle.try_lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(memory);
        }
    }
}

/// Uploads everything `source` yields to `uri` through `memory`.
pub(crate) async fn upload<R>(
    mut client: Grpc,
    uri: &str,
    memory: &mut UploadMemory,
    mut source: Source<R>,
    size_hint: u64,
) -> Result<Written>
where
    R: AsyncRead + Unpin,
{
    let message = |msg| WriteRequest { msg: Some(msg) };
    // Room for the header, every range not yet consumed and the trailer:
    // sending never waits on a daemon that stopped reading.
    let (tx, rx) = mpsc::channel(MAX_RANGES + 2);
    let header = WriteHeader {
        uri: uri.to_owned(),
        size_hint,
        shared_memory: bytes::Bytes::copy_from_slice(&memory.token),
    };
    tx.try_send(message(Msg::Header(header)))
        .expect("an empty channel");
    let mut answers = client.upload(tokio_stream_of(rx)).await?.into_inner();
    let ended_early = || Error::protocol(uri, "the upload's answers ended before it was committed");
    // Ranges go out in ring order and the daemon copies them in that
    // order, so the bytes it has not consumed are the `sent - consumed`
    // before the write position.
    let (mut sent, mut consumed) = (0u64, 0u64);
    // Where each range not yet consumed ends.
    let mut ends = std::collections::VecDeque::new();
    let mut read_error = None;
    loop {
        let at = (sent % RING as u64) as usize;
        let want = RANGE.min(RING - at);
        loop {
            while ends.front().is_some_and(|&end| end <= consumed) {
                ends.pop_front();
            }
            if sent - consumed <= (RING - want) as u64 && ends.len() < MAX_RANGES {
                break;
            }
            match answers.message().await?.and_then(|a| a.msg) {
                Some(upload_response::Msg::Consumed(n)) => consumed = n,
                Some(upload_response::Msg::Done(_)) | None => return Err(ended_early()),
            }
        }
        // The daemon may answer while the caller's data is awaited: its
        // progress, or the end of the call (a failure, a shutdown), which
        // must not wait for a caller that has nothing more to give.
        let (source, memory, from) = (&mut source, &mut *memory, sent);
        let filling = async move {
            match source {
                Source::Reader(reader) => fill(reader, memory.slot(at, want)).await,
                Source::File { file, progress } => {
                    let filled = memory.fill_from_file(file, from, at, want).await;
                    if let Ok((n, _)) = filled {
                        progress(n as u64);
                    }
                    filled
                }
            }
        };
        let mut filling = std::pin::pin!(filling);
        let filled = loop {
            tokio::select! {
                filled = &mut filling => break filled,
                answer = answers.message() => match answer?.and_then(|a| a.msg) {
                    Some(upload_response::Msg::Consumed(n)) => consumed = n,
                    Some(upload_response::Msg::Done(_)) | None => return Err(ended_early()),
                },
            }
        };
        let (n, end) = match filled {
            Ok(filled) => filled,
            Err(error) => {
                read_error = Some(error);
                break;
            }
        };
        if n > 0 {
            let range = SharedRange {
                offset: at as u64,
                length: n as u64,
            };
            if tx.try_send(message(Msg::Shared(range))).is_err() {
                // The daemon ended the call; its answer says why.
                break;
            }
            sent += n as u64;
            ends.push_back(sent);
        }
        if end {
            let _ = tx.try_send(message(Msg::Trailer(WriteTrailer { total_size: sent })));
            break;
        }
    }
    // Without a trailer the daemon discards the upload.
    drop(tx);
    let result = loop {
        match answers.message().await {
            Ok(Some(a)) => match a.msg {
                Some(upload_response::Msg::Consumed(_)) => {}
                Some(upload_response::Msg::Done(done)) => break Ok(done),
                None => break Err(ended_early()),
            },
            Ok(None) => break Err(ended_early()),
            Err(status) => break Err(status.into()),
        }
    };
    if let Some(source) = read_error {
        return Err(Error::Io {
            uri: uri.to_owned(),
            source,
        });
    }
    let done = result?;
    let meta = done
        .meta
        .ok_or_else(|| Error::protocol(uri, "upload response has no metadata"))?;
    Ok(Written {
        meta,
        parts: done.parts,
    })
}

/// The request body: what `rx` receives, until every sender is gone.
fn tokio_stream_of(
    mut rx: mpsc::Receiver<WriteRequest>,
) -> impl futures::Stream<Item = WriteRequest> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Reads into `buf` until it is full, the reader ends, or the reader has
/// nothing more for now after giving something (what it gave goes out
/// rather than waiting for more). The count read, and whether the reader
/// ended.
async fn fill<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> io::Result<(usize, bool)> {
    let mut n = 0;
    std::future::poll_fn(|cx| {
        while n < buf.len() {
            let mut rb = ReadBuf::new(&mut buf[n..]);
            match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(Ok((n, true))),
                Poll::Ready(Ok(())) => n += rb.filled().len(),
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if n > 0 => return Poll::Ready(Ok((n, false))),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok((n, false)))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fill_reads_until_full_or_the_end() {
        let data: Vec<u8> = (0..10u8).collect();
        let mut reader = &data[..];
        let mut buf = [0u8; 4];
        assert_eq!(fill(&mut reader, &mut buf).await.unwrap(), (4, false));
        assert_eq!(buf, [0, 1, 2, 3]);
        let mut big = [0u8; 16];
        assert_eq!(fill(&mut reader, &mut big).await.unwrap(), (6, true));
        assert_eq!(&big[..6], &data[4..]);
        assert_eq!(fill(&mut reader, &mut big).await.unwrap(), (0, true));
    }

    #[tokio::test]
    async fn fill_hands_over_what_a_stalled_reader_gave() {
        let (mut tx, mut rx) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut tx, b"abc")
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(fill(&mut rx, &mut buf).await.unwrap(), (3, false));
        assert_eq!(&buf[..3], b"abc");
        // Nothing yet: waits, then takes what comes next.
        let writer = tokio::spawn(async move {
            tokio::io::AsyncWriteExt::write_all(&mut tx, b"de")
                .await
                .unwrap();
            tx
        });
        assert_eq!(fill(&mut rx, &mut buf).await.unwrap(), (2, false));
        assert_eq!(&buf[..2], b"de");
        drop(writer.await.unwrap());
        assert_eq!(fill(&mut rx, &mut buf).await.unwrap(), (0, true));
    }

    #[test]
    fn a_missing_descriptor_socket_fails_registration() {
        let dir = tempfile::tempdir().unwrap();
        let err = UploadMemory::register(&dir.path().join("none.fds")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
