//! Writes in flight when the daemon stops.
//!
//! At SIGTERM a Write that is still streaming gets `server.grace_period` to
//! finish, like any call. Past it, it must not simply be dropped: tonic runs
//! every call as a task of its own that outlives the server future, so a
//! dropped upload is only torn down when the runtime goes away, and an S3
//! multipart upload dropped then is never aborted (its parts stay stored,
//! invisible but billed, until a bucket lifecycle rule collects them). So
//! the drain cancels the writes still in flight through [`Uploads::cancel`]:
//! each write stops waiting for its client (a part or the commit already
//! under way, one backend request, finishes first), ends with UNAVAILABLE
//! and aborts its upload the normal way (S3 AbortMultipartUpload, the
//! temporary file removed), and the daemon waits for those aborts, at most
//! [`ABORT_WAIT`], before it exits.
//!
//! Nothing partial ever becomes visible either way: an object is committed
//! only by a trailer whose byte count matches (see `api/write.rs`), as one
//! PutObject, one CompleteMultipartUpload or one rename.

use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// How long the daemon waits for cancelled writes to abort their uploads:
/// one AbortMultipartUpload request each, normally milliseconds; more means
/// the backend is unreachable and the abort would not get through anyway.
pub(crate) const ABORT_WAIT: Duration = Duration::from_secs(5);

/// The writes in flight and the signal that cancels them (module docs).
#[derive(Debug, Clone, Default)]
pub(crate) struct Uploads {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Uploads {
    /// Registers a write: the daemon's exit waits (at most [`ABORT_WAIT`]
    /// past the grace period) until the token is dropped.
    pub(crate) fn track(&self) -> TaskTrackerToken {
        self.tracker.token()
    }

    /// Completes when the writes in flight must stop.
    pub(crate) fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// The grace period is over: cancels the writes in flight and waits until
    /// they have aborted their uploads, at most [`ABORT_WAIT`]. Returns how
    /// many were still running at the end.
    pub(crate) async fn cancel(&self) -> usize {
        self.cancel.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(ABORT_WAIT, self.tracker.wait()).await;
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn cancel_waits_for_tracked_writes_then_gives_up() {
        let uploads = Uploads::default();
        assert_eq!(uploads.cancel().await, 0, "nothing to wait for");

        let uploads = Uploads::default();
        let token = uploads.track();
        let write = {
            let uploads = uploads.clone();
            tokio::spawn(async move {
                uploads.cancelled().await;
                // Aborting takes a while, then the write ends.
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop(token);
            })
        };
        let started = tokio::time::Instant::now();
        assert_eq!(uploads.cancel().await, 0);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        write.await.unwrap();

        let uploads = Uploads::default();
        let _stuck = uploads.track();
        let started = tokio::time::Instant::now();
        assert_eq!(uploads.cancel().await, 1, "a write that never ends");
        assert_eq!(started.elapsed(), ABORT_WAIT);
    }
}
