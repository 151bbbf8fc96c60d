//! Ranged GET of a `gs://` object: one media request, no metadata request
//! before it.
//!
//! `GET {endpoint}/storage/v1/b/{bucket}/o/{object}?alt=media` with
//! `Range: bytes=a-b`. The whole size comes from `Content-Range` (ranged)
//! or `Content-Length` (whole object), the generation from
//! `x-goog-generation`. A read held to a version (a later part of a ranged
//! fetch, a revalidation) pins it twice: `generation=G` reads exactly that
//! generation and `ifGenerationMatch=G` fails unless it is still the live
//! one; a 412, or a 404 for a pinned generation that no longer exists, is
//! `Changed`. The returned generation is compared as well.
//!
//! gcloud-storage's download hides the response headers, which carry the
//! size and generation; so this request is made directly, on the same HTTP
//! client and token.
//!
//! Empty objects and 416 as for `s3://` (`s3/get.rs`): a 416 for a range
//! starting at 0 is repeated once without a range.

use std::ops::Range;

use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, HeaderMap, LAST_MODIFIED};

use super::http::{self, status_error, transport_error};
use super::{GcsStorage, generation_of, object_url};
use crate::{
    ErrorKind, GetOptions, GetResult, ObjectMeta, ObjectUri, Result, StorageError, Version,
};

/// The message of a 416, told apart from other errors.
const UNSATISFIABLE: &str = "gcs get: http 416 (range not satisfiable)";

pub(super) async fn get(gcs: &GcsStorage, uri: &ObjectUri, opts: GetOptions) -> Result<GetResult> {
    let shown = uri.to_string();
    if uri.key().is_empty() {
        return Err(StorageError::invalid(shown, "no object name"));
    }
    if let Some(r) = &opts.range
        && r.start > r.end
    {
        return Err(StorageError::invalid(shown, "range start is after its end"));
    }
    let pinned = match &opts.if_match {
        Some(v) => generation_of(&shown, v)?,
        None => None,
    };
    let first = http::retry(&gcs.config, || send(gcs, uri, opts.range.as_ref(), pinned)).await;
    let response = match first {
        Ok(r) => r,
        Err(e) if e.message() == UNSATISFIABLE => {
            return match opts.range {
                Some(r) if r.start == 0 => {
                    let whole = http::retry(&gcs.config, || send(gcs, uri, None, pinned)).await?;
                    let result = answer(uri, None, opts.if_match.as_ref(), whole)?;
                    if result.meta.size != 0 {
                        return Err(StorageError::new(
                            ErrorKind::Changed,
                            shown,
                            "object changed: it was empty and now has bytes",
                        ));
                    }
                    Ok(result)
                }
                Some(r) => Err(StorageError::invalid(
                    shown,
                    format!(
                        "range {}..{} starts at or past the end of the object",
                        r.start, r.end
                    ),
                )),
                None => Err(e),
            };
        }
        Err(e) if pinned.is_some() && e.kind() == ErrorKind::NotFound => {
            return Err(StorageError::new(
                ErrorKind::Changed,
                shown,
                "object changed while being read (its generation is gone)",
            )
            .with_source(e));
        }
        Err(e) => return Err(e),
    };
    answer(uri, opts.range, opts.if_match.as_ref(), response)
}

/// One media GET; its error statuses are errors.
async fn send(
    gcs: &GcsStorage,
    uri: &ObjectUri,
    range: Option<&Range<u64>>,
    generation: Option<i64>,
) -> Result<reqwest::Response> {
    let shown = uri.to_string();
    let mut url = object_url(&gcs.endpoint, uri);
    url.push_str("?alt=media");
    if let Some(g) = generation {
        url.push_str(&format!("&generation={g}&ifGenerationMatch={g}"));
    }
    let mut req = gcs
        .http
        .get(&url)
        // The stored bytes, never a decompressed rendering of them.
        .header(reqwest::header::ACCEPT_ENCODING, "identity");
    if let Some(r) = range {
        // Inclusive end; `a..a` asks for byte `a` (as `s3/get.rs`).
        let last = r.end.max(r.start + 1) - 1;
        req = req.header(reqwest::header::RANGE, format!("bytes={}-{last}", r.start));
    }
    let token = gcs.auth().await?.token.as_ref();
    if let Some(token) = http::bearer(token, &shown).await? {
        req = req.header(reqwest::header::AUTHORIZATION, token);
    }
    let sent = tokio::time::timeout(gcs.config.attempt_timeout, req.send()).await;
    let response = match sent {
        Err(_) => {
            return Err(StorageError::new(
                ErrorKind::Unavailable,
                shown,
                "gcs get: no response headers within [storage.gcs] attempt_timeout",
            ));
        }
        Ok(Err(e)) => return Err(transport_error(&shown, "get", e)),
        Ok(Ok(r)) => r,
    };
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
        return Err(StorageError::invalid(shown, UNSATISFIABLE));
    }
    Err(status_error(&shown, "get", status, response.headers()))
}

/// Checks a response against the request and wraps its body.
fn answer(
    uri: &ObjectUri,
    requested: Option<Range<u64>>,
    if_match: Option<&Version>,
    response: reqwest::Response,
) -> Result<GetResult> {
    let shown = uri.to_string();
    let headers = response.headers();
    let (sent, size) = sent_span(headers, &shown)?;
    let generation = headers
        .get("x-goog-generation")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let meta = ObjectMeta {
        uri: shown.clone(),
        size,
        etag: generation.clone(),
        last_modified: headers
            .get(LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok()),
        version: generation,
    };
    if let Some(want) = if_match {
        want.check(&shown, &meta)?;
    }
    let range = crate::checked::answered_range(uri, requested, size, &sent)?;
    let body = if range.is_empty() {
        Box::pin(futures::stream::empty()) as crate::ByteStream
    } else {
        let expected = range.end - range.start;
        crate::checked::checked_body(
            Box::pin(response.bytes_stream()),
            shown,
            expected,
            "gcs get",
        )
    };
    Ok(GetResult { meta, range, body })
}

/// The bytes the response carries and the whole object's size.
fn sent_span(headers: &HeaderMap, shown: &str) -> Result<(Range<u64>, u64)> {
    let length = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let range = headers.get(CONTENT_RANGE).and_then(|v| v.to_str().ok());
    crate::checked::sent_span(range, length, shown)
}
