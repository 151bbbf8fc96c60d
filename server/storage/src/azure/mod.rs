//! `az://` backend: Azure Blob Storage on the official SDK
//! (`azure_storage_blob`, `azure_core`, `azure_identity`).
//!
//! [`AzureBackends`] builds, at startup, one [`AzureStorage`] per account
//! that `[[storage.azure.accounts]]` lists; a URI naming any other account
//! is `PermissionDenied` before a request exists. This matters beyond
//! tidiness: an Entra ID token for `https://storage.azure.com` is good for
//! every account its identity may use, so sending it to an account a
//! client names would hand it to whoever owns that account.
//!
//! Reads (`get.rs`) are one ranged GET each through the SDK's download with
//! one partition (`parallel = 1`, the partition as long as the range), so no
//! HEAD comes first; the size comes from `Content-Range`. Later parts carry
//! `If-Match` with the first part's ETag (412 is `Changed`). Listings
//! (`list.rs`) are sent through the SDK's pipeline but built and parsed
//! here: the SDK's `list_blobs` takes no delimiter. Writes (`upload.rs`)
//! stage blocks and commit the list. Requests go over one reqwest client:
//! rustls on ring, no redirects, the resolver that refuses metadata
//! addresses (as for `s3://`).
//!
//! # Retries
//!
//! The SDK's pipeline retries every request on 408, 429, 500, 502, 503 and
//! 504 and on connection failures, honouring `Retry-After` /
//! `x-ms-retry-after-ms`, up to `max_attempts` in all with exponential
//! backoff from `initial_backoff` to `max_backoff`. Not retried: 403, 404,
//! 409, 412, 416. A body broken midway is retried by the engine.
//!
//! Errors never carry the SDK's own text: it can include request URLs,
//! whose query may be a SAS token. Messages name the URI, the operation,
//! the status and the service's error code.

mod auth;
mod config;
mod get;
mod list;
mod upload;

pub use auth::account_sas;
pub use config::{AzureAccount, AzureConfig, Credential, valid_account};

use std::collections::HashMap;
use std::num::NonZero;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use azure_core::credentials::{Secret as AzSecret, TokenCredential};
use azure_core::http::headers::HeaderName;
use azure_core::http::policies::Policy;
use azure_core::http::{
    ClientOptions, ExponentialRetryOptions, RequestContent, RetryOptions, Transport, Url,
};
use azure_storage_blob::models::{
    BlobClientGetPropertiesResultHeaders, BlockBlobClientUploadOptions,
};
use azure_storage_blob::{BlobClient, BlobClientOptions};
use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::{
    ErrorKind, GetOptions, GetResult, ListOptions, ListPage, MultipartUpload, ObjectMeta,
    ObjectUri, Result, Scheme, Storage, StorageError,
};

/// What stays escaped in a blob name: all but `A-Za-z0-9-._~/`.
const BLOB_PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// The clients of every configured account; fixed at startup.
#[derive(Debug, Default)]
pub struct AzureBackends {
    accounts: HashMap<String, Arc<AzureStorage>>,
}

impl AzureBackends {
    /// Validates `config` and builds each account's client and credential
    /// (no request is sent).
    pub fn new(config: &AzureConfig) -> Result<Self> {
        config.validate()?;
        if config.accounts.is_empty() {
            return Ok(AzureBackends::default());
        }
        let http = crate::http_client::client(config.connect_timeout, config.attempt_timeout)?;
        let transport = Transport::new(Arc::new(http));
        let mut accounts = HashMap::new();
        for account in &config.accounts {
            let storage = AzureStorage::new(config, account, transport.clone())?;
            accounts.insert(account.name.clone(), Arc::new(storage));
        }
        Ok(AzureBackends { accounts })
    }

    /// The client of `uri`'s account, or `PermissionDenied` when the
    /// configuration does not list it.
    pub fn for_uri(&self, uri: &ObjectUri) -> Result<Arc<dyn Storage>> {
        let account = uri.endpoint().unwrap_or_default();
        match self.accounts.get(account) {
            Some(storage) => Ok(storage.clone()),
            None => Err(StorageError::denied(
                uri.to_string(),
                "storage account not configured: az:// uris may only name the accounts \
                 the operator lists under [[storage.azure.accounts]]",
            )),
        }
    }
}

/// Creates `container` in `account` unless it exists (tests and tooling:
/// the daemon itself never creates containers).
pub async fn create_container(config: &AzureConfig, account: &str, container: &str) -> Result<()> {
    let backends = AzureBackends::new(config)?;
    let shown = format!("az://{account}/{container}/");
    let storage = backends
        .accounts
        .get(account)
        .ok_or_else(|| StorageError::denied(&shown, "storage account not configured"))?;
    let options = azure_storage_blob::BlobContainerClientOptions {
        client_options: storage.options.clone(),
        ..Default::default()
    };
    let client = azure_storage_blob::BlobContainerClient::new(
        storage.url(container, None)?,
        storage.token.clone(),
        Some(options),
    )
    .map_err(|e| error(&shown, "create container", e))?;
    match client.create(None).await {
        Ok(_) => Ok(()),
        Err(e) if e.http_status().is_some_and(|s| u16::from(s) == 409) => Ok(()),
        Err(e) => Err(error(&shown, "create container", e)),
    }
}

/// One storage account.
#[derive(Debug)]
pub struct AzureStorage {
    account: String,
    /// Blob service URL, no trailing `/`.
    endpoint: String,
    /// A SAS token's query string, appended to every URL.
    sas: Option<String>,
    /// The Entra ID credential, when the account uses one.
    token: Option<Arc<dyn TokenCredential>>,
    /// Transport, retries, and the SharedKey signer when there is a key.
    options: ClientOptions,
    /// For requests the SDK has no method for (delimited listings).
    pipeline: azure_core::http::Pipeline,
}

impl AzureStorage {
    fn new(config: &AzureConfig, account: &AzureAccount, transport: Transport) -> Result<Self> {
        let retry = RetryOptions::exponential(ExponentialRetryOptions {
            initial_delay: azure_core::time::Duration::try_from(config.initial_backoff)
                .unwrap_or(azure_core::time::Duration::milliseconds(200)),
            max_retries: config.max_attempts.saturating_sub(1),
            max_delay: azure_core::time::Duration::try_from(config.max_backoff)
                .unwrap_or(azure_core::time::Duration::seconds(20)),
            ..ExponentialRetryOptions::default()
        });
        let mut options = ClientOptions {
            transport: Some(transport),
            retry,
            ..ClientOptions::default()
        };
        if let Some(key) = &account.account_key {
            options.per_try_policies.push(Arc::new(auth::SharedKey {
                account: account.name.clone(),
                key: AzSecret::new(key.expose().to_owned()),
            }));
        }
        let token = if account.uses_token() {
            Some(auth::token_credential(account)?)
        } else {
            None
        };
        let mut per_try: Vec<Arc<dyn Policy>> = Vec::new();
        if let Some(credential) = &token {
            per_try.push(Arc::new(
                azure_core::http::policies::auth::BearerTokenAuthorizationPolicy::new(
                    credential.clone(),
                    vec!["https://storage.azure.com/.default"],
                ),
            ));
        }
        let pipeline = azure_core::http::Pipeline::new(
            Some("sluice"),
            Some(env!("CARGO_PKG_VERSION")),
            options.clone(),
            Vec::new(),
            per_try,
            None,
        );
        let sas = account
            .sas_token
            .as_ref()
            .map(|s| s.expose().trim_start_matches('?').to_owned());
        Ok(AzureStorage {
            account: account.name.clone(),
            endpoint: account.endpoint(),
            sas,
            token,
            options,
            pipeline,
        })
    }

    /// `{endpoint}/{container}/{blob}` (escaped) with the SAS query.
    fn url(&self, container: &str, blob: Option<&str>) -> Result<Url> {
        let mut url = format!("{}/{container}", self.endpoint);
        if let Some(blob) = blob {
            url.push('/');
            url.extend(utf8_percent_encode(blob, BLOB_PATH));
        }
        let mut url = Url::parse(&url).map_err(|_| {
            StorageError::invalid(
                format!("az://{}/{container}", self.account),
                "not a valid blob url",
            )
        })?;
        if let Some(sas) = &self.sas {
            url.set_query(Some(sas));
        }
        Ok(url)
    }

    fn blob_client(&self, uri: &ObjectUri) -> Result<BlobClient> {
        let blob = blob_name(uri)?;
        let url = self.url(uri.bucket(), Some(blob))?;
        let options = BlobClientOptions {
            client_options: self.options.clone(),
            ..BlobClientOptions::default()
        };
        BlobClient::new(url, self.token.clone(), Some(options))
            .map_err(|e| error(&uri.to_string(), "client", e))
    }
}

fn blob_name(uri: &ObjectUri) -> Result<&str> {
    if uri.scheme() != Scheme::Az {
        return Err(StorageError::invalid(uri.to_string(), "not an az:// uri"));
    }
    if uri.key().is_empty() {
        return Err(StorageError::invalid(uri.to_string(), "no blob name"));
    }
    Ok(uri.key())
}

/// An SDK error as a [`StorageError`], without the SDK's text (see the
/// module comment).
fn error(uri: &str, op: &str, e: azure_core::Error) -> StorageError {
    use azure_core::error::ErrorKind as Az;
    match e.kind() {
        Az::HttpResponse {
            status,
            error_code,
            raw_response,
        } => {
            let code = u16::from(*status);
            let kind = match code {
                404 => ErrorKind::NotFound,
                401 | 403 => ErrorKind::PermissionDenied,
                412 => ErrorKind::Changed,
                400 | 411 | 413 | 416 => ErrorKind::InvalidArgument,
                429 | 503 => ErrorKind::Throttled,
                408 | 500 | 502 | 504 => ErrorKind::Unavailable,
                _ => ErrorKind::Other,
            };
            let service_code = error_code
                .as_deref()
                .map(|c| format!(" {c}"))
                .unwrap_or_default();
            let mut err =
                StorageError::new(kind, uri, format!("azure {op}: http {code}{service_code}"));
            let retry_after = raw_response.as_ref().and_then(|r| {
                r.headers()
                    .get_optional_str(&HeaderName::from_static("retry-after"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            });
            if let Some(secs) = retry_after {
                err = err.with_retry_after(Duration::from_secs(secs));
            }
            err
        }
        Az::Io | Az::Connection => StorageError::new(
            ErrorKind::Unavailable,
            uri,
            format!("azure {op}: cannot reach the service"),
        ),
        Az::Credential => StorageError::new(
            ErrorKind::PermissionDenied,
            uri,
            format!("azure {op}: no Entra ID token for the account"),
        ),
        Az::DataConversion => StorageError::protocol(uri, format!("azure {op}: unexpected answer")),
        _ => StorageError::new(ErrorKind::Other, uri, format!("azure {op}: request failed")),
    }
}

/// A request body of `data`, without a copy.
fn content(data: Bytes) -> RequestContent<Bytes, azure_core::http::NoFormat> {
    <RequestContent<_, _> as From<Bytes>>::from(data)
}

fn system_time(t: azure_core::time::OffsetDateTime) -> SystemTime {
    SystemTime::from(t)
}

#[async_trait]
impl Storage for AzureStorage {
    fn name(&self) -> &'static str {
        "az"
    }

    async fn head(&self, uri: &ObjectUri) -> Result<ObjectMeta> {
        let shown = uri.to_string();
        let blob = self.blob_client(uri)?;
        let props = blob
            .get_properties(None)
            .await
            .map_err(|e| error(&shown, "stat", e))?;
        let bad = |_| StorageError::protocol(&shown, "azure stat: malformed headers");
        let size = props
            .content_length()
            .map_err(bad)?
            .ok_or_else(|| StorageError::protocol(&shown, "azure stat: no content-length"))?;
        Ok(ObjectMeta {
            uri: shown.clone(),
            size,
            etag: props.etag().map_err(bad)?.map(|e| e.to_string()),
            last_modified: props.last_modified().map_err(bad)?.map(system_time),
            version: None,
        })
    }

    async fn get(&self, uri: &ObjectUri, opts: GetOptions) -> Result<GetResult> {
        get::get(self, uri, opts).await
    }

    async fn list(&self, prefix: &ObjectUri, opts: &ListOptions) -> Result<ListPage> {
        list::list(self, prefix, opts).await
    }

    async fn put(&self, uri: &ObjectUri, data: Bytes) -> Result<ObjectMeta> {
        let shown = uri.to_string();
        let blob = self.blob_client(uri)?;
        let size = data.len() as u64;
        // One request: the whole body as one partition.
        let options = BlockBlobClientUploadOptions {
            parallel: NonZero::new(1),
            partition_size: NonZero::new(size.max(1)),
            ..BlockBlobClientUploadOptions::default()
        };
        let out = blob
            .block_blob_client()
            .upload(content(data), Some(options))
            .await
            .map_err(|e| error(&shown, "put", e))?;
        Ok(ObjectMeta {
            uri: shown,
            size,
            etag: out.etag.map(|e| e.to_string()),
            last_modified: out.last_modified.map(system_time),
            version: None,
        })
    }

    async fn start_multipart(&self, uri: &ObjectUri) -> Result<Box<dyn MultipartUpload>> {
        let blob = self.blob_client(uri)?;
        Ok(Box::new(upload::AzureUpload::new(blob, uri)))
    }

    async fn delete(&self, uri: &ObjectUri) -> Result<()> {
        let shown = uri.to_string();
        self.blob_client(uri)?
            .delete(None)
            .await
            .map_err(|e| error(&shown, "delete", e))?;
        Ok(())
    }
}
