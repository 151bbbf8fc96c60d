//! `file://` backend: local files, confined to configured roots.
//!
//! Confinement: a URI's path must not contain `.` or `..` components, must lie
//! lexically under one of the roots, and its canonical form (symlinks
//! resolved) must too — otherwise `PermissionDenied`. For paths that do not
//! exist yet (uploads) the nearest existing ancestor is canonicalized.
//!
//! All filesystem calls run on tokio's blocking pool, never on runtime
//! workers. Reads are `pread`s of [`READ_CHUNK`] bytes. Writes go to a
//! temporary file next to the target and are renamed into place, so readers
//! never see a half-written object and a failed upload leaves nothing.
//!
//! Etags are `size-mtime_ns-inode` in hex: any rewrite (new inode on rename,
//! or a new mtime in place) changes the etag, which is what the RangeEngine
//! and the cache rely on.

mod list;
mod upload;

use std::fs::{File, Metadata};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::{
    ErrorKind, GetOptions, GetResult, ListOptions, ListPage, MultipartUpload, ObjectMeta,
    ObjectUri, Result, Storage, StorageError, clamp_range,
};

/// Bytes per `pread`: large enough to amortise the blocking-pool hop (a few
/// µs against ~50 µs of copying), small enough that the chunks in flight —
/// one per concurrent part — add little to the memory budget.
pub const READ_CHUNK: usize = 256 << 10;

/// Local files under configured roots.
#[derive(Debug)]
pub struct FileStorage {
    roots: Arc<Vec<PathBuf>>,
}

impl FileStorage {
    /// Canonicalizes the roots; a root that does not exist is an error.
    pub fn new(roots: &[PathBuf]) -> Result<Self> {
        let roots = roots
            .iter()
            .map(|r| {
                let shown = format!("file://{}", r.display());
                if !r.is_absolute() {
                    return Err(StorageError::invalid(
                        shown,
                        "file root must be an absolute path",
                    ));
                }
                std::fs::canonicalize(r).map_err(|e| StorageError::from_io(shown, e))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(FileStorage {
            roots: Arc::new(roots),
        })
    }

    /// The local path of `uri`, checked against the roots.
    fn resolve(&self, uri: &ObjectUri) -> Result<PathBuf> {
        resolve(&self.roots, uri)
    }
}

pub(crate) fn resolve(roots: &[PathBuf], uri: &ObjectUri) -> Result<PathBuf> {
    let path = Path::new(uri.key());
    let denied = |why: &str| StorageError::denied(uri.to_string(), why.to_owned());
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(denied("'.' and '..' are not allowed in paths"));
    }
    if !roots.iter().any(|r| path.starts_with(r)) {
        return Err(denied("path is outside the configured file roots"));
    }
    // Resolve symlinks of the longest existing ancestor.
    let mut existing = path;
    let canonical = loop {
        match std::fs::canonicalize(existing) {
            Ok(c) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match existing.parent() {
                Some(p) => existing = p,
                None => return Err(denied("no existing ancestor")),
            },
            Err(e) => return Err(StorageError::from_io(uri.to_string(), e)),
        }
    };
    if !roots.iter().any(|r| canonical.starts_with(r)) {
        return Err(denied(
            "path escapes the configured file roots through a symlink",
        ));
    }
    Ok(path.to_path_buf())
}

/// Metadata of an open file or a path.
pub(crate) fn meta_of(uri: String, md: &Metadata) -> ObjectMeta {
    let mtime =
        SystemTime::UNIX_EPOCH + Duration::new(md.mtime().max(0) as u64, md.mtime_nsec() as u32);
    let mtime_ns = md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128;
    ObjectMeta {
        uri,
        size: md.len(),
        etag: Some(format!("{:x}-{:x}-{:x}", md.len(), mtime_ns, md.ino())),
        last_modified: Some(mtime),
        version: None,
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

#[async_trait]
impl Storage for FileStorage {
    fn name(&self) -> &'static str {
        "file"
    }

    async fn head(&self, uri: &ObjectUri) -> Result<ObjectMeta> {
        let path = self.resolve(uri)?;
        let shown = uri.to_string();
        let u = uri.clone();
        blocking(uri, move || {
            let md =
                std::fs::metadata(&path).map_err(|e| StorageError::from_io(shown.clone(), e))?;
            if !md.is_file() {
                return Err(not_a_file(&u));
            }
            Ok(meta_of(shown, &md))
        })
        .await
    }

    async fn get(&self, uri: &ObjectUri, opts: GetOptions) -> Result<GetResult> {
        let path = self.resolve(uri)?;
        let shown = uri.to_string();
        let u = uri.clone();
        let (file, meta) = blocking(uri, move || {
            let file = File::open(&path).map_err(|e| StorageError::from_io(shown.clone(), e))?;
            let md = file
                .metadata()
                .map_err(|e| StorageError::from_io(shown.clone(), e))?;
            if !md.is_file() {
                return Err(not_a_file(&u));
            }
            Ok((file, meta_of(shown, &md)))
        })
        .await?;
        if let Some(expected) = &opts.if_match
            && meta.etag.as_deref() != Some(expected.as_str())
        {
            return Err(StorageError::new(
                ErrorKind::Changed,
                meta.uri,
                "object changed: etag does not match",
            ));
        }
        let range = clamp_range(uri, opts.range, meta.size)?;
        let body = read_stream(Arc::new(file), uri.to_string(), range.clone());
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
        let path = self.resolve(uri)?;
        Ok(Box::new(
            upload::FileUpload::create(uri.clone(), path).await?,
        ))
    }

    /// Reads straight into `dst` with one `pread` on a multi-threaded
    /// runtime (the worker hands its other tasks on while it blocks: no
    /// chunk buffers, no second copy); elsewhere through a ranged get.
    async fn read_into(
        &self,
        uri: &ObjectUri,
        offset: u64,
        etag: Option<&str>,
        dst: &mut [u8],
    ) -> Result<()> {
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if !multi_thread {
            return crate::read_into_via_get(self, uri, offset, etag, dst).await;
        }
        let path = self.resolve(uri)?;
        let shown = uri.to_string();
        tokio::task::block_in_place(|| {
            let file = File::open(&path).map_err(|e| StorageError::from_io(shown.clone(), e))?;
            let md = file
                .metadata()
                .map_err(|e| StorageError::from_io(shown.clone(), e))?;
            let meta = meta_of(shown.clone(), &md);
            if meta.etag.as_deref() != etag {
                return Err(StorageError::new(
                    ErrorKind::Changed,
                    shown,
                    "object changed while being read (etag differs)",
                ));
            }
            match file.read_exact_at(dst, offset) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(StorageError::new(
                    ErrorKind::Changed,
                    shown,
                    "file shrank while being read",
                )),
                Err(e) => Err(StorageError::from_io(shown, e)),
            }
        })
    }

    async fn delete(&self, uri: &ObjectUri) -> Result<()> {
        let path = self.resolve(uri)?;
        let shown = uri.to_string();
        let u = uri.clone();
        blocking(uri, move || {
            let md = std::fs::symlink_metadata(&path)
                .map_err(|e| StorageError::from_io(shown.clone(), e))?;
            if md.is_dir() {
                return Err(not_a_file(&u));
            }
            std::fs::remove_file(&path).map_err(|e| StorageError::from_io(shown, e))
        })
        .await
    }
}

fn read_stream(file: Arc<File>, uri: String, range: std::ops::Range<u64>) -> crate::ByteStream {
    let state = (file, uri, range.start, range.end);
    Box::pin(futures::stream::try_unfold(
        state,
        |(file, uri, pos, end)| async move {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(dir: &Path) -> FileStorage {
        FileStorage::new(&[dir.to_path_buf()]).unwrap()
    }

    fn uri(p: &Path) -> ObjectUri {
        ObjectUri::parse(&format!("file://{}", p.display())).unwrap()
    }

    #[tokio::test]
    async fn dotdot_and_symlink_escapes_are_denied() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        let root_path = std::fs::canonicalize(root.path()).unwrap();
        std::os::unix::fs::symlink(outside.path(), root_path.join("link")).unwrap();
        let s = storage(&root_path);
        let dotdot = ObjectUri::parse(&format!("file://{}/../x", root_path.display())).unwrap();
        assert_eq!(
            s.head(&dotdot).await.unwrap_err().kind(),
            ErrorKind::PermissionDenied
        );
        let via_link = uri(&root_path.join("link/secret"));
        assert_eq!(
            s.head(&via_link).await.unwrap_err().kind(),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            s.head(&uri(outside.path())).await.unwrap_err().kind(),
            ErrorKind::PermissionDenied
        );
        // Uploads through the link are refused too.
        let put = s
            .put(&uri(&root_path.join("link/new")), Bytes::from_static(b"y"))
            .await;
        assert_eq!(put.unwrap_err().kind(), ErrorKind::PermissionDenied);
        assert!(!outside.path().join("new").exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_into_reads_in_place_and_checks_the_version() {
        let root = tempfile::tempdir().unwrap();
        let root_path = std::fs::canonicalize(root.path()).unwrap();
        let s = storage(&root_path);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(root_path.join("o"), &data).unwrap();
        let u = uri(&root_path.join("o"));
        let etag = s.head(&u).await.unwrap().etag;
        let mut dst = vec![0u8; 30_000];
        s.read_into(&u, 50_000, etag.as_deref(), &mut dst)
            .await
            .unwrap();
        assert_eq!(dst, data[50_000..80_000]);
        let err = s
            .read_into(&u, 0, Some("another-version"), &mut dst)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Changed);
        // Past the end: the file is shorter than the part asked for.
        let err = s
            .read_into(&u, 90_000, etag.as_deref(), &mut dst)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Changed, "{err}");
    }

    #[test]
    fn clamp_follows_the_contract() {
        let u = ObjectUri::parse("file:///x").unwrap();
        assert_eq!(clamp_range(&u, None, 10).unwrap(), 0..10);
        assert_eq!(clamp_range(&u, Some(2..100), 10).unwrap(), 2..10);
        assert_eq!(clamp_range(&u, Some(0..5), 0).unwrap(), 0..0);
        assert_eq!(
            clamp_range(&u, Some(10..12), 10).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }
}
