//! The configured roots, each opened once, and which one a URI names.
//!
//! A root is opened at startup as an `O_PATH` directory descriptor and kept
//! for the daemon's life; renaming or replacing the root's path later does
//! not change what it serves. A URI's path picks the root whose path is the
//! longest component-wise prefix of it (`/data/ab` is not under `/data/a`);
//! the remaining components are then resolved beneath that root's
//! descriptor by [`Resolver`]. A root is known by its canonical path and, if
//! different, by the absolute path it was configured as.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::OFlags;

use super::beneath::{Resolver, dir_path_flags};
use crate::{ObjectUri, Result, StorageError};

/// One root under one of its names.
#[derive(Debug)]
struct Root {
    /// Path components of the name, from `/`.
    components: Vec<String>,
    /// The directory, opened once.
    fd: Arc<OwnedFd>,
}

/// Every root, longest name first.
#[derive(Debug)]
pub(super) struct Roots {
    roots: Vec<Root>,
    resolver: Resolver,
}

/// A URI's place: its root and the components beneath it.
#[derive(Debug)]
pub(super) struct Located<'a> {
    root: BorrowedFd<'a>,
    resolver: Resolver,
    /// Components below the root; empty when the URI names the root.
    pub(super) rel: Vec<&'a str>,
    /// The URI's path ends in `/`: a directory, never an object.
    pub(super) dir_syntax: bool,
}

impl Roots {
    /// Opens every root of the `scheme` (`file`, `direct`) it serves;
    /// `resolver` `None` probes for `openat2`.
    pub(super) fn open(
        paths: &[PathBuf],
        resolver: Option<Resolver>,
        scheme: &str,
    ) -> Result<Self> {
        let mut roots = Vec::new();
        for path in paths {
            let shown = format!("{scheme}://{}", path.display());
            if !path.is_absolute() {
                return Err(StorageError::invalid(
                    shown,
                    "file root must be an absolute path",
                ));
            }
            let canonical =
                std::fs::canonicalize(path).map_err(|e| StorageError::from_io(&shown, e))?;
            let fd = rustix::fs::open(&canonical, dir_path_flags(), rustix::fs::Mode::empty())
                .map_err(|e| StorageError::from_io(&shown, e.into()))?;
            let fd = Arc::new(fd);
            // Names that are not plain UTF-8 paths cannot be named by a URI.
            for name in [plain_components(path), plain_components(&canonical)]
                .into_iter()
                .flatten()
            {
                if !roots
                    .iter()
                    .any(|r: &Root| Arc::ptr_eq(&r.fd, &fd) && r.components == name)
                {
                    roots.push(Root {
                        components: name,
                        fd: fd.clone(),
                    });
                }
            }
        }
        roots.sort_by_key(|r| std::cmp::Reverse(r.components.len()));
        let resolver = resolver.unwrap_or_else(|| match roots.first() {
            Some(r) => Resolver::probe(r.fd.as_fd()),
            None => Resolver::Kernel,
        });
        Ok(Roots { roots, resolver })
    }

    /// How paths are resolved.
    pub(super) fn resolver(&self) -> Resolver {
        self.resolver
    }

    /// The root of `uri` and the components below it.
    pub(super) fn locate<'a>(&'a self, uri: &'a ObjectUri) -> Result<Located<'a>> {
        let key = uri.key();
        let denied = |why: &str| StorageError::denied(uri.to_string(), why.to_owned());
        let mut components = Vec::new();
        for c in key.split('/').filter(|c| !c.is_empty()) {
            if c == "." || c == ".." {
                return Err(denied("'.' and '..' are not allowed in paths"));
            }
            components.push(c);
        }
        let root = self
            .roots
            .iter()
            .find(|r| {
                r.components.len() <= components.len()
                    && r.components.iter().zip(&components).all(|(a, b)| a == b)
            })
            .ok_or_else(|| denied("path is outside the configured file roots"))?;
        Ok(Located {
            root: root.fd.as_fd(),
            resolver: self.resolver,
            rel: components.split_off(root.components.len()),
            dir_syntax: key.ends_with('/') && key.len() > 1,
        })
    }
}

impl Located<'_> {
    /// Opens the whole path beneath the root with `flags`.
    pub(super) fn open(&self, flags: OFlags) -> rustix::io::Result<OwnedFd> {
        self.resolver.open(self.root, &self.rel, flags)
    }

    /// Opens the first `n` components beneath the root with `flags`.
    pub(super) fn open_prefix(&self, n: usize, flags: OFlags) -> rustix::io::Result<OwnedFd> {
        self.resolver.open(self.root, &self.rel[..n], flags)
    }

    /// Opens the path followed by the components `more` beneath the root.
    pub(super) fn open_below(&self, more: &[&str], flags: OFlags) -> rustix::io::Result<OwnedFd> {
        let rel: Vec<&str> = self.rel.iter().chain(more).copied().collect();
        self.resolver.open(self.root, &rel, flags)
    }

    /// The root directory itself.
    pub(super) fn root(&self) -> BorrowedFd<'_> {
        self.root
    }
}

/// Components of an absolute path made only of normal components.
fn plain_components(path: &Path) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n.to_str()?.to_owned()),
            _ => return None,
        }
    }
    Some(out)
}
