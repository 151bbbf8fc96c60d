//! A fault-injecting [`Storage`] double for tests of the layers above.
//!
//! Wraps a real backend and applies a script of faults to successive `get`
//! calls (fail, cut the body short, report another etag or size), while recording how
//! many gets ran and the most that were in flight at once.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::{
    ErrorKind, GetOptions, GetResult, ListOptions, ListPage, MultipartUpload, ObjectMeta,
    ObjectUri, Result, Storage, StorageError,
};

/// What happens to one `get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Pass through.
    None,
    /// Fail before any byte with this kind.
    Fail(ErrorKind),
    /// Fail with `Throttled`, asking to retry after this long (`Retry-After`).
    Throttle(std::time::Duration),
    /// Deliver all but the last `n` bytes, then end the body cleanly.
    Short(u64),
    /// Fail with `Unavailable` after this many bytes of body.
    BreakAfter(u64),
    /// Report this etag instead of the real one.
    Etag(String),
    /// Report this size of the whole object instead of the real one (a
    /// wrong `Content-Range` total); the body is unchanged.
    Size(u64),
    /// Hold the request (counted in flight) until [`FaultStorage::release`].
    Hold,
    /// Answer after this long (a slow first byte).
    Delay(std::time::Duration),
    /// Deliver the body at this many bytes per second (a slow connection).
    Pace(u64),
}

/// The double.
#[derive(Debug)]
pub struct FaultStorage {
    inner: Arc<dyn Storage>,
    script: Mutex<VecDeque<Fault>>,
    gets: AtomicUsize,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    ranges: Mutex<Vec<Range<u64>>>,
    released: tokio::sync::watch::Sender<bool>,
}

impl FaultStorage {
    /// Lets every held request (and every later `Hold`) go on.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    /// `get` calls in flight now (held ones included).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Wraps `inner` with an empty script.
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        FaultStorage {
            inner,
            script: Mutex::new(VecDeque::new()),
            gets: AtomicUsize::new(0),
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight: Arc::new(AtomicUsize::new(0)),
            ranges: Mutex::new(Vec::new()),
            released: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Faults for the next gets, in order; later gets pass through.
    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(faults);
    }

    /// Number of `get` calls so far.
    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    /// Most `get` bodies open at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Ranges requested so far, in call order (`0..u64::MAX` for whole reads).
    pub fn ranges(&self) -> Vec<Range<u64>> {
        self.ranges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Storage for FaultStorage {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn head(&self, uri: &ObjectUri) -> Result<ObjectMeta> {
        self.inner.head(uri).await
    }

    async fn get(&self, uri: &ObjectUri, opts: GetOptions) -> Result<GetResult> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.ranges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(opts.range.clone().unwrap_or(0..u64::MAX));
        let fault = self
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
            .unwrap_or(Fault::None);
        if let Fault::Fail(kind) = fault {
            return Err(StorageError::new(kind, uri.to_string(), "injected fault"));
        }
        if let Fault::Throttle(after) = fault {
            return Err(StorageError::new(
                ErrorKind::Throttled,
                uri.to_string(),
                "injected slow down",
            )
            .with_retry_after(after));
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let guard = InFlight(self.in_flight.clone());
        if fault == Fault::Hold {
            let mut released = self.released.subscribe();
            let _ = released.wait_for(|r| *r).await;
        }
        if let Fault::Delay(wait) = fault {
            tokio::time::sleep(wait).await;
        }
        let mut res = match self.inner.get(uri, opts).await {
            Ok(r) => r,
            Err(e) => {
                drop(guard);
                return Err(e);
            }
        };
        let uri_s = uri.to_string();
        let body = res.body;
        res.body = match fault {
            Fault::Short(n) => {
                let keep = (res.range.end - res.range.start).saturating_sub(n);
                cut(body, keep, None, guard)
            }
            Fault::BreakAfter(n) => cut(body, n, Some(uri_s), guard),
            Fault::Etag(tag) => {
                res.meta.etag = Some(tag);
                cut(body, u64::MAX, None, guard)
            }
            Fault::Size(size) => {
                res.meta.size = size;
                cut(body, u64::MAX, None, guard)
            }
            Fault::Pace(rate) => pace(cut(body, u64::MAX, None, guard), rate),
            Fault::None | Fault::Fail(_) | Fault::Throttle(_) | Fault::Hold | Fault::Delay(_) => {
                cut(body, u64::MAX, None, guard)
            }
        };
        Ok(res)
    }

    async fn list(&self, prefix: &ObjectUri, opts: &ListOptions) -> Result<ListPage> {
        self.inner.list(prefix, opts).await
    }

    async fn put(&self, uri: &ObjectUri, data: Bytes) -> Result<ObjectMeta> {
        self.inner.put(uri, data).await
    }

    async fn start_multipart(&self, uri: &ObjectUri) -> Result<Box<dyn MultipartUpload>> {
        self.inner.start_multipart(uri).await
    }

    fn min_part_size(&self) -> u64 {
        self.inner.min_part_size()
    }

    fn alignment(&self) -> u64 {
        self.inner.alignment()
    }

    fn learns_part_size(&self) -> bool {
        self.inner.learns_part_size()
    }

    async fn delete(&self, uri: &ObjectUri) -> Result<()> {
        self.inner.delete(uri).await
    }
}

/// Passes `body` on at `rate` bytes per second, in pieces of at most 64 KiB.
fn pace(body: crate::ByteStream, rate: u64) -> crate::ByteStream {
    const PIECE: usize = 64 << 10;
    let rate = rate.max(1) as f64;
    let pieces = body.flat_map(|chunk| {
        let pieces: Vec<Result<Bytes>> = match chunk {
            Err(e) => vec![Err(e)],
            Ok(mut chunk) => {
                let mut out = Vec::new();
                while chunk.len() > PIECE {
                    out.push(Ok(chunk.split_to(PIECE)));
                }
                out.push(Ok(chunk));
                out
            }
        };
        futures::stream::iter(pieces)
    });
    Box::pin(pieces.then(move |piece| async move {
        if let Ok(bytes) = &piece {
            let wait = std::time::Duration::from_secs_f64(bytes.len() as f64 / rate);
            tokio::time::sleep(wait).await;
        }
        piece
    }))
}

/// Passes at most `keep` bytes, then ends (or fails when `fail_uri` is set).
fn cut(
    body: crate::ByteStream,
    keep: u64,
    fail_uri: Option<String>,
    guard: InFlight,
) -> crate::ByteStream {
    let state = (body, keep, fail_uri, guard);
    Box::pin(futures::stream::unfold(Some(state), |state| async move {
        let (mut body, left, fail_uri, guard) = state?;
        if left == 0 {
            return fail_uri.map(|u| {
                (
                    Err(StorageError::new(
                        ErrorKind::Unavailable,
                        u,
                        "injected body failure",
                    )),
                    None,
                )
            });
        }
        match body.next().await {
            None => None,
            Some(Err(e)) => Some((Err(e), None)),
            Some(Ok(mut chunk)) => {
                if chunk.len() as u64 > left {
                    chunk.truncate(left as usize);
                }
                let left = left - chunk.len() as u64;
                Some((Ok(chunk), Some((body, left, fail_uri, guard))))
            }
        }
    }))
}
