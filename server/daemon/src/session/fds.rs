//! The descriptor socket: hands the arena's segment memfds to clients.
//!
//! Listens next to the gRPC socket (`<socket>.fds`, same mode). Each
//! connection gets the whole segment table with the descriptors attached
//! (see `sluice_proto::fdpass`). The client may then register one memory
//! file for uploads ([`crate::upload_memory`]), which stays registered until
//! it closes the connection; anything else it sends closes it. Who may connect is decided
//! by the socket's permissions and, as on the gRPC socket, by
//! `server.allowed_uids` / `server.allowed_gids`: a peer outside them is
//! closed without a descriptor. Whoever is let in can map the whole arena
//! read-only. Connections are accepted by the shared accept loop
//! ([`crate::listen::incoming`]): `server.limits.max_connections` at once,
//! backoff when out of descriptors.

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use sluice_engine::arena::Arena;
use tokio::net::UnixListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::listen::{AcceptOptions, PeerPolicy, incoming};
use crate::upload_memory::{self, Registry};

/// How long sending the table may block on a client that does not read.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves descriptor requests until `stop`.
pub async fn serve(
    listener: UnixListener,
    arena: Arc<Arena>,
    stop: CancellationToken,
    opts: AcceptOptions,
    policy: Arc<PeerPolicy>,
    uploads: Arc<Registry>,
) {
    let mut sends = JoinSet::new();
    let mut conns = std::pin::pin!(incoming(listener, opts));
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            Some(Ok(conn)) = conns.next() => {
                if !policy.allows(conn.peer()) {
                    // Logged and counted by the accept loop; closed unanswered.
                    continue;
                }
                let (stream, slot) = conn.into_parts();
                let cred = slot.peer().cred();
                if let Some((uid, gid, pid)) = cred {
                    tracing::debug!(uid, gid, pid, "handing out the segment descriptors");
                }
                let arena = arena.clone();
                let (uploads, stop) = (uploads.clone(), stop.clone());
                sends.spawn(async move {
                    // The slot (a place under max_connections) is held
                    // until the descriptors are sent.
                    let _slot = slot;
                    let std = match stream.into_std().and_then(|s| s.set_nonblocking(false).map(|()| s)) {
                        Ok(s) => s,
                        Err(error) => return tracing::warn!(%error, "descriptor socket connection"),
                    };
                    // A client that never reads cannot hold a blocking thread.
                    let _ = std.set_write_timeout(Some(SEND_TIMEOUT));
                    let res = tokio::task::spawn_blocking(move || {
                        let table: Vec<(u32, u64, BorrowedFd<'_>)> =
                            arena.segments().map(|s| (s.id, s.len, s.fd)).collect();
                        sluice_proto::fdpass::send_segments(&std, &table).map(|()| std)
                    })
                    .await;
                    let std = match res {
                        Ok(Ok(std)) => std,
                        Ok(Err(error)) => {
                            return tracing::debug!(%error, "client left before taking the segment descriptors");
                        }
                        Err(_) => return,
                    };
                    let uid = cred.map(|(uid, _, _)| uid);
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = registrations(std, &uploads, uid) => {}
                    }
                });
            }
            Some(_) = sends.join_next(), if !sends.is_empty() => {}
        }
    }
    sends.abort_all();
}

/// After the table: serves the connection's upload registration, if the
/// client asks for one, until the client closes the connection.
async fn registrations(
    std: std::os::unix::net::UnixStream,
    uploads: &Arc<Registry>,
    uid: Option<u32>,
) {
    use sluice_proto::fdpass::{self, Request};
    let Ok(stream) = std
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(std))
    else {
        return;
    };
    let next = || async {
        loop {
            if stream.readable().await.is_err() {
                return Request::Closed;
            }
            match stream.try_io(tokio::io::Interest::READABLE, || {
                fdpass::recv_request(&stream)
            }) {
                Ok(request) => return request,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Request::Closed,
            }
        }
    };
    let Request::Register(fd) = next().await else {
        return;
    };
    let checked = match uid {
        None => Err("the daemon cannot tell which user is asking (no peer credentials)"),
        Some(uid) => upload_memory::check(&fd).map(|()| uid),
    };
    let registered = match checked {
        Ok(uid) => uploads.register(fd, uid),
        Err(reason) => {
            tracing::debug!(uid, reason, "upload memory refused");
            let _ = answer(&stream, |s| fdpass::send_refused(s, reason)).await;
            return;
        }
    };
    let registration = match registered {
        Ok(r) => r,
        Err(error) => {
            tracing::warn!(%error, "registering upload memory");
            let _ = answer(&stream, |s| {
                fdpass::send_refused(s, "the daemon could not register it")
            })
            .await;
            return;
        }
    };
    if answer(&stream, |s| {
        fdpass::send_registered(s, registration.token())
    })
    .await
    .is_err()
    {
        return;
    }
    // Registered until the client closes (or sends anything else).
    let _ = next().await;
    drop(registration);
}

/// Sends a short answer on the non-blocking `stream`.
async fn answer(
    stream: &tokio::net::UnixStream,
    send: impl Fn(&tokio::net::UnixStream) -> std::io::Result<()>,
) -> std::io::Result<()> {
    loop {
        stream.writable().await?;
        match stream.try_io(tokio::io::Interest::WRITABLE, || send(stream)) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            res => return res,
        }
    }
}

/// Binds the descriptor socket (replacing a stale one) with `mode`.
pub fn bind(path: &Path, mode: u32) -> anyhow::Result<UnixListener> {
    crate::listen::bind_unix(path, mode)
        .with_context(|| format!("descriptor socket {}", path.display()))
}
