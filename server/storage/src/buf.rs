//! [`ReadBuf`]: memory a backend reads into, owned and address-stable.
//!
//! A backend that hands a buffer to the kernel (io_uring) cannot take it
//! as `&mut [u8]`: when the future is dropped mid-read, the borrow ends but
//! the kernel may still write into the memory, which the caller has by
//! then reused. A `ReadBuf` is owned instead. It points into memory kept
//! alive by a shared owner (an arena extent, an aligned heap block), so
//! whoever holds the `ReadBuf` — the I/O thread, until the kernel reports
//! the read done — keeps the memory from being freed or handed out again,
//! however the request that asked for it ended.
//!
//! A buffer can be split into disjoint parts (several reads in flight into
//! one extent) and the parts joined again once every read is back.

use std::alloc::Layout;
use std::any::Any;
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

/// Exclusive, owned access to `len` bytes at `ptr`, kept valid by `owner`.
pub struct ReadBuf {
    ptr: NonNull<u8>,
    len: usize,
    owner: Arc<dyn Any + Send + Sync>,
}

// SAFETY: a `ReadBuf` is the only handle to its bytes (the constructor's
// contract and `split_at` keep ranges disjoint), like a `Box<[u8]>`; the
// owner it holds is `Send + Sync`.
unsafe impl Send for ReadBuf {}
// SAFETY: `&ReadBuf` only reads; writing needs `&mut ReadBuf`.
unsafe impl Sync for ReadBuf {}

/// The answer of a read into a [`ReadBuf`]: the outcome and the buffer
/// back. On success the buffer holds the bytes; on failure its content is
/// unspecified, and it is empty only when the backend could not get it
/// back (its I/O thread died with the read in flight).
pub type BufResult = (crate::Result<()>, ReadBuf);

impl ReadBuf {
    /// A buffer of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be valid for reads and writes for as long as
    /// `owner` lives, and nothing else may access those bytes while the
    /// `ReadBuf` (or any part split from it) lives.
    pub unsafe fn from_raw_parts(
        ptr: NonNull<u8>,
        len: usize,
        owner: Arc<dyn Any + Send + Sync>,
    ) -> ReadBuf {
        ReadBuf { ptr, len, owner }
    }

    /// `len` zeroed bytes on the heap whose address is a multiple of
    /// `align` (a power of two): a bounce buffer for `O_DIRECT`.
    pub fn aligned(len: usize, align: usize) -> ReadBuf {
        let block = Arc::new(Aligned::new(len, align));
        let ptr = block.ptr;
        // SAFETY: the block is `len` bytes, lives as long as its `Arc`, and
        // no one else has a pointer into it.
        unsafe { ReadBuf::from_raw_parts(ptr, len, block) }
    }

    /// An empty buffer (what comes back when a buffer was lost).
    pub fn empty() -> ReadBuf {
        ReadBuf {
            ptr: NonNull::dangling(),
            len: 0,
            owner: Arc::new(()),
        }
    }

    /// Bytes in the buffer.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of its first byte (for alignment checks).
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: valid and exclusive (the constructor's contract).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: valid and exclusive (the constructor's contract), and
        // `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The first byte, for a kernel to write to.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Splits into `[0, at)` and `[at, len)`, both keeping the memory alive.
    ///
    /// # Panics
    /// When `at > len`.
    pub fn split_at(self, at: usize) -> (ReadBuf, ReadBuf) {
        assert!(
            at <= self.len,
            "split at {at} of a {}-byte buffer",
            self.len
        );
        // SAFETY: `at <= len`, so the pointer stays within (or one past)
        // the buffer.
        let tail = unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(at)) };
        let right = ReadBuf {
            ptr: tail,
            len: self.len - at,
            owner: self.owner.clone(),
        };
        let left = ReadBuf {
            ptr: self.ptr,
            len: at,
            owner: self.owner,
        };
        (left, right)
    }

    /// Splits into consecutive parts of `size` bytes (the last may be
    /// shorter).
    pub fn chunks(self, size: usize) -> Vec<ReadBuf> {
        let size = size.max(1);
        let mut parts = Vec::with_capacity(self.len.div_ceil(size));
        let mut rest = self;
        while rest.len > size {
            let (head, tail) = rest.split_at(size);
            parts.push(head);
            rest = tail;
        }
        if !rest.is_empty() || parts.is_empty() {
            parts.push(rest);
        }
        parts
    }

    /// Joins `next`, which must start where `self` ends and share its
    /// owner (a part split from the same buffer); else gives both back.
    pub fn join(self, next: ReadBuf) -> Result<ReadBuf, (ReadBuf, ReadBuf)> {
        if next.is_empty() && Arc::ptr_eq(&self.owner, &next.owner) {
            return Ok(self);
        }
        let adjacent = self.addr() + self.len == next.addr();
        if !adjacent || !Arc::ptr_eq(&self.owner, &next.owner) {
            return Err((self, next));
        }
        Ok(ReadBuf {
            ptr: self.ptr,
            len: self.len + next.len,
            owner: self.owner,
        })
    }

    /// Joins consecutive parts split from one buffer, in order; `None` when
    /// they are not.
    pub fn join_all(parts: impl IntoIterator<Item = ReadBuf>) -> Option<ReadBuf> {
        let mut parts = parts.into_iter();
        let mut whole = parts.next()?;
        for part in parts {
            whole = whole.join(part).ok()?;
        }
        Some(whole)
    }
}

impl AsRef<[u8]> for ReadBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Debug for ReadBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadBuf")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len)
            .finish()
    }
}

/// A zeroed heap block at an aligned address.
struct Aligned {
    ptr: NonNull<u8>,
    layout: Option<Layout>,
}

// SAFETY: owns its block like a `Box<[u8]>`; only `ReadBuf`s point into it.
unsafe impl Send for Aligned {}
// SAFETY: as above; `Aligned` itself never touches the bytes.
unsafe impl Sync for Aligned {}

impl Aligned {
    fn new(len: usize, align: usize) -> Aligned {
        let align = align.max(1);
        if len == 0 {
            // A dangling pointer at `align`: never dereferenced for 0 bytes.
            let ptr = NonNull::new(align as *mut u8).expect("align is non-zero");
            return Aligned { ptr, layout: None };
        }
        let layout = Layout::from_size_align(len, align).expect("a valid aligned layout");
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout);
        };
        Aligned {
            ptr,
            layout: Some(layout),
        }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        if let Some(layout) = self.layout {
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_disjoint_and_join_back() {
        let mut buf = ReadBuf::aligned(10_000, 4096);
        assert_eq!(buf.addr() % 4096, 0);
        assert!(buf.as_slice().iter().all(|&b| b == 0));
        buf.as_mut_slice()[9_999] = 7;
        let base = buf.addr();
        let mut parts = buf.chunks(4096);
        assert_eq!(
            parts.iter().map(ReadBuf::len).collect::<Vec<_>>(),
            [4096, 4096, 1808]
        );
        for (i, p) in parts.iter_mut().enumerate() {
            p.as_mut_slice()[0] = i as u8 + 1;
        }
        let whole = ReadBuf::join_all(parts).expect("consecutive parts");
        assert_eq!((whole.addr(), whole.len()), (base, 10_000));
        let s = whole.as_slice();
        assert_eq!((s[0], s[4096], s[8192], s[9_999]), (1, 2, 3, 7));
    }

    #[test]
    fn only_neighbours_of_one_buffer_join() {
        let (a, b) = ReadBuf::aligned(100, 8).split_at(40);
        // Out of order.
        let (b, a) = b.join(a).unwrap_err();
        // Another buffer's part.
        let other = ReadBuf::aligned(100, 8);
        let (a, _) = a.join(other).unwrap_err();
        assert_eq!(a.join(b).unwrap().len(), 100);
    }

    #[test]
    fn a_part_keeps_the_memory_alive() {
        let (head, mut tail) = ReadBuf::aligned(1 << 20, 4096).split_at(4096);
        drop(head);
        tail.as_mut_slice().fill(9);
        assert!(tail.as_slice().iter().all(|&b| b == 9));
    }
}
