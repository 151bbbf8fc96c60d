//! The two directions of a session stream.
//!
//! Outgoing, [`Outgoing`] is the request body tonic pulls from: the open
//! message first, then lease releases and fetches as they come. Releases
//! are held up to `RELEASE_DELAY` to share a `ReleaseRequest`, and go first
//! when a fetch is sent, since they free quota that it may wait for.
//! The body ends when both the fetch sender (the `Session` handles) and the
//! release sender (the session's [`Core`], held by handles and leases) are
//! gone.
//!
//! Incoming, one driver task per session reads the responses and routes
//! each to its fetch through [`Dispatch`], a map from fetch id to the
//! fetch's [`Assembly`] and result channel. The driver, not the caller,
//! turns extents into leases: a lease that cannot be delivered (its caller
//! gave up, its fetch failed) is dropped there and so released, never
//! leaked. When the stream ends or breaks, every fetch still owed fails with
//! [`Error::SessionClosed`], and so does every later one: no caller waits on
//! a session that is gone.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};

use futures::Stream;
use sluice_proto::v1::session_request::Msg as Request;
use sluice_proto::v1::session_response::Msg as Response;
use sluice_proto::v1::{
    FetchBatch, FetchChunk, FetchError, FetchRequest, LeasedExtent, ObjectMeta, ReleaseRequest,
    SessionRequest,
};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::codec::Streaming;

use super::assemble::{Accepted, Assembly, Piece};
use super::lease::{Core, Lease};
use super::releases::ReleaseReceiver;
use crate::error::{Error, Result};

/// Most lease ids in one `ReleaseRequest` (8 KiB of ids at most).
const MAX_RELEASE_BATCH: usize = 1024;

/// Most fetches in one `FetchBatch` (the protocol allows 1024).
const MAX_FETCH_BATCH: usize = 256;

/// Longest a released lease id waits for others to share its message (the
/// runtime's timers tick in milliseconds).
const RELEASE_DELAY: std::time::Duration = std::time::Duration::from_millis(1);

/// What a fetch's caller receives, in this order: the metadata, the parts,
/// the end (or an error instead of any of them).
#[derive(Debug)]
pub(crate) enum Event {
    Meta(ObjectMeta),
    Part(Lease),
    End,
}

/// A fetch waiting for pieces.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) assembly: Assembly,
    pub(crate) events: mpsc::UnboundedSender<Result<Event>>,
    /// The fetch's place in the session's window, freed when it completes.
    pub(crate) _permit: OwnedSemaphorePermit,
}

/// The fetches of a session by id, and whether the session ended.
#[derive(Debug)]
pub(crate) struct Dispatch {
    address: String,
    fetches: HashMap<u64, Pending>,
    /// Plans waiting for the daemon's answer.
    plans: HashMap<u64, tokio::sync::oneshot::Sender<Result<u64>>>,
    /// Set when the stream ended, with the status it ended with, if any.
    closed: Option<Option<tonic::Status>>,
}

impl Dispatch {
    pub(crate) fn new(address: &str) -> Self {
        Dispatch {
            address: address.to_owned(),
            fetches: HashMap::new(),
            plans: HashMap::new(),
            closed: None,
        }
    }

    /// The error of every fetch once the session ended.
    pub(crate) fn closed_error(&self) -> Error {
        Error::SessionClosed {
            address: self.address.clone(),
            status: self.closed.clone().flatten(),
        }
    }

    /// Adds a fetch; fails if the session already ended.
    pub(crate) fn register(&mut self, id: u64, pending: Pending) -> Result<()> {
        if self.closed.is_some() {
            return Err(self.closed_error());
        }
        self.fetches.insert(id, pending);
        Ok(())
    }

    /// Waits for the answer to plan `id`; fails if the session already ended.
    pub(crate) fn register_plan(
        &mut self,
        id: u64,
        answer: tokio::sync::oneshot::Sender<Result<u64>>,
    ) -> Result<()> {
        if self.closed.is_some() {
            return Err(self.closed_error());
        }
        self.plans.insert(id, answer);
        Ok(())
    }

    /// Forgets a fetch whose caller gave up; its later pieces are released.
    pub(crate) fn forget(&mut self, id: u64) {
        self.fetches.remove(&id);
    }

    /// Ends the session: every fetch still owed fails.
    fn close(&mut self, status: Option<tonic::Status>) {
        self.closed = Some(status);
        let error = self.closed_error();
        for (_, pending) in self.fetches.drain() {
            let _ = pending.events.send(Err(clone_closed(&error)));
        }
        for (_, answer) in self.plans.drain() {
            let _ = answer.send(Err(clone_closed(&error)));
        }
    }

    /// Routes one response; `core` is `None` once the session is being torn
    /// down (no lease can be made then, and none is needed).
    fn handle(&mut self, response: Response, core: Option<&Arc<Core>>) {
        match response {
            Response::Extent(extent) => self.on_extent(extent, core),
            Response::Chunk(chunk) => self.on_chunk(chunk),
            Response::Error(error) => self.on_error(error),
            Response::Plan(answer) => {
                if let Some(waiting) = self.plans.remove(&answer.plan_id) {
                    let result = if answer.code == 0 {
                        Ok(answer.items)
                    } else {
                        Err(Error::item(answer.code, answer.message))
                    };
                    let _ = waiting.send(result);
                }
            }
            Response::Batch(batch) => {
                for response in batch.responses.into_iter().filter_map(|r| r.msg) {
                    // Batches are never nested; one inside is ignored.
                    if !matches!(response, Response::Batch(_)) {
                        self.handle(response, core);
                    }
                }
            }
            // Only the first message may be `opened`; a repeat changes nothing.
            Response::Opened(_) => {}
        }
    }

    fn on_extent(&mut self, extent: LeasedExtent, core: Option<&Arc<Core>>) {
        let (id, lease_id) = (extent.id, extent.lease_id);
        let release = || {
            if let Some(core) = core.filter(|_| lease_id != 0) {
                core.release(lease_id);
            }
        };
        let Some(pending) = self.fetches.get_mut(&id) else {
            return release();
        };
        let mappings = core.and_then(|core| core.mappings());
        let size = mappings.and_then(|m| m.size(extent.segment));
        let accepted = match pending.assembly.extent(extent, size) {
            Ok(accepted) => accepted,
            Err(error) => {
                release();
                return self.fail(id, error);
            }
        };
        let part = match (&accepted.piece, core) {
            (Piece::Extent { .. }, None) => {
                let error = pending.assembly.error("session torn down");
                return self.fail(id, error);
            }
            (
                &Piece::Extent {
                    segment,
                    offset,
                    len,
                    lease_id,
                },
                Some(core),
            ) => Lease::mapped(
                Arc::clone(core),
                segment,
                offset,
                len,
                accepted.object_offset,
                lease_id,
            ),
            (Piece::Empty, _) => {
                release();
                None
            }
            (Piece::Chunk(_), _) => None,
        };
        self.deliver(id, accepted, part);
    }

    fn on_chunk(&mut self, chunk: FetchChunk) {
        let id = chunk.id;
        let Some(pending) = self.fetches.get_mut(&id) else {
            return;
        };
        match pending.assembly.chunk(chunk) {
            Ok(mut accepted) => {
                let piece = std::mem::replace(&mut accepted.piece, Piece::Empty);
                let part = match piece {
                    Piece::Chunk(data) => Some(Lease::owned(accepted.object_offset, data)),
                    _ => None,
                };
                self.deliver(id, accepted, part);
            }
            Err(error) => self.fail(id, error),
        }
    }

    fn on_error(&mut self, error: FetchError) {
        // UNAVAILABLE may be the daemon itself (draining refuses the fetches
        // it had not started): say which daemon, as a closed session does.
        let message = if error.code == tonic::Code::Unavailable as i32 {
            format!("{} (sluice daemon at {})", error.message, self.address)
        } else {
            error.message
        };
        self.fail(error.id, Error::item(error.code, message));
    }

    /// Hands an accepted piece to its caller; forgets the fetch when it is
    /// complete or the caller is gone (an undelivered lease is released as
    /// it drops).
    fn deliver(&mut self, id: u64, accepted: Accepted, part: Option<Lease>) {
        let Some(pending) = self.fetches.get(&id) else {
            return;
        };
        let mut open = true;
        if let Some(meta) = accepted.meta {
            open &= pending.events.send(Ok(Event::Meta(meta))).is_ok();
        }
        if let Some(part) = part {
            open &= pending.events.send(Ok(Event::Part(part))).is_ok();
        }
        if accepted.last {
            let _ = pending.events.send(Ok(Event::End));
        }
        if accepted.last || !open {
            self.fetches.remove(&id);
        }
    }

    fn fail(&mut self, id: u64, error: Error) {
        if let Some(pending) = self.fetches.remove(&id) {
            let _ = pending.events.send(Err(error));
        }
    }
}

fn clone_closed(error: &Error) -> Error {
    match error {
        Error::SessionClosed { address, status } => Error::SessionClosed {
            address: address.clone(),
            status: status.clone(),
        },
        _ => unreachable!("closed_error makes SessionClosed"),
    }
}

/// Locks the dispatch; a panic elsewhere does not make its state unusable
/// (every update is a single map operation).
pub(crate) fn lock(dispatch: &Mutex<Dispatch>) -> MutexGuard<'_, Dispatch> {
    dispatch.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads the session's responses until the stream ends, then fails what is
/// still owed and signals `closed`.
pub(crate) async fn run(
    mut responses: Streaming<sluice_proto::v1::SessionResponse>,
    dispatch: Arc<Mutex<Dispatch>>,
    core: Weak<Core>,
    closed: CancellationToken,
) {
    let status = loop {
        match responses.message().await {
            Ok(Some(response)) => {
                let Some(response) = response.msg else {
                    continue;
                };
                let core = core.upgrade();
                lock(&dispatch).handle(response, core.as_ref());
            }
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    lock(&dispatch).close(status);
    closed.cancel();
}

/// The request body of a session stream.
#[derive(Debug)]
pub(crate) struct Outgoing {
    open: Option<SessionRequest>,
    releases: ReleaseReceiver,
    fetches: mpsc::Receiver<FetchRequest>,
    /// Plan pages and positions, sent as they come, ahead of fetches.
    control: mpsc::Receiver<SessionRequest>,
    control_done: bool,
    /// Set once the daemon said it takes `FetchBatch`es.
    batches: Arc<AtomicBool>,
    releases_done: bool,
    fetches_done: bool,
    /// Released lease ids not sent yet.
    held: Vec<u64>,
    /// When `held` goes out at the latest; armed with its first id.
    flush: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Fetches taken but not sent yet: they wait for the releases sent
    /// ahead of them, or (to a daemon without batches) go one by one.
    next_fetches: VecDeque<FetchRequest>,
}

impl Outgoing {
    pub(crate) fn new(
        open: SessionRequest,
        fetches: mpsc::Receiver<FetchRequest>,
        control: mpsc::Receiver<SessionRequest>,
        releases: ReleaseReceiver,
        batches: Arc<AtomicBool>,
    ) -> Self {
        Outgoing {
            open: Some(open),
            releases,
            fetches,
            control,
            control_done: false,
            batches,
            releases_done: false,
            fetches_done: false,
            held: Vec::new(),
            flush: None,
            next_fetches: VecDeque::new(),
        }
    }

    /// The fetches taken, in one message if the daemon takes batches.
    fn fetch_message(&mut self) -> Option<SessionRequest> {
        let msg = match self.next_fetches.len() {
            0 => return None,
            1 => Request::Fetch(self.next_fetches.pop_front()?),
            _ if self.batches.load(Ordering::Relaxed) => Request::FetchBatch(FetchBatch {
                fetches: self.next_fetches.drain(..).collect(),
            }),
            _ => Request::Fetch(self.next_fetches.pop_front()?),
        };
        Some(SessionRequest { msg: Some(msg) })
    }

    fn release_message(&mut self) -> SessionRequest {
        self.flush = None;
        let lease_ids = std::mem::take(&mut self.held);
        SessionRequest {
            msg: Some(Request::Release(ReleaseRequest { lease_ids })),
        }
    }
}

impl Stream for Outgoing {
    type Item = SessionRequest;

    /// Releases are held for up to [`RELEASE_DELAY`] so that the leases a
    /// reader drops one by one (a DataLoader worker: one per sample, tens
    /// of microseconds apart) share a message instead of costing one each,
    /// on both sides. They go out earlier with the next fetch (ahead of
    /// it: they free quota it may need), when [`MAX_RELEASE_BATCH`] are
    /// held, or when the session's users are all gone.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SessionRequest>> {
        let this = &mut *self;
        if let Some(open) = this.open.take() {
            return Poll::Ready(Some(open));
        }
        if !this.control_done {
            match this.control.poll_recv(cx) {
                Poll::Ready(Some(msg)) => return Poll::Ready(Some(msg)),
                Poll::Ready(None) => this.control_done = true,
                Poll::Pending => {}
            }
        }
        if let Some(fetch) = this.fetch_message() {
            return Poll::Ready(Some(fetch));
        }
        while !this.releases_done && this.held.len() < MAX_RELEASE_BATCH {
            let room = MAX_RELEASE_BATCH - this.held.len();
            match this.releases.poll_recv_many(cx, &mut this.held, room) {
                Poll::Ready(0) => this.releases_done = true,
                Poll::Ready(_) => {}
                Poll::Pending => break,
            }
        }
        if this.held.len() >= MAX_RELEASE_BATCH || (this.releases_done && !this.held.is_empty()) {
            return Poll::Ready(Some(this.release_message()));
        }
        if !this.fetches_done {
            let mut taken = Vec::new();
            match this.fetches.poll_recv_many(cx, &mut taken, MAX_FETCH_BATCH) {
                Poll::Ready(0) => this.fetches_done = true,
                Poll::Ready(_) => {
                    this.next_fetches.extend(taken);
                    if !this.held.is_empty() {
                        return Poll::Ready(Some(this.release_message()));
                    }
                    return Poll::Ready(this.fetch_message());
                }
                Poll::Pending => {}
            }
        }
        if !this.held.is_empty() {
            let flush = this
                .flush
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(RELEASE_DELAY)));
            if flush.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(this.release_message()));
            }
        }
        if this.releases_done && this.fetches_done && this.control_done {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests;
