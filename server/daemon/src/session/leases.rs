//! The leases of one session.
//!
//! A lease pins a piece of the arena for a client: it holds the `Bytes`
//! (whose owner is the arena extent, so the extent cannot be freed or reused
//! while the lease lives) and, for cached objects, the cache entry (so
//! eviction skips it instead of dropping an entry whose memory cannot be
//! reclaimed anyway). Each session may hold `lease_quota` bytes at once,
//! counted by what the leases *pin*: a lease of one byte of a cached object
//! pins — and is counted as — the whole object, once however many leases of
//! it the session holds; any other piece counts its buffer. A session holds
//! at most `max_leases` leases. A lease that does not fit waits for
//! releases, up to `lease_wait`, then fails with RESOURCE_EXHAUSTED naming
//! the limit. Dropping the table — the session ended, however it ended —
//! releases everything.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use sluice_engine::cache::CachedObject;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// Quota charged for one pinned buffer, held while any lease pins it.
struct Pinned {
    leases: usize,
    _permit: OwnedSemaphorePermit,
    _pin: Option<Arc<CachedObject>>,
    bytes: u64,
    gauge: Gauge,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        self.gauge.dec_by(self.bytes as i64);
    }
}

struct Held {
    _bytes: Bytes,
    /// The pinned buffer this lease counts against (shared by leases of
    /// one cached object), or its own charge.
    pinned: PinKey,
    _slot: OwnedSemaphorePermit,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum PinKey {
    /// A cached entry, by address (kept alive by the `Pinned` record).
    Entry(usize),
    /// A buffer of one lease.
    Lease(u64),
}

#[derive(Default)]
struct Table {
    leases: HashMap<u64, Held>,
    pinned: HashMap<PinKey, Pinned>,
}

impl Table {
    fn unpin(&mut self, key: PinKey) -> Option<Pinned> {
        let p = self.pinned.get_mut(&key)?;
        p.leases -= 1;
        if p.leases == 0 {
            return self.pinned.remove(&key);
        }
        None
    }
}

/// Leases of one session.
pub(crate) struct LeaseTable {
    quota: Arc<Semaphore>,
    quota_bytes: u64,
    slots: Arc<Semaphore>,
    max_leases: usize,
    wait: Duration,
    next: std::sync::atomic::AtomicU64,
    table: Mutex<Table>,
    gauge: Gauge,
}

impl std::fmt::Debug for LeaseTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseTable")
            .field("quota_bytes", &self.quota_bytes)
            .field("leases", &self.table().leases.len())
            .finish()
    }
}

impl LeaseTable {
    /// A table of `quota_bytes` and `max_leases`, reporting pinned bytes to
    /// `gauge`.
    pub(crate) fn new(quota_bytes: u64, max_leases: usize, wait: Duration, gauge: Gauge) -> Self {
        let permits = quota_bytes.min(Semaphore::MAX_PERMITS as u64) as usize;
        let max_leases = max_leases.clamp(1, Semaphore::MAX_PERMITS);
        LeaseTable {
            quota: Arc::new(Semaphore::new(permits)),
            quota_bytes,
            slots: Arc::new(Semaphore::new(max_leases)),
            max_leases,
            wait,
            next: std::sync::atomic::AtomicU64::new(1),
            table: Mutex::new(Table::default()),
            gauge,
        }
    }

    fn exhausted(&self, uri: &str, what: String) -> Status {
        Status::resource_exhausted(format!(
            "{uri}: {what} (waited {:?} for releases)",
            self.wait
        ))
    }

    /// Leases `bytes`, a slice of `pin` (a cached object) or of a buffer of
    /// `pinned` bytes; returns the lease id. Waits for quota, bounded.
    pub(crate) async fn lease(
        &self,
        uri: &str,
        bytes: Bytes,
        pin: Option<Arc<CachedObject>>,
        pinned: u64,
    ) -> Result<u64, Status> {
        let charge = pin.as_ref().map_or(pinned, |p| p.data.len() as u64);
        if charge > self.quota_bytes || charge > u64::from(u32::MAX) {
            return Err(Status::resource_exhausted(format!(
                "{uri}: a lease pinning {charge} bytes exceeds the session lease quota of {} bytes",
                self.quota_bytes
            )));
        }
        let deadline = tokio::time::Instant::now() + self.wait;
        let slot = tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                self.exhausted(
                    uri,
                    format!(
                        "the session holds session.max_leases = {} leases",
                        self.max_leases
                    ),
                )
            })?;
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = match &pin {
            Some(p) => PinKey::Entry(Arc::as_ptr(p) as usize),
            None => PinKey::Lease(id),
        };
        let held = Held {
            _bytes: bytes,
            pinned: key,
            _slot: slot,
        };
        // A cached object this session pins already costs nothing more.
        {
            let mut table = self.table();
            if let Some(p) = table.pinned.get_mut(&key) {
                p.leases += 1;
                table.leases.insert(id, held);
                return Ok(id);
            }
        }
        let acquire = self.quota.clone().acquire_many_owned(charge as u32);
        let permit = tokio::time::timeout_at(deadline, acquire)
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                self.exhausted(
                    uri,
                    format!(
                        "session lease quota of {} bytes exhausted (leases count what they pin)",
                        self.quota_bytes
                    ),
                )
            })?;
        let mut table = self.table();
        match table.pinned.get_mut(&key) {
            // Pinned meanwhile by a concurrent lease: ours goes back.
            Some(p) => p.leases += 1,
            None => {
                self.gauge.inc_by(charge as i64);
                let pinned = Pinned {
                    leases: 1,
                    _permit: permit,
                    _pin: pin,
                    bytes: charge,
                    gauge: self.gauge.clone(),
                };
                table.pinned.insert(key, pinned);
            }
        }
        table.leases.insert(id, held);
        Ok(id)
    }

    /// The table; a poisoned lock is recovered (ARCHITECTURE.md §8.1).
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Releases `ids`; unknown ids (already released) are ignored.
    pub(crate) fn release(&self, ids: &[u64]) -> usize {
        let mut table = self.table();
        let mut gone = Vec::new();
        for id in ids {
            if let Some(held) = table.leases.remove(id) {
                let unpinned = table.unpin(held.pinned);
                gone.push((held, unpinned));
            }
        }
        drop(table);
        gone.len()
    }

    /// Bytes pinned now.
    pub(crate) fn leased(&self) -> u64 {
        self.table().pinned.values().map(|p| p.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn quota_waits_for_releases_then_fails() {
        let gauge = Gauge::default();
        let t = Arc::new(LeaseTable::new(
            100,
            1000,
            Duration::from_secs(2),
            gauge.clone(),
        ));
        let a = t
            .lease("u", Bytes::from(vec![0; 60]), None, 60)
            .await
            .unwrap();
        assert_eq!(gauge.get(), 60);
        let err = t
            .lease("u", Bytes::from(vec![0; 50]), None, 50)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message().contains("quota of 100 bytes"),
            "{}",
            err.message()
        );
        // A waiting lease gets in once another is released.
        let t2 = t.clone();
        let waiter =
            tokio::spawn(async move { t2.lease("u", Bytes::from(vec![0; 50]), None, 50).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(t.release(&[a, 9999]), 1);
        waiter.await.unwrap().unwrap();
        assert_eq!(t.leased(), 50);
        let err = t
            .lease("u", Bytes::from(vec![0; 101]), None, 101)
            .await
            .unwrap_err();
        assert!(err.message().contains("exceeds"), "{}", err.message());
        drop(t);
        assert_eq!(gauge.get(), 0, "dropping the table releases everything");
    }

    fn entry(size: usize) -> Arc<CachedObject> {
        let cache = sluice_engine::cache::Cache::new(Default::default());
        let meta = sluice_storage::ObjectMeta {
            uri: "file:///k".into(),
            size: size as u64,
            etag: None,
            last_modified: None,
            version: None,
        };
        cache.insert("k".into(), meta, Bytes::from(vec![1; size]))
    }

    /// One-byte leases of a cached object count the whole object against
    /// the quota — once per object, however many leases of it.
    #[tokio::test(start_paused = true)]
    async fn leases_count_what_they_pin() {
        let gauge = Gauge::default();
        let t = LeaseTable::new(100, 1000, Duration::from_secs(2), gauge.clone());
        let (a, b) = (entry(60), entry(60));
        let l1 = t
            .lease("u", a.data.slice(0..1), Some(a.clone()), 1)
            .await
            .unwrap();
        let l2 = t
            .lease("u", a.data.slice(5..6), Some(a.clone()), 1)
            .await
            .unwrap();
        assert_eq!(t.leased(), 60, "one object, counted whole, once");
        let err = t
            .lease("u", b.data.slice(0..1), Some(b.clone()), 1)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("what they pin"), "{}", err.message());
        t.release(&[l1]);
        assert_eq!(t.leased(), 60, "still pinned by the other lease");
        t.release(&[l2]);
        assert_eq!(t.leased(), 0);
        assert_eq!(Arc::strong_count(&a), 1, "the table let go of the entry");
        t.lease("u", b.data.slice(0..1), Some(b.clone()), 1)
            .await
            .unwrap();
        assert_eq!(gauge.get(), 60);
    }

    /// A session holds at most `max_leases` leases.
    #[tokio::test(start_paused = true)]
    async fn the_lease_table_is_bounded() {
        let t = LeaseTable::new(1000, 3, Duration::from_secs(1), Gauge::default());
        let a = entry(10);
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(
                t.lease("u", a.data.slice(i..i + 1), Some(a.clone()), 1)
                    .await
                    .unwrap(),
            );
        }
        let err = t
            .lease("u", a.data.slice(0..1), Some(a.clone()), 1)
            .await
            .unwrap_err();
        assert!(
            err.message().contains("max_leases = 3"),
            "{}",
            err.message()
        );
        t.release(&ids[..1]);
        t.lease("u", a.data.slice(0..1), Some(a.clone()), 1)
            .await
            .unwrap();
    }
}
