//! The `sluice.v1.Sluice` gRPC service.
//!
//! Handlers parse and check the request, call the engine or a backend, and
//! turn the answer into messages. A client that goes away drops its
//! response stream, which cancels the fetches behind it (ReadMany's items
//! run as tasks owned by the stream, so that they finish — and give back
//! their request slots — whether or not the client keeps reading) and frees
//! its memory; a client that stops reading has its stream ended after
//! `read.stall_timeout` ([`crate::stall`]). Every read is charged to the
//! connection's [`ClientShare`].

pub(crate) mod client_ops;
pub(crate) mod convert;
mod meta;
mod read;
mod stats;
pub mod status;
mod warm;
mod write;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use sluice_engine::{ClientShare, Engine};
use sluice_proto::v1;
use sluice_proto::v1::sluice_server::Sluice;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::config::Config;
use crate::telemetry::metrics::Metrics;

/// A stream of response messages.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The service; cheap to clone.
#[derive(Debug, Clone)]
pub struct SluiceService {
    engine: Arc<Engine>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    /// Cancelled when shutdown begins: sessions stop taking fetches, finish
    /// the ones in flight and end.
    draining: CancellationToken,
    /// Leases of sessions ended by shutdown, held until the daemon exits.
    retired: crate::session::Retired,
    /// Writes in flight, cancelled and awaited when the grace period ends.
    uploads: crate::uploads::Uploads,
    /// Memory files registered for `Upload` on the descriptor socket.
    upload_memory: Arc<crate::upload_memory::Registry>,
    /// Live sessions, for `Stats`.
    sessions: crate::session::stats::Sessions,
    /// The operation log, for client requests (`oplog.client_requests`).
    oplog: Option<sluice_storage::oplog::OpLog>,
}

impl SluiceService {
    /// A service reading through `engine`; `draining` is cancelled when
    /// shutdown begins.
    pub fn new(
        engine: Arc<Engine>,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        draining: CancellationToken,
    ) -> Self {
        SluiceService {
            engine,
            config,
            metrics,
            draining,
            retired: Default::default(),
            uploads: Default::default(),
            upload_memory: Default::default(),
            sessions: Default::default(),
            oplog: None,
        }
    }

    /// Records client requests in `oplog` when it is set to
    /// (`oplog.client_requests`; see [`client_ops`]).
    pub fn with_oplog(mut self, oplog: sluice_storage::oplog::OpLog) -> Self {
        self.oplog = Some(oplog);
        self
    }

    /// The recorder of the requests of the peer `req` came from.
    fn ops_of<T>(&self, req: &Request<T>) -> client_ops::ClientOps {
        let uid = req
            .extensions()
            .get::<crate::listen::Peer>()
            .and_then(|p| p.cred())
            .map(|(uid, _, _)| uid);
        client_ops::ClientOps::new(self.oplog.as_ref(), uid)
    }

    /// Whether `uid` may use the admin calls: root, the daemon's own user,
    /// or one of `server.admin_uids`.
    fn is_admin(&self, uid: u32) -> bool {
        // SAFETY: geteuid(2) cannot fail and touches no memory of ours.
        let own = unsafe { libc::geteuid() };
        uid == 0 || uid == own || self.config.server.admin_uids.contains(&uid)
    }

    /// The registry of upload memory files, which the descriptor socket
    /// fills.
    pub fn upload_memory(&self) -> &Arc<crate::upload_memory::Registry> {
        &self.upload_memory
    }

    /// The share of the connection `req` came on (a fresh one for a call
    /// that did not come through a listener).
    fn client_of<T>(&self, req: &Request<T>) -> Arc<ClientShare> {
        req.extensions()
            .get::<Arc<ClientShare>>()
            .cloned()
            .unwrap_or_else(|| self.engine.shares().client())
    }

    /// The writes in flight, for the drain.
    pub(crate) fn uploads(&self) -> crate::uploads::Uploads {
        self.uploads.clone()
    }
}

#[tonic::async_trait]
impl Sluice for SluiceService {
    async fn stat(
        &self,
        req: Request<v1::StatRequest>,
    ) -> Result<Response<v1::StatResponse>, Status> {
        meta::stat(self, req.into_inner()).await.map(Response::new)
    }

    async fn list(
        &self,
        req: Request<v1::ListRequest>,
    ) -> Result<Response<v1::ListResponse>, Status> {
        meta::list(self, req.into_inner()).await.map(Response::new)
    }

    type ReadStream = ResponseStream<v1::ReadResponse>;

    async fn read(
        &self,
        req: Request<v1::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let (client, ops) = (self.client_of(&req), self.ops_of(&req));
        read::read(self, client, ops, req.into_inner())
            .await
            .map(Response::new)
    }

    type ReadManyStream = ResponseStream<v1::ReadManyResponse>;

    async fn read_many(
        &self,
        req: Request<v1::ReadManyRequest>,
    ) -> Result<Response<Self::ReadManyStream>, Status> {
        let (client, ops) = (self.client_of(&req), self.ops_of(&req));
        read::read_many(self, client, ops, req.into_inner()).map(Response::new)
    }

    async fn write(
        &self,
        req: Request<Streaming<v1::WriteRequest>>,
    ) -> Result<Response<v1::WriteResponse>, Status> {
        let client = self.client_of(&req);
        write::write(self, client, req.into_inner())
            .await
            .map(Response::new)
    }

    type UploadStream = ResponseStream<v1::UploadResponse>;

    async fn upload(
        &self,
        req: Request<Streaming<v1::WriteRequest>>,
    ) -> Result<Response<Self::UploadStream>, Status> {
        let client = self.client_of(&req);
        let uid = req
            .extensions()
            .get::<crate::listen::Peer>()
            .and_then(|p| p.cred())
            .map(|(uid, _, _)| uid);
        Ok(Response::new(write::upload(
            self.clone(),
            client,
            uid,
            req.into_inner(),
        )))
    }

    type WarmStream = ResponseStream<v1::WarmProgress>;

    async fn warm(
        &self,
        req: Request<v1::WarmRequest>,
    ) -> Result<Response<Self::WarmStream>, Status> {
        let client = self.client_of(&req);
        warm::warm(self, client, req.into_inner()).map(Response::new)
    }

    async fn evict(
        &self,
        req: Request<v1::EvictRequest>,
    ) -> Result<Response<v1::EvictResponse>, Status> {
        let peer = req.extensions().get::<crate::listen::Peer>().cloned();
        warm::evict(self, peer.as_ref(), req.into_inner()).map(Response::new)
    }

    async fn stats(
        &self,
        req: Request<v1::StatsRequest>,
    ) -> Result<Response<v1::StatsResponse>, Status> {
        let peer = req.extensions().get::<crate::listen::Peer>().cloned();
        Ok(Response::new(stats::stats(self, peer.as_ref())))
    }

    type SessionStream = ResponseStream<v1::SessionResponse>;

    async fn session(
        &self,
        req: Request<Streaming<v1::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (engine, config, metrics) = (
            self.engine.clone(),
            self.config.clone(),
            self.metrics.clone(),
        );
        let (draining, retired) = (self.draining.clone(), self.retired.clone());
        let peer = req.extensions().get::<crate::listen::Peer>().cloned();
        let client = self.client_of(&req);
        let ops = self.ops_of(&req);
        let connection = req
            .extensions()
            .get::<Arc<crate::listen::Retained>>()
            .cloned();
        crate::session::open(
            crate::session::Deps {
                engine,
                config,
                metrics,
                draining,
                retired,
                client,
                connection,
                sessions: self.sessions.clone(),
                ops,
            },
            peer,
            req.into_inner(),
        )
        .await
        .map(Response::new)
    }

    async fn delete(
        &self,
        req: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        meta::delete(self, req.into_inner())
            .await
            .map(Response::new)
    }
}
