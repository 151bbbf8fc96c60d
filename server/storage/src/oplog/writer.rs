//! The writer thread: formats records into TSV lines, compresses them into
//! the current file and rotates files by size.
//!
//! # Files
//! The file being written is always `path` (`ops.csv.zst`). When its
//! uncompressed or compressed size passes `max_file_bytes`, its zstd frame
//! is finished (so every closed file is a complete stream), it is synced
//! and renamed to `ops.000001.csv.zst`, `ops.000002.csv.zst`, … (a
//! sequence number before the extension, so `warp analyze` still sees
//! `.zst`), and the oldest rotated files are deleted until `max_files`
//! remain, the current one included. A `path` left by an earlier run (cut
//! short if that run crashed) is rotated the same way at startup, never
//! overwritten. Files are created 0600 and the directory 0700: they name
//! every object the daemon touched, for every user of the node.
//!
//! # Flushing
//! The compressor is flushed at most [`FLUSH_EVERY`] after a record arrived,
//! so a crash loses about that much; each flush ends a zstd block, which
//! costs a little compression ratio.
//!
//! # Failures
//! A failed write or flush closes the file (it stays on disk, readable up
//! to its last flush); records are dropped (counted, reason `write_error`)
//! until a new file opens, tried at most every [`REOPEN_EVERY`]. Warnings
//! are logged at most every [`WARN_EVERY`].

use std::collections::VecDeque;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use sluice_oplog::{HEADER, Record, tsv};

use super::queue::Queue;
use super::{DropReason, OpLogConfig, OpLogMetrics};

/// Longest a written record waits in the compressor before a flush.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// The writer's pause after a batch: records arriving meanwhile queue up
/// without waking it (no system call on the request path). At 5 ms the
/// default queue of 16,384 fills only above three million operations a
/// second.
pub const BATCH_EVERY: Duration = Duration::from_millis(5);
/// Least time between two attempts to open a new file after a failure.
pub const REOPEN_EVERY: Duration = Duration::from_secs(5);
/// Least time between two warnings about drops or write errors.
pub const WARN_EVERY: Duration = Duration::from_secs(10);
/// zstd level 3 (the library's default): about 300 MB/s of lines per core,
/// ten times smaller; higher levels cost more CPU than these lines repay.
const LEVEL: i32 = 3;

/// The names of the current and the rotated files.
#[derive(Debug, Clone)]
pub struct FileNames {
    dir: PathBuf,
    stem: String,
    ext: String,
    current: PathBuf,
}

impl FileNames {
    /// For the current file `path`: rotated files are
    /// `<stem>.<sequence><ext>` beside it, `<ext>` being `.csv.zst`,
    /// `.zst` or the last extension.
    pub fn new(path: &Path) -> Self {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cut = [".csv.zst", ".tsv.zst", ".zst"]
            .iter()
            .find_map(|ext| name.strip_suffix(ext).map(str::len))
            .or_else(|| name.rfind('.').filter(|&i| i > 0))
            .unwrap_or(name.len());
        FileNames {
            dir: path.parent().unwrap_or(Path::new("/")).to_owned(),
            stem: name[..cut].to_owned(),
            ext: name[cut..].to_owned(),
            current: path.to_owned(),
        }
    }

    /// The file being written.
    pub fn current(&self) -> &Path {
        &self.current
    }

    /// Rotated file number `seq`.
    pub fn rotated(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{}.{seq:06}{}", self.stem, self.ext))
    }

    /// The rotated files present, oldest (lowest number) first.
    pub fn list_rotated(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_prefix(&self.stem))
                .and_then(|n| n.strip_prefix('.'))
                .and_then(|n| n.strip_suffix(self.ext.as_str()))
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
            else {
                continue;
            };
            found.push((seq, entry.path()));
        }
        found.sort();
        Ok(found)
    }
}

/// A `Write` that counts what reaches the file.
struct Counted {
    file: File,
    bytes: u64,
    metric: Counter,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.bytes += n as u64;
        self.metric.inc_by(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The file being written.
struct Current {
    zstd: zstd::Encoder<'static, Counted>,
    /// Text bytes written into it.
    uncompressed: u64,
    /// Records written since the last flush, and when the first came.
    unflushed_since: Option<Instant>,
}

/// At most once per `every`.
#[derive(Debug)]
struct Throttle {
    every: Duration,
    last: Option<Instant>,
}

impl Throttle {
    fn ready(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// The state of the writer thread.
pub struct Writer {
    names: FileNames,
    max_file_bytes: u64,
    max_files: usize,
    current: Option<Current>,
    next_seq: u64,
    next_idx: u64,
    line: String,
    metrics: OpLogMetrics,
    reopen: Throttle,
    warn: Throttle,
    drops_reported: u64,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("current", &self.names.current)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Creates the directory if needed, rotates a file left by an earlier
    /// run, and opens a new current file.
    pub fn open(config: &OpLogConfig, metrics: OpLogMetrics) -> io::Result<Writer> {
        let names = FileNames::new(&config.path);
        if !names.dir.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&names.dir)?;
        }
        let next_seq = names.list_rotated()?.last().map_or(1, |(seq, _)| seq + 1);
        let mut writer = Writer {
            names,
            max_file_bytes: config.max_file_bytes,
            max_files: config.max_files,
            current: None,
            next_seq,
            next_idx: 0,
            line: String::with_capacity(512),
            metrics,
            reopen: Throttle {
                every: REOPEN_EVERY,
                last: None,
            },
            warn: Throttle {
                every: WARN_EVERY,
                last: None,
            },
            drops_reported: 0,
        };
        writer.start_file()?;
        Ok(writer)
    }

    /// Writes what `queue` hands over until it is closed and empty, then
    /// finishes the file.
    pub fn run(mut self, queue: &Queue) {
        let mut batch = VecDeque::new();
        loop {
            let closed = queue.take(&mut batch, FLUSH_EVERY);
            let done = closed && batch.is_empty();
            for record in batch.drain(..) {
                self.write(&record);
            }
            self.flush_if_due(done);
            self.report_drops();
            if done {
                break;
            }
            if !closed {
                std::thread::sleep(BATCH_EVERY);
            }
        }
        if let Some(current) = self.current.take()
            && let Err(error) = finish(current)
        {
            self.failed(&error, "cannot finish the operation log file");
        }
        // The last count is always reported.
        self.warn.last = None;
        self.report_drops();
    }

    fn write(&mut self, record: &Record) {
        self.line.clear();
        tsv::write_record(&mut self.line, self.next_idx, record);
        self.next_idx += 1;
        if self.current.is_none() && !self.reopen() {
            self.metrics.drop_one(DropReason::write_error);
            return;
        }
        let current = self.current.as_mut().expect("opened above");
        if let Err(error) = current.zstd.write_all(self.line.as_bytes()) {
            self.metrics.drop_one(DropReason::write_error);
            self.failed(&error, "cannot write the operation log");
            return;
        }
        self.metrics.records.inc();
        current.uncompressed += self.line.len() as u64;
        current.unflushed_since.get_or_insert_with(Instant::now);
        let full = current.uncompressed >= self.max_file_bytes
            || current.zstd.get_ref().bytes >= self.max_file_bytes;
        if full && let Err(error) = self.rotate() {
            self.failed(&error, "cannot rotate the operation log");
        }
    }

    /// Flushes when the oldest unflushed record is [`FLUSH_EVERY`] old,
    /// or when the writer went idle (`idle`: nothing more will come soon).
    fn flush_if_due(&mut self, idle: bool) {
        let Some(current) = self.current.as_mut() else {
            return;
        };
        let Some(since) = current.unflushed_since else {
            return;
        };
        if !idle && since.elapsed() < FLUSH_EVERY {
            return;
        }
        current.unflushed_since = None;
        if let Err(error) = current.zstd.flush() {
            self.failed(&error, "cannot flush the operation log");
        }
    }

    /// Closes the current file, renames it and opens the next.
    fn rotate(&mut self) -> io::Result<()> {
        if let Some(current) = self.current.take() {
            finish(current)?;
        }
        self.metrics.files_rotated.inc();
        self.start_file()
    }

    /// Moves a current file aside (if any), trims old files and opens a
    /// new current file with its header.
    fn start_file(&mut self) -> io::Result<()> {
        let current = self.names.current().to_owned();
        if current.exists() {
            std::fs::rename(&current, self.names.rotated(self.next_seq))?;
            self.next_seq += 1;
        }
        self.trim();
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&current)?;
        let counted = Counted {
            file,
            bytes: 0,
            metric: self.metrics.bytes_written.clone(),
        };
        let mut zstd = zstd::Encoder::new(counted, LEVEL)?;
        zstd.write_all(HEADER.as_bytes())?;
        self.current = Some(Current {
            zstd,
            uncompressed: HEADER.len() as u64,
            unflushed_since: Some(Instant::now()),
        });
        Ok(())
    }

    /// Deletes the oldest rotated files until `max_files` remain, counting
    /// the current one.
    fn trim(&mut self) {
        let rotated = match self.names.list_rotated() {
            Ok(r) => r,
            Err(error) => return self.failed(&error, "cannot list old operation log files"),
        };
        let keep = self.max_files.saturating_sub(1);
        let excess = rotated.len().saturating_sub(keep);
        for (_, path) in rotated.into_iter().take(excess) {
            if let Err(error) = std::fs::remove_file(&path) {
                self.failed(&error, "cannot delete an old operation log file");
            }
        }
    }

    /// After a failure: a new file, unless one was tried too recently.
    fn reopen(&mut self) -> bool {
        if !self.reopen.ready() {
            return false;
        }
        match self.start_file() {
            Ok(()) => true,
            Err(error) => {
                self.failed(&error, "cannot open a new operation log file");
                false
            }
        }
    }

    /// Counts a failure, drops the current file, and warns (throttled).
    fn failed(&mut self, error: &io::Error, what: &'static str) {
        self.metrics.write_errors.inc();
        self.current = None;
        self.reopen.last = Some(Instant::now());
        if self.warn.ready() {
            tracing::warn!(%error, path = %self.names.current().display(), "{what}");
        }
    }

    /// Warns with the running count when records were dropped since the
    /// last warning (throttled; the last one is always reported at close).
    fn report_drops(&mut self) {
        let dropped = self.metrics.dropped_total();
        if dropped > self.drops_reported && self.warn.ready() {
            self.drops_reported = dropped;
            tracing::warn!(
                dropped,
                "operation log records dropped (see sluice_oplog_dropped_total)"
            );
        }
    }
}

/// Ends the zstd frame and syncs the file.
fn finish(current: Current) -> io::Result<()> {
    let counted = current.zstd.finish()?;
    counted.file.sync_data()
}
