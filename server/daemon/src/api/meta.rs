//! Stat, List and Delete.

use futures::{StreamExt, TryStreamExt};
use sluice_proto::v1;
use std::path::{Path, PathBuf};

use sluice_storage::{ErrorKind, ListOptions, ObjectUri, Scheme};
use tonic::Status;

use super::SluiceService;
use super::convert::meta;
use super::status::{parse_uri, read_status, storage_status};

/// Entries per List page when the request does not say.
const DEFAULT_PAGE_SIZE: u32 = 1000;
/// Most entries per List page, whatever the request says (S3's own limit).
const MAX_PAGE_SIZE: u32 = 1000;
/// Objects deleted at once by a recursive Delete.
const DELETE_CONCURRENCY: usize = 16;

pub(super) async fn stat(
    svc: &SluiceService,
    req: v1::StatRequest,
) -> Result<v1::StatResponse, Status> {
    async {
        let uri = parse_uri(&req.uri)?;
        let m = svc.engine.head(&uri).await.map_err(|e| read_status(&e))?;
        Ok(v1::StatResponse {
            meta: Some(meta(&m)),
        })
    }
    .await
}

pub(super) async fn list(
    svc: &SluiceService,
    req: v1::ListRequest,
) -> Result<v1::ListResponse, Status> {
    async {
        let prefix = parse_uri(&req.prefix)?;
        let storage = svc.engine.backend(&prefix).map_err(|e| read_status(&e))?;
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let opts = ListOptions {
            delimiter: Some(req.delimiter).filter(|d| !d.is_empty()),
            page_size: page_size as usize,
            page_token: Some(req.page_token).filter(|t| !t.is_empty()),
        };
        let page = storage
            .list(&prefix, &opts)
            .await
            .map_err(|e| storage_status(&e))?;
        Ok(v1::ListResponse {
            objects: page.objects.iter().map(meta).collect(),
            common_prefixes: page.common_prefixes,
            next_page_token: page.next_token.unwrap_or_default(),
        })
    }
    .await
}

pub(super) async fn delete(
    svc: &SluiceService,
    req: v1::DeleteRequest,
) -> Result<v1::DeleteResponse, Status> {
    async {
        let uri = parse_uri(&req.uri)?;
        let storage = svc.engine.backend(&uri).map_err(|e| read_status(&e))?;
        if !req.recursive {
            if req.whole_bucket {
                return Err(Status::invalid_argument(format!(
                    "{uri}: whole_bucket applies only to a recursive delete"
                )));
            }
            let res = storage.delete(&uri).await;
            svc.engine.invalidate(&uri);
            res.map_err(|e| storage_status(&e))?;
            return Ok(v1::DeleteResponse { deleted: 1 });
        }
        let roots = match uri.scheme() {
            Scheme::Direct => &svc.config.storage.direct.roots,
            _ => &svc.config.storage.file.roots,
        };
        if !req.whole_bucket && names_whole_bucket(&uri, roots) {
            return Err(Status::failed_precondition(format!(
                "{uri}: a recursive delete of a whole bucket or file root must be confirmed \
                 (whole_bucket in the request; `sluice rm -r --whole-bucket`)"
            )));
        }
        // Whole path components: `…/run1` is the object `run1` and what lies
        // below `run1/`, never `run10`.
        let key = uri.key();
        let (below, exact) = if key.is_empty() || key.ends_with('/') {
            (uri.clone(), None)
        } else {
            (uri.with_key(format!("{key}/")), Some(&uri))
        };
        let mut deleted = 0u64;
        if let Some(exact) = exact {
            // Listed rather than probed: the object itself, if there is
            // one, is the first entry at its level (names that extend it
            // sort after it), and a listing never mistakes a "directory"
            // for an object.
            let first = ListOptions {
                delimiter: Some("/".into()),
                page_size: 1,
                page_token: None,
            };
            let page = storage
                .list(exact, &first)
                .await
                .map_err(|e| storage_status(&e))?;
            let shown = exact.to_string();
            if page.objects.first().is_some_and(|o| o.uri == shown) {
                let res = storage.delete(exact).await;
                svc.engine.invalidate(exact);
                match res {
                    Ok(()) => deleted += 1,
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(storage_status(&e)),
                }
            }
        }
        let mut opts = ListOptions {
            delimiter: None,
            page_size: MAX_PAGE_SIZE as usize,
            page_token: None,
        };
        loop {
            let page = storage
                .list(&below, &opts)
                .await
                .map_err(|e| storage_status(&e))?;
            let uris: Vec<ObjectUri> = page
                .objects
                .iter()
                .map(|o| ObjectUri::parse(&o.uri))
                .collect::<Result<_, _>>()
                .map_err(|e| storage_status(&e))?;
            deleted += futures::stream::iter(uris)
                .map(|u| {
                    let storage = storage.clone();
                    async move {
                        match storage.delete(&u).await {
                            Ok(()) => Ok(1u64),
                            // Deleted concurrently by someone else: fine.
                            Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
                            Err(e) => Err(e),
                        }
                    }
                })
                .buffer_unordered(DELETE_CONCURRENCY)
                .try_fold(0, |n, d| async move { Ok(n + d) })
                .await
                .map_err(|e| storage_status(&e))?;
            match page.next_token {
                Some(t) => opts.page_token = Some(t),
                None => break,
            }
        }
        svc.engine.invalidate_prefix(&below);
        Ok(v1::DeleteResponse { deleted })
    }
    .await
}

/// Whether a recursive delete of `uri` would take a whole bucket, or a
/// whole file root (the root itself, or a directory above one).
fn names_whole_bucket(uri: &ObjectUri, roots: &[PathBuf]) -> bool {
    match uri.scheme() {
        Scheme::S3 | Scheme::Gs | Scheme::Az => uri.key().is_empty(),
        Scheme::File | Scheme::Direct => {
            let path = Path::new(uri.key());
            roots.iter().any(|root| {
                root.starts_with(path)
                    || std::fs::canonicalize(root).is_ok_and(|c| c.starts_with(path))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_buckets_and_roots_are_recognised() {
        let roots = [PathBuf::from("/data/train")];
        let whole = |u: &str| names_whole_bucket(&ObjectUri::parse(u).unwrap(), &roots);
        assert!(whole("s3://bkt"));
        assert!(whole("s3://bkt/"));
        assert!(!whole("s3://bkt/a"));
        assert!(whole("file:///data/train"));
        assert!(whole("file:///data/train/"));
        assert!(whole("file:///data"));
        assert!(whole("file:///"));
        assert!(!whole("file:///data/train/x"));
        assert!(!whole("file:///data/tr"), "components, not characters");
        assert!(!whole("file:///data/train2"));
    }
}
