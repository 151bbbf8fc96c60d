//! Write: a header, data chunks, a trailer; multipart above one part.
//!
//! The trailer is what commits: a request stream can end cleanly without
//! the client meaning it (a cancelled call whose body the HTTP/2 connection
//! still finishes), so an upload is completed only when the trailer arrives
//! and its byte count matches what was received.
//!
//! Up to two parts are buffered: one being stored while the next is
//! received, so the client's stream and the backend's writes overlap (each
//! part's memory reserved from the budget and charged to the client's
//! share, like a read's buffer). A client that sends nothing for
//! `read.stall_timeout` has its write aborted, so a stopped writer does not
//! keep its parts. If the stream ends within the first part, the object goes
//! up in one request; otherwise a multipart upload starts and each full part
//! is sent as it fills, after the one before it was stored. Any
//! failure — the client's stream breaking, a size mismatch, a backend error —
//! aborts the upload and is reported; an upload is never completed unless
//! every byte the client sent arrived and every part succeeded.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream;
use sluice_engine::budget::Reservation;
use sluice_engine::share::Hold;
use sluice_engine::{ClientShare, Engine};
use sluice_proto::v1;
use sluice_proto::v1::write_request::Msg;
use sluice_storage::{MultipartUpload, ObjectUri, Storage};
use tokio::sync::{oneshot, watch};
use tonic::{Status, Streaming};
use tracing::Instrument;

use super::convert::meta;
use super::status::{parse_uri, read_status, storage_status};
use super::{ResponseStream, SluiceService};
use crate::telemetry::metrics::Method;
use crate::upload_memory::Memory;

pub(super) async fn write(
    svc: &SluiceService,
    client: Arc<ClientShare>,
    stream: Streaming<v1::WriteRequest>,
) -> Result<v1::WriteResponse, Status> {
    run(svc, client, stream, None).await
}

/// `Upload`: a write whose data may come from the client's registered
/// memory file (`crate::upload_memory`). The answer stream says how much of
/// that memory the daemon is done with, then how the upload ended. The
/// upload runs as its own task, so a client that goes away mid-way still
/// has its upload aborted rather than dropped half-way.
pub(super) fn upload(
    svc: SluiceService,
    client: Arc<ClientShare>,
    uid: Option<u32>,
    stream: Streaming<v1::WriteRequest>,
) -> ResponseStream<v1::UploadResponse> {
    let (consumed_tx, consumed_rx) = watch::channel(0u64);
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(
        async move {
            let shared = Shared {
                uid,
                consumed: consumed_tx,
            };
            let res = run(&svc, client, stream, Some(shared)).await;
            let _ = done_tx.send(res);
        }
        .in_current_span(),
    );
    // Only the latest count matters: a client that does not read its
    // answers holds one value here, not one per range.
    Box::pin(stream::unfold(
        Some((consumed_rx, done_rx)),
        |state| async move {
            let (mut consumed, mut done) = state?;
            let msg = |m| v1::UploadResponse { msg: Some(m) };
            tokio::select! {
                biased;
                res = &mut done => {
                    let last = match res {
                        Ok(Ok(resp)) => Ok(msg(v1::upload_response::Msg::Done(resp))),
                        Ok(Err(status)) => Err(status),
                        Err(_) => Err(Status::internal("the upload ended without an answer")),
                    };
                    Some((last, None))
                }
                Ok(()) = consumed.changed() => {
                    let n = *consumed.borrow_and_update();
                    Some((Ok(msg(v1::upload_response::Msg::Consumed(n))), Some((consumed, done))))
                }
            }
        },
    ))
}

/// What an `Upload` call adds to a write.
struct Shared {
    /// The caller's uid (registrations are bound to it).
    uid: Option<u32>,
    /// Shared-memory bytes copied so far, for the answer stream.
    consumed: watch::Sender<u64>,
}

async fn run(
    svc: &SluiceService,
    client: Arc<ClientShare>,
    mut stream: Streaming<v1::WriteRequest>,
    shared: Option<Shared>,
) -> Result<v1::WriteResponse, Status> {
    let header = match stream.message().await? {
        Some(v1::WriteRequest {
            msg: Some(Msg::Header(h)),
        }) => h,
        _ => {
            return Err(Status::invalid_argument(
                "the first write message must be a header",
            ));
        }
    };
    let uri = parse_uri(&header.uri)?;
    let memory = match (&shared, header.shared_memory.is_empty()) {
        (_, true) => None,
        (None, false) => {
            return Err(Status::invalid_argument(format!(
                "{uri}: shared memory needs the Upload call"
            )));
        }
        (Some(s), false) => Some(
            svc.upload_memory
                .get(&header.shared_memory, s.uid)
                .ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "{uri}: no upload memory is registered under this token for this user \
                         (its descriptor-socket connection may have closed)"
                    ))
                })?,
        ),
    };
    let method = if shared.is_some() {
        Method::upload
    } else {
        Method::write
    };
    let storage = svc.engine.backend(&uri).map_err(|e| read_status(&e))?;
    let part_size = svc.config.write.part_size.0.max(storage.min_part_size());
    let mut up = Upload {
        uri: &uri,
        storage: storage.as_ref(),
        engine: &svc.engine,
        client,
        part_size,
        part: None,
        filled: 0,
        multipart: None,
        storing: None,
        parts: 0,
        total: 0,
        memory,
        consumed: shared.map(|s| (s.consumed, 0)),
        method,
    };
    // The daemon's exit waits for this write to abort its upload if the
    // shutdown cancels it (`uploads.rs`).
    let _tracked = svc.uploads.track();
    let result = up.run(&mut stream, header.size_hint, svc).await;
    svc.engine.invalidate(&uri);
    match result {
        Ok(resp) => Ok(resp),
        Err(status) => {
            up.abort().await;
            Err(status)
        }
    }
}

struct Upload<'a> {
    uri: &'a ObjectUri,
    storage: &'a dyn Storage,
    engine: &'a Engine,
    client: Arc<ClientShare>,
    part_size: u64,
    /// The part being filled: an arena extent, so an upload's buffer counts
    /// against the memory budget like every other payload byte, and its
    /// charge to the client's share.
    part: Option<(Reservation, Hold)>,
    filled: usize,
    multipart: Option<Box<dyn MultipartUpload>>,
    /// The part being stored, which holds the upload until it is done.
    storing: Option<Storing>,
    parts: u32,
    total: u64,
    /// `Upload`: the client's registered memory file, if it named one.
    memory: Option<Arc<Memory>>,
    /// `Upload`: where to report shared bytes copied, and their count.
    consumed: Option<(watch::Sender<u64>, u64)>,
    method: Method,
}

/// A part on its way to the backend; gives the upload back with the result.
type Storing =
    Pin<Box<dyn Future<Output = (Box<dyn MultipartUpload>, sluice_storage::Result<()>)> + Send>>;

/// The next bytes of the object: on the stream, or in shared memory.
enum Piece {
    Inline(Bytes),
    Shared(Arc<Memory>, u64, u64),
}

impl Upload<'_> {
    async fn run(
        &mut self,
        stream: &mut Streaming<v1::WriteRequest>,
        size_hint: u64,
        svc: &SluiceService,
    ) -> Result<v1::WriteResponse, Status> {
        let received = svc.metrics.rpc.received(self.method);
        let mut trailer = None;
        // Past the grace period of a shutdown, the write stops waiting for
        // its client and is aborted below; a part or the commit already
        // under way finishes (each is one backend request).
        let stall = svc.config.read.stall_timeout;
        loop {
            let msg = tokio::select! {
                msg = next_message(stream, stall, self.uri) => msg?,
                () = svc.uploads.cancelled() => return Err(Status::unavailable(format!(
                    "{}: the daemon is shutting down; upload discarded",
                    self.uri
                ))),
                stored = async { self.storing.as_mut().expect("checked").await },
                    if self.storing.is_some() =>
                {
                    self.storing = None;
                    self.stored(stored)?;
                    continue;
                }
            };
            let Some(msg) = msg else { break };
            let piece = match msg.msg {
                Some(Msg::Data(data)) if trailer.is_none() => Piece::Inline(data),
                Some(Msg::Shared(range)) if trailer.is_none() => self.shared(range)?,
                Some(Msg::Trailer(t)) if trailer.is_none() => {
                    trailer = Some(t);
                    continue;
                }
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "{}: expected data or one trailer after the header",
                        self.uri
                    )));
                }
            };
            let len = match &piece {
                Piece::Inline(data) => data.len() as u64,
                Piece::Shared(_, _, len) => *len,
            };
            received.inc_by(len);
            self.total += len;
            if size_hint != 0 && self.total > size_hint {
                return Err(self.size_mismatch(size_hint));
            }
            self.take(piece).await?;
        }
        let Some(trailer) = trailer else {
            return Err(Status::aborted(format!(
                "{}: the write ended without a trailer (cancelled?); upload discarded",
                self.uri
            )));
        };
        if trailer.total_size != self.total {
            return Err(Status::data_loss(format!(
                "{}: the client sent {} bytes but {} arrived; upload discarded",
                self.uri, trailer.total_size, self.total
            )));
        }
        if size_hint != 0 && self.total != size_hint {
            return Err(self.size_mismatch(size_hint));
        }
        self.wait_stored().await?;
        let m = match self.multipart.take() {
            None => {
                let data = self.take_part();
                self.storage
                    .put(self.uri, data)
                    .await
                    .map_err(|e| storage_status(&e))?
            }
            Some(mut mp) => {
                if self.filled > 0 {
                    let last = self.take_part();
                    let res = mp.put_part(last).await;
                    self.multipart = Some(mp);
                    res.map_err(|e| storage_status(&e))?;
                    self.parts += 1;
                    mp = self.multipart.take().expect("just put back");
                }
                mp.complete().await.map_err(|e| storage_status(&e))?
            }
        };
        Ok(v1::WriteResponse {
            meta: Some(meta(&m)),
            parts: self.parts.max(1),
        })
    }

    /// Starts storing the full part, once the one before it is stored.
    async fn send_part(&mut self) -> Result<(), Status> {
        self.wait_stored().await?;
        let mut mp = match self.multipart.take() {
            Some(mp) => mp,
            None => self
                .storage
                .start_multipart(self.uri)
                .await
                .map_err(|e| storage_status(&e))?,
        };
        let part = self.take_part();
        self.storing = Some(Box::pin(async move {
            let res = mp.put_part(part).await;
            (mp, res)
        }));
        Ok(())
    }

    /// Waits for the part being stored, if any.
    async fn wait_stored(&mut self) -> Result<(), Status> {
        match self.storing.take() {
            Some(storing) => {
                let stored = storing.await;
                self.stored(stored)
            }
            None => Ok(()),
        }
    }

    /// Takes the upload back from a stored part.
    fn stored(
        &mut self,
        (mp, res): (Box<dyn MultipartUpload>, sluice_storage::Result<()>),
    ) -> Result<(), Status> {
        self.multipart = Some(mp);
        res.map_err(|e| storage_status(&e))?;
        self.parts += 1;
        Ok(())
    }

    /// The filled bytes of the current part (empty if none).
    fn take_part(&mut self) -> Bytes {
        let filled = std::mem::take(&mut self.filled);
        match self.part.take() {
            Some((r, hold)) => hold.attach(r.into_bytes().slice(..filled)),
            None => Bytes::new(),
        }
    }

    /// Checks a shared range before anything is copied from it.
    fn shared(&self, range: v1::SharedRange) -> Result<Piece, Status> {
        let Some(memory) = &self.memory else {
            return Err(Status::invalid_argument(format!(
                "{}: a shared range needs the Upload call and a registered memory file in the header",
                self.uri
            )));
        };
        // pread takes a signed offset.
        if range
            .offset
            .checked_add(range.length)
            .is_none_or(|end| end > i64::MAX as u64)
        {
            return Err(Status::invalid_argument(format!(
                "{}: shared range {}+{} lies past any file",
                self.uri, range.offset, range.length
            )));
        }
        Ok(Piece::Shared(memory.clone(), range.offset, range.length))
    }

    /// Copies `piece` into parts, storing each part as it fills.
    async fn take(&mut self, piece: Piece) -> Result<(), Status> {
        let (mut data, memory, mut offset, mut left) = match piece {
            Piece::Inline(data) => {
                let len = data.len() as u64;
                (data, None, 0, len)
            }
            Piece::Shared(memory, offset, len) => (Bytes::new(), Some(memory), offset, len),
        };
        let len = left;
        while left > 0 {
            if self.part.is_none() {
                let exhausted = |e| Status::resource_exhausted(format!("{}: {e}", self.uri));
                let hold = self
                    .client
                    .acquire(self.part_size)
                    .await
                    .map_err(exhausted)?;
                let r = self
                    .engine
                    .budget()
                    .reserve(self.part_size, self.engine.cache().as_ref())
                    .await
                    .map_err(exhausted)?;
                self.part = Some((r, hold));
                self.filled = 0;
            }
            let (part, _) = self.part.as_mut().expect("reserved above");
            let dst = &mut part.as_mut_slice()[self.filled..];
            let take = (dst.len() as u64).min(left) as usize;
            match &memory {
                None => dst[..take].copy_from_slice(&data.split_to(take)),
                Some(memory) => memory
                    .read_exact_at(&mut dst[..take], offset)
                    .map_err(|e| {
                        if e.kind() == std::io::ErrorKind::UnexpectedEof {
                            Status::invalid_argument(format!(
                                "{}: a shared range ends beyond the registered memory file",
                                self.uri
                            ))
                        } else {
                            Status::internal(format!(
                                "{}: reading the shared memory file: {e}",
                                self.uri
                            ))
                        }
                    })?,
            }
            self.filled += take;
            offset += take as u64;
            left -= take as u64;
            if self.filled as u64 == self.part_size {
                self.send_part().await?;
            }
        }
        if memory.is_some()
            && let Some((tx, count)) = &mut self.consumed
        {
            *count += len;
            tx.send_replace(*count);
        }
        Ok(())
    }

    fn size_mismatch(&self, hint: u64) -> Status {
        Status::invalid_argument(format!(
            "{}: the header announced {hint} bytes but {} arrived",
            self.uri, self.total
        ))
    }

    /// Discards a started multipart upload (after the part being stored, if
    /// any, gave it back); a failure to abort is logged (the write already
    /// failed and says so).
    async fn abort(&mut self) {
        if let Some(storing) = self.storing.take() {
            self.multipart = Some(storing.await.0);
        }
        if let Some(mp) = self.multipart.take()
            && let Err(error) = mp.abort().await
        {
            tracing::warn!(%error, uri = %self.uri, "aborting a failed multipart upload failed");
        }
    }
}

/// The client's next message; ABORTED when it sends nothing for `stall`
/// (`read.stall_timeout`; zero: wait as long as it takes).
async fn next_message(
    stream: &mut Streaming<v1::WriteRequest>,
    stall: std::time::Duration,
    uri: &ObjectUri,
) -> Result<Option<v1::WriteRequest>, Status> {
    if stall.is_zero() {
        return stream.message().await;
    }
    tokio::time::timeout(stall, stream.message())
        .await
        .unwrap_or_else(|_| {
            Err(Status::aborted(format!(
                "{uri}: the client sent nothing for {stall:?} (read.stall_timeout); upload discarded"
            )))
        })
}
