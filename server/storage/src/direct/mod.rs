//! `direct://` backend: local files read with `O_DIRECT` through io_uring.
//!
//! For datasets staged on local NVMe: reads bypass the page cache (no
//! double caching beside the arena, no eviction of other processes' pages)
//! and go from the device straight into arena extents. Everything but the
//! reads — roots and confinement, `head`, listings, writes, deletes — is
//! `file://`'s code on `direct://`'s own roots (`[storage.direct] roots`),
//! so the same rules hold: descriptors, never path strings; `.`/`..`
//! refused; symlinks only beneath their root; only regular files.
//!
//! # Reads
//! A read opens the file `O_DIRECT` beneath its root (on the blocking pool)
//! and sends `pread`s to a ring thread ([`ring`]). `O_DIRECT` wants the
//! file offset, the length and the memory address aligned to the device's
//! block ([`ALIGN`], 4 KiB, which covers 512-byte devices too). The bytes
//! wanted are cut into pieces:
//! - when the range's start and the buffer's address have the same offset
//!   within a block (always for whole-object reads into arena extents,
//!   which are page-aligned), the aligned middle is read straight into the
//!   buffer in I/Os of up to [`IO_SIZE`]; a head before the first block
//!   boundary and a tail after the last are read as whole blocks into small
//!   aligned bounce buffers and copied;
//! - otherwise the aligned span around the range is read into bounce
//!   buffers of up to [`IO_SIZE`] and copied.
//!
//! Up to [`PIECES_IN_FLIGHT`] pieces of one read are in flight at once (the
//! RangeEngine adds parallelism across parts and objects). Each piece owns
//! its part of the buffer until its read completes, so a dropped request
//! never lets the memory be reused under the kernel. After the pieces, the
//! file is `fstat`ed again and compared with the open's (as `file://`
//! does): a file rewritten during the read is `Changed`, never served.
//!
//! # Filesystems without `O_DIRECT`
//! Where the filesystem refuses `O_DIRECT` (`EINVAL` at open: ramfs, some
//! FUSE and network filesystems; tmpfs before Linux 6.6) the read fails
//! with `FailedPrecondition`, naming the path and the reason. With
//! `buffered_fallback = true` it is read through the page cache instead,
//! counted in `sluice_direct_buffered_reads_total`. Never silently.
//!
//! # Writes
//! Uploads are `file://`'s: buffered, `fsync`ed, renamed into place — durable
//! on commit. `direct://` is for reading datasets.

mod ring;
#[cfg(test)]
mod tests;
mod write;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};

use crate::file::{FileStorage, Snapshot, meta_of, shrank};
use crate::{
    BufResult, ErrorKind, GetOptions, GetResult, ListOptions, ListPage, MultipartUpload,
    ObjectMeta, ObjectUri, ReadBuf, Result, Storage, StorageError, Version, clamp_range,
};
use ring::Rings;

/// The alignment of offsets, lengths and addresses of `O_DIRECT` reads.
pub const ALIGN: u64 = 4096;
/// The largest single read.
pub const IO_SIZE: usize = 1 << 20;
/// Pieces of one read in flight at once.
pub const PIECES_IN_FLIGHT: usize = 8;

/// `[storage.direct]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectConfig {
    /// Directories `direct://` URIs may name. Empty: every `direct://`
    /// request is refused.
    pub roots: Vec<PathBuf>,
    /// Read through the page cache where the filesystem refuses `O_DIRECT`
    /// (counted), instead of failing with FAILED_PRECONDITION.
    pub buffered_fallback: bool,
    /// io_uring threads.
    pub rings: usize,
    /// Reads in the kernel per ring.
    pub queue_depth: u32,
}

impl Default for DirectConfig {
    fn default() -> Self {
        DirectConfig {
            roots: Vec::new(),
            buffered_fallback: false,
            rings: 1,
            queue_depth: 64,
        }
    }
}

/// What `direct://` counts.
#[derive(Debug, Default, Clone)]
pub struct DirectMetrics {
    /// Reads served through the page cache (`buffered_fallback`).
    pub buffered_reads: Counter,
}

impl DirectMetrics {
    /// Registers the counters in `registry`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "direct_buffered_reads",
            "direct:// reads served through the page cache because the filesystem refuses O_DIRECT (storage.direct.buffered_fallback)",
            self.buffered_reads.clone(),
        );
    }
}

/// Local files under `direct://` roots, read with `O_DIRECT`.
#[derive(Debug)]
pub struct DirectStorage {
    files: FileStorage,
    /// Started at the first read: a daemon without `direct://` roots (or
    /// that never reads one) runs no ring threads.
    rings: tokio::sync::OnceCell<Arc<Rings>>,
    config: DirectConfig,
    metrics: DirectMetrics,
}

impl DirectStorage {
    /// Opens the roots; a root that does not exist is an error.
    pub fn new(config: &DirectConfig) -> Result<Self> {
        Ok(DirectStorage {
            files: FileStorage::open_for("direct", &config.roots, None)?,
            rings: tokio::sync::OnceCell::new(),
            config: config.clone(),
            metrics: DirectMetrics::default(),
        })
    }

    /// Its counters.
    pub fn metrics(&self) -> &DirectMetrics {
        &self.metrics
    }

    async fn rings(&self, uri: &ObjectUri) -> Result<Arc<Rings>> {
        self.rings_for(&uri.to_string()).await
    }

    /// The rings, started at the first use; errors name `what`.
    async fn rings_for(&self, what: &str) -> Result<Arc<Rings>> {
        self.rings
            .get_or_try_init(|| async {
                Rings::new(self.config.rings, self.config.queue_depth)
                    .map(Arc::new)
                    .map_err(|e| {
                        StorageError::new(
                            ErrorKind::FailedPrecondition,
                            what,
                            format!("cannot set up io_uring for direct:// reads: {e}"),
                        )
                    })
            })
            .await
            .cloned()
    }

    /// Opens `uri` for `O_DIRECT` reads; `None` when the filesystem
    /// refuses and the buffered fallback is on.
    async fn open(&self, uri: &ObjectUri) -> Result<Option<(OwnedFd, rustix::fs::Stat)>> {
        let files = self.files.clone();
        let u = uri.clone();
        let fallback = self.config.buffered_fallback;
        crate::file::blocking(uri, move || match files.open_direct(&u)? {
            Some(opened) => Ok(Some(opened)),
            None if fallback => Ok(None),
            None => Err(StorageError::new(
                ErrorKind::FailedPrecondition,
                u.to_string(),
                "the filesystem refuses O_DIRECT (EINVAL at open: ramfs, FUSE, \
                 some network filesystems); serve it as file://, or set \
                 storage.direct.buffered_fallback = true",
            )),
        })
        .await
    }
}

/// `dst.len()` bytes at `offset` of the open file `fd` into `dst`.
async fn read_fd(
    rings: &Rings,
    uri: &ObjectUri,
    fd: &Arc<OwnedFd>,
    offset: u64,
    dst: ReadBuf,
) -> BufResult {
    let pieces = pieces(offset, dst);
    let reads = futures::stream::iter(pieces)
        .map(|(at, piece)| read_piece(rings, fd, uri, at, piece))
        .buffered(PIECES_IN_FLIGHT);
    let outcomes: Vec<BufResult> = reads.collect().await;
    let mut first_error = None;
    let mut bufs = Vec::with_capacity(outcomes.len());
    for (res, buf) in outcomes {
        if let Err(e) = res {
            first_error.get_or_insert(e);
        }
        bufs.push(buf);
    }
    match ReadBuf::join_all(bufs) {
        Some(whole) => (first_error.map_or(Ok(()), Err), whole),
        None => (
            Err(first_error.unwrap_or_else(|| {
                StorageError::new(ErrorKind::Other, uri.to_string(), "a read lost its buffer")
            })),
            ReadBuf::empty(),
        ),
    }
}

/// `dst`, for bytes from `offset` on, cut into pieces: `(file offset,
/// piece)`, in order.
fn pieces(offset: u64, dst: ReadBuf) -> Vec<(u64, ReadBuf)> {
    let len = dst.len() as u64;
    let end = offset + len;
    let mut out = Vec::new();
    if len == 0 {
        out.push((offset, dst));
        return out;
    }
    let congruent = offset % ALIGN == dst.addr() as u64 % ALIGN;
    if !congruent {
        push_chunks(&mut out, offset, dst);
        return out;
    }
    let head = (offset.next_multiple_of(ALIGN) - offset).min(len);
    let tail_start = (end / ALIGN * ALIGN).max(offset + head);
    let (head_buf, rest) = dst.split_at(head as usize);
    let (mid_buf, tail_buf) = rest.split_at((tail_start - offset - head) as usize);
    if !head_buf.is_empty() {
        out.push((offset, head_buf));
    }
    if !mid_buf.is_empty() {
        push_chunks(&mut out, offset + head, mid_buf);
    }
    if !tail_buf.is_empty() {
        out.push((tail_start, tail_buf));
    }
    out
}

/// `buf`, for bytes from `at` on, as pieces of at most [`IO_SIZE`].
fn push_chunks(out: &mut Vec<(u64, ReadBuf)>, mut at: u64, buf: ReadBuf) {
    for piece in buf.chunks(IO_SIZE) {
        let n = piece.len() as u64;
        out.push((at, piece));
        at += n;
    }
}

/// Reads one piece: straight into it when aligned, else through a bounce
/// buffer over the aligned span around it.
async fn read_piece(
    rings: &Rings,
    fd: &Arc<OwnedFd>,
    uri: &ObjectUri,
    at: u64,
    mut piece: ReadBuf,
) -> BufResult {
    let len = piece.len();
    if len == 0 {
        return (Ok(()), piece);
    }
    let aligned = at.is_multiple_of(ALIGN)
        && (len as u64).is_multiple_of(ALIGN)
        && (piece.addr() as u64).is_multiple_of(ALIGN);
    if aligned {
        let (res, piece) = read_full(rings, fd, at, piece).await;
        let res = match res {
            Ok(n) if n == len => Ok(()),
            Ok(_) => Err(shrank(uri.to_string())),
            Err(e) => Err(read_error(uri, e)),
        };
        return (res, piece);
    }
    let start = at / ALIGN * ALIGN;
    let span = ((at + len as u64).next_multiple_of(ALIGN) - start) as usize;
    let (res, bounce) = read_full(rings, fd, start, ReadBuf::aligned(span, ALIGN as usize)).await;
    let skip = (at - start) as usize;
    let res = match res {
        Ok(n) if n >= skip + len => {
            piece
                .as_mut_slice()
                .copy_from_slice(&bounce.as_slice()[skip..skip + len]);
            Ok(())
        }
        Ok(_) => Err(shrank(uri.to_string())),
        Err(e) => Err(read_error(uri, e)),
    };
    (res, piece)
}

/// Reads into `buf` until it is full or the file ends; the bytes read.
async fn read_full(
    rings: &Rings,
    fd: &Arc<OwnedFd>,
    offset: u64,
    buf: ReadBuf,
) -> (std::io::Result<usize>, ReadBuf) {
    let mut done: Option<ReadBuf> = None;
    let mut rest = buf;
    let mut filled = 0;
    let outcome = loop {
        if rest.is_empty() {
            break Ok(filled);
        }
        let (res, back) = rings
            .read_at(fd.clone(), offset + filled as u64, rest)
            .await;
        rest = back;
        match res {
            Ok(0) => break Ok(filled),
            // A short read ending on a block boundary: read on.
            Ok(n) if n < rest.len() && (n as u64).is_multiple_of(ALIGN) => {
                let (read, left) = rest.split_at(n);
                done = Some(match done {
                    None => read,
                    Some(d) => d.join(read).unwrap_or_else(|(d, _)| d),
                });
                rest = left;
                filled += n;
            }
            // Fewer bytes than asked and not at a block boundary: the end.
            Ok(n) => break Ok(filled + n),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) => {}
            Err(e) => break Err(e),
        }
    };
    let whole = match done {
        None => rest,
        Some(d) => d.join(rest).unwrap_or_else(|_| ReadBuf::empty()),
    };
    (outcome, whole)
}

fn read_error(uri: &ObjectUri, e: std::io::Error) -> StorageError {
    if e.raw_os_error() == Some(libc::EINVAL) {
        return StorageError::new(
            ErrorKind::FailedPrecondition,
            uri.to_string(),
            "the device refused an O_DIRECT read (EINVAL: its block is larger than 4 KiB?)",
        )
        .with_source(e);
    }
    StorageError::from_io(uri.to_string(), e)
}

#[async_trait]
impl Storage for DirectStorage {
    fn name(&self) -> &'static str {
        "direct"
    }

    async fn head(&self, uri: &ObjectUri) -> Result<ObjectMeta> {
        self.files.head(uri).await
    }

    async fn get(&self, uri: &ObjectUri, opts: GetOptions) -> Result<GetResult> {
        let Some((fd, st)) = self.open(uri).await? else {
            self.metrics.buffered_reads.inc();
            return self.files.get(uri, opts).await;
        };
        let meta = meta_of(uri.to_string(), &st);
        if let Some(expected) = &opts.if_match {
            expected.check(&meta.uri, &meta)?;
        }
        let range = clamp_range(uri, opts.range, meta.size)?;
        let rings = self.rings(uri).await?;
        let fd = Arc::new(fd);
        let seen = Snapshot::of(&st);
        let starts = (range.start..range.end).step_by(IO_SIZE);
        let (end, u) = (range.end, uri.clone());
        // Chunks in aligned bounce buffers, two in flight: the next is read
        // while the consumer takes this one.
        let body = futures::stream::iter(starts)
            .map(move |at| {
                let (rings, fd, u) = (rings.clone(), fd.clone(), u.clone());
                async move {
                    let len = (end - at).min(IO_SIZE as u64) as usize;
                    let buf = ReadBuf::aligned(len, ALIGN as usize);
                    let (res, buf) = read_fd(&rings, &u, &fd, at, buf).await;
                    res?;
                    seen.recheck(&*fd, &u.to_string())?;
                    Ok(Bytes::from_owner(buf))
                }
            })
            .buffered(2);
        Ok(GetResult {
            meta,
            range,
            body: Box::pin(body),
        })
    }

    async fn list(&self, prefix: &ObjectUri, opts: &ListOptions) -> Result<ListPage> {
        self.files.list(prefix, opts).await
    }

    async fn put(&self, uri: &ObjectUri, data: Bytes) -> Result<ObjectMeta> {
        self.files.put(uri, data).await
    }

    async fn start_multipart(&self, uri: &ObjectUri) -> Result<Box<dyn MultipartUpload>> {
        self.files.start_multipart(uri).await
    }

    async fn delete(&self, uri: &ObjectUri) -> Result<()> {
        self.files.delete(uri).await
    }

    async fn read_into(
        &self,
        uri: &ObjectUri,
        offset: u64,
        expect: &Version,
        dst: ReadBuf,
    ) -> BufResult {
        let (fd, st) = match self.open(uri).await {
            Ok(Some(opened)) => opened,
            Ok(None) => {
                self.metrics.buffered_reads.inc();
                return self.files.read_into(uri, offset, expect, dst).await;
            }
            Err(e) => return (Err(e), dst),
        };
        let shown = uri.to_string();
        if let Err(e) = expect.check(&shown, &meta_of(shown.clone(), &st)) {
            return (Err(e), dst);
        }
        if offset + dst.len() as u64 > st.st_size as u64 {
            return (Err(shrank(shown)), dst);
        }
        let rings = match self.rings(uri).await {
            Ok(r) => r,
            Err(e) => return (Err(e), dst),
        };
        let fd = Arc::new(fd);
        let (res, dst) = read_fd(&rings, uri, &fd, offset, dst).await;
        let res = res.and_then(|()| Snapshot::of(&st).recheck(&*fd, &shown));
        (res, dst)
    }

    fn alignment(&self) -> u64 {
        ALIGN
    }

    fn learns_part_size(&self) -> bool {
        false
    }
}
