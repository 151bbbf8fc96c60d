//! The read path: cache lookup and revalidation, coalesced misses, fetches.
//!
//! A whole-object read that misses becomes the *leader* for its key: it
//! fetches through the RangeEngine and publishes the outcome on a `watch`
//! channel; concurrent reads of the same key *follow* and wait for it, so one
//! object is fetched once however many readers ask (DESIGN §7). If the leader
//! is cancelled (its client went away) the channel closes and a follower
//! takes over. Objects too large to cache are streamed to each reader by its
//! own fetch. Ranged reads of uncached objects fetch just the range and are
//! not cached; ranged reads of cached objects are slices of the entry.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures::stream::BoxStream;
use sluice_storage::{Backends, ObjectMeta, ObjectUri, Storage, clamp_range};
use tokio::sync::watch;

use crate::budget::MemoryBudget;
use crate::cache::{Cache, CachedObject};
use crate::config::{CacheConfig, EngineConfig};
use crate::error::ReadError;
use crate::metrics::{EngineMetrics, Instrumented};
use crate::range::{Fetched, Memory, RangeEngine};

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
}

#[derive(Clone)]
enum Outcome {
    Cached(Arc<CachedObject>),
    TooLarge,
    Failed(ReadError),
}

type Inflight = Mutex<HashMap<String, watch::Receiver<Option<Outcome>>>>;

/// Reads objects through the cache.
pub struct Reader {
    backends: Backends,
    engine: RangeEngine,
    cache: Arc<Cache>,
    memory: Memory,
    config: CacheConfig,
    metrics: EngineMetrics,
    inflight: Arc<Inflight>,
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
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            map.remove(&self.key);
        }
    }
}

impl Reader {
    /// A reader over `backends` with a fresh cache and a fresh arena of
    /// `cache.memory_budget` bytes.
    pub fn new(
        backends: Backends,
        engine: EngineConfig,
        cache: CacheConfig,
        metrics: EngineMetrics,
    ) -> std::io::Result<Self> {
        let arena = crate::arena::Arena::new(cache.memory_budget.0, cache.segment_size.0)?;
        let budget = MemoryBudget::new(arena, cache.memory_wait);
        metrics.memory.budget.set(budget.total() as i64);
        let store = Arc::new(Cache::new(metrics.cache.clone()));
        Ok(Reader {
            backends,
            engine: RangeEngine::new(engine, metrics.storage.clone()),
            memory: Memory {
                budget,
                evict: store.clone(),
            },
            cache: store,
            config: cache,
            metrics,
            inflight: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The shared-memory arena every payload byte lives in.
    pub fn arena(&self) -> &Arc<crate::arena::Arena> {
        self.memory.budget.arena()
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
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The memory budget.
    pub fn budget(&self) -> &MemoryBudget {
        &self.memory.budget
    }

    /// Updates gauges that are read off state (call before a scrape).
    pub fn refresh_gauges(&self) {
        let b = &self.memory.budget;
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

    fn max_cached(&self) -> u64 {
        // An extent lies within one arena segment: larger objects are
        // streamed part by part instead of buffered.
        self.config
            .max_object_size()
            .min(self.memory.budget.max_reservation())
    }

    /// Reads `range` of `uri` (the whole object if `None`).
    pub fn read<'a>(
        &'a self,
        uri: &'a ObjectUri,
        range: Option<Range<u64>>,
        no_cache: bool,
    ) -> futures::future::BoxFuture<'a, Result<ReadOutput, ReadError>> {
        Box::pin(self.read_inner(uri, range, no_cache))
    }

    async fn read_inner(
        &self,
        uri: &ObjectUri,
        range: Option<Range<u64>>,
        no_cache: bool,
    ) -> Result<ReadOutput, ReadError> {
        let storage = self.storage(uri)?;
        if no_cache {
            return self.uncached(storage, uri, range).await;
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
                return slice(uri, &obj, range, Source::Cache);
            }
            let whole = range
                .as_ref()
                .is_none_or(|r| r.start == 0 && r.end == u64::MAX);
            if !whole {
                self.metrics.cache.misses.inc();
                return self.uncached(storage, uri, range).await;
            }
            match self.role(&key) {
                Role::Lead(leader) => return self.lead(leader, storage, uri, range).await,
                Role::Follow(mut rx) => {
                    let outcome = match rx.wait_for(Option::is_some).await {
                        Ok(v) => v.clone(),
                        Err(_) => continue, // the leader was cancelled: try again
                    };
                    match outcome {
                        Some(Outcome::Cached(obj)) => {
                            self.metrics.cache.coalesced.inc();
                            return slice(uri, &obj, range, Source::Coalesced);
                        }
                        Some(Outcome::TooLarge) => return self.uncached(storage, uri, range).await,
                        Some(Outcome::Failed(e)) => return Err(e),
                        None => continue,
                    }
                }
            }
        }
    }

    fn role(&self, key: &str) -> Role {
        let mut map = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = map.get(key) {
            return Role::Follow(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.to_owned(), rx);
        Role::Lead(Leader {
            inflight: self.inflight.clone(),
            key: key.to_owned(),
            tx,
        })
    }

    async fn lead(
        &self,
        leader: Leader,
        storage: Arc<dyn Storage>,
        uri: &ObjectUri,
        range: Option<Range<u64>>,
    ) -> Result<ReadOutput, ReadError> {
        self.metrics.cache.misses.inc();
        match self
            .engine
            .fetch(storage, uri, None, &self.memory, self.max_cached())
            .await
        {
            Ok(Fetched::Buffered { meta, data, .. }) => {
                let obj = self.cache.insert(leader.key.clone(), meta, data);
                leader.publish(Outcome::Cached(obj.clone()));
                slice(uri, &obj, range, Source::Backend)
            }
            Ok(Fetched::Streaming { meta, range, body }) => {
                leader.publish(Outcome::TooLarge);
                Ok(ReadOutput {
                    meta,
                    range,
                    body: Body::Stream(body),
                    source: Source::Uncached,
                    pin: None,
                })
            }
            Err(e) => {
                self.note_error(&e);
                leader.publish(Outcome::Failed(e.clone()));
                Err(e)
            }
        }
    }

    async fn uncached(
        &self,
        storage: Arc<dyn Storage>,
        uri: &ObjectUri,
        range: Option<Range<u64>>,
    ) -> Result<ReadOutput, ReadError> {
        let fetched = self
            .engine
            .fetch(storage, uri, range, &self.memory, self.max_cached())
            .await;
        let fetched = fetched.inspect_err(|e| self.note_error(e))?;
        Ok(match fetched {
            Fetched::Buffered { meta, range, data } => ReadOutput {
                meta,
                range,
                body: Body::Bytes(data),
                source: Source::Uncached,
                pin: None,
            },
            Fetched::Streaming { meta, range, body } => ReadOutput {
                meta,
                range,
                body: Body::Stream(body),
                source: Source::Uncached,
                pin: None,
            },
        })
    }

    fn note_error(&self, e: &ReadError) {
        if matches!(e, ReadError::Memory { .. }) {
            self.metrics.memory.exhausted.inc();
        }
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

    /// Forgets `uri` (after a write or delete through the daemon).
    pub fn invalidate(&self, uri: &ObjectUri) {
        self.cache.remove(&uri.to_string());
    }

    /// Forgets everything under `prefix`.
    pub fn invalidate_prefix(&self, prefix: &ObjectUri) -> usize {
        self.cache.remove_prefix(&prefix.to_string())
    }
}

fn slice(
    uri: &ObjectUri,
    obj: &Arc<CachedObject>,
    range: Option<Range<u64>>,
    source: Source,
) -> Result<ReadOutput, ReadError> {
    let r = clamp_range(uri, range, obj.meta.size)?;
    Ok(ReadOutput {
        meta: obj.meta.clone(),
        body: Body::Bytes(obj.data.slice(r.start as usize..r.end as usize)),
        range: r,
        source,
        pin: Some(obj.clone()),
    })
}
