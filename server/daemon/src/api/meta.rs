//! Stat, List and Delete.

use futures::{StreamExt, TryStreamExt};
use sluice_proto::v1;
use sluice_storage::{ErrorKind, ListOptions, ObjectUri};
use tonic::{Code, Status};

use super::SluiceService;
use super::convert::meta;
use super::status::{parse_uri, read_status, storage_status};
use crate::telemetry::metrics::Method;

/// Entries per List page when the request does not say.
const DEFAULT_PAGE_SIZE: u32 = 1000;
/// Most entries per List page, whatever the request says (S3's own limit).
const MAX_PAGE_SIZE: u32 = 1000;
/// Objects deleted at once by a recursive Delete.
const DELETE_CONCURRENCY: usize = 16;

/// Finishes `timer` with the code of `res`.
pub(super) fn timed<T>(
    timer: crate::telemetry::metrics::RpcTimer,
    res: Result<T, Status>,
) -> Result<T, Status> {
    timer.finish(res.as_ref().map_or_else(Status::code, |_| Code::Ok));
    res
}

pub(super) async fn stat(
    svc: &SluiceService,
    req: v1::StatRequest,
) -> Result<v1::StatResponse, Status> {
    let timer = svc.metrics.rpc.start(Method::stat);
    let res = async {
        let uri = parse_uri(&req.uri)?;
        let storage = svc.reader.storage(&uri).map_err(|e| read_status(&e))?;
        let m = storage.head(&uri).await.map_err(|e| storage_status(&e))?;
        Ok(v1::StatResponse {
            meta: Some(meta(&m)),
        })
    }
    .await;
    timed(timer, res)
}

pub(super) async fn list(
    svc: &SluiceService,
    req: v1::ListRequest,
) -> Result<v1::ListResponse, Status> {
    let timer = svc.metrics.rpc.start(Method::list);
    let res = async {
        let prefix = parse_uri(&req.prefix)?;
        let storage = svc.reader.storage(&prefix).map_err(|e| read_status(&e))?;
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
    .await;
    timed(timer, res)
}

pub(super) async fn delete(
    svc: &SluiceService,
    req: v1::DeleteRequest,
) -> Result<v1::DeleteResponse, Status> {
    let timer = svc.metrics.rpc.start(Method::delete);
    let res = async {
        let uri = parse_uri(&req.uri)?;
        let storage = svc.reader.storage(&uri).map_err(|e| read_status(&e))?;
        if !req.recursive {
            let res = storage.delete(&uri).await;
            svc.reader.invalidate(&uri);
            res.map_err(|e| storage_status(&e))?;
            return Ok(v1::DeleteResponse { deleted: 1 });
        }
        let mut deleted = 0u64;
        let mut opts = ListOptions {
            delimiter: None,
            page_size: MAX_PAGE_SIZE as usize,
            page_token: None,
        };
        loop {
            let page = storage
                .list(&uri, &opts)
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
        svc.reader.invalidate_prefix(&uri);
        Ok(v1::DeleteResponse { deleted })
    }
    .await;
    timed(timer, res)
}
