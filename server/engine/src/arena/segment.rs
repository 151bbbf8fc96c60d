//! One segment: an anonymous memfd, sealed against resizing, mapped once.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// A memfd of `len` bytes and this process's read-write shared mapping of
/// it. Unmapped on drop; the fd closes with it (clients that received a
/// duplicate keep their own mapping).
#[derive(Debug)]
pub(super) struct Mapping {
    fd: OwnedFd,
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value for its whole
// life; `Mapping` itself never reads or writes through `base`, so sharing
// or moving it between threads is sound. Access to the bytes is governed by
// the allocator (each extent owns a disjoint range).
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`: `&Mapping` only exposes the address and the fd.
unsafe impl Sync for Mapping {}

/// Which seals the kernel accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sealed {
    /// Size fixed, and no new writable mapping or `write(2)` possible.
    SizeAndWrites,
    /// Size fixed only: kernel older than 5.1 (no `F_SEAL_FUTURE_WRITE`).
    SizeOnly,
}

impl Mapping {
    /// Creates, sizes, maps and seals a memfd of `len` bytes (a multiple of
    /// the page size).
    pub(super) fn create(len: u64) -> io::Result<(Mapping, Sealed)> {
        let fd = memfd()?;
        let size = libc::off_t::try_from(len).map_err(|_| too_large(len))?;
        let map_len = usize::try_from(len).map_err(|_| too_large(len))?;
        // SAFETY: `fd` is an open descriptor we own; ftruncate has no memory
        // effects on this process.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh shared mapping at an address the kernel picks; it
        // aliases no Rust object. The fd is sized to `map_len` above.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: advice on the mapping just made; no memory effect.
        unsafe { libc::madvise(addr, map_len, libc::MADV_HUGEPAGE) };
        let base = NonNull::new(addr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        let mapping = Mapping {
            fd,
            base,
            len: map_len,
        };
        // Sealing after mapping: our writable mapping stays writable, but
        // a client holding the fd can neither truncate it (which would make
        // our accesses SIGBUS) nor map it writable.
        let sealed = seal(&mapping.fd)?;
        Ok((mapping, sealed))
    }

    pub(super) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    pub(super) fn base(&self) -> NonNull<u8> {
        self.base
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Makes `len` bytes at `off` resident and writable in our page tables
    /// without changing them (`MADV_POPULATE_WRITE`); the range is clamped
    /// to the mapping.
    pub(super) fn populate(&self, off: usize, len: usize) -> io::Result<()> {
        let off = off.min(self.len);
        let len = len.min(self.len - off);
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the range lies inside our own mapping (clamped above) and
        // `off` is page-aligned by every caller (chunks of granules).
        // MADV_POPULATE_WRITE faults pages in as a write would, without
        // writing: it changes no byte, so extents in use are unaffected.
        let rc = unsafe {
            libc::madvise(
                self.base.as_ptr().add(off).cast(),
                len,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly what mmap returned; every extent
        // holds an `Arc<Arena>`, so no reference into the mapping outlives it.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

fn memfd() -> io::Result<OwnedFd> {
    // The name shows up only in /proc/<pid>/fd and /proc/<pid>/maps as
    // "/memfd:sluice-arena (deleted)"; nothing is created in any directory.
    // SAFETY: the name is NUL-terminated and the flags are valid.
    let raw = unsafe {
        libc::memfd_create(
            c"sluice-arena".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn seal(fd: &OwnedFd) -> io::Result<Sealed> {
    let size = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on an open descriptor; no memory is passed.
    if unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_ADD_SEALS,
            size | libc::F_SEAL_FUTURE_WRITE,
        )
    } == 0
    {
        return Ok(Sealed::SizeAndWrites);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EINVAL) {
        return Err(err);
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, size) } == 0 {
        return Ok(Sealed::SizeOnly);
    }
    Err(io::Error::last_os_error())
}

fn too_large(len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("segment of {len} bytes is too large to map"),
    )
}
