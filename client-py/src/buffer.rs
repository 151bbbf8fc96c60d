//! `sluice.Buffer`: the bytes of one read, with the buffer protocol.
//!
//! A read delivered through shared memory is a [`Lease`] on the daemon's
//! cache, mapped read-only into this process. The buffer exports those bytes
//! as they are: `memoryview(b)`, `numpy.frombuffer(b)` and
//! `torch.frombuffer(b)` point into the mapping, with no copy. A result of
//! several parts (an object above the daemon's cache limit, streamed in
//! extents) is copied once into one owned buffer, so every `Buffer` is one
//! contiguous range; `zero_copy` tells which.
//!
//! The lease is released when the buffer is closed or collected. Every
//! export (memoryview, array) holds a reference to the buffer and is
//! counted, so collection cannot happen while one lives, and `close()`
//! refuses with `BufferError` while any does.

use std::ffi::{c_int, c_void};
use std::sync::Mutex;

use bytes::Bytes;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use sluice_client::{Fetched, Lease, ObjectMeta};

use crate::convert;
use crate::runtime::{PidBound, lock};

/// The bytes a buffer holds.
#[derive(Debug)]
enum Data {
    /// One lease: mapped shared memory, or bytes received in the stream.
    Lease(Lease),
    /// Several parts, joined.
    Joined(Bytes),
    /// An empty result.
    Empty,
}

impl Data {
    fn bytes(&self) -> &[u8] {
        match self {
            Data::Lease(lease) => lease,
            Data::Joined(bytes) => bytes,
            Data::Empty => &[],
        }
    }
}

#[derive(Debug)]
struct State {
    /// `None` once closed.
    data: Option<PidBound<Data>>,
    /// Buffer-protocol exports alive.
    exports: usize,
}

/// The result of a read: bytes with the buffer protocol, and the object's
/// metadata.
#[pyclass(module = "sluice._native", frozen)]
#[derive(Debug)]
pub(crate) struct Buffer {
    meta: ObjectMeta,
    /// Where the bytes start; stable for the buffer's life.
    address: usize,
    len: usize,
    mapped: bool,
    zero_copy: bool,
    state: Mutex<State>,
}

impl Buffer {
    /// A buffer over a fetch's result. Joins multiple parts (a copy); call
    /// without the GIL.
    pub(crate) fn new(fetched: Fetched) -> Self {
        let Fetched { meta, mut parts } = fetched;
        let (data, zero_copy) = match parts.len() {
            0 => (Data::Empty, true),
            1 => (Data::Lease(parts.remove(0)), true),
            _ => {
                let total = parts.iter().map(|p| p.len()).sum();
                let mut joined = Vec::with_capacity(total);
                for part in &parts {
                    joined.extend_from_slice(part);
                }
                // The leases are released here, right after the copy.
                drop(parts);
                (Data::Joined(Bytes::from(joined)), false)
            }
        };
        let mapped = matches!(&data, Data::Lease(lease) if lease.is_mapped());
        let bytes = data.bytes();
        Buffer {
            meta,
            address: if bytes.is_empty() {
                0
            } else {
                bytes.as_ptr() as usize
            },
            len: bytes.len(),
            mapped,
            zero_copy,
            state: Mutex::new(State {
                data: Some(PidBound::new(data)),
                exports: 0,
            }),
        }
    }

    /// Runs `f` over the bytes, or fails if the buffer is closed.
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
        let state = lock(&self.state);
        match state.data.as_ref().and_then(PidBound::get) {
            Some(data) => Ok(f(data.bytes())),
            None => Err(closed()),
        }
    }
}

fn closed() -> PyErr {
    PyValueError::new_err("I/O operation on a closed sluice.Buffer")
}

#[pymethods]
impl Buffer {
    /// The object's metadata (`sluice.ObjectMeta`).
    #[getter]
    fn meta(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        convert::meta(py, &self.meta)
    }

    /// Whether the bytes lie in the daemon's shared memory.
    #[getter]
    fn shared_memory(&self) -> bool {
        self.mapped
    }

    /// Whether the bytes are exported as delivered, without a copy here
    /// (false only for results of several parts, which are joined).
    #[getter]
    fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Whether the buffer was closed (its lease released). A buffer made
    /// before a `fork` reads as closed in the child.
    #[getter]
    fn closed(&self) -> bool {
        lock(&self.state)
            .data
            .as_ref()
            .and_then(PidBound::get)
            .is_none()
    }

    /// Address of the first byte (0 when empty); for tests.
    #[getter]
    fn _address(&self) -> usize {
        self.address
    }

    /// Buffer-protocol exports alive (memoryviews, arrays); for tests.
    #[getter]
    fn _exports(&self) -> usize {
        lock(&self.state).exports
    }

    /// Releases the lease. Raises `BufferError` while a memoryview or
    /// array over the bytes exists; closing twice is allowed.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let data = {
            let mut state = lock(&self.state);
            if state.exports > 0 {
                return Err(PyBufferError::new_err(format!(
                    "cannot close a sluice.Buffer while {} export(s) of it exist \
                     (release the memoryviews and arrays over it first)",
                    state.exports
                )));
            }
            state.data.take()
        };
        py.detach(|| drop(data));
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _ty: Option<&Bound<'_, PyAny>>,
        _value: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __len__(&self) -> usize {
        self.len
    }

    /// A copy of the bytes.
    fn __bytes__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.with_bytes(|bytes| PyBytes::new(py, bytes))
    }

    /// Same as `bytes(b)`: a copy.
    fn tobytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.__bytes__(py)
    }

    fn __repr__(&self) -> String {
        let state = if self.closed() {
            "closed"
        } else if self.mapped {
            "shared memory"
        } else {
            "owned"
        };
        format!(
            "<sluice.Buffer {} len={} ({state})>",
            self.meta.uri, self.len
        )
    }

    /// # Safety
    /// `view` is a `Py_buffer` to fill, as the buffer protocol passes it.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no view to fill"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("a sluice.Buffer is read-only"));
        }
        let this = slf.get();
        let len = this.len;
        let start = {
            let mut state = lock(&this.state);
            let Some(data) = state.data.as_ref().and_then(PidBound::get) else {
                return Err(closed());
            };
            let start = data.bytes().as_ptr();
            state.exports += 1;
            start
        };
        let owner = slf.into_any();
        // SAFETY: `view` is non-null and ours to fill. The bytes stay valid
        // and unmoved while the export lives: `obj` holds the buffer, and
        // `close` refuses while `exports > 0`. The format is a static string
        // that nobody writes to.
        unsafe {
            (*view).obj = owner.into_ptr();
            (*view).buf = start as *mut c_void;
            (*view).len = len as ffi::Py_ssize_t;
            (*view).readonly = 1;
            (*view).itemsize = 1;
            (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
                c"B".as_ptr().cast_mut()
            } else {
                std::ptr::null_mut()
            };
            (*view).ndim = 1;
            (*view).shape = if flags & ffi::PyBUF_ND == ffi::PyBUF_ND {
                &raw mut (*view).len
            } else {
                std::ptr::null_mut()
            };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
                &raw mut (*view).itemsize
            } else {
                std::ptr::null_mut()
            };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
        }
        Ok(())
    }

    /// # Safety
    /// `_view` was filled by `__getbuffer__`.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        let mut state = lock(&self.state);
        state.exports = state.exports.saturating_sub(1);
    }
}
