//! Binding the listeners and serving until shutdown.
//!
//! [`Daemon::bind`] builds everything and binds every listener (port 0 is
//! fine; the bound addresses are reported), then [`Daemon::serve`] runs
//! until the `shutdown` future completes: `/ready` turns 503 and the health
//! service reports NOT_SERVING, listeners stop accepting, in-flight calls get
//! `server.grace_period` to finish, then whatever is left is cancelled.
//! Every task spawned here is owned by a `JoinSet` that is drained or aborted
//! before `serve` returns.
//!
//! The TCP listener, when there is one, accepts through [`crate::tls`]
//! (unless `server.tcp_insecure`), and every request on it passes the
//! [`crate::auth`] layer first; requests on the Unix socket pass that layer
//! unchecked. Every request passes the RPC telemetry layer
//! ([`crate::telemetry::rpc`]) before all of these. A SIGHUP reloads what
//! can change safely ([`crate::reload`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use sluice_engine::Engine;
use sluice_proto::v1::sluice_server::SluiceServer;
use sluice_storage::Backends;
use sluice_storage::oplog::OpLog;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::api::SluiceService;
use crate::auth::{AuthLayer, TcpAuth};
use crate::config::Config;
use crate::listen::{AcceptOptions, ListenerMetrics, PeerGuard, PeerPolicy, incoming};
use crate::telemetry::http::{HttpState, router};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::rpc::RpcLayer;
use crate::tls::TcpSecurity;

/// A daemon with its listeners bound, not yet serving.
#[derive(Debug)]
pub struct Daemon {
    config: Arc<Config>,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    listener_metrics: ListenerMetrics,
    unix: UnixListener,
    socket: PathBuf,
    fds: Option<(UnixListener, PathBuf)>,
    tcp: Option<TcpListener>,
    tcp_security: Option<Arc<TcpSecurity>>,
    http: Option<TcpListener>,
    /// The S3-compatible facade, when `[facade]` sets a listener.
    facade: Option<crate::facade::Facade>,
    /// The operation log (off unless `oplog.enabled`); a SIGHUP turns it
    /// on and off with [`OpLog::set_enabled`].
    pub(crate) oplog: OpLog,
    reload: Option<crate::reload::Reload>,
}

/// Where a bound daemon listens.
#[derive(Debug, Clone)]
pub struct Addresses {
    /// The gRPC Unix socket.
    pub socket: PathBuf,
    /// The gRPC TCP listener, if configured.
    pub tcp: Option<SocketAddr>,
    /// The metrics/health HTTP listener, if configured.
    pub http: Option<SocketAddr>,
    /// The S3-compatible facade's listeners, if configured.
    pub facade: crate::facade::FacadeAddresses,
}

impl Daemon {
    /// Builds backends, engine and metrics, and binds every listener.
    pub async fn bind(mut config: Config) -> anyhow::Result<Daemon> {
        let oplog = OpLog::new(&config.oplog).with_context(|| {
            let path = config.oplog.path.display();
            format!("cannot open the operation log {path}")
        })?;
        let backends = Backends::new(&config.storage)
            .await
            .context("cannot set up storage backends")?
            .with_oplog(oplog.clone());
        let mut metrics = Metrics::new();
        backends.register_metrics(&mut metrics.registry);
        oplog.register_metrics(&mut metrics.registry);
        let engine = Engine::new(
            backends,
            config.engine.clone(),
            config.cache.clone(),
            config.prefetch.clone(),
            metrics.engine.clone(),
        )
        .context("cannot create the shared-memory arena")?;
        let engine = Arc::new(engine);
        if config.session.shared_memory && !engine.arena().clients_read_only() {
            // Handing out a segment a client could write would let it change
            // the bytes every other client reads: stream instead.
            tracing::warn!(
                "shared-memory delivery disabled: this kernel cannot seal the arena against \
                 writes by clients (needs F_SEAL_FUTURE_WRITE, Linux 5.1); sessions get streams"
            );
            config.session.shared_memory = false;
        }
        metrics
            .registry
            .register("build", "sluiced version", build_info());
        let listener_metrics = ListenerMetrics::register(&mut metrics.registry);
        let facade =
            crate::facade::Facade::bind(&config, engine.clone(), &mut metrics.registry).await?;
        // The descriptor socket first: once the gRPC socket accepts, so
        // does it. A client that reconnects while the daemon restarts would
        // otherwise find the gRPC socket but not yet the descriptor socket,
        // and open its new session without shared memory.
        let fds = if config.session.shared_memory {
            let path = config.fd_socket();
            Some((
                crate::session::fds::bind(&path, config.socket_mode()?)?,
                path,
            ))
        } else {
            None
        };
        let unix = crate::listen::bind_unix(&config.server.socket, config.socket_mode()?)?;
        let tcp_security = TcpSecurity::for_server(&config.server)?;
        let tcp = match config.server.tcp {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on tcp {addr}"))?,
            ),
            None => None,
        };
        let http = match config.server.http {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on http {addr}"))?,
            ),
            None => None,
        };
        Ok(Daemon {
            socket: config.server.socket.clone(),
            fds,
            config: Arc::new(config),
            engine,
            metrics: Arc::new(metrics),
            listener_metrics,
            unix,
            tcp,
            tcp_security,
            http,
            facade,
            oplog,
            reload: None,
        })
    }

    /// What a SIGHUP reloads besides the TLS material: the configuration,
    /// read again by `reload.loader`, and the log level (see
    /// [`crate::reload`]).
    pub fn with_reload(mut self, reload: crate::reload::Reload) -> Self {
        self.reload = Some(reload);
        self
    }

    /// The bound addresses.
    pub fn addresses(&self) -> Addresses {
        Addresses {
            socket: self.socket.clone(),
            tcp: self.tcp.as_ref().and_then(|l| l.local_addr().ok()),
            http: self.http.as_ref().and_then(|l| l.local_addr().ok()),
            facade: self
                .facade
                .as_ref()
                .map(|f| f.addresses())
                .unwrap_or_default(),
        }
    }

    /// Serves until `shutdown` completes, then drains (see the module docs).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let addrs = self.addresses();
        // Stopped when `serve` returns.
        let budget = self.engine.arena().capacity();
        let limit = crate::prefault::cgroup_memory_limit();
        if let Some(limit) = limit.filter(|&l| l < budget) {
            tracing::warn!(
                budget,
                cgroup_limit = limit,
                "cache.memory_budget exceeds this process's memory cgroup limit: the daemon will                  be OOM-killed once the cache fills it (lower the budget or raise the limit);                  the arena is not prefaulted"
            );
        }
        let _prefetcher = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            self.engine.clone().run_prefetcher(),
        ));
        let _prefault = if self.config.cache.prefault && limit.is_none_or(|l| l >= budget) {
            let gauge = self.metrics.engine.memory.prefaulted.clone();
            crate::prefault::start(self.engine.arena().clone(), gauge)
                .map_err(|error| tracing::warn!(%error, "cannot start the arena prefault thread"))
                .ok()
        } else {
            None
        };
        let stop = CancellationToken::new();
        let service = SluiceService::new(
            self.engine.clone(),
            self.config.clone(),
            self.metrics.clone(),
            stop.clone(),
        )
        .with_oplog(self.oplog.clone());
        let uploads = service.uploads();
        let upload_memory = service.upload_memory().clone();
        let grpc = SluiceServer::new(service)
            .max_decoding_message_size(sluice_proto::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(sluice_proto::MAX_MESSAGE_SIZE);
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<SluiceServer<SluiceService>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sluice_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("cannot build the reflection service")?;
        let auth = match (&self.tcp, &self.tcp_security) {
            (None, _) => TcpAuth::Closed,
            (Some(_), None) => TcpAuth::Open,
            (Some(_), Some(security)) => security.auth(),
        };
        let server = &self.config.server;
        let limits = &server.limits;
        let policy = Arc::new(PeerPolicy::new(&server.allowed_uids, &server.allowed_gids));
        if policy.restricts() {
            tracing::info!(
                uids = ?server.allowed_uids,
                gids = ?server.allowed_gids,
                "Unix-socket peers limited to these uids/gids (and root and the daemon's own uid)"
            );
        }
        let accept = |name: &'static str, idle: bool| AcceptOptions {
            name,
            max_connections: limits.max_connections,
            idle_timeout: (idle && !limits.idle_timeout.is_zero()).then_some(limits.idle_timeout),
            policy: Some(policy.clone()),
            metrics: self.listener_metrics.clone(),
            refuse_h2: name != "fds",
            shares: (name != "fds").then(|| self.engine.shares().clone()),
        };
        let keepalive = (!limits.keepalive_interval.is_zero()).then_some(limits.keepalive_interval);
        // The RPC telemetry layer is outermost, so that refused calls are
        // counted too; the peer guard comes next: it tells the auth layer
        // which listener a request came through.
        let grpc_router = Server::builder()
            .max_concurrent_streams(limits.max_concurrent_streams)
            .http2_keepalive_interval(keepalive)
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            .layer(RpcLayer::new(
                self.metrics.rpc.clone(),
                self.config.traces.enabled,
            ))
            .layer(PeerGuard::new(policy.clone()))
            .layer(AuthLayer::new(auth))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(grpc);

        let ready = Arc::new(AtomicBool::new(true));
        let mut tasks = JoinSet::new();
        let uds = incoming(self.unix, accept("unix", true));
        tasks.spawn(
            grpc_router
                .clone()
                .serve_with_incoming_shutdown(uds, stop.clone().cancelled_owned()),
        );
        match (self.tcp, &self.tcp_security) {
            (Some(tcp), Some(security)) => {
                // Over the connection limit a TLS client cannot be told why
                // in plaintext HTTP/2: it is closed.
                let conns = incoming(
                    tcp,
                    AcceptOptions {
                        refuse_h2: false,
                        ..accept("tcp", true)
                    },
                );
                let tls = crate::tls::incoming(Box::pin(conns), Arc::clone(security));
                tasks.spawn(
                    grpc_router.serve_with_incoming_shutdown(tls, stop.clone().cancelled_owned()),
                );
            }
            (Some(tcp), None) => {
                let conns = incoming(tcp, accept("tcp", true));
                tasks.spawn(
                    grpc_router.serve_with_incoming_shutdown(conns, stop.clone().cancelled_owned()),
                );
            }
            (None, _) => {}
        }
        // The facade drains with the gRPC listeners (see `crate::facade`).
        let mut facade = self.facade.map(|f| {
            let serving = f.serve(stop.clone(), accept("facade", false));
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(serving))
        });
        let mut side_tasks = JoinSet::new();
        let live = crate::reload::Live {
            reload: self.reload.unwrap_or(crate::reload::Reload {
                loader: None,
                logging: None,
            }),
            current: (*self.config).clone(),
            security: self.tcp_security.clone(),
            oplog: Some({
                let oplog = self.oplog.clone();
                Arc::new(move |on| oplog.set_enabled(on))
            }),
        };
        side_tasks.spawn(async move {
            live.run().await;
            Ok::<(), std::io::Error>(())
        });
        let fd_socket = self.fds.as_ref().map(|(_, p)| p.clone());
        if let Some((listener, _)) = self.fds {
            let arena = self.engine.arena().clone();
            let stop = stop.clone();
            let (opts, policy) = (accept("fds", false), policy.clone());
            let uploads = upload_memory;
            side_tasks.spawn(async move {
                crate::session::fds::serve(listener, arena, stop, opts, policy, uploads).await;
                Ok::<(), std::io::Error>(())
            });
        }
        if let Some(http) = self.http {
            let state = HttpState {
                metrics: self.metrics.clone(),
                engine: self.engine.clone(),
                ready: ready.clone(),
            };
            side_tasks.spawn(async move { axum::serve(http, router(state)).await });
        }
        tracing::info!(
            socket = %addrs.socket.display(),
            tcp = ?addrs.tcp,
            http = ?addrs.http,
            facade = ?addrs.facade.tcp,
            facade_socket = ?addrs.facade.socket,
            "sluiced serving"
        );

        tokio::select! {
            () = shutdown => {}
            Some(res) = tasks.join_next() => {
                // A listener failed on its own.
                stop.cancel();
                tasks.abort_all();
                let _ = std::fs::remove_file(&addrs.socket);
                if let Some(p) = &fd_socket {
                    let _ = std::fs::remove_file(p);
                }
                res.context("grpc server task panicked")?.context("grpc server failed")?;
                anyhow::bail!("grpc server stopped unexpectedly");
            }
        }
        tracing::info!(grace = ?self.config.server.grace_period, "shutting down: draining in-flight calls");
        ready.store(false, Ordering::SeqCst);
        health
            .set_not_serving::<SluiceServer<SluiceService>>()
            .await;
        // The overall status ("") too: probes that name no service.
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        stop.cancel();
        let drained = tokio::time::timeout(self.config.server.grace_period, async {
            while let Some(res) = tasks.join_next().await {
                if let Ok(Err(error)) = res {
                    tracing::warn!(%error, "grpc server ended with an error");
                }
            }
            if let Some(facade) = facade.as_mut() {
                let _ = facade.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("grace period over: cancelling the calls still in flight");
            let left = uploads.cancel().await;
            if left > 0 {
                tracing::warn!(
                    writes = left,
                    "writes did not abort their uploads in time; pending multipart uploads may remain"
                );
            }
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        side_tasks.abort_all();
        while side_tasks.join_next().await.is_some() {}
        let _ = std::fs::remove_file(&addrs.socket);
        if let Some(p) = fd_socket {
            let _ = std::fs::remove_file(p);
        }
        // Every operation recorded is in the file before `serve` returns.
        let oplog = self.oplog.clone();
        let _ = tokio::task::spawn_blocking(move || oplog.close()).await;
        tracing::info!("sluiced stopped");
        Ok(())
    }
}

fn build_info() -> prometheus_client::metrics::info::Info<Vec<(String, String)>> {
    prometheus_client::metrics::info::Info::new(vec![(
        "version".to_owned(),
        env!("CARGO_PKG_VERSION").to_owned(),
    )])
}
