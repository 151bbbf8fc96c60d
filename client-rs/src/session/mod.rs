//! [`Session`]: the long-lived, pipelined channel of one client process,
//! with results in the daemon's shared memory.
//!
//! A `Read` call copies every byte through gRPC. A session instead asks the
//! daemon for leases on its cache: the object's bytes already lie in the
//! daemon's arena, which this process maps read-only once per session
//! (see `mapping`), and a fetch's answer is only `(segment, offset, length)`.
//! Readers get [`Lease`]s, which deref to `&[u8]` and release the pin on
//! drop. Where shared memory is not available (TCP, no access to the
//! descriptor socket, the daemon refuses), the same API delivers the bytes
//! in the stream.
//!
//! How the pieces fit: [`Client::session`](crate::Client::session) maps the
//! segments (off the async workers), opens the `Session` stream and spawns
//! one driver task (`driver`). Fetches register in a map by id and send a
//! request; the driver checks each response piece (`assemble`), makes the
//! lease and hands it to the waiting caller. The driver lives as long as the
//! session handle or any lease does: the daemon keeps a session's leases
//! pinned only while its stream is open.
//!
//! Failure: when the stream ends (the daemon stopped, restarted, or the
//! connection broke) every fetch still owed and every later one fails with
//! an `Unavailable` [`Error::SessionClosed`] naming the address. Leases
//! already held stay readable: the mapping, and with it the memfd's pages,
//! lives until the last lease is dropped. Open a new session to go on.

mod assemble;
mod driver;
mod lease;
mod mapping;
mod releases;

use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use futures::future::Either;
use futures::{Stream, StreamExt, stream};
use sluice_proto::v1::session_request::Msg as Request;
use sluice_proto::v1::session_response::Msg as Response;
use sluice_proto::v1::{
    FetchRequest, ObjectMeta, PlanDrop, PlanItem, PlanPage, PlanProgress, SessionOpen,
    SessionOpened, SessionRequest,
};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::address::Address;
use crate::client::Grpc;
use crate::error::{Error, Result};
use crate::read::to_wire;
use crate::read_many::ReadItem;
use assemble::Assembly;
use driver::{Dispatch, Event, Outgoing, Pending, lock};
pub use lease::Lease;
use lease::{Core, join_owned};
pub(crate) use mapping::fd_socket_path;
use mapping::{Mappings, SetupError};

/// How a session delivers results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Delivery {
    /// Shared memory when the daemon is on a Unix socket and offers it,
    /// else the stream.
    #[default]
    Auto,
    /// Shared memory or an error naming the descriptor socket.
    SharedMemory,
    /// Bytes in the stream, copied like a `Read` call's.
    Stream,
}

/// Options of [`Client::session`](crate::Client::session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// How results are delivered.
    pub delivery: Delivery,
    /// Fetches outstanding at once; more wait for a place (at least 1).
    pub window: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            delivery: Delivery::Auto,
            // Enough to keep a node-local daemon's range engine busy with
            // small objects; large objects fill the lease quota first.
            window: 64,
        }
    }
}

/// A fetched object (or byte range): its metadata and its bytes, in object
/// order. A small object is one part; a large one may be several (shared
/// memory hands out the extents as cached). An empty result has no parts.
#[derive(Debug)]
pub struct Fetched {
    /// The object's metadata.
    pub meta: ObjectMeta,
    /// The bytes, in order, contiguous.
    pub parts: Vec<Lease>,
}

impl Fetched {
    /// Bytes in all parts.
    pub fn len(&self) -> u64 {
        self.parts.iter().map(|p| p.len() as u64).sum()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(|p| p.is_empty())
    }

    /// A copy of all the bytes in one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() as usize);
        for part in &self.parts {
            out.extend_from_slice(part);
        }
        out
    }
}

/// A session with the daemon. Cheap to clone; clones share the stream.
#[derive(Debug, Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Keeps the driver and the mappings alive.
    core: Arc<Core>,
    requests: mpsc::Sender<FetchRequest>,
    control: mpsc::Sender<SessionRequest>,
    dispatch: Arc<Mutex<Dispatch>>,
    closed: CancellationToken,
    window: Arc<Semaphore>,
    window_size: usize,
    next_id: AtomicU64,
    address: String,
    opened: SessionOpened,
}

/// Opens a session (see [`crate::Client::session`]).
pub(crate) async fn open(client: Grpc, address: &str, options: SessionOptions) -> Result<Session> {
    let window = options.window.max(1);
    let (fd_socket, mappings) = map_segments(address, options.delivery).await?;
    let (requests, fetches) = mpsc::channel(window);
    let (control, control_rx) = mpsc::channel(4);
    let (releases_tx, releases) = releases::channel();
    let open = SessionRequest {
        msg: Some(Request::Open(SessionOpen {
            shared_memory: mappings.is_some(),
            pid: std::process::id(),
            batches: true,
        })),
    };
    let batches = Arc::new(AtomicBool::new(false));
    let mut responses = client
        .clone()
        .session(Outgoing::new(
            open,
            fetches,
            control_rx,
            releases,
            Arc::clone(&batches),
        ))
        .await?
        .into_inner();
    let opened = match responses.message().await? {
        Some(sluice_proto::v1::SessionResponse {
            msg: Some(Response::Opened(opened)),
        }) => opened,
        Some(_) => {
            return Err(Error::protocol(
                address,
                "session did not start with `opened`",
            ));
        }
        None => {
            return Err(Error::SessionClosed {
                address: address.to_owned(),
                status: None,
            });
        }
    };
    let mappings = check_opened(address, options.delivery, fd_socket, mappings, &opened)?;
    // Fetches go out together from now on, if the daemon takes them so.
    batches.store(opened.batches, Ordering::Relaxed);
    let dispatch = Arc::new(Mutex::new(Dispatch::new(address)));
    let closed = CancellationToken::new();
    let core = Arc::new_cyclic(|weak| {
        let driver = tokio::spawn(driver::run(
            responses,
            Arc::clone(&dispatch),
            weak.clone(),
            closed.clone(),
        ));
        Core::new(mappings, releases_tx, driver.abort_handle())
    });
    Ok(Session {
        inner: Arc::new(Inner {
            core,
            requests,
            control,
            dispatch,
            closed,
            window: Arc::new(Semaphore::new(window)),
            window_size: window,
            next_id: AtomicU64::new(1),
            address: address.to_owned(),
            opened,
        }),
    })
}

/// Receives and maps the arena's segments where the delivery asks for
/// shared memory and the address allows it. Returns the descriptor socket
/// tried, if any, and the mappings.
async fn map_segments(
    address: &str,
    delivery: Delivery,
) -> Result<(Option<std::path::PathBuf>, Option<Mappings>)> {
    let path = match (delivery, address.parse::<Address>()?) {
        (Delivery::Stream, _) | (Delivery::Auto, Address::Http(_) | Address::Https(_)) => {
            return Ok((None, None));
        }
        (Delivery::SharedMemory, Address::Http(_) | Address::Https(_)) => {
            return Err(Error::SharedMemory {
                path: address.into(),
                reason: "shared memory needs the daemon's Unix socket",
                source: None,
            });
        }
        (_, Address::Unix(socket)) => fd_socket_path(&socket),
    };
    let fd_socket = path.clone();
    let received = tokio::task::spawn_blocking(move || Mappings::receive(&path))
        .await
        .expect("receiving the segments panicked");
    match received {
        Ok(mappings) => Ok((Some(fd_socket), Some(mappings))),
        Err(SetupError::Unreachable(_)) if delivery == Delivery::Auto => {
            Ok((Some(fd_socket), None))
        }
        Err(SetupError::Unreachable(error) | SetupError::Failed(error)) => Err(error),
    }
}

/// Checks the daemon's answer against what was asked and received; returns
/// the mappings to keep.
fn check_opened(
    address: &str,
    delivery: Delivery,
    fd_socket: Option<std::path::PathBuf>,
    mappings: Option<Mappings>,
    opened: &SessionOpened,
) -> Result<Option<Mappings>> {
    match mappings {
        Some(mappings) if opened.shared_memory => {
            if mappings.matches(&opened.segments) {
                Ok(Some(mappings))
            } else {
                Err(Error::protocol(
                    address,
                    "the session's segment table differs from the descriptors received",
                ))
            }
        }
        _ if opened.shared_memory => Err(Error::protocol(
            address,
            "the daemon chose shared memory, which was not asked for",
        )),
        _ if delivery == Delivery::SharedMemory => Err(Error::SharedMemory {
            path: fd_socket.unwrap_or_default(),
            reason: "the daemon refused shared-memory delivery",
            source: None,
        }),
        _ => Ok(None),
    }
}

impl Session {
    /// The daemon address.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// Whether results come as shared-memory leases (else in the stream).
    pub fn shared_memory(&self) -> bool {
        self.inner.core.mappings().is_some()
    }

    /// The daemon's id of this session (as in its logs).
    pub fn session_id(&self) -> u64 {
        self.inner.opened.session_id
    }

    /// Bytes this session may hold leased at once.
    pub fn lease_quota(&self) -> u64 {
        self.inner.opened.lease_quota
    }

    /// Fetches outstanding at once.
    pub fn window(&self) -> usize {
        self.inner.window_size
    }

    /// Whether `ptr` lies inside one of the session's mapped segments.
    pub fn is_mapped(&self, ptr: *const u8) -> bool {
        self.inner.core.mappings().is_some_and(|m| m.contains(ptr))
    }

    /// Fetches `uri`, whole (`None`) or a byte range (as in
    /// [`crate::Client::read`]), and waits for all its parts.
    pub async fn fetch(&self, uri: &str, range: Option<Range<u64>>) -> Result<Fetched> {
        self.fetch_parts(uri, range).await?.into_fetched().await
    }

    /// Starts a fetch and returns once its metadata arrived (so a missing
    /// object fails here); the parts come as a stream, each as soon as the
    /// daemon hands it out.
    pub async fn fetch_parts(&self, uri: &str, range: Option<Range<u64>>) -> Result<FetchParts> {
        let inner = &self.inner;
        let wire_range = to_wire(uri, range.as_ref())?;
        let permit = tokio::select! {
            permit = Arc::clone(&inner.window).acquire_owned() => {
                permit.expect("the window semaphore is never closed")
            }
            () = inner.closed.cancelled() => return Err(self.closed_error()),
        };
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events) = mpsc::unbounded_channel();
        let pending = Pending {
            assembly: Assembly::new(uri, range),
            events: events_tx,
            _permit: permit,
        };
        lock(&inner.dispatch).register(id, pending)?;
        let mut parts = FetchParts {
            ticket: Ticket {
                id,
                dispatch: Arc::clone(&inner.dispatch),
            },
            events,
            meta: ObjectMeta::default(),
            done: false,
        };
        let request = FetchRequest {
            id,
            uri: uri.to_owned(),
            range: wire_range,
        };
        tokio::select! {
            sent = inner.requests.send(request) => sent.map_err(|_| self.closed_error())?,
            () = inner.closed.cancelled() => return Err(self.closed_error()),
        }
        parts.meta = match parts.events.recv().await {
            Some(Ok(Event::Meta(meta))) => meta,
            Some(Err(error)) => return Err(error),
            Some(Ok(_)) => return Err(Error::protocol(uri, "parts before the metadata")),
            None => return Err(self.closed_error()),
        };
        Ok(parts)
    }

    /// Fetches many objects, keeping up to [`window`](Self::window) fetches
    /// outstanding. Yields one result per item with the item's index, in
    /// completion order or, with `ordered`, in request order.
    pub fn fetch_many<I>(
        &self,
        items: I,
        ordered: bool,
    ) -> impl Stream<Item = (usize, Result<Fetched>)> + Send + 'static
    where
        I: IntoIterator,
        I::Item: Into<ReadItem>,
    {
        let items: Vec<ReadItem> = items.into_iter().map(Into::into).collect();
        let session = self.clone();
        let fetches = stream::iter(items.into_iter().enumerate()).map(move |(index, item)| {
            let session = session.clone();
            async move { (index, session.fetch(&item.uri, item.range).await) }
        });
        let window = self.inner.window_size;
        if ordered {
            Either::Left(fetches.buffered(window))
        } else {
            Either::Right(fetches.buffer_unordered(window))
        }
    }

    fn closed_error(&self) -> Error {
        lock(&self.inner.dispatch).closed_error()
    }

    /// Whether the daemon takes epoch plans.
    pub fn takes_plans(&self) -> bool {
        self.inner.opened.plans
    }

    /// Tells the daemon the order in which this session will read `items`
    /// (an epoch plan, id `plan_id` chosen by the caller; a plan of the same
    /// id is replaced). The daemon reads ahead of the session's position in
    /// it and keeps what the plan needs soonest; each fetch of the plan's
    /// next item moves the position past it. `job` names the job in the
    /// daemon's stats. Sent in pages; returns the items the daemon took
    /// (0 from a daemon that takes no plans), or its refusal (a plan over
    /// its limits, a URI it cannot serve). The plan ends with the session.
    pub async fn submit_plan<I>(&self, plan_id: u64, job: &str, items: I) -> Result<u64>
    where
        I: IntoIterator,
        I::Item: Into<ReadItem>,
    {
        if !self.takes_plans() {
            return Ok(0);
        }
        let (answer_tx, answer) = tokio::sync::oneshot::channel();
        lock(&self.inner.dispatch).register_plan(plan_id, answer_tx)?;
        let mut items = items.into_iter().map(Into::into).peekable();
        let mut first = true;
        while first || items.peek().is_some() {
            let page: Vec<PlanItem> = items
                .by_ref()
                .take(PLAN_PAGE)
                .map(|item: ReadItem| {
                    let range = to_wire(&item.uri, item.range.as_ref())?;
                    Ok(PlanItem {
                        uri: item.uri,
                        range,
                    })
                })
                .collect::<Result<_>>()?;
            let last = items.peek().is_none();
            let msg = Request::Plan(PlanPage {
                plan_id,
                items: page,
                last,
                job: if first { job.to_owned() } else { String::new() },
            });
            first = false;
            self.control(msg).await?;
        }
        answer.await.map_err(|_| self.closed_error())?
    }

    /// Sets how far this session got in plan `plan_id` (items consumed);
    /// never moves it back.
    pub async fn plan_progress(&self, plan_id: u64, position: u64) -> Result<()> {
        if !self.takes_plans() {
            return Ok(());
        }
        self.control(Request::Progress(PlanProgress { plan_id, position }))
            .await
    }

    /// Ends plan `plan_id`.
    pub async fn drop_plan(&self, plan_id: u64) -> Result<()> {
        if !self.takes_plans() {
            return Ok(());
        }
        self.control(Request::DropPlan(PlanDrop { plan_id })).await
    }

    async fn control(&self, msg: Request) -> Result<()> {
        let msg = SessionRequest { msg: Some(msg) };
        tokio::select! {
            sent = self.inner.control.send(msg) => sent.map_err(|_| self.closed_error()),
            () = self.inner.closed.cancelled() => Err(self.closed_error()),
        }
    }
}

/// Items per plan page (the daemon takes up to 4096).
const PLAN_PAGE: usize = 4096;

/// Removes a fetch from the session's map when its caller gives up, so that
/// later pieces are released at once.
#[derive(Debug)]
struct Ticket {
    id: u64,
    dispatch: Arc<Mutex<Dispatch>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        lock(&self.dispatch).forget(self.id);
    }
}

/// The parts of one fetch, as they arrive (see [`Session::fetch_parts`]).
/// Ends after the last part; an error ends it early.
#[derive(Debug)]
pub struct FetchParts {
    ticket: Ticket,
    events: mpsc::UnboundedReceiver<Result<Event>>,
    meta: ObjectMeta,
    done: bool,
}

impl FetchParts {
    /// The object's metadata.
    pub fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    /// Waits for all parts. Chunks of stream delivery are joined into one
    /// part; shared-memory extents stay as they are.
    pub async fn into_fetched(mut self) -> Result<Fetched> {
        let mut parts = Vec::new();
        while let Some(part) = self.next().await {
            parts.push(part?);
        }
        Ok(Fetched {
            meta: std::mem::take(&mut self.meta),
            parts: join_owned(parts),
        })
    }
}

impl Stream for FetchParts {
    type Item = Result<Lease>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Lease>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let event = ready!(this.events.poll_recv(cx));
            let item = match event {
                Some(Ok(Event::Part(lease))) => return Poll::Ready(Some(Ok(lease))),
                Some(Ok(Event::Meta(_))) => continue,
                Some(Ok(Event::End)) => None,
                Some(Err(error)) => Some(Err(error)),
                None => Some(Err(lock(&this.ticket.dispatch).closed_error())),
            };
            this.done = true;
            return Poll::Ready(item);
        }
    }
}

#[cfg(test)]
mod tests;
