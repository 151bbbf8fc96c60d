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
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::stream::BoxStream;
use futures::task::AtomicWaker;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;
use tonic::Status;

struct Watched<T> {
    /// `None` once ended by the watchdog.
    inner: Option<BoxStream<'static, Result<T, Status>>>,
    /// Since when a message sits with the client and the next one was not
    /// asked for.
    waiting_since: Option<Instant>,
    /// The watchdog ended the stream; the error is still to be told.
    ended: bool,
    /// Run when the watchdog ends the stream, before it is dropped.
    on_stall: Option<OnStall>,
}

/// What to do when a stream is ended for its client's silence.
pub(crate) type OnStall = Box<dyn FnOnce() + Send>;

struct Shared<T> {
    state: Mutex<Watched<T>>,
    waker: AtomicWaker,
}

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Watched<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The stream a client reads; dropping it stops the watchdog.
struct Guarded<T> {
    shared: Arc<Shared<T>>,
    timeout: Duration,
    what: &'static str,
}

/// `inner`, ended (and everything it holds dropped) once its client has
/// not asked for the next message for `timeout`; `Duration::ZERO` leaves it
/// as it is. `what` names the call in the error; `ended` counts.
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
    let shared = Arc::new(Shared {
        state: Mutex::new(Watched {
            inner: Some(inner),
            waiting_since: None,
            ended: false,
            on_stall,
        }),
        waker: AtomicWaker::new(),
    });
    tokio::spawn(watchdog(Arc::downgrade(&shared), timeout, what, ended));
    Box::pin(Guarded {
        shared,
        timeout,
        what,
    })
}

async fn watchdog<T: Send + 'static>(
    shared: Weak<Shared<T>>,
    timeout: Duration,
    what: &'static str,
    ended: Counter,
) {
    loop {
        let since = match shared.upgrade() {
            Some(s) => s.lock().waiting_since,
            None => return, // the stream is gone
        };
        let Some(since) = since else {
            tokio::time::sleep(timeout).await;
            continue;
        };
        tokio::time::sleep_until(since + timeout).await;
        let Some(s) = shared.upgrade() else { return };
        let (dropped, on_stall) = {
            let mut st = s.lock();
            if st.waiting_since != Some(since) || st.inner.is_none() {
                continue;
            }
            st.ended = true;
            st.waiting_since = None;
            (st.inner.take(), st.on_stall.take())
        };
        if let Some(f) = on_stall {
            f();
        }
        // Dropped outside the lock: this frees the stream's bytes, cancels
        // its fetches and (for a session) its driver.
        drop(dropped);
        ended.inc();
        tracing::info!(
            call = what,
            ?timeout,
            "ended a response stream its client stopped reading"
        );
        s.waker.wake();
        return;
    }
}

impl<T> Stream for Guarded<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.shared.waker.register(cx.waker());
        let mut st = this.shared.lock();
        // The client asks for more: nothing sits with it now.
        st.waiting_since = None;
        let Some(inner) = st.inner.as_mut() else {
            if std::mem::take(&mut st.ended) {
                return Poll::Ready(Some(Err(Status::aborted(format!(
                    "{}: ended by the daemon after the client read nothing for {:?} \
                     (read.stall_timeout); what it held was freed",
                    this.what, this.timeout
                )))));
            }
            return Poll::Ready(None);
        };
        match inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(item)) => {
                st.waiting_since = Some(Instant::now());
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => {
                st.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
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
        assert_eq!(Arc::strong_count(&held), 2, "the stream holds its state");
        // The client stops reading.
        tokio::time::sleep(Duration::from_secs(6)).await;
        tokio::task::yield_now().await;
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "what the stream held was dropped"
        );
        assert_eq!(ended.get(), 1);
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
