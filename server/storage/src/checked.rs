//! A response body checked against the range it answers.

use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::{ErrorKind, StorageError};

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
