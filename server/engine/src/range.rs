//! The RangeEngine: an object as concurrent ranged GETs, straight into its
//! final buffer.
//!
//! # How a fetch goes
//! 1. The first part (`[start, start + part_size)`) is requested with no HEAD
//!    before it: its response carries the object's total size (S3's
//!    `Content-Range`) and etag.
//! 2. As soon as its headers are in, the rest of the wanted range is split
//!    into parts ([`split::split`](crate::split::split)) that fan out while the
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
//! semaphore of `max_concurrency` requests shared by every fetch, of which
//! one client runs at most `client_concurrency` (see [`crate::share`]).
//!
//! A fetch never holds a request slot while it waits for memory, and never
//! while it waits for its consumer: room in the client's share is taken
//! before the first request; a buffer that cannot be had at once makes the
//! first response go back (its part is fetched again once the memory is
//! there); a streamed object's parts are fetched by tasks of their own, so
//! a consumer that stops reading leaves at most `per_object_concurrency`
//! finished parts behind — charged to its share — and no request slots.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use sluice_storage::{
    ByteStream, ErrorKind, GetOptions, ObjectMeta, ObjectUri, ReadBuf, Storage, StorageError,
    Version, drain,
};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::adaptive::{Controllers, Outcome, PartSizes, Permit, Priority};
use crate::budget::{BudgetError, Evict, MemoryBudget, Reservation};
use crate::config::EngineConfig;
use crate::error::ReadError;
use crate::metrics::StorageMetrics;
use crate::share::{ClientShare, Hold, Live, RequestSlot};
use crate::split::split;

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
        /// Their charge to the client's share.
        hold: Hold,
    },
    /// Too large to buffer: parts in order, each holding its budget permits
    /// and its charge to the client's share.
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

/// Where fetched bytes may live: the budget, who to evict for room, and
/// whose share they are charged to.
#[derive(Clone)]
pub struct Memory {
    /// The byte budget.
    pub budget: MemoryBudget,
    /// The cache, asked to evict when the budget is full.
    pub evict: Arc<dyn Evict>,
    /// The client the bytes are fetched for.
    pub client: Arc<ClientShare>,
    /// Charge a streamed object's whole size to the client before its
    /// first part, as for a buffered one: for shared-memory delivery, where
    /// the client holds every part of the object before it can release
    /// any. Otherwise parts are charged one by one as they are reserved.
    pub whole: bool,
}

impl Memory {
    /// `len` bytes of the budget for the next part of a stream whose
    /// consumer holds `live` parts, charged to the client: room in its share
    /// first (see [`ClientShare::acquire_next_part`]), then the budget;
    /// both waits bounded.
    async fn reserve_part(
        &self,
        uri: &ObjectUri,
        len: u64,
        live: &Arc<AtomicU64>,
    ) -> Result<(Reservation, Hold, Live), ReadError> {
        let hold = self
            .client
            .acquire_next_part(len, live)
            .await
            .map_err(|e| ReadError::memory(uri, e))?;
        let reservation = self.reserve_budget(uri, len).await?;
        Ok((reservation, hold, Live::new(live)))
    }

    pub(crate) async fn reserve_budget(
        &self,
        uri: &ObjectUri,
        len: u64,
    ) -> Result<Reservation, ReadError> {
        self.budget
            .reserve(len, self.evict.as_ref())
            .await
            .map_err(|e| ReadError::memory(uri, e))
    }
}

/// A task aborted when its handle is dropped (the consumer went away).
struct Task<T>(tokio::task::JoinHandle<T>);

impl<T: Send + 'static> Task<T> {
    fn spawn(fut: impl Future<Output = T> + Send + 'static) -> Self {
        Task(tokio::spawn(fut))
    }

    async fn join(mut self) -> T {
        match (&mut self.0).await {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => unreachable!("a part task is only aborted with its handle: {e}"),
        }
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Concurrent ranged fetches.
#[derive(Debug, Clone)]
pub struct RangeEngine {
    config: EngineConfig,
    global: Arc<Semaphore>,
    metrics: Arc<StorageMetrics>,
    controllers: Arc<Controllers>,
}

/// A backend request slot: the client's and the node's
/// ([`RequestSlot`]), then the endpoint's ([`crate::adaptive`]).
#[derive(Debug)]
pub(crate) struct Slot {
    _request: RequestSlot,
    endpoint: Permit,
    /// When a first part's response headers came: its body's time teaches
    /// the endpoint's part size.
    headers: Option<Instant>,
}

impl Slot {
    /// The request behind the slot ended with `res`, moving `bytes`.
    fn finish<T>(self, res: &Result<T, StorageError>, bytes: u64) {
        match res {
            Err(e) => self.failed(e),
            Ok(_) => {
                if let Some(at) = self.headers {
                    let sizer = self.endpoint.controller().sizer();
                    sizer.body(bytes, at.elapsed());
                }
                self.endpoint.finish(Outcome::Done { bytes })
            }
        }
    }

    /// The request behind the slot failed with `e`.
    fn failed(self, e: &StorageError) {
        let outcome = if e.kind() == ErrorKind::Throttled {
            Outcome::Throttled
        } else {
            Outcome::Done { bytes: 0 }
        };
        self.endpoint.finish(outcome);
    }
}

/// The endpoint a request to `uri` goes to, as controllers and metrics
/// name it: `file`, `s3` (the default endpoint), `s3://host:port` (one the
/// operator listed), `gs`, or `az://account` (a listed account).
pub fn endpoint_of(uri: &ObjectUri) -> String {
    match uri.endpoint() {
        Some(endpoint) => format!("{}://{endpoint}", uri.scheme().as_str()),
        None => uri.scheme().as_str().to_owned(),
    }
}

/// One object's parts after the first response.
struct Job {
    engine: RangeEngine,
    storage: Arc<dyn Storage>,
    uri: ObjectUri,
    /// What every later part must match: the first part's etag, else its
    /// size and last-modified time.
    version: Version,
    client: Arc<ClientShare>,
    /// Bytes per part, the endpoint's when the fetch began.
    part: u64,
    /// The fetch's span, the parent of its parts' spans wherever their
    /// tasks run.
    span: tracing::Span,
}

impl RangeEngine {
    /// An engine with its own global request limit.
    pub fn new(config: EngineConfig, metrics: Arc<StorageMetrics>) -> Self {
        let global = Arc::new(Semaphore::new(config.max_concurrency.max(1)));
        let parts = PartSizes {
            min: config.min_part_size.0,
            cap: config.part_size.0,
            adaptive: config.adaptive_part_size,
        };
        let controllers = Arc::new(Controllers::new(
            config.max_concurrency,
            config.initial_concurrency,
            config.adaptive_concurrency,
            parts,
            metrics.concurrency.clone(),
            metrics.part_size.clone(),
        ));
        RangeEngine {
            config,
            global,
            metrics,
            controllers,
        }
    }

    /// Each endpoint's concurrency limit now.
    pub fn endpoint_limits(&self) -> Vec<(String, usize)> {
        self.controllers.limits()
    }

    /// Backend request slots not in use now.
    pub fn free_slots(&self) -> usize {
        self.global.available_permits()
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
        self.fetch_widening(storage, uri, range, memory, max_buffer, 0)
            .await
    }

    /// As [`RangeEngine::fetch`], except that the whole object is fetched,
    /// buffered, when it turns out to be at most `widen` bytes (and at most
    /// `max_buffer`): the result's range is then `0..size`. The first
    /// request is the range's own first part, which tells the object's
    /// size, so finding an object too large to widen costs nothing.
    pub async fn fetch_widening(
        &self,
        storage: Arc<dyn Storage>,
        uri: &ObjectUri,
        range: Option<Range<u64>>,
        memory: &Memory,
        max_buffer: u64,
        widen: u64,
    ) -> Result<Fetched, ReadError> {
        let span = crate::spans::fetch(storage.name());
        self.fetch_in(storage, uri, range, memory, max_buffer, widen)
            .instrument(span)
            .await
    }

    async fn fetch_in(
        &self,
        storage: Arc<dyn Storage>,
        uri: &ObjectUri,
        range: Option<Range<u64>>,
        memory: &Memory,
        max_buffer: u64,
        widen: u64,
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
                hold: memory.client.try_acquire(0).expect("nothing always fits"),
            });
        }
        // The endpoint's learned part size, unless it is busy: with
        // `per_object_concurrency` other fetches running (each with a
        // request or more in flight), smaller parts add requests, not
        // throughput.
        let controller = self.controllers.get(&endpoint_of(uri));
        let (_fetching, others) = controller.start_fetch();
        let part =
            if others >= self.config.per_object_concurrency.max(1) || !storage.learns_part_size() {
                self.config.part_size.0.max(1)
            } else {
                controller.sizer().part_size().max(1)
            };
        // Parts cut at the backend's alignment, so an aligned fetch's every
        // part is aligned (O_DIRECT reads them straight into the buffer).
        let align = storage.alignment().max(1);
        let part = (part / align * align).max(align);
        let first_req = want.start..want.start.saturating_add(part).min(want.end);
        // Room in the client's share before any request: a client over its
        // share waits here, holding no request slot.
        let mut hold = memory
            .client
            .acquire(first_req.end - first_req.start)
            .await
            .map_err(|e| ReadError::memory(uri, e))?;
        let (first, slot) = self
            .first_part(&storage, uri, first_req, &memory.client)
            .await?;
        let size = first.meta.size;
        let total = if widen > 0 && size <= widen.min(max_buffer) {
            0..size
        } else {
            first.range.start..want.end.min(size)
        };
        let len = total.end - total.start;
        let job = Arc::new(Job {
            engine: self.clone(),
            storage,
            uri: uri.clone(),
            version: Version::of(&first.meta),
            client: memory.client.clone(),
            part,
            span: tracing::Span::current(),
        });
        let buffered = len <= max_buffer;
        job.span.record("object.size", size);
        job.span.record("bytes", len);
        job.span.record("part.size", part);
        job.span
            .record("mode", if buffered { "buffered" } else { "streamed" });
        let first_len = first.range.end - first.range.start;
        let want_now = if buffered { len } else { first_len };
        let charge_now = if buffered || memory.whole {
            len
        } else {
            first_len
        };
        // The buffer at once, or the first response goes back: no request
        // slot (nor connection) is held while waiting for memory.
        let now = if hold.try_grow(charge_now) {
            memory.budget.try_reserve(want_now, memory.evict.as_ref())
        } else {
            None
        };
        let (reservation, first_part) = match now {
            Some(r) => (r, Some((first.range.clone(), first.body, slot))),
            None => {
                // Waiting for room while holding the first part's would let
                // two fetches of one client each wait for the other's.
                drop((first.body, slot));
                hold.shrink(0);
                hold.grow(charge_now)
                    .await
                    .map_err(|e| ReadError::memory(uri, e))?;
                (memory.reserve_budget(uri, want_now).await?, None)
            }
        };
        if buffered {
            let data = job
                .clone()
                .buffered(first_part, first.range.clone(), total.clone(), reservation)
                .await?;
            Ok(Fetched::Buffered {
                meta: first.meta,
                range: total,
                data,
                hold,
            })
        } else {
            // Parts of this stream the consumer holds (given and not yet
            // dropped), or that are ahead of it.
            let live = Arc::new(AtomicU64::new(0));
            // Paid for the whole object: each part takes its share of it.
            let first_hold = hold.split(first_len);
            let prepaid = memory.whole.then_some(hold);
            let head = job.clone().first_task(
                first.range.clone(),
                first_part,
                reservation,
                first_hold,
                Live::new(&live),
            );
            let body = job.streaming(head, total.clone(), memory.clone(), live, prepaid);
            Ok(Fetched::Streaming {
                meta: first.meta,
                range: total,
                body,
            })
        }
    }

    /// A request slot for `client`: its own and the node's, then the
    /// endpoint's, each bounded by `engine.request_wait`.
    async fn slot(&self, client: &ClientShare, uri: &ObjectUri) -> Result<Slot, ReadError> {
        let request = client
            .request_slot(&self.global)
            .await
            .map_err(|e| ReadError::memory(uri, e))?;
        let priority = if client.is_prefetch() {
            Priority::Prefetch
        } else {
            Priority::Demand
        };
        let controller = self.controllers.get(&endpoint_of(uri));
        let wait = self.config.request_wait;
        let endpoint = tokio::time::timeout(wait, controller.acquire(priority))
            .await
            .map_err(|_| ReadError::memory(uri, BudgetError::Busy { waited: wait }))?;
        Ok(Slot {
            _request: request,
            endpoint,
            headers: None,
        })
    }

    /// The first GET, retried while nothing of it was received.
    async fn first_part(
        &self,
        storage: &Arc<dyn Storage>,
        uri: &ObjectUri,
        req: Range<u64>,
        client: &ClientShare,
    ) -> Result<(sluice_storage::GetResult, Slot), ReadError> {
        let mut attempt = 1;
        loop {
            let mut permit = self.slot(client, uri).await?;
            let opts = GetOptions {
                range: Some(req.clone()),
                if_match: None,
            };
            let asked = Instant::now();
            let request = crate::spans::request(storage.name(), "GET", attempt);
            let res = storage.get(uri, opts).instrument(request.clone()).await;
            crate::spans::outcome(&request, &res);
            match res {
                Ok(res) => {
                    let sizer = permit.endpoint.controller().sizer();
                    sizer.first_byte(asked.elapsed());
                    permit.headers = Some(Instant::now());
                    let expect = req.start..req.end.min(res.meta.size);
                    if res.range != expect && !(res.meta.size == 0 && res.range.is_empty()) {
                        let msg = format!("asked for bytes {expect:?}, got {:?}", res.range);
                        return Err(StorageError::protocol(uri.to_string(), msg).into());
                    }
                    return Ok((res, permit));
                }
                Err(e) if e.kind().is_transient() && attempt < self.config.part_attempts => {
                    permit.failed(&e);
                    self.backoff(attempt, &e).await;
                    attempt += 1;
                }
                Err(e) => {
                    permit.failed(&e);
                    return Err(e.into());
                }
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

type FirstPart = (Range<u64>, ByteStream, Slot);

impl Job {
    fn part_size(&self) -> u64 {
        self.part
    }

    /// Buffered mode: one reservation, every part into its own slice.
    /// `first`: the first response (for `first_range`, which lies within
    /// `total`: at its start, or anywhere in a widened fetch), or `None`
    /// when it went back and its part is fetched again.
    async fn buffered(
        self: Arc<Self>,
        first: Option<FirstPart>,
        first_range: Range<u64>,
        total: Range<u64>,
        reservation: Reservation,
    ) -> Result<Bytes, ReadError> {
        debug_assert!(total.start <= first_range.start && first_range.end <= total.end);
        let (filling, buf) = reservation.into_read_buf();
        let (before, rest) = buf.split_at((first_range.start - total.start) as usize);
        let (head, after) = rest.split_at((first_range.end - first_range.start) as usize);
        let job = &self;
        type PartFuture<'a> =
            std::pin::Pin<Box<dyn Future<Output = Result<ReadBuf, ReadError>> + Send + 'a>>;
        let mut parts: Vec<PartFuture<'_>> =
            vec![Box::pin(job.first_into(first_range.clone(), first, head))];
        let part = self.part_size();
        let others = [
            (total.start..first_range.start, before),
            (first_range.end..total.end, after),
        ];
        for (span, buf) in others {
            for (range, dst) in split(span, part).zip(buf.chunks(part as usize)) {
                parts.push(Box::pin(job.part_into(range, dst, 0)));
            }
        }
        // Every part's buffer comes back before the bytes are frozen; a
        // failed fetch drops the others, whose reads keep the memory until
        // they end.
        let bufs: Vec<ReadBuf> = stream::iter(parts)
            .buffer_unordered(self.engine.config.per_object_concurrency.max(1))
            .try_collect()
            .await?;
        drop(bufs);
        filling.into_bytes().ok_or_else(|| self.buffer_kept())
    }

    /// A backend kept a part's buffer after answering: the bytes cannot be
    /// trusted to be final.
    fn buffer_kept(&self) -> ReadError {
        StorageError::new(
            ErrorKind::Other,
            self.uri.to_string(),
            "a read kept its buffer after it ended",
        )
        .into()
    }

    /// The first part into `dst`: the first response's body, or (when it
    /// went back, or broke) a request of its own.
    async fn first_into(
        &self,
        range: Range<u64>,
        first: Option<FirstPart>,
        mut dst: ReadBuf,
    ) -> Result<ReadBuf, ReadError> {
        let Some((_, body, slot)) = first else {
            return self.part_into(range, dst, 0).await;
        };
        let len = dst.len() as u64;
        let res = drain(body, &self.uri, dst.as_mut_slice()).await;
        slot.finish(&res, len);
        match res {
            Ok(()) => Ok(dst),
            Err(e) if e.kind().is_transient() => {
                self.engine.backoff(1, &e).await;
                self.part_into(range, dst, 1).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The first part of a streamed object, read into its buffer by a task
    /// of its own: its request slot is given back as soon as its body is in,
    /// whether or not the consumer reads.
    fn first_task(
        self: Arc<Self>,
        range: Range<u64>,
        first: Option<FirstPart>,
        reservation: Reservation,
        hold: Hold,
        live: Live,
    ) -> Task<Result<Bytes, ReadError>> {
        Task::spawn(async move {
            let (filling, buf) = reservation.into_read_buf();
            drop(self.first_into(range, first, buf).await?);
            let bytes = filling.into_bytes().ok_or_else(|| self.buffer_kept())?;
            Ok(hold.attach_counted(bytes, live))
        })
    }

    /// Streaming mode: parts in order, `per_object_concurrency` ahead. Each
    /// part's memory is reserved in order (so a part the consumer waits for
    /// never waits behind parts after it), then fetched by its own task.
    fn streaming(
        self: Arc<Self>,
        head: Task<Result<Bytes, ReadError>>,
        total: Range<u64>,
        memory: Memory,
        live: Arc<AtomicU64>,
        prepaid: Option<Hold>,
    ) -> BoxStream<'static, Result<Bytes, ReadError>> {
        let prepaid = Arc::new(std::sync::Mutex::new(prepaid));
        let head = stream::once(head.join());
        let ahead = self.engine.config.per_object_concurrency.max(1);
        let job = self.clone();
        let reserved = stream::iter(split(
            first_range_end(&total, self.part_size()),
            self.part_size(),
        ))
        .then(move |range| {
            let job = job.clone();
            let mem = memory.clone();
            let live = live.clone();
            let paid = prepaid
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_mut()
                .map(|pool| pool.split(range.end - range.start));
            async move {
                let len = range.end - range.start;
                let (reservation, hold, live) = match paid {
                    Some(hold) => {
                        let reservation = mem.reserve_budget(&job.uri, len).await?;
                        (reservation, hold, Live::new(&live))
                    }
                    None => mem.reserve_part(&job.uri, len, &live).await?,
                };
                Ok::<_, ReadError>((range, reservation, hold, live))
            }
        });
        let rest = reserved.map(move |reserved| {
            let job = self.clone();
            let task = reserved.map(|(range, reservation, hold, live)| {
                Task::spawn(async move {
                    let (filling, buf) = reservation.into_read_buf();
                    drop(job.part_into(range, buf, 0).await?);
                    let bytes = filling.into_bytes().ok_or_else(|| job.buffer_kept())?;
                    Ok(hold.attach_counted(bytes, live))
                })
            });
            async move { task?.join().await }
        });
        Box::pin(head.chain(rest.buffered(ahead)))
    }

    /// One part into `dst`, with retries; gives `dst` back filled.
    /// `failed` attempts were already spent.
    async fn part_into(
        &self,
        range: Range<u64>,
        mut dst: ReadBuf,
        failed: u32,
    ) -> Result<ReadBuf, ReadError> {
        debug_assert_eq!(range.end - range.start, dst.len() as u64);
        let span = crate::spans::part(&self.span, &range);
        let engine = &self.engine;
        let len = dst.len();
        let mut attempt = failed + 1;
        loop {
            span.record("attempts", attempt);
            let permit = engine.slot(&self.client, &self.uri).await?;
            let request =
                span.in_scope(|| crate::spans::request(self.storage.name(), "GET", attempt));
            let (res, back) = self
                .storage
                .read_into(&self.uri, range.start, &self.version, dst)
                .instrument(request.clone())
                .await;
            crate::spans::outcome(&request, &res);
            dst = back;
            permit.finish(&res, len as u64);
            match res {
                Ok(()) if dst.len() == len => return Ok(dst),
                Ok(()) => return Err(self.buffer_kept()),
                // A retry needs the buffer back whole.
                Err(e)
                    if e.kind().is_transient()
                        && attempt < engine.config.part_attempts
                        && dst.len() == len =>
                {
                    engine.backoff(attempt, &e).await;
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// What is left of `total` after its first part.
fn first_range_end(total: &Range<u64>, part: u64) -> Range<u64> {
    (total.start + part).min(total.end)..total.end
}
