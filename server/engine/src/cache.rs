//! The node-wide object cache (RAM tier).
//!
//! Whole objects, keyed by URI, in LRU order. An entry carries the metadata
//! it was fetched with (etag, size, mtime); the reader revalidates an entry
//! against the backend once it is older than `revalidate_after` and drops it
//! when any of the three changed, so a changed object is never served stale
//! beyond that interval (`0s`: never).
//!
//! The cache does not count bytes against a limit of its own: each entry's
//! bytes are an extent of the shared-memory arena that is the
//! [`MemoryBudget`](crate::budget::MemoryBudget), and the budget evicts
//! through [`Evict`] when a reservation does not fit. An evicted object that
//! is still being sent or is leased stays in memory — its extent is not
//! freed — until the last user lets go, so the budget stays exact. Leased
//! entries are skipped by eviction altogether.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lru::LruCache;
use sluice_storage::ObjectMeta;

use crate::budget::Evict;
use crate::metrics::CacheMetrics;

/// One cached object.
#[derive(Debug)]
pub struct CachedObject {
    /// Metadata as of the fetch.
    pub meta: ObjectMeta,
    /// The whole object.
    pub data: Bytes,
    /// Milliseconds after the cache's epoch when the entry was last validated.
    validated_ms: AtomicU64,
}

/// The cache.
#[derive(Debug)]
pub struct Cache {
    entries: std::sync::Mutex<LruCache<String, Arc<CachedObject>>>,
    epoch: Instant,
    metrics: CacheMetrics,
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
        self.meta.size == current.size
            && self.meta.etag == current.etag
            && self.meta.last_modified == current.last_modified
            && self.meta.version == current.version
    }

    /// Marks the entry validated now.
    pub fn touch(&self, cache: &Cache) {
        self.validated_ms.store(cache.now_ms(), Ordering::Relaxed);
    }
}

impl Cache {
    /// An empty cache reporting to `metrics`.
    pub fn new(metrics: CacheMetrics) -> Self {
        Cache {
            entries: std::sync::Mutex::new(LruCache::unbounded()),
            epoch: Instant::now(),
            metrics,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The LRU map; a poisoned lock is recovered (ARCHITECTURE.md §8.1).
    fn entries(&self) -> MutexGuard<'_, LruCache<String, Arc<CachedObject>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry for `key`, marked most recently used.
    pub fn get(&self, key: &str) -> Option<Arc<CachedObject>> {
        self.entries().get(key).cloned()
    }

    /// Caches `data` under `key`, replacing an older version.
    pub fn insert(&self, key: String, meta: ObjectMeta, data: Bytes) -> Arc<CachedObject> {
        let obj = Arc::new(CachedObject {
            meta,
            data,
            validated_ms: AtomicU64::new(self.now_ms()),
        });
        let size = obj.data.len() as u64;
        let old = self.entries().put(key, obj.clone());
        self.metrics.bytes.inc_by(size as i64);
        self.metrics.entries.inc();
        if let Some(old) = old {
            self.forget(&old);
        }
        obj
    }

    /// Drops the entry for `key`; true when there was one.
    pub fn remove(&self, key: &str) -> bool {
        let old = self.entries().pop(key);
        old.map(|o| self.forget(&o)).is_some()
    }

    /// Drops every entry whose key starts with `prefix`; returns how many.
    pub fn remove_prefix(&self, prefix: &str) -> usize {
        let mut entries = self.entries();
        let keys: Vec<String> = entries
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            if let Some(o) = entries.pop(k) {
                self.forget(&o);
            }
        }
        keys.len()
    }

    /// Number of cached objects.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn forget(&self, obj: &CachedObject) {
        self.metrics.bytes.dec_by(obj.data.len() as i64);
        self.metrics.entries.dec();
    }
}

impl Evict for Cache {
    /// Drops the least recently used entry that nobody pins. An entry is
    /// pinned while a lease (or a read in progress) holds its `Arc`: evicting
    /// it would free no memory — the extent lives on with the lease — and
    /// would only lose the entry for later readers.
    fn evict_one(&self) -> bool {
        let mut entries = self.entries();
        let victim = entries
            .iter()
            .rev()
            .find(|(_, obj)| Arc::strong_count(obj) == 1)
            .map(|(k, _)| k.clone());
        let Some(obj) = victim.and_then(|k| entries.pop(&k)) else {
            return false;
        };
        drop(entries);
        self.forget(&obj);
        self.metrics.evictions.inc();
        self.metrics.evicted_bytes.inc_by(obj.data.len() as u64);
        true
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
