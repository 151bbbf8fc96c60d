//! Ranged GET: one request, no HEAD before it.
//!
//! The whole object's size comes from `Content-Range: bytes a-b/total`
//! (ranged) or `Content-Length` (whole object). `If-Match` is sent, and the
//! returned ETag is compared as well, because some S3-compatible servers
//! ignore the header.
//!
//! Empty objects: S3 answers any `Range` on an empty object with 416, while
//! the contract says a range starting at 0 of an empty object is an empty
//! body. So a 416 for a range starting at 0 is retried once without a range;
//! if the object is empty, that is the answer. Any other 416 is
//! `InvalidArgument`. An empty range `a..a` is sent as `bytes=a-a` (HTTP
//! cannot express an empty range), which checks `a` against the size, and
//! its one byte is dropped.
//!
//! The body is streamed chunk by chunk; its length is checked against the
//! range, and a transport error mid-body is `Unavailable` so that the engine
//! retries the part.

use std::ops::Range;

use aws_sdk_s3::Client;
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use bytes::Bytes;

use super::errors;
use super::{object_key, system_time};
use crate::{
    ErrorKind, GetOptions, GetResult, ObjectMeta, ObjectUri, Result, StorageError, Version,
};

pub(super) async fn get(client: &Client, uri: &ObjectUri, opts: GetOptions) -> Result<GetResult> {
    object_key(uri)?;
    if let Some(r) = &opts.range
        && r.start > r.end
    {
        return Err(StorageError::invalid(
            uri.to_string(),
            "range start is after its end",
        ));
    }
    let if_match = opts.if_match.as_ref();
    match send(client, uri, opts.range.as_ref(), if_match).await {
        Ok(out) => answer(uri, opts.range, if_match, out),
        Err(err) if errors::status_of(&err) == Some(416) => match opts.range {
            Some(r) if r.start == 0 => empty_object(client, uri, if_match).await,
            Some(r) => Err(StorageError::invalid(
                uri.to_string(),
                format!(
                    "range {}..{} starts at or past the end of the object",
                    r.start, r.end
                ),
            )
            .with_source(err)),
            None => Err(errors::map(err, uri, "get")),
        },
        Err(err) => Err(errors::map(err, uri, "get")),
    }
}

type SendResult = std::result::Result<
    GetObjectOutput,
    aws_sdk_s3::error::SdkError<
        aws_sdk_s3::operation::get_object::GetObjectError,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
>;

async fn send(
    client: &Client,
    uri: &ObjectUri,
    range: Option<&Range<u64>>,
    if_match: Option<&Version>,
) -> SendResult {
    let mut req = client.get_object().bucket(uri.bucket()).key(uri.key());
    if let Some(r) = range {
        // Inclusive end; `a..a` asks for byte `a` (see the module comment).
        let last = r.end.max(r.start + 1) - 1;
        req = req.range(format!("bytes={}-{last}", r.start));
    }
    match if_match {
        Some(Version {
            etag: Some(etag), ..
        }) => req = req.if_match(etag),
        Some(Version {
            last_modified: Some(at),
            ..
        }) => req = req.if_unmodified_since(aws_smithy_types::DateTime::from(*at)),
        _ => {}
    }
    req.send().await
}

/// The answer to a 416 on a range starting at 0: the object must be empty.
async fn empty_object(
    client: &Client,
    uri: &ObjectUri,
    if_match: Option<&Version>,
) -> Result<GetResult> {
    let out = send(client, uri, None, if_match)
        .await
        .map_err(|e| errors::map(e, uri, "get"))?;
    let result = answer(uri, None, if_match, out)?;
    if result.meta.size != 0 {
        return Err(StorageError::new(
            ErrorKind::Changed,
            uri.to_string(),
            "object changed: it was empty and now has bytes",
        ));
    }
    Ok(result)
}

/// Checks a response against the request and wraps its body.
fn answer(
    uri: &ObjectUri,
    requested: Option<Range<u64>>,
    if_match: Option<&Version>,
    out: GetObjectOutput,
) -> Result<GetResult> {
    let shown = uri.to_string();
    let (sent, size) = sent_span(&out, &shown)?;
    let meta = ObjectMeta {
        uri: shown.clone(),
        size,
        etag: out.e_tag().map(str::to_owned),
        last_modified: out.last_modified().and_then(system_time),
        version: out.version_id().map(str::to_owned),
    };
    if let Some(want) = if_match {
        want.check(&shown, &meta)?;
    }
    let range = crate::checked::answered_range(uri, requested, size, &sent)?;
    let body = if range.is_empty() {
        Box::pin(futures::stream::empty()) as crate::ByteStream
    } else {
        body_stream(out.body, shown, range.end - range.start)
    };
    Ok(GetResult { meta, range, body })
}

/// The bytes the response carries and the size of the whole object.
fn sent_span(out: &GetObjectOutput, shown: &str) -> Result<(Range<u64>, u64)> {
    let length = out.content_length().and_then(|n| u64::try_from(n).ok());
    crate::checked::sent_span(out.content_range(), length, shown)
}

/// The SDK body as chunks, checked to carry exactly `expected` bytes.
fn body_stream(body: SdkByteStream, uri: String, expected: u64) -> crate::ByteStream {
    Box::pin(futures::stream::try_unfold(
        (body, uri, expected),
        |(mut body, uri, left)| async move {
            loop {
                let chunk: Bytes = match body.try_next().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) if left == 0 => return Ok(None),
                    Ok(None) => {
                        return Err(StorageError::protocol(
                            uri,
                            format!("body ended {left} bytes early"),
                        ));
                    }
                    Err(e) => {
                        return Err(StorageError::new(
                            ErrorKind::Unavailable,
                            uri,
                            "s3 get: body read failed",
                        )
                        .with_source(e));
                    }
                };
                if chunk.is_empty() {
                    continue;
                }
                let Some(rest) = left.checked_sub(chunk.len() as u64) else {
                    return Err(StorageError::protocol(uri, "body is longer than its range"));
                };
                return Ok(Some((chunk, (body, uri, rest))));
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_gives_the_span_and_the_total() {
        use crate::checked::parse_content_range;
        assert_eq!(parse_content_range("bytes 0-0/1"), Some((0..1, 1)));
        assert_eq!(parse_content_range("bytes 5-9/20"), Some((5..10, 20)));
        for bad in [
            "bytes */20",
            "bytes 5-9/*",
            "items 5-9/20",
            "bytes 9-5/20",
            "bytes 5-20/20",
            "bytes 5/20",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn body_length_is_checked_against_the_range() {
        use futures::TryStreamExt;
        let short = body_stream(SdkByteStream::from_static(b"abc"), "s3://b/k".into(), 5);
        let e = short.try_collect::<Vec<_>>().await.unwrap_err();
        assert_eq!(
            (e.kind(), e.message()),
            (ErrorKind::Protocol, "body ended 2 bytes early")
        );
        let long = body_stream(SdkByteStream::from_static(b"abcdef"), "s3://b/k".into(), 5);
        assert_eq!(
            long.try_collect::<Vec<_>>().await.unwrap_err().kind(),
            ErrorKind::Protocol
        );
        let exact = body_stream(SdkByteStream::from_static(b"abcde"), "s3://b/k".into(), 5);
        assert_eq!(
            exact.try_collect::<Vec<_>>().await.unwrap().concat(),
            b"abcde"
        );
    }
}
