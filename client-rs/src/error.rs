//! The one error type of the client library.
//!
//! Every failure carries a gRPC [`Code`] so that callers can act on a category
//! (`is_not_found()`, `is_unavailable()`, ...) without matching on variants:
//! statuses from the daemon keep their own code, and failures that happen on
//! this side map to the code the daemon would have used for the same cause
//! (an unreachable daemon is `Unavailable`, a malformed address
//! `InvalidArgument`, a response stream that breaks the protocol `DataLoss`).
//!
//! Messages from the daemon already name the URI (a guarantee of the API), so
//! they are shown as they are; errors raised here name the URI or address
//! themselves.

use std::io;
use std::path::PathBuf;

use tonic::Code;

/// Result alias of the client library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failed call to the sluice daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The daemon answered with an error status.
    #[error("{message}")]
    Status {
        /// The status code.
        code: Code,
        /// The status message, or the code's description when it was empty.
        message: String,
        /// The status as received.
        #[source]
        status: tonic::Status,
    },
    /// One item of a `ReadMany` call, or one fetch of a session, failed; the
    /// other items and fetches are unaffected.
    #[error("{message}")]
    Item {
        /// The item's status code.
        code: Code,
        /// The item's error message.
        message: String,
    },
    /// The daemon could not be reached.
    #[error("cannot connect to the sluice daemon at {address}")]
    Connect {
        /// The address as given.
        address: String,
        /// What the transport reported.
        #[source]
        source: tonic::transport::Error,
    },
    /// The daemon address could not be parsed.
    #[error("invalid sluice daemon address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A byte range that ends before it starts.
    #[error("{uri}: invalid range {start}..{end}")]
    InvalidRange {
        /// The object to read.
        uri: String,
        /// Start of the range.
        start: u64,
        /// End of the range.
        end: u64,
    },
    /// The daemon's response broke the protocol: a missing field, a gap in
    /// the offsets, a stream that ended short of the promised length.
    #[error("{uri}: {reason}")]
    Protocol {
        /// The object being transferred.
        uri: String,
        /// What was wrong.
        reason: String,
    },
    /// The session stream with the daemon ended (the daemon stopped or
    /// restarted, the connection broke): every fetch still owed, and every
    /// later fetch of the session, fails with this. Leases already held stay
    /// readable.
    #[error("the session with the sluice daemon at {address} ended; open a new session")]
    SessionClosed {
        /// The daemon address.
        address: String,
        /// The status the stream ended with, if it ended with one.
        #[source]
        status: Option<tonic::Status>,
    },
    /// Shared-memory delivery was required but could not be set up.
    #[error("shared memory through {}: {reason}", path.display())]
    SharedMemory {
        /// The daemon's descriptor socket.
        path: PathBuf,
        /// What failed.
        reason: &'static str,
        /// The system error, where there was one.
        #[source]
        source: Option<io::Error>,
    },
    /// A TLS or token setting of the client cannot be used (an unreadable
    /// or malformed file, a token that is not visible ASCII). The message
    /// names the setting, never a token.
    #[error("{setting}: {reason}")]
    Credentials {
        /// The setting or file, e.g. `CA file /etc/sluice/ca.pem`.
        setting: String,
        /// What is wrong.
        reason: String,
        /// The system error, where there was one.
        #[source]
        source: Option<io::Error>,
    },
    /// Reading the local data of an upload failed; the upload was cancelled.
    #[error("reading the data to upload to {uri}")]
    Io {
        /// The destination object.
        uri: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The gRPC code of this error (see the module documentation).
    pub fn code(&self) -> Code {
        match self {
            Error::Status { code, .. } | Error::Item { code, .. } => *code,
            Error::Connect { .. } | Error::SessionClosed { .. } | Error::SharedMemory { .. } => {
                Code::Unavailable
            }
            Error::InvalidAddress { .. }
            | Error::InvalidRange { .. }
            | Error::Credentials { .. } => Code::InvalidArgument,
            Error::Protocol { .. } => Code::DataLoss,
            Error::Io { .. } => Code::Unknown,
        }
    }

    /// The object or prefix does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code() == Code::NotFound
    }

    /// Malformed URI, bad range or bad page token.
    pub fn is_invalid_argument(&self) -> bool {
        self.code() == Code::InvalidArgument
    }

    /// Path outside the daemon's roots, or access refused by the backend.
    pub fn is_permission_denied(&self) -> bool {
        self.code() == Code::PermissionDenied
    }

    /// A configured limit of the daemon was reached; retrying later may work.
    pub fn is_resource_exhausted(&self) -> bool {
        self.code() == Code::ResourceExhausted
    }

    /// The object changed while it was being read.
    pub fn is_aborted(&self) -> bool {
        self.code() == Code::Aborted
    }

    /// The daemon's TCP listener did not accept this client's credentials:
    /// no token, a wrong token, or no client certificate.
    pub fn is_unauthenticated(&self) -> bool {
        self.code() == Code::Unauthenticated
    }

    /// The daemon or its backend could not be reached, or the daemon is draining.
    pub fn is_unavailable(&self) -> bool {
        self.code() == Code::Unavailable
    }

    pub(crate) fn credentials(setting: &str, reason: &str) -> Self {
        Error::Credentials {
            setting: setting.to_owned(),
            reason: reason.to_owned(),
            source: None,
        }
    }

    pub(crate) fn credentials_io(setting: &str, reason: &str, source: io::Error) -> Self {
        Error::Credentials {
            setting: setting.to_owned(),
            reason: reason.to_owned(),
            source: Some(source),
        }
    }

    pub(crate) fn protocol(uri: &str, reason: impl Into<String>) -> Self {
        Error::Protocol {
            uri: uri.to_owned(),
            reason: reason.into(),
        }
    }

    /// The error of a `ReadMany` item, from its wire form.
    pub(crate) fn item(code: i32, message: String) -> Self {
        let code = Code::from_i32(code);
        Error::Item {
            message: non_empty(message, code),
            code,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let code = status.code();
        Error::Status {
            code,
            message: non_empty(status.message().to_owned(), code),
            status,
        }
    }
}

/// A status message fit to show: the code's description stands in for an
/// empty message.
fn non_empty(message: String, code: Code) -> String {
    if message.is_empty() {
        code.description().to_owned()
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_keeps_code_message_and_source() {
        let error = Error::from(tonic::Status::not_found("not found: file:///a"));
        assert!(error.is_not_found());
        assert!(!error.is_unavailable());
        assert_eq!(error.to_string(), "not found: file:///a");
        let source = std::error::Error::source(&error).unwrap();
        let status = source.downcast_ref::<tonic::Status>().unwrap();
        assert_eq!(status.code(), Code::NotFound);
    }

    #[test]
    fn empty_message_shows_the_code() {
        let error = Error::from(tonic::Status::new(Code::Aborted, ""));
        assert!(error.is_aborted());
        assert_eq!(error.to_string(), Code::Aborted.description());
    }

    #[test]
    fn item_codes_come_from_the_wire() {
        let error = Error::item(Code::PermissionDenied as i32, "denied: s3://b/k".into());
        assert!(error.is_permission_denied());
        assert_eq!(error.to_string(), "denied: s3://b/k");
        assert_eq!(Error::item(9999, String::new()).code(), Code::Unknown);
    }

    #[test]
    fn local_errors_map_to_categories() {
        assert!(Error::protocol("file:///a", "short").code() == Code::DataLoss);
        let error = Error::InvalidAddress {
            address: "ftp://x".into(),
            reason: "unsupported scheme",
        };
        assert!(error.is_invalid_argument());
        assert!(error.to_string().contains("ftp://x"));
    }

    #[test]
    fn session_errors_are_unavailable_and_name_where() {
        let error = Error::SessionClosed {
            address: "unix:///run/s.sock".into(),
            status: Some(tonic::Status::unavailable("connection reset")),
        };
        assert!(error.is_unavailable());
        assert!(error.to_string().contains("unix:///run/s.sock"), "{error}");
        assert!(std::error::Error::source(&error).is_some());
        let error = Error::SharedMemory {
            path: "/run/s.sock.fds".into(),
            reason: "cannot connect to the descriptor socket",
            source: Some(io::ErrorKind::NotFound.into()),
        };
        assert!(error.is_unavailable());
        assert!(error.to_string().contains("/run/s.sock.fds"), "{error}");
    }
}
