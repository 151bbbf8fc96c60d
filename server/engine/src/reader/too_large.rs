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

    /// Notes `key` as too large, now.
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

    /// Whether `key` was noted less than `ttl` ago.
    pub(super) fn noted(&self, key: &str, ttl: Duration) -> bool {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key).is_some_and(|at| at.elapsed() < ttl)
    }

    /// Forgets `key` (it was written or deleted).
    pub(super) fn forget_key(&self, key: &str) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.remove(key);
    }

    /// Forgets every key `keep` refuses.
    pub(super) fn forget(&self, keep: impl Fn(&str) -> bool) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_expire_and_stay_bounded() {
        let notes = TooLarge::default();
        let long = Duration::from_secs(3600);
        notes.note("a", long);
        assert!(notes.noted("a", long));
        assert!(!notes.noted("a", Duration::ZERO), "expired");
        assert!(!notes.noted("b", long));
        for i in 0..TooLarge::CAP * 2 {
            notes.note(&i.to_string(), long);
        }
        let len = notes.0.lock().unwrap().len();
        assert!(len <= TooLarge::CAP, "{len} notes kept");
        notes.forget_key(&(TooLarge::CAP * 2 - 1).to_string());
        assert!(!notes.noted(&(TooLarge::CAP * 2 - 1).to_string(), long));
    }
}
