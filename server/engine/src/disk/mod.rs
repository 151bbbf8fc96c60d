//! The disk tier: a cache on local drives below the RAM arena, kept across
//! restarts.
//!
//! # What is kept, and where
//! Every object the RAM cache takes from a backend (a demand read or a
//! prefetch) is also written to one of `cache.disk.dirs` in the background;
//! an object the RAM cache no longer holds is then read back from disk with
//! `O_DIRECT` (the `direct://` reader: io_uring, straight into an arena
//! extent) instead of from the backend. Admission on fill rather than on
//! eviction: the bytes are in the arena anyway while the entry is cached,
//! so writing them then costs no extra memory, and by the time the RAM
//! cache evicts the entry it is usually on disk already; writing on
//! eviction would instead hold evicted memory until the write ends, which
//! is exactly when the budget needs it back.
//!
//! Each entry is two files, `<id>.data` (the bytes) and `<id>.meta` (JSON:
//! URI, size, etag, last-modified, version, CRC-32 of the bytes), `<id>`
//! random. The data is written with `O_DIRECT` through io_uring (the
//! `direct://` ring: the bytes are in the arena already, the page cache
//! need not hold them twice). A write goes `.data.tmp` → fsync → rename,
//! then `.meta.tmp` →
//! fsync → rename, then the directory is fsynced: an entry exists once its
//! `.meta` does, and its `.data` is whole by then. At startup the index is
//! loaded from the `.meta` files on a task of its own (the daemon serves
//! meanwhile; until it is loaded the tier misses); temporary files, data
//! without meta and entries whose data file has the wrong size (a crash mid
//! write, a truncated file) are removed.
//!
//! # Serving from disk
//! An entry loaded at startup is revalidated against the backend (a HEAD,
//! the RAM tier's rule: size, etag, last-modified and version must match)
//! before its first use, and again whenever it is older than
//! `cache.revalidate_after`; a changed or deleted object's entry is
//! removed. The bytes read are checked against the CRC; a mismatch (a
//! damaged file) removes the entry, counts `sluice_disk_corrupt_total` and
//! reads from the backend — never serves the bytes.
//!
//! # Budget and failures
//! Each directory holds at most `cache.disk.max_bytes` of data, least
//! recently used entries removed first. Writes wait in a queue of at most
//! `cache.disk.write_queue` bytes; an object that does not fit is not
//! written (`sluice_disk_writes_skipped_total`): the request path never
//! waits for the disk. A failed write or read counts
//! `sluice_disk_errors_total` and logs; after [`MAX_ERRORS`] errors in a
//! row the tier turns itself off (RAM only) until the daemon restarts.

mod files;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use lru::LruCache;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use sluice_storage::direct::{DirectConfig, DirectStorage};
use sluice_storage::{ObjectMeta, ObjectUri, ReadBuf, Storage, Version};
use tokio::sync::mpsc;

use crate::config::ByteSize;
use files::Stored;

/// Errors in a row after which the tier turns itself off.
pub const MAX_ERRORS: u32 = 8;

/// `[cache.disk]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiskConfig {
    /// Directories of the tier, one per drive; empty: no disk tier.
    pub dirs: Vec<PathBuf>,
    /// Data bytes each directory holds at most.
    pub max_bytes: ByteSize,
    /// Bytes waiting to be written at most; objects beyond are not written.
    pub write_queue: ByteSize,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            dirs: Vec::new(),
            max_bytes: ByteSize::gib(100),
            write_queue: ByteSize::mib(256),
        }
    }
}

/// What the disk tier counts (`sluice_disk_*`).
#[derive(Debug, Clone, Default)]
pub struct DiskMetrics {
    /// RAM misses served from disk.
    pub hits: Counter,
    /// RAM misses the disk did not have (or could not serve).
    pub misses: Counter,
    /// Bytes read from disk for hits.
    pub read_bytes: Counter,
    /// Entries written.
    pub writes: Counter,
    /// Bytes written.
    pub written_bytes: Counter,
    /// Objects not written because the queue was full.
    pub writes_skipped: Counter,
    /// Entries removed to stay within `max_bytes`.
    pub evictions: Counter,
    /// Entries found damaged (CRC mismatch, wrong size) and removed.
    pub corrupt: Counter,
    /// Entries removed because the object changed at the backend.
    pub stale: Counter,
    /// Failed writes and reads.
    pub errors: Counter,
    /// Data bytes on disk.
    pub bytes: Gauge,
    /// Entries on disk.
    pub entries: Gauge,
    /// Bytes waiting to be written.
    pub queue_bytes: Gauge,
    /// 1 while the tier is on; 0 when off after errors.
    pub up: Gauge,
}

impl DiskMetrics {
    /// Registers the metrics under `sluice_disk_`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let r = registry.sub_registry_with_prefix("disk");
        r.register(
            "hits",
            "RAM misses served from the disk tier",
            self.hits.clone(),
        );
        r.register(
            "misses",
            "RAM misses the disk tier could not serve",
            self.misses.clone(),
        );
        r.register(
            "read_bytes",
            "Bytes read from the disk tier",
            self.read_bytes.clone(),
        );
        r.register(
            "writes",
            "Entries written to the disk tier",
            self.writes.clone(),
        );
        r.register(
            "written_bytes",
            "Bytes written to the disk tier",
            self.written_bytes.clone(),
        );
        r.register(
            "writes_skipped",
            "Objects not written because the write queue was full",
            self.writes_skipped.clone(),
        );
        r.register(
            "evictions",
            "Entries removed to stay within cache.disk.max_bytes",
            self.evictions.clone(),
        );
        r.register(
            "corrupt",
            "Entries found damaged (checksum mismatch, wrong size) and removed",
            self.corrupt.clone(),
        );
        r.register(
            "stale",
            "Entries removed because the object changed at the backend",
            self.stale.clone(),
        );
        r.register(
            "errors",
            "Failed disk tier writes and reads",
            self.errors.clone(),
        );
        r.register("bytes", "Data bytes in the disk tier", self.bytes.clone());
        r.register("entries", "Entries in the disk tier", self.entries.clone());
        r.register(
            "queue_bytes",
            "Bytes waiting to be written",
            self.queue_bytes.clone(),
        );
        r.register(
            "up",
            "1 while the disk tier is on, 0 after it turned off on errors",
            self.up.clone(),
        );
    }
}

/// One entry of the index.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    dir: usize,
    id: String,
    stored: Stored,
    /// Checked against the backend in this run (or written in it).
    validated_ms: Option<u64>,
}

impl Entry {
    /// The object's metadata as stored.
    pub(crate) fn meta(&self) -> ObjectMeta {
        self.stored.meta()
    }

    /// Whether the entry was validated less than `ttl` before `now_ms`.
    pub(crate) fn fresh(&self, now_ms: u64, ttl: std::time::Duration) -> bool {
        self.validated_ms
            .is_some_and(|at| u128::from(now_ms.saturating_sub(at)) < ttl.as_millis())
    }
}

#[derive(Debug)]
struct Index {
    entries: LruCache<String, Entry>,
    bytes: Vec<u64>,
    loaded: bool,
}

struct Job {
    key: String,
    meta: ObjectMeta,
    data: Bytes,
}

/// The disk tier.
#[derive(Debug)]
pub struct DiskTier {
    dirs: Vec<PathBuf>,
    reader: DirectStorage,
    index: Mutex<Index>,
    max_bytes: u64,
    queue_limit: u64,
    queued: AtomicU64,
    jobs: mpsc::UnboundedSender<Job>,
    errors_in_a_row: AtomicU32,
    off: AtomicBool,
    epoch: std::time::Instant,
    metrics: DiskMetrics,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl DiskTier {
    /// Opens the tier's directories (created if missing) and starts the
    /// writer and the index load on the current runtime. `None` without
    /// directories.
    pub fn start(config: &DiskConfig, metrics: DiskMetrics) -> std::io::Result<Option<Arc<Self>>> {
        if config.dirs.is_empty() {
            return Ok(None);
        }
        let mut dirs = Vec::new();
        for dir in &config.dirs {
            std::fs::create_dir_all(dir)?;
            // Other users' objects, fetched with the daemon's credentials:
            // only the daemon's user may look.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            dirs.push(std::fs::canonicalize(dir)?);
        }
        let reader = DirectStorage::new(&DirectConfig {
            roots: dirs.clone(),
            // The tier's own files: read them whichever way the drive allows.
            buffered_fallback: true,
            ..DirectConfig::default()
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        let (jobs, rx) = mpsc::unbounded_channel();
        metrics.up.set(1);
        let tier = Arc::new(DiskTier {
            index: Mutex::new(Index {
                entries: LruCache::unbounded(),
                bytes: vec![0; dirs.len()],
                loaded: false,
            }),
            dirs,
            reader,
            max_bytes: config.max_bytes.0,
            queue_limit: config.write_queue.0,
            queued: AtomicU64::new(0),
            jobs,
            errors_in_a_row: AtomicU32::new(0),
            off: AtomicBool::new(false),
            epoch: std::time::Instant::now(),
            metrics,
        });
        tokio::spawn(writer(Arc::downgrade(&tier), rx));
        let loading = tier.clone();
        tokio::task::spawn_blocking(move || loading.load());
        Ok(Some(tier))
    }

    /// Its metrics.
    pub fn metrics(&self) -> &DiskMetrics {
        &self.metrics
    }

    /// Whether the index is loaded (the tier serves only then).
    pub fn is_loaded(&self) -> bool {
        self.index().loaded
    }

    /// Entries on disk now.
    pub fn len(&self) -> usize {
        self.index().entries.len()
    }

    /// Whether the tier holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry for `key`, marked used; `None` (a miss) while the index
    /// loads or the tier is off.
    pub(crate) fn lookup(&self, key: &str) -> Option<Entry> {
        if self.off.load(Ordering::Relaxed) {
            return None;
        }
        let mut index = self.index();
        if !index.loaded {
            return None;
        }
        index.entries.get(key).cloned()
    }

    /// Marks `key`'s entry (if it is still `entry`) validated now.
    pub(crate) fn validated(&self, key: &str, entry: &Entry) {
        let now = self.now_ms();
        if let Some(e) = self.index().entries.peek_mut(key)
            && e.id == entry.id
        {
            e.validated_ms = Some(now);
        }
    }

    /// Reads `entry`'s bytes into `dst` (its size) and checks them.
    pub(crate) async fn read(&self, key: &str, entry: &Entry, dst: ReadBuf) -> (bool, ReadBuf) {
        let path = files::data_path(&self.dirs[entry.dir], &entry.id);
        let uri = match ObjectUri::parse(&format!("direct://{}", path.display())) {
            Ok(u) => u,
            Err(_) => return (false, dst),
        };
        let (res, dst) = self
            .reader
            .read_into(&uri, 0, &Version::default(), dst)
            .await;
        match res {
            Ok(()) if crc32fast::hash(dst.as_slice()) == entry.stored.crc32 => {
                self.ok();
                self.metrics.read_bytes.inc_by(dst.len() as u64);
                (true, dst)
            }
            Ok(()) => {
                tracing::warn!(uri = key, file = %path.display(), "disk tier entry is damaged (checksum mismatch); removed");
                self.metrics.corrupt.inc();
                self.remove_entry(key, Some(&entry.id));
                (false, dst)
            }
            Err(e) => {
                if e.kind() == sluice_storage::ErrorKind::Changed
                    || e.kind() == sluice_storage::ErrorKind::NotFound
                {
                    // Truncated or removed under us.
                    self.metrics.corrupt.inc();
                } else {
                    self.failed(&format!("reading {}", path.display()), &e);
                }
                self.remove_entry(key, Some(&entry.id));
                (false, dst)
            }
        }
    }

    /// Queues `data` (the object `meta`, cached under `key`) for writing;
    /// skipped when the queue is full or the tier is off.
    pub(crate) fn admit(&self, key: &str, meta: &ObjectMeta, data: &Bytes) {
        if self.off.load(Ordering::Relaxed) || data.len() as u64 > self.max_bytes {
            return;
        }
        let len = data.len() as u64;
        let fits = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + len <= self.queue_limit).then_some(q + len)
            })
            .is_ok();
        if !fits {
            self.metrics.writes_skipped.inc();
            return;
        }
        self.metrics.queue_bytes.set(self.queued_bytes() as i64);
        let job = Job {
            key: key.to_owned(),
            meta: meta.clone(),
            data: data.clone(),
        };
        if self.jobs.send(job).is_err() {
            self.queued.fetch_sub(len, Ordering::AcqRel);
        }
    }

    /// Forgets `key` (changed or deleted through the daemon, or stale).
    pub fn remove(&self, key: &str) {
        self.remove_entry(key, None);
    }

    /// Forgets every entry under `prefix`.
    pub fn remove_prefix(&self, prefix: &str) {
        let gone: Vec<Entry> = {
            let mut index = self.index();
            let keys: Vec<String> = index
                .entries
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter()
                .filter_map(|k| Self::take(&mut index, k))
                .collect()
        };
        self.delete_files(gone);
    }

    /// Removes `key`'s entry, only if it is `id` when given.
    pub(crate) fn remove_entry(&self, key: &str, id: Option<&str>) {
        let gone = {
            let mut index = self.index();
            match index.entries.peek(key) {
                Some(e) if id.is_none_or(|id| e.id == id) => Self::take(&mut index, key),
                _ => None,
            }
        };
        self.delete_files(gone);
    }

    /// A changed object's entry: removed and counted.
    pub(crate) fn stale(&self, key: &str, entry: &Entry) {
        self.metrics.stale.inc();
        self.remove_entry(key, Some(&entry.id));
    }

    fn take(index: &mut Index, key: &str) -> Option<Entry> {
        let e = index.entries.pop(key)?;
        index.bytes[e.dir] -= e.stored.size;
        Some(e)
    }

    fn delete_files(&self, gone: impl IntoIterator<Item = Entry>) {
        for e in gone {
            files::remove(&self.dirs[e.dir], &e.id);
        }
        self.refresh_gauges();
    }

    fn refresh_gauges(&self) {
        let index = self.index();
        self.metrics.entries.set(index.entries.len() as i64);
        self.metrics
            .bytes
            .set(index.bytes.iter().sum::<u64>() as i64);
    }

    fn ok(&self) {
        self.errors_in_a_row.store(0, Ordering::Relaxed);
    }

    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        self.metrics.errors.inc();
        let n = self.errors_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::error!(error = %e, "disk tier: {what} failed");
        if n >= MAX_ERRORS && !self.off.swap(true, Ordering::Relaxed) {
            self.metrics.up.set(0);
            tracing::error!(
                "disk tier turned off after {n} failures in a row: the cache is RAM only until restart"
            );
        }
    }

    /// Loads the index from the directories (at startup, off the runtime).
    fn load(&self) {
        let mut loaded = Vec::new();
        for (dir, path) in self.dirs.iter().enumerate() {
            let (found, damaged) = files::scan(path);
            self.metrics.corrupt.inc_by(damaged);
            loaded.extend(found.into_iter().map(|(id, stored)| Entry {
                dir,
                id,
                stored,
                validated_ms: None,
            }));
        }
        // Oldest first, so the most recently written end up most recent.
        loaded.sort_by_key(|e| e.stored.written_ns);
        let mut index = self.index();
        let mut dropped = Vec::new();
        for e in loaded {
            let key = e.stored.uri.clone();
            // A key written while loading is newer than what was on disk.
            if index.entries.contains(&key) {
                dropped.push(e);
                continue;
            }
            index.bytes[e.dir] += e.stored.size;
            if let Some(old) = index.entries.put(key, e) {
                index.bytes[old.dir] -= old.stored.size;
                dropped.push(old);
            }
        }
        index.loaded = true;
        let n = index.entries.len();
        drop(index);
        self.delete_files(dropped);
        tracing::info!(entries = n, "disk tier index loaded");
    }

    /// Writes one entry and makes room for it: the data with `O_DIRECT`
    /// through io_uring, the rest on the blocking pool.
    async fn write(self: &Arc<Self>, job: Job) {
        let dir = self.pick_dir();
        let id = format!("{:032x}", rand::random::<u128>());
        let stored = Stored::new(&job.meta, crc32fast::hash(&job.data));
        // Room first: the budget holds with the new file on disk.
        let evicted = self.make_room(dir, stored.size);
        self.delete_files(evicted);
        let path = self.dirs[dir].clone();
        let written = async {
            let tmp = files::data_tmp(&path, &id);
            self.reader.write_file(&tmp, job.data.clone()).await?;
            let (path, id, stored) = (path.clone(), id.clone(), stored.clone());
            tokio::task::spawn_blocking(move || files::commit(&path, &id, &stored))
                .await
                .map_err(std::io::Error::other)?
        };
        match written.await {
            Ok(()) => {
                self.ok();
                self.metrics.writes.inc();
                self.metrics.written_bytes.inc_by(stored.size);
                let now = self.now_ms();
                let old = {
                    let mut index = self.index();
                    index.bytes[dir] += stored.size;
                    let entry = Entry {
                        dir,
                        id,
                        stored,
                        validated_ms: Some(now),
                    };
                    let old = index.entries.put(job.key, entry);
                    if let Some(old) = &old {
                        index.bytes[old.dir] -= old.stored.size;
                    }
                    old
                };
                self.delete_files(old);
            }
            Err(e) => {
                files::remove(&self.dirs[dir], &id);
                self.failed(&format!("writing to {}", self.dirs[dir].display()), &e);
            }
        }
    }

    fn pick_dir(&self) -> usize {
        let index = self.index();
        (0..self.dirs.len())
            .min_by_key(|&d| index.bytes[d])
            .unwrap_or(0)
    }

    /// Entries of `dir` to remove so that `size` more bytes fit.
    fn make_room(&self, dir: usize, size: u64) -> Vec<Entry> {
        let mut index = self.index();
        let mut gone = Vec::new();
        while index.bytes[dir] + size > self.max_bytes {
            let victim = index
                .entries
                .iter()
                .rev()
                .find(|(_, e)| e.dir == dir)
                .map(|(k, _)| k.clone());
            let Some(key) = victim else { break };
            if let Some(e) = Self::take(&mut index, &key) {
                gone.push(e);
                self.metrics.evictions.inc();
            }
        }
        gone
    }
}

/// Writes queued entries one at a time until the tier is dropped.
async fn writer(tier: std::sync::Weak<DiskTier>, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = rx.recv().await {
        let Some(t) = tier.upgrade() else { return };
        let len = job.data.len() as u64;
        if !t.off.load(Ordering::Relaxed) {
            t.write(job).await;
        }
        t.queued.fetch_sub(len, Ordering::AcqRel);
        t.metrics.queue_bytes.set(t.queued_bytes() as i64);
    }
}
