//! `s3://` backend on aws-sdk-s3.
//!
//! [`S3Backends`] loads the SDK configuration once (credential chain,
//! region, retries, timeouts, checksums, HTTP clients; see `client.rs`) and
//! builds, at startup, one [`S3Storage`] per endpoint the configuration
//! names: `s3://bucket/key` uses `[storage.s3] endpoint` (or AWS),
//! `s3://host:port/bucket/key` the `[[storage.s3.endpoints]]` entry of that
//! `host:port`. The set is fixed: a URI naming any other endpoint is
//! `PermissionDenied` before any request exists, and names that resolve to
//! metadata, link-local or unspecified addresses are refused at connect
//! time (see `endpoint.rs`). Requests are in `get.rs`, `list.rs` and
//! `upload.rs`; SDK errors become [`StorageError`]s in `errors.rs`.
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
//! Servers that send no ETag are held to size and Last-Modified instead
//! (`If-Unmodified-Since`, see [`Version`](crate::Version)).

mod client;
mod config;
pub(crate) mod endpoint;
mod errors;
mod gateways;
mod get;
mod list;
mod upload;

pub use crate::version::etag_matches;
pub use config::{ChecksumMode, REDACTED, S3Config, S3Endpoint, Secret};
pub use gateways::{GatewayLabels, GatewayMetrics};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use bytes::Bytes;

use self::endpoint::Address;
use crate::{
    GetOptions, GetResult, ListOptions, ListPage, MultipartUpload, ObjectMeta, ObjectUri, Result,
    Scheme, Storage, StorageError,
};

/// The clients of the default endpoint and of every configured explicit
/// endpoint; fixed at startup.
#[derive(Debug)]
pub struct S3Backends {
    default: Arc<S3Storage>,
    /// By canonical `host:port`: exactly the `[[storage.s3.endpoints]]`.
    explicit: HashMap<Address, Arc<S3Storage>>,
    /// Requests and health of the gateways of multi-endpoint stores.
    metrics: GatewayMetrics,
}

impl S3Backends {
    /// Validates `config`, loads the SDK configuration (region chain) and
    /// builds every client, reading and checking the CA bundles.
    pub async fn new(config: &S3Config) -> Result<Self> {
        client::validate(config)?;
        let sdk = client::load_sdk_config(config).await?;
        let default = Arc::new(S3Storage {
            client: client::default_client(&sdk, config).await?,
            // AWS itself (no endpoint) is HTTPS.
            tls: config
                .endpoint
                .as_deref()
                .is_none_or(|url| url.starts_with("https://")),
            upload_concurrency: config.upload_concurrency,
            gateways: None,
        });
        let metrics = GatewayMetrics::default();
        let default_ip = config
            .endpoint
            .as_deref()
            .and_then(|url| url.parse::<http::Uri>().ok())
            .and_then(|url| {
                let host = url.host()?;
                let host = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host);
                host.parse::<std::net::IpAddr>().ok()
            });
        if let Some(ip) = default_ip
            && let Some(what) = endpoint::refused(ip)
        {
            tracing::warn!(
                endpoint = %ip,
                "[storage.s3] endpoint is a {what} address: it is allowed because it is written as an ip address"
            );
        }
        let mut explicit = HashMap::with_capacity(config.endpoints.len());
        for ep in &config.endpoints {
            let address = Address::parse(&ep.address).map_err(|why| {
                StorageError::invalid("s3://", format!("[[storage.s3.endpoints]]: {why}"))
            })?;
            if let Some(ip) = address.ip()
                && let Some(what) = endpoint::refused(ip)
            {
                tracing::warn!(
                    endpoint = %address,
                    "[[storage.s3.endpoints]] lists a {what} address: it is allowed because it is listed as an ip address"
                );
            }
            let client = client::endpoint_client(&sdk, config, &address, ep).await?;
            let tls = ep.scheme == "https";
            let gateways = if ep.gateways.is_empty() {
                None
            } else {
                let mut clients = Vec::with_capacity(ep.gateways.len());
                for gw in &ep.gateways {
                    let at = Address::parse(gw).map_err(|why| {
                        StorageError::invalid("s3://", format!("gateway {gw:?}: {why}"))
                    })?;
                    clients.push((
                        at.to_string(),
                        client::endpoint_client(&sdk, config, &at, ep).await?,
                    ));
                }
                let backoff = gateways::Backoff {
                    first: config.gateway_backoff,
                    max: config.gateway_max_backoff,
                    connect_timeout: config.connect_timeout,
                };
                let store = format!("s3://{address}");
                Some(gateways::Gateways::new(&store, clients, backoff, &metrics))
            };
            explicit.insert(
                address,
                Arc::new(S3Storage {
                    client,
                    tls,
                    upload_concurrency: config.upload_concurrency,
                    gateways,
                }),
            );
        }
        Ok(S3Backends {
            default,
            explicit,
            metrics,
        })
    }

    /// The gateway metrics, for the daemon's registry.
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    /// The client for the endpoint of `uri`: the default one, or the
    /// configured one of its `host:port`. Any other endpoint is
    /// `PermissionDenied`, and nothing is sent anywhere.
    pub fn for_uri(&self, uri: &ObjectUri) -> Result<Arc<dyn Storage>> {
        if uri.scheme() != Scheme::S3 {
            return Err(StorageError::invalid(uri.to_string(), "not an s3:// uri"));
        }
        let Some(endpoint) = uri.endpoint() else {
            return Ok(self.default.clone());
        };
        let storage = Address::parse(endpoint)
            .ok()
            .and_then(|address| self.explicit.get(&address))
            .cloned()
            .ok_or_else(|| {
                StorageError::denied(
                    uri.to_string(),
                    "endpoint not configured: s3://host:port/… uris may only name the endpoints \
                     the operator lists under [[storage.s3.endpoints]]",
                )
            })?;
        Ok(storage)
    }
}

/// One S3 endpoint.
#[derive(Debug)]
pub struct S3Storage {
    client: Client,
    /// The endpoint is HTTPS: uploads go with `UNSIGNED-PAYLOAD`
    /// (`upload.rs`).
    tls: bool,
    /// Parts of one upload in flight at once.
    upload_concurrency: usize,
    /// The servers of a multi-endpoint store; `None`: `client` only.
    gateways: Option<gateways::Gateways>,
}

impl S3Storage {
    /// Runs `op` with the client of the gateway to use (failing over to
    /// the next while one is unreachable), or with the one client.
    async fn with_client<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        match &self.gateways {
            Some(gateways) => gateways.run(op).await,
            None => {
                let mut op = op;
                op(self.client.clone()).await
            }
        }
    }
}

#[async_trait]
impl Storage for S3Storage {
    fn name(&self) -> &'static str {
        "s3"
    }

    async fn head(&self, uri: &ObjectUri) -> Result<ObjectMeta> {
        object_key(uri)?;
        let out = self
            .with_client(|client| async move {
                client
                    .head_object()
                    .bucket(uri.bucket())
                    .key(uri.key())
                    .send()
                    .await
                    .map_err(|e| errors::map(e, uri, "head"))
            })
            .await?;
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
        self.with_client(|client| {
            let opts = opts.clone();
            async move { get::get(&client, uri, opts).await }
        })
        .await
    }

    async fn list(&self, prefix: &ObjectUri, opts: &ListOptions) -> Result<ListPage> {
        self.with_client(|client| async move { list::list(&client, prefix, opts).await })
            .await
    }

    async fn put(&self, uri: &ObjectUri, data: Bytes) -> Result<ObjectMeta> {
        object_key(uri)?;
        let tls = self.tls;
        self.with_client(|client| {
            let data = data.clone();
            async move { upload::put(&client, tls, uri, data).await }
        })
        .await
    }

    /// With gateways, the upload stays on the gateway that started it.
    async fn start_multipart(&self, uri: &ObjectUri) -> Result<Box<dyn MultipartUpload>> {
        object_key(uri)?;
        let (tls, concurrency) = (self.tls, self.upload_concurrency);
        let upload = self
            .with_client(|client| async move {
                upload::S3Upload::start(&client, tls, concurrency, uri).await
            })
            .await?;
        Ok(Box::new(upload))
    }

    fn min_part_size(&self) -> u64 {
        upload::MIN_PART_SIZE
    }

    async fn delete(&self, uri: &ObjectUri) -> Result<()> {
        // DeleteObject succeeds for keys that do not exist, but the contract
        // says deleting a missing object is NotFound: HEAD first. (A delete
        // racing with another one may still both succeed.)
        self.head(uri).await?;
        self.with_client(|client| async move {
            client
                .delete_object()
                .bucket(uri.bucket())
                .key(uri.key())
                .send()
                .await
                .map_err(|e| errors::map(e, uri, "delete"))
        })
        .await?;
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

fn system_time(t: &aws_smithy_types::DateTime) -> Option<SystemTime> {
    SystemTime::try_from(*t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_configured_endpoints_have_clients() {
        let config = S3Config {
            region: Some("us-east-1".into()),
            endpoints: vec![
                S3Endpoint {
                    scheme: "http".into(),
                    ..S3Endpoint::new("127.0.0.1:9000")
                },
                S3Endpoint::new("MinIO.local:9001"),
                S3Endpoint::new("[::1]:9002"),
            ],
            ..S3Config::default()
        };
        let backends = S3Backends::new(&config).await.unwrap();
        assert_eq!(backends.explicit.len(), 3);
        let client = |uri: &str| backends.for_uri(&ObjectUri::parse(uri).unwrap());
        let a1 = client("s3://127.0.0.1:9000/bkt/x").unwrap();
        let a2 = client("s3://127.0.0.1:9000/other/y").unwrap();
        assert!(Arc::ptr_eq(&a1, &a2), "one client per endpoint");
        let named = client("s3://minio.LOCAL:9001/bkt/x").unwrap();
        assert!(!Arc::ptr_eq(&a1, &named));
        assert!(Arc::ptr_eq(
            &named,
            &client("s3://minio.local:9001/b/k").unwrap()
        ));
        assert!(client("s3://[0:0::1]:9002/bkt/x").is_ok());
        assert!(!Arc::ptr_eq(&a1, &client("s3://bkt/x").unwrap()));
        for denied in [
            "s3://127.0.0.1:9001/bkt/x",
            "s3://127.0.0.2:9000/bkt/x",
            "s3://localhost:9000/bkt/x",
            "s3://169.254.169.254:80/latest/meta-data",
            "s3://[fd00:ec2::254]:80/latest/meta-data",
            "s3://minio.local:09001x/bkt/x",
            "s3://user@minio.local:9001/bkt/x",
        ] {
            let Ok(uri) = ObjectUri::parse(denied) else {
                continue;
            };
            let e = backends.for_uri(&uri).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::PermissionDenied, "{denied}");
            assert_eq!(e.uri(), uri.to_string());
            assert!(e.message().starts_with("endpoint not configured"), "{e}");
        }
        assert_eq!(backends.explicit.len(), 3, "refusals add no client");
        let file = ObjectUri::parse("file:///x").unwrap();
        assert_eq!(
            backends.for_uri(&file).unwrap_err().kind(),
            crate::ErrorKind::InvalidArgument
        );
    }
}
