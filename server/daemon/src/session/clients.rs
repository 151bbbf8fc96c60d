//! The data stall of each client (`sluice_session_client_*`).
//!
//! `sluice_session_stall_seconds` says how long the node's trainers waited
//! on data, not which of them: on a shared node one job with a cold dataset
//! and another fed from the cache look the same. These counters split the
//! same waits by the client's uid, which the kernel tells the daemon for
//! every Unix-socket peer (`SO_PEERCRED`); a peer without credentials (TCP)
//! counts as `remote`.
//!
//! A label per uid is bounded by the node's users, which the daemon does
//! not control: the first [`MAX_UIDS`] distinct uids get series of their
//! own, later ones count together as `other`. A node with more users than
//! that is rare; `other` rising says the limit was reached.
//!
//! Each session looks up its counters once, when it opens
//! ([`ClientMetrics::client`]); a fetch then adds to them without a lock.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};

/// Distinct uids with series of their own; later uids count as `other`.
/// 64: more than the users of a training node, few enough series.
pub const MAX_UIDS: usize = 64;

/// `uid`: a client's uid, `remote` or `other`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UidLabels {
    /// The uid in decimal, `remote` (no credentials) or `other` (past
    /// [`MAX_UIDS`]).
    pub uid: String,
}

/// Seconds in a counter.
type Seconds = Counter<f64, AtomicU64>;

/// Per-client counters of session fetches and their data stall.
#[derive(Debug, Clone, Default)]
pub struct ClientMetrics {
    stall: Family<UidLabels, Seconds>,
    fetches: Family<UidLabels, Counter>,
    /// The uids with series of their own.
    seen: Arc<Mutex<HashSet<u32>>>,
}

/// One client's counters, looked up when its session opens.
#[derive(Debug, Clone)]
pub struct ClientCounters {
    stall: Seconds,
    fetches: Counter,
}

impl ClientMetrics {
    /// The counters of the client with `uid` (`None`: no credentials).
    pub fn client(&self, uid: Option<u32>) -> ClientCounters {
        let labels = UidLabels {
            uid: self.label(uid),
        };
        ClientCounters {
            stall: self.stall.get_or_create(&labels).clone(),
            fetches: self.fetches.get_or_create(&labels).clone(),
        }
    }

    fn label(&self, uid: Option<u32>) -> String {
        let Some(uid) = uid else {
            return "remote".to_owned();
        };
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(&uid) || seen.len() < MAX_UIDS {
            seen.insert(uid);
            uid.to_string()
        } else {
            "other".to_owned()
        }
    }

    /// Registers under the session registry (`sluice_session_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "client_stall",
            "Data-stall time of session fetches (data not in the cache), by client uid",
            Unit::Seconds,
            self.stall.clone(),
        );
        registry.register(
            "client_fetches",
            "Session fetches, by client uid",
            self.fetches.clone(),
        );
    }
}

impl ClientCounters {
    /// A fetch waited `waited`; `ready`: its data was in the cache (no
    /// stall). The same rule as `sluice_session_stall_seconds`.
    pub fn observe(&self, waited: Duration, ready: bool) {
        self.fetches.inc();
        if !ready {
            self.stall.inc_by(waited.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(m: &ClientMetrics) -> String {
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn a_stalled_fetch_counts_under_its_uid_and_a_hit_does_not() {
        let m = ClientMetrics::default();
        let a = m.client(Some(1000));
        a.observe(Duration::from_millis(250), false);
        a.observe(Duration::from_millis(40), true);
        m.client(Some(1001)).observe(Duration::from_millis(1), true);
        m.client(None).observe(Duration::from_millis(500), false);
        let text = scrape(&m);
        for line in [
            "client_stall_seconds_total{uid=\"1000\"} 0.25\n",
            "client_fetches_total{uid=\"1000\"} 2\n",
            "client_stall_seconds_total{uid=\"1001\"} 0.0\n",
            "client_fetches_total{uid=\"1001\"} 1\n",
            "client_stall_seconds_total{uid=\"remote\"} 0.5\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }

    #[test]
    fn uids_past_the_limit_count_as_other() {
        let m = ClientMetrics::default();
        for uid in 0..MAX_UIDS as u32 {
            m.client(Some(uid)).observe(Duration::from_secs(1), false);
        }
        m.client(Some(5000)).observe(Duration::from_secs(2), false);
        m.client(Some(5001)).observe(Duration::from_secs(3), false);
        // A uid seen before the limit keeps its own series.
        m.client(Some(7)).observe(Duration::from_secs(1), false);
        let text = scrape(&m);
        assert!(text.contains("client_stall_seconds_total{uid=\"other\"} 5.0\n"));
        assert!(text.contains("client_stall_seconds_total{uid=\"7\"} 2.0\n"));
        assert!(!text.contains("uid=\"5000\""), "{text}");
        let series = text
            .lines()
            .filter(|l| l.starts_with("client_stall_seconds_total"))
            .count();
        assert_eq!(series, MAX_UIDS + 1, "{text}");
    }
}
