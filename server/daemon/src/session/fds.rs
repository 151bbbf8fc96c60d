//! The descriptor socket: hands the arena's segment memfds to clients.
//!
//! Listens next to the gRPC socket (`<socket>.fds`, same mode). Each
//! connection gets the whole segment table with the descriptors attached
//! (see `sluice_proto::fdpass`), then is closed. Who may connect is decided
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

/// How long sending the table may block on a client that does not read.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves descriptor requests until `stop`.
pub async fn serve(
    listener: UnixListener,
    arena: Arc<Arena>,
    stop: CancellationToken,
    opts: AcceptOptions,
    policy: Arc<PeerPolicy>,
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
                if let Some((uid, gid, pid)) = slot.peer().cred() {
                    tracing::debug!(uid, gid, pid, "handing out the segment descriptors");
                }
                let arena = arena.clone();
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
                        sluice_proto::fdpass::send_segments(&std, &table)
                    })
                    .await;
                    if let Ok(Err(error)) = res {
                        tracing::debug!(%error, "client left before taking the segment descriptors");
                    }
                });
            }
            Some(_) = sends.join_next(), if !sends.is_empty() => {}
        }
    }
    sends.abort_all();
}

/// Binds the descriptor socket (replacing a stale one) with `mode`.
pub fn bind(path: &Path, mode: u32) -> anyhow::Result<UnixListener> {
    crate::listen::bind_unix(path, mode)
        .with_context(|| format!("descriptor socket {}", path.display()))
}
