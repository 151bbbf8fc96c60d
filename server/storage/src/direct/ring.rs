//! The io_uring threads of `direct://`.
//!
//! Each ring is one `io_uring` instance owned by one thread. A read is
//! sent to a ring as an [`Op`] — the descriptor, the offset and the owned
//! [`ReadBuf`] — over a channel, and the thread is woken through an
//! eventfd that always has a read armed on the ring (so the thread sleeps
//! in `io_uring_enter` alone, on completions and new work alike). The
//! thread keeps each op, buffer included, until the kernel posts its
//! completion, then sends the result and the buffer back. A caller that
//! stopped waiting (its future was dropped) only makes that send fail:
//! the buffer is dropped after the kernel is done with it, never before.
//!
//! Up to `depth` reads are in the kernel per ring; more wait in the
//! thread's queue. The rings are used round-robin.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use io_uring::{IoUring, opcode, types};
use tokio::sync::oneshot;

use crate::ReadBuf;

/// The user data of the eventfd's read.
const WAKE: u64 = u64::MAX;

/// One read or write for a ring thread.
struct Op {
    fd: Arc<OwnedFd>,
    offset: u64,
    io: Io,
    done: oneshot::Sender<(io::Result<usize>, Io)>,
}

/// What an op moves, and the memory it moves it through (kept by the ring
/// thread until the kernel is done with it).
enum Io {
    Read(ReadBuf),
    Write(Bytes),
}

impl Io {
    fn into_read_buf(self) -> ReadBuf {
        match self {
            Io::Read(buf) => buf,
            Io::Write(_) => ReadBuf::empty(),
        }
    }
}

/// The rings of a `direct://` backend.
#[derive(Debug)]
pub(crate) struct Rings {
    rings: Vec<Ring>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Ring {
    /// `None` once dropping: the thread sees the channel closed.
    tx: Mutex<Option<mpsc::Sender<Op>>>,
    wake: Arc<OwnedFd>,
}

impl Rings {
    /// `count` rings of `depth` reads in flight each, a thread apiece.
    pub(crate) fn new(count: usize, depth: u32) -> io::Result<Rings> {
        let depth = depth.max(1);
        let mut rings = Vec::new();
        for i in 0..count.max(1) {
            // One more entry than reads: the eventfd's read is always armed.
            let ring = IoUring::new(depth + 1)?;
            // SAFETY: eventfd returns a new descriptor we own, or -1.
            let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is a fresh descriptor owned by nobody else.
            let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
            let (tx, rx) = mpsc::channel();
            let thread_wake = wake.clone();
            std::thread::Builder::new()
                .name(format!("sluice-uring-{i}"))
                .spawn(move || run(ring, rx, thread_wake, depth as usize))?;
            rings.push(Ring {
                tx: Mutex::new(Some(tx)),
                wake,
            });
        }
        Ok(Rings {
            rings,
            next: AtomicUsize::new(0),
        })
    }

    /// Reads up to `buf.len()` bytes at `offset` of `fd` into `buf`; the
    /// bytes read (0 at the end of the file) and the buffer. `fd`, the
    /// buffer's address and length and `offset` must satisfy the file's
    /// `O_DIRECT` alignment, else the read fails with `EINVAL`.
    pub(crate) async fn read_at(
        &self,
        fd: Arc<OwnedFd>,
        offset: u64,
        buf: ReadBuf,
    ) -> (io::Result<usize>, ReadBuf) {
        let (res, io) = self.submit(fd, offset, Io::Read(buf)).await;
        (res, io.into_read_buf())
    }

    /// Writes up to `data.len()` bytes of `data` at `offset` of `fd`; the
    /// bytes written. The alignment rules of `read_at` hold for `O_DIRECT`
    /// descriptors.
    pub(crate) async fn write_at(
        &self,
        fd: Arc<OwnedFd>,
        offset: u64,
        data: Bytes,
    ) -> io::Result<usize> {
        self.submit(fd, offset, Io::Write(data)).await.0
    }

    async fn submit(&self, fd: Arc<OwnedFd>, offset: u64, io: Io) -> (io::Result<usize>, Io) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.rings.len();
        let ring = &self.rings[i];
        let (done, answer) = oneshot::channel();
        let op = Op {
            fd,
            offset,
            io,
            done,
        };
        let sent = {
            let tx = ring.tx.lock().unwrap_or_else(PoisonError::into_inner);
            match tx.as_ref() {
                Some(tx) => tx.send(op).map_err(|mpsc::SendError(op)| op),
                None => Err(op),
            }
        };
        if let Err(op) = sent {
            return (Err(ended()), op.io);
        }
        ring.wake();
        match answer.await {
            Ok(out) => out,
            // The thread ended with the op in flight: it kept the buffer.
            Err(_) => (Err(ended()), Io::Read(ReadBuf::empty())),
        }
    }
}

fn ended() -> io::Error {
    io::Error::other("the io_uring thread has ended")
}

impl Ring {
    fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd. A full
        // counter (EAGAIN) already wakes the thread.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Closing the channel, then waking the thread: it finishes the
        // reads in flight and exits.
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.wake();
    }
}

/// Ops the kernel holds, by slot; ops left here when the thread unwinds
/// are leaked, not dropped: the kernel may still write their buffers.
struct InFlight(Vec<Option<Op>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        for op in self.0.drain(..).flatten() {
            std::mem::forget(op);
        }
    }
}

fn run(mut ring: IoUring, rx: mpsc::Receiver<Op>, wake: Arc<OwnedFd>, depth: usize) {
    let mut slots = InFlight((0..depth).map(|_| None).collect());
    let mut free: Vec<usize> = (0..depth).rev().collect();
    let mut queued: VecDeque<Op> = VecDeque::new();
    // The eventfd's read target lives as long as the process: the read may
    // still be armed when this thread ends.
    let wake_buf: &'static mut [u8; 8] = Box::leak(Box::new([0; 8]));
    let wake_ptr = wake_buf.as_mut_ptr();
    let mut wake_armed = false;
    let mut closed = false;
    loop {
        loop {
            match rx.try_recv() {
                Ok(op) => queued.push_back(op),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if !wake_armed && !closed {
            let read = opcode::Read::new(types::Fd(wake.as_raw_fd()), wake_ptr, 8)
                .build()
                .user_data(WAKE);
            // SAFETY: the eventfd stays open (`wake` lives in this thread)
            // and the target is leaked, so both outlive the read.
            unsafe { ring.submission().push(&read) }.expect("a slot for the wake read");
            wake_armed = true;
        }
        while !queued.is_empty() {
            let Some(slot) = free.pop() else { break };
            let mut op = queued.pop_front().expect("not empty");
            let fd = types::Fd(op.fd.as_raw_fd());
            let entry = match &mut op.io {
                Io::Read(buf) => {
                    let len = buf.len().min(u32::MAX as usize) as u32;
                    opcode::Read::new(fd, buf.as_mut_ptr(), len)
                        .offset(op.offset)
                        .build()
                }
                Io::Write(data) => {
                    let len = data.len().min(u32::MAX as usize) as u32;
                    opcode::Write::new(fd, data.as_ptr(), len)
                        .offset(op.offset)
                        .build()
                }
            };
            // SAFETY: the descriptor and the memory are kept in `slots`
            // until the completion of this op is reaped.
            unsafe { ring.submission().push(&entry.user_data(slot as u64)) }
                .expect("a slot per op");
            slots.0[slot] = Some(op);
        }
        if closed && free.len() == depth && !wake_armed {
            return;
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
            Err(e) => {
                tracing::error!(error = %e, "io_uring_enter failed; direct:// reads on this ring stop");
                // Reads in flight keep their buffers (leaked by `InFlight`).
                return;
            }
        }
        for cqe in ring.completion() {
            if cqe.user_data() == WAKE {
                wake_armed = false;
                continue;
            }
            let slot = cqe.user_data() as usize;
            let Some(op) = slots.0[slot].take() else {
                continue;
            };
            free.push(slot);
            let res = cqe.result();
            let out = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                Ok(res as usize)
            };
            // The descriptor is let go before the answer; a caller that
            // went away drops the buffer here, after the kernel is done.
            let Op { fd, io, done, .. } = op;
            drop(fd);
            let _ = done.send((out, io));
        }
    }
}
