//! `Client`: the calls of the `sluice.v1` API, blocking, for Python.
//!
//! A client holds only its address until the first call, which connects
//! (and the first read opens a session). The connection belongs to the
//! process that made it: after a `fork` the child sees a different pid and
//! connects anew (see `runtime`).

use std::ops::Range;
use std::sync::{Arc, Mutex, TryLockError};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, stream};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

use sluice_client::trace::TraceContext;
use sluice_client::{Address, ConnectOptions, Entry, Result as SluiceResult, Token};

use crate::buffer::Buffer;
use crate::conn::Conn;
use crate::convert;
use crate::runtime::{PidBound, lock, spawn_thread, wait};
use crate::writer::Writer;

/// A client of the sluice daemon at one address.
#[pyclass(module = "sluice._native", frozen)]
#[derive(Debug)]
pub(crate) struct Client {
    address: String,
    /// For `https://` (unset settings fall back to the environment when
    /// connecting). `Debug` never shows the token.
    options: ConnectOptions,
    conn: Mutex<Option<PidBound<Arc<Conn>>>>,
    /// The W3C trace context sent with every call (`set_trace_context`).
    trace: Mutex<Option<TraceContext>>,
}

impl Client {
    /// This process's connection, made on first use.
    fn conn(&self, py: Python<'_>) -> PyResult<Arc<Conn>> {
        if let Some(conn) = lock(&self.conn).as_ref().and_then(PidBound::get) {
            return Ok(Arc::clone(conn));
        }
        // Not under the lock: connecting releases the GIL, and another
        // thread waiting for the lock would hold it.
        let conn = wait(py, Conn::connect(&self.address, self.options.clone()))?
            .map_err(|e| convert::error(py, e))?;
        let mut slot = lock(&self.conn);
        if let Some(raced) = slot.as_ref().and_then(PidBound::get) {
            return Ok(Arc::clone(raced));
        }
        conn.client.set_trace_context(lock(&self.trace).clone());
        let conn = Arc::new(conn);
        // A parent's connection is replaced (and leaked by its PidBound).
        *slot = Some(PidBound::new(Arc::clone(&conn)));
        Ok(conn)
    }

    /// Runs a call on this process's connection, blocking without the GIL.
    fn call<T, F, Fut>(&self, py: Python<'_>, call: F) -> PyResult<T>
    where
        F: FnOnce(Arc<Conn>) -> Fut,
        Fut: Future<Output = SluiceResult<T>> + Send,
        T: Send,
    {
        let conn = self.conn(py)?;
        wait(py, call(conn))?.map_err(|e| convert::error(py, e))
    }
}

#[pymethods]
impl Client {
    /// A client of the daemon at `address` (`unix:///path`, a bare socket
    /// path, `https://host:port` or `http://host:port`). Connects on first
    /// use. The TLS settings and the token are for `https://`; those not
    /// given come from `SLUICE_CA_FILE`, `SLUICE_TOKEN`/`SLUICE_TOKEN_FILE`,
    /// `SLUICE_CLIENT_CERT`/`SLUICE_CLIENT_KEY` when connecting.
    #[new]
    #[pyo3(signature = (address, ca_file = None, token = None, token_file = None, client_cert = None, client_key = None))]
    fn new(
        py: Python<'_>,
        address: String,
        ca_file: Option<PathBuf>,
        token: Option<String>,
        token_file: Option<PathBuf>,
        client_cert: Option<PathBuf>,
        client_key: Option<PathBuf>,
    ) -> PyResult<Self> {
        if let Err(error) = address.parse::<Address>() {
            return Err(convert::error(py, error));
        }
        if client_cert.is_some() != client_key.is_some() {
            return Err(PyValueError::new_err(
                "client_cert and client_key go together: give both or neither",
            ));
        }
        let token = match (token, token_file) {
            (Some(_), Some(_)) => {
                return Err(PyValueError::new_err("give token or token_file, not both"));
            }
            (Some(token), None) => Some(Token::new(&token)),
            (None, Some(path)) => Some(Token::from_file(path)),
            (None, None) => None,
        }
        .transpose()
        .map_err(|e| convert::error(py, e))?;
        Ok(Client {
            address,
            options: ConnectOptions {
                ca_file,
                token,
                client_cert,
                client_key,
            },
            conn: Mutex::new(None),
            trace: Mutex::new(None),
        })
    }

    /// Sends a W3C trace context (`traceparent`, optionally `tracestate`)
    /// with every later call, so that a daemon exporting traces continues
    /// the caller's trace; `None` stops. A session (which reads use) takes
    /// the context of its opening: set it before the first read.
    #[pyo3(signature = (traceparent, tracestate = None))]
    fn set_trace_context(
        &self,
        py: Python<'_>,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> PyResult<()> {
        let context = traceparent
            .map(|p| TraceContext::new(p, tracestate))
            .transpose()
            .map_err(|e| convert::error(py, e))?;
        if let Some(conn) = lock(&self.conn).as_ref().and_then(PidBound::get) {
            conn.client.set_trace_context(context.clone());
        }
        *lock(&self.trace) = context;
        Ok(())
    }

    /// The daemon address.
    #[getter]
    fn address(&self) -> &str {
        &self.address
    }

    /// Metadata of one object.
    fn stat(&self, py: Python<'_>, uri: &str) -> PyResult<Py<PyAny>> {
        let meta = self.call(py, |conn| async move { conn.client.stat(uri).await })?;
        convert::meta(py, &meta)
    }

    /// Entries under `prefix`: metadata of objects, and with
    /// `recursive=False` directory prefixes as strings.
    #[pyo3(signature = (prefix, recursive = true))]
    fn list(&self, py: Python<'_>, prefix: &str, recursive: bool) -> PyResult<ListIter> {
        let conn = self.conn(py)?;
        let entries = conn.client.list(prefix, recursive).boxed();
        Ok(ListIter {
            entries: Mutex::new(PidBound::new(entries)),
        })
    }

    /// Reads `uri`, whole or `length` bytes from `offset`, into a `Buffer`.
    #[pyo3(signature = (uri, offset = None, length = None))]
    fn get(
        &self,
        py: Python<'_>,
        uri: &str,
        offset: Option<u64>,
        length: Option<u64>,
    ) -> PyResult<Buffer> {
        let range = convert::range(py, uri, offset, length)?;
        self.call(py, |conn| async move {
            conn.fetch(uri, range).await.map(Buffer::new)
        })
    }

    /// Reads many objects (each `(uri, offset, length)`), up to `window` at
    /// a time; yields `(index, Buffer)`, in request order when `ordered`.
    /// With `plan` and more items than `window`, the items also go to the
    /// daemon as an epoch plan, so that it reads ahead of the window.
    #[pyo3(signature = (items, ordered = true, window = 16, plan = true))]
    fn get_many(
        &self,
        py: Python<'_>,
        items: Vec<(String, Option<u64>, Option<u64>)>,
        ordered: bool,
        window: usize,
        plan: bool,
    ) -> PyResult<FetchIter> {
        if window == 0 {
            return Err(PyValueError::new_err("window must be at least 1"));
        }
        let items = items
            .into_iter()
            .map(|(uri, offset, length)| {
                let range = convert::range(py, &uri, offset, length)?;
                Ok((uri, range))
            })
            .collect::<PyResult<Vec<(String, Option<Range<u64>>)>>>()?;
        let conn = self.conn(py)?;
        let plan = (plan && items.len() > window).then(|| {
            let uris: Vec<sluice_client::ReadItem> = items
                .iter()
                .map(|(uri, range)| sluice_client::ReadItem {
                    uri: uri.clone(),
                    range: range.clone(),
                })
                .collect();
            (next_plan_id(), uris)
        });
        let planner = Arc::clone(&conn);
        // At most `window` results are fetched ahead of the consumer: a
        // fetch starts only with a credit, and a credit comes back when
        // Python takes a result — in bunches (`Ahead`), so that the task
        // driving the fetches wakes once per half window, not per result.
        let credits = Arc::new(tokio::sync::Semaphore::new(window));
        let gate = Arc::clone(&credits);
        let fetches =
            stream::iter(items.into_iter().enumerate()).map(move |(index, (uri, range))| {
                let conn = Arc::clone(&conn);
                let gate = Arc::clone(&gate);
                async move {
                    match gate.acquire().await {
                        Ok(credit) => credit.forget(),
                        Err(_) => unreachable!("the semaphore is never closed"),
                    }
                    (index, conn.fetch(&uri, range).await.map(Buffer::new))
                }
            });
        let mut results: Results = if ordered {
            fetches.buffered(window).boxed()
        } else {
            fetches.buffer_unordered(window).boxed()
        };
        // A task drives the fetches, so the window stays full while Python
        // works on the previous result (not only inside `__next__`).
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let driver = crate::runtime::runtime()?.spawn(async move {
            // The plan goes out beside the first fetches, not ahead of them:
            // a refusal (or a daemon without plans) only loses read-ahead.
            let _planned = plan.map(|(id, uris)| {
                let conn = Arc::clone(&planner);
                PlanGuard(Some(tokio::spawn(async move {
                    let session = conn.session().await.ok()?;
                    session.submit_plan(id, "get_many", uris).await.ok()?;
                    Some((session, id))
                })))
            });
            while let Some(item) = results.next().await {
                if tx.send(item).is_err() {
                    break;
                }
            }
        });
        Ok(FetchIter {
            results: Mutex::new(PidBound::new(Ahead {
                results: rx,
                credits,
                taken: 0,
                bunch: window.div_ceil(2),
            })),
            driver: PidBound::new(driver.abort_handle()),
        })
    }

    /// Uploads the bytes of `data` (copied first) to `uri`; returns the new
    /// object's metadata.
    fn put(&self, py: Python<'_>, uri: &str, data: PyBuffer<u8>) -> PyResult<Py<PyAny>> {
        let bytes = Bytes::from(data.to_vec(py)?);
        drop(data);
        let client = self.conn(py)?.client.clone();
        let target = uri.to_owned();
        let done = spawn_thread("sluice-put", move || async move {
            client.put(&target, bytes).await
        })?;
        let written = match wait(py, done)? {
            Ok(result) => result.map_err(|e| convert::error(py, e))?,
            Err(_) => return Err(PyRuntimeError::new_err("the upload thread ended early")),
        };
        convert::meta(py, &written.meta)
    }

    /// A streaming upload to `uri`, committed on `close()`.
    fn open_writer(&self, py: Python<'_>, uri: String) -> PyResult<Writer> {
        let conn = self.conn(py)?;
        Writer::start(conn.client.clone(), uri)
    }

    /// Deletes `uri`, or with `recursive` the object and everything under
    /// `uri/`; a whole bucket or file root needs `whole_bucket`. Returns
    /// how many were deleted.
    #[pyo3(signature = (uri, recursive = false, whole_bucket = false))]
    fn delete(
        &self,
        py: Python<'_>,
        uri: &str,
        recursive: bool,
        whole_bucket: bool,
    ) -> PyResult<u64> {
        self.call(py, |conn| async move {
            if whole_bucket {
                conn.client.delete_whole_bucket(uri).await
            } else {
                conn.client.delete(uri, recursive).await
            }
        })
    }

    /// Reads every object under `prefix` into the daemon's cache,
    /// `concurrency` at a time (0: the daemon's default), and returns the
    /// final counts: `listed_objects`, `listed_bytes`, `warmed_objects`,
    /// `warmed_bytes`, `cached_objects`, `cached_bytes`, `skipped_objects`
    /// (too large to cache), `failed_objects`, `first_error`, `cache_full`
    /// (stopped before the end: the rest would not fit). With `uris`
    /// (and no prefix): those objects, in order.
    #[pyo3(signature = (prefix, concurrency = 0, uris = None))]
    fn warm<'py>(
        &self,
        py: Python<'py>,
        prefix: &str,
        concurrency: u32,
        uris: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let last = self.call(py, |conn| async move {
            let mut progress = match uris {
                Some(uris) => conn.client.warm_uris(uris, concurrency).await?.boxed(),
                None => conn.client.warm(prefix, concurrency).await?.boxed(),
            };
            let mut last = sluice_client::WarmProgress::default();
            while let Some(p) = progress.next().await {
                last = p?;
            }
            Ok(last)
        })?;
        let out = PyDict::new(py);
        out.set_item("listed_objects", last.listed_objects)?;
        out.set_item("listed_bytes", last.listed_bytes)?;
        out.set_item("warmed_objects", last.warmed_objects)?;
        out.set_item("warmed_bytes", last.warmed_bytes)?;
        out.set_item("cached_objects", last.cached_objects)?;
        out.set_item("cached_bytes", last.cached_bytes)?;
        out.set_item("skipped_objects", last.skipped_objects)?;
        out.set_item("failed_objects", last.failed_objects)?;
        out.set_item("first_error", last.first_error)?;
        out.set_item("cache_full", last.cache_full)?;
        Ok(out)
    }

    /// Drops every cached object under `prefix` (the objects stay); returns
    /// how many. Only for root, the daemon's user and the daemon's
    /// `server.admin_uids` (PermissionError otherwise).
    fn evict(&self, py: Python<'_>, prefix: &str) -> PyResult<u64> {
        self.call(py, |conn| async move { conn.client.evict(prefix).await })
    }

    /// Submits an epoch plan on this client's session: the items
    /// (`(uri, offset, length)`) in the order they will be read. Returns the
    /// items the daemon took (0 from a daemon that takes no plans).
    #[pyo3(signature = (items, plan_id = 0, job = ""))]
    fn submit_plan(
        &self,
        py: Python<'_>,
        items: Vec<(String, Option<u64>, Option<u64>)>,
        plan_id: u64,
        job: &str,
    ) -> PyResult<u64> {
        let items = items
            .into_iter()
            .map(|(uri, offset, length)| {
                let range = convert::range(py, &uri, offset, length)?;
                Ok(sluice_client::ReadItem { uri, range })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let job = job.to_owned();
        self.call(py, |conn| async move {
            let session = conn.session().await?;
            session.submit_plan(plan_id, &job, items).await
        })
    }

    /// Moves plan `plan_id`'s position forward to `position` items.
    fn plan_progress(&self, py: Python<'_>, plan_id: u64, position: u64) -> PyResult<()> {
        self.call(py, |conn| async move {
            conn.session().await?.plan_progress(plan_id, position).await
        })
    }

    /// Ends plan `plan_id`.
    fn drop_plan(&self, py: Python<'_>, plan_id: u64) -> PyResult<()> {
        self.call(py, |conn| async move {
            conn.session().await?.drop_plan(plan_id).await
        })
    }

    /// The session (opened if needed): `shared_memory`, `session_id`,
    /// `lease_quota`, `window`.
    fn _session_info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let session = self.call(py, |conn| async move { conn.session().await })?;
        let info = PyDict::new(py);
        info.set_item("shared_memory", session.shared_memory())?;
        info.set_item("session_id", session.session_id())?;
        info.set_item("lease_quota", session.lease_quota())?;
        info.set_item("window", session.window())?;
        Ok(info)
    }

    /// Whether `address` lies in a segment mapped by this client's session.
    fn _is_mapped(&self, py: Python<'_>, address: usize) -> PyResult<bool> {
        let session = self.call(py, |conn| async move { conn.session().await })?;
        Ok(session.is_mapped(address as *const u8))
    }
}

/// Drops a `get_many` plan when its fetches end — done, or abandoned (the
/// task aborted) — so the daemon stops reading ahead for it and the
/// session's plan count stays low.
struct PlanGuard(Option<tokio::task::JoinHandle<Option<(sluice_client::Session, u64)>>>);

impl Drop for PlanGuard {
    fn drop(&mut self) {
        let Some(submitted) = self.0.take() else {
            return;
        };
        if let Ok(runtime) = crate::runtime::runtime() {
            runtime.spawn(async move {
                if let Ok(Some((session, id))) = submitted.await {
                    let _ = session.drop_plan(id).await;
                }
            });
        }
    }
}

/// A plan id for one `get_many` call: distinct from every other in this
/// process (the datasets' ids are random below 2^63).
fn next_plan_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    (1 << 63) | NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Locks an iterator's stream for one step; fails if another thread is in
/// the middle of one.
fn step<T>(mutex: &Mutex<T>) -> PyResult<std::sync::MutexGuard<'_, T>> {
    match mutex.try_lock() {
        Ok(guard) => Ok(guard),
        Err(TryLockError::Poisoned(poisoned)) => Ok(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => Err(PyRuntimeError::new_err(
            "a sluice iterator is in use by another thread",
        )),
    }
}

fn forked() -> PyErr {
    PyRuntimeError::new_err("a sluice iterator cannot be used in a forked child; start it there")
}

/// The entries of a listing.
#[pyclass(module = "sluice._native", frozen)]
pub(crate) struct ListIter {
    entries: Mutex<PidBound<BoxStream<'static, SluiceResult<Entry>>>>,
}

#[pymethods]
impl ListIter {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let mut guard = step(&self.entries)?;
        let entries = guard.get_mut().ok_or_else(forked)?;
        match wait(py, entries.next())? {
            None => Ok(None),
            Some(Ok(Entry::Object(meta))) => convert::meta(py, &meta).map(Some),
            Some(Ok(Entry::Prefix(prefix))) => {
                Ok(Some(prefix.into_pyobject(py)?.into_any().unbind()))
            }
            Some(Err(error)) => Err(convert::error(py, error)),
        }
    }
}

/// One result of `get_many`, tagged with its item's index.
type Tagged = (usize, SluiceResult<Buffer>);

/// The results of `get_many`, in the order they are handed out.
type Results = BoxStream<'static, Tagged>;

/// The results of `get_many` on their way to Python, and the credits of
/// those taken, given back in bunches.
struct Ahead {
    results: tokio::sync::mpsc::UnboundedReceiver<Tagged>,
    credits: Arc<tokio::sync::Semaphore>,
    /// Results taken whose credits were not given back yet.
    taken: usize,
    /// Credits given back at once.
    bunch: usize,
}

impl Ahead {
    fn give_back(&mut self) {
        if self.taken > 0 {
            self.credits.add_permits(std::mem::take(&mut self.taken));
        }
    }

    fn next(&mut self, py: Python<'_>) -> PyResult<Option<Tagged>> {
        // A result that is already there is taken without giving up the
        // GIL and blocking on the runtime: in a batch read ahead, most are.
        let next = match self.results.try_recv() {
            Ok(tagged) => Some(tagged),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => None,
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                // Nothing ready: every credit goes back before waiting, or
                // the fetches that would refill the channel could not start.
                self.give_back();
                wait(py, self.results.recv())?
            }
        };
        if next.is_some() {
            self.taken += 1;
            if self.taken >= self.bunch {
                self.give_back();
            }
        }
        Ok(next)
    }
}

/// The results of `get_many`.
#[pyclass(module = "sluice._native", frozen)]
pub(crate) struct FetchIter {
    results: Mutex<PidBound<Ahead>>,
    driver: PidBound<tokio::task::AbortHandle>,
}

impl Drop for FetchIter {
    fn drop(&mut self) {
        // Stop fetching for a consumer that is gone (in the process that
        // started it; a forked child's copy owns nothing).
        if let Some(driver) = self.driver.get() {
            driver.abort();
        }
    }
}

#[pymethods]
impl FetchIter {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<(usize, Buffer)>> {
        let mut guard = step(&self.results)?;
        let next = guard.get_mut().ok_or_else(forked)?.next(py)?;
        match next {
            None => Ok(None),
            Some((index, Ok(buffer))) => Ok(Some((index, buffer))),
            Some((_, Err(error))) => Err(convert::error(py, error)),
        }
    }
}
