//! Who is on the other end of a connection, who may use the daemon, and
//! the tower layer that enforces it on every gRPC call.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use tokio::net::unix::UCred;
use tonic::transport::server::{TcpConnectInfo, UdsConnectInfo};

use super::*;

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A Unix-socket peer: its credentials at `connect(2)` time
    /// (`SO_PEERCRED`), `None` if the kernel would not say.
    Unix(Option<UCred>),
    /// A TCP peer.
    Tcp {
        /// Our address.
        local: Option<SocketAddr>,
        /// Theirs.
        remote: SocketAddr,
        /// Set once a TLS handshake completed on the connection.
        tls: Option<TlsPeer>,
    },
}

/// What a completed TLS handshake established about a TCP peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsPeer {
    /// The peer presented a certificate that the configured client CA
    /// verified (the handshake fails otherwise when one is required).
    pub client_cert: bool,
}

impl Peer {
    /// The Unix peer's uid, gid and pid (`-1`/absent as `None`).
    pub fn cred(&self) -> Option<(u32, u32, Option<i32>)> {
        match self {
            Peer::Unix(Some(c)) => Some((c.uid(), c.gid(), c.pid())),
            _ => None,
        }
    }
}

/// Which uids and gids may use the Unix sockets (`server.allowed_uids`,
/// `server.allowed_gids`).
///
/// Both empty: anyone the socket's permissions let in. Otherwise a peer is
/// allowed if its uid is listed, its primary gid (as `SO_PEERCRED` reports
/// it) is listed, or it is root or the daemon's own uid — both of which
/// can read the daemon's memory anyway. Supplementary groups are not
/// consulted: the kernel does not report them for a socket peer, and
/// reading them from `/proc/<pid>` races with the peer. A peer whose
/// credentials are unknown is refused.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    uids: Vec<u32>,
    gids: Vec<u32>,
    own_uid: u32,
}

impl PeerPolicy {
    /// The policy for these lists.
    pub fn new(uids: &[u32], gids: &[u32]) -> Self {
        // SAFETY: geteuid(2) cannot fail and touches no memory of ours.
        let own_uid = unsafe { libc::geteuid() };
        PeerPolicy {
            uids: uids.to_vec(),
            gids: gids.to_vec(),
            own_uid,
        }
    }

    /// Whether any restriction is configured.
    pub fn restricts(&self) -> bool {
        !self.uids.is_empty() || !self.gids.is_empty()
    }

    /// Whether `peer` may use the daemon. TCP peers are not judged here.
    pub fn allows(&self, peer: &Peer) -> bool {
        if !self.restricts() {
            return true;
        }
        match peer {
            Peer::Tcp { .. } => true,
            Peer::Unix(None) => false,
            Peer::Unix(Some(c)) => {
                c.uid() == 0
                    || c.uid() == self.own_uid
                    || self.uids.contains(&c.uid())
                    || self.gids.contains(&c.gid())
            }
        }
    }

    /// The PERMISSION_DENIED message for a refused peer: names its own uid
    /// and gid, never the allowed ones.
    pub fn refusal(peer: &Peer) -> String {
        match peer.cred() {
            Some((uid, gid, _)) => format!(
                "uid {uid} (gid {gid}) may not use this daemon: not in server.allowed_uids or server.allowed_gids"
            ),
            None => "the peer's credentials are unknown: refused while server.allowed_uids or server.allowed_gids is set".to_owned(),
        }
    }
}

/// Tower layer in front of every gRPC service: refuses peers outside the
/// policy with PERMISSION_DENIED, holds a [`CallGuard`] for the length of
/// each call, and puts [`Peer`] and tonic's `UdsConnectInfo` /
/// `TcpConnectInfo` into the request's extensions.
#[derive(Debug, Clone)]
pub struct PeerGuard {
    policy: Arc<PeerPolicy>,
}

impl PeerGuard {
    /// A guard enforcing `policy`.
    pub fn new(policy: Arc<PeerPolicy>) -> Self {
        PeerGuard { policy }
    }
}

impl<S> tower::Layer<S> for PeerGuard {
    type Service = PeerGuardService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PeerGuardService {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service of [`PeerGuard`].
#[derive(Debug, Clone)]
pub struct PeerGuardService<S> {
    inner: S,
    policy: Arc<PeerPolicy>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> tower::Service<http::Request<tonic::body::Body>> for PeerGuardService<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let info = req.extensions_mut().remove::<ConnInfo>();
        let guard = info.map(|info| {
            let ext = req.extensions_mut();
            match &info.peer {
                Peer::Unix(cred) => {
                    ext.insert(UdsConnectInfo {
                        peer_addr: None,
                        peer_cred: *cred,
                    });
                }
                Peer::Tcp { local, remote, .. } => {
                    ext.insert(TcpConnectInfo {
                        local_addr: *local,
                        remote_addr: Some(*remote),
                    });
                }
            }
            let allowed = self.policy.allows(&info.peer);
            let message = (!allowed).then(|| PeerPolicy::refusal(&info.peer));
            ext.insert(info.peer);
            if let Some(client) = info.client {
                ext.insert(client);
            }
            ext.insert(info.retained);
            (info.activity.begin(), message)
        });
        let (guard, refusal) = match guard {
            Some((g, m)) => (Some(g), m),
            None => (None, None),
        };
        if let Some(message) = refusal {
            let response = tonic::Status::permission_denied(message).into_http();
            return Box::pin(async move {
                drop(guard);
                Ok(response)
            });
        }
        // The service that was made ready is the one called; a clone takes
        // its place for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(req).await?;
            Ok(match guard {
                Some(guard) => response.map(|body| tonic::body::Body::new(Guarded { body, guard })),
                None => response,
            })
        })
    }
}

/// A response body that keeps its call counted until it is done.
struct Guarded {
    body: tonic::body::Body,
    guard: CallGuard,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        let _ = &self.guard;
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
