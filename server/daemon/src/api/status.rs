//! Errors as gRPC statuses, and request parsing helpers that fail with
//! INVALID_ARGUMENT naming the URI.
//!
//! Every engine or storage error that becomes a status passes through
//! [`storage_status`] or [`read_status`], which take the code from the
//! daemon's one error table ([`crate::errors`], shared with the S3 facade)
//! and log the error there — once, with its whole source chain, inside the
//! RPC's span (see [`crate::telemetry::rpc`]). Error texts name the URI and
//! what happened; they never carry credentials or payload.

use std::ops::Range;

use sluice_engine::ReadError;
use sluice_proto::v1;
use sluice_storage::{ErrorKind, ObjectUri, StorageError};
use tonic::{Code, Status};

use crate::errors::Category;

/// gRPC code of a storage error category (the table's `grpc` column).
pub fn code_of(kind: ErrorKind) -> Code {
    Category::of_kind(kind).row().grpc
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
    let code = Category::of_read(e).row().grpc;
    log_error(code, e);
    Status::new(code, e.to_string())
}

/// Logs an error that becomes a status of `code` (see [`crate::errors`]).
fn log_error(code: Code, error: &(dyn std::error::Error + 'static)) {
    let code_name = crate::telemetry::metrics::code_name(code);
    crate::errors::log_failure(code_name, crate::errors::is_server_fault(code), error);
}

/// `error: its source: the source's source…` (see [`crate::errors::source_chain`]).
pub fn source_chain(error: &(dyn std::error::Error + 'static)) -> String {
    crate::errors::source_chain(error)
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
