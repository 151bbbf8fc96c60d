//! AWS Signature Version 4, as S3 clients sign: checking a request.
//!
//! A request is signed either in its `Authorization` header
//! (`AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`) or in
//! its query string (a presigned URL: `X-Amz-Algorithm`, `X-Amz-Credential`,
//! `X-Amz-Date`, `X-Amz-Expires`, `X-Amz-SignedHeaders`, `X-Amz-Signature`).
//! [`Verifier::verify`] rebuilds the canonical request from what arrived
//! and compares signatures in constant time:
//!
//! - the canonical URI is the path decoded once and encoded again with S3's
//!   rules (every byte but `A-Za-z0-9-._~` and `/` as `%XX`): S3 paths are
//!   not double-encoded, and this accepts both spellings of characters a
//!   client may or may not escape on the wire;
//! - the query's parameters are decoded, encoded the same way and sorted;
//! - the signed headers' values are trimmed, inner runs of spaces folded;
//! - the payload hash is the `x-amz-content-sha256` header (presigned:
//!   `UNSIGNED-PAYLOAD`); a hex hash is checked against the body by whoever
//!   reads it ([`PayloadCheck`]), aws-chunked bodies chunk by chunk
//!   ([`super::chunked`]).
//!
//! The credential scope must be `<date>/<facade.region>/s3/aws4_request`,
//! `x-amz-date` within `facade.max_clock_skew` of now. Errors never carry
//! secrets or signatures, only which check failed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use ring::{digest, hmac};
use subtle::ConstantTimeEq;

use super::config::FacadeKey;
use super::error::S3Error;
use super::time;

/// SHA-256 of nothing, the payload hash of a request without a body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// The longest a presigned URL may be valid (S3's limit: 7 days).
const MAX_EXPIRES: u64 = 7 * 24 * 3600;

/// An access key as the verifier knows it.
#[derive(Debug)]
struct Key {
    secret: sluice_storage::s3::Secret,
    /// `None`: every facade bucket.
    buckets: Option<HashSet<String>>,
}

/// The access keys, swapped whole on reload.
#[derive(Debug, Default)]
pub struct Keys(RwLock<Arc<HashMap<String, Key>>>);

impl Keys {
    /// Keys from the configuration's entries and file.
    pub fn new(keys: Vec<FacadeKey>) -> Self {
        let current = Keys::default();
        current.replace(keys);
        current
    }

    /// Puts `keys` in use for the requests verified from now on.
    pub fn replace(&self, keys: Vec<FacadeKey>) {
        let map = keys
            .into_iter()
            .map(|k| {
                let buckets = (!k.buckets.is_empty()).then(|| k.buckets.into_iter().collect());
                let key = Key {
                    secret: k.secret_access_key,
                    buckets,
                };
                (k.access_key_id, key)
            })
            .collect();
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(map);
    }

    fn current(&self) -> Arc<HashMap<String, Key>> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Who a verified request comes from.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The access key id; `None` for an anonymous request.
    pub access_key: Option<String>,
    /// Buckets it may use; `None`: all.
    pub buckets: Option<Arc<HashSet<String>>>,
}

impl Principal {
    /// An unsigned request (where the operator allows them).
    pub fn anonymous() -> Self {
        Principal {
            access_key: None,
            buckets: None,
        }
    }

    /// Whether it may use facade bucket `bucket`.
    pub fn may_use(&self, bucket: &str) -> bool {
        self.buckets.as_ref().is_none_or(|b| b.contains(bucket))
    }
}

/// What the body's reader must check.
#[derive(Debug, Clone)]
pub enum PayloadCheck {
    /// Nothing (`UNSIGNED-PAYLOAD`).
    None,
    /// The body's SHA-256, lowercase hex.
    Sha256(String),
    /// An aws-chunked body; chunk signatures are checked when `signer` is
    /// set (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`).
    Chunked {
        /// Chains the chunk signatures, from the request's own.
        signer: Option<Box<ChunkSigner>>,
    },
}

/// The state chunk signatures are computed from.
#[derive(Clone)]
pub struct ChunkSigner {
    key: hmac::Key,
    amz_date: String,
    scope: String,
    /// The signature of the request, then of each chunk in turn.
    pub previous: String,
}

impl std::fmt::Debug for ChunkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkSigner")
    }
}

impl ChunkSigner {
    /// Checks the signature of the next chunk (`data`'s SHA-256), and
    /// moves the chain on.
    pub fn check_chunk(&mut self, data_sha256: &[u8], signature: &str) -> bool {
        let sts = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{}\n{EMPTY_SHA256}\n{}",
            self.amz_date,
            self.scope,
            self.previous,
            hex(data_sha256)
        );
        self.check(&sts, signature)
    }

    /// Checks the signature of the trailing headers (canonical text
    /// `name:value\n` each).
    pub fn check_trailer(&mut self, canonical: &str, signature: &str) -> bool {
        let sts = format!(
            "AWS4-HMAC-SHA256-TRAILER\n{}\n{}\n{}\n{}",
            self.amz_date,
            self.scope,
            self.previous,
            hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
        );
        self.check(&sts, signature)
    }

    fn check(&mut self, string_to_sign: &str, signature: &str) -> bool {
        let want = hex(hmac::sign(&self.key, string_to_sign.as_bytes()).as_ref());
        let ok = bool::from(want.as_bytes().ct_eq(signature.as_bytes()));
        self.previous = want;
        ok
    }
}

/// A request's parts the signature covers.
#[derive(Debug)]
pub struct RequestParts<'a> {
    /// `GET`, `PUT`…
    pub method: &'a str,
    /// The path as received (percent-encoded).
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: &'a str,
    /// The headers.
    pub headers: &'a HeaderMap,
}

/// Checks signatures against the access keys.
#[derive(Debug)]
pub struct Verifier {
    /// The access keys.
    pub keys: Arc<Keys>,
    /// The region clients must sign for.
    pub region: String,
    /// How far `x-amz-date` may be from now.
    pub max_skew: Duration,
}

/// The fields of a signature, from the header or the query.
struct Auth {
    access_key: String,
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
    amz_date: String,
    payload: String,
    /// Presigned: seconds it is valid for.
    expires: Option<u64>,
}

impl Verifier {
    /// Whether the request carries a signature at all.
    pub fn is_signed(parts: &RequestParts<'_>) -> bool {
        parts.headers.contains_key(http::header::AUTHORIZATION)
            || parts
                .query
                .split('&')
                .any(|p| p.starts_with("X-Amz-Signature="))
    }

    /// Verifies a signed request at time `now`.
    pub fn verify(
        &self,
        parts: &RequestParts<'_>,
        now: SystemTime,
    ) -> Result<(Principal, PayloadCheck), S3Error> {
        let auth = match parts.headers.get(http::header::AUTHORIZATION) {
            Some(h) => parse_header(h.to_str().map_err(|_| malformed())?, parts.headers)?,
            None => parse_query(parts.query)?,
        };
        let keys = self.keys.current();
        let key = keys.get(&auth.access_key).ok_or_else(|| {
            S3Error::new(
                "InvalidAccessKeyId",
                403,
                "the access key id is not known to this facade",
            )
        })?;
        if auth.service != "s3" || auth.region != self.region {
            return Err(S3Error::new(
                "AuthorizationHeaderMalformed",
                400,
                format!(
                    "the credential scope must name region {:?} and service s3",
                    self.region
                ),
            ));
        }
        let at = time::parse_amz_date(&auth.amz_date).ok_or_else(malformed)?;
        if !auth.amz_date.starts_with(&auth.date) {
            return Err(malformed());
        }
        self.check_time(at, now, auth.expires)?;
        let scope = format!("{}/{}/s3/aws4_request", auth.date, auth.region);
        let canonical = canonical_request(parts, &auth)?;
        let sts = format!(
            "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
            auth.amz_date,
            hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
        );
        let signing = signing_key(key.secret.expose(), &auth.date, &auth.region);
        let want = hex(hmac::sign(&signing, sts.as_bytes()).as_ref());
        if !bool::from(want.as_bytes().ct_eq(auth.signature.as_bytes())) {
            return Err(S3Error::new(
                "SignatureDoesNotMatch",
                403,
                "the request signature we calculated does not match the signature you provided",
            ));
        }
        let check = match auth.payload.as_str() {
            "UNSIGNED-PAYLOAD" => PayloadCheck::None,
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => PayloadCheck::Chunked { signer: None },
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" | "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" => {
                PayloadCheck::Chunked {
                    signer: Some(Box::new(ChunkSigner {
                        key: signing,
                        amz_date: auth.amz_date.clone(),
                        scope,
                        previous: want,
                    })),
                }
            }
            h if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                PayloadCheck::Sha256(h.to_ascii_lowercase())
            }
            _ => {
                return Err(S3Error::new(
                    "InvalidArgument",
                    400,
                    "x-amz-content-sha256 must be a SHA-256, UNSIGNED-PAYLOAD or a STREAMING- value",
                ));
            }
        };
        let principal = Principal {
            access_key: Some(auth.access_key),
            buckets: key.buckets.clone().map(Arc::new),
        };
        Ok((principal, check))
    }

    fn check_time(
        &self,
        at: SystemTime,
        now: SystemTime,
        expires: Option<u64>,
    ) -> Result<(), S3Error> {
        let skew = now.duration_since(at).unwrap_or_else(|e| e.duration());
        match expires {
            None if skew > self.max_skew => Err(S3Error::new(
                "RequestTimeTooSkewed",
                403,
                "the difference between the request time and the server's time is too large",
            )),
            Some(secs) if secs > MAX_EXPIRES => Err(S3Error::new(
                "AuthorizationQueryParametersError",
                400,
                "X-Amz-Expires must be at most 604800 seconds",
            )),
            Some(secs) if now > at + Duration::from_secs(secs) || at > now + self.max_skew => {
                Err(S3Error::new("AccessDenied", 403, "request has expired"))
            }
            _ => Ok(()),
        }
    }
}

fn malformed() -> S3Error {
    S3Error::new(
        "AuthorizationHeaderMalformed",
        400,
        "the authorization header or query parameters are malformed",
    )
}

/// `AWS4-HMAC-SHA256 Credential=AK/date/region/s3/aws4_request, SignedHeaders=a;b, Signature=hex`
fn parse_header(value: &str, headers: &HeaderMap) -> Result<Auth, S3Error> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256").ok_or_else(|| {
        S3Error::new(
            "InvalidArgument",
            400,
            "only AWS4-HMAC-SHA256 signatures are accepted",
        )
    })?;
    let mut fields = HashMap::new();
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or_else(malformed)?;
        fields.insert(k.trim(), v.trim());
    }
    let get = |k| fields.get(k).copied().ok_or_else(malformed);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let amz_date = header("x-amz-date").ok_or_else(malformed)?.to_owned();
    let payload = header("x-amz-content-sha256").ok_or_else(|| {
        S3Error::new(
            "InvalidRequest",
            400,
            "missing required header x-amz-content-sha256",
        )
    })?;
    auth_of(
        get("Credential")?,
        get("SignedHeaders")?,
        get("Signature")?,
        amz_date,
        payload.to_owned(),
        None,
    )
}

fn parse_query(query: &str) -> Result<Auth, S3Error> {
    let params: HashMap<String, String> = query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    let get = |k: &str| params.get(k).map(String::as_str).ok_or_else(malformed);
    if get("X-Amz-Algorithm")? != "AWS4-HMAC-SHA256" {
        return Err(malformed());
    }
    let expires = get("X-Amz-Expires")?.parse().map_err(|_| malformed())?;
    auth_of(
        get("X-Amz-Credential")?,
        get("X-Amz-SignedHeaders")?,
        get("X-Amz-Signature")?,
        get("X-Amz-Date")?.to_owned(),
        "UNSIGNED-PAYLOAD".into(),
        Some(expires),
    )
}

fn auth_of(
    credential: &str,
    signed: &str,
    signature: &str,
    amz_date: String,
    payload: String,
    expires: Option<u64>,
) -> Result<Auth, S3Error> {
    let mut scope = credential.rsplitn(5, '/');
    let (Some("aws4_request"), Some(service), Some(region), Some(date), Some(access_key)) = (
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
    ) else {
        return Err(malformed());
    };
    Ok(Auth {
        access_key: access_key.to_owned(),
        date: date.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        signed_headers: signed.split(';').map(str::to_ascii_lowercase).collect(),
        signature: signature.to_ascii_lowercase(),
        amz_date,
        payload,
        expires,
    })
}

/// The canonical request of SigV4 (see the module docs).
fn canonical_request(parts: &RequestParts<'_>, auth: &Auth) -> Result<String, S3Error> {
    let path = encode(&decode(parts.path), false);
    let mut query: Vec<(String, String)> = parts
        .query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (encode(&decode(k), true), encode(&decode(v), true))
        })
        .filter(|(k, _)| k != "X-Amz-Signature")
        .collect();
    query.sort();
    let query: Vec<String> = query.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut headers = String::new();
    for name in &auth.signed_headers {
        let values: Vec<&str> = parts
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| v.to_str().map_err(|_| malformed()))
            .collect::<Result<_, _>>()?;
        if values.is_empty() {
            return Err(S3Error::new(
                "SignatureDoesNotMatch",
                403,
                format!("signed header {name} is missing"),
            ));
        }
        let folded: Vec<String> = values
            .iter()
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        headers.push_str(&format!("{name}:{}\n", folded.join(",")));
    }
    Ok(format!(
        "{}\n{path}\n{}\n{headers}\n{}\n{}",
        parts.method,
        query.join("&"),
        auth.signed_headers.join(";"),
        auth.payload
    ))
}

/// The signing key of `secret` for `date` (YYYYMMDD) in `region`, service s3.
pub fn signing_key(secret: &str, date: &str, region: &str) -> hmac::Key {
    let step = |key: &[u8], data: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
    };
    let k_date = step(format!("AWS4{secret}").as_bytes(), date);
    let k_region = step(k_date.as_ref(), region);
    let k_service = step(k_region.as_ref(), "s3");
    let k_signing = step(k_service.as_ref(), "aws4_request");
    hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref())
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Percent-decodes (`+` stays `+`); invalid UTF-8 is replaced.
pub fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// S3's URI encoding: all but `A-Za-z0-9-._~` as `%XX`; `/` too when
/// `slash` (query values), not in paths.
pub fn encode(s: &str, slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (b == b'/' && !slash)
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
