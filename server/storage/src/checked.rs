//! A ranged GET's answer checked against the request: its span and size
//! (`Content-Range` / `Content-Length`), the range the contract gives, and
//! its body's length. Shared by the HTTP backends.

use std::ops::Range;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::{ErrorKind, ObjectUri, Result, StorageError};

/// `bytes a-b/total` → (`a..b+1`, `total`).
pub fn parse_content_range(value: &str) -> Option<(Range<u64>, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last, total) = (
        first.parse::<u64>().ok()?,
        last.parse::<u64>().ok()?,
        total.parse::<u64>().ok()?,
    );
    (first <= last && last < total).then_some((first..last + 1, total))
}

/// The bytes a response carries and the size of the whole object, from
/// `Content-Range` or, without one, `Content-Length`; the two must agree.
pub fn sent_span(
    content_range: Option<&str>,
    length: Option<u64>,
    shown: &str,
) -> Result<(Range<u64>, u64)> {
    let (sent, size) = match (content_range, length) {
        (Some(cr), _) => parse_content_range(cr)
            .ok_or_else(|| StorageError::protocol(shown, "malformed content-range header"))?,
        (None, Some(len)) => (0..len, len),
        (None, None) => {
            return Err(StorageError::protocol(
                shown,
                "response has no content-length",
            ));
        }
    };
    if length.is_some_and(|len| len != sent.end - sent.start) {
        return Err(StorageError::protocol(
            shown,
            "content-length differs from content-range",
        ));
    }
    Ok((sent, size))
}

/// The range an answer of `sent` bytes of a `size`-byte object gives for
/// `requested`: the contract's clamping (which also catches a start past
/// the end that a server ignoring `Range` answered with the whole object),
/// then the sent span must be what was asked for — an empty range `a..a`
/// is asked as byte `a`, and a server that ignored the range is only
/// usable when the whole object was wanted.
pub fn answered_range(
    uri: &ObjectUri,
    requested: Option<Range<u64>>,
    size: u64,
    sent: &Range<u64>,
) -> Result<Range<u64>> {
    let range = crate::clamp_range(uri, requested, size)?;
    let wanted = if range.is_empty() {
        range.start..(range.start + 1).min(size)
    } else {
        range.clone()
    };
    if *sent != wanted {
        return Err(StorageError::protocol(
            uri.to_string(),
            format!(
                "asked for bytes {}..{} and got {}..{}",
                wanted.start, wanted.end, sent.start, sent.end
            ),
        ));
    }
    Ok(range)
}

/// `body` as a [`crate::ByteStream`] that must carry exactly `expected`
/// bytes: a short body is `Protocol`, a long one too, and a transport error
/// midway is `Unavailable` (so the engine retries the part). `what` names
/// the request in messages (`"gcs get"`).
pub fn checked_body<S, E>(
    body: S,
    uri: String,
    expected: u64,
    what: &'static str,
) -> crate::ByteStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: Into<crate::BoxError>,
{
    Box::pin(futures::stream::try_unfold(
        (body, uri, expected),
        move |(mut body, uri, left)| async move {
            loop {
                let chunk: Bytes = match body.next().await {
                    Some(Ok(chunk)) => chunk,
                    None if left == 0 => return Ok(None),
                    None => {
                        return Err(StorageError::protocol(
                            uri,
                            format!("body ended {left} bytes early"),
                        ));
                    }
                    Some(Err(e)) => {
                        return Err(StorageError::new(
                            ErrorKind::Unavailable,
                            uri,
                            format!("{what}: body read failed"),
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
    use futures::TryStreamExt;

    fn body(
        chunks: &[&'static [u8]],
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + Unpin + use<> {
        futures::stream::iter(
            chunks
                .iter()
                .map(|c| Ok(Bytes::from_static(c)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn the_length_is_checked_against_the_range() {
        let short = checked_body(body(&[b"ab", b"c"]), "gs://b/k".into(), 5, "get");
        let e = short.try_collect::<Vec<_>>().await.unwrap_err();
        assert_eq!(
            (e.kind(), e.message()),
            (ErrorKind::Protocol, "body ended 2 bytes early")
        );
        let long = checked_body(body(&[b"abc", b"def"]), "gs://b/k".into(), 5, "get");
        assert_eq!(
            long.try_collect::<Vec<_>>().await.unwrap_err().kind(),
            ErrorKind::Protocol
        );
        let exact = checked_body(body(&[b"ab", b"", b"cde"]), "gs://b/k".into(), 5, "get");
        assert_eq!(
            exact.try_collect::<Vec<_>>().await.unwrap().concat(),
            b"abcde"
        );
        let broken = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"ab")),
            Err(std::io::Error::other("reset")),
        ]);
        let e = checked_body(broken, "gs://b/k".into(), 5, "get")
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
    }
}
