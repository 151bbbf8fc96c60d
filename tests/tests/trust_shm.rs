//! Clients can only read shared memory: every way a client could write to
//! (or resize, or punch holes in) the arena segments it receives from the
//! descriptor socket of a real daemon is tried, and each must fail, while
//! the bytes it reads stay the ones the daemon cached.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use sluice_tests::daemon::TestDaemon;
use sluice_tests::grpc::{connect, pattern, read};
use sluice_tests::shm::RawSession;

fn fd_socket(d: &TestDaemon) -> PathBuf {
    let mut p = d.socket().as_os_str().to_owned();
    p.push(".fds");
    PathBuf::from(p)
}

fn errno(ret: libc::c_int) -> Option<i32> {
    (ret != 0).then(|| io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

/// Every write path a descriptor holder has; panics naming the one that worked.
fn assert_unwritable(fd: &OwnedFd, len: usize, how: &str) {
    let raw = fd.as_raw_fd();
    // A shared writable mapping.
    // SAFETY: a new mapping at a kernel-chosen address, unmapped below if it
    // was (wrongly) made; nothing aliases it.
    let w = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            raw,
            0,
        )
    };
    if w != libc::MAP_FAILED {
        // SAFETY: unmapping the mapping just made.
        unsafe { libc::munmap(w, len) };
        panic!("{how}: mmap(PROT_WRITE, MAP_SHARED) succeeded");
    }
    // A read-only shared mapping upgraded with mprotect.
    // SAFETY: as above, read-only.
    let r = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            raw,
            0,
        )
    };
    assert_ne!(r, libc::MAP_FAILED, "{how}: a read-only mapping must work");
    // SAFETY: changing the protection of our own mapping; must be refused.
    let up = unsafe { libc::mprotect(r, len, libc::PROT_READ | libc::PROT_WRITE) };
    // SAFETY: unmapping the mapping made above.
    unsafe { libc::munmap(r, len) };
    assert_eq!(up, -1, "{how}: mprotect made a shared mapping writable");
    // write(2) / pwrite(2).
    // SAFETY: a 1-byte buffer on the stack; the call must fail.
    let n = unsafe { libc::pwrite(raw, [0xEEu8].as_ptr().cast(), 1, 0) };
    assert_eq!(n, -1, "{how}: pwrite succeeded");
    // Resizing: shrinking would make the daemon's own accesses SIGBUS.
    // SAFETY: ftruncate takes no pointers and `raw` is a descriptor we hold;
    // this process has no mapping of it left (unmapped above), so even a
    // wrongly accepted resize could not fault an access of ours.
    let shrink = unsafe { libc::ftruncate(raw, 0) };
    assert!(errno(shrink).is_some(), "{how}: ftruncate(0) succeeded");
    // SAFETY: as above.
    let grow = unsafe { libc::ftruncate(raw, (len as libc::off_t) * 2) };
    assert!(errno(grow).is_some(), "{how}: growing succeeded");
    // Punching a hole would zero cached bytes under every other client.
    // SAFETY: fallocate on a descriptor we hold; must be refused.
    let punch = unsafe {
        libc::fallocate(
            raw,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            len as libc::off_t,
        )
    };
    assert!(errno(punch).is_some(), "{how}: hole punching succeeded");
    // Removing the seals.
    // SAFETY: fcntl on a descriptor we hold; no memory is passed.
    let seals = unsafe { libc::fcntl(raw, libc::F_GET_SEALS) };
    assert!(
        seals & libc::F_SEAL_SEAL != 0 && seals & libc::F_SEAL_FUTURE_WRITE != 0,
        "{how}: seals {seals:#x} lack SEAL or FUTURE_WRITE"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_descriptors_cannot_be_written_through() {
    let d = TestDaemon::start().await;
    let data = pattern(300_000, 7);
    std::fs::write(d.root().join("obj"), &data).unwrap();
    // Cache the object and learn where it lives.
    let mut client = connect(d.socket()).await;
    assert_eq!(
        read(&mut client, &d.file_uri("obj"), None).await.unwrap().1,
        data
    );
    let s = RawSession::open(&mut client, true).await;
    assert!(
        s.opened.shared_memory,
        "this kernel seals segments: shared memory is offered"
    );

    let sock = std::os::unix::net::UnixStream::connect(fd_socket(&d)).unwrap();
    let segments = sluice_proto::fdpass::recv_segments(&sock).unwrap();
    assert!(!segments.is_empty());
    for seg in &segments {
        assert_unwritable(&seg.fd, seg.size as usize, "received descriptor");
        // Reopening the memfd through /proc gets a new open file description
        // with the inode's own permissions: the seals still hold.
        let path = format!("/proc/self/fd/{}", seg.fd.as_raw_fd());
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(reopened) => {
                assert!(
                    reopened.write_at(&[0xEE], 0).is_err(),
                    "write through a reopened memfd"
                );
                assert_unwritable(
                    &OwnedFd::from(reopened),
                    seg.size as usize,
                    "reopened descriptor",
                );
            }
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}"),
        }
    }
    // Nothing the attempts did changed what the daemon serves.
    drop(segments);
    let again = read(&mut client, &d.file_uri("obj"), None).await.unwrap().1;
    assert_eq!(again, data, "cached bytes changed");
}
