//! `file://` backend: local files, confined to configured roots by
//! descriptors, never by path strings.
//!
//! # Confinement
//!
//! Each root is opened once, at startup, as an `O_PATH` directory
//! descriptor ([`roots`]). A URI's path picks the root that is its longest
//! component-wise prefix; `.` and `..` components are refused outright
//! (`PermissionDenied`). The rest of the path is resolved *beneath the
//! root's descriptor* ([`beneath`]): `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)`, or, where the kernel refuses `openat2`, a
//! component-by-component `openat(O_NOFOLLOW)` walk with the same rules.
//! Nothing is checked on one path and opened on another, so swapping a
//! directory for a symlink between two calls cannot lead outside the root.
//!
//! **Symlinks** beneath a root are followed as long as every step stays
//! beneath that root: `a -> b/c` and `x/y -> ../z` work, an absolute
//! symlink or one climbing above the root is `PermissionDenied` ("leaves its
//! file root"), even when its target lies in another root. Listings show a
//! symlink to a regular file as an object and never descend into a symlink
//! to a directory (no loops); writes and deletes replace or remove the link
//! itself, never its target.
//!
//! **Only regular files are objects.** Reads open with `O_RDONLY |
//! O_NONBLOCK | O_NOCTTY`, `fstat` the descriptor and refuse anything but a
//! regular file before reading a byte, so a FIFO, socket or device under a
//! root is `PermissionDenied` at once instead of blocking a thread forever.
//! A directory is `NotFound` ("is a directory, not an object"), as a prefix
//! is in S3. Writes refuse a target that exists and is neither a regular
//! file nor a symlink; deletes refuse the same entries. A write or delete
//! naming a root itself is `PermissionDenied`.
//!
//! # Operations
//!
//! All filesystem calls run on tokio's blocking pool (or in
//! `block_in_place` for [`Storage::read_into`]), never on runtime workers.
//! Reads are `pread`s of [`READ_CHUNK`] bytes on the descriptor opened for
//! the request. Writes go to a temporary file created with `O_EXCL` beneath
//! the parent directory's descriptor (parents made one `mkdirat` at a
//! time), are `fsync`ed and renamed into place with `renameat` on that same
//! descriptor, so readers never see a half-written object and a failed
//! upload leaves nothing. Deletes `unlinkat` on the parent's descriptor.
//!
//! Etags are `size-mtime_ns-inode` in hex: any rewrite (new inode on rename,
//! or a new mtime in place) changes the etag, which is what the RangeEngine
//! and the cache rely on.
//!
//! # Files rewritten while they are read
//!
//! A writer that truncates and rewrites a file in place (same inode) while a
//! read is under way would hand the reader a mix of the two versions, which
//! no etag compared *before* the read can see. So every read (each chunk of
//! a `get` body, each [`Storage::read_into`]) `fstat`s the descriptor it
//! read from again afterwards and compares it with the `fstat` taken when
//! the file was opened ([`Snapshot`]): size, mtime and ctime to the
//! nanosecond, inode and device. Any difference is `Changed` (ABORTED),
//! naming the URI, and the bytes are never handed on or cached. The kernel
//! updates the timestamps before it copies a write's data, so a write whose
//! bytes the read saw has changed them by the time of the second `fstat`.
//!
//! The check is as fine as the filesystem's timestamps. Since Linux 6.13
//! (multigrain timestamps: ext4, xfs, btrfs, tmpfs) the first write after
//! an `fstat` always gets a new timestamp; on older kernels timestamps move
//! in clock ticks (1–10 ms), and a rewrite of the same size within the tick
//! of the previous write is not seen. The ctime catches a rewrite whose
//! mtime was set back (`cp -p`, `rsync --inplace`); it is not compared when
//! the link count changed, because a file unlinked or replaced by a rename
//! while being read keeps its bytes.

mod beneath;
mod list;
mod roots;
mod upload;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use rustix::fs::{AtFlags, FileType, OFlags, Stat};
use rustix::io::Errno;

pub use beneath::Resolver;
use roots::Roots;

use crate::{
    BufResult, ErrorKind, GetOptions, GetResult, ListOptions, ListPage, MultipartUpload,
    ObjectMeta, ObjectUri, ReadBuf, Result, Storage, StorageError, Version, clamp_range,
};

/// Bytes per `pread`: large enough to amortise the blocking-pool hop (a few
/// µs against ~50 µs of copying), small enough that the chunks in flight —
/// one per concurrent part — add little to the memory budget.
pub const READ_CHUNK: usize = 256 << 10;

/// Opens an object for reading: never blocks on a FIFO (`O_NONBLOCK`),
/// never acquires a terminal (`O_NOCTTY`).
const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

/// Opens an object only to `fstat` it: no open side effects at all.
const STAT_FLAGS: OFlags = OFlags::PATH.union(OFlags::CLOEXEC);

/// Local files under configured roots.
#[derive(Debug, Clone)]
pub struct FileStorage {
    roots: Arc<Roots>,
}

impl FileStorage {
    /// Opens the roots; a root that does not exist is an error. Paths are
    /// resolved with `openat2` where the kernel allows it, else by the walk.
    pub fn new(roots: &[PathBuf]) -> Result<Self> {
        let storage = Self::open(roots, None)?;
        if storage.resolver() == Resolver::Walk {
            tracing::warn!(
                "openat2 is unavailable (kernel before 5.6 or a seccomp filter): \
                 file:// paths are resolved one component at a time"
            );
        }
        Ok(storage)
    }

    /// Opens the roots and resolves paths with `resolver`, whatever the
    /// kernel offers (both resolvers enforce the same rules).
    pub fn with_resolver(roots: &[PathBuf], resolver: Resolver) -> Result<Self> {
        Self::open(roots, Some(resolver))
    }

    fn open(roots: &[PathBuf], resolver: Option<Resolver>) -> Result<Self> {
        Self::open_for("file", roots, resolver)
    }

    /// Roots of another local scheme (`direct`), named so in errors.
    pub(crate) fn open_for(
        scheme: &str,
        roots: &[PathBuf],
        resolver: Option<Resolver>,
    ) -> Result<Self> {
        Ok(FileStorage {
            roots: Arc::new(Roots::open(roots, resolver, scheme)?),
        })
    }

    /// Opens the regular file `uri` names for `O_DIRECT` reads; `None`
    /// when its filesystem refuses `O_DIRECT`.
    pub(crate) fn open_direct(&self, uri: &ObjectUri) -> Result<Option<(OwnedFd, Stat)>> {
        let at = self.roots.locate(uri)?;
        if at.dir_syntax {
            return Err(not_a_file(uri));
        }
        let fd = match at.open(READ_FLAGS | OFlags::DIRECT) {
            Ok(fd) => fd,
            Err(Errno::INVAL) => {
                // Refused for what it is (a FIFO, a device) rather than for
                // its filesystem: say so.
                open_object(&self.roots, uri, STAT_FLAGS)?;
                return Ok(None);
            }
            Err(e) => return Err(io_error(uri, e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| io_error(uri, e))?;
        check_regular(uri, &st)?;
        Ok(Some((fd, st)))
    }

    /// How paths are resolved beneath the roots.
    pub fn resolver(&self) -> Resolver {
        self.roots.resolver()
    }
}

/// Metadata from a `stat` of an open file or a directory entry.
// The field types of `struct stat` differ between architectures: the casts
// are no-ops on some.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn meta_of(uri: String, st: &Stat) -> ObjectMeta {
    let (secs, nanos) = (st.st_mtime as i64, st.st_mtime_nsec as u32);
    let mtime = SystemTime::UNIX_EPOCH + Duration::new(secs.max(0) as u64, nanos);
    let mtime_ns = secs as i128 * 1_000_000_000 + nanos as i128;
    let size = st.st_size as u64;
    ObjectMeta {
        uri,
        size,
        etag: Some(format!("{size:x}-{mtime_ns:x}-{:x}", st.st_ino as u64)),
        last_modified: Some(mtime),
        version: None,
    }
}

/// What an `fstat` of an open file says about its content's version; two
/// snapshots of one descriptor differ when the file was written in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Snapshot {
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    dev: u64,
    nlink: u64,
}

// The field types of `struct stat` differ between architectures: the casts
// are no-ops on some.
#[allow(clippy::unnecessary_cast)]
impl Snapshot {
    pub(crate) fn of(st: &Stat) -> Snapshot {
        Snapshot {
            size: st.st_size as i64,
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
            ino: st.st_ino as u64,
            dev: st.st_dev as u64,
            nlink: st.st_nlink as u64,
        }
    }

    /// `Changed` unless `fd` still holds the version this snapshot saw
    /// (see the module comment for what is compared and why).
    pub(crate) fn recheck(&self, fd: &impl std::os::fd::AsFd, uri: &str) -> Result<()> {
        let now = rustix::fs::fstat(fd)
            .map(|st| Snapshot::of(&st))
            .map_err(|e| StorageError::from_io(uri, e.into()))?;
        let same = self.size == now.size
            && self.mtime == now.mtime
            && (self.ino, self.dev) == (now.ino, now.dev)
            && (self.ctime == now.ctime || self.nlink != now.nlink);
        if same {
            return Ok(());
        }
        Err(StorageError::new(
            ErrorKind::Changed,
            uri,
            "file changed while being read (size, mtime or ctime differs after the read)",
        ))
    }
}

/// Runs `f` on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    uri: &ObjectUri,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        StorageError::new(
            ErrorKind::Other,
            uri.to_string(),
            "blocking file task failed",
        )
        .with_source(e)
    })?
}

fn not_a_file(uri: &ObjectUri) -> StorageError {
    StorageError::new(
        ErrorKind::NotFound,
        uri.to_string(),
        "is a directory, not an object",
    )
}

/// A FIFO, socket, device: never read, written over or deleted.
fn special(uri: &ObjectUri, what: &str) -> StorageError {
    StorageError::denied(
        uri.to_string(),
        format!("is a {what}: only regular files are objects"),
    )
}

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Symlink => "symlink",
        FileType::Directory => "directory",
        FileType::RegularFile => "regular file",
        _ => "special file",
    }
}

/// A failed `*at` call on `uri`'s path.
pub(crate) fn io_error(uri: &ObjectUri, e: Errno) -> StorageError {
    let shown = uri.to_string();
    match e {
        Errno::XDEV => StorageError::denied(
            shown,
            "path leaves its file root (an absolute symlink, or a symlink climbing above the root)",
        ),
        Errno::LOOP => StorageError::invalid(
            shown,
            "too many levels of symbolic links (or a /proc magic link)",
        ),
        Errno::NAMETOOLONG => StorageError::invalid(shown, "path or file name too long"),
        // open(2) of a socket, or of a device without a driver.
        Errno::NXIO => special(uri, "socket or device"),
        _ => StorageError::from_io(shown, e.into()),
    }
}

/// Refuses everything but a regular file.
fn check_regular(uri: &ObjectUri, st: &Stat) -> Result<()> {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Ok(()),
        FileType::Directory => Err(not_a_file(uri)),
        other => Err(special(uri, type_name(other))),
    }
}

/// Opens the object `uri` names with `flags` and checks it is a regular
/// file before anything reads it.
fn open_object(roots: &Roots, uri: &ObjectUri, flags: OFlags) -> Result<(OwnedFd, Stat)> {
    let at = roots.locate(uri)?;
    if at.dir_syntax {
        return Err(not_a_file(uri));
    }
    let fd = at.open(flags).map_err(|e| io_error(uri, e))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| io_error(uri, e))?;
    check_regular(uri, &st)?;
    Ok((fd, st))
}

fn root_refused(uri: &ObjectUri) -> StorageError {
    StorageError::denied(
        uri.to_string(),
        "names a file root itself: a root is never written or deleted",
    )
}

/// Removes the entry `uri` names: a regular file or a symlink (the link,
/// never its target).
fn delete(roots: &Roots, uri: &ObjectUri) -> Result<()> {
    let at = roots.locate(uri)?;
    let Some((name, parents)) = at.rel.split_last() else {
        return Err(root_refused(uri));
    };
    if at.dir_syntax {
        return Err(not_a_file(uri));
    }
    let parent = at
        .open_prefix(parents.len(), beneath::dir_path_flags())
        .map_err(|e| io_error(uri, e))?;
    let st = rustix::fs::statat(&parent, *name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| io_error(uri, e))?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile | FileType::Symlink => {}
        FileType::Directory => return Err(not_a_file(uri)),
        other => return Err(special(uri, type_name(other))),
    }
    // Swapped for a directory since the stat: unlinkat refuses (EISDIR);
    // for a FIFO: it is removed, from a directory beneath the root.
    rustix::fs::unlinkat(&parent, *name, AtFlags::empty()).map_err(|e| io_error(uri, e))
}

#[async_trait]
impl Storage for FileStorage {
    fn name(&self) -> &'static str {
        "file"
    }

    async fn head(&self, uri: &ObjectUri) -> Result<ObjectMeta> {
        let (roots, u) = (self.roots.clone(), uri.clone());
        blocking(uri, move || {
            let (_, st) = open_object(&roots, &u, STAT_FLAGS)?;
            Ok(meta_of(u.to_string(), &st))
        })
        .await
    }

    async fn get(&self, uri: &ObjectUri, opts: GetOptions) -> Result<GetResult> {
        let (roots, u) = (self.roots.clone(), uri.clone());
        let (file, meta, seen) = blocking(uri, move || {
            let (fd, st) = open_object(&roots, &u, READ_FLAGS)?;
            Ok((
                File::from(fd),
                meta_of(u.to_string(), &st),
                Snapshot::of(&st),
            ))
        })
        .await?;
        if let Some(expected) = &opts.if_match {
            expected.check(&meta.uri, &meta)?;
        }
        let range = clamp_range(uri, opts.range, meta.size)?;
        let body = read_stream(Arc::new(file), seen, uri.to_string(), range.clone());
        Ok(GetResult { meta, range, body })
    }

    async fn list(&self, prefix: &ObjectUri, opts: &ListOptions) -> Result<ListPage> {
        list::list(self.roots.clone(), prefix, opts).await
    }

    async fn put(&self, uri: &ObjectUri, data: Bytes) -> Result<ObjectMeta> {
        let mut up = self.start_multipart(uri).await?;
        if let Err(e) = up.put_part(data).await {
            let _ = up.abort().await;
            return Err(e);
        }
        up.complete().await
    }

    async fn start_multipart(&self, uri: &ObjectUri) -> Result<Box<dyn MultipartUpload>> {
        Ok(Box::new(
            upload::FileUpload::create(self.roots.clone(), uri.clone()).await?,
        ))
    }

    /// Reads straight into `dst` with one `pread` on a multi-threaded
    /// runtime (the worker hands its other tasks on while it blocks: no
    /// chunk buffers, no second copy); elsewhere through a ranged get.
    /// Either way the file is checked again after the read.
    async fn read_into(
        &self,
        uri: &ObjectUri,
        offset: u64,
        expect: &Version,
        mut dst: ReadBuf,
    ) -> BufResult {
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if !multi_thread {
            let res = crate::read_into_via_get(self, uri, offset, expect, dst.as_mut_slice()).await;
            return (res, dst);
        }
        let res = tokio::task::block_in_place(|| {
            let (fd, st) = open_object(&self.roots, uri, READ_FLAGS)?;
            pread_exact(uri, fd, &st, expect, offset, dst.as_mut_slice())
        });
        (res, dst)
    }

    async fn delete(&self, uri: &ObjectUri) -> Result<()> {
        let (roots, u) = (self.roots.clone(), uri.clone());
        blocking(uri, move || delete(&roots, &u)).await
    }
}

/// Reads `dst.len()` bytes at `offset` of the open file `fd` (whose `fstat`
/// is `st`) when it is the version `expect`, and checks it again after.
pub(crate) fn pread_exact(
    uri: &ObjectUri,
    fd: OwnedFd,
    st: &Stat,
    expect: &Version,
    offset: u64,
    dst: &mut [u8],
) -> Result<()> {
    let shown = uri.to_string();
    expect.check(&shown, &meta_of(shown.clone(), st))?;
    let file = File::from(fd);
    match file.read_exact_at(dst, offset) {
        Ok(()) => Snapshot::of(st).recheck(&file, &shown),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(shrank(shown)),
        Err(e) => Err(StorageError::from_io(shown, e)),
    }
}

pub(crate) fn shrank(uri: String) -> StorageError {
    StorageError::new(ErrorKind::Changed, uri, "file shrank while being read")
}

/// The bytes of `range`, [`READ_CHUNK`] at a time; each chunk is handed on
/// only after [`Snapshot::recheck`] found the file as it was at `seen`.
fn read_stream(
    file: Arc<File>,
    seen: Snapshot,
    uri: String,
    range: std::ops::Range<u64>,
) -> crate::ByteStream {
    let state = (file, uri, range.start, range.end);
    Box::pin(futures::stream::try_unfold(
        state,
        move |(file, uri, pos, end)| async move {
            if pos >= end {
                return Ok(None);
            }
            let want = ((end - pos) as usize).min(READ_CHUNK);
            let f = file.clone();
            let u = uri.clone();
            let chunk = tokio::task::spawn_blocking(move || -> Result<Bytes> {
                let mut buf = BytesMut::zeroed(want);
                let mut filled = 0;
                while filled < want {
                    match f.read_at(&mut buf[filled..], pos + filled as u64) {
                        Ok(0) => {
                            return Err(StorageError::new(
                                ErrorKind::Changed,
                                u,
                                "file shrank while being read",
                            ));
                        }
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(StorageError::from_io(u, e)),
                    }
                }
                seen.recheck(&*f, &u)?;
                Ok(buf.freeze())
            })
            .await
            .map_err(|e| {
                StorageError::new(ErrorKind::Other, uri.clone(), "blocking read failed")
                    .with_source(e)
            })??;
            let next = pos + chunk.len() as u64;
            Ok(Some((chunk, (file, uri, next, end))))
        },
    ))
}
