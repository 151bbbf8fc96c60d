//! The leases of one session.
//!
//! A lease pins a piece of the arena for a client: it holds the `Bytes`
//! (whose owner is the arena extent, so the extent cannot be freed or reused
//! while the lease lives) and, for cached objects, the cache entry (so
//! eviction skips it instead of dropping an entry whose memory cannot be
//! reclaimed anyway). Each session may hold `lease_quota` bytes at once: a
//! lease that does not fit waits for releases, up to `lease_wait`, then fails
//! with RESOURCE_EXHAUSTED naming the quota. Dropping the table — the session
//! ended, however it ended — releases everything.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use sluice_engine::cache::CachedObject;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

struct Held {
    _bytes: Bytes,
    _pin: Option<Arc<CachedObject>>,
    _permit: OwnedSemaphorePermit,
    len: u64,
    gauge: Gauge,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.dec_by(self.len as i64);
    }
}

/// Leases of one session.
pub(crate) struct LeaseTable {
    quota: Arc<Semaphore>,
    quota_bytes: u64,
    wait: Duration,
    next: std::sync::atomic::AtomicU64,
    held: Mutex<HashMap<u64, Held>>,
    gauge: Gauge,
}

impl std::fmt::Debug for LeaseTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseTable")
            .field("quota_bytes", &self.quota_bytes)
            .field("leases", &self.held().len())
            .finish()
    }
}

impl LeaseTable {
    /// A table of `quota_bytes`, reporting leased bytes to `gauge`.
    pub(crate) fn new(quota_bytes: u64, wait: Duration, gauge: Gauge) -> Self {
        let permits = quota_bytes.min(Semaphore::MAX_PERMITS as u64) as usize;
        LeaseTable {
            quota: Arc::new(Semaphore::new(permits)),
            quota_bytes,
            wait,
            next: std::sync::atomic::AtomicU64::new(1),
            held: Mutex::new(HashMap::new()),
            gauge,
        }
    }

    /// Leases `bytes`; returns the lease id. Waits for quota, bounded.
    pub(crate) async fn lease(
        &self,
        uri: &str,
        bytes: Bytes,
        pin: Option<Arc<CachedObject>>,
    ) -> Result<u64, Status> {
        let len = bytes.len() as u64;
        if len > self.quota_bytes || len > u64::from(u32::MAX) {
            return Err(Status::resource_exhausted(format!(
                "{uri}: a {len}-byte piece exceeds the session lease quota of {} bytes",
                self.quota_bytes
            )));
        }
        let acquire = self.quota.clone().acquire_many_owned(len as u32);
        let permit = match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(p)) => p,
            _ => {
                return Err(Status::resource_exhausted(format!(
                    "{uri}: session lease quota of {} bytes exhausted (waited {:?} for releases)",
                    self.quota_bytes, self.wait
                )));
            }
        };
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.gauge.inc_by(len as i64);
        let held = Held {
            _bytes: bytes,
            _pin: pin,
            _permit: permit,
            len,
            gauge: self.gauge.clone(),
        };
        self.held().insert(id, held);
        Ok(id)
    }

    /// The leases; a poisoned lock is recovered (ARCHITECTURE.md §8.1).
    fn held(&self) -> MutexGuard<'_, HashMap<u64, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Releases `ids`; unknown ids (already released) are ignored.
    pub(crate) fn release(&self, ids: &[u64]) -> usize {
        let mut held = self.held();
        let gone: Vec<Held> = ids.iter().filter_map(|id| held.remove(id)).collect();
        drop(held);
        gone.len()
    }

    /// Bytes leased now.
    #[cfg(test)]
    pub(crate) fn leased(&self) -> u64 {
        self.held().values().map(|h| h.len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn quota_waits_for_releases_then_fails() {
        let gauge = Gauge::default();
        let t = Arc::new(LeaseTable::new(100, Duration::from_secs(2), gauge.clone()));
        let a = t.lease("u", Bytes::from(vec![0; 60]), None).await.unwrap();
        assert_eq!(gauge.get(), 60);
        let err = t
            .lease("u", Bytes::from(vec![0; 50]), None)
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
            tokio::spawn(async move { t2.lease("u", Bytes::from(vec![0; 50]), None).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(t.release(&[a, 9999]), 1);
        waiter.await.unwrap().unwrap();
        assert_eq!(t.leased(), 50);
        let err = t
            .lease("u", Bytes::from(vec![0; 101]), None)
            .await
            .unwrap_err();
        assert!(err.message().contains("exceeds"), "{}", err.message());
        drop(t);
        assert_eq!(gauge.get(), 0, "dropping the table releases everything");
    }
}
