//! PutObject, DeleteObject and DeleteObjects (with `facade.writes`).
//!
//! A PutObject body is held whole in arena memory (at most
//! `facade.max_part_size`; larger objects come as multipart uploads, which
//! every S3 client switches to on its own above a threshold) and stored in
//! one backend request. Every write and delete drops the object from the
//! cache, so the next read sees the new bytes.

use futures::StreamExt;
use http::{HeaderValue, StatusCode};
use sluice_storage::ErrorKind;

use super::{Req, Resp, empty, object_uri, xml};
use crate::facade::body;
use crate::facade::error::S3Error;
use crate::facade::xml::{Xml, delete_keys};

/// Keys one DeleteObjects may name (S3's limit).
const MAX_DELETE_KEYS: usize = 1000;
/// Deletes of one DeleteObjects run at once.
const DELETE_CONCURRENCY: usize = 16;

/// PutObject.
pub(super) async fn put(mut req: Req<'_>) -> Result<Resp, S3Error> {
    if req.header("x-amz-copy-source").is_some() {
        return Err(S3Error::not_implemented("CopyObject"));
    }
    let uri = req.uri()?;
    let storage = req.backend(&uri)?;
    let data = body::read_data(&mut req).await?;
    let stored = storage.put(&uri, data).await;
    req.state.engine.invalidate(&uri);
    let meta = stored.map_err(|e| S3Error::storage(&e, &req.resource))?;
    let mut resp = empty(StatusCode::OK);
    if let Ok(v) = HeaderValue::from_str(&super::read::quoted(meta.etag.as_deref())) {
        resp.headers_mut().insert(http::header::ETAG, v);
    }
    Ok(resp)
}

/// DeleteObject: 204 whether or not the object was there, as S3.
pub(super) async fn delete(req: &Req<'_>) -> Result<Resp, S3Error> {
    let uri = req.uri()?;
    let storage = req.backend(&uri)?;
    let res = storage.delete(&uri).await;
    req.state.engine.invalidate(&uri);
    match res {
        Ok(()) => Ok(empty(StatusCode::NO_CONTENT)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(empty(StatusCode::NO_CONTENT)),
        Err(e) => Err(S3Error::storage(&e, &req.resource)),
    }
}

/// DeleteObjects (`POST /bucket?delete`).
pub(super) async fn delete_many(mut req: Req<'_>) -> Result<Resp, S3Error> {
    let body = body::read_small(&mut req).await?;
    let (keys, quiet) =
        delete_keys(&body).map_err(|e| S3Error::new("MalformedXML", 400, e.to_string()))?;
    if keys.len() > MAX_DELETE_KEYS {
        return Err(S3Error::new(
            "MalformedXML",
            400,
            "at most 1000 keys per request",
        ));
    }
    let req = &req;
    let results: Vec<(String, Result<(), S3Error>)> = futures::stream::iter(keys)
        .map(|key| async move {
            let resource = format!("/{}/{key}", req.bucket);
            let res = async {
                let uri = object_uri(req.prefix(), &key)?;
                let storage = req
                    .state
                    .engine
                    .backend(&uri)
                    .map_err(|e| S3Error::read(&e, &resource))?;
                let res = storage.delete(&uri).await;
                req.state.engine.invalidate(&uri);
                match res {
                    Err(e) if e.kind() != ErrorKind::NotFound => {
                        Err(S3Error::storage(&e, &resource))
                    }
                    _ => Ok(()),
                }
            }
            .await;
            (key, res)
        })
        .buffered(DELETE_CONCURRENCY)
        .collect()
        .await;
    let mut x = Xml::new();
    x.open_s3("DeleteResult");
    for (key, res) in &results {
        match res {
            Ok(()) if quiet => {}
            Ok(()) => {
                x.open("Deleted");
                x.elem("Key", key);
                x.close("Deleted");
            }
            Err(e) => {
                x.open("Error");
                x.elem("Key", key);
                x.elem("Code", e.code);
                x.elem("Message", &e.message);
                x.close("Error");
            }
        }
    }
    x.close("DeleteResult");
    Ok(xml(StatusCode::OK, x.finish()))
}
