//! Multipart uploads (with `facade.writes`): CreateMultipartUpload,
//! UploadPart, CompleteMultipartUpload, AbortMultipartUpload.
//!
//! The backends' uploads take parts in order, one after another; S3
//! clients send them numbered, several at once, in any order. The facade
//! keeps each upload's parts that arrived early (in arena memory, charged
//! to the sending connection's share) until the parts before them are
//! stored, then stores them in order: UploadPart answers once its part is
//! stored or queued. Completion needs parts 1..n, each uploaded, listed
//! in order — what every S3 client sends; a part cannot be replaced once
//! stored. Uploads still open when the daemon stops are aborted, so no
//! backend keeps invisible parts; so are uploads left without a request for
//! `facade.upload_idle_timeout`, whose early parts would otherwise hold
//! memory for good. One access key keeps at most
//! `facade.max_uploads_per_key` uploads open, so no client can take every
//! upload the facade allows.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use sluice_storage::{MultipartUpload, ObjectUri, etag_matches};

use super::{Req, Resp, empty, xml};
use crate::facade::body;
use crate::facade::error::S3Error;
use crate::facade::xml::{Xml, complete_parts};

/// Uploads open at once; more get SlowDown until some complete.
const MAX_UPLOADS: usize = 1024;
/// S3's highest part number.
const MAX_PART_NUMBER: u32 = 10_000;

/// The open uploads by id.
#[derive(Debug)]
pub(crate) struct Uploads {
    open: std::sync::Mutex<HashMap<String, Arc<Upload>>>,
    /// What `Upload::touched` counts from.
    epoch: Instant,
    /// `facade.upload_idle_timeout`.
    idle: Duration,
    /// `facade.max_uploads_per_key`.
    per_key: usize,
}

#[derive(Debug)]
pub(crate) struct Upload {
    bucket: String,
    key: String,
    uri: ObjectUri,
    /// The access key that started it (`None`: anonymous).
    owner: Option<String>,
    /// Milliseconds from `Uploads::epoch` to its last request.
    touched: AtomicU64,
    inner: tokio::sync::Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `None` once completed or aborted.
    mp: Option<Box<dyn MultipartUpload>>,
    /// The part number stored next.
    next: u32,
    /// Parts that arrived before the ones they follow.
    pending: BTreeMap<u32, Bytes>,
    /// The ETag of every part received.
    etags: BTreeMap<u32, String>,
    /// Why storing a part failed, if it did: the upload cannot complete.
    failed: Option<S3Error>,
}

impl Uploads {
    /// No uploads yet; they expire after `idle` without a request, and one
    /// access key keeps at most `per_key` open.
    pub(crate) fn new(idle: Duration, per_key: usize) -> Self {
        Uploads {
            open: std::sync::Mutex::default(),
            epoch: Instant::now(),
            idle,
            per_key,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Upload>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The upload the request names, marked used now.
    fn get(&self, req: &Req<'_>) -> Result<Arc<Upload>, S3Error> {
        let id = req.query.get("uploadId").unwrap_or_default();
        let upload = self
            .lock()
            .get(id)
            .filter(|u| u.bucket == req.bucket && u.key == req.key)
            .cloned()
            .ok_or_else(|| no_such_upload(&req.resource))?;
        upload.touched.store(self.now_ms(), Ordering::Relaxed);
        Ok(upload)
    }

    /// Whether `owner` may open another upload now.
    fn room(
        &self,
        open: &HashMap<String, Arc<Upload>>,
        owner: &Option<String>,
    ) -> Result<(), S3Error> {
        let owned = open.values().filter(|u| &u.owner == owner).count();
        let whose = if owned >= self.per_key {
            "this access key has facade.max_uploads_per_key"
        } else if open.len() >= MAX_UPLOADS {
            "the facade has its most"
        } else {
            return Ok(());
        };
        Err(S3Error::new(
            "SlowDown",
            503,
            format!("{whose} multipart uploads open; complete or abort some, or retry later"),
        ))
    }

    /// Registers `upload` under a new id, unless the facade or its owner
    /// has as many open as allowed (then the upload comes back).
    fn insert(&self, upload: Upload) -> Result<String, Box<(S3Error, Upload)>> {
        let mut open = self.lock();
        if let Err(e) = self.room(&open, &upload.owner) {
            return Err(Box::new((e, upload)));
        }
        upload.touched.store(self.now_ms(), Ordering::Relaxed);
        let id = upload_id();
        open.insert(id.clone(), Arc::new(upload));
        Ok(id)
    }

    /// Aborts the uploads with no request for `facade.upload_idle_timeout`;
    /// how many.
    pub(crate) async fn expire(&self) -> u64 {
        let cutoff = self.now_ms().saturating_sub(self.idle.as_millis() as u64);
        let expired: Vec<Arc<Upload>> = {
            let mut open = self.lock();
            let ids: Vec<String> = open
                .iter()
                .filter(|(_, u)| u.touched.load(Ordering::Relaxed) < cutoff)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| open.remove(id)).collect()
        };
        let n = expired.len() as u64;
        for upload in expired {
            tracing::info!(uri = %upload.uri, "a facade multipart upload expired unused; aborting it");
            upload.abort("expired").await;
        }
        n
    }

    /// How often [`Uploads::expire`] should run.
    pub(crate) fn expiry_interval(&self) -> Duration {
        (self.idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
    }

    fn remove(&self, req: &Req<'_>) {
        let id = req.query.get("uploadId").unwrap_or_default();
        self.lock().remove(id);
    }

    /// Aborts every open upload.
    pub(crate) async fn abort_all(&self) {
        let open: Vec<Arc<Upload>> = self.lock().drain().map(|(_, u)| u).collect();
        for upload in open {
            upload.abort("at shutdown").await;
        }
    }
}

impl Upload {
    /// Aborts it at the backend and lets its early parts go.
    async fn abort(&self, when: &str) {
        let mut inner = self.inner.lock().await;
        inner.pending.clear();
        if let Some(mp) = inner.mp.take()
            && let Err(error) = mp.abort().await
        {
            tracing::warn!(%error, uri = %self.uri, "aborting an open facade upload {when} failed");
        }
    }
}

fn no_such_upload(resource: &str) -> S3Error {
    S3Error::new(
        "NoSuchUpload",
        404,
        "the specified multipart upload does not exist",
    )
    .on(resource)
}

fn upload_id() -> String {
    let mut id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
        .expect("the system's random source works");
    crate::facade::sigv4::hex(&id)
}

/// CreateMultipartUpload.
pub(super) async fn create(req: &Req<'_>) -> Result<Resp, S3Error> {
    let uri = req.uri()?;
    {
        let uploads = &req.state.uploads;
        uploads
            .room(&uploads.lock(), &req.owner)
            .map_err(|e| e.on(req.resource.clone()))?;
    }
    let storage = req.backend(&uri)?;
    let mp = storage
        .start_multipart(&uri)
        .await
        .map_err(|e| S3Error::storage(&e, &req.resource))?;
    let upload = Upload {
        bucket: req.bucket.clone(),
        key: req.key.clone(),
        uri: uri.clone(),
        owner: req.owner.clone(),
        touched: AtomicU64::new(0),
        inner: tokio::sync::Mutex::new(Inner {
            mp: Some(mp),
            next: 1,
            pending: BTreeMap::new(),
            etags: BTreeMap::new(),
            failed: None,
        }),
    };
    let id = match req.state.uploads.insert(upload) {
        Ok(id) => id,
        Err(refused) => {
            let (e, upload) = *refused;
            // Others were opened meanwhile; this one is open at the
            // backend already, and nothing may stay there.
            upload.abort("refused").await;
            return Err(e.on(req.resource.clone()));
        }
    };
    let mut x = Xml::new();
    x.open_s3("InitiateMultipartUploadResult");
    x.elem("Bucket", &req.bucket);
    x.elem("Key", &req.key);
    x.elem("UploadId", &id);
    x.close("InitiateMultipartUploadResult");
    Ok(xml(StatusCode::OK, x.finish()))
}

/// UploadPart.
pub(super) async fn upload_part(mut req: Req<'_>) -> Result<Resp, S3Error> {
    let upload = req.state.uploads.get(&req)?;
    let n: u32 = req
        .query
        .get("partNumber")
        .and_then(|n| n.parse().ok())
        .filter(|n| (1..=MAX_PART_NUMBER).contains(n))
        .ok_or_else(|| {
            S3Error::invalid_argument("partNumber must be an integer from 1 to 10000")
        })?;
    let data = body::read_data(&mut req).await?;
    let etag = format!("\"{:08x}{:x}\"", crc32fast::hash(&data), data.len());
    let mut inner = upload.inner.lock().await;
    let Inner {
        mp,
        next,
        pending,
        etags,
        failed,
    } = &mut *inner;
    let Some(mp) = mp else {
        return Err(no_such_upload(&req.resource));
    };
    if n < *next {
        return Err(S3Error::new(
            "InvalidPart",
            400,
            format!("part {n} is already stored; this facade cannot replace a stored part"),
        ));
    }
    pending.insert(n, data);
    etags.insert(n, etag.clone());
    while let Some(part) = pending.remove(next) {
        if let Err(e) = mp.put_part(part).await {
            let e = S3Error::storage(&e, &req.resource);
            *failed = Some(e.clone());
            return Err(e);
        }
        *next += 1;
    }
    let mut resp = empty(StatusCode::OK);
    if let Ok(v) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(http::header::ETAG, v);
    }
    Ok(resp)
}

/// CompleteMultipartUpload.
pub(super) async fn complete(mut req: Req<'_>) -> Result<Resp, S3Error> {
    let upload = req.state.uploads.get(&req)?;
    let body = body::read_small(&mut req).await?;
    let listed =
        complete_parts(&body).map_err(|e| S3Error::new("MalformedXML", 400, e.to_string()))?;
    let mut inner = upload.inner.lock().await;
    if let Some(e) = &inner.failed {
        return Err(e.clone());
    }
    let in_order = listed
        .iter()
        .enumerate()
        .all(|(i, (n, _))| *n as usize == i + 1);
    let all_stored = inner.pending.is_empty() && inner.next as usize == listed.len() + 1;
    let etags_match = listed.iter().all(|(n, etag)| {
        inner
            .etags
            .get(n)
            .is_some_and(|e| etag.is_empty() || etag_matches(e, etag))
    });
    if listed.is_empty() || !in_order || !all_stored || !etags_match {
        return Err(S3Error::new(
            "InvalidPart",
            400,
            "the parts must be 1..n in order, each uploaded, with the ETags UploadPart answered",
        )
        .on(req.resource.clone()));
    }
    let mp = inner
        .mp
        .take()
        .ok_or_else(|| no_such_upload(&req.resource))?;
    req.state.uploads.remove(&req);
    let done = mp.complete().await;
    req.state.engine.invalidate(&upload.uri);
    let meta = done.map_err(|e| S3Error::storage(&e, &req.resource))?;
    let mut x = Xml::new();
    x.open_s3("CompleteMultipartUploadResult");
    x.elem("Location", &req.resource);
    x.elem("Bucket", &req.bucket);
    x.elem("Key", &req.key);
    x.elem("ETag", &super::read::quoted(meta.etag.as_deref()));
    x.close("CompleteMultipartUploadResult");
    Ok(xml(StatusCode::OK, x.finish()))
}

/// AbortMultipartUpload.
pub(super) async fn abort(req: &Req<'_>) -> Result<Resp, S3Error> {
    let upload = req.state.uploads.get(req)?;
    req.state.uploads.remove(req);
    let mp = upload.inner.lock().await.mp.take();
    if let Some(mp) = mp {
        mp.abort()
            .await
            .map_err(|e| S3Error::storage(&e, &req.resource))?;
    }
    Ok(empty(StatusCode::NO_CONTENT))
}
