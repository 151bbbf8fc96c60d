//! Prefetch's reads into the cache.

use sluice_storage::ObjectUri;

use super::{Outcome, Reader, Role};
use crate::error::ReadError;
use crate::plans::Prefetched;
use crate::range::{Fetched, Memory};

impl Reader {
    /// Reads `key` (a canonical URI) into the cache ahead of its use, with
    /// `memory` (prefetch's: its own request slots, no wait for memory,
    /// evicting only what no plan needs within its look-ahead). A demand
    /// read of the object meanwhile joins this fetch; if the prefetch gives
    /// up, that read fetches on its own.
    pub(crate) async fn prefetch(&self, key: &str, memory: Memory) -> Prefetched {
        let Ok(uri) = ObjectUri::parse(key) else {
            return Prefetched::Skipped;
        };
        let Ok(storage) = self.storage(&uri) else {
            return Prefetched::Skipped;
        };
        if let Some(obj) = self.cache.peek(key) {
            return Prefetched::Cached(obj.meta.size);
        }
        // Being fetched already: it will be cached by that fetch.
        let Role::Lead(leader) = self.role(key) else {
            return Prefetched::Skipped;
        };
        let m = &self.metrics.prefetch;
        match self
            .engine
            .fetch(storage, &uri, None, &memory, self.max_cached())
            .await
        {
            Ok(Fetched::Buffered { meta, data, .. }) => {
                let size = meta.size;
                match self.cache_unless_stale(&leader, &meta, &data, true) {
                    Some(obj) => {
                        obj.mark_prefetched();
                        m.fetched.inc();
                        m.fetched_bytes.inc_by(size);
                        leader.publish(Outcome::Cached(obj));
                        Prefetched::Cached(size)
                    }
                    None => {
                        leader.publish(Outcome::Stale);
                        Prefetched::Skipped
                    }
                }
            }
            Ok(Fetched::Streaming { .. }) => {
                leader.publish(Outcome::TooLarge);
                Prefetched::Skipped
            }
            Err(e) => {
                // Whoever joined fetches on its own, with its own waits.
                leader.publish(Outcome::Stale);
                if matches!(e, ReadError::Memory { .. }) {
                    m.no_room.inc();
                    Prefetched::NoRoom
                } else {
                    tracing::debug!(uri = key, error = %e, "prefetch failed");
                    m.failed.inc();
                    Prefetched::Skipped
                }
            }
        }
    }
}
