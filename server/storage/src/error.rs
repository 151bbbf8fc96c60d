//! The one error type of the storage layer.
//!
//! Callers act on the [`ErrorKind`] (retry when `Throttled`/`Unavailable`,
//! map to a gRPC code, …); the URI says which object, the message says what
//! happened in lowercase words, and the source keeps the backend's own error
//! for logs. Messages never contain credentials: backends build them from
//! error codes and URIs, never from request dumps.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// Boxed source error of a backend.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Result of storage operations.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// What a caller can do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The object or bucket does not exist.
    NotFound,
    /// Outside the configured roots, or refused by the backend (403).
    PermissionDenied,
    /// Malformed URI, bad range, or a request the backend rejects as invalid.
    InvalidArgument,
    /// The backend asked us to slow down (503 SlowDown, 429).
    Throttled,
    /// The backend could not be reached or failed after retries.
    Unavailable,
    /// The object changed while it was being read (etag differs between parts).
    Changed,
    /// The operation is not supported by this backend.
    Unsupported,
    /// The system is not in a state that allows the request (a filesystem
    /// that refuses `O_DIRECT` under a `direct://` root).
    FailedPrecondition,
    /// The backend returned something that breaks its own contract
    /// (short body, missing Content-Range, …).
    Protocol,
    /// Any other failure (local I/O errors, unexpected responses).
    Other,
}

impl ErrorKind {
    /// Lowercase words for messages and the closed label set of metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Changed => "object changed",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::FailedPrecondition => "failed precondition",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::Other => "error",
        }
    }

    /// Metric label value: one word, snake case.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Changed => "changed",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::FailedPrecondition => "failed_precondition",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Other => "other",
        }
    }

    /// Whether trying the same request again may succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Throttled | ErrorKind::Unavailable | ErrorKind::Protocol
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A storage failure: kind, the URI it concerns, a message and the source.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {uri}: {message}")]
pub struct StorageError {
    kind: ErrorKind,
    uri: String,
    message: String,
    retry_after: Option<Duration>,
    #[source]
    source: Option<BoxError>,
}

impl StorageError {
    /// A new error of `kind` about `uri`.
    pub fn new(kind: ErrorKind, uri: impl Into<String>, message: impl Into<String>) -> Self {
        StorageError {
            kind,
            uri: uri.into(),
            message: message.into(),
            retry_after: None,
            source: None,
        }
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Attaches the backend's retry hint (Throttled).
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Shorthand for [`ErrorKind::NotFound`].
    pub fn not_found(uri: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, uri, "no such object")
    }

    /// Shorthand for [`ErrorKind::InvalidArgument`].
    pub fn invalid(uri: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, uri, message)
    }

    /// Shorthand for [`ErrorKind::PermissionDenied`].
    pub fn denied(uri: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PermissionDenied, uri, message)
    }

    /// Shorthand for [`ErrorKind::Protocol`].
    pub fn protocol(uri: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Protocol, uri, message)
    }

    /// Classifies a local I/O error.
    pub fn from_io(uri: impl Into<String>, err: std::io::Error) -> Self {
        use std::io::ErrorKind as Io;
        let (kind, message) = match err.kind() {
            Io::NotFound => (ErrorKind::NotFound, "no such object"),
            Io::PermissionDenied => (
                ErrorKind::PermissionDenied,
                "permission denied by the filesystem",
            ),
            Io::InvalidInput => (ErrorKind::InvalidArgument, "invalid input"),
            Io::IsADirectory => (ErrorKind::InvalidArgument, "is a directory"),
            Io::NotADirectory => (ErrorKind::NotFound, "a path component is not a directory"),
            Io::StorageFull => (ErrorKind::Unavailable, "no space left on device"),
            _ => (ErrorKind::Other, "i/o error"),
        };
        Self::new(kind, uri, message).with_source(err)
    }

    /// What a caller can do about it.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The URI the error concerns.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The message without kind and URI.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// How long the backend asked us to wait, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_kind_uri_and_message() {
        let e = StorageError::not_found("s3://b/k");
        assert_eq!(e.to_string(), "not found: s3://b/k: no such object");
    }

    #[test]
    fn io_errors_keep_their_source() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "nope");
        let e = StorageError::from_io("file:///x", io);
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert_eq!(StdError::source(&e).unwrap().to_string(), "nope");
    }
}
