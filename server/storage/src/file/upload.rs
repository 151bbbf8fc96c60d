//! Uploads to `file://`: a temporary file next to the target, renamed into
//! place on completion.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;

use super::{blocking, meta_of};
use crate::{MultipartUpload, ObjectMeta, ObjectUri, Result, StorageError};

#[derive(Debug)]
pub(super) struct FileUpload {
    uri: ObjectUri,
    target: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    /// Renamed into place or removed: nothing for `Drop` to clean up.
    finished: bool,
}

impl FileUpload {
    pub(super) async fn create(uri: ObjectUri, target: PathBuf) -> Result<Self> {
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| StorageError::invalid(uri.to_string(), "path has no file name"))?;
        let tmp =
            target.with_file_name(format!(".{name}.sluice-tmp-{:016x}", rand::random::<u64>()));
        let (t, u) = (tmp.clone(), uri.to_string());
        let file = blocking(&uri, move || {
            if let Some(parent) = t.parent() {
                std::fs::create_dir_all(parent).map_err(|e| StorageError::from_io(u.clone(), e))?;
            }
            File::create_new(&t).map_err(|e| StorageError::from_io(u, e))
        })
        .await?;
        Ok(FileUpload {
            uri,
            target,
            tmp,
            file: Some(file),
            finished: false,
        })
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
        let (tmp, target, u) = (self.tmp.clone(), self.target.clone(), self.uri.to_string());
        let res = blocking(&self.uri.clone(), move || {
            file.sync_data()
                .map_err(|e| StorageError::from_io(u.clone(), e))?;
            std::fs::rename(&tmp, &target).map_err(|e| StorageError::from_io(u.clone(), e))?;
            let md = std::fs::metadata(&target).map_err(|e| StorageError::from_io(u.clone(), e))?;
            Ok(meta_of(u, &md))
        })
        .await;
        // On failure the temporary file is removed by `Drop`.
        self.finished = res.is_ok();
        res
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.file.take();
        self.finished = true;
        let (tmp, u) = (self.tmp.clone(), self.uri.to_string());
        blocking(&self.uri.clone(), move || {
            match std::fs::remove_file(&tmp) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(StorageError::from_io(u, e)),
            }
        })
        .await
    }
}

impl Drop for FileUpload {
    fn drop(&mut self) {
        // Neither completed nor aborted (the caller was cancelled, possibly
        // during a part write): remove the temporary file so nothing
        // half-written stays behind.
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
