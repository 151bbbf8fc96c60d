//! Uploads to `file://`: a temporary file beside the target, created and
//! renamed into place through the parent directory's descriptor.
//!
//! The parent is resolved beneath the root once, when the upload starts
//! (missing directories are made one `mkdirat` at a time, each re-resolved
//! beneath the root); from then on the temporary file is created
//! (`O_CREAT | O_EXCL | O_NOFOLLOW`), renamed and, on failure, removed with
//! `*at` calls on that descriptor only. Whatever happens to the path of the
//! parent meanwhile, the upload lands in the directory it resolved to.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

use async_trait::async_trait;
use bytes::Bytes;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::beneath::dir_path_flags;
use super::roots::{Located, Roots};
use super::{blocking, io_error, meta_of, not_a_file, root_refused, special, type_name};
use crate::{MultipartUpload, ObjectMeta, ObjectUri, Result, StorageError};

/// Marks temporary files; listings skip names containing it.
pub(super) const TMP_MARK: &str = ".sluice-tmp-";

#[derive(Debug)]
pub(super) struct FileUpload {
    uri: ObjectUri,
    /// The directory the object goes into, beneath its root.
    parent: OwnedFd,
    /// The object's name in `parent`.
    name: String,
    /// The temporary file's name in `parent`.
    tmp: String,
    file: Option<Parts>,
    /// Renamed into place or removed: nothing for `Drop` to clean up.
    finished: bool,
}

/// The temporary file and how its parts are written.
#[derive(Debug)]
struct Parts {
    file: File,
    /// Where the next part goes.
    offset: u64,
    /// `O_DIRECT` is set on the descriptor now.
    direct: bool,
    /// `O_DIRECT` was refused (by the filesystem, or for an alignment this
    /// device wants): every part is written through the page cache.
    buffered_only: bool,
}

/// What `O_DIRECT` needs here: buffer, offset and length in whole pages
/// (every block device's logical block divides it).
const DIRECT_ALIGN: u64 = 4096;

impl Parts {
    /// Writes the next part: its page-aligned bulk with `O_DIRECT` when the
    /// buffer is page-aligned (an arena extent always is) — the disk reads
    /// it by DMA, with no copy into the page cache, which was half of the
    /// daemon's CPU for a large upload — and whatever is left (an unaligned
    /// tail, a filesystem without `O_DIRECT`) through the page cache, its
    /// writeback started at once. Either way the commit's `fsync` decides.
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let aligned = (data.as_ptr() as u64).is_multiple_of(DIRECT_ALIGN)
            && self.offset.is_multiple_of(DIRECT_ALIGN);
        let bulk = if aligned && !self.buffered_only {
            (data.len() as u64 / DIRECT_ALIGN * DIRECT_ALIGN) as usize
        } else {
            0
        };
        let mut done = 0;
        if bulk > 0 && self.set_direct(true).is_err() {
            self.buffered_only = true; // the filesystem refuses it
        } else if bulk > 0 {
            match self.file.write_all_at(&data[..bulk], self.offset) {
                Ok(()) => done = bulk,
                // Refused after all: the part goes through the page cache
                // (from its start: rewriting what did reach the file is
                // harmless).
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.buffered_only = true,
                Err(e) => return Err(e),
            }
        }
        if done < data.len() {
            self.set_direct(false)?;
            let at = self.offset + done as u64;
            self.file.write_all_at(&data[done..], at)?;
            start_writeback(&self.file, at, (data.len() - done) as u64);
        }
        self.offset += data.len() as u64;
        Ok(())
    }

    /// Sets or clears `O_DIRECT` on the descriptor.
    fn set_direct(&mut self, on: bool) -> std::io::Result<()> {
        if self.direct != on {
            let flags = rustix::fs::fcntl_getfl(&self.file)?;
            let flags = if on {
                flags | OFlags::DIRECT
            } else {
                flags - OFlags::DIRECT
            };
            rustix::fs::fcntl_setfl(&self.file, flags)?;
            self.direct = on;
        }
        Ok(())
    }
}

impl FileUpload {
    pub(super) async fn create(roots: std::sync::Arc<Roots>, uri: ObjectUri) -> Result<Self> {
        let u = uri.clone();
        let (parent, name, tmp, file) = blocking(&uri, move || {
            let at = roots.locate(&u)?;
            let Some((name, parents)) = at.rel.split_last() else {
                return Err(root_refused(&u));
            };
            if at.dir_syntax {
                return Err(StorageError::invalid(
                    u.to_string(),
                    "a path ending in '/' names a directory, not an object",
                ));
            }
            let parent = make_parents(&at, parents.len(), &u)?;
            check_replaceable(&parent, name, &u)?;
            let tmp = tmp_name(name);
            let flags =
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = rustix::fs::openat(&parent, &tmp, flags, Mode::from_raw_mode(0o666))
                .map_err(|e| io_error(&u, e))?;
            Ok((parent, (*name).to_owned(), tmp, File::from(fd)))
        })
        .await?;
        Ok(FileUpload {
            uri,
            parent,
            name,
            tmp,
            file: Some(Parts {
                file,
                offset: 0,
                direct: false,
                buffered_only: false,
            }),
            finished: false,
        })
    }
}

/// A fresh temporary name beside `name`: `.name.sluice-tmp-<random>`, or
/// without the name where that would exceed `NAME_MAX` (255 bytes).
fn tmp_name(name: &str) -> String {
    let random = rand::random::<u64>();
    if name.len() + 1 + TMP_MARK.len() + 16 > 255 {
        return format!("{TMP_MARK}{random:016x}");
    }
    format!(".{name}{TMP_MARK}{random:016x}")
}

/// The descriptor of the first `n` components of `at`, making missing
/// directories one at a time, each beneath the root.
fn make_parents(at: &Located<'_>, n: usize, uri: &ObjectUri) -> Result<OwnedFd> {
    match at.open_prefix(n, dir_path_flags()) {
        Err(Errno::NOENT) if n > 0 => {}
        other => return other.map_err(|e| io_error(uri, e)),
    }
    let mut dir: Option<OwnedFd> = None;
    for i in 0..n {
        let next = match at.open_prefix(i + 1, dir_path_flags()) {
            Err(Errno::NOENT) => {
                let here = dir.as_ref().map_or(at.root(), AsFd::as_fd);
                match rustix::fs::mkdirat(here, at.rel[i], Mode::from_raw_mode(0o777)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(io_error(uri, e)),
                }
                at.open_prefix(i + 1, dir_path_flags())
            }
            other => other,
        };
        dir = Some(next.map_err(|e| io_error(uri, e))?);
    }
    Ok(dir.expect("n > 0 components walked"))
}

/// Refuses to replace anything but a regular file or a symlink.
fn check_replaceable(parent: &OwnedFd, name: &str, uri: &ObjectUri) -> Result<()> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(io_error(uri, e)),
        Ok(st) => match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile | FileType::Symlink => Ok(()),
            FileType::Directory => Err(not_a_file(uri)),
            other => Err(special(uri, type_name(other))),
        },
    }
}

#[async_trait]
impl MultipartUpload for FileUpload {
    async fn put_part(&mut self, data: Bytes) -> Result<()> {
        let mut parts = self.file.take().expect("upload used after completion");
        let u = self.uri.to_string();
        let parts = blocking(&self.uri, move || {
            parts
                .write(&data)
                .map_err(|e| StorageError::from_io(u, e))?;
            Ok(parts)
        })
        .await?;
        self.file = Some(parts);
        Ok(())
    }

    async fn complete(mut self: Box<Self>) -> Result<ObjectMeta> {
        let file = self.file.take().expect("upload used after completion").file;
        let uri = self.uri.clone();
        blocking(&uri, move || {
            let res = self.finish(&file);
            // On failure `Drop` removes the temporary file.
            self.finished = res.is_ok();
            res
        })
        .await
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.file.take();
        self.finished = true;
        let uri = self.uri.clone();
        blocking(&uri, move || match self.remove_tmp() {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(io_error(&self.uri, e)),
        })
        .await
    }
}

/// Starts writing `len` bytes at `offset` back to the disk without waiting
/// for it (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): the disk works on a
/// part while the next one arrives, and the `fsync` that commits the upload
/// finds little left to do. Advisory: an error here (a filesystem without
/// it) changes nothing, the commit's `fsync` still decides.
fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain system call on a descriptor this upload owns; it
    // reads no memory of this process.
    unsafe {
        libc::sync_file_range(
            std::os::fd::AsRawFd::as_raw_fd(file),
            offset,
            len,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

impl FileUpload {
    /// Syncs the data and renames the temporary file over the target.
    fn finish(&self, file: &File) -> Result<ObjectMeta> {
        let u = &self.uri;
        file.sync_data()
            .map_err(|e| StorageError::from_io(u.to_string(), e))?;
        check_replaceable(&self.parent, &self.name, u)?;
        rustix::fs::renameat(&self.parent, &self.tmp, &self.parent, &self.name)
            .map_err(|e| io_error(u, e))?;
        let st = rustix::fs::fstat(file).map_err(|e| io_error(u, e))?;
        Ok(meta_of(u.to_string(), &st))
    }

    fn remove_tmp(&self) -> rustix::io::Result<()> {
        rustix::fs::unlinkat(&self.parent, &self.tmp, AtFlags::empty())
    }
}

impl Drop for FileUpload {
    fn drop(&mut self) {
        // Neither completed nor aborted (the caller was cancelled, possibly
        // during a part write), or completing failed: remove the temporary
        // file so nothing half-written stays behind.
        if !self.finished {
            let _ = self.remove_tmp();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::Layout;
    use std::os::unix::fs::OpenOptionsExt;

    use super::*;

    /// `len` bytes of `seed`'s pattern at a page-aligned address.
    struct Aligned {
        ptr: std::ptr::NonNull<u8>,
        layout: Layout,
    }

    // SAFETY: owns its allocation; only read after it is filled.
    unsafe impl Send for Aligned {}

    impl Aligned {
        fn new(len: usize, seed: u8) -> Self {
            let layout = Layout::from_size_align(len.max(1), DIRECT_ALIGN as usize).unwrap();
            // SAFETY: a non-zero size.
            let ptr = std::ptr::NonNull::new(unsafe { std::alloc::alloc(layout) }).unwrap();
            // SAFETY: `len` bytes were just allocated.
            let bytes = unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), len) };
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
            }
            Aligned { ptr, layout }
        }
    }

    impl AsRef<[u8]> for Aligned {
        fn as_ref(&self) -> &[u8] {
            // SAFETY: filled in `new`; `layout.size()` may exceed the length
            // asked for only when that was 0.
            unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
        }
    }

    impl Drop for Aligned {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
        }
    }

    /// Parts of every shape — page-aligned buffers (written with `O_DIRECT`
    /// where the filesystem takes it), unaligned ones, unaligned offsets
    /// after a short part, tails — land byte for byte where they belong.
    #[test]
    fn parts_of_any_alignment_are_written_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upload");
        let mut parts = Parts {
            file: File::create_new(&path).unwrap(),
            offset: 0,
            direct: false,
            buffered_only: false,
        };
        let page = DIRECT_ALIGN as usize;
        let aligned = |len, seed| Bytes::from_owner(Aligned::new(len, seed)).slice(..len);
        let unaligned = |len, seed| aligned(len + 1, seed).slice(1..);
        let pieces = [
            aligned(4 * page, 1),          // all direct
            aligned(3 * page + 100, 2),    // direct bulk, buffered tail
            aligned(2 * page, 3),          // now at an unaligned offset
            unaligned(5 * page, 4),        // an unaligned buffer
            aligned(page, 5),              // unaligned offset still
            aligned(page - 100 + page, 6), // back to an aligned offset after it
            aligned(8 * page, 7),          // direct again
            aligned(17, 8),                // a short tail
        ];
        let mut expected = Vec::new();
        for piece in &pieces {
            parts.write(piece).unwrap();
            expected.extend_from_slice(piece);
        }
        parts.file.sync_data().unwrap();
        // Where the filesystem takes O_DIRECT, the aligned bulk used it.
        let takes_direct = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.path().join("probe"))
            .is_ok();
        assert_eq!(!parts.buffered_only, takes_direct);
        drop(parts);
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written.len(), expected.len());
        assert!(written == expected, "the file differs from the parts");
    }
}
