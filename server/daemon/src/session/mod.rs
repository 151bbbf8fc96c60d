//! The Session stream: pipelined fetches delivered as leased shared-memory
//! extents (or as chunks), for one client process.
//!
//! One driver task per session reads the client's messages: fetches start
//! as tasks of the session's `JoinSet` (at most `max_outstanding` at once;
//! beyond that the driver stops reading, which is backpressure on the
//! client), releases go to the lease table. Results go out through one
//! bounded channel as they complete, tagged with the fetch id. The driver is
//! owned by the response stream: when the client goes away — closes the
//! stream, or dies and its connection drops — the response stream is
//! dropped, the driver aborted, its fetches cancelled and its lease table
//! dropped, which releases every lease of the session. On shutdown the
//! driver stops taking fetches, finishes those in flight and ends the
//! session with UNAVAILABLE.
//!
//! Everything a session holds — results not yet delivered, leases — is
//! charged to its connection's share. A client that stops reading the
//! stream for `read.stall_timeout` has its session ended: fetches cancelled,
//! undelivered results dropped. Its leases are kept until its connection
//! closes: the process still lives and may still read what it leased.

pub mod clients;
mod deliver;
pub mod fds;
pub(crate) mod leases;
mod plans;
pub(crate) mod stats;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};

use futures::StreamExt;
use sluice_engine::{ClientShare, Engine};
use sluice_proto::v1;
use sluice_proto::v1::session_request::Msg as In;
use sluice_proto::v1::session_response::Msg as Out;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tonic::{Status, Streaming};
use tracing::Instrument;

use crate::api::status::storage_status;
use crate::config::Config;
use crate::listen::Peer;
use crate::telemetry::metrics::Metrics;
use leases::LeaseTable;

/// Responses buffered per session before fetch tasks wait for the client.
const OUTBOX: usize = 256;

/// Most fetches in one `FetchBatch` (the protocol's limit).
pub(crate) const MAX_FETCH_BATCH: usize = 1024;

/// Most responses put together into one `ResponseBatch`.
const MAX_RESPONSE_BATCH: usize = 256;

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Lease tables of sessions ended by shutdown, kept until the daemon exits.
pub(crate) type Retired = Arc<std::sync::Mutex<Vec<Arc<LeaseTable>>>>;

/// What every fetch of one session shares.
pub(crate) struct SessionCtx {
    pub(crate) engine: Arc<Engine>,
    pub(crate) config: Arc<Config>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) leases: Arc<LeaseTable>,
    pub(crate) client: Arc<ClientShare>,
    pub(crate) shm: bool,
    pub(crate) out: mpsc::Sender<Result<v1::SessionResponse, Status>>,
    /// What `Stats` shows of the session.
    pub(crate) stat: Arc<stats::SessionStat>,
    /// The client's data stall, by its uid.
    pub(crate) stall: clients::ClientCounters,
    /// Records fetches in the operation log, when set to.
    pub(crate) ops: crate::api::client_ops::ClientOps,
}

impl SessionCtx {
    /// Sends one response; false when the client is gone.
    pub(crate) async fn send(&self, msg: Out) -> bool {
        self.out
            .send(Ok(v1::SessionResponse { msg: Some(msg) }))
            .await
            .is_ok()
    }
}

/// What a session is opened with.
pub(crate) struct Deps {
    pub(crate) engine: Arc<Engine>,
    pub(crate) config: Arc<Config>,
    pub(crate) metrics: Arc<Metrics>,
    /// Cancelled when shutdown begins.
    pub(crate) draining: CancellationToken,
    /// Where shutdown puts the leases of ended sessions.
    pub(crate) retired: Retired,
    /// The connection's share.
    pub(crate) client: Arc<ClientShare>,
    /// What the connection keeps until it closes.
    pub(crate) connection: Option<Arc<crate::listen::Retained>>,
    /// The live sessions, for `Stats`.
    pub(crate) sessions: stats::Sessions,
    /// Records the client's fetches in the operation log, when set to.
    pub(crate) ops: crate::api::client_ops::ClientOps,
}

/// Opens a session: answers the open message, then drives the stream.
pub(crate) async fn open(
    deps: Deps,
    peer: Option<Peer>,
    mut inbound: Streaming<v1::SessionRequest>,
) -> Result<futures::stream::BoxStream<'static, Result<v1::SessionResponse, Status>>, Status> {
    let Deps {
        engine,
        config,
        metrics,
        draining,
        retired,
        client,
        connection,
        sessions,
        ops,
    } = deps;
    let open = match inbound.message().await? {
        Some(v1::SessionRequest {
            msg: Some(In::Open(o)),
        }) => o,
        _ => {
            return Err(Status::invalid_argument(
                "the first session message must be open",
            ));
        }
    };
    let cfg = &config.session;
    let shm = open.shared_memory && cfg.shared_memory;
    let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(OUTBOX);
    let opened = v1::SessionOpened {
        session_id: id,
        shared_memory: shm,
        lease_quota: cfg.lease_quota.0,
        fd_socket: config.fd_socket().display().to_string(),
        segments: engine
            .arena()
            .segments()
            .map(|s| v1::ArenaSegment {
                id: s.id,
                size: s.len,
            })
            .collect(),
        batches: true,
        plans: true,
    };
    tx.send(Ok(v1::SessionResponse {
        msg: Some(Out::Opened(opened)),
    }))
    .await
    .map_err(|_| Status::cancelled("client left"))?;
    let leased = metrics.session.leased_bytes.clone();
    let leases = Arc::new(LeaseTable::new(
        cfg.lease_quota.0,
        cfg.max_leases,
        cfg.lease_wait,
        leased,
    ));
    let who = Who::of(peer.as_ref());
    let stat = Arc::new(stats::SessionStat::new(
        id,
        who.uid,
        who.pid,
        shm,
        leases.clone(),
    ));
    let listed = sessions.add(stat.clone());
    let ctx = Arc::new(SessionCtx {
        leases: leases.clone(),
        stat,
        stall: metrics.session.clients.client(who.uid),
        ops,
        client,
        engine,
        config: config.clone(),
        metrics: metrics.clone(),
        shm,
        out: tx,
    });
    tracing::info!(
        session = id,
        uid = who.uid,
        gid = who.gid,
        pid = who.pid,
        remote = who.remote.map(tracing::field::display),
        client_pid = open.pid,
        shm,
        "session opened"
    );
    // The session's fetches are spans under its RPC's span.
    let driver = AbortOnDropHandle::new(tokio::spawn(
        drive(ctx, inbound, draining, retired, id, who, listed).in_current_span(),
    ));
    // The response stream owns the driver and the leases: the session —
    // and every lease in it — lasts exactly as long as the call, unless it
    // is ended for its client's silence: then the connection keeps the
    // leases.
    let kept = leases.clone();
    let responses = if open.batches {
        Batched::new(rx).boxed()
    } else {
        ReceiverStream::new(rx).boxed()
    };
    let stream = responses
        .map(move |m| {
            let _owners = (&driver, &leases);
            m
        })
        .boxed();
    let on_stall: crate::stall::OnStall = Box::new(move || {
        tracing::info!(session = id, "session ended: its client stopped reading");
        if let Some(connection) = connection {
            connection.keep(Box::new(kept));
        }
    });
    Ok(crate::stall::watch(
        stream,
        config.read.stall_timeout,
        "Session",
        metrics.rpc.stalled.clone(),
        Some(on_stall),
    ))
}

async fn drive(
    ctx: Arc<SessionCtx>,
    mut inbound: Streaming<v1::SessionRequest>,
    draining: CancellationToken,
    retired: Retired,
    id: u64,
    who: Who,
    listed: stats::Listed,
) {
    let _active = ctx.metrics.session.active_guard();
    // Listed in `Stats` until the driver ends (also when aborted).
    let _listed = listed;
    // Logs the end however it comes: also when the client's going away
    // aborts this task.
    let closed = Closed { id, who };
    let max = ctx.config.session.max_outstanding.max(1);
    let mut fetches = JoinSet::new();
    // Fetches beyond `max` wait here; past another `max` the driver stops
    // reading (backpressure) — but until then releases keep being read, so
    // a client waiting on its quota can always free some.
    let mut queued: VecDeque<v1::FetchRequest> = VecDeque::new();
    let (mut shutting_down, mut half_closed) = (false, false);
    // Dropped with the driver: the session's plans end with it.
    let mut plans = plans::SessionPlans::new(id, ctx.engine.clone());
    loop {
        while fetches.len() < max
            && let Some(f) = queued.pop_front()
        {
            let span = deliver::span(&f);
            fetches.spawn(deliver::fetch(ctx.clone(), f).instrument(span));
        }
        if (shutting_down || half_closed) && fetches.is_empty() {
            break;
        }
        let reading = !half_closed && queued.len() < max;
        tokio::select! {
            () = draining.cancelled(), if !shutting_down => {
                // Shutdown: take no more fetches, finish those in flight
                // (the server's grace period bounds this), then end the
                // session so the drain does not wait on an idle stream.
                shutting_down = true;
                for f in queued.drain(..) {
                    refuse(&ctx, f.id).await;
                }
            }
            msg = inbound.message(), if reading => match msg {
                Ok(Some(v1::SessionRequest { msg: Some(In::Fetch(f)) })) => {
                    plans.fetching(&f.uri);
                    take(&ctx, f, shutting_down, &mut queued).await;
                }
                Ok(Some(v1::SessionRequest { msg: Some(In::FetchBatch(b)) })) => {
                    if b.fetches.len() > MAX_FETCH_BATCH {
                        let status = Status::invalid_argument(format!(
                            "a fetch batch of {} fetches; at most {MAX_FETCH_BATCH}",
                            b.fetches.len()
                        ));
                        let _ = ctx.out.send(Err(status)).await;
                        break;
                    }
                    for f in b.fetches {
                        plans.fetching(&f.uri);
                        take(&ctx, f, shutting_down, &mut queued).await;
                    }
                }
                Ok(Some(v1::SessionRequest { msg: Some(In::Plan(page)) })) => {
                    plans.page(&ctx, page).await;
                }
                Ok(Some(v1::SessionRequest { msg: Some(In::Progress(p)) })) => {
                    plans.progress(&p);
                }
                Ok(Some(v1::SessionRequest { msg: Some(In::DropPlan(d)) })) => {
                    plans.drop_plan(d.plan_id);
                }
                Ok(Some(v1::SessionRequest { msg: Some(In::Release(r)) })) => {
                    ctx.leases.release(&r.lease_ids);
                }
                Ok(Some(_)) => {
                    let status = Status::invalid_argument("open may only be the first session message");
                    let _ = ctx.out.send(Err(status)).await;
                    break;
                }
                // The client half-closed: finish what it asked for.
                Ok(None) => half_closed = true,
                Err(_) => break,
            },
            Some(_) = fetches.join_next(), if !fetches.is_empty() => {}
        }
    }
    if shutting_down {
        // The daemon is still draining other calls that may reuse freed
        // arena memory, while this client may still read what it leased:
        // keep its leases until the daemon exits.
        retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(ctx.leases.clone());
        let _ = ctx
            .out
            .send(Err(Status::unavailable("the daemon is shutting down")))
            .await;
    }
    // Dropping `fetches` cancels what is still running; dropping the last
    // `ctx` drops the lease table.
    drop(closed);
}

/// The peer of a session as its log lines name it: the kernel's view of a
/// Unix-socket peer (`SO_PEERCRED`), or a TCP peer's address.
#[derive(Debug, Clone, Copy, Default)]
struct Who {
    uid: Option<u32>,
    gid: Option<u32>,
    pid: Option<i32>,
    remote: Option<std::net::SocketAddr>,
}

/// Logs "session closed" when dropped.
struct Closed {
    id: u64,
    who: Who,
}

impl Drop for Closed {
    fn drop(&mut self) {
        let who = self.who;
        tracing::info!(
            session = self.id,
            uid = who.uid,
            gid = who.gid,
            pid = who.pid,
            remote = who.remote.map(tracing::field::display),
            "session closed"
        );
    }
}

impl Who {
    fn of(peer: Option<&Peer>) -> Who {
        match peer {
            Some(Peer::Unix(Some(c))) => Who {
                uid: Some(c.uid()),
                gid: Some(c.gid()),
                pid: c.pid(),
                remote: None,
            },
            Some(Peer::Tcp { remote, .. }) => Who {
                remote: Some(*remote),
                ..Who::default()
            },
            _ => Who::default(),
        }
    }
}

/// Queues a fetch the client sent, or answers it at once: refused while
/// shutting down, or for a URI that is too long (before it is queued: what a
/// session holds queued is bounded by `max_outstanding` plus one batch of
/// short URIs).
async fn take(
    ctx: &SessionCtx,
    f: v1::FetchRequest,
    shutting_down: bool,
    queued: &mut VecDeque<v1::FetchRequest>,
) {
    if shutting_down {
        refuse(ctx, f.id).await;
    } else if let Err(e) = sluice_storage::uri::check_len(&f.uri) {
        let status = storage_status(&e);
        let error = v1::FetchError {
            id: f.id,
            code: status.code() as i32,
            message: status.message().to_owned(),
        };
        ctx.send(Out::Error(error)).await;
    } else {
        queued.push_back(f);
    }
}

/// The responses of a session whose client accepts batches: what is ready
/// when the connection asks for the next message goes out as one
/// `ResponseBatch` (up to [`MAX_RESPONSE_BATCH`]), so a burst of small
/// results costs one message, one frame and one wake-up of the client
/// instead of one each. Nothing waits to fill a batch. An error ending the
/// stream goes out on its own, after what came before it.
struct Batched {
    rx: mpsc::Receiver<Result<v1::SessionResponse, Status>>,
    /// What ended the previous batch (a chunk, an error), next.
    held: Option<Result<v1::SessionResponse, Status>>,
}

impl Batched {
    fn new(rx: mpsc::Receiver<Result<v1::SessionResponse, Status>>) -> Self {
        Batched { rx, held: None }
    }
}

impl futures::Stream for Batched {
    type Item = Result<v1::SessionResponse, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = &mut *self;
        let first = match this.held.take() {
            Some(held) => held,
            None => match std::task::ready!(this.rx.poll_recv(cx)) {
                Some(first) => first,
                None => return std::task::Poll::Ready(None),
            },
        };
        let first = match first {
            // A chunk of data goes alone: it is large already.
            Ok(first) if !carries_data(&first) => first,
            other => return std::task::Poll::Ready(Some(other)),
        };
        let mut batch = Vec::new();
        while batch.len() + 1 < MAX_RESPONSE_BATCH {
            match this.rx.try_recv() {
                Ok(Ok(next)) if !carries_data(&next) => batch.push(next),
                Ok(next) => {
                    this.held = Some(next);
                    break;
                }
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            return std::task::Poll::Ready(Some(Ok(first)));
        }
        batch.insert(0, first);
        let batch = v1::ResponseBatch { responses: batch };
        std::task::Poll::Ready(Some(Ok(v1::SessionResponse {
            msg: Some(Out::Batch(batch)),
        })))
    }
}

/// Whether a response carries object bytes (a stream-delivered chunk).
fn carries_data(response: &v1::SessionResponse) -> bool {
    matches!(&response.msg, Some(Out::Chunk(c)) if !c.data.is_empty())
}

async fn refuse(ctx: &SessionCtx, id: u64) {
    let error = v1::FetchError {
        id,
        code: tonic::Code::Unavailable as i32,
        message: "the daemon is shutting down".into(),
    };
    ctx.send(Out::Error(error)).await;
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn extent(id: u64) -> Result<v1::SessionResponse, Status> {
        Ok(v1::SessionResponse {
            msg: Some(Out::Extent(v1::LeasedExtent {
                id,
                last: true,
                ..Default::default()
            })),
        })
    }

    fn chunk(id: u64) -> Result<v1::SessionResponse, Status> {
        Ok(v1::SessionResponse {
            msg: Some(Out::Chunk(v1::FetchChunk {
                id,
                data: bytes::Bytes::from_static(b"data"),
                last: true,
                ..Default::default()
            })),
        })
    }

    fn ids(response: &v1::SessionResponse) -> Vec<u64> {
        match &response.msg {
            Some(Out::Batch(b)) => b.responses.iter().flat_map(ids).collect(),
            Some(Out::Extent(e)) => vec![e.id],
            Some(Out::Chunk(c)) => vec![c.id],
            other => panic!("unexpected {other:?}"),
        }
    }

    /// What is ready goes out as one batch, in order; a chunk of data and
    /// an error go alone, after what came before them; nothing waits.
    #[tokio::test]
    async fn ready_responses_go_out_together_in_order() {
        let (tx, rx) = mpsc::channel(2 * MAX_RESPONSE_BATCH);
        let mut batched = Batched::new(rx);
        for id in 1..=5 {
            tx.send(extent(id)).await.unwrap();
        }
        tx.send(chunk(6)).await.unwrap();
        tx.send(extent(7)).await.unwrap();
        tx.send(Err(Status::unavailable("bye"))).await.unwrap();
        let first = batched.next().await.unwrap().unwrap();
        assert!(matches!(first.msg, Some(Out::Batch(_))));
        assert_eq!(ids(&first), [1, 2, 3, 4, 5]);
        let chunk = batched.next().await.unwrap().unwrap();
        assert!(matches!(chunk.msg, Some(Out::Chunk(_))), "a chunk alone");
        let single = batched.next().await.unwrap().unwrap();
        assert!(
            matches!(single.msg, Some(Out::Extent(_))),
            "one ready response is not wrapped"
        );
        assert_eq!(ids(&single), [7]);
        let error = batched.next().await.unwrap().unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unavailable);
        // Bounded: a long queue goes out in batches of at most the limit.
        for id in 0..(MAX_RESPONSE_BATCH as u64 + 3) {
            tx.send(extent(id)).await.unwrap();
        }
        drop(tx);
        let sizes: Vec<usize> = batched
            .map(|r| ids(&r.unwrap()).len())
            .collect::<Vec<_>>()
            .await;
        assert_eq!(sizes, [MAX_RESPONSE_BATCH, 3]);
    }
}
