//! `[oplog]`: where the operation log goes and how much of it is kept.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a full queue does to the operation that wants to be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Wait up to `block_timeout` for room, then drop (counted).
    Block,
    /// Drop at once (counted).
    Drop,
}

/// `[oplog]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpLogConfig {
    /// Record every backend operation from startup (SIGHUP can turn it on
    /// and off later).
    pub enabled: bool,
    /// The file being written; rotated files get a sequence number before
    /// the extension (`ops.000001.csv.zst`).
    pub path: PathBuf,
    /// A file is closed and a new one begun once its uncompressed or its
    /// compressed size passes this (bytes, or `256MiB`).
    #[serde(deserialize_with = "byte_size")]
    pub max_file_bytes: u64,
    /// Files kept, the one being written included; the oldest go first.
    pub max_files: usize,
    /// Records waiting for the writer thread, at most.
    pub queue: usize,
    /// `"block"` or `"drop"`: what happens when the queue is full.
    pub on_full: OnFull,
    /// With `on_full = "block"`, how long an operation waits for room.
    #[serde(with = "humantime_serde")]
    pub block_timeout: Duration,
    /// Also record client requests (Read, ReadMany and session reads), with
    /// the RPC method as the operation and the peer's uid as the client.
    pub client_requests: bool,
}

impl Default for OpLogConfig {
    fn default() -> Self {
        OpLogConfig {
            enabled: false,
            // Beside the other logs of the node. Created (0700) if missing;
            // under systemd's ProtectSystem=strict the unit needs
            // LogsDirectory=sluice to write there.
            path: PathBuf::from("/var/log/sluice/ops.csv.zst"),
            // 256 MiB uncompressed is about a million operations, a file
            // warp (which loads a whole file) reads in a few seconds; about
            // 25 MiB on disk at the ratio these lines compress to.
            max_file_bytes: 256 << 20,
            // With the default size: at most 2 GiB uncompressed, a few
            // hundred MiB on disk.
            max_files: 8,
            // About a second of a busy daemon's operations (tens of
            // thousands a second) for the writer to fall behind by, a few
            // MiB of memory at typical URI lengths.
            queue: 16_384,
            // A diagnostic never slows the data path by default.
            on_full: OnFull::Drop,
            // Long enough to ride out a write burst of the writer thread,
            // short against an object's fetch time.
            block_timeout: Duration::from_millis(10),
            client_requests: false,
        }
    }
}

/// A value of `[oplog]` that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct InvalidOpLogConfig {
    /// The key, dotted.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

/// The smallest `max_file_bytes`: a few thousand records per file.
const MIN_FILE_BYTES: u64 = 64 << 10;
/// The longest `block_timeout`: a worker thread of the runtime waits this
/// long at most.
const MAX_BLOCK: Duration = Duration::from_secs(1);

impl OpLogConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), InvalidOpLogConfig> {
        let invalid = |key, message: &str| {
            Err(InvalidOpLogConfig {
                key,
                message: message.to_owned(),
            })
        };
        if !self.path.is_absolute() || self.path.file_name().is_none() {
            return invalid("oplog.path", "must be an absolute path to a file");
        }
        if self.max_file_bytes < MIN_FILE_BYTES {
            return invalid("oplog.max_file_bytes", "must be at least 64KiB");
        }
        if self.max_files == 0 {
            return invalid("oplog.max_files", "must be at least 1");
        }
        if self.queue == 0 {
            return invalid("oplog.queue", "must be at least 1");
        }
        if self.block_timeout > MAX_BLOCK {
            return invalid("oplog.block_timeout", "must be at most 1s");
        }
        Ok(())
    }
}

/// Accepts a number of bytes or a string such as `"256MiB"` (B, KiB, MiB,
/// GiB; KB, MB, GB in powers of ten).
fn byte_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Str(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(n),
        Raw::Str(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid byte size {s:?}: expected e.g. 256MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(format!("invalid byte size {s:?}: unknown unit {unit:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("byte size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64KB"), Ok(64_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }

    #[test]
    fn defaults_are_valid_and_nonsense_is_named() {
        OpLogConfig::default().validate().unwrap();
        let bad = |f: fn(&mut OpLogConfig)| {
            let mut c = OpLogConfig::default();
            f(&mut c);
            c.validate().unwrap_err().key
        };
        assert_eq!(bad(|c| c.path = "ops.csv.zst".into()), "oplog.path");
        assert_eq!(bad(|c| c.max_file_bytes = 1000), "oplog.max_file_bytes");
        assert_eq!(bad(|c| c.max_files = 0), "oplog.max_files");
        assert_eq!(bad(|c| c.queue = 0), "oplog.queue");
        assert_eq!(
            bad(|c| c.block_timeout = Duration::from_secs(5)),
            "oplog.block_timeout"
        );
    }
}
