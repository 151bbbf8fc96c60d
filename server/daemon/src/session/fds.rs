//! The descriptor socket: hands the arena's segment memfds to clients.
//!
//! Listens next to the gRPC socket (`<socket>.fds`, same mode). Each
//! connection gets the whole segment table with the descriptors attached
//! (see `sluice_proto::fdpass`), then is closed. Who may connect is decided
//! by the socket's permissions, exactly as for the gRPC socket: whoever can
//! open a session can map the arena read-only.

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use sluice_engine::arena::Arena;
use tokio::net::UnixListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Serves descriptor requests until `stop`.
pub async fn serve(listener: UnixListener, arena: Arc<Arena>, stop: CancellationToken) {
    let mut sends = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let arena = arena.clone();
                sends.spawn(async move {
                    let std = match stream.into_std().and_then(|s| s.set_nonblocking(false).map(|()| s)) {
                        Ok(s) => s,
                        Err(error) => return tracing::warn!(%error, "descriptor socket connection"),
                    };
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
