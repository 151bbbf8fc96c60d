//! Memory files that local clients registered for uploads.
//!
//! A client on the node uploads without pushing its bytes through gRPC: it
//! writes them into a memory file of its own (`memfd_create`), registers
//! that file once on the descriptor socket, and sends `Upload` messages
//! that name ranges of it. The daemon copies each range into the upload's
//! part (an arena extent, reserved and charged exactly as for `Write`) with
//! `pread(2)`, and tells the client which bytes it may reuse.
//!
//! What a hostile client can do with this, and why it is harmless:
//! - The file is read with `pread`, never mapped: truncating it makes a read
//!   short (the upload fails), never a `SIGBUS` in the daemon; reading a
//!   hole returns zeros without allocating memory.
//! - Only memory files are accepted (`F_GET_SEALS` answers for them alone),
//!   so a read never waits on a disk, a network file system, a FUSE server,
//!   a pipe or a device.
//! - The descriptor carries its own access mode: a file the client could
//!   not read cannot be read through the daemon either.
//! - Changing the bytes while they are copied changes only the client's own
//!   upload.
//! - A registration is bound to the uid that made it, lives only as long as
//!   the descriptor-socket connection that made it (one per connection, so
//!   at most `server.limits.max_connections` exist), and its token is 128
//!   random bits.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use sluice_proto::fdpass::TOKEN_LEN;

/// A registered memory file.
#[derive(Debug)]
pub struct Memory {
    fd: OwnedFd,
    uid: u32,
}

impl Memory {
    /// Fills `buf` from `offset` of the file; `UnexpectedEof` if the file
    /// ends first.
    pub fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        // Borrow the descriptor as a File without taking ownership of it.
        let file = std::mem::ManuallyDrop::new(
            // SAFETY: the descriptor is open for as long as `self`, and the
            // ManuallyDrop never closes it.
            unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(self.fd.as_raw_fd()) },
        );
        while !buf.is_empty() {
            match file.read_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the shared memory file ends before the range",
                    ));
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Checks that `fd` is a memory file the daemon may read: a reason if not.
pub fn check(fd: &OwnedFd) -> Result<(), &'static str> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; no memory is passed.
    let seals = unsafe { libc::fcntl(raw, libc::F_GET_SEALS) };
    if seals < 0 {
        return Err("not a memory file (memfd_create)");
    }
    // SAFETY: as above.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    if flags < 0 || flags & libc::O_ACCMODE == libc::O_WRONLY {
        return Err("the memory file is not open for reading");
    }
    Ok(())
}

/// The registrations of the node's clients.
#[derive(Debug, Default)]
pub struct Registry {
    live: Mutex<HashMap<[u8; TOKEN_LEN], Arc<Memory>>>,
}

/// A registration; dropping it (when its connection closes) ends it.
/// Uploads under way keep the file until they end.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    token: [u8; TOKEN_LEN],
}

impl Registration {
    /// The token the client names the file with.
    pub fn token(&self) -> &[u8; TOKEN_LEN] {
        &self.token
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.token);
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; TOKEN_LEN], Arc<Memory>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `fd` (already [`check`]ed) for the client `uid`.
    pub fn register(self: &Arc<Self>, fd: OwnedFd, uid: u32) -> io::Result<Registration> {
        let token = random_token()?;
        self.lock().insert(token, Arc::new(Memory { fd, uid }));
        Ok(Registration {
            registry: self.clone(),
            token,
        })
    }

    /// The file registered under `token`, if it exists and the caller is
    /// the uid that registered it (a caller without one — a TCP client —
    /// never is).
    pub fn get(&self, token: &[u8], uid: Option<u32>) -> Option<Arc<Memory>> {
        let token: &[u8; TOKEN_LEN] = token.try_into().ok()?;
        let memory = self.lock().get(token).cloned()?;
        (Some(memory.uid) == uid).then_some(memory)
    }

    /// How many registrations are live.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn random_token() -> io::Result<[u8; TOKEN_LEN]> {
    let mut token = [0u8; TOKEN_LEN];
    let mut filled = 0;
    while filled < TOKEN_LEN {
        // SAFETY: writes at most the remaining bytes of `token`.
        let n =
            unsafe { libc::getrandom(token[filled..].as_mut_ptr().cast(), TOKEN_LEN - filled, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::FromRawFd;

    fn memfd(data: &[u8]) -> OwnedFd {
        // SAFETY: memfd_create with a valid name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut f = std::fs::File::from(fd.try_clone().unwrap());
        f.write_all(data).unwrap();
        fd
    }

    #[test]
    fn only_readable_memory_files_are_accepted() {
        assert_eq!(check(&memfd(b"x")), Ok(()));
        let file = tempfile::tempfile().unwrap();
        assert_eq!(check(&file.into()), Err("not a memory file (memfd_create)"));
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(check(&a.into()).is_err(), "a socket");
        let rw = memfd(b"x");
        let path = format!("/proc/self/fd/{}", rw.as_raw_fd());
        let wo = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        assert_eq!(
            check(&wo.into()),
            Err("the memory file is not open for reading")
        );
    }

    #[test]
    fn a_registration_is_found_by_its_token_and_uid_until_dropped() {
        let registry = Arc::new(Registry::default());
        let a = registry.register(memfd(b"hello world"), 1000).unwrap();
        let b = registry.register(memfd(b"other"), 1000).unwrap();
        assert_ne!(a.token(), b.token());
        let memory = registry.get(a.token(), Some(1000)).unwrap();
        let mut buf = [0u8; 5];
        memory.read_exact_at(&mut buf, 6).unwrap();
        assert_eq!(&buf, b"world");
        let err = memory.read_exact_at(&mut buf, 8).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(registry.get(a.token(), Some(1001)).is_none(), "another uid");
        assert!(registry.get(a.token(), None).is_none());
        assert!(registry.get(&a.token()[..8], Some(1000)).is_none());
        assert_eq!(registry.len(), 2);
        drop(a);
        assert_eq!(registry.len(), 1);
        assert!(registry.get(b.token(), Some(1000)).is_some());
        // An upload that got the file before the registration ended keeps it.
        memory.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello");
    }
}
