//! The one memory budget for payload bytes.
//!
//! Every payload buffer the daemon holds — a cached object, an object being
//! fetched, a part on its way to a streaming client — is backed by permits of
//! one semaphore whose size is `cache.memory_budget` bytes. A buffer's
//! permits travel with it: [`Reservation::into_bytes`] makes a [`Bytes`]
//! whose owner holds the permits, so they return when the last clone of the
//! bytes is dropped (evicted from the cache *and* no longer being sent).
//!
//! A reservation that does not fit asks the cache to evict (least recently
//! used first), then waits; past `memory_wait` it fails and the caller
//! reports RESOURCE_EXHAUSTED. Nothing allocates payload memory outside the
//! budget, which is what keeps RSS within budget plus a fixed overhead.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Largest single reservation: tokio semaphores count at most `u32::MAX`
/// permits per acquire. One permit is one byte.
pub const MAX_RESERVATION: u64 = u32::MAX as u64;

/// Frees memory on request (the cache).
pub trait Evict: Send + Sync {
    /// Drops the least valuable entry; false when there is nothing left to drop.
    fn evict_one(&self) -> bool;
}

/// The byte budget.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    sem: Arc<Semaphore>,
    total: u64,
    wait: Duration,
}

/// Why a reservation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// Larger than the whole budget.
    #[error("{need} bytes exceed the memory budget of {total} bytes")]
    TooLarge {
        /// Bytes asked for.
        need: u64,
        /// The budget.
        total: u64,
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
}

/// Permits for `len` bytes.
#[derive(Debug)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    len: u64,
}

struct Owned {
    data: Vec<u8>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Reservation {
    /// Bytes reserved.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing is reserved.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A zeroed buffer of the reserved size (calloc: pages are touched only
    /// when written).
    pub fn buffer(&self) -> Vec<u8> {
        vec![0; self.len as usize]
    }

    /// Freezes `data` (at most the reserved size) into bytes that hold the
    /// permits until the last clone is dropped.
    pub fn into_bytes(self, data: Vec<u8>) -> Bytes {
        debug_assert!(data.len() as u64 <= self.len);
        Bytes::from_owner(Owned {
            data,
            _permit: self.permit,
        })
    }
}

impl MemoryBudget {
    /// A budget of `total` bytes; reservations wait at most `wait`.
    pub fn new(total: u64, wait: Duration) -> Self {
        let permits = total.min(Semaphore::MAX_PERMITS as u64) as usize;
        MemoryBudget {
            sem: Arc::new(Semaphore::new(permits)),
            total,
            wait,
        }
    }

    /// The budget.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes not reserved right now.
    pub fn available(&self) -> u64 {
        self.sem.available_permits() as u64
    }

    /// Reserves `need` bytes, evicting through `evict` while they do not fit.
    pub async fn reserve(&self, need: u64, evict: &dyn Evict) -> Result<Reservation, BudgetError> {
        if need == 0 {
            return Ok(Reservation {
                permit: None,
                len: 0,
            });
        }
        if need > self.total || need > MAX_RESERVATION {
            return Err(BudgetError::TooLarge {
                need,
                total: self.total,
            });
        }
        let n = need as u32;
        loop {
            match self.sem.clone().try_acquire_many_owned(n) {
                Ok(permit) => {
                    return Ok(Reservation {
                        permit: Some(permit),
                        len: need,
                    });
                }
                Err(_) if evict.evict_one() => continue,
                Err(_) => break,
            }
        }
        // Nothing left to evict: what is reserved is in use (being fetched or
        // sent). Wait for it to come back.
        match tokio::time::timeout(self.wait, self.sem.clone().acquire_many_owned(n)).await {
            Ok(Ok(permit)) => Ok(Reservation {
                permit: Some(permit),
                len: need,
            }),
            _ => Err(BudgetError::Exhausted {
                need,
                total: self.total,
                waited: self.wait,
            }),
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

    #[tokio::test(start_paused = true)]
    async fn bytes_hold_their_permits_until_dropped() {
        let b = MemoryBudget::new(100, Duration::from_secs(1));
        let r = b.reserve(60, &Nothing).await.unwrap();
        let bytes = r.into_bytes(vec![7; 60]);
        let clone = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(
            b.available(),
            40,
            "a live slice keeps the whole buffer reserved"
        );
        let err = b.reserve(50, &Nothing).await.unwrap_err();
        assert!(matches!(err, BudgetError::Exhausted { need: 50, .. }));
        drop(clone);
        assert_eq!(b.available(), 100);
        assert!(matches!(
            b.reserve(101, &Nothing).await,
            Err(BudgetError::TooLarge { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_reservation_gets_memory_when_it_is_freed() {
        let b = MemoryBudget::new(100, Duration::from_secs(5));
        let held = b.reserve(100, &Nothing).await.unwrap();
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.reserve(30, &Nothing).await.map(|r| r.len()) });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(held);
        assert_eq!(waiter.await.unwrap().unwrap(), 30);
    }
}
