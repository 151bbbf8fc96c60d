//! The engine's face: one [`Engine`] owns the backends, the arena, the
//! cache with its epoch plans, the RangeEngine and the prefetcher. The
//! daemon's API and session code call it — to read (through the
//! [`Reader`], the read path), to reach a backend for metadata and writes,
//! to submit plans — and never build any of these themselves.

use std::sync::Arc;

use sluice_storage::{Backends, ObjectMeta, ObjectUri, Storage};
use tokio::sync::{Notify, Semaphore};

use crate::budget::MemoryBudget;
use crate::cache::Cache;
use crate::config::{CacheConfig, EngineConfig, PrefetchConfig};
use crate::error::ReadError;
use crate::metrics::{EngineMetrics, ShareMetrics};
use crate::plans::{PlanError, PlanKey, Plans, Prefetched};
use crate::range::Memory;
use crate::reader::{ReadOutput, Reader};
use crate::share::{ClientShare, ShareLimits, Shares};

/// The engine.
pub struct Engine {
    reader: Reader,
    prefetch: Prefetch,
}

/// What prefetches are made with.
struct Prefetch {
    config: PrefetchConfig,
    /// Charged for prefetches in flight; its own request slots; no waits.
    client: Arc<ClientShare>,
    /// The arena, with no wait for memory.
    budget: MemoryBudget,
    /// Woken when a plan changes or moves.
    wake: Arc<Notify>,
    /// Prefetch's own request slots.
    lane: Arc<Semaphore>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("reader", &self.reader)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over `backends`, with a fresh arena of
    /// `cache.memory_budget` bytes, an empty cache and no plans. Its
    /// prefetcher runs once [`Engine::run_prefetcher`] is spawned.
    pub fn new(
        backends: Backends,
        engine: EngineConfig,
        cache: CacheConfig,
        prefetch: PrefetchConfig,
        metrics: EngineMetrics,
    ) -> std::io::Result<Self> {
        let limits = prefetch.limits(cache.memory_budget.0);
        let request_wait = engine.request_wait;
        let reader = Reader::new(backends, engine, cache, limits, metrics)?;
        let lanes = prefetch.concurrency.max(1);
        let shares = Shares::new(
            // Charges here are what a fetch expects to need (a whole first
            // part before the size is known), not memory: what bounds
            // prefetch's memory is the arena, reserved without waiting.
            ShareLimits {
                client_bytes: u64::MAX,
                clients_bytes: u64::MAX,
                client_requests: lanes,
                wait: std::time::Duration::ZERO,
                request_wait,
            },
            ShareMetrics::default(),
        );
        let lane = Arc::new(Semaphore::new(lanes));
        let prefetch = Prefetch {
            client: shares.client_with_lane(lane.clone()),
            lane,
            budget: MemoryBudget::new(reader.arena().clone(), std::time::Duration::ZERO),
            wake: Arc::new(Notify::new()),
            config: prefetch,
        };
        Ok(Engine { reader, prefetch })
    }

    /// The read path.
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// Reads `range` of `uri` for `client` (see [`Reader::read`]).
    pub fn read<'a>(
        &'a self,
        uri: &'a ObjectUri,
        range: Option<std::ops::Range<u64>>,
        no_cache: bool,
        client: &'a Arc<ClientShare>,
        whole: bool,
    ) -> futures::future::BoxFuture<'a, Result<ReadOutput, ReadError>> {
        self.reader.read(uri, range, no_cache, client, whole)
    }

    /// The (instrumented) backend of `uri`, for metadata, listings and
    /// writes; an error for a URI no backend serves.
    pub fn backend(&self, uri: &ObjectUri) -> Result<Arc<dyn Storage>, ReadError> {
        self.reader.storage(uri)
    }

    /// The metadata of `uri`, from the cache while its entry is fresh (see
    /// [`Reader::head`]).
    pub async fn head(&self, uri: &ObjectUri) -> Result<ObjectMeta, ReadError> {
        self.reader.head(uri).await
    }

    /// The shared-memory arena every payload byte lives in.
    pub fn arena(&self) -> &Arc<crate::arena::Arena> {
        self.reader.arena()
    }

    /// The memory budget.
    pub fn budget(&self) -> &MemoryBudget {
        self.reader.budget()
    }

    /// The clients' shares: one [`ClientShare`] per connection.
    pub fn shares(&self) -> &Arc<Shares> {
        self.reader.shares()
    }

    /// The cache.
    pub fn cache(&self) -> &Arc<Cache> {
        self.reader.cache()
    }

    /// The metrics.
    pub fn metrics(&self) -> &EngineMetrics {
        self.reader.metrics()
    }

    /// The largest object the cache keeps whole.
    pub fn max_cached(&self) -> u64 {
        self.reader.max_cached()
    }

    /// Forgets `uri` (after a write or delete), in the cache and in flight.
    pub fn invalidate(&self, uri: &ObjectUri) {
        self.reader.invalidate(uri);
    }

    /// Forgets everything under `prefix`; returns how many cache entries.
    pub fn invalidate_prefix(&self, prefix: &ObjectUri) -> usize {
        self.reader.invalidate_prefix(prefix)
    }

    /// Updates gauges that are read off state (call before a scrape).
    pub fn refresh_gauges(&self) {
        self.reader.refresh_gauges();
        let (plans, items) = self.cache().plans(|p| {
            p.expire_orphans(std::time::Instant::now());
            (p.len(), p.ahead_items())
        });
        let m = &self.metrics().prefetch;
        m.plans.set(plans as i64);
        m.lookahead_items.set(items as i64);
        let in_flight = self.requests_in_flight() as i64;
        self.metrics().storage.in_flight.set(in_flight);
    }

    /// Backend requests in flight now, demand and prefetch.
    pub fn requests_in_flight(&self) -> usize {
        let range = self.reader.range_engine();
        let demand = range.config().max_concurrency.max(1) - range.free_slots();
        let lanes = self.prefetch.config.concurrency.max(1);
        demand + lanes.saturating_sub(self.prefetch.lane.available_permits())
    }

    /// Each backend endpoint's adaptive concurrency limit now.
    pub fn endpoint_limits(&self) -> Vec<(String, usize)> {
        self.reader.range_engine().endpoint_limits()
    }

    /// The prefetch settings.
    pub fn prefetch_config(&self) -> &PrefetchConfig {
        &self.prefetch.config
    }

    /// Runs `f` on the live plans, then wakes the prefetcher.
    pub fn plans<T>(&self, f: impl FnOnce(&mut Plans) -> T) -> T {
        let out = self.cache().plans(f);
        self.prefetch.wake.notify_one();
        out
    }

    /// Appends a page to a plan (see [`Plans::append`]).
    pub fn submit_plan(
        &self,
        key: PlanKey,
        job: &str,
        items: &[Option<Arc<str>>],
        first: bool,
        last: bool,
    ) -> Result<u64, PlanError> {
        self.plans(|p| p.append(key, job, items, first, last))
    }

    /// What wakes the prefetcher.
    pub(crate) fn prefetch_wake(&self) -> &Arc<Notify> {
        &self.prefetch.wake
    }

    /// Reads `key` (a canonical URI) into the cache ahead of its use, at
    /// prefetch priority: request slots of prefetch's own, no wait for
    /// memory, and evicting only what no plan needs within its look-ahead.
    pub async fn prefetch(&self, key: &str) -> Prefetched {
        let memory = Memory {
            budget: self.prefetch.budget.clone(),
            evict: self.cache().for_prefetch(),
            client: self.prefetch.client.clone(),
            whole: false,
        };
        self.reader.prefetch(key, memory).await
    }

    /// The prefetcher: runs until the task is dropped (see
    /// [`crate::prefetch`]).
    pub async fn run_prefetcher(self: Arc<Self>) {
        crate::prefetch::run(self).await;
    }
}
