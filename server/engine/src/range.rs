//! The RangeEngine: an object as concurrent ranged GETs, straight into its
//! final buffer.
//!
//! # How a fetch goes
//! 1. The first part (`[start, start + part_size)`) is requested with no HEAD
//!    before it: its response carries the object's total size (S3's
//!    `Content-Range`) and etag.
//! 2. As soon as its headers are in, the rest of the wanted range is split
//!    into parts ([`plan::split`](crate::plan::split)) that fan out while the
//!    first body is still arriving. Each later part is held to the first
//!    part's [`Version`] (`If-Match` with its etag, or size and
//!    Last-Modified where the server sends no etag) and its response is
//!    compared too, so an object overwritten during the read fails with
//!    `Changed` — never a mix of two versions.
//! 3. Every part's body is written into its own disjoint slice of one buffer
//!    reserved from the memory budget (buffered mode), or into a part-sized
//!    buffer handed on in order (streaming mode, for objects too large to
//!    cache). No reassembly copy, no whole-body buffering on the way.
//!
//! Every part's length is checked against what was asked for. A part that
//! fails transiently — throttled, unavailable, short or broken body — is
//! retried alone up to `part_attempts` times with jittered exponential
//! backoff (the first part too, when its body breaks); other errors end the
//! fetch.
//!
//! Limits: `per_object_concurrency` parts in flight per object, and a global
//! semaphore of `max_concurrency` requests shared by every fetch.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use sluice_storage::{
    ByteStream, GetOptions, ObjectMeta, ObjectUri, Storage, StorageError, Version, drain,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::budget::{Evict, MemoryBudget};
use crate::config::EngineConfig;
use crate::error::ReadError;
use crate::metrics::StorageMetrics;
use crate::plan::split;

/// What a fetch produced.
pub enum Fetched {
    /// The whole wanted range in one buffer (which holds its budget permits).
    Buffered {
        /// The object.
        meta: ObjectMeta,
        /// The bytes `data` holds.
        range: Range<u64>,
        /// The bytes.
        data: Bytes,
    },
    /// Too large to buffer: parts in order, each holding its permits.
    Streaming {
        /// The object.
        meta: ObjectMeta,
        /// The bytes the stream carries.
        range: Range<u64>,
        /// The bytes, part by part.
        body: BoxStream<'static, Result<Bytes, ReadError>>,
    },
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fetched::Buffered { meta, range, .. } => write!(f, "Buffered({}, {range:?})", meta.uri),
            Fetched::Streaming { meta, range, .. } => {
                write!(f, "Streaming({}, {range:?})", meta.uri)
            }
        }
    }
}

/// Where fetched bytes may live: the budget, and who to evict for room.
#[derive(Clone)]
pub struct Memory {
    /// The byte budget.
    pub budget: MemoryBudget,
    /// The cache, asked to evict when the budget is full.
    pub evict: Arc<dyn Evict>,
}

/// Concurrent ranged fetches.
#[derive(Debug, Clone)]
pub struct RangeEngine {
    config: EngineConfig,
    global: Arc<Semaphore>,
    metrics: Arc<StorageMetrics>,
}

/// One object's parts after the first response.
struct Job {
    engine: RangeEngine,
    storage: Arc<dyn Storage>,
    uri: ObjectUri,
    /// What every later part must match: the first part's etag, else its
    /// size and last-modified time.
    version: Version,
}

impl RangeEngine {
    /// An engine with its own global request limit.
    pub fn new(config: EngineConfig, metrics: Arc<StorageMetrics>) -> Self {
        let global = Arc::new(Semaphore::new(config.max_concurrency.max(1)));
        RangeEngine {
            config,
            global,
            metrics,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Fetches `range` (whole object if `None`) of `uri`; buffered when the
    /// wanted bytes are at most `max_buffer`, else streamed.
    pub async fn fetch(
        &self,
        storage: Arc<dyn Storage>,
        uri: &ObjectUri,
        range: Option<Range<u64>>,
        memory: &Memory,
        max_buffer: u64,
    ) -> Result<Fetched, ReadError> {
        let want = range.unwrap_or(0..u64::MAX);
        if want.start > want.end {
            return Err(
                StorageError::invalid(uri.to_string(), "range start is after its end").into(),
            );
        }
        if want.is_empty() {
            // Nothing to transfer; still answer with the object's metadata.
            let meta = storage.head(uri).await?;
            let range = want.start.min(meta.size)..want.start.min(meta.size);
            return Ok(Fetched::Buffered {
                meta,
                range,
                data: Bytes::new(),
            });
        }
        let part = self.config.part_size.0.max(1);
        let first_req = want.start..want.start.saturating_add(part).min(want.end);
        let (first, permit) = self.first_part(&storage, uri, first_req).await?;
        let size = first.meta.size;
        let total = first.range.start..want.end.min(size);
        let job = Arc::new(Job {
            engine: self.clone(),
            storage,
            uri: uri.clone(),
            version: Version::of(&first.meta),
        });
        let first_part = (first.range.clone(), first.body, permit);
        if total.end - total.start <= max_buffer {
            let data = job
                .clone()
                .buffered(first_part, total.clone(), memory)
                .await?;
            Ok(Fetched::Buffered {
                meta: first.meta,
                range: total,
                data,
            })
        } else {
            let body = job.streaming(first_part, total.clone(), memory.clone());
            Ok(Fetched::Streaming {
                meta: first.meta,
                range: total,
                body,
            })
        }
    }

    /// The first GET, retried while nothing of it was received.
    async fn first_part(
        &self,
        storage: &Arc<dyn Storage>,
        uri: &ObjectUri,
        req: Range<u64>,
    ) -> Result<(sluice_storage::GetResult, OwnedSemaphorePermit), ReadError> {
        let mut attempt = 1;
        loop {
            let permit = self
                .global
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closed");
            let opts = GetOptions {
                range: Some(req.clone()),
                if_match: None,
            };
            match storage.get(uri, opts).await {
                Ok(res) => {
                    let expect = req.start..req.end.min(res.meta.size);
                    if res.range != expect && !(res.meta.size == 0 && res.range.is_empty()) {
                        let msg = format!("asked for bytes {expect:?}, got {:?}", res.range);
                        return Err(StorageError::protocol(uri.to_string(), msg).into());
                    }
                    return Ok((res, permit));
                }
                Err(e) if e.kind().is_transient() && attempt < self.config.part_attempts => {
                    drop(permit);
                    self.backoff(attempt, &e).await;
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn backoff(&self, attempt: u32, err: &StorageError) {
        self.metrics.part_retries.inc();
        let cap = self
            .config
            .part_backoff
            .saturating_mul(1 << (attempt - 1).min(16));
        let jitter = Duration::from_secs_f64(cap.as_secs_f64() * rand::random::<f64>());
        let wait = err
            .retry_after()
            .map_or(jitter, |hint| hint.max(jitter))
            .min(self.config.max_retry_wait);
        tracing::debug!(error = %err, attempt, ?wait, "retrying part");
        tokio::time::sleep(wait).await;
    }
}

type FirstPart = (Range<u64>, ByteStream, OwnedSemaphorePermit);

impl Job {
    fn part_size(&self) -> u64 {
        self.engine.config.part_size.0.max(1)
    }

    /// Buffered mode: one reservation, every part into its own slice.
    async fn buffered(
        self: Arc<Self>,
        first: FirstPart,
        total: Range<u64>,
        memory: &Memory,
    ) -> Result<Bytes, ReadError> {
        let len = total.end - total.start;
        let mut reservation = memory
            .budget
            .reserve(len, memory.evict.as_ref())
            .await
            .map_err(|source| ReadError::memory(&self.uri, source))?;
        let buf = reservation.as_mut_slice();
        let (first_range, first_body, permit) = first;
        let first_len = (first_range.end - first_range.start) as usize;
        let (head, rest) = buf.split_at_mut(first_len);
        let job = &self;
        let rest_start = first_range.end;
        let first_fut = async move {
            let res = drain(first_body, &job.uri, head).await;
            drop(permit);
            match res {
                Err(e) if e.kind().is_transient() => {
                    job.engine.backoff(1, &e).await;
                    job.part_into(first_range, head, 1).await
                }
                other => other.map_err(ReadError::from),
            }
        };
        type PartFuture<'a> =
            std::pin::Pin<Box<dyn Future<Output = Result<(), ReadError>> + Send + 'a>>;
        let mut parts: Vec<PartFuture<'_>> = vec![Box::pin(first_fut)];
        let part = self.part_size();
        for (range, dst) in split(rest_start..total.end, part).zip(rest.chunks_mut(part as usize)) {
            parts.push(Box::pin(job.part_into(range, dst, 0)));
        }
        stream::iter(parts)
            .buffer_unordered(self.engine.config.per_object_concurrency.max(1))
            .try_collect::<()>()
            .await?;
        Ok(reservation.into_bytes())
    }

    /// Streaming mode: parts in order, `per_object_concurrency` ahead.
    fn streaming(
        self: Arc<Self>,
        first: FirstPart,
        total: Range<u64>,
        memory: Memory,
    ) -> BoxStream<'static, Result<Bytes, ReadError>> {
        let (first_range, first_body, permit) = first;
        let job = self.clone();
        let mem = memory.clone();
        let head = stream::once(async move {
            let reservation = mem
                .budget
                .reserve(first_range.end - first_range.start, mem.evict.as_ref())
                .await;
            let mut reservation =
                reservation.map_err(|source| ReadError::memory(&job.uri, source))?;
            let buf = reservation.as_mut_slice();
            let res = drain(first_body, &job.uri, buf).await;
            drop(permit);
            match res {
                Err(e) if e.kind().is_transient() => {
                    job.engine.backoff(1, &e).await;
                    job.part_into(first_range, buf, 1).await?;
                }
                other => other?,
            }
            Ok(reservation.into_bytes())
        });
        let ahead = self.engine.config.per_object_concurrency.max(1);
        let rest = stream::iter(split(
            first_range_end(&total, self.part_size()),
            self.part_size(),
        ))
        .map(move |range| {
            let job = self.clone();
            let mem = memory.clone();
            async move {
                let reservation = mem
                    .budget
                    .reserve(range.end - range.start, mem.evict.as_ref())
                    .await;
                let mut reservation =
                    reservation.map_err(|source| ReadError::memory(&job.uri, source))?;
                job.part_into(range, reservation.as_mut_slice(), 0).await?;
                Ok(reservation.into_bytes())
            }
        });
        Box::pin(head.chain(rest.buffered(ahead)))
    }

    /// One part into `dst`, with retries. `failed` attempts were already spent.
    async fn part_into(
        &self,
        range: Range<u64>,
        dst: &mut [u8],
        failed: u32,
    ) -> Result<(), ReadError> {
        let engine = &self.engine;
        let mut attempt = failed + 1;
        loop {
            let permit = engine
                .global
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closed");
            let res = self.try_part(range.clone(), dst).await;
            drop(permit);
            match res {
                Ok(()) => return Ok(()),
                Err(e) if e.kind().is_transient() && attempt < engine.config.part_attempts => {
                    engine.backoff(attempt, &e).await;
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn try_part(&self, range: Range<u64>, dst: &mut [u8]) -> Result<(), StorageError> {
        debug_assert_eq!(range.end - range.start, dst.len() as u64);
        self.storage
            .read_into(&self.uri, range.start, &self.version, dst)
            .await
    }
}

/// What is left of `total` after its first part.
fn first_range_end(total: &Range<u64>, part: u64) -> Range<u64> {
    (total.start + part).min(total.end)..total.end
}
