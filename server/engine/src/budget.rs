//! The one memory budget for payload bytes: the shared-memory arena.
//!
//! Every payload buffer the daemon holds — a cached object, an object being
//! fetched, a part on its way to a streaming client, an extent leased to a
//! client — is an extent of the [`Arena`], whose capacity is
//! `cache.memory_budget`. [`Reservation::into_bytes`] makes a [`Bytes`] whose
//! owner is the extent, so it returns to the arena when the last clone of the
//! bytes is dropped (evicted from the cache, no longer being sent, and
//! released by every client that leased it).
//!
//! A reservation that does not fit asks the cache to evict (least recently
//! used first, skipping leased entries), then waits for extents to be freed;
//! past `memory_wait` it fails and the caller reports RESOURCE_EXHAUSTED.
//! Nothing allocates payload memory outside the arena, which is what keeps
//! RSS within budget plus a fixed overhead — and what lets a cache hit be
//! handed to a client as `(segment, offset, length)` with no copy.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_storage::ReadBuf;

use crate::arena::{Arena, Extent};

/// Frees memory on request (the cache).
pub trait Evict: Send + Sync {
    /// Drops the least valuable entry; false when there is nothing left to drop.
    fn evict_one(&self) -> bool;
}

/// The byte budget.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    arena: Arc<Arena>,
    wait: Duration,
}

/// Why a reservation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// Larger than one arena segment (the largest extent there can be).
    #[error("{need} bytes exceed the largest arena extent of {max} bytes")]
    TooLarge {
        /// Bytes asked for.
        need: u64,
        /// The largest extent.
        max: u64,
    },
    /// Did not fit within the wait deadline.
    #[error("memory budget of {total} bytes exhausted: waited {waited:?} for {need} bytes")]
    Exhausted {
        /// Bytes asked for.
        need: u64,
        /// The budget.
        total: u64,
        /// How long the request waited.
        waited: Duration,
    },
    /// The client's share stayed full for the whole wait.
    #[error(
        "this client holds {held} bytes of its {limit}-byte share (cache.client_share) and waited {waited:?} for room for {need} more; \
         read what it fetched, release leases, or ask for less at once"
    )]
    Share {
        /// Bytes asked for.
        need: u64,
        /// Bytes the client held.
        held: u64,
        /// The client's share.
        limit: u64,
        /// How long the request waited.
        waited: Duration,
    },
    /// No backend request slot within the wait.
    #[error(
        "every backend request slot stayed busy for {waited:?} (engine.max_concurrency, engine.client_concurrency)"
    )]
    Busy {
        /// How long the request waited.
        waited: Duration,
    },
}

/// An extent of `len` bytes, writable until frozen into [`Bytes`].
#[derive(Debug)]
pub struct Reservation {
    extent: Option<Extent>,
}

impl Reservation {
    /// Bytes reserved.
    pub fn len(&self) -> u64 {
        self.extent.as_ref().map_or(0, Extent::len)
    }

    /// Whether nothing is reserved.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The memory to fill.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.extent {
            Some(e) => e.as_mut_slice(),
            None => &mut [],
        }
    }

    /// Freezes the extent into bytes that return it to the arena when the
    /// last clone is dropped.
    pub fn into_bytes(self) -> Bytes {
        self.extent.map_or_else(Bytes::new, Extent::into_bytes)
    }

    /// The memory as one [`ReadBuf`] for backends to read into, and what
    /// turns it into bytes once every part of that buffer is back. The
    /// extent returns to the arena only when both are gone: a read the
    /// kernel still performs keeps it, however the fetch ended.
    pub fn into_read_buf(self) -> (Filling, ReadBuf) {
        let Some(mut extent) = self.extent else {
            return (Filling { extent: None }, ReadBuf::empty());
        };
        let (ptr, len) = (extent.as_mut_ptr(), extent.len() as usize);
        let extent = Arc::new(extent);
        // SAFETY: the extent's `len` bytes stay mapped and unallocated to
        // anyone else while the `Arc` lives, and the `Filling` only reads
        // them after taking the `Arc` back as the only handle.
        let buf = unsafe { ReadBuf::from_raw_parts(ptr, len, extent.clone()) };
        (
            Filling {
                extent: Some(extent),
            },
            buf,
        )
    }
}

/// A reservation whose memory reads are filling (see
/// [`Reservation::into_read_buf`]).
#[derive(Debug)]
pub struct Filling {
    extent: Option<Arc<Extent>>,
}

impl Filling {
    /// The bytes, once no [`ReadBuf`] into them is left; `None` while one
    /// is (a read still in flight: the bytes are not final).
    pub fn into_bytes(self) -> Option<Bytes> {
        match self.extent {
            None => Some(Bytes::new()),
            Some(extent) => Arc::try_unwrap(extent).ok().map(Extent::into_bytes),
        }
    }
}

impl MemoryBudget {
    /// A budget over `arena`; reservations wait at most `wait`.
    pub fn new(arena: Arc<Arena>, wait: Duration) -> Self {
        MemoryBudget { arena, wait }
    }

    /// A budget over a fresh arena of `total` bytes in `segment` byte segments.
    pub fn with_capacity(total: u64, segment: u64, wait: Duration) -> std::io::Result<Self> {
        Ok(Self::new(Arena::new(total, segment)?, wait))
    }

    /// The arena.
    pub fn arena(&self) -> &Arc<Arena> {
        &self.arena
    }

    /// The budget.
    pub fn total(&self) -> u64 {
        self.arena.capacity()
    }

    /// Bytes not reserved right now.
    pub fn available(&self) -> u64 {
        self.arena.free()
    }

    /// The largest single reservation.
    pub fn max_reservation(&self) -> u64 {
        self.arena.max_extent()
    }

    /// Reserves `need` bytes if they fit now, evicting through `evict`;
    /// never waits.
    pub fn try_reserve(&self, need: u64, evict: &dyn Evict) -> Option<Reservation> {
        if need == 0 {
            return Some(Reservation { extent: None });
        }
        if need > self.arena.max_extent() {
            return None;
        }
        loop {
            if let Some(extent) = self.arena.try_alloc(need) {
                return Some(Reservation {
                    extent: Some(extent),
                });
            }
            if !evict.evict_one() {
                return None;
            }
        }
    }

    /// Reserves `need` bytes, evicting through `evict` while they do not fit.
    pub async fn reserve(&self, need: u64, evict: &dyn Evict) -> Result<Reservation, BudgetError> {
        if need == 0 {
            return Ok(Reservation { extent: None });
        }
        let max = self.arena.max_extent();
        if need > max {
            return Err(BudgetError::TooLarge { need, max });
        }
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            // Register for wake-ups before trying, so a free between the
            // failed attempt and the wait is not missed.
            let freed = self.arena.freed().notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(extent) = self.arena.try_alloc(need) {
                return Ok(Reservation {
                    extent: Some(extent),
                });
            }
            if evict.evict_one() {
                continue;
            }
            // Nothing left to evict: what is reserved is in use (being
            // fetched, sent or leased). Wait for some of it to come back.
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(BudgetError::Exhausted {
                    need,
                    total: self.total(),
                    waited: self.wait,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl Evict for Nothing {
        fn evict_one(&self) -> bool {
            false
        }
    }

    const PAGE: u64 = crate::arena::GRANULE;

    fn budget(pages: u64, wait: Duration) -> MemoryBudget {
        MemoryBudget::with_capacity(pages * PAGE, pages * PAGE, wait).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_hold_their_extent_until_dropped() {
        let b = budget(10, Duration::from_secs(1));
        let mut r = b.reserve(6 * PAGE, &Nothing).await.unwrap();
        r.as_mut_slice().fill(7);
        let bytes = r.into_bytes();
        assert!(bytes.iter().all(|&x| x == 7));
        let clone = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(
            b.available(),
            4 * PAGE,
            "a live slice keeps the whole extent"
        );
        let err = b.reserve(5 * PAGE, &Nothing).await.unwrap_err();
        assert!(matches!(err, BudgetError::Exhausted { .. }), "{err}");
        drop(clone);
        assert_eq!(b.available(), 10 * PAGE);
        assert!(matches!(
            b.reserve(11 * PAGE, &Nothing).await,
            Err(BudgetError::TooLarge { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_reservation_gets_memory_when_it_is_freed() {
        let b = budget(10, Duration::from_secs(5));
        let held = b.reserve(10 * PAGE, &Nothing).await.unwrap();
        let b2 = b.clone();
        let waiter =
            tokio::spawn(async move { b2.reserve(3 * PAGE, &Nothing).await.map(|r| r.len()) });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(held);
        assert_eq!(waiter.await.unwrap().unwrap(), 3 * PAGE);
    }
}
