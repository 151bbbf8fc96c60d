//! The daemon's arena segments, received over the descriptor socket and
//! mapped read-only into this process.
//!
//! The daemon keeps its RAM cache in a few large memfd segments. Before a
//! session opens, the client connects to the descriptor socket next to the
//! gRPC socket (`<socket>.fds`), receives one descriptor per segment with
//! `SCM_RIGHTS` ([`sluice_proto::fdpass`]) and maps each one `PROT_READ`,
//! `MAP_SHARED`. The descriptors are closed right after mapping: a mapping
//! keeps its memfd alive on its own, so leases stay readable even after the
//! daemon is gone.
//!
//! A [`Mappings`] lives as long as the session's last user (the session
//! handle or a lease) and unmaps everything when dropped. Leases point into
//! it; the session checks every extent against the segment's size before a
//! lease is made, so a lease's slice never leaves its mapping.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::Duration;

use sluice_proto::fdpass::{SegmentFd, recv_segments};
use sluice_proto::v1::ArenaSegment;

use crate::error::{Error, Result};

/// Giving up on the segment table after this long: the daemon sends it as
/// soon as it accepts, so a long wait means it is wedged.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// The descriptor socket of the daemon whose gRPC socket is `socket`.
pub(crate) fn fd_socket_path(socket: &Path) -> PathBuf {
    let mut path = socket.as_os_str().to_owned();
    path.push(".fds");
    PathBuf::from(path)
}

/// One mapped segment.
#[derive(Debug)]
struct Mapping {
    /// Start of the mapping; dangling (never read) for an empty segment.
    base: NonNull<u8>,
    size: usize,
}

/// Every segment of the arena, mapped read-only.
#[derive(Debug)]
pub(crate) struct Mappings {
    segments: HashMap<u32, Mapping>,
}

// SAFETY: the mappings are read-only (PROT_READ) and only unmapped in Drop,
// when no reference into them remains; sharing or moving the pointers
// between threads is no different from sharing a `&[u8]`.
unsafe impl Send for Mappings {}
// SAFETY: as above; nothing in `Mappings` is ever written through.
unsafe impl Sync for Mappings {}

/// Why the descriptor socket could not be used.
#[derive(Debug)]
pub(crate) enum SetupError {
    /// Nothing to connect to (no socket, nobody listening, no access):
    /// shared memory is not offered here.
    Unreachable(Error),
    /// The socket answered but the setup failed.
    Failed(Error),
}

impl Mappings {
    /// Connects to the descriptor socket at `path`, receives the segments
    /// and maps them. Blocking: run it off the async workers.
    pub(crate) fn receive(path: &Path) -> Result<Self, SetupError> {
        let fail = |reason, source| Error::SharedMemory {
            path: path.to_owned(),
            reason,
            source: Some(source),
        };
        let sock = UnixStream::connect(path).map_err(|error| {
            let unreachable = matches!(
                error.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::PermissionDenied
            );
            let error = fail("cannot connect to the descriptor socket", error);
            if unreachable {
                SetupError::Unreachable(error)
            } else {
                SetupError::Failed(error)
            }
        })?;
        let received = sock
            .set_read_timeout(Some(RECV_TIMEOUT))
            .and_then(|()| recv_segments(&sock))
            .map_err(|error| SetupError::Failed(fail("cannot receive the segments", error)))?;
        Self::map(received).map_err(|error| SetupError::Failed(fail("cannot map a segment", error)))
    }

    /// Maps each received segment read-only; the descriptors are closed.
    pub(crate) fn map(received: Vec<SegmentFd>) -> io::Result<Self> {
        let mut segments = HashMap::with_capacity(received.len());
        for segment in received {
            let size = usize::try_from(segment.size)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "segment too large"))?;
            let mapping = if size == 0 {
                Mapping {
                    base: NonNull::dangling(),
                    size,
                }
            } else {
                Mapping {
                    base: map_read_only(&segment.fd, size)?,
                    size,
                }
            };
            // A duplicate id drops (and unmaps) the earlier mapping.
            if segments.insert(segment.id, mapping).is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "segment id sent twice",
                ));
            }
        }
        Ok(Mappings { segments })
    }

    /// Whether the daemon's segment table names exactly the segments
    /// received, with the same sizes.
    pub(crate) fn matches(&self, announced: &[ArenaSegment]) -> bool {
        announced.len() == self.segments.len()
            && announced.iter().all(|segment| {
                self.size(segment.id)
                    .is_some_and(|size| size == segment.size)
            })
    }

    /// The size of segment `id`, if it is mapped.
    pub(crate) fn size(&self, id: u32) -> Option<u64> {
        self.segments.get(&id).map(|m| m.size as u64)
    }

    /// Whether `ptr` lies inside one of the mappings.
    pub(crate) fn contains(&self, ptr: *const u8) -> bool {
        self.segments.values().any(|m| {
            let base = m.base.as_ptr() as usize;
            (base..base + m.size).contains(&(ptr as usize))
        })
    }

    /// The start of `len` bytes at `offset` in segment `id`, which the caller
    /// checked to lie inside the segment; `None` for an unknown segment or a
    /// range outside it.
    pub(crate) fn slice_start(&self, id: u32, offset: usize, len: usize) -> Option<NonNull<u8>> {
        let mapping = self.segments.get(&id)?;
        if len == 0 || offset.checked_add(len)? > mapping.size {
            return None;
        }
        // SAFETY: offset + len <= size (checked above, len > 0 so the
        // mapping is real), so the result stays inside the mapping.
        Some(unsafe { mapping.base.add(offset) })
    }
}

impl Drop for Mappings {
    fn drop(&mut self) {
        for mapping in self.segments.values().filter(|m| m.size > 0) {
            // SAFETY: base and size are exactly what mmap returned and was
            // given; every lease holds the `Mappings` alive, so no slice into
            // it outlives this call.
            unsafe {
                libc::munmap(mapping.base.as_ptr().cast(), mapping.size);
            }
        }
    }
}

fn map_read_only(fd: &impl AsRawFd, size: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh shared read-only mapping of a descriptor we own; the
    // kernel picks the address, so no existing memory is affected.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: advice on the mapping just made; no memory effect.
    unsafe { libc::madvise(ptr, size, libc::MADV_HUGEPAGE) };
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::OwnedFd;

    use super::*;

    fn segment(id: u32, data: &[u8]) -> SegmentFd {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(data).unwrap();
        SegmentFd {
            id,
            size: data.len() as u64,
            fd: OwnedFd::from(file),
        }
    }

    /// Segments are mapped asking for transparent huge pages (`VmFlags:
    /// hg`): where the node's `shmem_enabled` allows them, a worker maps the
    /// arena 2 MiB at a time instead of faulting it in page by page.
    #[test]
    fn segments_are_mapped_asking_for_huge_pages() {
        if !Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            return; // a kernel without transparent huge pages
        }
        let mappings = Mappings::map(vec![segment(1, &[5; 8192])]).unwrap();
        let start = mappings.slice_start(1, 0, 1).unwrap().as_ptr() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        let mut flags = None;
        for line in smaps.lines() {
            let range = line.split_once(' ').and_then(|(r, _)| r.split_once('-'));
            if let Some((a, b)) = range
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                inside = (a..b).contains(&start);
            } else if inside && let Some(f) = line.strip_prefix("VmFlags:") {
                flags = Some(f.to_owned());
                break;
            }
        }
        let flags = flags.expect("the mapping is in /proc/self/smaps");
        assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
    }

    #[test]
    fn fd_socket_is_next_to_the_grpc_socket() {
        assert_eq!(
            fd_socket_path(Path::new("/run/sluice/sluiced.sock")),
            Path::new("/run/sluice/sluiced.sock.fds")
        );
    }

    #[test]
    fn mapped_segments_show_the_file_bytes() {
        let mappings = Mappings::map(vec![segment(7, b"hello arena"), segment(9, b"")]).unwrap();
        let start = mappings.slice_start(7, 6, 5).unwrap();
        // SAFETY: slice_start checked 6 + 5 <= 11 bytes of segment 7.
        let bytes = unsafe { std::slice::from_raw_parts(start.as_ptr(), 5) };
        assert_eq!(bytes, b"arena");
        assert!(mappings.contains(start.as_ptr()));
        assert!(!mappings.contains(b"elsewhere".as_ptr()));
        assert_eq!((mappings.size(7), mappings.size(9)), (Some(11), Some(0)));
        assert_eq!(mappings.slice_start(7, 7, 5), None, "past the end");
        assert_eq!(mappings.slice_start(8, 0, 1), None, "unknown segment");
        assert_eq!(mappings.slice_start(7, usize::MAX, 2), None, "overflow");
    }

    #[test]
    fn table_must_match_the_descriptors() {
        let mappings = Mappings::map(vec![segment(1, b"abcd"), segment(2, b"ef")]).unwrap();
        let seg = |id, size| ArenaSegment { id, size };
        assert!(mappings.matches(&[seg(2, 2), seg(1, 4)]));
        assert!(!mappings.matches(&[seg(1, 4)]), "one missing");
        assert!(!mappings.matches(&[seg(1, 4), seg(2, 3)]), "size differs");
        assert!(!mappings.matches(&[seg(1, 4), seg(3, 2)]), "id differs");
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let error = Mappings::map(vec![segment(1, b"a"), segment(1, b"b")]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_missing_socket_is_unreachable_not_failed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.sock.fds");
        match Mappings::receive(&path) {
            Err(SetupError::Unreachable(error)) => {
                assert!(error.to_string().contains("none.sock.fds"), "{error}");
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }

    #[test]
    fn segments_arrive_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock.fds");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let seg = segment(3, b"segment three");
            use std::os::fd::AsFd;
            sluice_proto::fdpass::send_segments(&sock, &[(3, seg.size, seg.fd.as_fd())]).unwrap();
        });
        let mappings = Mappings::receive(&path).unwrap();
        server.join().unwrap();
        let start = mappings.slice_start(3, 8, 5).unwrap();
        // SAFETY: slice_start checked 8 + 5 <= 13 bytes of segment 3, which
        // stays mapped read-only while `mappings` lives.
        let bytes = unsafe { std::slice::from_raw_parts(start.as_ptr(), 5) };
        assert_eq!(bytes, b"three");
    }
}
