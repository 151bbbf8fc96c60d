//! The bounded queue between the operations and the writer thread.
//!
//! A mutex around a `VecDeque` with two condition variables: producers push
//! one record at a time, the writer takes everything queued in one swap, so
//! the lock is held for neither formatting nor I/O. A wake-up is a system
//! call (a futex wake, whether anyone waits or not), so producers signal
//! only a writer that is actually waiting: one that found the queue empty.
//! A busy writer takes batches at its own pace (the writer pauses between
//! them), and the pushes in between cost no system call. When the queue is
//! full a producer either gives up at once or waits for room up to a
//! deadline ([`OnFull`]); the caller counts what was refused.
//!
//! [`OnFull`]: super::OnFull

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sluice_oplog::Record;

/// Why a record was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No room (within the wait, if any).
    Full,
    /// The log was closed.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Record>,
    closed: bool,
    /// The writer waits for a record.
    writer_waiting: bool,
    /// Producers waiting for room.
    blocked: usize,
}

/// A bounded multi-producer, single-consumer queue of records.
#[derive(Debug)]
pub struct Queue {
    state: Mutex<State>,
    /// Signalled when a record arrives or the queue closes.
    not_empty: Condvar,
    /// Signalled when the writer took records.
    not_full: Condvar,
    capacity: usize,
}

impl Queue {
    /// A queue of at most `capacity` records.
    pub fn new(capacity: usize) -> Self {
        Queue {
            state: Mutex::new(State::default()),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves a valid deque.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `record`; when full, waits up to `wait` for room.
    pub fn push(&self, record: Record, wait: Duration) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.items.len() >= self.capacity && !state.closed && !wait.is_zero() {
            state.blocked += 1;
            state = self
                .not_full
                .wait_timeout_while(state, wait, |s| s.items.len() >= self.capacity && !s.closed)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            state.blocked -= 1;
        }
        if state.closed {
            return Err(Refused::Closed);
        }
        if state.items.len() >= self.capacity {
            return Err(Refused::Full);
        }
        state.items.push_back(record);
        let wake = state.writer_waiting;
        drop(state);
        if wake {
            self.not_empty.notify_one();
        }
        Ok(())
    }

    /// Moves every queued record into `into` (which the caller emptied),
    /// waiting up to `idle` for one to arrive. Returns whether the queue is
    /// closed: once it is and `into` stays empty, nothing more will come.
    pub fn take(&self, into: &mut VecDeque<Record>, idle: Duration) -> bool {
        let mut state = self.lock();
        if state.items.is_empty() && !state.closed {
            state.writer_waiting = true;
            state = self
                .not_empty
                .wait_timeout_while(state, idle, |s| s.items.is_empty() && !s.closed)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            state.writer_waiting = false;
        }
        std::mem::swap(&mut state.items, into);
        let (closed, blocked) = (state.closed, state.blocked > 0);
        drop(state);
        if blocked && !into.is_empty() {
            self.not_full.notify_all();
        }
        closed
    }

    /// Refuses every later push and wakes everyone waiting.
    pub fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
        self.not_full.notify_all();
    }
}
