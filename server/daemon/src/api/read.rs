//! Read and ReadMany: engine output to chunked message streams.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use sluice_engine::{Body, ClientShare, ReadError, ReadOutput};
use sluice_proto::v1;
use tokio_util::task::AbortOnDropHandle;
use tonic::Status;

use super::client_ops::{self, ClientOps};
use super::convert::meta;
use super::status::{parse_range, parse_uri, read_status};
use super::{ResponseStream, SluiceService};
use tracing::Instrument;

use crate::telemetry::metrics::Method;

pub(super) async fn read(
    svc: &SluiceService,
    client: Arc<ClientShare>,
    ops: ClientOps,
    req: v1::ReadRequest,
) -> Result<ResponseStream<v1::ReadResponse>, Status> {
    let op = ops.begin("Read", &req.uri, req.range.as_ref());
    let out = async {
        let uri = parse_uri(&req.uri)?;
        let range = parse_range(&uri, req.range.as_ref())?;
        svc.engine
            .read(&uri, range, req.no_cache, &client, false)
            .await
            .map_err(|e| read_status(&e))
    }
    .await;
    client_ops::finish(op, &out);
    let out = out?;
    svc.metrics.rpc.served(out.source);
    let sent = svc.metrics.rpc.sent(Method::read);
    let chunk = svc.config.read.chunk_size.0 as usize;
    let mut first = Some(meta(&out.meta));
    let start = out.range.start;
    let messages = chunks(out.body, chunk).scan(start, move |offset, item| {
        let msg = item.map(|data| {
            let m = v1::ReadResponse {
                meta: first.take(),
                offset: *offset,
                data,
            };
            *offset += m.data.len() as u64;
            sent.inc_by(m.data.len() as u64);
            m
        });
        futures::future::ready(Some(msg.map_err(|e| read_status(&e))))
    });
    // An empty body still sends one message: the metadata.
    let empty = v1::ReadResponse {
        meta: Some(meta(&out.meta)),
        offset: start,
        data: Bytes::new(),
    };
    let messages = with_first_or(messages, empty);
    Ok(watched(svc, "Read", messages))
}

/// `s`, ended once its client stops reading (`read.stall_timeout`).
fn watched<T: Send + 'static>(
    svc: &SluiceService,
    what: &'static str,
    s: BoxStream<'static, Result<T, Status>>,
) -> ResponseStream<T> {
    crate::stall::watch(
        s,
        svc.config.read.stall_timeout,
        what,
        svc.metrics.rpc.stalled.clone(),
        None,
    )
}

/// The body as chunks of at most `size` bytes (slices, no copies).
fn chunks(body: Body, size: usize) -> BoxStream<'static, Result<Bytes, ReadError>> {
    let split = move |b: Bytes| {
        let n = b.len().div_ceil(size);
        stream::iter((0..n).map(move |i| Ok(b.slice(i * size..((i + 1) * size).min(b.len())))))
    };
    match body {
        Body::Bytes(b) => split(b).boxed(),
        Body::Stream(s) => s
            .flat_map(move |part| match part {
                Ok(b) => split(b).boxed(),
                Err(e) => stream::once(async move { Err(e) }).boxed(),
            })
            .boxed(),
    }
}

/// `s`, or just `fallback` when `s` yields nothing.
fn with_first_or<T: Send + 'static>(
    s: impl futures::Stream<Item = Result<T, Status>> + Send + 'static,
    fallback: T,
) -> BoxStream<'static, Result<T, Status>> {
    let mut s = s.boxed().peekable();
    stream::once(async move {
        let empty = std::pin::Pin::new(&mut s).peek().await.is_none();
        if empty {
            stream::once(async { Ok(fallback) }).boxed()
        } else {
            s.boxed()
        }
    })
    .flatten()
    .boxed()
}

pub(super) fn read_many(
    svc: &SluiceService,
    client: Arc<ClientShare>,
    ops: ClientOps,
    req: v1::ReadManyRequest,
) -> Result<ResponseStream<v1::ReadManyResponse>, Status> {
    let cfg = &svc.config.read;
    if req.items.len() > cfg.read_many_max_items {
        let status = Status::invalid_argument(format!(
            "{} items exceed read.read_many_max_items = {}",
            req.items.len(),
            cfg.read_many_max_items
        ));
        return Err(status);
    }
    let concurrency = match req.concurrency as usize {
        0 => cfg.read_many_concurrency,
        n => n.min(cfg.read_many_max_concurrency),
    };
    let chunk = cfg.chunk_size.0 as usize;
    let engine = svc.engine.clone();
    let rpc = svc.metrics.rpc.clone();
    // Each item is read by a task of its own (aborted with the stream), so
    // it runs to its end — and gives back its request slots — whether or
    // not the client keeps reading; what it then holds is charged to the
    // client's share.
    let fetches = stream::iter(req.items.into_iter().enumerate()).map(move |(i, item)| {
        let (engine, client) = (engine.clone(), client.clone());
        let op = ops.begin("ReadMany", &item.uri, item.range.as_ref());
        let task = AbortOnDropHandle::new(tokio::spawn(
            async move {
                let res = async {
                    let uri = parse_uri(&item.uri)?;
                    let range = parse_range(&uri, item.range.as_ref())?;
                    engine
                        .read(&uri, range, false, &client, false)
                        .await
                        .map_err(|e| read_status(&e))
                }
                .await;
                client_ops::finish(op, &res);
                res
            }
            .in_current_span(),
        ));
        async move {
            let res = match task.await {
                Ok(res) => res,
                Err(e) => Err(Status::internal(format!("item {i}: {e}"))),
            };
            (i as u32, res)
        }
    });
    let results: BoxStream<'static, (u32, Result<ReadOutput, Status>)> = if req.ordered {
        fetches.buffered(concurrency).boxed()
    } else {
        fetches.buffer_unordered(concurrency).boxed()
    };
    let sent = rpc.sent(Method::read_many);
    let messages = results.flat_map(move |(index, res)| match res {
        Ok(out) => {
            rpc.served(out.source);
            item_messages(index, out, chunk, sent.clone())
        }
        Err(status) => stream::once(async move { Ok(item_error(index, &status)) }).boxed(),
    });
    Ok(watched(svc, "ReadMany", messages.boxed()))
}

fn item_error(index: u32, status: &Status) -> v1::ReadManyResponse {
    v1::ReadManyResponse {
        index,
        last: true,
        error: Some(v1::ItemError {
            code: status.code() as i32,
            message: status.message().to_owned(),
        }),
        ..Default::default()
    }
}

/// One item's chunks, back to back; the last one has `last` set. A failure
/// half-way becomes an item error (the client drops the partial data).
fn item_messages(
    index: u32,
    out: ReadOutput,
    chunk: usize,
    sent: prometheus_client::metrics::counter::Counter,
) -> BoxStream<'static, Result<v1::ReadManyResponse, Status>> {
    let mut first = Some(meta(&out.meta));
    let body = chunks(out.body, chunk).peekable();
    stream::unfold(Some(Box::pin(body)), move |state| {
        let mut first_meta = first.take();
        let sent = sent.clone();
        async move {
            let mut body = state?;
            let next = body.next().await;
            let last = body.as_mut().peek().await.is_none();
            let msg = match next {
                None => v1::ReadManyResponse {
                    index,
                    meta: first_meta.take(),
                    last: true,
                    ..Default::default()
                },
                Some(Ok(data)) => {
                    sent.inc_by(data.len() as u64);
                    v1::ReadManyResponse {
                        index,
                        meta: first_meta.take(),
                        offset: 0,
                        data,
                        last,
                        error: None,
                    }
                }
                Some(Err(e)) => return Some((Ok(item_error(index, &read_status(&e))), None)),
            };
            let done = msg.last;
            Some((Ok(msg), if done { None } else { Some(body) }))
        }
    })
    // Offsets follow from the lengths of the chunks before.
    .scan(
        out.range.start,
        |pos, msg: Result<v1::ReadManyResponse, Status>| {
            let msg = msg.map(|mut m| {
                m.offset = *pos;
                *pos += m.data.len() as u64;
                m
            });
            futures::future::ready(Some(msg))
        },
    )
    .boxed()
}
