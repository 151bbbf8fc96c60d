//! Objects too large to widen a ranged read to.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Objects a ranged read found too large to widen, and when: their ranges
/// are fetched on their own, without a leader, until the note expires.
#[derive(Default)]
pub(super) struct TooLarge(Mutex<HashMap<String, Instant>>);

impl TooLarge {
    /// Notes kept at most; then expired ones go, and if none has, all.
    const CAP: usize = 4096;

    pub(super) fn note(&self, key: &str, ttl: Duration) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= Self::CAP {
            map.retain(|_, at| at.elapsed() < ttl);
            if map.len() >= Self::CAP {
                map.clear();
            }
        }
        map.insert(key.to_owned(), Instant::now());
    }

    pub(super) fn noted(&self, key: &str, ttl: Duration) -> bool {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key).is_some_and(|at| at.elapsed() < ttl)
    }

    pub(super) fn forget(&self, keep: impl Fn(&str) -> bool) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|k, _| keep(k));
    }
}
