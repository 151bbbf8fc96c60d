//! Listeners: binding the Unix sockets, one accept loop for every listener,
//! the connection limit, idle connections, and who a Unix-socket peer is.
//!
//! [`incoming`] turns a bound listener into a stream of [`Conn`]s for tonic
//! (or for the descriptor socket's own loop). Each accepted connection
//! takes a slot of the listener's `server.limits.max_connections`; one
//! accepted beyond it is closed at once (the client sees UNAVAILABLE) and
//! counted. Accept errors that mean the process is out of a resource
//! (EMFILE, ENFILE, ENOMEM, ENOBUFS) make the loop sleep with exponential
//! backoff (10 ms doubling to 1 s) instead of retrying at once: the
//! connections wait in the kernel's backlog until descriptors free up.
//!
//! A [`Conn`] carries the peer ([`Peer`]: `SO_PEERCRED` for Unix sockets,
//! the address for TCP) and its slot; tonic hands [`ConnInfo`] to every
//! request, where [`PeerGuard`] checks the peer against
//! `server.allowed_uids` / `server.allowed_gids`, tracks the connection's
//! calls for the idle timeout, and exposes tonic's own `UdsConnectInfo` /
//! `TcpConnectInfo` to the handlers.
//!
//! Wrapping a connection (TLS, say) after the accept: take it apart with
//! [`Conn::into_parts`], wrap the IO, and put it back with [`Conn::new`];
//! the slot goes with it.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;

/// Binds the Unix socket, replacing a stale socket file left by a crash
/// but never a live daemon's socket or a non-socket file.
pub(crate) fn bind_unix(path: &Path, mode: u32) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
    }
    if let Ok(md) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            md.file_type().is_socket(),
            "{} exists and is not a socket",
            path.display()
        );
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another daemon is listening on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set mode {mode:o} on {}", path.display()))?;
    Ok(listener)
}

/// `[server.limits]`: bounds of every gRPC listener (and of the descriptor
/// socket, for `max_connections`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections one listener holds open at once; one more is accepted
    /// and closed at once.
    pub max_connections: usize,
    /// HTTP/2 streams (calls) in flight on one connection; a client's
    /// further calls wait on its side until one ends.
    pub max_concurrent_streams: u32,
    /// Interval of the server's HTTP/2 PINGs; `0s` turns them off.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// A connection whose PING is not answered within this is closed.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// A connection with no call in flight for this long is closed; `0s`
    /// never.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_concurrent_streams: 256,
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

mod conn;
mod metrics;
mod peer;

pub use conn::*;
pub use metrics::*;
pub use peer::*;

/// A listener the accept loop can drive.
pub trait Listener: Send + 'static {
    /// An accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Accepts one connection.
    fn accept_peer(&self) -> impl Future<Output = io::Result<(Self::Io, Peer)>> + Send;
}

impl Listener for UnixListener {
    type Io = UnixStream;
    async fn accept_peer(&self) -> io::Result<(UnixStream, Peer)> {
        let (stream, _) = self.accept().await?;
        let cred = stream.peer_cred().ok();
        Ok((stream, Peer::Unix(cred)))
    }
}

impl Listener for TcpListener {
    type Io = TcpStream;
    async fn accept_peer(&self) -> io::Result<(TcpStream, Peer)> {
        let (stream, remote) = self.accept().await?;
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok();
        Ok((
            stream,
            Peer::Tcp {
                local,
                remote,
                tls: None,
            },
        ))
    }
}

/// How one listener accepts.
#[derive(Debug, Clone)]
pub struct AcceptOptions {
    /// The `listener` label and the name in log lines.
    pub name: &'static str,
    /// Open connections at most.
    pub max_connections: usize,
    /// Close connections without a call in flight for this long.
    pub idle_timeout: Option<Duration>,
    /// Logs (and counts) connections of peers this policy refuses; they are
    /// still yielded, to be refused by the caller.
    pub policy: Option<Arc<PeerPolicy>>,
    /// Where to count.
    pub metrics: ListenerMetrics,
    /// Tell a connection over the limit why, as plaintext HTTP/2 (a GOAWAY
    /// with ENHANCE_YOUR_CALM, which gRPC clients report as
    /// RESOURCE_EXHAUSTED) before closing it. Only for listeners whose
    /// clients speak HTTP/2 directly on the accepted stream (not TLS).
    pub refuse_h2: bool,
    /// Gives every connection its own share of memory and request slots
    /// (`None`: connections that make no reads, e.g. the descriptor socket).
    pub shares: Option<Arc<sluice_engine::Shares>>,
}

/// Backoff after resource errors: first and longest sleep.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Connections over the limit are logged at most this often.
const REJECT_LOG_EVERY: Duration = Duration::from_secs(10);
/// Connections over the limit that are told why at once, each for at most
/// `REFUSE_LINGER`; beyond that they are closed without a word.
const REFUSING_MAX: usize = 64;
const REFUSE_LINGER: Duration = Duration::from_secs(2);

/// Whether an accept error means the process (or system) is out of
/// something, so that retrying at once would spin.
fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
    )
}

/// Errors about one connection that is already gone: retry at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || matches!(e.raw_os_error(), Some(libc::EPROTO | libc::EPERM))
}

struct AcceptLoop<L> {
    listener: L,
    opts: AcceptOptions,
    slots: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    backoff: Option<Duration>,
    errors_in_episode: u64,
    rejected_unlogged: u64,
    last_reject_log: Option<Instant>,
}

impl<L: Listener> AcceptLoop<L> {
    async fn next(&mut self) -> Conn<L::Io> {
        let labels = ListenerLabels {
            listener: self.opts.name,
        };
        loop {
            let (io, peer) = match self.listener.accept_peer().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    self.on_error(error).await;
                    continue;
                }
            };
            if let Some(backoff) = self.backoff.take() {
                tracing::warn!(
                    listener = self.opts.name,
                    errors = self.errors_in_episode,
                    last_backoff = ?backoff,
                    "accepting connections again"
                );
                self.errors_in_episode = 0;
            }
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                self.reject_over_limit();
                if self.opts.refuse_h2
                    && let Ok(linger) = self.refusing.clone().try_acquire_owned()
                {
                    let limit = self.opts.max_connections;
                    tokio::spawn(async move {
                        refuse_h2(io, limit).await;
                        drop(linger);
                    });
                }
                continue;
            };
            self.opts.metrics.accepted.get_or_create(&labels).inc();
            if let Some(policy) = &self.opts.policy
                && !policy.allows(&peer)
            {
                self.opts.metrics.peer_refused(self.opts.name);
                let (uid, gid, pid) = peer
                    .cred()
                    .map_or((None, None, None), |(u, g, p)| (Some(u), Some(g), p));
                tracing::warn!(
                    listener = self.opts.name,
                    uid,
                    gid,
                    pid,
                    "refusing a peer outside server.allowed_uids/allowed_gids"
                );
            }
            let gauge = self.opts.metrics.open.get_or_create(&labels).clone();
            gauge.inc();
            let slot = Slot {
                peer,
                activity: Arc::new(Activity::default()),
                idle_timeout: self.opts.idle_timeout,
                idle_closed: self.opts.metrics.idle_closed.get_or_create(&labels).clone(),
                client: self.opts.shares.as_ref().map(|s| s.client()),
                retained: Arc::default(),
                _open: OpenGuard(gauge),
                _permit: permit,
            };
            return Conn::new(io, slot);
        }
    }

    fn reject_over_limit(&mut self) {
        let name = self.opts.name;
        self.opts
            .metrics
            .rejected
            .get_or_create(&ReasonLabels {
                listener: name,
                reason: "limit",
            })
            .inc();
        self.rejected_unlogged += 1;
        let now = Instant::now();
        if self
            .last_reject_log
            .is_none_or(|t| now.duration_since(t) >= REJECT_LOG_EVERY)
        {
            tracing::warn!(
                listener = name,
                max_connections = self.opts.max_connections,
                rejected = self.rejected_unlogged,
                "connection limit reached: closing new connections"
            );
            self.last_reject_log = Some(now);
            self.rejected_unlogged = 0;
        }
    }

    async fn on_error(&mut self, error: io::Error) {
        let name = self.opts.name;
        if is_connection_error(&error) {
            tracing::debug!(listener = name, %error, "a connection went away before it was accepted");
            return;
        }
        let resource = is_resource_error(&error);
        self.opts
            .metrics
            .accept_errors
            .get_or_create(&ReasonLabels {
                listener: name,
                reason: if resource { "resource" } else { "other" },
            })
            .inc();
        self.errors_in_episode += 1;
        let delay = match self.backoff {
            None => {
                // Logged once when the trouble starts and once when it ends.
                tracing::warn!(listener = name, %error, "cannot accept connections: backing off");
                BACKOFF_MIN
            }
            Some(d) => (d * 2).min(BACKOFF_MAX),
        };
        self.backoff = Some(delay);
        self.opts
            .metrics
            .backoffs
            .get_or_create(&ListenerLabels { listener: name })
            .inc();
        tokio::time::sleep(delay).await;
    }
}

/// Answers an HTTP/2 connection over the limit: waits for the client's
/// first request (a HEADERS frame after its preface), then sends the server
/// preface (an empty SETTINGS frame) and GOAWAY(last stream 0,
/// ENHANCE_YOUR_CALM) naming the limit, and reads what the client still
/// sends until it closes. Answering the request (rather than the bare
/// connection) makes the client fail that call with RESOURCE_EXHAUSTED
/// instead of a reset. All of it within `REFUSE_LINGER`.
async fn refuse_h2<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO, limit: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(REFUSE_LINGER, async {
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        while !has_request(&buf) && buf.len() < 64 << 10 {
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        io.write_all(&goaway_frames(limit)).await?;
        io.flush().await?;
        while io.read(&mut chunk).await? > 0 {}
        Ok::<(), io::Error>(())
    })
    .await;
}

/// Whether `buf` (what a client sent) holds a HEADERS frame after the
/// 24-byte connection preface.
fn has_request(buf: &[u8]) -> bool {
    const PREFACE: usize = 24;
    const HEADERS: u8 = 0x1;
    let mut at = PREFACE;
    while buf.len() >= at + 9 {
        if buf[at + 3] == HEADERS {
            return true;
        }
        let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
        at += 9 + len;
    }
    false
}

/// An empty SETTINGS frame, then GOAWAY(0, ENHANCE_YOUR_CALM, reason).
fn goaway_frames(limit: usize) -> Vec<u8> {
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let debug =
        format!("sluiced: connection limit reached (server.limits.max_connections = {limit})");
    let mut frames = vec![0, 0, 0, SETTINGS, 0, 0, 0, 0, 0];
    let len = 8 + debug.len() as u32;
    frames.extend_from_slice(&len.to_be_bytes()[1..]);
    frames.extend_from_slice(&[GOAWAY, 0, 0, 0, 0, 0]);
    frames.extend_from_slice(&0u32.to_be_bytes());
    frames.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    frames.extend_from_slice(debug.as_bytes());
    frames
}

/// The accepted connections of `listener`, forever (until dropped, which
/// closes the listener). Never yields an error: tonic's own loop would
/// retry at once.
pub fn incoming<L: Listener>(
    listener: L,
    opts: AcceptOptions,
) -> impl Stream<Item = io::Result<Conn<L::Io>>> + Send + 'static {
    let state = AcceptLoop {
        listener,
        slots: Arc::new(Semaphore::new(opts.max_connections.max(1))),
        refusing: Arc::new(Semaphore::new(REFUSING_MAX)),
        opts,
        backoff: None,
        errors_in_episode: 0,
        rejected_unlogged: 0,
        last_reject_log: None,
    };
    futures::stream::unfold(state, |mut state| async move {
        let conn = state.next().await;
        Some((Ok(conn), state))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_errors_are_told_apart() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOMEM, libc::ENOBUFS] {
            let e = io::Error::from_raw_os_error(errno);
            assert!(is_resource_error(&e), "{e}");
            assert!(!is_connection_error(&e), "{e}");
        }
        for errno in [libc::ECONNABORTED, libc::EINTR, libc::EPROTO] {
            let e = io::Error::from_raw_os_error(errno);
            assert!(!is_resource_error(&e), "{e}");
            assert!(is_connection_error(&e), "{e}");
        }
    }

    #[test]
    fn a_request_is_found_after_the_preface() {
        let mut buf = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        assert!(!has_request(&buf));
        // SETTINGS with one 6-byte setting, then WINDOW_UPDATE.
        buf.extend_from_slice(&[0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        buf.extend_from_slice(&[0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert!(!has_request(&buf));
        buf.extend_from_slice(&[0, 0, 0, 0x1, 0x4, 0, 0, 0, 1]);
        assert!(has_request(&buf));
        let frames = goaway_frames(7);
        assert_eq!(&frames[..9], &[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        let len = u32::from_be_bytes([0, frames[9], frames[10], frames[11]]) as usize;
        assert_eq!(frames.len(), 18 + len);
        assert_eq!(frames[12], 0x7);
        assert_eq!(&frames[22..26], &0xbu32.to_be_bytes());
    }

    #[test]
    fn empty_lists_allow_everyone_and_lists_restrict() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let me = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                a.set_nonblocking(true).unwrap();
                UnixStream::from_std(a).unwrap().peer_cred().unwrap()
            });
        drop(b);
        let peer = Peer::Unix(Some(me));
        assert!(PeerPolicy::new(&[], &[]).allows(&peer));
        assert!(PeerPolicy::new(&[], &[]).allows(&Peer::Unix(None)));
        let other = PeerPolicy::new(&[4_000_000], &[]);
        // Our own uid is always allowed (root, or the daemon's user).
        assert!(other.allows(&peer));
        assert!(
            !other.allows(&Peer::Unix(None)),
            "unknown peers are refused"
        );
        let msg = PeerPolicy::refusal(&peer);
        assert!(msg.contains(&format!("uid {}", me.uid())), "{msg}");
        assert!(!msg.contains("4000000"), "names no other uid: {msg}");
    }
}
