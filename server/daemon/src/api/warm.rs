//! Warm and Evict: filling the cache from a prefix ahead of a job, and
//! emptying it of one.
//!
//! Warm lists the prefix page by page and reads each listed object through
//! the ordinary read path, as the calling client (its fair share applies),
//! `concurrency` at a time; an object already cached and valid costs
//! nothing. It stops before what it warmed (or found cached) would exceed
//! the arena: past that point it would only evict what it warmed first.
//! Progress goes out as it changes (only the latest counts are kept for a
//! client that reads slowly); a client that goes away stops the warm.
//!
//! Given URIs instead of a prefix (an epoch plan's first items), it reads
//! those in their order; their sizes are learned as they are read, so it
//! stops issuing reads once what it read, plus what is in flight at the
//! average size so far, would exceed the arena.

use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use sluice_engine::arena::GRANULE;
use sluice_engine::{Body, ClientShare, ReadError, Source};
use sluice_proto::v1;
use sluice_storage::{ListOptions, ObjectUri};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;
use tonic::Status;
use tracing::Instrument;

use super::status::{parse_uri, read_status, storage_status};
use super::{ResponseStream, SluiceService};

/// Objects read at once when the request leaves it to the daemon.
const DEFAULT_CONCURRENCY: usize = 4;
/// Most objects read at once.
const MAX_CONCURRENCY: usize = 64;
/// Objects per listing page.
const PAGE: usize = 1000;
/// Most URIs one warm names.
const MAX_URIS: usize = 100_000;

/// What a warm reads.
enum Target {
    Prefix(ObjectUri),
    Uris(Vec<ObjectUri>),
}

fn target(svc: &SluiceService, req: &v1::WarmRequest) -> Result<Target, Status> {
    let routed = |uri: ObjectUri| {
        svc.engine
            .backend(&uri)
            .map(|_| uri)
            .map_err(|e| read_status(&e))
    };
    if req.uris.is_empty() {
        return routed(parse_uri(&req.prefix)?).map(Target::Prefix);
    }
    if !req.prefix.is_empty() {
        return Err(Status::invalid_argument(
            "a warm takes a prefix or uris, not both",
        ));
    }
    if req.uris.len() > MAX_URIS {
        return Err(Status::invalid_argument(format!(
            "a warm of {} uris; at most {MAX_URIS}",
            req.uris.len()
        )));
    }
    req.uris
        .iter()
        .map(|u| routed(parse_uri(u)?))
        .collect::<Result<_, _>>()
        .map(Target::Uris)
}

pub(super) fn warm(
    svc: &SluiceService,
    client: Arc<ClientShare>,
    req: v1::WarmRequest,
) -> Result<ResponseStream<v1::WarmProgress>, Status> {
    let target = target(svc, &req)?;
    let concurrency = match req.concurrency as usize {
        0 => DEFAULT_CONCURRENCY,
        n => n.min(MAX_CONCURRENCY),
    };
    let (tx, rx) = watch::channel(v1::WarmProgress::default());
    let svc = svc.clone();
    let task = tokio::spawn(
        async move {
            let res = match &target {
                Target::Prefix(prefix) => run(&svc, &client, prefix, concurrency, &tx).await,
                Target::Uris(uris) => {
                    run_uris(&svc, &client, uris, concurrency, &tx).await;
                    Ok(())
                }
            };
            if res.is_ok() {
                tx.send_modify(|p| p.done = true);
            }
            res
        }
        .in_current_span(),
    );
    let task = AbortOnDropHandle::new(task);
    // Yields each new state of the counts; after `done`, ends, or ends with
    // the warm's error.
    let stream = futures::stream::unfold(Some((rx, task)), |state| async move {
        let (mut rx, mut task) = state?;
        if rx.changed().await.is_err() {
            // The warm ended without `done`: its error.
            let err = match (&mut task).await {
                Ok(Err(status)) => status,
                _ => Status::internal("the warm ended without an answer"),
            };
            return Some((Err(err), None));
        }
        let progress = rx.borrow_and_update().clone();
        let done = progress.done;
        Some((Ok(progress), (!done).then_some((rx, task))))
    });
    Ok(Box::pin(stream))
}

async fn run(
    svc: &SluiceService,
    client: &Arc<ClientShare>,
    prefix: &ObjectUri,
    concurrency: usize,
    progress: &watch::Sender<v1::WarmProgress>,
) -> Result<(), Status> {
    let storage = svc.engine.backend(prefix).map_err(|e| read_status(&e))?;
    let max_cached = svc.engine.max_cached();
    let capacity = svc.engine.arena().capacity();
    let mut room = capacity;
    let mut opts = ListOptions {
        delimiter: None,
        page_size: PAGE,
        page_token: None,
    };
    let mut reads = FuturesUnordered::new();
    'pages: loop {
        let page = storage
            .list(prefix, &opts)
            .await
            .map_err(|e| storage_status(&e))?;
        progress.send_modify(|p| {
            p.listed_objects += page.objects.len() as u64;
            p.listed_bytes += page.objects.iter().map(|o| o.size).sum::<u64>();
        });
        for object in &page.objects {
            if object.size > max_cached {
                progress.send_modify(|p| p.skipped_objects += 1);
                continue;
            }
            // What the object takes in the arena: whole granules.
            let takes = object.size.next_multiple_of(GRANULE);
            if takes > room {
                progress.send_modify(|p| p.cache_full = true);
                break 'pages;
            }
            room -= takes;
            let uri = match ObjectUri::parse(&object.uri) {
                Ok(uri) => uri,
                Err(_) => {
                    record_failure(progress, &format!("{}: unparsable URI", object.uri));
                    continue;
                }
            };
            while reads.len() >= concurrency {
                if let Some(done) = reads.next().await {
                    record(progress, done);
                }
            }
            reads.push(warm_one(svc, client, uri));
        }
        match page.next_token {
            Some(token) => opts.page_token = Some(token),
            None => break,
        }
    }
    progress.send_modify(|p| p.listed = true);
    while let Some(done) = reads.next().await {
        record(progress, done);
    }
    Ok(())
}

async fn run_uris(
    svc: &SluiceService,
    client: &Arc<ClientShare>,
    uris: &[ObjectUri],
    concurrency: usize,
    progress: &watch::Sender<v1::WarmProgress>,
) {
    progress.send_modify(|p| {
        p.listed_objects = uris.len() as u64;
        p.listed = true;
    });
    let capacity = svc.engine.arena().capacity();
    let max_cached = svc.engine.max_cached();
    // Arena bytes of the objects read so far, and how many.
    let (mut used, mut read) = (0u64, 0u64);
    let mut reads = FuturesUnordered::new();
    let note = |done: Result<(bool, u64), String>, used: &mut u64, read: &mut u64| {
        match &done {
            Ok((_, size)) if *size > max_cached => {
                progress.send_modify(|p| p.skipped_objects += 1);
                return;
            }
            Ok((_, size)) => {
                *used += size.next_multiple_of(GRANULE);
                *read += 1;
            }
            Err(_) => {}
        }
        record(progress, done);
    };
    for uri in uris {
        while reads.len() >= concurrency {
            if let Some(done) = reads.next().await {
                note(done, &mut used, &mut read);
            }
        }
        let average = used.checked_div(read).unwrap_or(0);
        if used + average * (reads.len() as u64 + 1) > capacity {
            progress.send_modify(|p| p.cache_full = true);
            break;
        }
        reads.push(warm_one(svc, client, uri.clone()));
    }
    while let Some(done) = reads.next().await {
        note(done, &mut used, &mut read);
    }
}

/// Reads one object into the cache: whether it was cached already, and its
/// size.
async fn warm_one(
    svc: &SluiceService,
    client: &Arc<ClientShare>,
    uri: ObjectUri,
) -> Result<(bool, u64), String> {
    let out = svc
        .engine
        .read(&uri, None, false, client, false)
        .await
        .map_err(|e: ReadError| read_status(&e).message().to_owned())?;
    let size = out.meta.size;
    if let Body::Stream(mut parts) = out.body {
        // Not cacheable after all (it grew past the limit since the
        // listing): read through so the backend's answer is checked.
        while let Some(part) = parts.next().await {
            part.map_err(|e| read_status(&e).message().to_owned())?;
        }
    }
    Ok((out.source == Source::Cache, size))
}

fn record(progress: &watch::Sender<v1::WarmProgress>, done: Result<(bool, u64), String>) {
    match done {
        Ok((true, size)) => progress.send_modify(|p| {
            p.cached_objects += 1;
            p.cached_bytes += size;
        }),
        Ok((false, size)) => progress.send_modify(|p| {
            p.warmed_objects += 1;
            p.warmed_bytes += size;
        }),
        Err(message) => record_failure(progress, &message),
    }
}

fn record_failure(progress: &watch::Sender<v1::WarmProgress>, message: &str) {
    progress.send_modify(|p| {
        p.failed_objects += 1;
        if p.first_error.is_empty() {
            p.first_error = message.to_owned();
        }
    });
}

pub(super) fn evict(
    svc: &SluiceService,
    peer: Option<&crate::listen::Peer>,
    req: v1::EvictRequest,
) -> Result<v1::EvictResponse, Status> {
    (|| {
        let prefix = parse_uri(&req.prefix)?;
        let uid = peer.and_then(|p| p.cred()).map(|(uid, _, _)| uid);
        if !uid.is_some_and(|uid| svc.is_admin(uid)) {
            return Err(Status::permission_denied(format!(
                "{prefix}: evicting is for root, the daemon's user and server.admin_uids, \
                 over the Unix socket"
            )));
        }
        let evicted = svc.engine.invalidate_prefix(&prefix) as u64;
        tracing::info!(%prefix, evicted, uid, "evicted from the cache");
        Ok(v1::EvictResponse { evicted })
    })()
}
