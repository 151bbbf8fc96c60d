//! The one table from error categories to gRPC codes, and request parsing
//! helpers that fail with INVALID_ARGUMENT naming the URI.
//!
//! Every engine or storage error that becomes a status passes through
//! [`storage_status`] or [`read_status`], which log it — once, with its
//! whole source chain, inside the RPC's span (see
//! [`crate::telemetry::rpc`]): at `warn` when the server or a backend
//! failed, at `debug` when the request was at fault (a missing object, a
//! bad range), which a client hears about anyway. Error texts name the URI
//! and what happened; they never carry credentials or payload.

use std::ops::Range;

use sluice_engine::ReadError;
use sluice_proto::v1;
use sluice_storage::{ErrorKind, ObjectUri, StorageError};
use tonic::{Code, Status};

/// gRPC code of a storage error category.
pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        // Still throttled or down after the backend's and the engine's retries.
        ErrorKind::Throttled | ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Changed => Code::Aborted,
        ErrorKind::Unsupported => Code::Unimplemented,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Protocol | ErrorKind::Other => Code::Internal,
    }
}

/// A storage error as a status; the message is the error's own text
/// (kind, URI, what happened), which never contains credentials.
pub fn storage_status(e: &StorageError) -> Status {
    let code = code_of(e.kind());
    log_error(code, e);
    Status::new(code, e.to_string())
}

/// A read error as a status.
pub fn read_status(e: &ReadError) -> Status {
    match e {
        ReadError::Storage(s) => storage_status(s),
        ReadError::Memory { .. } => {
            log_error(Code::ResourceExhausted, e);
            Status::resource_exhausted(e.to_string())
        }
    }
}

/// Logs an error that becomes a status of `code` (see the module docs).
fn log_error(code: Code, error: &(dyn std::error::Error + 'static)) {
    let code_name = crate::telemetry::metrics::code_name(code);
    let chain = source_chain(error);
    match code {
        Code::Internal
        | Code::Unavailable
        | Code::Unknown
        | Code::DataLoss
        | Code::ResourceExhausted => {
            tracing::warn!(code = code_name, error = %chain, "request failed")
        }
        _ => tracing::debug!(code = code_name, error = %chain, "request failed"),
    }
}

/// `error: its source: the source's source…`, each cause once (a wrapper
/// whose text already ends with its source's is not repeated).
pub fn source_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let part = cause.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = cause.source();
    }
    text
}

/// Parses a URI from a request.
pub fn parse_uri(uri: &str) -> Result<ObjectUri, Status> {
    if uri.is_empty() {
        return Err(Status::invalid_argument("missing uri"));
    }
    ObjectUri::parse(uri).map_err(|e| storage_status(&e))
}

/// The requested byte range; `None` for the whole object.
pub fn parse_range(
    uri: &ObjectUri,
    range: Option<&v1::ByteRange>,
) -> Result<Option<Range<u64>>, Status> {
    let Some(r) = range else { return Ok(None) };
    if r.to_end {
        if r.length != 0 {
            return Err(Status::invalid_argument(format!(
                "{uri}: a range with to_end must not set length"
            )));
        }
        return Ok(Some(r.offset..u64::MAX));
    }
    let end = r.offset.checked_add(r.length).ok_or_else(|| {
        Status::invalid_argument(format!("{uri}: range offset + length overflows"))
    })?;
    Ok(Some(r.offset..end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_code() {
        assert_eq!(code_of(ErrorKind::NotFound), Code::NotFound);
        assert_eq!(code_of(ErrorKind::PermissionDenied), Code::PermissionDenied);
        assert_eq!(code_of(ErrorKind::InvalidArgument), Code::InvalidArgument);
        assert_eq!(code_of(ErrorKind::Throttled), Code::Unavailable);
        assert_eq!(code_of(ErrorKind::Changed), Code::Aborted);
    }

    #[test]
    fn ranges_are_checked() {
        let u = ObjectUri::parse("file:///x").unwrap();
        let r = |offset, length, to_end| v1::ByteRange {
            offset,
            length,
            to_end,
        };
        assert_eq!(
            parse_range(&u, Some(&r(5, 10, false))).unwrap(),
            Some(5..15)
        );
        assert_eq!(
            parse_range(&u, Some(&r(5, 0, true))).unwrap(),
            Some(5..u64::MAX)
        );
        assert_eq!(
            parse_range(&u, Some(&r(u64::MAX, 2, false)))
                .unwrap_err()
                .code(),
            Code::InvalidArgument
        );
        assert_eq!(
            parse_range(&u, Some(&r(1, 2, true))).unwrap_err().code(),
            Code::InvalidArgument
        );
        assert_eq!(parse_range(&u, None).unwrap(), None);
    }
}
