//! `Writer`: a streaming upload through the daemon's `Write` call, written
//! to like a file.
//!
//! Writes are copied into a local chunk of [`CHUNK`] bytes; full chunks go
//! through a bounded channel to an upload task on the runtime, which sends
//! them to the daemon as they come (a multipart upload above the daemon's
//! `write.part_size`). Memory stays at a few chunks whatever the size, and a
//! write blocks (without the GIL) while the daemon is behind.
//!
//! Commit only on `close()`: the task ends the request with the trailer that
//! makes the daemon commit only when it received an explicit finish. Every
//! other way out — `abort()`, an exception in a `with` block, a writer
//! collected without `close()`, a failed or interrupted write — closes the
//! channel without it, so the upload stream ends with an error instead of a
//! trailer and the daemon discards what it received. A failed upload raises
//! from `write` or `close`; it never silently succeeds.

use std::io;
use std::sync::{Mutex, TryLockError};

use bytes::Bytes;
use futures::StreamExt;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use sluice_client::{Client, Code, Result as SluiceResult, Written};
use tokio::sync::{mpsc, oneshot};

use crate::convert;
use crate::runtime::{PidBound, spawn_thread, wait};

/// Bytes gathered before they go to the upload task.
const CHUNK: usize = 1 << 20;

/// Chunks queued for the upload task.
const QUEUE: usize = 4;

/// What the writer sends to the upload task.
#[derive(Debug)]
enum Msg {
    Data(Bytes),
    /// All data was sent: end the upload with its trailer (commit).
    Finish,
}

/// Where a writer stands.
#[derive(Debug)]
enum Stage {
    /// Accepting writes.
    Open {
        tx: mpsc::Sender<Msg>,
        task: oneshot::Receiver<SluiceResult<Written>>,
        buf: Vec<u8>,
    },
    /// Committed: the daemon's report.
    Done(Written),
    /// Failed or aborted: the error to raise again (`None` when aborted).
    Failed(Option<(Code, String)>),
}

#[derive(Debug)]
struct Inner {
    stage: Stage,
    /// Bytes accepted by `write`.
    written: u64,
}

/// A file-like upload of one object; see the module documentation.
#[pyclass(module = "sluice._native", frozen)]
#[derive(Debug)]
pub(crate) struct Writer {
    uri: String,
    inner: Mutex<PidBound<Inner>>,
}

impl Writer {
    /// Starts the upload task for `uri`.
    pub(crate) fn start(client: Client, uri: String) -> PyResult<Self> {
        let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE);
        let chunks = futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx).map(|msg| match msg {
                Some(Msg::Data(bytes)) => Some(Ok(bytes)),
                Some(Msg::Finish) => None,
                // The writer went away without finishing: fail the upload
                // so that no trailer is sent.
                None => Some(Err(io::Error::other("the upload was abandoned"))),
            })
        })
        // Nothing after the end or an error.
        .fuse();
        let reader = tokio_util::io::StreamReader::new(chunks.boxed());
        let task_uri = uri.clone();
        let task = spawn_thread("sluice-upload", move || async move {
            client.write_reader(&task_uri, reader, 0).await
        })?;
        Ok(Writer {
            uri,
            inner: Mutex::new(PidBound::new(Inner {
                stage: Stage::Open {
                    tx,
                    task,
                    buf: Vec::with_capacity(CHUNK),
                },
                written: 0,
            })),
        })
    }

    /// Runs `f` on this process's writer state; fails if another thread is
    /// using the writer or it was made before a fork.
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> PyResult<R>) -> PyResult<R> {
        let mut guard = match self.inner.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                return Err(PyRuntimeError::new_err(
                    "a sluice writer is in use by another thread",
                ));
            }
        };
        match guard.get_mut() {
            Some(inner) => f(inner),
            None => Err(PyRuntimeError::new_err(
                "a sluice writer cannot be used in a forked child; open one there",
            )),
        }
    }
}

/// Why an upload failed, from the task's outcome (after the channel broke).
async fn failure(task: oneshot::Receiver<SluiceResult<Written>>) -> (Code, String) {
    match task.await {
        Ok(Err(error)) => (error.code(), error_text(&error)),
        Ok(Ok(_)) => (Code::Internal, "the upload ended early".to_owned()),
        Err(_) => (Code::Internal, "the upload thread ended early".to_owned()),
    }
}

fn error_text(error: &sluice_client::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Sends the local chunk to the task; on a broken channel, the task's error.
async fn send(tx: &mpsc::Sender<Msg>, buf: &mut Vec<u8>) -> Result<(), ()> {
    let chunk = std::mem::replace(buf, Vec::with_capacity(CHUNK));
    tx.send(Msg::Data(Bytes::from(chunk))).await.map_err(|_| ())
}

/// Takes an open stage out, leaving `Failed`, to fail it with the task's
/// error.
fn fail_stage(stage: &mut Stage) -> Option<oneshot::Receiver<SluiceResult<Written>>> {
    match std::mem::replace(stage, Stage::Failed(None)) {
        Stage::Open { task, .. } => Some(task),
        other => {
            *stage = other;
            None
        }
    }
}

fn raise_failed(py: Python<'_>, failed: &Option<(Code, String)>) -> PyErr {
    match failed {
        Some((code, message)) => convert::coded_error(py, *code, message),
        None => PyValueError::new_err("I/O operation on an aborted sluice writer"),
    }
}

#[pymethods]
impl Writer {
    /// The destination URI.
    #[getter]
    fn name(&self) -> &str {
        &self.uri
    }

    /// Whether the writer was closed or aborted.
    #[getter]
    fn closed(&self) -> PyResult<bool> {
        self.with(|inner| Ok(!matches!(inner.stage, Stage::Open { .. })))
    }

    /// Bytes written so far.
    fn tell(&self) -> PyResult<u64> {
        self.with(|inner| Ok(inner.written))
    }

    /// Appends the bytes of `data` (any C-contiguous buffer of bytes);
    /// returns their number. Blocks while the daemon is behind.
    fn write(&self, py: Python<'_>, data: PyBuffer<u8>) -> PyResult<usize> {
        if !data.is_c_contiguous() {
            return Err(PyValueError::new_err("write needs a contiguous buffer"));
        }
        let len = data.len_bytes();
        let start = data.buf_ptr() as usize;
        self.with(|inner| {
            let Stage::Open { tx, buf, .. } = &mut inner.stage else {
                return Err(match &inner.stage {
                    Stage::Failed(failed) => raise_failed(py, failed),
                    _ => PyValueError::new_err("I/O operation on a closed sluice writer"),
                });
            };
            let sent = wait(py, async {
                // SAFETY: `data` holds the exporter's buffer of `len`
                // contiguous bytes at `start` for the whole call.
                let mut src = unsafe { std::slice::from_raw_parts(start as *const u8, len) };
                while !src.is_empty() {
                    let take = (CHUNK - buf.len()).min(src.len());
                    buf.extend_from_slice(&src[..take]);
                    src = &src[take..];
                    if buf.len() == CHUNK {
                        send(tx, buf).await?;
                    }
                }
                Ok::<(), ()>(())
            });
            match sent {
                Ok(Ok(())) => {
                    inner.written += len as u64;
                    Ok(len)
                }
                // The upload failed on the daemon's side.
                Ok(Err(())) => {
                    let task = fail_stage(&mut inner.stage).expect("the stage was open");
                    let failed = wait(py, failure(task))?;
                    let error = convert::coded_error(py, failed.0, &failed.1);
                    inner.stage = Stage::Failed(Some(failed));
                    Err(error)
                }
                // Interrupted: part of `data` may be queued, so the upload
                // cannot go on. Dropping the stage abandons it.
                Err(interrupt) => {
                    inner.stage = Stage::Failed(Some((
                        Code::Cancelled,
                        format!(
                            "{}: a write was interrupted; the upload was abandoned",
                            self.uri
                        ),
                    )));
                    Err(interrupt)
                }
            }
        })
    }

    /// Passes the buffered bytes on to the upload. Nothing is committed
    /// before `close()`.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        self.with(|inner| {
            let Stage::Open { tx, buf, .. } = &mut inner.stage else {
                return match &inner.stage {
                    Stage::Failed(failed) => Err(raise_failed(py, failed)),
                    _ => Ok(()),
                };
            };
            if buf.is_empty() {
                return Ok(());
            }
            match wait(py, send(tx, buf)) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(())) => {
                    let task = fail_stage(&mut inner.stage).expect("the stage was open");
                    let failed = wait(py, failure(task))?;
                    let error = convert::coded_error(py, failed.0, &failed.1);
                    inner.stage = Stage::Failed(Some(failed));
                    Err(error)
                }
                Err(interrupt) => {
                    inner.stage = Stage::Failed(Some((
                        Code::Cancelled,
                        format!(
                            "{}: a flush was interrupted; the upload was abandoned",
                            self.uri
                        ),
                    )));
                    Err(interrupt)
                }
            }
        })
    }

    /// Sends the rest and commits the object; returns its
    /// `sluice.ObjectMeta`. Raises if the upload failed. Closing again
    /// returns the same metadata.
    fn close(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(|inner| {
            let (tx, task, mut buf) = match std::mem::replace(&mut inner.stage, Stage::Failed(None))
            {
                Stage::Open { tx, task, buf } => (tx, task, buf),
                Stage::Done(written) => {
                    let meta = convert::meta(py, &written.meta);
                    inner.stage = Stage::Done(written);
                    return meta;
                }
                Stage::Failed(failed) => {
                    let error = raise_failed(py, &failed);
                    inner.stage = Stage::Failed(failed);
                    return Err(error);
                }
            };
            let outcome = wait(py, async move {
                let queued = (buf.is_empty() || send(&tx, &mut buf).await.is_ok())
                    && tx.send(Msg::Finish).await.is_ok();
                drop(tx);
                match task.await {
                    Ok(Ok(written)) if queued => Ok(written),
                    Ok(Ok(_)) => Err((Code::Internal, "the upload ended early".to_owned())),
                    Ok(Err(error)) => Err((error.code(), error_text(&error))),
                    Err(_) => Err((Code::Internal, "the upload thread ended early".to_owned())),
                }
            });
            match outcome {
                Ok(Ok(written)) => {
                    let meta = convert::meta(py, &written.meta);
                    inner.stage = Stage::Done(written);
                    meta
                }
                Ok(Err(failed)) => {
                    let error = convert::coded_error(py, failed.0, &failed.1);
                    inner.stage = Stage::Failed(Some(failed));
                    Err(error)
                }
                Err(interrupt) => {
                    inner.stage = Stage::Failed(Some((
                        Code::Cancelled,
                        format!(
                            "{}: closing was interrupted; the upload's outcome is unknown",
                            self.uri
                        ),
                    )));
                    Err(interrupt)
                }
            }
        })
    }

    /// Abandons the upload: the daemon discards it and the object is not
    /// created (or keeps its old content). Waits for the daemon to see it.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self.with(|inner| {
            if let Stage::Open { tx, task, .. } =
                std::mem::replace(&mut inner.stage, Stage::Failed(None))
            {
                drop(tx);
                // The task ends with the "abandoned" error, which is the point.
                let _ = wait(py, task)?;
            }
            Ok(())
        })
    }

    /// Parts of the multipart upload, once committed (0 or 1: one shot).
    #[getter]
    fn _parts(&self) -> PyResult<Option<u32>> {
        self.with(|inner| {
            Ok(match &inner.stage {
                Stage::Done(written) => Some(written.parts),
                _ => None,
            })
        })
    }
}
