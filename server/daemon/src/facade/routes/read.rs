//! GetObject and HeadObject: ranges, conditional headers, streamed bodies.
//!
//! GetObject reads through the engine exactly like the gRPC `Read` (same
//! cache, same coalescing, the connection's client share), and answers
//! with the engine's buffers as they are: a cached object's slice in one
//! frame, a large object's parts as they arrive. A suffix range
//! (`bytes=-n`) needs the size first (one HEAD to the backend); every
//! other range goes to the engine as asked. Conditions are evaluated on
//! the object the read found, in RFC 9110's order (If-Match, else
//! If-Unmodified-Since → 412; If-None-Match, else If-Modified-Since → 304).

use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use http::{HeaderValue, Response, StatusCode};
use sluice_storage::{ErrorKind, ObjectMeta, etag_matches};

use super::{Req, Resp, empty};
use crate::errors::{Category, log_failure};
use crate::facade::error::S3Error;
use crate::facade::time;

/// A `Range` header's one range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Spec {
    /// `bytes=a-b` (`b` inclusive) or `bytes=a-`.
    From(u64, Option<u64>),
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

/// Parses `bytes=…`; `None` for what S3 ignores (several ranges, other
/// units), an error for a malformed single range.
pub(super) fn parse_range(h: &str) -> Result<Option<Spec>, S3Error> {
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let bad = || {
        S3Error::new(
            "InvalidRange",
            416,
            "the requested range is not satisfiable",
        )
    };
    let (a, b) = spec.trim().split_once('-').ok_or_else(bad)?;
    let num = |s: &str| s.trim().parse::<u64>().map_err(|_| bad());
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, false) => Ok(Some(Spec::Suffix(num(b)?))),
        (false, true) => Ok(Some(Spec::From(num(a)?, None))),
        (false, false) => {
            let (a, b) = (num(a)?, num(b)?);
            if b < a {
                // RFC 9110: an invalid range is ignored.
                return Ok(None);
            }
            Ok(Some(Spec::From(a, Some(b))))
        }
        (true, true) => Err(bad()),
    }
}

fn not_satisfiable(resource: &str, size: Option<u64>) -> S3Error {
    let mut e = S3Error::new(
        "InvalidRange",
        416,
        "the requested range is not satisfiable",
    )
    .on(resource);
    if let Some(size) = size {
        e.headers.push(("content-range", format!("bytes */{size}")));
    }
    e
}

/// GetObject.
pub(super) async fn get(req: Req<'_>) -> Result<Resp, S3Error> {
    let uri = req.uri()?;
    let state = req.state;
    if req.query.get("partNumber").is_some_and(|n| n != "1") {
        return Err(S3Error::not_implemented("GetObject of a part other than 1"));
    }
    let spec = match req.header("range") {
        Some(h) => parse_range(h).map_err(|e| e.on(req.resource.clone()))?,
        None => None,
    };
    let range: Option<Range<u64>> = match spec {
        None => None,
        Some(Spec::From(a, b)) => Some(a..b.map_or(u64::MAX, |b| b.saturating_add(1))),
        Some(Spec::Suffix(n)) => {
            let size = head_meta(&req).await?.size;
            if n == 0 {
                return Err(not_satisfiable(&req.resource, Some(size)));
            }
            Some(size.saturating_sub(n)..size)
        }
    };
    let out = match state
        .engine
        .read(&uri, range.clone(), false, &req.client, false)
        .await
    {
        Ok(out) => out,
        Err(e) if range.is_some() && e.storage_kind() == Some(ErrorKind::InvalidArgument) => {
            let size = head_meta(&req).await.ok().map(|m| m.size);
            return Err(not_satisfiable(&req.resource, size));
        }
        Err(e) => return Err(S3Error::read(&e, &req.resource)),
    };
    state.metrics.read(out.source);
    if let Some(status) = preconditions(&req, &out.meta)? {
        return Ok(with_meta(empty(status), &out.meta));
    }
    let partial = range.is_some() && out.meta.size > 0;
    let status = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let len = out.range.end - out.range.start;
    let mut resp = with_meta(Response::new(body(&req, out.body)), &out.meta);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    if partial {
        let cr = format!(
            "bytes {}-{}/{}",
            out.range.start,
            out.range.end.saturating_sub(1),
            out.meta.size
        );
        if let Ok(v) = HeaderValue::from_str(&cr) {
            h.insert(http::header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

/// The response body: the engine's buffers as they come, ended if the
/// client stops reading for `read.stall_timeout`.
fn body(req: &Req<'_>, body: sluice_engine::Body) -> Body {
    let state = req.state;
    let parts: BoxStream<'static, Result<Bytes, tonic::Status>> = match body {
        sluice_engine::Body::Bytes(b) => stream::once(async move { Ok(b) }).boxed(),
        sluice_engine::Body::Stream(s) => s
            .map(|part| {
                part.map_err(|e| {
                    let category = Category::of_read(&e);
                    log_failure(category.row().s3, category.server_fault(), &e);
                    tonic::Status::internal("the read failed after the response began")
                })
            })
            .boxed(),
    };
    let sent = state.metrics.sent.clone();
    let watched = crate::stall::watch(
        parts,
        state.stall_timeout,
        "GetObject",
        state.metrics.stalled.clone(),
        None,
    );
    Body::from_stream(watched.map(move |part| match part {
        Ok(b) => {
            sent.inc_by(b.len() as u64);
            Ok(b)
        }
        Err(status) => Err(std::io::Error::other(status.message().to_owned())),
    }))
}

/// HeadObject.
pub(super) async fn head(req: &Req<'_>) -> Result<Resp, S3Error> {
    let meta = head_meta(req).await?;
    if let Some(status) = preconditions(req, &meta)? {
        return Ok(with_meta(empty(status), &meta));
    }
    let mut resp = with_meta(empty(StatusCode::OK), &meta);
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(meta.size));
    Ok(resp)
}

/// The object's metadata: the cache's while its entry is fresh.
async fn head_meta(req: &Req<'_>) -> Result<ObjectMeta, S3Error> {
    let uri = req.uri()?;
    req.state
        .engine
        .head(&uri)
        .await
        .map_err(|e| S3Error::read(&e, &req.resource))
}

/// The answer the conditional headers ask for instead of the object, if
/// any: 412 or 304.
fn preconditions(req: &Req<'_>, meta: &ObjectMeta) -> Result<Option<StatusCode>, S3Error> {
    let etag = meta.etag.as_deref().unwrap_or_default();
    let any_matches = |list: &str| {
        list.split(',')
            .any(|t| t.trim() == "*" || etag_matches(t, etag))
    };
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let modified = meta.last_modified.map(secs);
    let date = |name: &str| req.header(name).and_then(time::parse_http_date).map(secs);
    let failed = || {
        S3Error::new(
            "PreconditionFailed",
            412,
            "at least one of the preconditions did not hold",
        )
        .on(req.resource.clone())
    };
    if let Some(list) = req.header("if-match") {
        if !any_matches(list) {
            return Err(failed());
        }
    } else if let (Some(since), Some(m)) = (date("if-unmodified-since"), modified)
        && m > since
    {
        return Err(failed());
    }
    if let Some(list) = req.header("if-none-match") {
        if any_matches(list) {
            return Ok(Some(StatusCode::NOT_MODIFIED));
        }
    } else if let (Some(since), Some(m)) = (date("if-modified-since"), modified)
        && m <= since
    {
        return Ok(Some(StatusCode::NOT_MODIFIED));
    }
    Ok(None)
}

/// ETag, Last-Modified, Accept-Ranges and Content-Type of `meta`.
fn with_meta(mut resp: Resp, meta: &ObjectMeta) -> Resp {
    let h = resp.headers_mut();
    if meta.etag.is_some()
        && let Ok(v) = HeaderValue::from_str(&quoted(meta.etag.as_deref()))
    {
        h.insert(http::header::ETAG, v);
    }
    if let Some(t) = meta.last_modified
        && let Ok(v) = HeaderValue::from_str(&time::http_date(t))
    {
        h.insert(http::header::LAST_MODIFIED, v);
    }
    h.insert(
        http::header::ACCEPT_RANGES,
        HeaderValue::from_static("bytes"),
    );
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// ETag as S3 shows it: in quotes.
pub(super) fn quoted(etag: Option<&str>) -> String {
    match etag {
        Some(e) if e.starts_with('"') => e.to_owned(),
        Some(e) => format!("\"{e}\""),
        None => "\"\"".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_as_s3_reads_them() {
        assert_eq!(
            parse_range("bytes=0-9").unwrap(),
            Some(Spec::From(0, Some(9)))
        );
        assert_eq!(parse_range("bytes=5-").unwrap(), Some(Spec::From(5, None)));
        assert_eq!(parse_range("bytes=-3").unwrap(), Some(Spec::Suffix(3)));
        assert_eq!(
            parse_range("bytes=0-1,4-5").unwrap(),
            None,
            "several ranges: whole object"
        );
        assert_eq!(parse_range("items=0-1").unwrap(), None);
        assert_eq!(parse_range("bytes=9-2").unwrap(), None);
        assert_eq!(parse_range("bytes=x-2").unwrap_err().status, 416);
        assert_eq!(parse_range("bytes=-").unwrap_err().code, "InvalidRange");
    }
}
