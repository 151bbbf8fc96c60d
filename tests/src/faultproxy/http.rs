//! Just enough HTTP/1.1 for the fault proxy: request and response heads,
//! bodies framed by `Content-Length`, and a `Content-Range` rewriter.
//!
//! Chunked request bodies are not supported (the S3 SDK sends
//! `Content-Length` for every request the daemon makes); a chunked
//! response body is passed through as raw bytes up to the upstream's end of
//! stream, which the proxy always asks for (`Connection: close`).

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// Longest head (request or status line plus headers) accepted.
const MAX_HEAD: usize = 64 << 10;

/// A request or response head: the first line and the headers in order.
#[derive(Debug, Clone)]
pub struct Head {
    /// `GET /bucket/key HTTP/1.1`, or `HTTP/1.1 206 Partial Content`.
    pub line: String,
    /// Name and value, as received.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of header `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Drops every header called `name`.
    pub fn remove(&mut self, name: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// Replaces every header called `name` by one with `value`.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.remove(name);
        self.headers.push((name.to_owned(), value.into()));
    }

    /// `Content-Length`, if present and a number.
    pub fn content_length(&self) -> Option<u64> {
        self.get("content-length")?.trim().parse().ok()
    }

    /// Whether the body is chunked.
    pub fn chunked(&self) -> bool {
        self.get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    /// The request method (first word of a request line).
    pub fn method(&self) -> &str {
        self.line.split(' ').next().unwrap_or("")
    }

    /// The status code of a response line.
    pub fn status(&self) -> u16 {
        self.line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Whether the client asked to close after this request.
    pub fn wants_close(&self) -> bool {
        self.get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || self.line.ends_with("HTTP/1.0")
    }

    /// The first line and headers as sent on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(self.line.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (n, v) in &self.headers {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// The start of a `Range: bytes=a-b` request header.
    pub fn range_start(&self) -> Option<u64> {
        let spec = self.get("range")?.trim().strip_prefix("bytes=")?;
        spec.split('-').next()?.trim().parse().ok()
    }
}

/// Reads one head; `None` on a clean end of stream before its first byte.
pub async fn read_head<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Option<Head>> {
    let mut line = String::new();
    let mut total = 0;
    let mut first: Option<String> = None;
    let mut headers = Vec::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line).await?;
        if n == 0 {
            return match first {
                None => Ok(None),
                Some(_) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream ended inside a head",
                )),
            };
        }
        total += n;
        if total > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
        let text = line.trim_end_matches(['\r', '\n']);
        match &first {
            None if text.is_empty() => continue, // stray CRLF between messages
            None => first = Some(text.to_owned()),
            Some(_) if text.is_empty() => break,
            Some(_) => {
                let (name, value) = text.split_once(':').ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "header without a colon")
                })?;
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
    }
    Ok(Some(Head {
        line: first.unwrap_or_default(),
        headers,
    }))
}

/// Reads exactly `len` bytes of body.
pub async fn read_body<R: AsyncBufRead + Unpin>(r: &mut R, len: u64) -> io::Result<Vec<u8>> {
    let mut body = Vec::with_capacity(len.min(64 << 20) as usize);
    let got = r.take(len).read_to_end(&mut body).await?;
    if (got as u64) < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "body ended early",
        ));
    }
    Ok(body)
}

/// `bytes a-b/total` → `(a, b, total)`.
pub fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, total.parse().ok()?))
}

/// A `Content-Range` that differs from `bytes a-b/total`, picked by `pick`
/// (any number): the span moved by one byte, or another total that still
/// lies past the span's end (a total equal to the span's end would describe
/// a genuine shorter object, which no client can tell from this response).
pub fn wrong_content_range(a: u64, b: u64, total: u64, pick: u64) -> String {
    match pick % 3 {
        0 if b + 1 < total => format!("bytes {}-{}/{total}", a + 1, b + 1),
        0 | 1 if a > 0 => format!("bytes {}-{}/{total}", a - 1, b - 1),
        1 => format!("bytes {a}-{b}/{}", total + 1 + pick % 4096),
        _ if total > b + 2 => format!("bytes {a}-{b}/{}", b + 2 + pick % (total - b - 2)),
        _ => format!("bytes {a}-{b}/{}", total + 1 + pick % 4096),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn heads_parse_and_encode() {
        let raw = b"GET /b/k HTTP/1.1\r\nHost: x\r\nRange: bytes=5-9\r\n\r\nrest";
        let mut r = tokio::io::BufReader::new(&raw[..]);
        let head = read_head(&mut r).await.unwrap().unwrap();
        assert_eq!(head.method(), "GET");
        assert_eq!(head.range_start(), Some(5));
        assert_eq!(head.get("host"), Some("x"));
        assert_eq!(read_body(&mut r, 4).await.unwrap(), b"rest");
        assert!(read_head(&mut r).await.unwrap().is_none());
        let encoded = head.encode();
        let mut again = tokio::io::BufReader::new(&encoded[..]);
        let back = read_head(&mut again).await.unwrap().unwrap();
        assert_eq!(back.headers, head.headers);
    }

    #[test]
    fn wrong_content_ranges_are_wrong_and_well_formed() {
        for (a, b, total) in [
            (0, 1023, 1024),
            (0, 99, 1000),
            (500, 999, 1000),
            (8, 15, 64),
        ] {
            for pick in 0..50 {
                let wrong = wrong_content_range(a, b, total, pick);
                let (a2, b2, t2) = parse_content_range(&wrong).unwrap();
                assert_ne!((a2, b2, t2), (a, b, total), "{wrong}");
                assert!(b2 < t2 && a2 <= b2, "{wrong}");
                assert!(
                    t2 != b + 1 || (a2, b2) != (a, b),
                    "{wrong}: a shorter object"
                );
            }
        }
    }
}
