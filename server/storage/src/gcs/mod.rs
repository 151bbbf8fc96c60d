//! `gs://` backend: Google Cloud Storage's JSON API.
//!
//! Stat, list, simple uploads and deletes go through the `gcloud-storage`
//! crate; resumable uploads through its session client (`upload.rs`). The
//! GET of a read is made directly on the same reqwest client and token
//! (`get.rs`): gcloud-storage's download hides the response headers that
//! carry the object's size and generation, and reading them from the first
//! part's answer is what spares a metadata request before every read.
//!
//! Why this crate: Google's own `google-cloud-storage` lists, stats and
//! deletes only over gRPC (`google.storage.v2`), which no emulator serves,
//! so it cannot pass the conformance suite against `fake-gcs-server`;
//! `gcloud-storage` is the JSON API throughout and serves real GCS alike.
//!
//! # Credentials
//!
//! `[storage.gcs] anonymous`: none. `credentials_file`: that file
//! (service-account key, authorized user, external account). Otherwise
//! application default credentials: `GOOGLE_APPLICATION_CREDENTIALS`,
//! gcloud's `application_default_credentials.json`, then the metadata server
//! (GCE, GKE workload identity). They are loaded at the first `gs://`
//! request, not at startup, so a daemon with no Google account starts and
//! serves everything else; a failed load is tried again at the next request.
//!
//! # Versions
//!
//! A `gs://` object's ETag, as sluice reports it, is its **generation**
//! (decimal): the number GCS changes on every overwrite of the content
//! (and not on metadata updates), and the one precondition its JSON API
//! takes. `ObjectMeta::version` is the generation too.
//!
//! # Retries
//!
//! Requests that can be repeated as they are (stat, list, delete, a GET
//! until its headers, a whole-object upload, opening an upload session)
//! are retried by `http::retry`: up to `max_attempts` in all
//! on 429, 503 (`Throttled`), 408, 500, 502, 504, timeouts and connection
//! failures (`Unavailable`), with exponential backoff and full jitter from
//! `initial_backoff`, or the server's `Retry-After` when longer, never above
//! `max_backoff`. A body broken midway is `Unavailable` for the engine to
//! retry its part. The chunks of a resumable upload are not retried: a
//! failed chunk fails the upload, whose session is cancelled (nothing
//! becomes visible).

mod config;
mod get;
mod http;
mod upload;

pub use config::GcsConfig;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use gcloud_storage::client::{Client, ClientConfig};
use gcloud_storage::http::objects::Object;
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::list::ListObjectsRequest;
use gcloud_storage::http::objects::upload::{Media, UploadObjectRequest, UploadType};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use token_source::{TokenSource, TokenSourceProvider};
use tokio::sync::OnceCell;

use crate::{
    GetOptions, GetResult, ListOptions, ListPage, MultipartUpload, ObjectMeta, ObjectUri, Result,
    Scheme, Storage, StorageError, Version,
};

/// Server pages one `list` call reads at most (GCS may answer with empty
/// pages that carry a token).
const MAX_SERVER_PAGES: usize = 16;

/// Resumable upload chunks are multiples of this (GCS's rule).
pub const CHUNK_GRANULARITY: u64 = 256 << 10;

/// What stays escaped in a path segment: all but `A-Za-z0-9-._~`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The `gs://` backend.
#[derive(Debug)]
pub struct GcsStorage {
    config: GcsConfig,
    /// Base URL, no trailing `/`.
    endpoint: String,
    http: reqwest::Client,
    auth: OnceCell<Auth>,
}

/// What needs credentials, built at the first request.
struct Auth {
    token: Option<Arc<dyn TokenSource>>,
    api: Client,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("anonymous", &self.token.is_none())
            .finish_non_exhaustive()
    }
}

/// Hands gcloud-storage the token source already loaded.
#[derive(Debug)]
struct Loaded(Arc<dyn TokenSource>);

impl TokenSourceProvider for Loaded {
    fn token_source(&self) -> Arc<dyn TokenSource> {
        self.0.clone()
    }
}

impl GcsStorage {
    /// Checks `config` and builds the HTTP client; loads no credentials.
    pub fn new(config: &GcsConfig) -> Result<Self> {
        config.validate()?;
        Ok(GcsStorage {
            endpoint: config.endpoint().to_owned(),
            http: http::client(config)?,
            config: config.clone(),
            auth: OnceCell::new(),
        })
    }

    async fn auth(&self) -> Result<&Auth> {
        self.auth
            .get_or_try_init(|| async {
                let token = http::token_source(&self.config).await?;
                let api = Client::new(ClientConfig {
                    http: Some(reqwest_middleware::ClientBuilder::new(self.http.clone()).build()),
                    storage_endpoint: self.endpoint.clone(),
                    token_source_provider: token
                        .clone()
                        .map(|t| Box::new(Loaded(t)) as Box<dyn TokenSourceProvider>),
                    ..ClientConfig::default()
                });
                Ok(Auth { token, api })
            })
            .await
    }
}

/// `{endpoint}/storage/v1/b/{bucket}/o/{object}`, both escaped.
fn object_url(endpoint: &str, uri: &ObjectUri) -> String {
    format!(
        "{endpoint}/storage/v1/b/{}/o/{}",
        utf8_percent_encode(uri.bucket(), SEGMENT),
        utf8_percent_encode(uri.key(), SEGMENT)
    )
}

/// The generation a version names (its ETag, as `meta_of` reports it);
/// `None` for a version without an ETag (held to its size and time only).
fn generation_of(shown: &str, version: &Version) -> Result<Option<i64>> {
    let Some(etag) = version.etag.as_deref() else {
        return Ok(None);
    };
    etag.trim_matches('"')
        .parse::<i64>()
        .map(Some)
        .map_err(|_| {
            StorageError::new(
                crate::ErrorKind::Changed,
                shown,
                "the version asked for is not a generation of this gs:// object",
            )
        })
}

fn object_name(uri: &ObjectUri) -> Result<&str> {
    if uri.scheme() != Scheme::Gs {
        return Err(StorageError::invalid(uri.to_string(), "not a gs:// uri"));
    }
    if uri.key().is_empty() {
        return Err(StorageError::invalid(uri.to_string(), "no object name"));
    }
    Ok(uri.key())
}

/// A listing token: entries of the server page already served, then the
/// server's own token (empty for the first page).
fn parse_token(shown: &str, token: Option<&str>) -> Result<(usize, Option<String>)> {
    let Some(token) = token else {
        return Ok((0, None));
    };
    let (skip, server) = token
        .split_once(':')
        .and_then(|(n, t)| Some((n.parse::<usize>().ok()?, t)))
        .ok_or_else(|| StorageError::invalid(shown, "malformed page token"))?;
    Ok((skip, (!server.is_empty()).then(|| server.to_owned())))
}

/// An object's metadata as sluice reports it. Times are whole seconds,
/// as a GET's `Last-Modified` tells them, so every answer agrees.
fn meta_of(uri: &ObjectUri, object: &Object) -> Result<ObjectMeta> {
    let size = u64::try_from(object.size)
        .map_err(|_| StorageError::protocol(uri.to_string(), "negative object size"))?;
    let generation = object.generation.to_string();
    Ok(ObjectMeta {
        uri: uri.with_key(object.name.clone()).to_string(),
        size,
        etag: Some(generation.clone()),
        last_modified: object.updated.map(|t| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(t.unix_timestamp().max(0) as u64)
        }),
        version: Some(generation),
    })
}

#[async_trait]
impl Storage for GcsStorage {
    fn name(&self) -> &'static str {
        "gs"
    }

    async fn head(&self, uri: &ObjectUri) -> Result<ObjectMeta> {
        let name = object_name(uri)?;
        let shown = uri.to_string();
        let api = &self.auth().await?.api;
        let req = GetObjectRequest {
            bucket: uri.bucket().to_owned(),
            object: name.to_owned(),
            ..GetObjectRequest::default()
        };
        let object = http::retry(&self.config, || async {
            api.get_object(&req)
                .await
                .map_err(|e| http::api_error(&shown, "stat", e))
        })
        .await?;
        meta_of(uri, &object)
    }

    async fn get(&self, uri: &ObjectUri, opts: GetOptions) -> Result<GetResult> {
        object_name(uri)?;
        self.auth().await?;
        get::get(self, uri, opts).await
    }

    async fn list(&self, prefix: &ObjectUri, opts: &ListOptions) -> Result<ListPage> {
        if prefix.scheme() != Scheme::Gs {
            return Err(StorageError::invalid(prefix.to_string(), "not a gs:// uri"));
        }
        let shown = prefix.to_string();
        let api = &self.auth().await?.api;
        let page_size = opts.page_size.clamp(1, 1000);
        let (mut skip, mut server_token) = parse_token(&shown, opts.page_token.as_deref())?;
        // Objects and prefixes in one key order, exactly `page_size` of them
        // unless the listing ends: a server page may hold more (the emulator
        // counts only objects) or fewer (a page of prefixes), so the rest of
        // a page is served from the same server page, skipped over, on the
        // next call, and a short one is topped up from the next.
        let mut out = ListPage::default();
        let mut served = 0;
        for _ in 0..MAX_SERVER_PAGES {
            let req = ListObjectsRequest {
                bucket: prefix.bucket().to_owned(),
                prefix: (!prefix.key().is_empty()).then(|| prefix.key().to_owned()),
                delimiter: opts.delimiter.clone(),
                max_results: Some(i32::try_from(page_size).unwrap_or(1000)),
                page_token: server_token.clone(),
                ..ListObjectsRequest::default()
            };
            let page = http::retry(&self.config, || async {
                api.list_objects(&req)
                    .await
                    .map_err(|e| http::api_error(&shown, "list", e))
            })
            .await?;
            let mut entries: Vec<(String, Option<ObjectMeta>)> = Vec::new();
            for object in page.items.unwrap_or_default() {
                let meta = meta_of(prefix, &object)?;
                entries.push((object.name, Some(meta)));
            }
            for p in page.prefixes.unwrap_or_default() {
                entries.push((p, None));
            }
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let total = entries.len();
            let want = page_size - served;
            for (name, meta) in entries.into_iter().skip(skip).take(want) {
                served += 1;
                skip += 1;
                match meta {
                    Some(meta) => out.objects.push(meta),
                    None => out.common_prefixes.push(prefix.with_key(name).to_string()),
                }
            }
            if skip < total {
                out.next_token = Some(format!("{skip}:{}", server_token.unwrap_or_default()));
                return Ok(out);
            }
            let Some(next) = page.next_page_token.filter(|t| !t.is_empty()) else {
                return Ok(out);
            };
            (skip, server_token) = (0, Some(next));
            if served == page_size {
                break;
            }
        }
        out.next_token = server_token.map(|t| format!("{skip}:{t}"));
        Ok(out)
    }

    async fn put(&self, uri: &ObjectUri, data: Bytes) -> Result<ObjectMeta> {
        let name = object_name(uri)?.to_owned();
        let shown = uri.to_string();
        let api = &self.auth().await?.api;
        let req = UploadObjectRequest {
            bucket: uri.bucket().to_owned(),
            ..UploadObjectRequest::default()
        };
        let mut media = Media::new(name);
        media.content_length = Some(data.len() as u64);
        let upload = UploadType::Simple(media);
        // A whole-object upload is idempotent: retried like the rest.
        let object = http::retry(&self.config, || {
            let data = data.clone();
            let (req, upload, shown) = (&req, &upload, &shown);
            async move {
                api.upload_object(req, data, upload)
                    .await
                    .map_err(|e| http::api_error(shown, "put", e))
            }
        })
        .await?;
        meta_of(uri, &object)
    }

    async fn start_multipart(&self, uri: &ObjectUri) -> Result<Box<dyn MultipartUpload>> {
        let name = object_name(uri)?.to_owned();
        let api = &self.auth().await?.api;
        let started = http::retry(&self.config, || {
            upload::GcsUpload::start(api, uri, name.clone())
        });
        Ok(Box::new(started.await?))
    }

    fn min_part_size(&self) -> u64 {
        CHUNK_GRANULARITY
    }

    async fn delete(&self, uri: &ObjectUri) -> Result<()> {
        let name = object_name(uri)?;
        let shown = uri.to_string();
        let api = &self.auth().await?.api;
        let req = DeleteObjectRequest {
            bucket: uri.bucket().to_owned(),
            object: name.to_owned(),
            ..DeleteObjectRequest::default()
        };
        http::retry(&self.config, || async {
            api.delete_object(&req)
                .await
                .map_err(|e| http::api_error(&shown, "delete", e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_urls_escape_every_separator() {
        let uri = ObjectUri::parse("gs://bkt/dir/a b?c#d%e+f").unwrap();
        assert_eq!(
            object_url("http://h:1", &uri),
            "http://h:1/storage/v1/b/bkt/o/dir%2Fa%20b%3Fc%23d%25e%2Bf"
        );
    }

    #[tokio::test]
    async fn a_missing_credentials_file_is_permission_denied_naming_the_key() {
        let config = GcsConfig {
            endpoint: Some("http://127.0.0.1:9".into()),
            credentials_file: Some("/nonexistent/sluice-gcs-key.json".into()),
            ..GcsConfig::default()
        };
        let gcs = GcsStorage::new(&config).unwrap();
        let uri = ObjectUri::parse("gs://bkt/k").unwrap();
        let e = gcs.head(&uri).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::PermissionDenied, "{e}");
        assert!(e.message().contains("credentials_file"), "{e}");
        // Not cached as a success: the next request tries again.
        let e = gcs.head(&uri).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::PermissionDenied, "{e}");
    }

    #[test]
    fn versions_are_generations() {
        let g = generation_of("gs://b/k", &Version::etag("\"1700000000000001\"")).unwrap();
        assert_eq!(g, Some(1_700_000_000_000_001));
        assert_eq!(
            generation_of("gs://b/k", &Version::default()).unwrap(),
            None
        );
        let e = generation_of("gs://b/k", &Version::etag("d41d8cd98f00b204")).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Changed);
    }
}
