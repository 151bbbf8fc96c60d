//! Requests to operations: addressing, authentication, the bucket's
//! prefix, and the answer (or the S3 error).
//!
//! A request is path-style: `/` (ListBuckets), `/bucket` (bucket
//! operations, told apart by method and query), `/bucket/key` (object
//! operations). It is authenticated first ([`super::sigv4`]; an unsigned
//! one only with `facade.anonymous` on a local listener), then the bucket
//! must be a facade bucket the principal may use, then the operation runs.
//!
//! [`object_uri`] joins a bucket's prefix and a key into the backend URI,
//! and refuses any key that could leave the prefix on some backend: a
//! segment that is `.` or `..` (also percent-encoded, and also between
//! backslashes, which some stores read as `/`), or a NUL byte. Object
//! stores would take such keys literally, but URL libraries in their SDKs
//! may normalise them away, and `file://` refuses them anyway.

mod list;
mod multipart;
mod read;
mod write;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use http::{HeaderMap, Method, Response, StatusCode};
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use sluice_engine::{ClientShare, Engine};
use sluice_storage::ObjectUri;

use super::config::FacadeConfig;
use super::error::S3Error;
use super::metrics::{FacadeMetrics, Operation};
use super::sigv4::{Keys, PayloadCheck, Principal, RequestParts, Verifier};
use crate::config::{Config, ConfigError};

/// A response of the facade.
pub type Resp = Response<Body>;

/// What every request reads.
#[derive(Debug)]
pub struct State {
    pub(super) engine: Arc<Engine>,
    config: FacadeConfig,
    buckets: BTreeMap<String, ObjectUri>,
    keys: Arc<Keys>,
    verifier: Verifier,
    pub(crate) metrics: FacadeMetrics,
    uploads: multipart::Uploads,
    /// `read.stall_timeout`.
    pub(crate) stall_timeout: Duration,
    /// The largest body held for one request.
    pub(crate) max_body: u64,
    /// When the daemon started: the buckets' creation date.
    started: SystemTime,
    next_id: AtomicU64,
}

impl State {
    /// The state of `config`'s facade (already validated).
    pub fn new(
        config: &Config,
        engine: Arc<Engine>,
        registry: &mut Registry,
    ) -> Result<State, ConfigError> {
        let fc = config.facade.clone();
        let buckets = fc
            .buckets
            .iter()
            .map(|(name, prefix)| {
                let uri = ObjectUri::parse(prefix).map_err(|e| ConfigError::Invalid {
                    key: "facade.buckets",
                    message: format!("{name}: {e}"),
                })?;
                Ok((name.clone(), uri))
            })
            .collect::<Result<_, ConfigError>>()?;
        let keys = Arc::new(Keys::new(fc.load_keys()?));
        let verifier = Verifier {
            keys: keys.clone(),
            region: fc.region.clone(),
            max_skew: fc.max_clock_skew,
        };
        let max_body = fc.max_part_size.0.min(engine.budget().max_reservation());
        Ok(State {
            engine,
            buckets,
            keys,
            verifier,
            metrics: FacadeMetrics::register(registry),
            uploads: multipart::Uploads::new(fc.upload_idle_timeout, fc.max_uploads_per_key),
            stall_timeout: config.read.stall_timeout,
            max_body,
            started: SystemTime::now(),
            next_id: AtomicU64::new(0),
            config: fc,
        })
    }

    /// Reads the access keys again; returns how many there are.
    pub fn reload_keys(&self) -> Result<usize, ConfigError> {
        let keys = self.config.load_keys()?;
        let n = keys.len();
        self.keys.replace(keys);
        Ok(n)
    }

    /// Aborts the multipart uploads still open (at shutdown).
    pub async fn abort_uploads(&self) {
        self.uploads.abort_all().await;
    }

    /// Aborts the multipart uploads left unused for
    /// `facade.upload_idle_timeout`, every so often, for good.
    pub async fn expire_uploads(&self) {
        let mut tick = tokio::time::interval(self.uploads.expiry_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let n = self.uploads.expire().await;
            self.metrics.uploads_expired.inc_by(n);
        }
    }

    fn request_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let t = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("{t:X}{n:08X}")
    }
}

/// One request, authenticated, on its way to an operation.
pub(super) struct Req<'a> {
    pub state: &'a State,
    pub client: Arc<ClientShare>,
    /// The access key that signed it (`None`: anonymous).
    pub owner: Option<String>,
    pub bucket: String,
    pub key: String,
    /// `/bucket/key` as the client named it.
    pub resource: String,
    pub query: Query,
    pub headers: HeaderMap,
    pub body: Incoming,
    pub check: PayloadCheck,
}

impl Req<'_> {
    /// The bucket's backend prefix (the bucket exists: checked before).
    pub fn prefix(&self) -> &ObjectUri {
        &self.state.buckets[&self.bucket]
    }

    /// The backend URI of the request's key.
    pub fn uri(&self) -> Result<ObjectUri, S3Error> {
        object_uri(self.prefix(), &self.key).map_err(|e| e.on(self.resource.clone()))
    }

    /// The backend serving `uri`.
    pub fn backend(&self, uri: &ObjectUri) -> Result<Arc<dyn sluice_storage::Storage>, S3Error> {
        self.state
            .engine
            .backend(uri)
            .map_err(|e| S3Error::read(&e, &self.resource))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The decoded query parameters, in order.
#[derive(Debug, Default)]
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Query {
        Query(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (super::sigv4::decode(k), super::sigv4::decode(v))
                })
                .collect(),
        )
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether every parameter is one of `names`, a presigned URL's
    /// `X-Amz-*` or the AWS SDKs' `x-id` (which names the operation).
    pub fn only(&self, names: &[&str]) -> bool {
        self.0
            .iter()
            .all(|(k, _)| names.contains(&k.as_str()) || k.starts_with("X-Amz-") || k == "x-id")
    }

    /// Whether `name` is present (with or without a value).
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// Answers one request (see the module docs).
pub async fn handle(
    state: &State,
    client: Arc<ClientShare>,
    local: bool,
    req: hyper::Request<Incoming>,
) -> Resp {
    let started = Instant::now();
    let id = state.request_id();
    let head = req.method() == Method::HEAD;
    let (op, result) = dispatch(state, client, local, req).await;
    let (mut resp, code) = match result {
        Ok(resp) => (resp, "ok"),
        Err(e) => {
            let code = e.code;
            (error_response(&e, &id, head), code)
        }
    };
    state.metrics.finished(
        op,
        resp.status().as_u16(),
        code,
        started.elapsed().as_secs_f64(),
    );
    if let Ok(v) = http::HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-amz-request-id", v);
    }
    resp
}

/// The operation a request names.
fn operation(method: &Method, bucket: Option<&str>, key: &str, q: &Query) -> Operation {
    use Operation::*;
    match (method, bucket, key.is_empty()) {
        (&Method::GET, None, _) => list_buckets,
        (&Method::HEAD, Some(_), true) => head_bucket,
        (&Method::GET, Some(_), true) if q.has("location") => get_bucket_location,
        (&Method::GET, Some(_), true) if q.get("list-type") == Some("2") => list_objects_v2,
        (&Method::GET, Some(_), true) if q.only(&LIST_V1_PARAMS) => list_objects,
        (&Method::POST, Some(_), true) if q.has("delete") => delete_objects,
        (&Method::GET, Some(_), false) if !q.has("uploadId") => get_object,
        (&Method::HEAD, Some(_), false) => head_object,
        (&Method::PUT, Some(_), false) if q.has("uploadId") && q.has("partNumber") => upload_part,
        (&Method::PUT, Some(_), false) if q.only(&[]) => put_object,
        (&Method::POST, Some(_), false) if q.has("uploads") => create_multipart_upload,
        (&Method::POST, Some(_), false) if q.has("uploadId") => complete_multipart_upload,
        (&Method::DELETE, Some(_), false) if q.has("uploadId") => abort_multipart_upload,
        (&Method::DELETE, Some(_), false) if q.only(&[]) => delete_object,
        _ => other,
    }
}

/// Parameters of ListObjects (V1) and GetObject's response overrides.
const LIST_V1_PARAMS: [&str; 5] = ["prefix", "delimiter", "marker", "max-keys", "encoding-type"];

async fn dispatch(
    state: &State,
    client: Arc<ClientShare>,
    local: bool,
    req: hyper::Request<Incoming>,
) -> (Operation, Result<Resp, S3Error>) {
    let (parts, body) = req.into_parts();
    let raw_query = parts.uri.query().unwrap_or_default();
    let query = Query::parse(raw_query);
    let path = parts.uri.path();
    let (bucket, key) = match path.trim_start_matches('/').split_once('/') {
        Some((b, k)) => (super::sigv4::decode(b), super::sigv4::decode(k)),
        None => (
            super::sigv4::decode(path.trim_start_matches('/')),
            String::new(),
        ),
    };
    let bucket = Some(bucket).filter(|b| !b.is_empty());
    let op = operation(&parts.method, bucket.as_deref(), &key, &query);
    let signed = RequestParts {
        method: parts.method.as_str(),
        path,
        query: raw_query,
        headers: &parts.headers,
    };
    let checked = authenticate(state, &signed, local);
    let result = async {
        let (principal, check) = checked?;
        let resource = match &bucket {
            Some(b) if key.is_empty() => format!("/{b}"),
            Some(b) => format!("/{b}/{key}"),
            None => "/".to_owned(),
        };
        let Some(bucket) = bucket else {
            return match op {
                Operation::list_buckets => list::list_buckets(state, &principal),
                _ => Err(S3Error::new(
                    "MethodNotAllowed",
                    405,
                    "the method is not allowed on /",
                )),
            };
        };
        if !state.buckets.contains_key(&bucket) {
            return Err(S3Error::no_such_bucket(&bucket));
        }
        if !principal.may_use(&bucket) {
            return Err(S3Error::access_denied(&resource));
        }
        let req = Req {
            state,
            client,
            owner: principal.access_key.clone(),
            bucket,
            key,
            resource,
            query,
            headers: parts.headers,
            body,
            check,
        };
        run(op, req).await
    }
    .await;
    (op, result)
}

fn authenticate(
    state: &State,
    parts: &RequestParts<'_>,
    local: bool,
) -> Result<(Principal, PayloadCheck), S3Error> {
    if Verifier::is_signed(parts) {
        return state.verifier.verify(parts, SystemTime::now());
    }
    if parts
        .query
        .split('&')
        .any(|p| p.starts_with("AWSAccessKeyId="))
    {
        // boto3 presigns with SigV2 unless told `signature_version="s3v4"`.
        return Err(S3Error::new(
            "AccessDenied",
            403,
            "only AWS Signature Version 4 is accepted (presign with signature_version s3v4)",
        ));
    }
    if state.config.anonymous && local {
        let chunked = parts
            .headers
            .get("x-amz-content-sha256")
            .is_some_and(|v| v.as_bytes().starts_with(b"STREAMING-"));
        let check = match chunked {
            true => PayloadCheck::Chunked { signer: None },
            false => PayloadCheck::None,
        };
        return Ok((Principal::anonymous(), check));
    }
    Err(S3Error::new(
        "AccessDenied",
        403,
        "anonymous access is not allowed: sign the request",
    ))
}

async fn run(op: Operation, req: Req<'_>) -> Result<Resp, S3Error> {
    use Operation::*;
    if matches!(
        op,
        put_object
            | create_multipart_upload
            | upload_part
            | complete_multipart_upload
            | abort_multipart_upload
            | delete_object
            | delete_objects
    ) && !req.state.config.writes
    {
        return Err(S3Error::new(
            "AccessDenied",
            403,
            "writes are off on this facade (facade.writes)",
        )
        .on(req.resource));
    }
    match op {
        head_bucket => Ok(empty(StatusCode::OK)),
        get_bucket_location => list::location(&req),
        list_objects | list_objects_v2 => list::list_objects(&req, op == list_objects_v2).await,
        get_object => read::get(req).await,
        head_object => read::head(&req).await,
        put_object => write::put(req).await,
        delete_object => write::delete(&req).await,
        delete_objects => write::delete_many(req).await,
        create_multipart_upload => multipart::create(&req).await,
        upload_part => multipart::upload_part(req).await,
        complete_multipart_upload => multipart::complete(req).await,
        abort_multipart_upload => multipart::abort(&req).await,
        list_buckets | other => Err(S3Error::new(
            "NotImplemented",
            501,
            "this operation is not implemented by the facade",
        )
        .on(req.resource)),
    }
}

/// The backend URI of `key` under `prefix`, never outside it (see the
/// module docs).
pub fn object_uri(prefix: &ObjectUri, key: &str) -> Result<ObjectUri, S3Error> {
    let dot = |segment: &str| {
        let decoded = super::sigv4::decode(segment);
        decoded == "." || decoded == ".."
    };
    if key.contains('\0') || key.split(['/', '\\']).any(dot) {
        return Err(S3Error::invalid_argument(
            "keys with '.' or '..' path segments are refused by this facade",
        ));
    }
    let uri = ObjectUri::parse(&format!("{prefix}{key}"))
        .map_err(|e| S3Error::invalid_argument(e.message().to_owned()))?;
    let inside = uri.scheme() == prefix.scheme()
        && uri.endpoint() == prefix.endpoint()
        && uri.bucket() == prefix.bucket()
        && uri.key().starts_with(prefix.key());
    if !inside {
        return Err(S3Error::invalid_argument("the key leaves its bucket"));
    }
    Ok(uri)
}

/// An answer without a body.
pub(super) fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

/// An XML answer.
pub(super) fn xml(status: StatusCode, body: String) -> Resp {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/xml"),
    );
    r
}

fn error_response(e: &S3Error, id: &str, head: bool) -> Resp {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = if head {
        empty(status)
    } else {
        xml(status, e.body(id))
    };
    for (name, value) in &e.headers {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            r.headers_mut().insert(*name, v);
        }
    }
    r
}

#[cfg(test)]
mod tests;
