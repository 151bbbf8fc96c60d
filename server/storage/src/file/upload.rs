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
use std::io::Write;
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
    file: Option<File>,
    /// Renamed into place or removed: nothing for `Drop` to clean up.
    finished: bool,
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
            file: Some(file),
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
        let mut file = self.file.take().expect("upload used after completion");
        let u = self.uri.to_string();
        let file = blocking(&self.uri, move || {
            file.write_all(&data)
                .map_err(|e| StorageError::from_io(u, e))?;
            Ok(file)
        })
        .await?;
        self.file = Some(file);
        Ok(())
    }

    async fn complete(mut self: Box<Self>) -> Result<ObjectMeta> {
        let file = self.file.take().expect("upload used after completion");
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
