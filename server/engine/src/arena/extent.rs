//! An allocated range of one segment, freed on drop.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use bytes::Bytes;

use super::{Arena, round_up};

/// `len` bytes at `offset` in segment `segment`, owned exclusively.
///
/// Dropping it returns the range to the arena; [`Extent::into_bytes`] hands
/// that duty to the last clone of the resulting [`Bytes`]. The range is
/// rounded up to the 4 KiB granule in the allocator, but the slices see only
/// `len` bytes.
pub struct Extent {
    arena: Arc<Arena>,
    ptr: NonNull<u8>,
    segment: u32,
    offset: u64,
    len: u64,
}

// SAFETY: an `Extent` owns its range like a `Box<[u8]>` owns its buffer: no
// other extent overlaps it (allocator invariant), the mapping lives as long
// as the `Arc<Arena>` it holds, and other processes map it read-only.
unsafe impl Send for Extent {}
// SAFETY: `&Extent` only reads (`as_slice`); writing needs `&mut Extent`.
unsafe impl Sync for Extent {}

impl Extent {
    pub(super) fn new(arena: Arc<Arena>, segment: u32, offset: u64, len: u64) -> Extent {
        let ptr = if len == 0 {
            NonNull::dangling()
        } else {
            let base = arena.segment_base(segment);
            // SAFETY: `offset + len` lies within the segment's mapping, which
            // is one allocation of `isize`-fitting size.
            unsafe { base.add(offset as usize) }
        };
        Extent {
            arena,
            ptr,
            segment,
            offset,
            len,
        }
    }

    /// The segment the bytes live in.
    pub fn segment(&self) -> u32 {
        self.segment
    }

    /// Offset in the segment (a multiple of 4096).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes requested.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the extent is empty (and owns nothing).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes (initially whatever the range last held: zeros for memory
    /// never used, old data otherwise).
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is mapped for as long as `self.arena` lives,
        // and no one writes it while `&self` is borrowed (see `Send`/`Sync`).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len as usize) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only
        // reference into the range in this process.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len as usize) }
    }

    /// The first byte, for writes through a pointer (a [`ReadBuf`] that a
    /// read fills while the extent is shared).
    ///
    /// [`ReadBuf`]: sluice_storage::ReadBuf
    pub fn as_mut_ptr(&mut self) -> NonNull<u8> {
        self.ptr
    }

    /// Freezes the extent into [`Bytes`] that free it when the last clone or
    /// slice is dropped. [`Arena::locate`] maps a slice's pointer back to its
    /// segment and offset.
    pub fn into_bytes(self) -> Bytes {
        if self.len == 0 {
            return Bytes::new();
        }
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for Extent {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for Extent {
    fn drop(&mut self) {
        if self.len > 0 {
            self.arena
                .release(self.segment, self.offset, round_up(self.len));
        }
    }
}

impl fmt::Debug for Extent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extent")
            .field("segment", &self.segment)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}
