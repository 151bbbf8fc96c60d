//! Conversions to Python: errors to the exception classes of
//! `sluice._types`, object metadata to its `ObjectMeta`, byte ranges from
//! `offset`/`length` arguments.
//!
//! The classes live in Python (an exception that is both a `SluiceError`
//! and a `FileNotFoundError` needs multiple inheritance, a dataclass is what
//! Python users expect); this module calls their factories, imported once.

use std::ops::Range;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use sluice_client::{Code, Error, ObjectMeta};

static ERROR_FACTORY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static META_FACTORY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The gRPC name of a code, as in `sluice.SluiceError.code`.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The message of `error` with its causes, `a: b: c`.
fn message(error: &Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// A `sluice.SluiceError` (of the subclass for the error's code).
pub(crate) fn error(py: Python<'_>, error: Error) -> PyErr {
    coded_error(py, error.code(), &message(&error))
}

/// A `sluice.SluiceError` with `code` and `message`.
pub(crate) fn coded_error(py: Python<'_>, code: Code, message: &str) -> PyErr {
    let made = ERROR_FACTORY
        .import(py, "sluice._types", "_error_from_native")
        .and_then(|factory| factory.call1((code_name(code), message)));
    match made {
        Ok(exception) => PyErr::from_value(exception),
        Err(import_failed) => import_failed,
    }
}

/// A `sluice.ObjectMeta`.
pub(crate) fn meta(py: Python<'_>, meta: &ObjectMeta) -> PyResult<Py<PyAny>> {
    let factory = META_FACTORY.import(py, "sluice._types", "_meta_from_native")?;
    let modified = meta.last_modified.as_ref().map(|t| (t.seconds, t.nanos));
    let made = factory.call1((
        meta.uri.as_str(),
        meta.size,
        meta.etag.as_str(),
        modified,
        meta.version.as_str(),
    ))?;
    Ok(made.unbind())
}

/// The byte range of `offset` and `length`: `None` reads the whole object,
/// an offset alone reads to the end, a length alone from the start.
pub(crate) fn range(
    py: Python<'_>,
    uri: &str,
    offset: Option<u64>,
    length: Option<u64>,
) -> PyResult<Option<Range<u64>>> {
    match (offset, length) {
        (None, None) => Ok(None),
        (Some(start), None) => Ok(Some(start..u64::MAX)),
        (start, Some(length)) => {
            let start = start.unwrap_or(0);
            let end = start
                .checked_add(length)
                .filter(|&end| end < u64::MAX)
                .ok_or_else(|| {
                    let message =
                        format!("{uri}: range {start}+{length} is past the largest offset");
                    coded_error(py, Code::InvalidArgument, &message)
                })?;
            Ok(Some(start..end))
        }
    }
}
