//! What each live session has done, for the `Stats` call (`sluice stats`).
//!
//! Counters only, updated as fetches finish; the table holds one entry per
//! open session and drops it when the session's driver ends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::leases::LeaseTable;

/// One session's counters.
#[derive(Debug)]
pub(crate) struct SessionStat {
    pub(crate) id: u64,
    pub(crate) uid: Option<u32>,
    pub(crate) pid: Option<i32>,
    pub(crate) shm: bool,
    pub(crate) leases: Arc<LeaseTable>,
    fetches: AtomicU64,
    hits: AtomicU64,
    stalled: AtomicU64,
    stall_ns: AtomicU64,
    bytes: AtomicU64,
}

/// A snapshot of one session's counters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    pub(crate) fetches: u64,
    pub(crate) hits: u64,
    pub(crate) stalled: u64,
    pub(crate) stall: Duration,
    pub(crate) bytes: u64,
}

impl SessionStat {
    pub(crate) fn new(
        id: u64,
        uid: Option<u32>,
        pid: Option<i32>,
        shm: bool,
        leases: Arc<LeaseTable>,
    ) -> Self {
        SessionStat {
            id,
            uid,
            pid,
            shm,
            leases,
            fetches: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            stalled: AtomicU64::new(0),
            stall_ns: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// A fetch finished: `ready` when its data was cached, after `waited`.
    pub(crate) fn fetched(&self, ready: bool, waited: Duration, bytes: u64) {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if ready {
            self.hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stalled.fetch_add(1, Ordering::Relaxed);
            let ns = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
            self.stall_ns.fetch_add(ns, Ordering::Relaxed);
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        Counts {
            fetches: self.fetches.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            stalled: self.stalled.load(Ordering::Relaxed),
            stall: Duration::from_nanos(self.stall_ns.load(Ordering::Relaxed)),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// The live sessions.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sessions(Arc<Mutex<BTreeMap<u64, Arc<SessionStat>>>>);

/// Removes its session from the table when dropped.
pub(crate) struct Listed {
    sessions: Sessions,
    id: u64,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.id);
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<SessionStat>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lists `stat` until the returned guard drops.
    pub(crate) fn add(&self, stat: Arc<SessionStat>) -> Listed {
        let id = stat.id;
        self.lock().insert(id, stat);
        Listed {
            sessions: self.clone(),
            id,
        }
    }

    /// The sessions `visible` lets through, by id.
    pub(crate) fn snapshot(&self, visible: impl Fn(&SessionStat) -> bool) -> Vec<Arc<SessionStat>> {
        self.lock()
            .values()
            .filter(|s| visible(s))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_listing_follow_the_session() {
        let sessions = Sessions::default();
        let leases = Arc::new(LeaseTable::new(
            1 << 20,
            16,
            Duration::from_secs(1),
            prometheus_client::metrics::gauge::Gauge::default(),
        ));
        let stat = Arc::new(SessionStat::new(7, Some(1000), Some(42), true, leases));
        let listed = sessions.add(stat.clone());
        stat.fetched(true, Duration::from_millis(1), 10);
        stat.fetched(false, Duration::from_millis(30), 20);
        let c = stat.counts();
        assert_eq!((c.fetches, c.hits, c.stalled, c.bytes), (2, 1, 1, 30));
        assert_eq!(
            c.stall,
            Duration::from_millis(30),
            "only the stalled fetch counts"
        );
        assert_eq!(sessions.snapshot(|s| s.uid == Some(1000)).len(), 1);
        assert!(sessions.snapshot(|s| s.uid == Some(1)).is_empty());
        drop(listed);
        assert!(
            sessions.snapshot(|_| true).is_empty(),
            "gone with its session"
        );
    }
}
