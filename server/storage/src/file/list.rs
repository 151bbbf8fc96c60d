//! Listing of `file://` prefixes in S3 order, walked by descriptors.
//!
//! Keys are absolute paths and are returned in byte order, as S3 does. A
//! depth-first walk yields that order if each directory's entries are sorted
//! with directories compared as `name/` (so `a-b` comes before `a/x`, since
//! `-` < `/`). Subtrees that lie wholly before the page token or outside the
//! prefix are never entered, so each page costs the entries it returns plus
//! one path down the tree, not the whole tree.
//!
//! The directory the prefix starts in is resolved beneath its root; from
//! there every subdirectory is opened with `openat(O_NOFOLLOW |
//! O_DIRECTORY)` on its parent's descriptor and every file is `statat`ed on
//! it, so a directory swapped for a symlink mid-walk is skipped, never
//! followed. A symlink entry is resolved beneath the root and listed only
//! when it leads to a regular file; linked directories are never entered
//! (no loops). Keys are built from the prefix's own spelling of the path.
//!
//! The page token is the last key (or common prefix) of the previous page.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::roots::{Located, Roots};
use super::upload::TMP_MARK;
use super::{blocking, io_error, meta_of};
use crate::{ErrorKind, ListOptions, ListPage, ObjectUri, Result, StorageError};

/// Opens a directory to read its entries and use it as a `dirfd`.
const DIR_READ: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);

pub(super) async fn list(
    roots: Arc<Roots>,
    prefix: &ObjectUri,
    opts: &ListOptions,
) -> Result<ListPage> {
    let shown = prefix.to_string();
    let one_level = match opts.delimiter.as_deref() {
        None | Some("") => false,
        Some("/") => true,
        Some(_) => {
            return Err(StorageError::new(
                ErrorKind::Unsupported,
                shown,
                "file listings support only the '/' delimiter",
            ));
        }
    };
    let key = prefix.key().to_owned();
    // The directory the prefix starts in: everything up to its last '/'.
    let base = match key.rfind('/') {
        Some(i) => key[..i].to_owned(),
        None => {
            return Err(StorageError::invalid(
                shown,
                "file prefix must be an absolute path",
            ));
        }
    };
    let base_uri = prefix.with_key(if base.is_empty() { "/" } else { &base });
    let mut walk = Walk {
        scheme: prefix.scheme().as_str(),
        prefix: key,
        after: opts.page_token.clone().unwrap_or_default(),
        limit: opts.page_size.max(1),
        one_level,
        page: ListPage::default(),
        last: None,
        full: false,
    };
    let u = prefix.clone();
    blocking(prefix, move || {
        let at = roots.locate(&base_uri)?;
        match at.open(DIR_READ) {
            Ok(fd) => walk
                .dir(&at, &fd, &base, &mut Vec::new())
                .map_err(|e| io_error(&u, e))?,
            Err(Errno::NOENT | Errno::NOTDIR) => {}
            Err(e) => return Err(io_error(&u, e)),
        }
        if walk.full {
            walk.page.next_token = walk.last.take();
        }
        Ok(walk.page)
    })
    .await
}

struct Walk {
    /// `file` or `direct`: the scheme listed URIs carry.
    scheme: &'static str,
    prefix: String,
    after: String,
    limit: usize,
    one_level: bool,
    page: ListPage,
    last: Option<String>,
    full: bool,
}

/// What a directory entry is to a listing.
enum Entry {
    /// A directory, entered by name with `O_NOFOLLOW`.
    Dir,
    /// A regular file, `statat`ed when listed.
    File,
    /// A symlink, listed if it leads to a regular file beneath the root.
    Link,
}

impl Walk {
    fn count(&self) -> usize {
        self.page.objects.len() + self.page.common_prefixes.len()
    }

    /// Emits one entry; returns false once the page is full.
    fn emit(&mut self, key: String, entry: impl FnOnce(&mut ListPage, String)) -> bool {
        if self.count() >= self.limit {
            self.full = true;
            return false;
        }
        self.last = Some(key.clone());
        entry(&mut self.page, key);
        true
    }

    /// Lists the directory `fd`, whose key is `path` (no trailing '/') and
    /// which lies at `sub` below the prefix's base directory.
    fn dir(
        &mut self,
        at: &Located<'_>,
        fd: &OwnedFd,
        path: &str,
        sub: &mut Vec<String>,
    ) -> rustix::io::Result<()> {
        let mut entries = entries(fd, path)?;
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (key, name, entry) in entries {
            if self.full {
                break;
            }
            let st = match entry {
                Entry::Dir => {
                    self.subdir(at, fd, key, name, sub)?;
                    continue;
                }
                _ if !(key.starts_with(&self.prefix) && key > self.after) => continue,
                Entry::Link => match link_target(at, sub, &name) {
                    Some(st) => st,
                    None => continue,
                },
                Entry::File => match rustix::fs::statat(fd, &name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => st,
                    // Replaced or removed since it was read: not listed.
                    Ok(_) | Err(Errno::NOENT) => continue,
                    Err(e) => return Err(e),
                },
            };
            let uri = format!("{}://{key}", self.scheme);
            if !self.emit(key, |p, _| p.objects.push(meta_of(uri, &st))) {
                break;
            }
        }
        Ok(())
    }

    fn subdir(
        &mut self,
        at: &Located<'_>,
        parent: &OwnedFd,
        key: String,
        name: String,
        sub: &mut Vec<String>,
    ) -> rustix::io::Result<()> {
        // `key` ends with '/'. Skip subtrees disjoint from the prefix.
        if !key.starts_with(&self.prefix) && !self.prefix.starts_with(&key) {
            return Ok(());
        }
        // Skip subtrees wholly at or before the token.
        if key <= self.after && !self.after.starts_with(&key) {
            return Ok(());
        }
        if self.one_level && key.starts_with(&self.prefix) {
            if key > self.after {
                let uri = format!("{}://{key}", self.scheme);
                self.emit(key, |p, _| p.common_prefixes.push(uri));
            }
            return Ok(());
        }
        let flags = DIR_READ | OFlags::NOFOLLOW;
        let fd = match rustix::fs::openat(parent, &name, flags, Mode::empty()) {
            Ok(fd) => fd,
            // Swapped for a symlink or removed since it was read: skipped.
            Err(Errno::LOOP | Errno::NOTDIR | Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        sub.push(name);
        let res = self.dir(at, &fd, key.trim_end_matches('/'), sub);
        sub.pop();
        res
    }
}

/// The entries of `fd` that can be objects or hold them: `(key, name,
/// what)`, directory keys ending in '/'.
fn entries(fd: &OwnedFd, path: &str) -> rustix::io::Result<Vec<(String, String, Entry)>> {
    let mut out = Vec::new();
    for entry in Dir::read_from(fd)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().to_str() else {
            continue; // not valid UTF-8: cannot be named by a URI
        };
        if name == "." || name == ".." || name.contains(TMP_MARK) {
            continue; // an upload in progress
        }
        let mut kind = entry.file_type();
        if kind == FileType::Unknown {
            // Filesystems without d_type.
            match rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => kind = FileType::from_raw_mode(st.st_mode),
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e),
            }
        }
        let key = format!("{path}/{name}");
        let what = match kind {
            FileType::Directory => Entry::Dir,
            FileType::RegularFile => Entry::File,
            FileType::Symlink => Entry::Link,
            _ => continue,
        };
        let key = if matches!(what, Entry::Dir) {
            key + "/"
        } else {
            key
        };
        out.push((key, name.to_owned(), what));
    }
    Ok(out)
}

/// The stat of what the symlink `sub/name` leads to, if that is a regular
/// file beneath the root.
fn link_target(at: &Located<'_>, sub: &[String], name: &str) -> Option<Stat> {
    let rel: Vec<&str> = sub.iter().map(String::as_str).chain([name]).collect();
    let fd = at.open_below(&rel, OFlags::PATH).ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    (FileType::from_raw_mode(st.st_mode) == FileType::RegularFile).then_some(st)
}
