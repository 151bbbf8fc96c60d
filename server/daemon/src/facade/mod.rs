//! The S3-compatible HTTP facade: unmodified S3 clients (boto3, the aws
//! cli, s3fs, obstore, s3torchconnector) read through the node cache.
//!
//! # Shape
//!
//! `[facade]` ([`config`]) names facade buckets, each a backend URI prefix:
//! `s3://train/a/b` through the facade is `<prefix of train>a/b`, read with
//! the same [`Engine`] and cache as the gRPC `Read`. The facade listens on
//! loopback TCP or a Unix socket (any other address only with TLS,
//! [`tls`]), speaks HTTP/1.1 with path-style addressing
//! (`http://host:port/bucket/key`), and serves:
//!
//! - GetObject (ranges, conditional headers), HeadObject, ListObjectsV2
//!   (and V1), ListBuckets, HeadBucket, GetBucketLocation ([`routes`]);
//! - with `facade.writes`: PutObject, multipart uploads, DeleteObject and
//!   DeleteObjects.
//!
//! # Trust
//!
//! Every request is signed with SigV4 ([`sigv4`]) by an access key the
//! operator made for the facade; a key may be limited to some buckets.
//! Unsigned requests are served only with `facade.anonymous` on a local
//! listener. A key never leaves its bucket's prefix: dot segments are
//! refused for every backend ([`routes::object_uri`]).
//!
//! # Fairness and memory
//!
//! Each connection is a client of its own, like a gRPC connection: an
//! [`sluice_engine::ClientShare`] of memory and request slots taken by the
//! listener ([`crate::listen::incoming`], which also applies
//! `server.limits.max_connections`). Bodies stream: a GET answers with the
//! cache entry's slices or the engine's parts as they come, never a copy;
//! a client that stops reading for `read.stall_timeout` has its response
//! ended. Uploaded bodies are held in arena extents reserved from the
//! budget, at most `facade.max_part_size` per request.
//!
//! # Shutdown
//!
//! When the daemon stops, the facade stops accepting, lets requests in
//! flight finish within `server.grace_period` (HTTP keep-alive connections
//! are closed after their current response), and aborts the multipart
//! uploads still open.

mod body;
pub mod chunked;
pub mod config;
pub mod error;
mod metrics;
pub mod routes;
pub mod sigv4;
pub mod time;
mod tls;
pub mod xml;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::registry::Registry;
use sluice_engine::Engine;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

pub use config::FacadeConfig;

/// What only reading the facade's files checks: the keys file parses, and
/// the TLS certificate and key load and match (for `check-config`).
pub fn check_files(config: &FacadeConfig) -> Result<(), crate::config::ConfigError> {
    if !config.enabled() {
        return Ok(());
    }
    config.load_keys()?;
    if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
        tls::FacadeTls::load(cert, key)?;
    }
    Ok(())
}

use crate::config::Config;
use crate::listen::{AcceptOptions, incoming};

/// How long a client may take to send a request's headers: a connection
/// that sends nothing gives its slot back after this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// The facade with its listeners bound, not yet serving.
#[derive(Debug)]
pub struct Facade {
    tcp: Option<TcpListener>,
    unix: Option<(UnixListener, PathBuf)>,
    tls: Option<Arc<tls::FacadeTls>>,
    state: Arc<routes::State>,
}

/// Where the facade listens.
#[derive(Debug, Clone, Default)]
pub struct FacadeAddresses {
    /// The TCP address, if any.
    pub tcp: Option<SocketAddr>,
    /// The Unix socket, if any.
    pub socket: Option<PathBuf>,
}

impl Facade {
    /// Binds the facade's listeners when `[facade]` configures any; reads
    /// the keys file and the TLS files, and registers the metrics.
    pub async fn bind(
        config: &Config,
        engine: Arc<Engine>,
        registry: &mut Registry,
    ) -> anyhow::Result<Option<Facade>> {
        let fc = &config.facade;
        if !fc.enabled() {
            return Ok(None);
        }
        let tls = match (&fc.tls.cert, &fc.tls.key) {
            (Some(cert), Some(key)) => Some(Arc::new(tls::FacadeTls::load(cert, key)?)),
            _ => None,
        };
        let state = routes::State::new(config, engine, registry)?;
        let tcp = match fc.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on facade.listen {addr}"))?,
            ),
            None => None,
        };
        let unix = match &fc.socket {
            Some(path) => Some((
                crate::listen::bind_unix(path, config.socket_mode()?)?,
                path.clone(),
            )),
            None => None,
        };
        if fc.anonymous {
            tracing::warn!(
                "facade.anonymous = true: unsigned S3 requests on the local facade listeners are served"
            );
        }
        Ok(Some(Facade {
            tcp,
            unix,
            tls,
            state: Arc::new(state),
        }))
    }

    /// The bound addresses.
    pub fn addresses(&self) -> FacadeAddresses {
        FacadeAddresses {
            tcp: self.tcp.as_ref().and_then(|l| l.local_addr().ok()),
            socket: self.unix.as_ref().map(|(_, p)| p.clone()),
        }
    }

    /// Serves until `stop` is cancelled, then lets the requests in flight
    /// finish (the caller bounds how long) and aborts open uploads.
    pub async fn serve(self, stop: CancellationToken, accept: AcceptOptions) {
        let graceful = GracefulShutdown::new();
        let opts = |name| AcceptOptions {
            name,
            idle_timeout: None,
            refuse_h2: false,
            ..accept.clone()
        };
        let reload = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(reload_on_hangup(
            self.state.clone(),
            self.tls.clone(),
        )));
        let expiry = {
            let state = self.state.clone();
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                state.expire_uploads().await;
            }))
        };
        let mut tcp = self.tcp.map(|l| incoming(l, opts("facade_tcp")).boxed());
        let socket = self.unix.as_ref().map(|(_, p)| p.clone());
        let mut unix = self
            .unix
            .map(|(l, _)| incoming(l, opts("facade_unix")).boxed());
        // Peers outside server.allowed_uids/allowed_gids (the accept loop
        // logged and counted them) are closed at once.
        let allowed =
            |peer: &crate::listen::Peer| accept.policy.as_ref().is_none_or(|p| p.allows(peer));
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                Some(Ok(conn)) = next(&mut tcp) => {
                    if !allowed(conn.peer()) {
                        continue;
                    }
                    let info = conn.connect_info();
                    match &self.tls {
                        Some(tls) => {
                            let tls = tls.clone();
                            let (state, graceful) = (self.state.clone(), graceful.watcher());
                            tokio::spawn(async move {
                                if let Some(io) = tls.accept(conn).await {
                                    serve_conn(io, state, info, graceful).await;
                                }
                            });
                        }
                        None => {
                            tokio::spawn(serve_conn(conn, self.state.clone(), info, graceful.watcher()));
                        }
                    }
                }
                Some(Ok(conn)) = next(&mut unix) => {
                    if !allowed(conn.peer()) {
                        continue;
                    }
                    let info = conn.connect_info();
                    tokio::spawn(serve_conn(conn, self.state.clone(), info, graceful.watcher()));
                }
            }
        }
        drop((tcp, unix, reload, expiry));
        graceful.shutdown().await;
        self.state.abort_uploads().await;
        if let Some(path) = socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn next<S: futures::Stream + Unpin>(s: &mut Option<S>) -> Option<S::Item> {
    match s {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Serves one connection's requests until it closes or shutdown asks it
/// to.
async fn serve_conn<IO>(
    io: IO,
    state: Arc<routes::State>,
    info: crate::listen::ConnInfo,
    graceful: hyper_util::server::graceful::Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = info
        .client
        .unwrap_or_else(|| state.engine.shares().client());
    // Anonymous requests are served only on a Unix socket or loopback.
    let local = match &info.peer {
        crate::listen::Peer::Unix(_) => true,
        crate::listen::Peer::Tcp { local, .. } => local.is_some_and(|a| a.ip().is_loopback()),
    };
    let service = service_fn(move |req| {
        let (state, client) = (state.clone(), client.clone());
        async move { Ok::<_, Infallible>(routes::handle(&state, client, local, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    if let Err(error) = graceful.watch(conn).await {
        tracing::debug!(%error, "facade connection ended with an error");
    }
}

/// Reloads the keys file and the TLS files on SIGHUP.
async fn reload_on_hangup(state: Arc<routes::State>, tls: Option<Arc<tls::FacadeTls>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        return;
    };
    while hangups.recv().await.is_some() {
        match state.reload_keys() {
            Ok(n) => tracing::info!(keys = n, "SIGHUP: facade access keys reloaded"),
            Err(error) => {
                tracing::error!(%error, "SIGHUP: facade keys did not reload; the keys loaded before stay in use")
            }
        }
        if let Some(tls) = &tls {
            match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: facade TLS certificate reloaded"),
                Err(error) => {
                    tracing::error!(%error, "SIGHUP: facade TLS reload failed; the certificate loaded before stays in use")
                }
            }
        }
    }
}
