//! Ending response streams whose client stopped reading.
//!
//! A response stream is polled by the HTTP/2 connection only while the
//! client's flow-control window has room: a client that stops reading
//! (stopped, hung, vanished behind a silent network) leaves it parked,
//! holding whatever it was about to send — slices of cached objects,
//! streamed parts, a session's undelivered results. [`watch`] wraps a
//! response stream so that once it has handed over a message and then not
//! been asked for the next one for `read.stall_timeout`, a watchdog drops
//! what it holds (charges, buffers, fetches in flight) and ends it: a
//! client that comes back reads ABORTED, naming the timeout. Time the
//! daemon spends producing the next message never counts.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;
use tonic::Status;

/// What to do when a stream is ended for its client's silence.
pub(crate) type OnStall = Box<dyn FnOnce() + Send>;

/// The one message on its way to the client; the pump empties it when it
/// ends the stream (the message was never taken).
type Slot<T> = Arc<std::sync::Mutex<mpsc::Receiver<Result<T, Status>>>>;

fn lock<T>(slot: &Slot<T>) -> std::sync::MutexGuard<'_, mpsc::Receiver<Result<T, Status>>> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The stream a client reads: messages a pump task produced, one at a
/// time. Dropping it aborts the pump (and so the stream it drives).
struct Watched<T> {
    rx: Slot<T>,
    ended: Arc<AtomicBool>,
    timeout: Duration,
    what: &'static str,
    _pump: AbortOnDropHandle<()>,
}

/// `inner`, ended (and everything it holds dropped) once a message it
/// produced has waited `timeout` for its client to ask for it;
/// `Duration::ZERO` leaves it as it is. `what` names the call in the error;
/// `ended` counts; `on_stall` runs before what the stream holds is dropped.
///
/// A pump task drives `inner` and offers each message through a channel of
/// one: HTTP/2 stops polling a response stream when the client's window is
/// full, so only a message that sits unclaimed tells a silent client from
/// a busy daemon — time spent producing never counts.
pub(crate) fn watch<T: Send + 'static>(
    inner: BoxStream<'static, Result<T, Status>>,
    timeout: Duration,
    what: &'static str,
    ended: Counter,
    on_stall: Option<OnStall>,
) -> BoxStream<'static, Result<T, Status>> {
    if timeout.is_zero() {
        return inner;
    }
    let (tx, rx) = mpsc::channel(1);
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let stalled = Arc::new(AtomicBool::new(false));
    let pump = pump(
        inner,
        (tx, rx.clone()),
        timeout,
        what,
        ended,
        on_stall,
        stalled.clone(),
    );
    Box::pin(Watched {
        rx,
        ended: stalled,
        timeout,
        what,
        _pump: AbortOnDropHandle::new(tokio::spawn(pump)),
    })
}

async fn pump<T: Send + 'static>(
    mut inner: BoxStream<'static, Result<T, Status>>,
    (tx, slot): (mpsc::Sender<Result<T, Status>>, Slot<T>),
    timeout: Duration,
    what: &'static str,
    ended: Counter,
    on_stall: Option<OnStall>,
    stalled: Arc<AtomicBool>,
) {
    while let Some(item) = inner.next().await {
        // The previous message must be taken before this one fits.
        let permit = match tokio::time::timeout(timeout, tx.reserve()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return, // the client went away
            Err(_) => {
                stalled.store(true, Ordering::SeqCst);
                if let Some(f) = on_stall {
                    f();
                }
                // Frees the stream's bytes, cancels its fetches and (for a
                // session) its driver.
                drop((item, inner));
                let unsent = {
                    let mut rx = lock(&slot);
                    rx.close();
                    rx.try_recv().ok()
                };
                drop(unsent);
                ended.inc();
                tracing::info!(
                    call = what,
                    ?timeout,
                    "ended a response stream its client stopped reading"
                );
                return;
            }
        };
        permit.send(item);
    }
}

impl<T> Stream for Watched<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = lock(&self.rx).poll_recv(cx);
        match next {
            Poll::Ready(None) if self.ended.swap(false, Ordering::SeqCst) => {
                Poll::Ready(Some(Err(Status::aborted(format!(
                    "{}: ended by the daemon after the client read nothing for {:?} \
                     (read.stall_timeout); what it held was freed",
                    self.what, self.timeout
                )))))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    /// A stream whose client stops reading is ended after the timeout and
    /// drops what it holds; time spent producing does not count.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_stream_is_ended_and_frees_what_it_holds() {
        let held = Arc::new(());
        let h = held.clone();
        let inner = futures::stream::unfold(0u32, move |n| {
            let h = h.clone();
            async move {
                // Producing takes longer than the timeout: never a stall.
                tokio::time::sleep(Duration::from_secs(10)).await;
                let _ = &h;
                Some((Ok::<_, Status>(n), n + 1))
            }
        })
        .boxed();
        let ended = Counter::default();
        let mut s = watch(inner, Duration::from_secs(5), "Read", ended.clone(), None);
        assert_eq!(s.next().await.unwrap().unwrap(), 0);
        assert_eq!(s.next().await.unwrap().unwrap(), 1);
        assert!(Arc::strong_count(&held) >= 2, "the stream holds its state");
        // The client stops reading: the next messages are produced (20 s,
        // which does not count), one waits in vain for 5 s.
        tokio::time::sleep(Duration::from_secs(19)).await;
        assert_eq!(ended.get(), 0, "producing is not stalling");
        tokio::time::sleep(Duration::from_secs(11)).await;
        tokio::task::yield_now().await;
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "what the stream held was dropped"
        );
        assert_eq!(ended.get(), 1);
        // The message that waited in vain was dropped too: the reason comes.
        let err = s.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::Aborted);
        assert!(
            err.message().contains("read.stall_timeout"),
            "{}",
            err.message()
        );
        assert!(s.next().await.is_none());
    }

    /// A client that keeps reading is never cut off, however long the
    /// stream runs.
    #[tokio::test(start_paused = true)]
    async fn a_reading_client_is_never_cut_off() {
        let inner = futures::stream::iter((0..100).map(Ok::<_, Status>)).boxed();
        let ended = Counter::default();
        let mut s = watch(inner, Duration::from_secs(5), "Read", ended.clone(), None);
        for i in 0..100 {
            tokio::time::sleep(Duration::from_secs(4)).await;
            assert_eq!(s.next().await.unwrap().unwrap(), i);
        }
        assert!(s.next().await.is_none());
        assert_eq!(ended.get(), 0);
    }
}
