//! Buffers for assembled objects, reused. An object delivered as chunks is
//! copied into one buffer; a large buffer from the allocator is fresh
//! `mmap`ed memory, and its first touch costs a page fault per 4 KiB (glibc
//! maps every allocation of 32 MiB and more anew): for a client streaming
//! large objects that was most of its CPU. Freed large buffers wait here
//! (at most [`MAX_IDLE`] of them, [`MAX_IDLE_BYTES`] in all) for the next
//! object of a similar size. Never blocks: a pool held by another thread (or
//! left locked in a forked child) is skipped.

use std::sync::Mutex;

use bytes::Bytes;

/// Smaller buffers come from the allocator's own free lists.
const MIN_SIZE: usize = 1 << 20;
/// Most buffers kept idle.
const MAX_IDLE: usize = 4;
/// Most bytes kept idle.
const MAX_IDLE_BYTES: usize = 128 << 20;

static IDLE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty buffer with room for `len` bytes: an idle one between `len`
/// and twice that, else a new one.
pub(crate) fn take(len: usize) -> Vec<u8> {
    if len >= MIN_SIZE
        && let Ok(mut idle) = IDLE.try_lock()
        && let Some(i) = idle
            .iter()
            .enumerate()
            .filter(|(_, b)| (len..=len.saturating_mul(2)).contains(&b.capacity()))
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i)
    {
        return idle.swap_remove(i);
    }
    Vec::with_capacity(len)
}

/// `buf` as `Bytes` that give a large buffer back when dropped.
pub(crate) fn bytes(buf: Vec<u8>) -> Bytes {
    if buf.capacity() < MIN_SIZE {
        return Bytes::from(buf);
    }
    Bytes::from_owner(Pooled(buf))
}

struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        let Ok(mut idle) = IDLE.try_lock() else {
            return;
        };
        let held: usize = idle.iter().map(Vec::capacity).sum();
        if idle.len() < MAX_IDLE && held + buf.capacity() <= MAX_IDLE_BYTES {
            idle.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large buffer comes back for an object of a similar size, not
    /// for a much smaller one; small ones are never kept.
    #[test]
    fn large_buffers_are_reused_for_similar_sizes() {
        let len = 3 << 20;
        let mut buf = take(len);
        buf.resize(len, 7);
        let ptr = buf.as_ptr();
        let shared = bytes(buf);
        assert_eq!(shared.len(), len);
        drop(shared);
        let small = take(len / 4);
        assert_ne!(small.as_ptr(), ptr, "a small object got a large buffer");
        let again = take(len - 100);
        assert_eq!(again.as_ptr(), ptr, "the buffer was not reused");
        assert!(again.is_empty());
        let tiny = bytes(vec![1u8; 10]);
        drop(tiny);
        assert!(
            IDLE.lock()
                .unwrap()
                .iter()
                .all(|b| b.capacity() >= MIN_SIZE),
            "a small buffer was kept"
        );
    }
}
