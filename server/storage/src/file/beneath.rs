//! Opening a path beneath a directory descriptor, never outside it.
//!
//! Two resolvers with the same rules:
//!
//! - [`Resolver::Kernel`]: one `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`.
//!   The kernel walks the path and fails with `EXDEV` the moment a component
//!   (a `..`, an absolute symlink, a relative symlink climbing above the
//!   start) would leave the directory, whatever renames happen meanwhile.
//!   When a rename races a `..` the kernel answers `EAGAIN`; after a few
//!   tries the walk below takes over, so an attacker renaming in a loop
//!   cannot starve a request.
//! - [`Resolver::Walk`]: component by component from the root descriptor,
//!   each step an `openat(O_NOFOLLOW)` relative to the descriptor of the
//!   step before. A symlink is read with `readlinkat` on the directory it
//!   was found in and its target spliced into the remaining components; an
//!   absolute target is `EXDEV`, and `..` pops a descriptor from the stack
//!   of directories walked, `EXDEV` when the stack is empty. At most
//!   [`MAX_SYMLINKS`] links are followed (`ELOOP`). Used when `openat2` is
//!   unavailable (kernels before 5.6, or a seccomp filter answering `ENOSYS`
//!   or `EPERM`).
//!
//! Both follow symlinks that stay beneath the root and refuse every other;
//! neither ever holds a path string that is opened again later: each step
//! starts from a descriptor, so swapping a directory for a symlink between
//! two calls changes at most which file *beneath the root* is opened.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Symlinks one resolution may follow, as the kernel's own limit.
pub(super) const MAX_SYMLINKS: usize = 40;

/// `EAGAIN` answers of `openat2` before the userspace walk takes over.
const KERNEL_TRIES: usize = 8;

/// An `O_PATH` handle on a directory: usable as the `dirfd` of `*at` calls,
/// never read, no side effects on open.
pub(super) fn dir_path_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC
}

/// How paths are resolved beneath a root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` (Linux 5.6+).
    Kernel,
    /// `openat(O_NOFOLLOW)` step by step with symlinks read in userspace.
    Walk,
}

impl Resolver {
    /// The kernel resolver if `openat2` works on `dir`, else the walk.
    pub(super) fn probe(dir: BorrowedFd<'_>) -> Resolver {
        match rustix::fs::openat2(dir, ".", dir_path_flags(), Mode::empty(), resolve_flags()) {
            Ok(_) => Resolver::Kernel,
            Err(_) => Resolver::Walk,
        }
    }

    /// Opens `rel` (components without `.`, `..` or `/`) beneath `root`
    /// with `flags` (`O_CLOEXEC` is added). An empty `rel` opens `root`.
    pub(super) fn open(
        self,
        root: BorrowedFd<'_>,
        rel: &[&str],
        flags: OFlags,
    ) -> rustix::io::Result<OwnedFd> {
        let flags = flags | OFlags::CLOEXEC;
        if self == Resolver::Kernel {
            let path = if rel.is_empty() {
                ".".to_owned()
            } else {
                rel.join("/")
            };
            for _ in 0..KERNEL_TRIES {
                match rustix::fs::openat2(root, &path, flags, Mode::empty(), resolve_flags()) {
                    Err(Errno::AGAIN) => continue,
                    other => return other,
                }
            }
        }
        walk(root, rel, flags)
    }
}

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS
}

/// The userspace resolver; see the module docs.
fn walk(root: BorrowedFd<'_>, rel: &[&str], flags: OFlags) -> rustix::io::Result<OwnedFd> {
    // Components still to walk, the next one last (bytes: symlink targets
    // need not be UTF-8).
    let mut todo: Vec<Vec<u8>> = rel.iter().rev().map(|c| c.as_bytes().to_vec()).collect();
    // Directories walked so far below `root`.
    let mut stack: Vec<OwnedFd> = Vec::new();
    let mut links = 0;
    while let Some(name) = todo.pop() {
        match name.as_slice() {
            b"" | b"." => continue,
            b".." => {
                stack.pop().ok_or(Errno::XDEV)?;
                continue;
            }
            _ => {}
        }
        let dir = stack.last().map_or(root, AsFd::as_fd);
        let last = todo.iter().all(|c| c.is_empty() || c == b".");
        let step = if last { flags } else { dir_path_flags() };
        let target = match rustix::fs::openat(dir, &name, step | OFlags::NOFOLLOW, Mode::empty()) {
            // O_PATH | O_NOFOLLOW opens a symlink itself: look at what it is.
            Ok(fd) if last && flags.contains(OFlags::PATH) => {
                if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != FileType::Symlink {
                    return Ok(fd);
                }
                rustix::fs::readlinkat(&fd, "", Vec::new())?
            }
            Ok(fd) if last => return Ok(fd),
            Ok(fd) => {
                stack.push(fd);
                continue;
            }
            // A symlink met with O_NOFOLLOW (ELOOP) or O_DIRECTORY (ENOTDIR):
            // read it on the directory it was found in.
            Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                match rustix::fs::readlinkat(dir, &name, Vec::new()) {
                    Ok(target) => target,
                    Err(_) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(Errno::LOOP);
        }
        let target = target.into_bytes();
        match target.first() {
            None => return Err(Errno::NOENT),
            Some(b'/') => return Err(Errno::XDEV),
            Some(_) => {}
        }
        todo.extend(target.split(|b| *b == b'/').rev().map(<[u8]>::to_vec));
    }
    // Nothing left (an empty path, or one ending in `..`): the directory
    // reached itself.
    let dir = stack.last().map_or(root, AsFd::as_fd);
    rustix::fs::openat(dir, ".", flags, Mode::empty())
}
