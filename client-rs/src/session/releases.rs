//! The way released lease ids travel from the leases (dropped on any
//! thread) to the session's request body.
//!
//! A DataLoader worker drops one lease per sample, tens of microseconds
//! apart, on its Python thread; the request body runs on the runtime's
//! threads. A channel would wake the body's task for every id, and with it
//! a parked runtime thread (a system call and a context switch per sample).
//! Here the sender wakes the receiver only when it puts an id into an empty
//! queue while the receiver holds none, or fills the receiver's room: the
//! receiver, which holds released ids for a moment anyway (`RELEASE_DELAY`
//! in `driver`, on a timer of its own), takes everything that arrived
//! meanwhile in one go.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

#[derive(Debug, Default)]
struct Queue {
    ids: Mutex<Vec<u64>>,
    waker: AtomicWaker,
    /// The sender is gone.
    closed: AtomicBool,
    /// The receiver holds ids already: a new one needs no wake-up.
    holding: AtomicBool,
    /// Ids queued that fill the receiver's room: wake it then.
    room: AtomicUsize,
}

impl Queue {
    fn ids(&self) -> MutexGuard<'_, Vec<u64>> {
        // Every critical section is a push or a drain: never inconsistent.
        self.ids.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending end (one per session, in its `Core`); dropping it ends the
/// receiver once it took what was sent.
#[derive(Debug)]
pub(crate) struct ReleaseSender(Arc<Queue>);

/// The receiving end, in the session's request body.
#[derive(Debug)]
pub(crate) struct ReleaseReceiver(Arc<Queue>);

pub(crate) fn channel() -> (ReleaseSender, ReleaseReceiver) {
    let queue = Arc::new(Queue::default());
    (ReleaseSender(Arc::clone(&queue)), ReleaseReceiver(queue))
}

impl ReleaseSender {
    pub(crate) fn send(&self, id: u64) {
        let queued = {
            let mut ids = self.0.ids();
            ids.push(id);
            ids.len()
        };
        let first = queued == 1 && !self.0.holding.load(Ordering::SeqCst);
        if first || queued == self.0.room.load(Ordering::SeqCst) {
            self.0.waker.wake();
        }
    }
}

impl Drop for ReleaseSender {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.waker.wake();
    }
}

impl ReleaseReceiver {
    /// Moves up to `limit` ids into `out`: `Ready(n)` with `n > 0` ids,
    /// `Ready(0)` once the sender is gone and everything was taken,
    /// `Pending` otherwise: to be woken by the next id if `out` is empty,
    /// else (the caller holds ids, and has a timer for them) only once
    /// `limit` more are queued.
    pub(crate) fn poll_recv_many(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<u64>,
        limit: usize,
    ) -> Poll<usize> {
        if let n @ 1.. = self.take(out, limit) {
            return Poll::Ready(n);
        }
        self.0.holding.store(!out.is_empty(), Ordering::SeqCst);
        self.0.room.store(limit, Ordering::SeqCst);
        self.0.waker.register(cx.waker());
        // Checked again after registering: an id sent in between woke
        // nobody, and a close seen here comes after the sender's last id.
        let closed = self.0.closed.load(Ordering::Acquire);
        match self.take(out, limit) {
            0 if closed => Poll::Ready(0),
            0 => Poll::Pending,
            n => Poll::Ready(n),
        }
    }

    /// One id, if there is one (for tests).
    #[cfg(test)]
    pub(crate) fn try_recv(&mut self) -> Option<u64> {
        let mut ids = self.0.ids();
        (!ids.is_empty()).then(|| ids.remove(0))
    }

    fn take(&self, out: &mut Vec<u64>, limit: usize) -> usize {
        let mut ids = self.0.ids();
        let n = ids.len().min(limit);
        out.extend(ids.drain(..n));
        n
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use futures::task::ArcWake;

    use super::*;

    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl ArcWake for Count {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Only an id into an empty queue wakes the receiver; everything sent
    /// comes out, in order, within the limit; the end comes after the last.
    #[test]
    fn only_the_first_id_of_a_run_wakes_the_receiver() {
        let (tx, mut rx) = channel();
        let count = Arc::new(Count::default());
        let waker: Waker = futures::task::waker(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        assert!(rx.poll_recv_many(&mut cx, &mut out, 10).is_pending());
        for id in 1..=5 {
            tx.send(id);
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake for five ids");
        assert_eq!(rx.poll_recv_many(&mut cx, &mut out, 3), Poll::Ready(3));
        assert_eq!(rx.poll_recv_many(&mut cx, &mut out, 3), Poll::Ready(2));
        assert_eq!(out, [1, 2, 3, 4, 5]);
        // Holding ids (`out` not empty): only a full room wakes.
        assert!(rx.poll_recv_many(&mut cx, &mut out, 3).is_pending());
        tx.send(6);
        tx.send(7);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the holder is not woken");
        tx.send(8);
        assert_eq!(count.0.load(Ordering::SeqCst), 2, "its room is full");
        assert_eq!(rx.poll_recv_many(&mut cx, &mut out, 3), Poll::Ready(3));
        // Holding none: the first id wakes.
        out.clear();
        assert!(rx.poll_recv_many(&mut cx, &mut out, 3).is_pending());
        tx.send(9);
        assert_eq!(count.0.load(Ordering::SeqCst), 3, "woken by the first id");
        drop(tx);
        assert_eq!(rx.poll_recv_many(&mut cx, &mut out, 3), Poll::Ready(1));
        assert_eq!(rx.poll_recv_many(&mut cx, &mut out, 3), Poll::Ready(0));
        assert_eq!(out, [9]);
    }
}
