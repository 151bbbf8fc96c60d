//! The tokio runtime behind every call, blocking waits that release the GIL
//! and stay interruptible, and fork safety.
//!
//! One multi-threaded runtime per process runs the gRPC channels, the
//! session drivers (which send lease releases while Python does something
//! else) and the uploads. A blocking call runs its future with `block_on`
//! on the calling thread with the GIL released, in slices of [`TICK`];
//! between slices it takes the GIL back for `PyErr_CheckSignals`, so Ctrl-C
//! raises `KeyboardInterrupt` within a tick and drops (cancels) the future.
//!
//! Fork: a forked child has none of the parent's threads, so the parent's
//! runtime, channels and sessions are dead there. Everything tied to them is
//! held in a [`PidBound`], which the child notices (the pid changed) and
//! never touches again: neither used nor dropped, since dropping would wake
//! or join threads that do not exist. It is leaked instead, and the child
//! builds its own runtime, connection and session on first use.

use std::future::Future;
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// How long a blocking call runs without the GIL before it checks for
/// signals (Ctrl-C).
const TICK: Duration = Duration::from_millis(20);

/// Worker threads of the runtime: the daemon is on the same node, so a
/// couple of threads keep its socket busy; the work is in the daemon.
const WORKERS: usize = 2;

/// A value that belongs to the process that made it: the current process
/// when the pid matches, else a dead parent's, which is leaked on drop.
#[derive(Debug)]
pub(crate) struct PidBound<T> {
    pid: u32,
    value: ManuallyDrop<T>,
}

impl<T> PidBound<T> {
    pub(crate) fn new(value: T) -> Self {
        PidBound {
            pid: std::process::id(),
            value: ManuallyDrop::new(value),
        }
    }

    /// The value, if it was made by this process.
    pub(crate) fn get(&self) -> Option<&T> {
        (self.pid == std::process::id()).then_some(&*self.value)
    }

    /// The value, mutably, if it was made by this process.
    pub(crate) fn get_mut(&mut self) -> Option<&mut T> {
        (self.pid == std::process::id()).then_some(&mut *self.value)
    }
}

impl<T> Drop for PidBound<T> {
    fn drop(&mut self) {
        if self.pid == std::process::id() {
            // SAFETY: dropped once, here; never used afterwards.
            unsafe { ManuallyDrop::drop(&mut self.value) }
        }
    }
}

/// Locks a mutex, ignoring poisoning: the guarded state stays consistent
/// (every critical section is a take or a replace).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

static RUNTIME: Mutex<Option<PidBound<Arc<Runtime>>>> = Mutex::new(None);

/// This process's runtime, built on first use (also the first use after a
/// fork).
pub(crate) fn runtime() -> PyResult<Arc<Runtime>> {
    let mut slot = lock(&RUNTIME);
    if let Some(runtime) = slot.as_ref().and_then(PidBound::get) {
        return Ok(Arc::clone(runtime));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .thread_name("sluice-io")
        .enable_all()
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the sluice runtime: {e}")))?;
    let runtime = Arc::new(runtime);
    // A parent's runtime is replaced here, and leaked by its PidBound.
    *slot = Some(PidBound::new(Arc::clone(&runtime)));
    Ok(runtime)
}

/// Runs `future` to completion on the runtime with the GIL released,
/// checking for signals every [`TICK`]; a signal handler's exception (such
/// as `KeyboardInterrupt`) cancels the future and is returned.
pub(crate) fn wait<F>(py: Python<'_>, future: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let runtime = runtime()?;
    let mut future = std::pin::pin!(future);
    loop {
        let step = py.detach(|| {
            runtime.block_on(async { tokio::time::timeout(TICK, future.as_mut()).await })
        });
        match step {
            Ok(output) => return Ok(output),
            Err(_elapsed) => py.check_signals()?,
        }
    }
}

/// Runs the future `make` returns on a thread of its own, blocking on the
/// runtime there, and returns a channel for its output. For futures that
/// the compiler cannot prove `Send` for every lifetime (the upload futures
/// of `sluice-client`), which therefore can neither be spawned nor waited
/// on with [`wait`].
pub(crate) fn spawn_thread<F, Fut>(name: &str, make: F) -> PyResult<oneshot::Receiver<Fut::Output>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future,
    Fut::Output: Send + 'static,
{
    let runtime = runtime()?;
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = tx.send(runtime.block_on(make()));
        })
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start a thread: {e}")))?;
    Ok(rx)
}
