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
use sluice_engine::budget::Reservation;
use sluice_engine::share::Hold;
use sluice_engine::{ClientShare, Reader};
use sluice_proto::v1;
use sluice_proto::v1::write_request::Msg;
use sluice_storage::{MultipartUpload, ObjectUri, Storage};
use tonic::{Status, Streaming};

use super::SluiceService;
use super::convert::meta;
use super::meta::timed;
use super::status::{parse_uri, read_status, storage_status};
use crate::telemetry::metrics::Method;

pub(super) async fn write(
    svc: &SluiceService,
    client: Arc<ClientShare>,
    mut stream: Streaming<v1::WriteRequest>,
) -> Result<v1::WriteResponse, Status> {
    let timer = svc.metrics.rpc.start(Method::write);
    let res = async {
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
        let storage = svc.reader.storage(&uri).map_err(|e| read_status(&e))?;
        let part_size = svc.config.write.part_size.0.max(storage.min_part_size());
        let mut up = Upload {
            uri: &uri,
            storage: storage.as_ref(),
            reader: &svc.reader,
            client,
            part_size,
            part: None,
            filled: 0,
            multipart: None,
            storing: None,
            parts: 0,
            total: 0,
        };
        // The daemon's exit waits for this write to abort its upload if the
        // shutdown cancels it (`uploads.rs`).
        let _tracked = svc.uploads.track();
        let result = up.run(&mut stream, header.size_hint, svc).await;
        svc.reader.invalidate(&uri);
        match result {
            Ok(resp) => Ok(resp),
            Err(status) => {
                up.abort().await;
                Err(status)
            }
        }
    }
    .await;
    timed(timer, res)
}

struct Upload<'a> {
    uri: &'a ObjectUri,
    storage: &'a dyn Storage,
    reader: &'a Reader,
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
}

/// A part on its way to the backend; gives the upload back with the result.
type Storing =
    Pin<Box<dyn Future<Output = (Box<dyn MultipartUpload>, sluice_storage::Result<()>)> + Send>>;

impl Upload<'_> {
    async fn run(
        &mut self,
        stream: &mut Streaming<v1::WriteRequest>,
        size_hint: u64,
        svc: &SluiceService,
    ) -> Result<v1::WriteResponse, Status> {
        let received = svc.metrics.rpc.received(Method::write);
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
            let mut data = match msg.msg {
                Some(Msg::Data(data)) if trailer.is_none() => data,
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
            received.inc_by(data.len() as u64);
            self.total += data.len() as u64;
            if size_hint != 0 && self.total > size_hint {
                return Err(self.size_mismatch(size_hint));
            }
            while !data.is_empty() {
                if self.part.is_none() {
                    let exhausted = |e| Status::resource_exhausted(format!("{}: {e}", self.uri));
                    let hold = self
                        .client
                        .acquire(self.part_size)
                        .await
                        .map_err(exhausted)?;
                    let r = self
                        .reader
                        .budget()
                        .reserve(self.part_size, self.reader.cache())
                        .await
                        .map_err(exhausted)?;
                    self.part = Some((r, hold));
                    self.filled = 0;
                }
                let (part, _) = self.part.as_mut().expect("reserved above");
                let dst = &mut part.as_mut_slice()[self.filled..];
                let take = dst.len().min(data.len());
                dst[..take].copy_from_slice(&data.split_to(take));
                self.filled += take;
                if self.filled as u64 == self.part_size {
                    self.send_part().await?;
                }
            }
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
