//! The operation log: every backend operation (and, where the RPC layer
//! asks, every client request) as one line of a zstd-compressed file in
//! MinIO warp's format ([`sluice_oplog`] has the columns), for `warp
//! analyze`, `sluice oplog stats` and `sluice oplog replay`.
//!
//! # Off the request path
//! An operation costs its caller one atomic load when the log is off. When
//! it is on: a slot number from a small pool (the `thread` column: the
//! lowest slot no operation in flight holds, so no two operations of one
//! slot overlap and a replay running one task per slot reproduces the
//! concurrency), two clock reads, and one push of a [`Record`] into a
//! bounded queue ([`queue`]). Formatting, compression and file I/O happen
//! on one dedicated thread ([`writer`]), never on a runtime worker.
//!
//! # Never silently lossy
//! When the queue is full, `on_full` decides: `drop` refuses the record at
//! once, `block` waits up to `block_timeout` for room first (slowing the
//! operation that wants to be recorded, by design). Every record that is
//! not written is counted in `sluice_oplog_dropped_total{reason}`
//! (`queue_full`, `write_error`, `closed`), and the writer logs a warning
//! with the running count at most every [`writer::WARN_EVERY`]. Records
//! handed to the compressor are counted in `sluice_oplog_records_total`; so
//! once the log is closed, `records + dropped` is every operation offered.
//! [`OpLog::close`] (also the drop of the last handle) ends the queue,
//! writes what is left, finishes the zstd frame and joins the thread: a
//! clean exit loses nothing.
//!
//! # On and off
//! [`OpLog::new`] never touches the disk while the log is off. The writer
//! thread and the file start at the first [`OpLog::set_enabled`]`(true)`
//! (at startup with `enabled = true`, or later from a reload); turning the
//! log off stops recording but keeps the writer, which flushes what it has.

mod config;
mod queue;
mod recording;
#[cfg(test)]
mod tests;
pub mod writer;

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

pub use config::{InvalidOpLogConfig, OnFull, OpLogConfig};
pub use recording::{RecordingStorage, endpoint_name};
/// The file format: reading logs, summaries.
pub use sluice_oplog as format;
pub use sluice_oplog::{Record, op};

use queue::{Queue, Refused};

/// Why a record was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DropReason {
    /// The queue was full (after `block_timeout` with `on_full = "block"`).
    queue_full,
    /// Writing the file failed.
    write_error,
    /// The log was already closed (an operation that ended during shutdown).
    closed,
}

/// `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DropLabels {
    /// Why.
    pub reason: DropReason,
}

/// What the operation log counts.
#[derive(Debug, Clone, Default)]
pub struct OpLogMetrics {
    /// Records handed to the compressor.
    pub records: Counter,
    /// Records not written, by reason.
    pub dropped: Family<DropLabels, Counter>,
    /// Compressed bytes written to files.
    pub bytes_written: Counter,
    /// Files closed because they reached `max_file_bytes`.
    pub files_rotated: Counter,
    /// Failed writes, flushes, rotations and opens.
    pub write_errors: Counter,
}

impl OpLogMetrics {
    /// Counts one record not written.
    pub fn drop_one(&self, reason: DropReason) {
        self.dropped.get_or_create(&DropLabels { reason }).inc();
    }

    /// Records not written, all reasons.
    pub fn dropped_total(&self) -> u64 {
        [
            DropReason::queue_full,
            DropReason::write_error,
            DropReason::closed,
        ]
        .into_iter()
        .map(|reason| self.dropped.get_or_create(&DropLabels { reason }).get())
        .sum()
    }

    /// Registers the counters in `registry` (the daemon's, prefixed
    /// `sluice`): `sluice_oplog_records_total` and so on.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("oplog");
        r.register(
            "records",
            "Operation-log records handed to the compressor",
            self.records.clone(),
        );
        r.register(
            "dropped",
            "Operation-log records not written: queue_full (on_full policy), write_error, closed",
            self.dropped.clone(),
        );
        r.register(
            "bytes_written",
            "Compressed bytes written to operation-log files",
            self.bytes_written.clone(),
        );
        r.register(
            "files_rotated",
            "Operation-log files closed at oplog.max_file_bytes",
            self.files_rotated.clone(),
        );
        r.register(
            "write_errors",
            "Failed writes, flushes, rotations and opens of operation-log files",
            self.write_errors.clone(),
        );
    }
}

/// The operation log: a cheap handle (an `Arc`) to clone into every layer
/// that records.
#[derive(Debug, Clone)]
pub struct OpLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: OpLogConfig,
    enabled: AtomicBool,
    queue: Arc<Queue>,
    metrics: OpLogMetrics,
    slots: Mutex<Slots>,
    writer: Mutex<WriterState>,
}

#[derive(Debug)]
enum WriterState {
    NotStarted,
    Running(JoinHandle<()>),
    Closed,
}

impl OpLog {
    /// A log as `config` says; with `enabled = true` the file is opened
    /// (an error if it cannot be) and the writer started.
    pub fn new(config: &OpLogConfig) -> io::Result<OpLog> {
        let log = OpLog {
            inner: Arc::new(Inner {
                config: config.clone(),
                enabled: AtomicBool::new(false),
                queue: Arc::new(Queue::new(config.queue)),
                metrics: OpLogMetrics::default(),
                slots: Mutex::new(Slots::default()),
                writer: Mutex::new(WriterState::NotStarted),
            }),
        };
        // Every `reason` series exists from the start, at 0.
        log.inner.metrics.dropped_total();
        if config.enabled {
            log.set_enabled(true)?;
        }
        Ok(log)
    }

    /// Turns recording on or off. The first time on opens the file and
    /// starts the writer; that failing leaves the log off. A closed log
    /// cannot be turned on again.
    pub fn set_enabled(&self, on: bool) -> io::Result<()> {
        if on {
            self.start_writer()?;
        }
        self.inner.enabled.store(on, Ordering::Relaxed);
        Ok(())
    }

    fn start_writer(&self) -> io::Result<()> {
        let mut state = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match *state {
            WriterState::Running(_) => Ok(()),
            WriterState::Closed => Err(io::Error::other("the operation log is closed")),
            WriterState::NotStarted => {
                let writer = writer::Writer::open(&self.inner.config, self.inner.metrics.clone())?;
                let queue = self.inner.queue.clone();
                let handle = std::thread::Builder::new()
                    .name("sluice-oplog".into())
                    .spawn(move || writer.run(&queue))?;
                *state = WriterState::Running(handle);
                Ok(())
            }
        }
    }

    /// Whether operations are being recorded.
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled.load(Ordering::Relaxed)
    }

    /// Whether client requests should be recorded too (`client_requests`);
    /// the RPC layer asks, and records with [`OpLog::begin`] while
    /// [`OpLog::is_enabled`].
    pub fn client_requests(&self) -> bool {
        self.inner.config.client_requests
    }

    /// Queues a finished record (a no-op while the log is off). Most
    /// callers use [`OpLog::begin`], which also assigns the slot and times
    /// the operation.
    pub fn record(&self, record: Record) {
        if self.is_enabled() {
            self.push(record);
        }
    }

    /// Queues `record` under the `on_full` policy, counting a refusal.
    fn push(&self, record: Record) {
        let wait = match self.inner.config.on_full {
            OnFull::Block => self.inner.config.block_timeout,
            OnFull::Drop => Duration::ZERO,
        };
        match self.inner.queue.push(record, wait) {
            Ok(()) => {}
            Err(Refused::Full) => self.inner.metrics.drop_one(DropReason::queue_full),
            Err(Refused::Closed) => self.inner.metrics.drop_one(DropReason::closed),
        }
    }

    /// Starts timing operation `op` on `object` (a URI without secrets)
    /// and takes a slot; `None` while the log is off. The record is queued
    /// by [`InFlight::done`] or [`InFlight::failed`], or, if the operation
    /// is dropped before either, as failed with "canceled".
    pub fn begin(&self, op: &'static str, object: impl Into<String>) -> Option<InFlight> {
        if !self.is_enabled() {
            return None;
        }
        let start = SystemTime::now();
        Some(InFlight {
            log: self.clone(),
            started: Instant::now(),
            record: Some(Record {
                thread: self.slots().take(),
                op: Cow::Borrowed(op),
                client_id: Cow::Borrowed("sluiced"),
                n_objects: 1,
                bytes: 0,
                endpoint: Cow::Borrowed(""),
                file: object.into(),
                error: String::new(),
                start,
                first_byte: None,
                end: start,
                range_offset: None,
                range_length: None,
            }),
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.inner
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Its counters.
    pub fn metrics(&self) -> &OpLogMetrics {
        &self.inner.metrics
    }

    /// Registers the `sluice_oplog_*` counters in `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.inner.metrics.register(registry);
    }

    /// Stops recording, writes everything queued, finishes the file and
    /// joins the writer thread (blocking: call it off the runtime, or at
    /// the very end). Later records are counted as dropped (`closed`).
    pub fn close(&self) {
        self.inner.close();
    }
}

impl Inner {
    fn close(&self) {
        self.enabled.store(false, Ordering::Relaxed);
        self.queue.close();
        let state = std::mem::replace(
            &mut *self.writer.lock().unwrap_or_else(PoisonError::into_inner),
            WriterState::Closed,
        );
        if let WriterState::Running(handle) = state
            && handle.join().is_err()
        {
            tracing::error!("the operation-log writer thread panicked");
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

/// The slot numbers of operations in flight: each takes the lowest free.
#[derive(Debug, Default)]
struct Slots {
    free: BinaryHeap<Reverse<u16>>,
    next: u16,
}

impl Slots {
    fn take(&mut self) -> u16 {
        if let Some(Reverse(slot)) = self.free.pop() {
            return slot;
        }
        // 65,535 operations in flight at once: the rest share the last slot.
        let slot = self.next;
        self.next = self.next.saturating_add(1);
        slot
    }

    fn give_back(&mut self, slot: u16) {
        if slot != u16::MAX {
            self.free.push(Reverse(slot));
        }
    }
}

/// An operation being timed; see [`OpLog::begin`].
#[derive(Debug)]
pub struct InFlight {
    log: OpLog,
    started: Instant,
    /// `None` once queued.
    record: Option<Record>,
}

impl InFlight {
    fn record(&mut self) -> &mut Record {
        self.record.as_mut().expect("queued only on the way out")
    }

    /// Names the endpoint (scheme and host or account; no credentials).
    pub fn endpoint(mut self, endpoint: impl Into<Cow<'static, str>>) -> Self {
        self.record().endpoint = endpoint.into();
        self
    }

    /// Names who issued it (default `sluiced`; client requests: the uid).
    pub fn client(mut self, client: impl Into<Cow<'static, str>>) -> Self {
        self.record().client_id = client.into();
        self
    }

    /// The byte range asked for (`length: None`: to the end).
    pub fn range(mut self, offset: u64, length: Option<u64>) -> Self {
        let r = self.record();
        r.range_offset = Some(offset);
        r.range_length = length;
        self
    }

    /// Notes that the response began now.
    pub fn first_byte(&mut self) {
        let at = self.now();
        self.record().first_byte = Some(at);
    }

    /// Sets the objects it touched (default 1; a LIST page: its entries).
    pub fn objects(&mut self, n: u64) {
        self.record().n_objects = n;
    }

    fn now(&self) -> SystemTime {
        self.record
            .as_ref()
            .map_or_else(SystemTime::now, |r| r.start + self.started.elapsed())
    }

    /// Ends it successfully, having moved `bytes`.
    pub fn done(self, bytes: u64) {
        self.end(bytes, String::new());
    }

    /// Ends it with `error` (put on one line in the file), having moved
    /// `bytes`.
    pub fn failed(self, bytes: u64, error: impl fmt::Display) {
        self.end(bytes, error.to_string());
    }

    fn end(mut self, bytes: u64, error: String) {
        self.finish(bytes, error);
    }

    fn finish(&mut self, bytes: u64, error: String) {
        let end = self.now();
        let Some(mut record) = self.record.take() else {
            return;
        };
        record.bytes = bytes;
        record.error = error;
        record.end = end;
        let slot = record.thread;
        self.log.push(record);
        self.log.slots().give_back(slot);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.record.is_some() {
            self.finish(0, "canceled".to_owned());
        }
    }
}
