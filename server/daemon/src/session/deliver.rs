//! One fetch of a session: read through the engine, then deliver the
//! result as leased extents (shared memory) or as chunks (stream).

use std::time::Instant;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use sluice_engine::{Body, ReadError, ReadOutput};
use sluice_proto::v1;
use sluice_proto::v1::session_response::Msg as Out;
use std::sync::Arc;
use tonic::Status;

use super::SessionCtx;
use crate::api::convert::meta;
use crate::api::status::{parse_range, parse_uri, read_status};

/// The span of one fetch (traces only): its outcome and size are recorded
/// when the read returns.
pub(super) fn span(req: &v1::FetchRequest) -> tracing::Span {
    tracing::info_span!(
        target: crate::telemetry::traces::TARGET,
        "session_fetch",
        otel.name = "session fetch",
        fetch.id = req.id,
        fetch.source = tracing::field::Empty,
        object.size = tracing::field::Empty,
        bytes = tracing::field::Empty,
    )
}

/// Runs one fetch to completion (or until the client is gone).
pub(super) async fn fetch(ctx: Arc<SessionCtx>, req: v1::FetchRequest) {
    let started = Instant::now();
    let op = ctx.ops.begin("Session", &req.uri, req.range.as_ref());
    let res = async {
        let uri = parse_uri(&req.uri)?;
        let range = parse_range(&uri, req.range.as_ref())?;
        ctx.engine
            .read(&uri, range, false, &ctx.client, ctx.shm)
            .await
            .map_err(|e| read_status(&e))
    }
    .await;
    crate::api::client_ops::finish(op, &res);
    let ready = matches!(&res, Ok(out) if out.source == sluice_engine::Source::Cache);
    if let Ok(out) = &res {
        let span = tracing::Span::current();
        span.record("fetch.source", out.source.as_str());
        span.record("object.size", out.meta.size);
        span.record("bytes", out.range.end - out.range.start);
    }
    let waited = started.elapsed();
    ctx.metrics.session.observe_wait(waited, ready);
    ctx.stall.observe(waited, ready);
    if let Ok(out) = &res {
        ctx.stat
            .fetched(ready, waited, out.range.end - out.range.start);
    }
    let delivered = match res {
        Ok(out) => {
            ctx.metrics.rpc.served(out.source);
            if ctx.shm {
                extents(&ctx, req.id, out).await
            } else {
                chunks(&ctx, req.id, out).await
            }
        }
        Err(status) => Err(status),
    };
    if let Err(status) = delivered {
        let error = v1::FetchError {
            id: req.id,
            code: status.code() as i32,
            message: status.message().to_owned(),
        };
        ctx.send(Out::Error(error)).await;
    }
}

fn pieces(body: Body) -> BoxStream<'static, Result<Bytes, ReadError>> {
    match body {
        Body::Bytes(b) => stream::once(async move { Ok(b) }).boxed(),
        Body::Stream(s) => s,
    }
}

/// Shared memory: one leased extent per piece (the whole object, or each
/// part of a streamed one), in order.
async fn extents(ctx: &SessionCtx, id: u64, out: ReadOutput) -> Result<(), Status> {
    let uri = out.meta.uri.clone();
    let mut first = Some(meta(&out.meta));
    let mut offset = out.range.start;
    // What a piece pins: a streamed part is its own buffer; a body in one
    // piece pins what the read says (a cached entry, or a larger buffer).
    let whole = match &out.body {
        Body::Bytes(_) => Some(out.pinned),
        Body::Stream(_) => None,
    };
    let mut parts = pieces(out.body).peekable();
    let delivered = ctx.metrics.session.delivered("shm");
    let mut sent_any = false;
    while let Some(piece) = parts.next().await {
        let piece = piece.map_err(|e| read_status(&e))?;
        let last = std::pin::Pin::new(&mut parts).peek().await.is_none();
        let len = piece.len() as u64;
        let (segment, segment_offset, lease_id) = if len == 0 {
            (0, 0, 0)
        } else {
            let (segment, at) = ctx.engine.arena().locate(piece.as_ptr()).ok_or_else(|| {
                Status::internal(format!("{uri}: payload outside the shared-memory arena"))
            })?;
            // A slice of a cached object pins the whole entry; any other
            // piece is its own buffer.
            let pinned = whole.unwrap_or(len).max(len);
            let lease = ctx
                .leases
                .lease(&uri, piece, out.pin.clone(), pinned)
                .await?;
            (segment, at, lease)
        };
        let extent = v1::LeasedExtent {
            id,
            meta: first.take(),
            object_offset: offset,
            segment,
            segment_offset,
            length: len,
            lease_id,
            last,
        };
        offset += len;
        delivered.inc_by(len);
        sent_any = true;
        if !ctx.send(Out::Extent(extent)).await {
            return Ok(()); // the client is gone; its leases go with the session
        }
    }
    if !sent_any {
        // A body with no pieces still completes the fetch.
        let extent = v1::LeasedExtent {
            id,
            meta: first.take(),
            object_offset: offset,
            last: true,
            ..Default::default()
        };
        ctx.send(Out::Extent(extent)).await;
    }
    Ok(())
}

/// Stream delivery: chunks of `read.chunk_size`, sliced, in order.
async fn chunks(ctx: &SessionCtx, id: u64, out: ReadOutput) -> Result<(), Status> {
    let size = ctx.config.read.chunk_size.0 as usize;
    let mut first = Some(meta(&out.meta));
    let mut offset = out.range.start;
    let delivered = ctx.metrics.session.delivered("stream");
    let mut parts = pieces(out.body).peekable();
    let mut sent_any = false;
    while let Some(piece) = parts.next().await {
        let piece = piece.map_err(|e| read_status(&e))?;
        let more_parts = std::pin::Pin::new(&mut parts).peek().await.is_some();
        let n = piece.len().div_ceil(size);
        for i in 0..n {
            let data = piece.slice(i * size..((i + 1) * size).min(piece.len()));
            let len = data.len() as u64;
            let chunk = v1::FetchChunk {
                id,
                meta: first.take(),
                offset,
                data,
                last: !more_parts && i + 1 == n,
            };
            offset += len;
            delivered.inc_by(len);
            sent_any = true;
            if !ctx.send(Out::Chunk(chunk)).await {
                return Ok(());
            }
        }
    }
    if !sent_any {
        let chunk = v1::FetchChunk {
            id,
            meta: first.take(),
            offset,
            data: Bytes::new(),
            last: true,
        };
        ctx.send(Out::Chunk(chunk)).await;
    }
    Ok(())
}
