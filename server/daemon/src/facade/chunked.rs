//! aws-chunked request bodies, and the checksums S3 clients send with
//! bodies.
//!
//! boto3 (1.36 on) and the aws cli send PutObject and UploadPart bodies as
//! `Content-Encoding: aws-chunked`: chunks of `hex-size[;chunk-signature=…]
//! CRLF data CRLF`, a zero-size chunk, then trailing headers (a checksum,
//! `x-amz-checksum-crc32:…`, and with signed trailers
//! `x-amz-trailer-signature:…`) and an empty line. [`Decoder`] takes the
//! body in whatever pieces the connection delivers and hands out the data
//! without copying it anywhere else; it checks each chunk's signature
//! (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`, chained from the request's own,
//! see [`super::sigv4::ChunkSigner`]) and the trailer's.
//!
//! [`Checksum`] checks the body against `x-amz-checksum-crc32` or
//! `x-amz-checksum-sha256`, from a header or the trailer; other algorithms
//! (CRC32C, CRC64NVME, SHA-1) are taken unchecked.

use http::HeaderMap;
use ring::digest;

use super::error::S3Error;
use super::sigv4::ChunkSigner;

/// Longest chunk header or trailer line: a size, a 64-digit signature and
/// their names fit in 100 bytes; a checksum trailer in less.
const MAX_LINE: usize = 4096;
/// Most trailing header lines.
const MAX_TRAILERS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk header line.
    Header,
    /// `n` bytes of chunk data left.
    Data(u64),
    /// The CRLF after a chunk's data; how many of its bytes were seen.
    DataEnd(u8),
    /// Reading trailer lines, up to an empty one.
    Trailer,
    /// All read.
    Done,
}

/// Decodes one aws-chunked body (see the module docs).
pub struct Decoder {
    state: State,
    line: Vec<u8>,
    signer: Option<Box<ChunkSigner>>,
    /// The signature the current chunk's header announced.
    chunk_signature: String,
    chunk_hash: Option<digest::Context>,
    /// Trailing headers as `name:value` lines, for the trailer signature.
    trailers: Vec<(String, String)>,
    decoded: u64,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("state", &self.state)
            .field("decoded", &self.decoded)
            .finish_non_exhaustive()
    }
}

fn incomplete(why: &str) -> S3Error {
    S3Error::new("IncompleteBody", 400, format!("aws-chunked body: {why}"))
}

fn bad_signature() -> S3Error {
    S3Error::new(
        "SignatureDoesNotMatch",
        403,
        "a chunk signature of the aws-chunked body does not match",
    )
}

impl Decoder {
    /// A decoder that checks chunk signatures with `signer`, when given.
    pub fn new(signer: Option<Box<ChunkSigner>>) -> Self {
        Decoder {
            state: State::Header,
            line: Vec::new(),
            chunk_hash: signer
                .as_ref()
                .map(|_| digest::Context::new(&digest::SHA256)),
            signer,
            chunk_signature: String::new(),
            trailers: Vec::new(),
            decoded: 0,
        }
    }

    /// Decoded bytes so far.
    pub fn decoded(&self) -> u64 {
        self.decoded
    }

    /// The trailing headers, once done.
    pub fn trailers(&self) -> &[(String, String)] {
        &self.trailers
    }

    /// Takes the next piece of the body; data goes to `out` in order.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut dyn FnMut(&[u8]) -> Result<(), S3Error>,
    ) -> Result<(), S3Error> {
        while !input.is_empty() {
            match self.state {
                State::Header | State::Trailer => {
                    let Some(line) = self.take_line(&mut input)? else {
                        continue;
                    };
                    if self.state == State::Header {
                        self.header(&line)?;
                    } else {
                        self.trailer(&line)?;
                    }
                }
                State::Data(left) => {
                    let n = (left.min(input.len() as u64)) as usize;
                    let (data, rest) = input.split_at(n);
                    if let Some(h) = &mut self.chunk_hash {
                        h.update(data);
                    }
                    out(data)?;
                    self.decoded += n as u64;
                    input = rest;
                    self.state = if left == n as u64 {
                        State::DataEnd(0)
                    } else {
                        State::Data(left - n as u64)
                    };
                }
                State::DataEnd(seen) => {
                    let want = b"\r\n"[seen as usize];
                    if input[0] != want {
                        return Err(incomplete("a chunk's data is not followed by CRLF"));
                    }
                    input = &input[1..];
                    self.state = if seen == 1 {
                        self.chunk_done(false)?
                    } else {
                        State::DataEnd(1)
                    };
                }
                State::Done => return Err(incomplete("bytes after the last chunk")),
            }
        }
        Ok(())
    }

    /// Checks that the body ended where it should.
    pub fn finish(&self) -> Result<(), S3Error> {
        match self.state {
            State::Done => Ok(()),
            _ => Err(incomplete("the body ended before its last chunk")),
        }
    }

    /// The next line (without CRLF) once complete.
    fn take_line(&mut self, input: &mut &[u8]) -> Result<Option<Vec<u8>>, S3Error> {
        match input.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.line.extend_from_slice(&input[..i]);
                *input = &input[i + 1..];
                let mut line = std::mem::take(&mut self.line);
                if line.pop() != Some(b'\r') {
                    return Err(incomplete("a line does not end with CRLF"));
                }
                Ok(Some(line))
            }
            None => {
                self.line.extend_from_slice(input);
                *input = &[];
                if self.line.len() > MAX_LINE {
                    return Err(incomplete("a chunk header or trailer line is too long"));
                }
                Ok(None)
            }
        }
    }

    fn header(&mut self, line: &[u8]) -> Result<(), S3Error> {
        let line =
            std::str::from_utf8(line).map_err(|_| incomplete("a chunk header is not text"))?;
        let (size, ext) = line.split_once(';').unwrap_or((line, ""));
        let size = u64::from_str_radix(size.trim(), 16)
            .map_err(|_| incomplete("a chunk size is not hex"))?;
        self.chunk_signature = ext
            .trim()
            .strip_prefix("chunk-signature=")
            .unwrap_or_default()
            .to_owned();
        if self.signer.is_some() && self.chunk_signature.is_empty() {
            return Err(bad_signature());
        }
        self.state = if size == 0 {
            self.chunk_done(true)?
        } else {
            State::Data(size)
        };
        Ok(())
    }

    /// A chunk ended: checks its signature; what comes next.
    fn chunk_done(&mut self, last: bool) -> Result<State, S3Error> {
        if let (Some(signer), Some(hash)) = (&mut self.signer, &mut self.chunk_hash) {
            let done = std::mem::replace(hash, digest::Context::new(&digest::SHA256)).finish();
            if !signer.check_chunk(done.as_ref(), &self.chunk_signature) {
                return Err(bad_signature());
            }
        }
        Ok(if last { State::Trailer } else { State::Header })
    }

    fn trailer(&mut self, line: &[u8]) -> Result<(), S3Error> {
        if line.is_empty() {
            self.state = State::Done;
            return self.check_trailer_signature();
        }
        let line = std::str::from_utf8(line).map_err(|_| incomplete("a trailer is not text"))?;
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| incomplete("a trailer without ':'"))?;
        if self.trailers.len() == MAX_TRAILERS {
            return Err(incomplete("too many trailers"));
        }
        self.trailers
            .push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        Ok(())
    }

    fn check_trailer_signature(&mut self) -> Result<(), S3Error> {
        let Some(signer) = &mut self.signer else {
            return Ok(());
        };
        let signature = self
            .trailers
            .iter()
            .find(|(n, _)| n == "x-amz-trailer-signature");
        let Some((_, signature)) = signature.cloned() else {
            // No trailers at all: STREAMING-AWS4-HMAC-SHA256-PAYLOAD.
            return match self.trailers.is_empty() {
                true => Ok(()),
                false => Err(bad_signature()),
            };
        };
        let canonical: String = self
            .trailers
            .iter()
            .filter(|(n, _)| n != "x-amz-trailer-signature")
            .map(|(n, v)| format!("{n}:{v}\n"))
            .collect();
        if signer.check_trailer(&canonical, &signature) {
            Ok(())
        } else {
            Err(bad_signature())
        }
    }
}

/// A checksum of the body to check (see the module docs).
pub enum Checksum {
    /// `x-amz-checksum-crc32`.
    Crc32(crc32fast::Hasher, Option<String>),
    /// `x-amz-checksum-sha256`.
    Sha256(Box<digest::Context>, Option<String>),
}

impl std::fmt::Debug for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Checksum::Crc32(..) => "Checksum::Crc32",
            Checksum::Sha256(..) => "Checksum::Sha256",
        })
    }
}

impl Checksum {
    /// The checksum the request announces (header value, or to come in the
    /// trailer named by `x-amz-trailer`), if it is one the facade checks.
    pub fn of(headers: &HeaderMap) -> Option<Checksum> {
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let trailer = header("x-amz-trailer").map(|t| t.trim().to_ascii_lowercase());
        let wants = |name: &str| {
            header(name).or_else(|| (trailer.as_deref() == Some(name)).then(String::new))
        };
        if let Some(v) = wants("x-amz-checksum-crc32") {
            return Some(Checksum::Crc32(
                crc32fast::Hasher::new(),
                Some(v).filter(|v| !v.is_empty()),
            ));
        }
        wants("x-amz-checksum-sha256").map(|v| {
            Checksum::Sha256(
                Box::new(digest::Context::new(&digest::SHA256)),
                Some(v).filter(|v| !v.is_empty()),
            )
        })
    }

    /// Adds body bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Checksum::Crc32(h, _) => h.update(data),
            Checksum::Sha256(h, _) => h.update(data),
        }
    }

    /// Checks the body against the header's value or the trailer's.
    pub fn check(self, trailers: &[(String, String)]) -> Result<(), S3Error> {
        let from_trailer = |name: &str| {
            trailers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let (got, want) = match self {
            Checksum::Crc32(h, v) => (
                base64(&h.finalize().to_be_bytes()),
                v.or_else(|| from_trailer("x-amz-checksum-crc32")),
            ),
            Checksum::Sha256(h, v) => (
                base64(h.finish().as_ref()),
                v.or_else(|| from_trailer("x-amz-checksum-sha256")),
            ),
        };
        match want {
            Some(want) if want.trim() != got => Err(S3Error::new(
                "BadDigest",
                400,
                "the checksum of the body does not match the one the request announced",
            )),
            _ => Ok(()),
        }
    }
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
