//! The node-wide object cache (RAM tier).
//!
//! Whole objects, keyed by URI. An entry carries the metadata it was
//! fetched with (etag, size, mtime); the reader revalidates an entry against
//! the backend once it is older than `revalidate_after` and drops it when
//! any of the three changed, so a changed object is never served stale
//! beyond that interval (`0s`: never).
//!
//! The cache does not count bytes against a limit of its own: each entry's
//! bytes are an extent of the shared-memory arena that is the
//! [`MemoryBudget`](crate::budget::MemoryBudget), and the budget evicts
//! through [`Evict`] when a reservation does not fit. An evicted object that
//! is still being sent or is leased stays in memory — its extent is not
//! freed — until the last user lets go, so the budget stays exact. Leased
//! entries are skipped by eviction altogether.
//!
//! Which entry goes is the [`Policy`]'s choice (`cache.policy`):
//! - [`Policy::Lru`]: least recently used first;
//! - [`Policy::Plans`] (the default): Belady's rule over the clients' epoch
//!   plans ([`crate::plans`]) — first what no live plan reads again (least
//!   recently used first), then what is read furthest in the future. With no
//!   plan submitted this is exactly LRU.
//!
//! The plans live under the cache's lock, so that what is cached and when
//! it is next used change together.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use sluice_storage::ObjectMeta;

use crate::budget::Evict;
use crate::metrics::{CacheMetrics, PrefetchMetrics};
use crate::plans::{PlanLimits, Plans};

/// Which entry eviction picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Least recently used first; plans only drive prefetch.
    Lru,
    /// Belady's rule over live plans, LRU for what no plan reads again.
    #[default]
    Plans,
}

/// Whether `current` describes the object version `cached` was taken from:
/// size, etag, last-modified time and version id all equal (the rule of
/// both cache tiers).
pub fn same_version(cached: &ObjectMeta, current: &ObjectMeta) -> bool {
    cached.size == current.size
        && cached.etag == current.etag
        && cached.last_modified == current.last_modified
        && cached.version == current.version
}

/// One cached object.
#[derive(Debug)]
pub struct CachedObject {
    /// Metadata as of the fetch.
    pub meta: ObjectMeta,
    /// The whole object.
    pub data: Bytes,
    /// Milliseconds after the cache's epoch when the entry was last validated.
    validated_ms: AtomicU64,
    /// Cached by a prefetch and not read since.
    prefetched: AtomicBool,
}

/// The cache.
#[derive(Debug)]
pub struct Cache {
    inner: std::sync::Mutex<Inner>,
    policy: Policy,
    epoch: Instant,
    metrics: CacheMetrics,
    prefetch: PrefetchMetrics,
}

#[derive(Debug)]
struct Inner {
    entries: HashMap<Arc<str>, Arc<CachedObject>>,
    /// Every entry by recency ([`Policy::Lru`] only).
    recency: LruCache<Arc<str>, ()>,
    plans: Plans,
}

impl CachedObject {
    /// Whether the entry was validated less than `ttl` ago.
    pub fn is_fresh(&self, cache: &Cache, ttl: Duration) -> bool {
        let age = cache
            .now_ms()
            .saturating_sub(self.validated_ms.load(Ordering::Relaxed));
        u128::from(age) < ttl.as_millis()
    }

    /// Whether `current` metadata describes the same object version.
    pub fn same_version(&self, current: &ObjectMeta) -> bool {
        same_version(&self.meta, current)
    }

    /// Marks the entry validated now.
    pub fn touch(&self, cache: &Cache) {
        self.validated_ms.store(cache.now_ms(), Ordering::Relaxed);
    }

    /// Marks the entry as cached by a prefetch.
    pub fn mark_prefetched(&self) {
        self.prefetched.store(true, Ordering::Relaxed);
    }
}

impl Cache {
    /// An empty LRU cache reporting to `metrics`, with no plan limits.
    pub fn new(metrics: CacheMetrics) -> Self {
        Self::with_policy(
            Policy::Lru,
            PlanLimits::default(),
            metrics,
            PrefetchMetrics::default(),
        )
    }

    /// An empty cache evicting by `policy`.
    pub fn with_policy(
        policy: Policy,
        limits: PlanLimits,
        metrics: CacheMetrics,
        prefetch: PrefetchMetrics,
    ) -> Self {
        Cache {
            inner: std::sync::Mutex::new(Inner {
                entries: HashMap::new(),
                recency: LruCache::unbounded(),
                plans: Plans::new(limits),
            }),
            policy,
            epoch: Instant::now(),
            metrics,
            prefetch,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The state; a poisoned lock is recovered (ARCHITECTURE.md §8.1).
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the live plans (under the cache's lock: keep it short).
    pub fn plans<T>(&self, f: impl FnOnce(&mut Plans) -> T) -> T {
        let mut inner = self.inner();
        let out = f(&mut inner.plans);
        self.prefetch.plan_items.set(inner.plans.items() as i64);
        self.prefetch
            .lookahead_bytes
            .set(inner.plans.ahead_bytes() as i64);
        out
    }

    /// Runs `f` on the live plans, with the size of each cached object.
    pub fn plans_with_sizes<T>(
        &self,
        f: impl FnOnce(&mut Plans, &dyn Fn(&str) -> Option<u64>) -> T,
    ) -> T {
        let mut inner = self.inner();
        let Inner { entries, plans, .. } = &mut *inner;
        let size = |k: &str| entries.get(k).map(|o| o.meta.size);
        f(plans, &size)
    }

    /// The entry for `key`, marked used (a demand read).
    pub fn get(&self, key: &str) -> Option<Arc<CachedObject>> {
        let mut inner = self.inner();
        let obj = inner.entries.get(key).cloned()?;
        inner.recency.promote(key);
        inner.plans.on_hit(key);
        drop(inner);
        if obj.prefetched.swap(false, Ordering::Relaxed) {
            self.prefetch.hits.inc();
        }
        Some(obj)
    }

    /// The entry for `key`, not marked used.
    pub fn peek(&self, key: &str) -> Option<Arc<CachedObject>> {
        self.inner().entries.get(key).cloned()
    }

    /// Caches `data` under `key`, replacing an older version.
    pub fn insert(&self, key: String, meta: ObjectMeta, data: Bytes) -> Arc<CachedObject> {
        let obj = Arc::new(CachedObject {
            meta,
            data,
            validated_ms: AtomicU64::new(self.now_ms()),
            prefetched: AtomicBool::new(false),
        });
        let size = obj.data.len() as u64;
        let key: Arc<str> = Arc::from(key);
        let old = {
            let mut inner = self.inner();
            let old = inner.entries.insert(key.clone(), obj.clone());
            if old.is_some() {
                inner.plans.on_remove(&key);
            }
            if self.policy == Policy::Lru {
                inner.recency.put(key.clone(), ());
            }
            inner.plans.on_insert(&key);
            old
        };
        self.metrics.bytes.inc_by(size as i64);
        self.metrics.entries.inc();
        if let Some(old) = old {
            self.forget(&old);
        }
        obj
    }

    fn take(inner: &mut Inner, key: &str) -> Option<Arc<CachedObject>> {
        let obj = inner.entries.remove(key)?;
        inner.recency.pop(key);
        inner.plans.on_remove(key);
        Some(obj)
    }

    /// Drops the entry for `key`; true when there was one.
    pub fn remove(&self, key: &str) -> bool {
        let old = Self::take(&mut self.inner(), key);
        old.map(|o| self.forget(&o)).is_some()
    }

    /// Drops every entry whose key starts with `prefix`; returns how many.
    pub fn remove_prefix(&self, prefix: &str) -> usize {
        let mut inner = self.inner();
        let keys: Vec<Arc<str>> = inner
            .entries
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        for k in &keys {
            if let Some(o) = Self::take(&mut inner, k) {
                self.forget(&o);
            }
        }
        keys.len()
    }

    /// Number of cached objects.
    pub fn len(&self) -> usize {
        self.inner().entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn forget(&self, obj: &CachedObject) {
        self.metrics.bytes.dec_by(obj.data.len() as i64);
        self.metrics.entries.dec();
    }

    /// Evicts one entry that nobody pins and that is not used within
    /// `floor` plan items. An entry is pinned while a lease (or a read in
    /// progress) holds its `Arc`: evicting it would free no memory — the
    /// extent lives on with the lease — and would only lose the entry for
    /// later readers.
    fn evict_above(&self, floor: u32) -> bool {
        let mut inner = self.inner();
        let victim = {
            let entries = &inner.entries;
            let evictable = |k: &str| entries.get(k).is_some_and(|o| Arc::strong_count(o) == 1);
            match self.policy {
                Policy::Lru => inner
                    .recency
                    .iter()
                    .rev()
                    .find(|(k, ())| evictable(k))
                    .map(|(k, ())| k.clone()),
                Policy::Plans => inner.plans.victim(floor, &evictable),
            }
        };
        let Some(obj) = victim.and_then(|k| Self::take(&mut inner, &k)) else {
            return false;
        };
        drop(inner);
        self.forget(&obj);
        self.metrics.evictions.inc();
        self.metrics.evicted_bytes.inc_by(obj.data.len() as u64);
        if obj.prefetched.load(Ordering::Relaxed) {
            self.prefetch.wasted_bytes.inc_by(obj.data.len() as u64);
        }
        true
    }

    /// What a prefetch may evict: only entries outside every look-ahead
    /// window (so never one needed sooner than what is being prefetched).
    pub fn for_prefetch(self: &Arc<Self>) -> Arc<dyn Evict> {
        Arc::new(PrefetchEvict(self.clone()))
    }
}

impl Evict for Cache {
    /// A demand read's eviction: the policy's victim, inside a look-ahead
    /// window only when nothing else can go.
    fn evict_one(&self) -> bool {
        self.evict_above(0)
    }
}

/// The cache as a prefetch sees it.
struct PrefetchEvict(Arc<Cache>);

impl Evict for PrefetchEvict {
    fn evict_one(&self) -> bool {
        let floor = self.0.plans(|p| p.limits().lookahead_items);
        self.0.evict_above(floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::MemoryBudget;
    use proptest::prelude::*;

    fn meta(size: u64, etag: &str) -> ObjectMeta {
        ObjectMeta {
            uri: "file:///k".into(),
            size,
            etag: Some(etag.into()),
            last_modified: None,
            version: None,
        }
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let c = Cache::new(CacheMetrics::default());
        for k in ["a", "b", "c"] {
            c.insert(k.into(), meta(1, "e"), Bytes::from_static(b"x"));
        }
        c.get("a");
        assert!(c.evict_one());
        assert!(c.get("b").is_none(), "b was least recently used");
        assert!(c.get("a").is_some() && c.get("c").is_some());
        assert_eq!(c.metrics.evictions.get(), 1);
    }

    #[test]
    fn version_check_compares_etag_size_and_mtime() {
        let c = Cache::new(CacheMetrics::default());
        let o = c.insert("k".into(), meta(3, "v1"), Bytes::from_static(b"abc"));
        assert!(o.same_version(&meta(3, "v1")));
        assert!(!o.same_version(&meta(3, "v2")));
        assert!(!o.same_version(&meta(4, "v1")));
        let mut later = meta(3, "v1");
        later.last_modified = Some(std::time::SystemTime::now());
        assert!(!o.same_version(&later));
    }

    proptest! {
        /// Whatever the sequence of insertions, cached bytes never exceed the
        /// budget, and an entry that is leased (its `Arc` held) is never
        /// evicted: its bytes stay intact however hard the cache is pressed.
        #[test]
        fn eviction_respects_budget_and_leases(
            ops in proptest::collection::vec((0u64..6, proptest::bool::weighted(0.3)), 1..80),
            seg_pages in 6u64..12,
        ) {
            const PAGE: u64 = crate::arena::GRANULE;
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            rt.block_on(async {
                let c = Cache::new(CacheMetrics::default());
                let b = MemoryBudget::with_capacity(2 * seg_pages * PAGE, seg_pages * PAGE, Duration::from_millis(1)).unwrap();
                let mut leased: Vec<(Arc<CachedObject>, u8)> = Vec::new();
                for (i, (pages, lease)) in ops.iter().enumerate() {
                    let fill = i as u8;
                    let Ok(mut r) = b.reserve(pages * PAGE, &c).await else {
                        // Everything left is leased: the reservation must wait, not evict a lease.
                        prop_assert!(b.arena().largest_free() < pages * PAGE);
                        prop_assert_eq!(c.len(), leased.len(), "only leased entries may remain");
                        continue;
                    };
                    r.as_mut_slice().fill(fill);
                    let obj = c.insert(i.to_string(), meta(pages * PAGE, "e"), r.into_bytes());
                    if *lease {
                        leased.push((obj, fill));
                    }
                    let cached = c.metrics.bytes.get() as u64;
                    prop_assert!(cached <= b.total(), "cached {} > budget {}", cached, b.total());
                    prop_assert_eq!(b.arena().used(), cached, "every arena byte is a cached byte");
                    for (obj, fill) in &leased {
                        prop_assert!(obj.data.iter().all(|x| x == fill), "a leased extent was overwritten");
                        let key = (*fill as usize).to_string();
                        prop_assert!(c.get(&key).is_some(), "a leased entry was evicted");
                    }
                }
                Ok(())
            })?;
        }
    }
}
