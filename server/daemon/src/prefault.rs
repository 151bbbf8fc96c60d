//! Making the shared-memory arena resident at startup (`cache.prefault`).
//!
//! A thread of its own, at `SCHED_IDLE` priority (it runs only when a core
//! has nothing else to do, so reads that arrive meanwhile are never slowed
//! by it), walks the arena 2 MiB at a time with `Arena::prefault`. Pages it
//! has not reached yet are touched by the reads that fill them, as without
//! it. Dropping the [`Prefault`] handle stops it after the chunk in hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use prometheus_client::metrics::gauge::Gauge;
use sluice_engine::arena::Arena;

/// Bytes made resident per `madvise`: small enough to stop promptly.
const CHUNK: u64 = 2 << 20;

/// The running prefault; stops it when dropped.
#[derive(Debug)]
pub(crate) struct Prefault {
    stop: Arc<AtomicBool>,
}

impl Drop for Prefault {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts making `arena` resident; `gauge` follows the bytes done.
pub(crate) fn start(arena: Arc<Arena>, gauge: Gauge) -> std::io::Result<Prefault> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::Builder::new()
        .name("sluice-prefault".into())
        .spawn(move || {
            idle_priority();
            let start = Instant::now();
            let result = arena.prefault(CHUNK, |done| {
                gauge.set(i64::try_from(done).unwrap_or(i64::MAX));
                !stopped.load(Ordering::Relaxed)
            });
            match result {
                Ok(done) if done == arena.capacity() => tracing::info!(
                    bytes = done,
                    elapsed = ?start.elapsed(),
                    "shared-memory arena resident (cache.prefault)"
                ),
                Ok(done) => tracing::debug!(bytes = done, "arena prefault stopped"),
                Err(error) => tracing::warn!(
                    %error,
                    "cannot prefault the shared-memory arena (MADV_POPULATE_WRITE needs Linux \
                     5.14); its pages are made resident as reads first fill them"
                ),
            }
        })?;
    Ok(Prefault { stop })
}

/// Puts the calling thread in `SCHED_IDLE`; on failure it keeps the
/// default priority, niced as far as allowed.
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        // SAFETY: plain syscall on the calling thread (Linux nice is per
        // thread).
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    }
}
