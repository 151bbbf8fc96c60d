//! The one error table of the daemon's front ends.
//!
//! Every failure a client hears about falls into a [`Category`]: the
//! storage layer's [`ErrorKind`]s, plus running out of memory in the
//! engine. Each category has one row in [`Category::row`] — its gRPC code
//! (the `sluice.v1` API), its HTTP status and its S3 error code (the
//! S3-compatible facade, [`crate::facade`]) — so the two front ends cannot
//! drift apart: a missing object is NOT_FOUND over gRPC and `404 NoSuchKey`
//! over S3, throttling after the retries is UNAVAILABLE and `503 SlowDown`.
//!
//! [`log_failure`] logs an error once, where it becomes a status, with its
//! whole source chain: at `warn` when the server or a backend failed, at
//! `debug` when the request was at fault (a missing object, a bad range),
//! which the client hears about anyway. Error texts name the URI and what
//! happened; they never carry credentials or payload.

use sluice_engine::ReadError;
use sluice_storage::ErrorKind;
use tonic::Code;

/// What went wrong, as far as a client can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// The object or bucket does not exist.
    NotFound,
    /// Outside a root, refused by the backend, or not this client's.
    PermissionDenied,
    /// A malformed request: a bad URI, range or argument.
    InvalidArgument,
    /// The backend still throttles after the retries.
    Throttled,
    /// The backend is unreachable or failing after the retries.
    Unavailable,
    /// The object changed while it was read.
    Changed,
    /// Not supported by this backend or front end.
    Unsupported,
    /// The system is not in a state that allows the request.
    FailedPrecondition,
    /// No memory within the request's deadline.
    ResourceExhausted,
    /// A broken backend contract or any other failure of ours.
    Internal,
}

/// One row of the table: how each front end spells a category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The gRPC status code.
    pub grpc: Code,
    /// The HTTP status of the S3 facade.
    pub http: u16,
    /// The S3 error code (`<Code>` of the error document).
    pub s3: &'static str,
}

impl Category {
    /// The category of a storage error kind.
    pub fn of_kind(kind: ErrorKind) -> Category {
        match kind {
            ErrorKind::NotFound => Category::NotFound,
            ErrorKind::PermissionDenied => Category::PermissionDenied,
            ErrorKind::InvalidArgument => Category::InvalidArgument,
            ErrorKind::Throttled => Category::Throttled,
            ErrorKind::Unavailable => Category::Unavailable,
            ErrorKind::Changed => Category::Changed,
            ErrorKind::Unsupported => Category::Unsupported,
            ErrorKind::FailedPrecondition => Category::FailedPrecondition,
            ErrorKind::Protocol | ErrorKind::Other => Category::Internal,
        }
    }

    /// The category of a failed read through the engine.
    pub fn of_read(e: &ReadError) -> Category {
        match e {
            ReadError::Storage(s) => Category::of_kind(s.kind()),
            ReadError::Memory { .. } => Category::ResourceExhausted,
        }
    }

    /// The table (see the module docs).
    pub fn row(self) -> Row {
        let row = |grpc, http, s3| Row { grpc, http, s3 };
        match self {
            Category::NotFound => row(Code::NotFound, 404, "NoSuchKey"),
            Category::PermissionDenied => row(Code::PermissionDenied, 403, "AccessDenied"),
            Category::InvalidArgument => row(Code::InvalidArgument, 400, "InvalidArgument"),
            // Still throttled or down after the backend's and the engine's
            // retries: S3 clients retry a 503 SlowDown with backoff.
            Category::Throttled | Category::Unavailable => row(Code::Unavailable, 503, "SlowDown"),
            Category::Changed => row(Code::Aborted, 409, "OperationAborted"),
            Category::Unsupported => row(Code::Unimplemented, 501, "NotImplemented"),
            Category::FailedPrecondition => row(Code::FailedPrecondition, 400, "InvalidRequest"),
            // The budget is full of pinned bytes: back off and retry.
            Category::ResourceExhausted => row(Code::ResourceExhausted, 503, "SlowDown"),
            Category::Internal => row(Code::Internal, 500, "InternalError"),
        }
    }

    /// Whether the server (or a backend) is at fault rather than the request.
    pub fn server_fault(self) -> bool {
        is_server_fault(self.row().grpc)
    }
}

/// Whether a gRPC code means the server (or a backend) failed.
pub fn is_server_fault(code: Code) -> bool {
    matches!(
        code,
        Code::Internal
            | Code::Unavailable
            | Code::Unknown
            | Code::DataLoss
            | Code::ResourceExhausted
    )
}

/// Logs an error that becomes a failure of code `label` (see the module
/// docs); `server_fault` picks the level.
pub fn log_failure(label: &str, server_fault: bool, error: &(dyn std::error::Error + 'static)) {
    let chain = source_chain(error);
    if server_fault {
        tracing::warn!(code = label, error = %chain, "request failed");
    } else {
        tracing::debug!(code = label, error = %chain, "request failed");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_category_has_one_spelling_per_front_end() {
        let row = |k| Category::of_kind(k).row();
        assert_eq!(
            row(ErrorKind::NotFound),
            Row {
                grpc: Code::NotFound,
                http: 404,
                s3: "NoSuchKey"
            }
        );
        assert_eq!(row(ErrorKind::PermissionDenied).http, 403);
        assert_eq!(row(ErrorKind::PermissionDenied).s3, "AccessDenied");
        assert_eq!(row(ErrorKind::InvalidArgument).grpc, Code::InvalidArgument);
        assert_eq!(
            row(ErrorKind::Throttled),
            Row {
                grpc: Code::Unavailable,
                http: 503,
                s3: "SlowDown"
            }
        );
        assert_eq!(row(ErrorKind::Unavailable).http, 503);
        assert_eq!(row(ErrorKind::Changed).grpc, Code::Aborted);
        assert_eq!(row(ErrorKind::Unsupported).http, 501);
        assert_eq!(row(ErrorKind::Protocol).s3, "InternalError");
        assert_eq!(row(ErrorKind::Other).http, 500);
        assert!(Category::Internal.server_fault());
        assert!(Category::ResourceExhausted.server_fault());
        assert!(!Category::NotFound.server_fault());
    }

    #[test]
    fn the_chain_names_each_cause_once() {
        let io = std::io::Error::other("disk on fire");
        let e = sluice_storage::StorageError::new(ErrorKind::Other, "file:///x", "read failed")
            .with_source(io);
        let chain = source_chain(&e);
        assert!(chain.ends_with(": disk on fire"), "{chain}");
        assert_eq!(chain.matches("disk on fire").count(), 1, "{chain}");
    }
}
