//! [`Lease`]: one piece of a fetched object, readable as `&[u8]`.
//!
//! With shared-memory delivery a lease is a window into a mapped arena
//! segment: the daemon keeps the extent pinned (never evicted, never
//! rewritten) until the lease id comes back in a release, which the lease
//! sends from `Drop`. Dropping never blocks: the id goes into an unbounded
//! channel that the session's request stream drains, several ids per
//! `ReleaseRequest`. The channel cannot grow without bound, since the daemon
//! stops handing out leases once the session's quota is pinned.
//!
//! With stream delivery a lease owns its bytes, which arrived in the
//! messages; nothing is released. Both kinds deref the same way, so readers
//! do not care which delivery a session got.
//!
//! Every mapped lease holds the session's [`Core`]: the mappings stay mapped
//! and the session stream stays open (so the daemon keeps the pins) for as
//! long as a lease lives, even after the `Session` handle is gone.

use std::fmt;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::AbortHandle;

use super::mapping::Mappings;
use super::releases::ReleaseSender;

/// What a session's users share: the mappings, the way back for releases,
/// and the driver task, which ends with the last user.
#[derive(Debug)]
pub(crate) struct Core {
    mappings: Option<Mappings>,
    releases: ReleaseSender,
    driver: AbortHandle,
}

impl Core {
    pub(crate) fn new(
        mappings: Option<Mappings>,
        releases: ReleaseSender,
        driver: AbortHandle,
    ) -> Self {
        Core {
            mappings,
            releases,
            driver,
        }
    }

    pub(crate) fn mappings(&self) -> Option<&Mappings> {
        self.mappings.as_ref()
    }

    /// Queues the release of `lease_id`; a no-op once the stream is gone
    /// (the daemon released everything when it ended).
    pub(crate) fn release(&self, lease_id: u64) {
        self.releases.send(lease_id);
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // Ending the driver drops the response stream, which resets the
        // call: the daemon ends the session. Nothing points into the
        // mappings any more, so they are unmapped right after.
        self.driver.abort();
    }
}

/// A piece of a fetched object: bytes `object_offset()..object_offset() +
/// len()` of it. Derefs to the bytes; a shared-memory lease is released
/// when dropped.
pub struct Lease {
    object_offset: u64,
    lease_id: u64,
    data: Data,
}

enum Data {
    /// `len` bytes at `start`, inside a mapping of `core`.
    Mapped {
        start: NonNull<u8>,
        len: usize,
        core: Arc<Core>,
    },
    /// Bytes that came in the messages.
    Owned(Bytes),
}

// SAFETY: `start` points into a read-only mapping that `core` keeps alive;
// the bytes are never written through it, so a `Lease` is as safe to send
// or share between threads as the `&[u8]` it derefs to.
unsafe impl Send for Lease {}
// SAFETY: as above.
unsafe impl Sync for Lease {}

impl Lease {
    /// A lease on `len > 0` bytes at `segment_offset` of `segment`. `None`
    /// if the session has no such segment or the range leaves it.
    pub(crate) fn mapped(
        core: Arc<Core>,
        segment: u32,
        segment_offset: usize,
        len: usize,
        object_offset: u64,
        lease_id: u64,
    ) -> Option<Lease> {
        let start = core.mappings()?.slice_start(segment, segment_offset, len)?;
        Some(Lease {
            object_offset,
            lease_id,
            data: Data::Mapped { start, len, core },
        })
    }

    /// A lease over bytes received in the messages.
    pub(crate) fn owned(object_offset: u64, data: Bytes) -> Lease {
        Lease {
            object_offset,
            lease_id: 0,
            data: Data::Owned(data),
        }
    }

    /// Offset of the first byte in the object.
    pub fn object_offset(&self) -> u64 {
        self.object_offset
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        match &self.data {
            Data::Mapped { len, .. } => *len,
            Data::Owned(bytes) => bytes.len(),
        }
    }

    /// Whether the lease holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The daemon's id of this lease; 0 when there is nothing to release
    /// (stream delivery).
    pub fn lease_id(&self) -> u64 {
        self.lease_id
    }

    /// Whether the bytes lie in the daemon's shared memory (else they were
    /// copied out of the messages).
    pub fn is_mapped(&self) -> bool {
        matches!(self.data, Data::Mapped { .. })
    }

    /// The owned bytes, if this lease owns them.
    pub(crate) fn as_owned(&self) -> Option<&Bytes> {
        match &self.data {
            Data::Owned(bytes) => Some(bytes),
            Data::Mapped { .. } => None,
        }
    }
}

impl Deref for Lease {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.data {
            // SAFETY: `Lease::mapped` checked that `len` bytes at `start`
            // lie inside a mapping, which `core` keeps mapped for as long as
            // this lease lives; the daemon does not rewrite a leased extent
            // until the lease is released, which happens only in Drop.
            Data::Mapped { start, len, .. } => unsafe {
                std::slice::from_raw_parts(start.as_ptr(), *len)
            },
            Data::Owned(bytes) => bytes,
        }
    }
}

impl AsRef<[u8]> for Lease {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Data::Mapped { core, .. } = &self.data
            && self.lease_id != 0
        {
            core.release(self.lease_id);
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("object_offset", &self.object_offset)
            .field("len", &self.len())
            .field("lease_id", &self.lease_id)
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

/// Joins consecutive owned leases into one, so that an object that came as
/// chunks reads as one slice; mapped leases are kept as they are (joining
/// them would mean copying out of shared memory).
pub(crate) fn join_owned(parts: Vec<Lease>) -> Vec<Lease> {
    let mut out: Vec<Lease> = Vec::with_capacity(parts.len());
    let mut run: Vec<Lease> = Vec::new();
    for part in parts {
        if part.as_owned().is_some() {
            run.push(part);
        } else {
            out.extend(join_run(std::mem::take(&mut run)));
            out.push(part);
        }
    }
    out.extend(join_run(run));
    out
}

/// One lease for a run of contiguous owned leases: no copy for a run of one.
fn join_run(run: Vec<Lease>) -> Option<Lease> {
    let first_offset = run.first()?.object_offset;
    if run.len() == 1 {
        return run.into_iter().next();
    }
    let total = run.iter().map(|l| l.len()).sum();
    let mut buf = crate::pool::take(total);
    for lease in &run {
        buf.extend_from_slice(lease);
    }
    Some(Lease::owned(first_offset, crate::pool::bytes(buf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(offset: u64, data: &'static [u8]) -> Lease {
        Lease::owned(offset, Bytes::from_static(data))
    }

    #[test]
    fn leases_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Lease>();
    }

    #[test]
    fn owned_lease_derefs_to_its_bytes() {
        let lease = owned(10, b"abc");
        assert_eq!(
            (&*lease, lease.object_offset(), lease.len()),
            (&b"abc"[..], 10, 3)
        );
        assert_eq!((lease.lease_id(), lease.is_mapped()), (0, false));
    }

    #[test]
    fn chunks_join_into_one_part_in_order() {
        let joined = join_owned(vec![owned(5, b"he"), owned(7, b"ll"), owned(9, b"o")]);
        assert_eq!(joined.len(), 1);
        assert_eq!((&*joined[0], joined[0].object_offset()), (&b"hello"[..], 5));
    }

    #[test]
    fn a_single_chunk_is_not_copied() {
        let data = Bytes::from_static(b"whole");
        let joined = join_owned(vec![Lease::owned(0, data.clone())]);
        assert_eq!(joined[0].as_ptr(), data.as_ptr());
        assert!(join_owned(Vec::new()).is_empty());
    }
}
