//! Whole-file writes with `O_DIRECT` through the ring: the daemon's own
//! files (the disk tier's entries), never a path a client names.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use super::ring::Rings;
use super::{ALIGN, DirectStorage, IO_SIZE, PIECES_IN_FLIGHT};
use crate::ReadBuf;

impl DirectStorage {
    /// Creates (or replaces) the file `path` with mode 0600 holding `data`,
    /// written with `O_DIRECT` through io_uring (buffered where the
    /// filesystem refuses `O_DIRECT`), and `fsync`s it. The page cache is
    /// left alone: the bytes are in the daemon's memory already. For the
    /// daemon's own files only: `path` is not confined to any root.
    pub async fn write_file(&self, path: &Path, data: Bytes) -> io::Result<()> {
        let rings = self
            .rings_for(&path.display().to_string())
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let p = path.to_owned();
        let (file, direct) = tokio::task::spawn_blocking(move || open(&p))
            .await
            .map_err(io::Error::other)??;
        let fd = Arc::new(OwnedFd::from(file));
        let len = data.len();
        let body = len / ALIGN as usize * ALIGN as usize;
        // O_DIRECT wants aligned memory: arena bytes are; others are copied.
        let data = if direct && !(data.as_ptr() as u64).is_multiple_of(ALIGN) {
            let mut copy = ReadBuf::aligned(len, ALIGN as usize);
            copy.as_mut_slice().copy_from_slice(&data);
            Bytes::from_owner(copy)
        } else {
            data
        };
        let mut pieces: Vec<(u64, Bytes)> = (0..body)
            .step_by(IO_SIZE)
            .map(|at| (at as u64, data.slice(at..(at + IO_SIZE).min(body))))
            .collect();
        if body < len {
            // The last partial block, zero-padded; the file is cut to its
            // size afterwards.
            let mut tail = ReadBuf::aligned(ALIGN as usize, ALIGN as usize);
            tail.as_mut_slice()[..len - body].copy_from_slice(&data[body..]);
            pieces.push((body as u64, Bytes::from_owner(tail)));
        }
        let written: Vec<io::Result<()>> = futures::stream::iter(pieces)
            .map(|(at, piece)| write_all(&rings, &fd, at, piece))
            .buffer_unordered(PIECES_IN_FLIGHT)
            .collect()
            .await;
        written.into_iter().collect::<io::Result<()>>()?;
        tokio::task::spawn_blocking(move || {
            rustix::fs::ftruncate(&*fd, len as u64)?;
            rustix::fs::fsync(&*fd).map_err(io::Error::from)
        })
        .await
        .map_err(io::Error::other)?
    }
}

/// Opens `path` for writing, `O_DIRECT` where its filesystem allows.
fn open(path: &Path) -> io::Result<(std::fs::File, bool)> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(0o600);
    match options
        .clone()
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((options.open(path)?, false)),
        Err(e) => Err(e),
    }
}

/// Writes all of `data` at `offset`.
async fn write_all(
    rings: &Rings,
    fd: &Arc<OwnedFd>,
    offset: u64,
    mut data: Bytes,
) -> io::Result<()> {
    let mut at = offset;
    while !data.is_empty() {
        match rings.write_at(fd.clone(), at, data.clone()).await {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote nothing")),
            Ok(n) => {
                data = data.slice(n..);
                at += n as u64;
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
