//! The read path: cache lookup and revalidation, coalesced misses, fetches.
//!
//! A whole-object read that misses becomes the *leader* for its key: it
//! fetches through the RangeEngine and publishes the outcome on a `watch`
//! channel; concurrent reads of the same key *follow* and wait for it, so one
//! object is fetched once however many readers ask (DESIGN §7). If the leader
//! is cancelled (its client went away) the channel closes and a follower
//! takes over. Objects too large to cache are streamed to each reader by its
//! own fetch. Ranged reads of cached objects are slices of the entry.
//!
//! A ranged read of an uncached object leads like a whole one, with a fetch
//! that starts with the range's own first part and *widens* to the whole
//! object when that part shows the object is at most
//! `cache.widen_range_max`: the object is cached and the range sliced from
//! it, and concurrent reads of other ranges of it join. A larger object
//! gives just the range, uncached, and is remembered as too large for a
//! while, so that later ranges of it are fetched side by side instead of
//! each waiting to learn the size again.
//!
//! Invalidation wins over fetches in flight: [`Reader::invalidate`] marks
//! the key's flight *stale* and takes it out of the in-flight map under the
//! same lock the leader holds while it checks the mark and inserts, so a
//! fetch that started before a Write or Delete never caches what it read.
//! The stale leader still answers its own reader (that read was concurrent
//! with the write); its followers start over and fetch the new version.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures::stream::BoxStream;
use sluice_storage::{Backends, ObjectMeta, ObjectUri, Storage, clamp_range};
use tokio::sync::watch;

use crate::budget::MemoryBudget;
use crate::cache::{Cache, CachedObject};
use crate::config::{CacheConfig, EngineConfig};
use crate::disk::DiskTier;
use crate::error::ReadError;
use crate::metrics::{EngineMetrics, Instrumented};
use crate::plans::PlanLimits;
use crate::range::{Fetched, Memory, RangeEngine};
use crate::share::{ClientShare, Hold, ShareLimits, Shares};

/// The bytes of a read.
pub enum Body {
    /// All of it, already in memory (a slice of a cache entry or a buffer).
    Bytes(Bytes),
    /// Part by part, for objects too large to cache.
    Stream(BoxStream<'static, Result<Bytes, ReadError>>),
}

/// Where the bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A cache hit.
    Cache,
    /// Fetched by this read, and now cached.
    Backend,
    /// Fetched by a concurrent read of the same object.
    Coalesced,
    /// Fetched for this read only, not cached (ranges, large objects, no_cache).
    Uncached,
    /// Read from the disk tier, and now cached in RAM.
    Disk,
}

impl Source {
    /// Its name in metric labels and spans.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Backend => "backend",
            Source::Coalesced => "coalesced",
            Source::Uncached => "uncached",
            Source::Disk => "disk",
        }
    }
}

/// A read's answer.
pub struct ReadOutput {
    /// The object.
    pub meta: ObjectMeta,
    /// Which bytes `body` carries.
    pub range: Range<u64>,
    /// The bytes.
    pub body: Body,
    /// Where they came from.
    pub source: Source,
    /// The cache entry the bytes are a slice of, if any: holding it keeps
    /// the entry from being evicted (leases hold it).
    pub pin: Option<Arc<CachedObject>>,
    /// Bytes the body pins: the cache entry's size for a slice of one, the
    /// buffer's otherwise (a streamed body's parts pin themselves).
    pub pinned: u64,
}

#[derive(Clone)]
enum Outcome {
    Cached(Arc<CachedObject>),
    TooLarge,
    Failed(ReadError),
    /// Invalidated while in flight: read again.
    Stale,
}

/// A fetch in flight: where its outcome is published, and whether an
/// invalidation overtook it.
struct Flight {
    rx: watch::Receiver<Option<Outcome>>,
    stale: Arc<AtomicBool>,
    /// Reads that joined it so far.
    joined: usize,
}

type Inflight = Mutex<HashMap<String, Flight>>;

/// A whole object a leader got, to cache and answer with.
struct Got {
    meta: ObjectMeta,
    data: Bytes,
    /// Its charge to the client's share.
    hold: Hold,
    /// Where it came from: the backend (then it goes to the disk tier
    /// too) or the disk tier.
    source: Source,
}

/// Whom a read is for, and whether they hold streamed objects whole.
type For<'a> = (&'a Arc<ClientShare>, bool);

/// Reads objects through the cache.
pub struct Reader {
    backends: Backends,
    engine: RangeEngine,
    cache: Arc<Cache>,
    budget: MemoryBudget,
    config: CacheConfig,
    metrics: EngineMetrics,
    inflight: Arc<Inflight>,
    shares: Arc<Shares>,
    disk: Option<Arc<DiskTier>>,
    too_large: TooLarge,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("cache_entries", &self.cache.len())
            .finish_non_exhaustive()
    }
}

enum Role {
    Lead(Leader),
    Follow(watch::Receiver<Option<Outcome>>),
}

struct Leader {
    inflight: Arc<Inflight>,
    key: String,
    tx: watch::Sender<Option<Outcome>>,
    stale: Arc<AtomicBool>,
}

impl Leader {
    fn publish(&self, outcome: Outcome) {
        self.tx.send_replace(Some(outcome));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let mut map = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if map
            .get(&self.key)
            .is_some_and(|f| f.rx.same_channel(&self.tx.subscribe()))
        {
            map.remove(&self.key);
        }
    }
}

impl Reader {
    /// A reader over `backends` with a fresh cache (holding plans within
    /// `limits`) and a fresh arena of `cache.memory_budget` bytes.
    pub fn new(
        backends: Backends,
        engine: EngineConfig,
        cache: CacheConfig,
        limits: PlanLimits,
        metrics: EngineMetrics,
    ) -> std::io::Result<Self> {
        let arena = crate::arena::Arena::new(cache.memory_budget.0, cache.segment_size.0)?;
        let budget = MemoryBudget::new(arena, cache.memory_wait);
        metrics.memory.budget.set(budget.total() as i64);
        let store = Arc::new(Cache::with_policy(
            cache.policy,
            limits,
            metrics.cache.clone(),
            metrics.prefetch.clone(),
        ));
        let shares = Shares::new(
            ShareLimits {
                client_bytes: cache.client_share(),
                clients_bytes: cache.clients_share(),
                client_requests: engine.client_concurrency(),
                wait: cache.memory_wait,
                request_wait: engine.request_wait,
            },
            metrics.share.clone(),
        );
        let disk = DiskTier::start(&cache.disk, metrics.disk.clone())?;
        Ok(Reader {
            disk,
            shares,
            backends,
            engine: RangeEngine::new(engine, metrics.storage.clone()),
            budget,
            cache: store,
            config: cache,
            metrics,
            inflight: Arc::new(Mutex::new(HashMap::new())),
            too_large: TooLarge::default(),
        })
    }

    /// The RangeEngine.
    pub fn range_engine(&self) -> &RangeEngine {
        &self.engine
    }

    /// The shared-memory arena every payload byte lives in.
    pub fn arena(&self) -> &Arc<crate::arena::Arena> {
        self.budget.arena()
    }

    /// The budget, the cache to evict from, and `client` to charge.
    fn memory(&self, client: &Arc<ClientShare>, whole: bool) -> Memory {
        Memory {
            budget: self.budget.clone(),
            evict: self.cache.clone(),
            client: client.clone(),
            whole,
        }
    }

    /// The (instrumented) backend for `uri`.
    pub fn storage(&self, uri: &ObjectUri) -> Result<Arc<dyn Storage>, ReadError> {
        let inner = self.backends.for_uri(uri)?;
        Ok(Arc::new(Instrumented::new(
            inner,
            self.metrics.storage.clone(),
        )))
    }

    /// The cache.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// The clients' shares: one [`ClientShare`] per connection.
    pub fn shares(&self) -> &Arc<Shares> {
        &self.shares
    }

    /// The memory budget.
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Updates gauges that are read off state (call before a scrape).
    pub fn refresh_gauges(&self) {
        let b = &self.budget;
        self.metrics
            .memory
            .reserved
            .set((b.total() - b.available().min(b.total())) as i64);
        let arena = b.arena();
        self.metrics
            .memory
            .largest_free
            .set(arena.largest_free() as i64);
        self.metrics
            .memory
            .segments
            .set(arena.segments().len() as i64);
    }

    /// The largest object the cache keeps whole.
    pub fn max_cached(&self) -> u64 {
        // An extent lies within one arena segment: larger objects are
        // streamed part by part instead of buffered.
        self.config
            .max_object_size()
            .min(self.budget.max_reservation())
    }

    /// The largest object a ranged read widens to (0: none).
    fn widen_max(&self) -> u64 {
        self.config.widen_range_max.0.min(self.max_cached())
    }

    /// How long an object stays noted as too large to widen.
    fn note_ttl(&self) -> std::time::Duration {
        self.config
            .revalidate_after
            .max(std::time::Duration::from_secs(1))
    }

    /// Reads `range` of `uri` (the whole object if `None`) for `client`:
    /// what the output's bytes pin is charged to the client's share for as
    /// long as any clone of them lives. `whole`: the client will hold every
    /// part of a streamed object at once (shared-memory delivery), so its
    /// whole size is charged before the first part.
    pub fn read<'a>(
        &'a self,
        uri: &'a ObjectUri,
        range: Option<Range<u64>>,
        no_cache: bool,
        client: &'a Arc<ClientShare>,
        whole: bool,
    ) -> futures::future::BoxFuture<'a, Result<ReadOutput, ReadError>> {
        Box::pin(self.read_inner(uri, range, no_cache, (client, whole)))
    }

    async fn read_inner(
        &self,
        uri: &ObjectUri,
        range: Option<Range<u64>>,
        no_cache: bool,
        client: For<'_>,
    ) -> Result<ReadOutput, ReadError> {
        let storage = self.storage(uri)?;
        if no_cache {
            return self.uncached(storage, uri, range, client).await;
        }
        let key = uri.to_string();
        loop {
            let cached = self.cache.get(&key);
            if let Some(obj) = cached
                && self
                    .still_valid(storage.clone(), uri.clone(), obj.clone())
                    .await?
            {
                self.metrics.cache.hits.inc();
                let pin = self.pin(uri, client.0, &obj).await?;
                return slice(uri, &obj, range, Source::Cache, pin);
            }
            // A range leads (and widens) unless widening is off, the object
            // is known to be too large, or the range is empty (no bytes:
            // nothing to learn or cache).
            let on_its_own = range.as_ref().is_some_and(|r| {
                !(r.start == 0 && r.end == u64::MAX)
                    && (r.is_empty()
                        || self.widen_max() == 0
                        || self.too_large.noted(&key, self.note_ttl()))
            });
            if on_its_own {
                self.metrics.cache.misses.inc();
                return self.uncached(storage, uri, range, client).await;
            }
            match self.role(&key) {
                Role::Lead(leader) => {
                    return self.lead(leader, storage, uri, range, client).await;
                }
                Role::Follow(mut rx) => {
                    let outcome = match rx.wait_for(Option::is_some).await {
                        Ok(v) => v.clone(),
                        Err(_) => continue, // the leader was cancelled: try again
                    };
                    match outcome {
                        Some(Outcome::Cached(obj)) => {
                            self.metrics.cache.coalesced.inc();
                            let pin = self.pin(uri, client.0, &obj).await?;
                            return slice(uri, &obj, range, Source::Coalesced, pin);
                        }
                        Some(Outcome::TooLarge) => {
                            return self.uncached(storage, uri, range, client).await;
                        }
                        Some(Outcome::Failed(e)) => return Err(e),
                        Some(Outcome::Stale) | None => continue,
                    }
                }
            }
        }
    }

    fn role(&self, key: &str) -> Role {
        let mut map = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = map.get_mut(key) {
            flight.joined += 1;
            return Role::Follow(flight.rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        let stale = Arc::new(AtomicBool::new(false));
        map.insert(
            key.to_owned(),
            Flight {
                rx,
                stale: stale.clone(),
                joined: 0,
            },
        );
        Role::Lead(Leader {
            inflight: self.inflight.clone(),
            key: key.to_owned(),
            tx,
            stale,
        })
    }

    async fn lead(
        &self,
        leader: Leader,
        storage: Arc<dyn Storage>,
        uri: &ObjectUri,
        range: Option<Range<u64>>,
        client: For<'_>,
    ) -> Result<ReadOutput, ReadError> {
        self.metrics.cache.misses.inc();
        let leader = match &self.disk {
            Some(disk) => match self
                .read_from_disk(disk, leader, &storage, uri, range.clone(), client)
                .await?
            {
                Ok(served) => return Ok(served),
                Err(leader) => leader,
            },
            None => leader,
        };
        // A whole read fetches the object; a ranged one its range, widened
        // to the object if that is small enough.
        let ranged = range
            .clone()
            .filter(|r| !(r.start == 0 && r.end == u64::MAX));
        let widened = ranged.is_some();
        match self
            .engine
            .fetch_widening(
                storage,
                uri,
                ranged,
                &self.memory(client.0, client.1),
                self.max_cached(),
                self.widen_max(),
            )
            .await
        {
            Ok(Fetched::Buffered {
                meta,
                range: got,
                data,
                hold,
            }) if got == (0..meta.size) => {
                if widened {
                    self.metrics.cache.widened.inc();
                }
                let got = Got {
                    meta,
                    data,
                    hold,
                    source: Source::Backend,
                };
                self.finish_lead(leader, uri, range, got)
            }
            Ok(fetched) => {
                // Just the range of an object too large to widen, or an
                // object too large to cache: ranges of it go alone from now
                // on; whoever joined a range reads on its own (a whole read
                // may still cache it), whoever joined a whole read streams.
                self.too_large.note(&leader.key, self.note_ttl());
                leader.publish(if widened {
                    Outcome::Stale
                } else {
                    Outcome::TooLarge
                });
                Ok(unkept(fetched))
            }
            Err(e) => {
                self.note_error(&e);
                leader.publish(Outcome::Failed(e.clone()));
                Err(e)
            }
        }
    }

    /// Caches what a leader fetched, unless an invalidation overtook it;
    /// then only its own reader gets the bytes, uncached.
    fn finish_lead(
        &self,
        leader: Leader,
        uri: &ObjectUri,
        range: Option<Range<u64>>,
        got: Got,
    ) -> Result<ReadOutput, ReadError> {
        let Got {
            meta,
            data,
            hold,
            source,
        } = got;
        let admit = source == Source::Backend;
        match self.cache_unless_stale(&leader, &meta, &data, admit) {
            Some(obj) => {
                leader.publish(Outcome::Cached(obj.clone()));
                // The buffer's charge becomes the entry's: no wait, the
                // client holds these bytes already.
                let pin = hold.client().pin_now(&obj);
                drop(hold);
                slice(uri, &obj, range, source, pin)
            }
            None => {
                self.metrics.cache.invalidations.inc();
                leader.publish(Outcome::Stale);
                let range = clamp_range(uri, range, meta.size)?;
                let pinned = data.len() as u64;
                let body = hold
                    .attach(data)
                    .slice(range.start as usize..range.end as usize);
                Ok(ReadOutput {
                    range,
                    meta,
                    body: Body::Bytes(body),
                    source: Source::Uncached,
                    pin: None,
                    pinned,
                })
            }
        }
    }

    /// Caches what `leader` fetched, unless an invalidation overtook it.
    fn cache_unless_stale(
        &self,
        leader: &Leader,
        meta: &ObjectMeta,
        data: &Bytes,
        admit: bool,
    ) -> Option<Arc<CachedObject>> {
        // The same lock `invalidate` holds while it marks flights stale and
        // empties the cache: one or the other comes first, whole.
        let _flights = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        (!leader.stale.load(Ordering::SeqCst)).then(|| {
            if admit && let Some(disk) = &self.disk {
                disk.admit(&leader.key, meta, data);
            }
            self.cache
                .insert(leader.key.clone(), meta.clone(), data.clone())
        })
    }

    async fn uncached(
        &self,
        storage: Arc<dyn Storage>,
        uri: &ObjectUri,
        range: Option<Range<u64>>,
        client: For<'_>,
    ) -> Result<ReadOutput, ReadError> {
        let fetched = self
            .engine
            .fetch(
                storage,
                uri,
                range,
                &self.memory(client.0, client.1),
                self.max_cached(),
            )
            .await;
        let fetched = fetched.inspect_err(|e| self.note_error(e))?;
        Ok(unkept(fetched))
    }

    /// Pins a cached entry for `client` (charged its size), waiting for
    /// room in the client's share.
    async fn pin(
        &self,
        uri: &ObjectUri,
        client: &Arc<ClientShare>,
        obj: &Arc<CachedObject>,
    ) -> Result<Hold, ReadError> {
        client.pin(obj).await.map_err(|e| {
            self.metrics.memory.exhausted.inc();
            ReadError::memory(uri, e)
        })
    }

    fn note_error(&self, e: &ReadError) {
        if matches!(e, ReadError::Memory { .. }) {
            self.metrics.memory.exhausted.inc();
        }
    }

    /// The metadata of `uri`: a cached entry's while it is fresh (as a read
    /// of it would be served), else the backend's, which also revalidates
    /// or drops the entry. Not a use of the entry for eviction.
    pub async fn head(&self, uri: &ObjectUri) -> Result<ObjectMeta, ReadError> {
        let storage = self.storage(uri)?;
        let cached = self.cache.peek(&uri.to_string());
        if let Some(obj) = &cached
            && obj.is_fresh(&self.cache, self.config.revalidate_after)
        {
            return Ok(obj.meta.clone());
        }
        let current = storage.head(uri).await;
        if let Some(obj) = cached {
            let changed = match &current {
                Ok(meta) => !obj.same_version(meta),
                Err(e) => e.kind() == sluice_storage::ErrorKind::NotFound,
            };
            if changed {
                self.metrics.cache.invalidations.inc();
                self.cache.remove(&uri.to_string());
            } else if current.is_ok() {
                obj.touch(&self.cache);
            }
        }
        Ok(current?)
    }

    /// Fresh, or revalidated against the backend; drops a changed entry.
    async fn still_valid(
        &self,
        storage: Arc<dyn Storage>,
        uri: ObjectUri,
        obj: Arc<CachedObject>,
    ) -> Result<bool, ReadError> {
        let key = uri.to_string();
        if obj.is_fresh(&self.cache, self.config.revalidate_after) {
            return Ok(true);
        }
        match storage.head(&uri).await {
            Ok(current) if obj.same_version(&current) => {
                obj.touch(&self.cache);
                Ok(true)
            }
            Ok(_) => {
                self.metrics.cache.invalidations.inc();
                self.cache.remove(&key);
                Ok(false)
            }
            Err(e) => {
                if e.kind() == sluice_storage::ErrorKind::NotFound {
                    self.metrics.cache.invalidations.inc();
                    self.cache.remove(&key);
                }
                Err(e.into())
            }
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &EngineMetrics {
        &self.metrics
    }

    /// How many reads joined the fetch of `key` in flight now (0 when none
    /// is): what a test waits on to know a read is following.
    pub fn joined(&self, key: &str) -> usize {
        let map = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key).map_or(0, |f| f.joined)
    }

    /// Forgets `uri` (after a write or delete through the daemon),
    /// including what a fetch still in flight would have cached.
    pub fn invalidate(&self, uri: &ObjectUri) {
        let key = uri.to_string();
        let mut flights = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = flights.remove(&key) {
            flight.stale.store(true, Ordering::SeqCst);
        }
        self.cache.remove(&key);
        if let Some(disk) = &self.disk {
            disk.remove(&key);
        }
        self.too_large.forget_key(&key);
    }

    /// Forgets everything under `prefix`, in the cache and in flight.
    pub fn invalidate_prefix(&self, prefix: &ObjectUri) -> usize {
        let prefix = prefix.to_string();
        let mut flights = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        flights.retain(|key, flight| {
            let keep = !key.starts_with(&prefix);
            if !keep {
                flight.stale.store(true, Ordering::SeqCst);
            }
            keep
        });
        if let Some(disk) = &self.disk {
            disk.remove_prefix(&prefix);
        }
        self.too_large.forget(|k| !k.starts_with(&prefix));
        self.cache.remove_prefix(&prefix)
    }
}

/// What a fetch got, answered as is and not cached.
fn unkept(fetched: Fetched) -> ReadOutput {
    match fetched {
        Fetched::Buffered {
            meta,
            range,
            data,
            hold,
        } => ReadOutput {
            meta,
            range,
            pinned: data.len() as u64,
            body: Body::Bytes(hold.attach(data)),
            source: Source::Uncached,
            pin: None,
        },
        Fetched::Streaming { meta, range, body } => ReadOutput {
            meta,
            range,
            body: Body::Stream(body),
            source: Source::Uncached,
            pin: None,
            pinned: 0,
        },
    }
}

/// `range` of a cached object; the bytes carry the client's pin of it.
fn slice(
    uri: &ObjectUri,
    obj: &Arc<CachedObject>,
    range: Option<Range<u64>>,
    source: Source,
    pin: Hold,
) -> Result<ReadOutput, ReadError> {
    let r = clamp_range(uri, range, obj.meta.size)?;
    let body = pin
        .attach(obj.data.clone())
        .slice(r.start as usize..r.end as usize);
    Ok(ReadOutput {
        meta: obj.meta.clone(),
        body: Body::Bytes(body),
        range: r,
        source,
        pin: Some(obj.clone()),
        pinned: obj.data.len() as u64,
    })
}

mod disk;
mod prefetch;
#[cfg(test)]
mod tests;
mod too_large;

use too_large::TooLarge;
