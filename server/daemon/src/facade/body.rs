//! Request bodies: PutObject and UploadPart data into arena memory, small
//! XML bodies onto the heap; aws-chunked decoding, the payload hash and
//! the checksums checked on the way.
//!
//! The size is known before a byte is read (`Content-Length`, or
//! `x-amz-decoded-content-length` for aws-chunked bodies): a body over the
//! limit is refused at once, and a data body's memory is reserved whole,
//! from the budget and the connection's client share, like a read's. The
//! bytes then land in place; no other copy is made. A client that sends
//! nothing for `read.stall_timeout` has its request ended.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::Body as _;
use hyper::body::Incoming;
use ring::digest;
use subtle::ConstantTimeEq;

use super::chunked::{Checksum, Decoder};
use super::error::S3Error;
use super::routes::Req;
use super::sigv4::{PayloadCheck, hex};

/// The longest XML body taken (DeleteObjects of 1,000 keys of 1,024
/// bytes each, with their markup, fits).
pub const MAX_XML_BODY: u64 = 4 << 20;

/// Where decoded body bytes go.
trait Sink: Send {
    fn put(&mut self, data: &[u8]) -> Result<(), S3Error>;
}

impl Sink for Vec<u8> {
    fn put(&mut self, data: &[u8]) -> Result<(), S3Error> {
        self.extend_from_slice(data);
        Ok(())
    }
}

/// A reserved extent being filled.
struct Extent<'a> {
    buf: &'a mut [u8],
    filled: usize,
}

impl Sink for Extent<'_> {
    fn put(&mut self, data: &[u8]) -> Result<(), S3Error> {
        let end = self.filled + data.len();
        let dst = self.buf.get_mut(self.filled..end).ok_or_else(too_long)?;
        dst.copy_from_slice(data);
        self.filled = end;
        Ok(())
    }
}

fn too_long() -> S3Error {
    S3Error::new(
        "IncompleteBody",
        400,
        "the body is longer than its announced length",
    )
}

/// The decoded length the request announces.
pub fn announced_len(headers: &HeaderMap, check: &PayloadCheck) -> Result<u64, S3Error> {
    let name = match check {
        PayloadCheck::Chunked { .. } => "x-amz-decoded-content-length",
        _ => "content-length",
    };
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            S3Error::new(
                "MissingContentLength",
                411,
                format!("the request needs a {name} header"),
            )
        })
}

/// Reads the body of `req` into arena memory (at most the facade's
/// `max_part_size`).
pub async fn read_data(req: &mut Req<'_>) -> Result<Bytes, S3Error> {
    let limit = req.state.max_body;
    let len = announced_len(&req.headers, &req.check)?;
    if len > limit {
        return Err(S3Error::new(
            "EntityTooLarge",
            400,
            format!("the body of {len} bytes exceeds this facade's limit of {limit} bytes per request (use a multipart upload)"),
        )
        .on(req.resource.clone()));
    }
    let engine = &req.state.engine;
    let busy = |e: sluice_engine::budget::BudgetError| {
        tracing::debug!(error = %e, "facade upload waits for memory in vain");
        S3Error::new("SlowDown", 503, "the daemon's memory is busy; retry")
    };
    let hold = req.client.acquire(len).await.map_err(busy)?;
    let mut reserved = engine
        .budget()
        .reserve(len, engine.cache().as_ref())
        .await
        .map_err(busy)?;
    let mut extent = Extent {
        buf: reserved.as_mut_slice(),
        filled: 0,
    };
    read(req, &mut extent).await?;
    if extent.filled as u64 != len {
        return Err(S3Error::new(
            "IncompleteBody",
            400,
            "the body is shorter than its announced length",
        ));
    }
    Ok(hold.attach(reserved.into_bytes().slice(..len as usize)))
}

/// Reads a small body (XML) onto the heap.
pub async fn read_small(req: &mut Req<'_>) -> Result<Vec<u8>, S3Error> {
    let len = announced_len(&req.headers, &req.check)?;
    if len > MAX_XML_BODY {
        return Err(S3Error::new(
            "EntityTooLarge",
            400,
            "the request body is too large",
        ));
    }
    let mut buf = Vec::with_capacity(len as usize);
    read(req, &mut buf).await?;
    if buf.len() as u64 != len {
        return Err(S3Error::new(
            "IncompleteBody",
            400,
            "the body is shorter than its announced length",
        ));
    }
    Ok(buf)
}

/// Reads the body through the decoder and the checks into `sink`.
async fn read(req: &mut Req<'_>, sink: &mut (dyn Sink + Send)) -> Result<(), S3Error> {
    let mut checksum = Checksum::of(&req.headers);
    let (mut decoder, mut sha) = match &req.check {
        PayloadCheck::Chunked { signer } => (Some(Decoder::new(signer.clone())), None),
        PayloadCheck::Sha256(want) => (
            None,
            Some((digest::Context::new(&digest::SHA256), want.clone())),
        ),
        PayloadCheck::None => (None, None),
    };
    let stall = req.state.stall_timeout;
    let received = req.state.metrics.received.clone();
    while let Some(data) = next_data(&mut req.body, stall).await? {
        let mut out = |d: &[u8]| {
            if let Some(c) = &mut checksum {
                c.update(d);
            }
            if let Some((h, _)) = &mut sha {
                h.update(d);
            }
            received.inc_by(d.len() as u64);
            sink.put(d)
        };
        match &mut decoder {
            Some(decoder) => decoder.feed(&data, &mut out)?,
            None => out(&data)?,
        }
    }
    if let Some(decoder) = &decoder {
        decoder.finish()?;
    }
    if let Some((h, want)) = sha {
        let got = hex(h.finish().as_ref());
        if !bool::from(got.as_bytes().ct_eq(want.as_bytes())) {
            return Err(S3Error::new(
                "XAmzContentSHA256Mismatch",
                400,
                "the body's SHA-256 does not match x-amz-content-sha256",
            ));
        }
    }
    if let Some(c) = checksum {
        c.check(decoder.as_ref().map(Decoder::trailers).unwrap_or_default())?;
    }
    Ok(())
}

/// The next data frame of `body`; an error when the client sends nothing
/// for `stall` (zero: wait as long as it takes).
async fn next_data(body: &mut Incoming, stall: Duration) -> Result<Option<Bytes>, S3Error> {
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_frame(cx));
        let frame = if stall.is_zero() {
            frame.await
        } else {
            tokio::time::timeout(stall, frame).await.map_err(|_| {
                S3Error::new(
                    "RequestTimeout",
                    400,
                    "the client sent nothing for read.stall_timeout",
                )
            })?
        };
        match frame {
            None => return Ok(None),
            Some(Err(error)) => {
                tracing::debug!(%error, "a facade request body broke off");
                return Err(S3Error::new(
                    "IncompleteBody",
                    400,
                    "the request body broke off",
                ));
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}
