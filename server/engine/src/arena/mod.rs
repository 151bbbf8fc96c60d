//! The shared-memory arena: where payload bytes live.
//!
//! # What
//!
//! A fixed set of segments, each one `memfd_create` file mapped once
//! read-write and shared. A cached object lives in an [`Extent`] of one
//! segment; serving it is handing a client `(segment, offset, len)`, and the
//! client reads the bytes from its own read-only mapping of the segment's fd
//! (sent once per session over SCM_RIGHTS). Nothing is created under
//! `/dev/shm` or anywhere else, so a crashed daemon leaves nothing stale: the
//! memory goes when the last process holding a segment's fd or mapping does.
//!
//! Each segment is sealed after it is mapped (`F_SEAL_SHRINK | GROW |
//! FUTURE_WRITE | SEAL`): a client can neither truncate the file under us —
//! that would turn our next access into SIGBUS — nor map it writable. Our own
//! mapping, made before the seal, stays writable. Kernels before 5.1 lack
//! `F_SEAL_FUTURE_WRITE`; there only the size is sealed, and a warning says so.
//!
//! A fresh memfd's pages are not resident until first touched; the daemon
//! touches them all at startup on an idle thread ([`Arena::prefault`],
//! `cache.prefault`), because a first touch costs far more than the copy
//! that fills the page. Freed ranges stay resident (no hole punching): the
//! capacity *is* the memory budget, so memory the arena once held is memory
//! it is allowed to hold, and reusing a resident page is cheaper than
//! faulting in a new one.
//!
//! # Allocation
//!
//! Extents are made of 4 KiB granules: offsets are page-aligned, so a
//! client can map or `madvise` an extent on its own and a later O_DIRECT
//! read can land straight in it. An extent never spans segments; callers
//! split objects larger than [`Arena::max_extent`].
//!
//! Each segment keeps its free ranges in two B-trees (see `freelist.rs`): by
//! offset, to merge a freed range with both neighbours at once (so no two
//! free ranges are ever adjacent), and by (length, offset), to take the
//! *smallest* free range that fits, lowest address among equals. Both
//! operations are O(log f) in the number of free ranges.
//!
//! Why best fit: the cache holds objects from a few KiB to hundreds of MiB.
//! First fit by address carves small objects out of whatever big range comes
//! first and so destroys the large ranges that big objects need; best fit
//! fills the small holes first and leaves big ranges whole. With coalescing
//! and address-ordered ties it is among the least fragmenting policies known
//! for real workloads (Johnstone & Wilson, "The Memory Fragmentation Problem:
//! Solved?", 1998). What to expect: with sizes log-uniform over 4 KiB–4 MiB
//! in 64 MiB segments and random frees, the first request that fails comes
//! at 96–99 % of capacity (the `timing_and_fragmentation` test prints this;
//! it measured 98.8 % on first fill, 97.4 % mean and 95.8 % worst under
//! churn). Sizes that are all alike do not fragment at all. A failed
//! allocation is not an error — the caller evicts and retries — so
//! fragmentation costs cache hit rate, never correctness. There is no
//! compaction: extents are handed to clients by address.
//!
//! # Concurrency
//!
//! One `std::sync::Mutex` per segment, held only for a B-tree update (there
//! are no awaits here). Allocations start at a round-robin segment and pass
//! over segments that are locked right now (`try_lock`) before waiting on
//! any, so concurrent allocations spread over segments instead of queueing on
//! one. Each segment also publishes the length of its largest free range in
//! an atomic, so a request that fits nowhere returns `None` without taking a
//! lock — the common case when a caller loops "evict one, try again".
//!
//! Freeing notifies [`Arena::freed`]; an async caller waits on it for memory
//! that is in use (being sent) rather than cached.
//!
//! # Invariants
//!
//! - Live extents are disjoint and lie inside their segment.
//! - `used() + free() == capacity()`, where `used` counts granule-rounded
//!   live extents.
//! - The arena outlives its extents (each holds an `Arc<Arena>`), so the
//!   mappings outlive every slice handed out. Whoever hands a descriptor to a
//!   client must keep the extent (or its `Bytes`) alive until the client's
//!   lease ends: the arena reuses a range as soon as it is freed.

mod extent;
mod freelist;
mod segment;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

pub use extent::Extent;
use freelist::FreeList;
use segment::{Mapping, Sealed};

/// Allocation unit and alignment: one page.
pub const GRANULE: u64 = 4096;

/// `len` rounded up to a whole number of granules.
pub(crate) fn round_up(len: u64) -> u64 {
    len.div_ceil(GRANULE) * GRANULE
}

/// The shared-memory arena. See the module docs.
pub struct Arena {
    segments: Box<[Segment]>,
    /// (base address, segment id), sorted by address, for [`Arena::locate`].
    by_addr: Box<[(usize, u32)]>,
    segment_size: u64,
    capacity: u64,
    used: AtomicU64,
    next: AtomicUsize,
    freed: Notify,
    /// Whether every segment carries `F_SEAL_FUTURE_WRITE`.
    write_sealed: bool,
}

struct Segment {
    map: Mapping,
    free: Mutex<FreeList>,
    /// Length of the largest free range; written under `free`'s lock.
    largest: AtomicU64,
}

/// One segment, as a client needs to know it.
#[derive(Debug, Clone, Copy)]
pub struct SegmentInfo<'a> {
    /// The id that extents carry.
    pub id: u32,
    /// Length in bytes (a multiple of [`GRANULE`]).
    pub len: u64,
    /// The memfd, to send over SCM_RIGHTS; clients map it read-only.
    pub fd: BorrowedFd<'a>,
}

impl Arena {
    /// An arena of `capacity` bytes in segments of `segment_size` bytes (a
    /// non-zero multiple of [`GRANULE`]); the last segment holds the
    /// remainder, rounded up to a granule.
    pub fn new(capacity: u64, segment_size: u64) -> io::Result<Arc<Arena>> {
        if segment_size == 0 || !segment_size.is_multiple_of(GRANULE) || capacity == 0 {
            return Err(invalid(format!(
                "arena of {capacity} bytes in segments of {segment_size}: need a capacity \
                 above 0 and a segment size that is a non-zero multiple of {GRANULE}"
            )));
        }
        let count = capacity.div_ceil(segment_size);
        if count > u64::from(u32::MAX) {
            return Err(invalid(format!("{count} segments are too many")));
        }
        let mut segments = Vec::with_capacity(count as usize);
        let mut write_sealed = true;
        for i in 0..count {
            let len = round_up(segment_size.min(capacity - i * segment_size));
            let (map, sealed) = Mapping::create(len)?;
            write_sealed &= sealed == Sealed::SizeAndWrites;
            segments.push(Segment {
                map,
                free: Mutex::new(FreeList::new(len)),
                largest: AtomicU64::new(len),
            });
        }
        if !write_sealed {
            tracing::warn!(
                "kernel lacks F_SEAL_FUTURE_WRITE: the arena cannot be shared read-only"
            );
        }
        let mut by_addr: Vec<(usize, u32)> = segments
            .iter()
            .enumerate()
            .map(|(id, s)| (s.map.base().as_ptr() as usize, id as u32))
            .collect();
        by_addr.sort_unstable();
        let capacity = segments.iter().map(|s| s.map.len() as u64).sum();
        // A budget below one segment makes one smaller segment: that is the
        // largest extent there can be.
        let segment_size = segments
            .iter()
            .map(|s| s.map.len() as u64)
            .max()
            .unwrap_or(0);
        Ok(Arc::new(Arena {
            segments: segments.into_boxed_slice(),
            by_addr: by_addr.into_boxed_slice(),
            segment_size,
            capacity,
            used: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            freed: Notify::new(),
            write_sealed,
        }))
    }

    /// Whether the kernel enforces that holders of a segment descriptor can
    /// only read it (`F_SEAL_FUTURE_WRITE`, Linux 5.1). Without it the
    /// segments must not be handed to clients.
    pub fn clients_read_only(&self) -> bool {
        self.write_sealed
    }

    /// An extent of `len` bytes, or `None` when no segment has a free range
    /// that large right now (or `len` exceeds [`Arena::max_extent`]). Never
    /// blocks on anything but a segment's short critical section. A zero
    /// `len` gives an empty extent that owns nothing.
    pub fn try_alloc(self: &Arc<Self>, len: u64) -> Option<Extent> {
        if len == 0 {
            return Some(Extent::new(self.clone(), 0, 0, 0));
        }
        if len > self.segment_size {
            return None;
        }
        let need = round_up(len);
        let n = self.segments.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let order = || (start..n).chain(0..start);
        // First pass: only segments nobody holds right now.
        let mut busy = false;
        for id in order() {
            let seg = &self.segments[id];
            if seg.largest.load(Ordering::Acquire) < need {
                continue;
            }
            match seg.free.try_lock() {
                Ok(mut list) => {
                    if let Some(e) = self.alloc_in(id, &mut list, need, len) {
                        return Some(e);
                    }
                }
                Err(std::sync::TryLockError::Poisoned(p)) => {
                    if let Some(e) = self.alloc_in(id, &mut p.into_inner(), need, len) {
                        return Some(e);
                    }
                }
                Err(std::sync::TryLockError::WouldBlock) => busy = true,
            }
        }
        if !busy {
            return None;
        }
        // Second pass: wait for each segment that could still fit.
        order().find_map(|id| {
            let seg = &self.segments[id];
            if seg.largest.load(Ordering::Acquire) < need {
                return None;
            }
            self.alloc_in(id, &mut lock(&seg.free), need, len)
        })
    }

    fn alloc_in(
        self: &Arc<Self>,
        id: usize,
        list: &mut MutexGuard<'_, FreeList>,
        need: u64,
        len: u64,
    ) -> Option<Extent> {
        let offset = list.alloc(need)?;
        self.segments[id]
            .largest
            .store(list.largest(), Ordering::Release);
        self.used.fetch_add(need, Ordering::Relaxed);
        Some(Extent::new(self.clone(), id as u32, offset, len))
    }

    /// Returns a granule-rounded range; called by `Extent::drop`.
    fn release(&self, segment: u32, offset: u64, len: u64) {
        let seg = &self.segments[segment as usize];
        {
            let mut list = lock(&seg.free);
            list.free(offset, len);
            seg.largest.store(list.largest(), Ordering::Release);
            self.used.fetch_sub(len, Ordering::Relaxed);
        }
        self.freed.notify_waiters();
    }

    fn segment_base(&self, segment: u32) -> NonNull<u8> {
        self.segments[segment as usize].map.base()
    }

    /// The segment and offset of a byte of arena memory, e.g. the pointer of
    /// a `Bytes` slice made by [`Extent::into_bytes`]; `None` for memory
    /// outside the arena.
    pub fn locate(&self, ptr: *const u8) -> Option<(u32, u64)> {
        let addr = ptr as usize;
        let i = self.by_addr.partition_point(|&(base, _)| base <= addr);
        let &(base, id) = self.by_addr.get(i.checked_sub(1)?)?;
        let off = addr - base;
        (off < self.segments[id as usize].map.len()).then_some((id, off as u64))
    }

    /// Largest extent that can ever be allocated: the largest segment (the
    /// configured segment size, or the whole capacity when that is smaller).
    pub fn max_extent(&self) -> u64 {
        self.segment_size
    }

    /// Total bytes over all segments.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes in live extents, each rounded up to a granule.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// `capacity() - used()`: free bytes, contiguous or not.
    pub fn free(&self) -> u64 {
        self.capacity - self.used()
    }

    /// The largest extent that would fit right now.
    pub fn largest_free(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| lock(&s.free).largest())
            .max()
            .unwrap_or(0)
    }

    /// The segments, by id.
    pub fn segments(&self) -> impl ExactSizeIterator<Item = SegmentInfo<'_>> {
        self.segments.iter().enumerate().map(|(id, s)| SegmentInfo {
            id: id as u32,
            len: s.map.len() as u64,
            fd: s.map.fd().as_fd(),
        })
    }

    /// Makes every page of the arena resident, `chunk` bytes at a time
    /// (`MADV_POPULATE_WRITE`, Linux 5.14), without changing a byte: extents
    /// already in use keep their contents. `progress` gets the bytes done
    /// after each chunk and stops the work when it returns `false`. Returns
    /// the bytes made resident.
    ///
    /// First touch of a fresh shared-memory page costs more than the copy
    /// that fills it: measured on a 2-core VM, ~160 µs per 128 KiB
    /// (allocating, charging and zeroing 32 pages) against ~10 µs to copy
    /// into pages already resident. The arena's pages are paid for once the
    /// cache has filled anyway (freed ranges stay resident); paying for them
    /// up front, on an idle thread, keeps that cost off the first epoch's
    /// reads. Errors (an older kernel: EINVAL) end the work; the pages not
    /// done are touched lazily as before.
    pub fn prefault(&self, chunk: u64, mut progress: impl FnMut(u64) -> bool) -> io::Result<u64> {
        let chunk = round_up(chunk.max(GRANULE)) as usize;
        let mut done = 0u64;
        for seg in self.segments.iter() {
            let len = seg.map.len();
            let mut off = 0;
            while off < len {
                let n = chunk.min(len - off);
                seg.map.populate(off, n)?;
                off += n;
                done += n as u64;
                if !progress(done) {
                    return Ok(done);
                }
            }
        }
        Ok(done)
    }

    /// Notified (`notify_waiters`) each time an extent is freed. It stores no
    /// permit, so enable the `Notified` future *before* the allocation that
    /// failed, or a free in between is missed:
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use sluice_engine::arena::{Arena, Extent};
    /// async fn alloc(arena: &Arc<Arena>, len: u64) -> Extent {
    ///     loop {
    ///         let freed = arena.freed().notified();
    ///         tokio::pin!(freed);
    ///         freed.as_mut().enable();
    ///         if let Some(extent) = arena.try_alloc(len) {
    ///             return extent;
    ///         }
    ///         // (evict here; wrap the wait in a deadline)
    ///         freed.await;
    ///     }
    /// }
    /// ```
    pub fn freed(&self) -> &Notify {
        &self.freed
    }
}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arena")
            .field("segments", &self.segments.len())
            .field("segment_size", &self.segment_size)
            .field("capacity", &self.capacity)
            .field("used", &self.used())
            .finish()
    }
}

/// A segment's free list. A panic while it is held can only come from a
/// debug assertion in the B-tree bookkeeping; carrying on beats turning
/// every later free (in `Drop`) into a panic.
fn lock(m: &Mutex<FreeList>) -> MutexGuard<'_, FreeList> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}
