//! The operation log of sluice: one line per storage operation (or client
//! request), in the tab-separated format of MinIO warp's benchmark data, so
//! `warp analyze ops.csv.zst` and the tools built on it read our logs.
//!
//! The daemon writes the logs (`sluice_storage::oplog`); the `sluice oplog`
//! command reads them. Both sides share this crate, which depends on
//! nothing but `zstd`, so the client does not pull in the storage backends.
//!
//! # Format
//! A file is a zstd stream (one frame per file; a file cut short by a crash
//! is readable up to its last flushed block) of UTF-8 lines. The first line
//! is the header; every other line is one [`Record`]; lines starting with
//! `#` are comments. The columns, by name (readers look them up by name, as
//! warp does, so the order is not load-bearing):
//!
//! | column | meaning |
//! |---|---|
//! | `idx` | sequence number, counting on across rotated files |
//! | `thread` | the concurrency slot (0..65535) the operation held; no two operations of one slot overlap |
//! | `op` | `GET`, `STAT`, `LIST`, `PUT`, `DELETE`, `MPU_START`, `MPU_PART`, `MPU_COMPLETE`, `MPU_ABORT`; client requests: the RPC method (`Read`, `ReadMany`, `Session`) |
//! | `client_id` | who issued it: `sluiced` for backend operations, the peer's uid for client requests |
//! | `n_objects` | objects the operation touched: 1, or the entries of a LIST page |
//! | `bytes` | payload bytes moved (a GET: the bytes delivered, also when cut short) |
//! | `endpoint` | the backend: scheme and host or account (`s3://minio:9000`, `az://acct`, `file://`) |
//! | `file` | the object's URI (no query strings or credentials: URIs here carry none) |
//! | `error` | empty on success; else the error's text on one line |
//! | `start`, `first_byte`, `end` | RFC 3339 UTC times with nanoseconds; `first_byte` empty when unknown |
//! | `duration_ns` | `end - start` in nanoseconds |
//! | `cat` | warp's category bits; always 0 |
//! | `range_offset`, `range_length` | the byte range asked for by a ranged GET; empty for whole objects (warp ignores these columns) |
//!
//! Fields are quoted as warp's reader (Go's `encoding/csv` with a tab
//! separator) expects: a field holding a tab, a newline or a `"` is written
//! between `"`s with inner `"`s doubled. Error texts are first put on one
//! line (tabs and newlines become spaces), so only an object name with such
//! characters is ever quoted, and it is kept exact for replay.

pub mod read;
pub mod summary;
pub mod time;
pub mod tsv;

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

pub use read::{LogRead, read_logs};
pub use summary::Summary;
pub use tsv::{HEADER, RecordReader};

/// Operation names, as warp spells those it knows.
pub mod op {
    /// A read of an object, whole or a range.
    pub const GET: &str = "GET";
    /// A read of an object's metadata.
    pub const STAT: &str = "STAT";
    /// One page of a listing.
    pub const LIST: &str = "LIST";
    /// A whole-object write.
    pub const PUT: &str = "PUT";
    /// A delete.
    pub const DELETE: &str = "DELETE";
    /// The start of a multipart upload.
    pub const MPU_START: &str = "MPU_START";
    /// One part of a multipart upload.
    pub const MPU_PART: &str = "MPU_PART";
    /// The commit of a multipart upload.
    pub const MPU_COMPLETE: &str = "MPU_COMPLETE";
    /// The abort of a multipart upload.
    pub const MPU_ABORT: &str = "MPU_ABORT";
}

/// One operation: one line of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The concurrency slot the operation held.
    pub thread: u16,
    /// What it was: one of [`op`], or an RPC method name.
    pub op: Cow<'static, str>,
    /// Who issued it.
    pub client_id: Cow<'static, str>,
    /// Objects touched.
    pub n_objects: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// The backend, as scheme and host or account.
    pub endpoint: Cow<'static, str>,
    /// The object's URI.
    pub file: String,
    /// Empty on success.
    pub error: String,
    /// When it was issued.
    pub start: SystemTime,
    /// When its response began, if known.
    pub first_byte: Option<SystemTime>,
    /// When it ended (for a GET: when its body was finished or dropped).
    pub end: SystemTime,
    /// First byte asked for by a ranged GET.
    pub range_offset: Option<u64>,
    /// Bytes asked for by a ranged GET (`None`: to the end).
    pub range_length: Option<u64>,
}

impl Record {
    /// `end - start` (zero if the clock put the end first).
    pub fn duration(&self) -> Duration {
        self.end.duration_since(self.start).unwrap_or_default()
    }

    /// `first_byte - start`, if the first byte is known.
    pub fn ttfb(&self) -> Option<Duration> {
        self.first_byte
            .map(|t| t.duration_since(self.start).unwrap_or_default())
    }

    /// Whether it failed.
    pub fn failed(&self) -> bool {
        !self.error.is_empty()
    }
}
