//! Listing of `file://` prefixes in S3 order.
//!
//! Keys are absolute paths and are returned in byte order, as S3 does. A
//! depth-first walk yields that order if each directory's entries are sorted
//! with directories compared as `name/` (so `a-b` comes before `a/x`, since
//! `-` < `/`). Subtrees that lie wholly before the page token or outside the
//! prefix are never entered, so each page costs the entries it returns plus
//! one path down the tree, not the whole tree.
//!
//! The page token is the last key (or common prefix) of the previous page.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{blocking, meta_of, resolve};
use crate::{ErrorKind, ListOptions, ListPage, ObjectUri, Result, StorageError};

pub(super) async fn list(
    roots: Arc<Vec<PathBuf>>,
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
        Some(0) => "/".to_owned(),
        Some(i) => key[..i].to_owned(),
        None => {
            return Err(StorageError::invalid(
                shown,
                "file prefix must be an absolute path",
            ));
        }
    };
    resolve(&roots, &prefix.with_key(base.clone()))?;
    let mut walk = Walk {
        roots,
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
        match std::fs::metadata(&base) {
            Ok(md) if md.is_dir() => walk
                .dir(Path::new(&base))
                .map_err(|e| StorageError::from_io(u.to_string(), e))?,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::from_io(u.to_string(), e)),
        }
        if walk.full {
            walk.page.next_token = walk.last.take();
        }
        Ok(walk.page)
    })
    .await
}

struct Walk {
    roots: Arc<Vec<PathBuf>>,
    prefix: String,
    after: String,
    limit: usize,
    one_level: bool,
    page: ListPage,
    last: Option<String>,
    full: bool,
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

    fn dir(&mut self, dir: &Path) -> std::io::Result<()> {
        let mut entries: Vec<(String, bool)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue; // not valid UTF-8: cannot be named by a URI
            };
            if name.contains(".sluice-tmp-") {
                continue; // an upload in progress
            }
            let path = entry.path();
            let ft = entry.file_type()?;
            // Symlinks: follow to files inside the roots; never descend into
            // linked directories (no loops, no escapes).
            let is_dir = if ft.is_symlink() {
                match std::fs::canonicalize(&path) {
                    Ok(c) if self.roots.iter().any(|r| c.starts_with(r)) && c.is_file() => false,
                    _ => continue,
                }
            } else if ft.is_dir() {
                true
            } else if ft.is_file() {
                false
            } else {
                continue;
            };
            let Some(key) = path.to_str().map(str::to_owned) else {
                continue;
            };
            entries.push((if is_dir { key + "/" } else { key }, is_dir));
        }
        entries.sort_unstable();
        for (key, is_dir) in entries {
            if self.full {
                break;
            }
            if is_dir {
                self.subdir(key)?;
            } else if key.starts_with(&self.prefix) && key > self.after {
                let md = std::fs::metadata(&key)?;
                let uri = format!("file://{key}");
                if !self.emit(key, |p, _| p.objects.push(meta_of(uri, &md))) {
                    break;
                }
            }
        }
        Ok(())
    }

    fn subdir(&mut self, key: String) -> std::io::Result<()> {
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
                let uri = format!("file://{key}");
                self.emit(key, |p, _| p.common_prefixes.push(uri));
            }
            return Ok(());
        }
        self.dir(Path::new(key.trim_end_matches('/')))
    }
}
