//! An accepted connection: its IO, its slot of the connection limit, the
//! idle clock, and its lingering close.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use futures::task::AtomicWaker;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tonic::transport::server::Connected;

use super::*;

/// Calls in flight on one connection, for the idle timeout.
#[derive(Debug, Default)]
pub(super) struct Activity {
    pub(super) active: AtomicUsize,
    /// Calls ever started: a changed value restarts the idle clock.
    pub(super) started: AtomicU64,
    /// The connection's reader, woken when the last call ends.
    pub(super) reader: AtomicWaker,
}

/// Held while a call runs (handler and response body).
#[derive(Debug)]
pub struct CallGuard(Arc<Activity>);

impl Activity {
    pub(super) fn begin(self: &Arc<Self>) -> CallGuard {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.active.fetch_add(1, Ordering::SeqCst);
        CallGuard(self.clone())
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.reader.wake();
        }
    }
}

#[derive(Debug)]
pub(super) struct OpenGuard(pub(super) Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What a connection keeps until it closes, e.g. the leases of a session
/// ended while its client still lives (and may still read them).
#[derive(Default)]
pub struct Retained(std::sync::Mutex<Vec<Box<dyn std::any::Any + Send>>>);

impl std::fmt::Debug for Retained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Retained")
    }
}

impl Retained {
    /// Keeps `thing` until the connection closes.
    pub fn keep(&self, thing: Box<dyn std::any::Any + Send>) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(thing);
    }
}

/// What an accepted connection holds besides its IO: the peer, a slot of
/// the connection limit (freed when the connection is dropped) and the
/// idle clock.
#[derive(Debug)]
pub struct Slot {
    pub(super) peer: Peer,
    pub(super) activity: Arc<Activity>,
    pub(super) idle_timeout: Option<Duration>,
    pub(super) idle_closed: Counter,
    /// The connection's share of memory and request slots.
    pub(super) client: Option<Arc<sluice_engine::ClientShare>>,
    pub(super) retained: Arc<Retained>,
    pub(super) _open: OpenGuard,
    pub(super) _permit: OwnedSemaphorePermit,
}

impl Slot {
    /// The peer.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Records the TLS handshake completed on this TCP connection.
    pub fn set_tls(&mut self, tls: TlsPeer) {
        if let Peer::Tcp { tls: t, .. } = &mut self.peer {
            *t = Some(tls);
        }
    }
}

/// How long a connection whose HTTP/2 side is done keeps reading (and
/// discarding) what its peer still sends before the socket is closed.
///
/// The last frames of a response (its trailers, the GOAWAY of a daemon
/// shutting down) are written, then the write side is shut. A client that
/// writes to a socket already closed — a WINDOW_UPDATE for the data it is
/// reading — gets EPIPE, and the HTTP/2 client gives up the connection
/// with frames it has received but not read yet: a stream the daemon
/// finished would end in "broken pipe". Closing only once the peer has
/// closed (it does when it reads the GOAWAY and has no stream left), or
/// after this long, lets it read everything.
pub(super) const LINGER: Duration = Duration::from_secs(2);

/// An accepted connection.
#[derive(Debug)]
pub struct Conn<IO> {
    pub(super) io: IO,
    pub(super) slot: Slot,
    /// Armed while no call is in flight, with the `started` count it saw.
    pub(super) idle: Option<(Pin<Box<tokio::time::Sleep>>, u64)>,
    /// Set once the write side is shut: the end of the lingering close.
    pub(super) linger: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> Conn<IO> {
    /// A connection of `io` in `slot`.
    pub fn new(io: IO, slot: Slot) -> Self {
        Conn {
            io,
            slot,
            idle: None,
            linger: None,
        }
    }

    /// The IO and the slot, e.g. to wrap the IO in TLS.
    pub fn into_parts(self) -> (IO, Slot) {
        (self.io, self.slot)
    }

    /// The peer.
    pub fn peer(&self) -> &Peer {
        &self.slot.peer
    }

    /// Whether the idle timeout has passed with no call in flight.
    fn idle_expired(&mut self, cx: &mut TaskContext<'_>) -> bool {
        let Some(timeout) = self.slot.idle_timeout else {
            return false;
        };
        let activity = &self.slot.activity;
        activity.reader.register(cx.waker());
        if activity.active.load(Ordering::SeqCst) > 0 {
            self.idle = None;
            return false;
        }
        let started = activity.started.load(Ordering::SeqCst);
        match &mut self.idle {
            Some((_, seen)) if *seen == started => {}
            _ => self.idle = Some((Box::pin(tokio::time::sleep(timeout)), started)),
        }
        let (sleep, _) = self.idle.as_mut().expect("armed above");
        if sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        if activity.active.load(Ordering::SeqCst) > 0
            || activity.started.load(Ordering::SeqCst) != started
        {
            self.idle = None;
            return false;
        }
        self.slot.idle_closed.inc();
        tracing::debug!(peer = ?self.slot.peer, ?timeout, "closing an idle connection");
        true
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.idle_expired(cx) {
            // End of stream: the HTTP/2 connection ends and drops us.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Shuts the write side, then reads and discards until the peer closes
    /// or [`LINGER`] has passed (see there).
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        if self.linger.is_none() {
            ready!(Pin::new(&mut self.io).poll_shutdown(cx))?;
            self.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        let mut scratch = [0u8; 8192];
        // Bounded per poll: a peer that keeps sending cannot hold the task.
        let mut drained = false;
        for _ in 0..64 {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    drained = true;
                    break;
                }
            }
        }
        if !drained {
            // More to read: come back after other tasks had their turn.
            cx.waker().wake_by_ref();
        }
        let linger = self.linger.as_mut().expect("set above");
        if linger.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// What tonic puts into every request of a [`Conn`].
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer.
    pub peer: Peer,
    /// The connection's share of memory and request slots.
    pub client: Option<Arc<sluice_engine::ClientShare>>,
    /// Kept until the connection closes.
    pub retained: Arc<Retained>,
    pub(super) activity: Arc<Activity>,
}

impl<IO> Connected for Conn<IO> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            peer: self.slot.peer.clone(),
            client: self.slot.client.clone(),
            retained: self.slot.retained.clone(),
            activity: self.slot.activity.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn conn(io: tokio::net::UnixStream) -> Conn<tokio::net::UnixStream> {
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        Conn::new(
            io,
            Slot {
                peer: Peer::Unix(None),
                activity: Arc::default(),
                idle_timeout: None,
                idle_closed: Counter::default(),
                client: None,
                retained: Arc::default(),
                _open: OpenGuard(Gauge::default()),
                _permit: permit,
            },
        )
    }

    /// Closing a connection shuts its write side at once but keeps the
    /// socket until the peer closes: the peer reads everything sent before
    /// and can still write meanwhile (no EPIPE), however late it does.
    #[tokio::test(start_paused = true)]
    async fn a_closing_connection_lingers_until_its_peer_closes() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let mut c = conn(ours);
        c.write_all(b"last frames").await.unwrap();
        let mut closing = tokio::spawn(async move {
            c.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last frames", "the peer reads all, then EOF");
        // Late, but within the linger: the peer's writes still land.
        tokio::time::sleep(LINGER / 2).await;
        theirs.write_all(&[0; 100_000]).await.unwrap();
        tokio::task::yield_now().await;
        assert!(
            futures::poll!(&mut closing).is_pending(),
            "the socket is kept while the peer has it open"
        );
        drop(theirs);
        closing.await.unwrap();
    }

    /// A peer that never closes is closed on after the linger.
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_closes_is_closed_on_after_the_linger() {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let mut c = conn(ours);
        let start = tokio::time::Instant::now();
        c.shutdown().await.unwrap();
        assert!(start.elapsed() >= LINGER);
        drop(c);
        let mut theirs = theirs;
        let mut rest = Vec::new();
        theirs.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}
