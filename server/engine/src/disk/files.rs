//! The disk tier's files: `<id>.data` and `<id>.meta` per entry.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sluice_storage::ObjectMeta;

const DATA: &str = ".data";
const META: &str = ".meta";
const TMP: &str = ".tmp";

/// What `<id>.meta` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) uri: String,
    pub(crate) size: u64,
    pub(crate) etag: Option<String>,
    /// Nanoseconds since the Unix epoch.
    pub(crate) last_modified_ns: Option<u128>,
    pub(crate) version: Option<String>,
    /// CRC-32 (IEEE) of the data.
    pub(crate) crc32: u32,
    /// When the entry was written, nanoseconds since the Unix epoch.
    pub(crate) written_ns: u128,
}

fn ns(t: SystemTime) -> Option<u128> {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_nanos())
}

impl Stored {
    pub(crate) fn new(meta: &ObjectMeta, crc32: u32) -> Stored {
        Stored {
            uri: meta.uri.clone(),
            size: meta.size,
            etag: meta.etag.clone(),
            last_modified_ns: meta.last_modified.and_then(ns),
            version: meta.version.clone(),
            crc32,
            written_ns: ns(SystemTime::now()).unwrap_or(0),
        }
    }

    /// The object's metadata as it was when written.
    pub(crate) fn meta(&self) -> ObjectMeta {
        let last_modified = self.last_modified_ns.map(|n| {
            let secs = (n / 1_000_000_000) as u64;
            SystemTime::UNIX_EPOCH + Duration::new(secs, (n % 1_000_000_000) as u32)
        });
        ObjectMeta {
            uri: self.uri.clone(),
            size: self.size,
            etag: self.etag.clone(),
            last_modified,
            version: self.version.clone(),
        }
    }
}

pub(crate) fn data_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}{DATA}"))
}

fn meta_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}{META}"))
}

fn tmp(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP);
    PathBuf::from(s)
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let t = tmp(path);
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&t)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&t, path)
}

/// Where an entry's data is written before [`commit`] renames it.
pub(crate) fn data_tmp(dir: &Path, id: &str) -> PathBuf {
    tmp(&data_path(dir, id))
}

/// Completes an entry whose data was written (and fsynced) to
/// [`data_tmp`]: renames it, writes the meta (fsynced, renamed), then
/// fsyncs the directory.
pub(crate) fn commit(dir: &Path, id: &str, stored: &Stored) -> std::io::Result<()> {
    std::fs::rename(data_tmp(dir, id), data_path(dir, id))?;
    let meta = serde_json::to_vec(stored).map_err(std::io::Error::other)?;
    write_synced(&meta_path(dir, id), &meta)?;
    File::open(dir)?.sync_all()
}

/// Removes an entry's files (meta first: without it the data is garbage
/// the next scan removes).
pub(crate) fn remove(dir: &Path, id: &str) {
    for path in [meta_path(dir, id), data_path(dir, id)] {
        for p in [tmp(&path), path] {
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(file = %p.display(), error = %e, "disk tier: cannot remove");
            }
        }
    }
}

/// The entries of `dir`, after removing what a crash left behind; and how
/// many damaged entries were removed.
pub(crate) fn scan(dir: &Path) -> (Vec<(String, Stored)>, u64) {
    let Ok(listing) = std::fs::read_dir(dir) else {
        tracing::error!(dir = %dir.display(), "disk tier: cannot list the directory");
        return (Vec::new(), 0);
    };
    let mut metas = Vec::new();
    let mut datas = std::collections::HashSet::new();
    for entry in listing.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(TMP) {
            let _ = std::fs::remove_file(entry.path());
        } else if let Some(id) = name.strip_suffix(META) {
            metas.push(id.to_owned());
        } else if let Some(id) = name.strip_suffix(DATA) {
            datas.insert(id.to_owned());
        }
    }
    let mut found = Vec::new();
    let mut damaged = 0;
    for id in metas {
        let stored = std::fs::read(meta_path(dir, &id))
            .ok()
            .and_then(|b| serde_json::from_slice::<Stored>(&b).ok());
        let size = std::fs::metadata(data_path(dir, &id)).map(|m| m.len()).ok();
        datas.remove(&id);
        match stored {
            Some(s) if size == Some(s.size) => found.push((id, s)),
            _ => {
                damaged += 1;
                tracing::warn!(dir = %dir.display(), id, "disk tier: damaged entry removed");
                remove(dir, &id);
            }
        }
    }
    // Data whose meta never landed: a write cut short.
    for id in datas {
        let _ = std::fs::remove_file(data_path(dir, &id));
    }
    (found, damaged)
}
