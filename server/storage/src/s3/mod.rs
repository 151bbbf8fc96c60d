//! `s3://` backend on aws-sdk-s3.
//!
//! [`S3Backends`] loads the SDK configuration once (credential chain,
//! region, retries, timeouts, checksums, HTTP client; see `client.rs`) and
//! hands out one [`S3Storage`] per endpoint: `s3://bucket/key` uses
//! `[storage.s3] endpoint` (or AWS), `s3://host:port/bucket/key` a client
//! for that endpoint, built on first use and cached. Requests are in
//! `get.rs`, `list.rs` and `upload.rs`; SDK errors become [`StorageError`]s
//! in `errors.rs`.
//!
//! # Retries
//!
//! Every request goes through the SDK's *standard* retry mode:
//! - **What is retried**: connection failures and timeouts, HTTP 500, 502,
//!   503 and 504, and the throttling and transient error codes (`SlowDown`,
//!   `Throttling`, `RequestTimeout`, `InternalError`, …), also when
//!   CompleteMultipartUpload reports them in a 200 response. Not retried:
//!   4xx answers such as 403, 404, 412 and 416, which a retry would repeat.
//! - **How often**: `max_attempts` attempts in all (default 5), within a
//!   retry quota shared by the client (a token bucket of 500, drained by
//!   failing retries, refilled by successes) so that an outage does not
//!   multiply traffic.
//! - **Backoff**: exponential with full jitter: before retry *n* a uniformly
//!   random wait in `[0, initial_backoff · 2ⁿ⁻¹]`, capped at `max_backoff`.
//! - **Timeouts**: `connect_timeout` per connection and `attempt_timeout` per
//!   attempt, until the response headers of a GET (the body is not covered).
//!
//! What the SDK cannot retry is left to the engine above, which retries
//! transient kinds (`Throttled`, `Unavailable`, `Protocol`) with its own
//! policy: an error in the middle of a GET body (`Unavailable`), and errors
//! that outlasted the attempts. This module adds one request of its own: a
//! 416 for a range starting at 0 is repeated without a range, to tell an
//! empty object from a bad range (see `get.rs`).
//!
//! # ETags
//!
//! ETags are kept exactly as the server sends them (quoted, for S3) and
//! compared by [`etag_matches`], which ignores the quotes, so an ETag from a
//! listing, a HEAD or a GET can be passed back as `if_match` either way.

mod client;
mod config;
mod errors;
mod get;
mod list;
mod upload;

pub use config::{ChecksumMode, REDACTED, S3Config, Secret};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_s3::Client;
use bytes::Bytes;

use crate::{
    GetOptions, GetResult, ListOptions, ListPage, MultipartUpload, ObjectMeta, ObjectUri, Result,
    Scheme, Storage, StorageError,
};

/// Clients for the default endpoint and for every explicit endpoint named in URIs.
#[derive(Debug)]
pub struct S3Backends {
    config: S3Config,
    sdk: SdkConfig,
    default: Arc<S3Storage>,
    /// By `host:port`. Grows with the distinct endpoints clients name; each
    /// entry is a client sharing the SDK configuration and its HTTP pool.
    explicit: Mutex<HashMap<String, Arc<S3Storage>>>,
}

impl S3Backends {
    /// Loads the SDK configuration (credential chain, region) once.
    pub async fn new(config: &S3Config) -> Result<Self> {
        client::validate(config)?;
        let sdk = client::load_sdk_config(config).await?;
        let default = Arc::new(S3Storage {
            client: client::s3_client(&sdk, config, None),
        });
        Ok(S3Backends {
            config: config.clone(),
            sdk,
            default,
            explicit: Mutex::new(HashMap::new()),
        })
    }

    /// The client for the endpoint of `uri`.
    pub fn for_uri(&self, uri: &ObjectUri) -> Result<Arc<dyn Storage>> {
        if uri.scheme() != Scheme::S3 {
            return Err(StorageError::invalid(uri.to_string(), "not an s3:// uri"));
        }
        let Some(endpoint) = uri.endpoint() else {
            return Ok(self.default.clone());
        };
        let mut explicit = self
            .explicit
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let storage = explicit.entry(endpoint.to_owned()).or_insert_with(|| {
            Arc::new(S3Storage {
                client: client::s3_client(&self.sdk, &self.config, Some(endpoint)),
            })
        });
        Ok(storage.clone())
    }
}

/// One S3 endpoint.
#[derive(Debug)]
pub struct S3Storage {
    client: Client,
}

#[async_trait]
impl Storage for S3Storage {
    fn name(&self) -> &'static str {
        "s3"
    }

    async fn head(&self, uri: &ObjectUri) -> Result<ObjectMeta> {
        object_key(uri)?;
        let out = self
            .client
            .head_object()
            .bucket(uri.bucket())
            .key(uri.key())
            .send()
            .await
            .map_err(|e| errors::map(e, uri, "head"))?;
        let size = out
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| {
                StorageError::protocol(uri.to_string(), "head response has no content-length")
            })?;
        Ok(ObjectMeta {
            uri: uri.to_string(),
            size,
            etag: out.e_tag().map(str::to_owned),
            last_modified: out.last_modified().and_then(system_time),
            version: out.version_id().map(str::to_owned),
        })
    }

    async fn get(&self, uri: &ObjectUri, opts: GetOptions) -> Result<GetResult> {
        get::get(&self.client, uri, opts).await
    }

    async fn list(&self, prefix: &ObjectUri, opts: &ListOptions) -> Result<ListPage> {
        list::list(&self.client, prefix, opts).await
    }

    async fn put(&self, uri: &ObjectUri, data: Bytes) -> Result<ObjectMeta> {
        object_key(uri)?;
        upload::put(&self.client, uri, data).await
    }

    async fn start_multipart(&self, uri: &ObjectUri) -> Result<Box<dyn MultipartUpload>> {
        object_key(uri)?;
        Ok(Box::new(upload::S3Upload::start(&self.client, uri).await?))
    }

    fn min_part_size(&self) -> u64 {
        upload::MIN_PART_SIZE
    }

    async fn delete(&self, uri: &ObjectUri) -> Result<()> {
        // DeleteObject succeeds for keys that do not exist, but the contract
        // says deleting a missing object is NotFound: HEAD first. (A delete
        // racing with another one may still both succeed.)
        self.head(uri).await?;
        self.client
            .delete_object()
            .bucket(uri.bucket())
            .key(uri.key())
            .send()
            .await
            .map_err(|e| errors::map(e, uri, "delete"))?;
        Ok(())
    }
}

/// The key of a URI that must name an object, not a bucket.
fn object_key(uri: &ObjectUri) -> Result<&str> {
    match uri.key() {
        "" => Err(StorageError::invalid(
            uri.to_string(),
            "names a bucket, not an object",
        )),
        key => Ok(key),
    }
}

/// Whether two ETags are the same, with or without their quotes.
pub fn etag_matches(a: &str, b: &str) -> bool {
    let bare = |t: &str| {
        let t = t.trim();
        t.strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(t)
            .to_owned()
    };
    bare(a) == bare(b)
}

fn system_time(t: &aws_smithy_types::DateTime) -> Option<SystemTime> {
    SystemTime::try_from(*t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_compare_without_their_quotes() {
        assert!(etag_matches("\"abc\"", "abc"));
        assert!(etag_matches("abc", "\"abc\""));
        assert!(!etag_matches("\"abc\"", "\"abd\""));
        assert!(!etag_matches("\"abc-2\"", "abc"));
    }

    #[tokio::test]
    async fn explicit_endpoints_get_one_cached_client_each() {
        let config = S3Config {
            region: Some("us-east-1".into()),
            endpoint_scheme: "http".into(),
            access_key_id: Some("k".into()),
            secret_access_key: Some(Secret::new("s")),
            ..S3Config::default()
        };
        let backends = S3Backends::new(&config).await.unwrap();
        let a = ObjectUri::parse("s3://127.0.0.1:9000/bkt/x").unwrap();
        let b = ObjectUri::parse("s3://127.0.0.1:9001/bkt/x").unwrap();
        let plain = ObjectUri::parse("s3://bkt/x").unwrap();
        let (a1, a2) = (backends.for_uri(&a).unwrap(), backends.for_uri(&a).unwrap());
        assert!(Arc::ptr_eq(&a1, &a2));
        assert!(!Arc::ptr_eq(&a1, &backends.for_uri(&b).unwrap()));
        assert!(!Arc::ptr_eq(&a1, &backends.for_uri(&plain).unwrap()));
        let file = ObjectUri::parse("file:///x").unwrap();
        assert_eq!(
            backends.for_uri(&file).unwrap_err().kind(),
            crate::ErrorKind::InvalidArgument
        );
    }
}
