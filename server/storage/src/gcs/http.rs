//! The HTTP side of `gs://`: one reqwest client (shared with
//! gcloud-storage), the access token, status codes as [`ErrorKind`]s and
//! the retry loop.

use std::sync::Arc;
use std::time::Duration;

use gcloud_storage::client::google_cloud_auth;
use gcloud_storage::http::Error as ApiError;
use token_source::{TokenSource, TokenSourceProvider};

use super::GcsConfig;
use crate::{ErrorKind, Result, StorageError};

/// The scopes a token is asked for: read and write objects.
const SCOPES: [&str; 1] = ["https://www.googleapis.com/auth/devstorage.read_write"];

/// The HTTP client (see [`crate::http_client`]).
pub(super) fn client(config: &GcsConfig) -> Result<reqwest::Client> {
    crate::http_client::client(config.connect_timeout, config.attempt_timeout)
}

/// Where access tokens come from; `None` for anonymous access.
pub(super) async fn token_source(config: &GcsConfig) -> Result<Option<Arc<dyn TokenSource>>> {
    if config.anonymous {
        return Ok(None);
    }
    let auth = google_cloud_auth::project::Config::default().with_scopes(&SCOPES);
    let provider = match &config.credentials_file {
        Some(path) => {
            let file = google_cloud_auth::credentials::CredentialsFile::new_from_file(
                path.display().to_string(),
            )
            .await
            .map_err(|e| credentials_error(e, "cannot read [storage.gcs] credentials_file"))?;
            google_cloud_auth::token::DefaultTokenSourceProvider::new_with_credentials(
                auth,
                Box::new(file),
            )
            .await
        }
        None => google_cloud_auth::token::DefaultTokenSourceProvider::new(auth).await,
    }
    .map_err(|e| credentials_error(e, "no google application default credentials"))?;
    Ok(Some(provider.token_source()))
}

fn credentials_error(e: google_cloud_auth::error::Error, what: &str) -> StorageError {
    // The error names files and variables, never key material.
    StorageError::new(ErrorKind::PermissionDenied, "gs://", format!("{what}: {e}"))
}

/// `Authorization` for a request, when not anonymous.
pub(super) async fn bearer(
    source: Option<&Arc<dyn TokenSource>>,
    uri: &str,
) -> Result<Option<String>> {
    let Some(source) = source else {
        return Ok(None);
    };
    match source.token().await {
        Ok(token) => Ok(Some(token)),
        Err(e) => Err(StorageError::new(
            ErrorKind::Unavailable,
            uri,
            format!("cannot get a gcs access token: {e}"),
        )),
    }
}

/// The kind of an HTTP status of the JSON API.
pub(super) fn kind_of(status: u16) -> ErrorKind {
    match status {
        404 => ErrorKind::NotFound,
        401 | 403 => ErrorKind::PermissionDenied,
        412 => ErrorKind::Changed,
        400 | 411 | 413 | 416 => ErrorKind::InvalidArgument,
        429 | 503 => ErrorKind::Throttled,
        408 | 500 | 502 | 504 => ErrorKind::Unavailable,
        _ => ErrorKind::Other,
    }
}

/// A response's error status, with its `Retry-After` (seconds) if any.
pub(super) fn status_error(
    uri: &str,
    op: &str,
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
) -> StorageError {
    let kind = kind_of(status.as_u16());
    let mut err = StorageError::new(kind, uri, format!("gcs {op}: http {}", status.as_u16()));
    if let Some(secs) = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        err = err.with_retry_after(Duration::from_secs(secs));
    }
    err
}

/// A transport failure: `Unavailable` (the request may be retried).
pub(super) fn transport_error(uri: &str, op: &str, e: reqwest::Error) -> StorageError {
    if let Some(status) = e.status() {
        return StorageError::new(
            kind_of(status.as_u16()),
            uri,
            format!("gcs {op}: http {}", status.as_u16()),
        );
    }
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "transport error"
    };
    StorageError::new(ErrorKind::Unavailable, uri, format!("gcs {op}: {what}")).with_source(e)
}

/// An error of gcloud-storage as a [`StorageError`]: its status decides the
/// kind; the service's message is kept (it names the bucket or object,
/// never a credential).
pub(super) fn api_error(uri: &str, op: &str, e: ApiError) -> StorageError {
    match e {
        ApiError::Response(r) => StorageError::new(
            kind_of(r.code),
            uri,
            format!("gcs {op}: http {}: {}", r.code, r.message),
        ),
        ApiError::HttpClient(e) | ApiError::RawResponse(e, _) => transport_error(uri, op, e),
        ApiError::TokenSource(e) => StorageError::new(
            ErrorKind::Unavailable,
            uri,
            format!("cannot get a gcs access token: {e}"),
        ),
        other => StorageError::new(ErrorKind::Other, uri, format!("gcs {op}: {other}")),
    }
}

/// Runs `attempt` up to `max_attempts` times while it fails transiently
/// (throttled or unavailable), with exponential backoff and full jitter,
/// or the server's `Retry-After` when longer (capped at `max_backoff`).
pub(super) async fn retry<T, F, Fut>(config: &GcsConfig, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut n = 1;
    loop {
        match attempt().await {
            Err(e)
                if matches!(e.kind(), ErrorKind::Throttled | ErrorKind::Unavailable)
                    && n < config.max_attempts =>
            {
                let cap = config
                    .initial_backoff
                    .saturating_mul(1 << (n - 1).min(16))
                    .min(config.max_backoff);
                let jitter = cap.mul_f64(rand::random::<f64>());
                let wait = e
                    .retry_after()
                    .map_or(jitter, |hint| hint.max(jitter))
                    .min(config.max_backoff);
                tracing::debug!(error = %e, attempt = n, ?wait, "retrying gcs request");
                tokio::time::sleep(wait).await;
                n += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_kinds() {
        for (status, kind) in [
            (404, ErrorKind::NotFound),
            (403, ErrorKind::PermissionDenied),
            (401, ErrorKind::PermissionDenied),
            (412, ErrorKind::Changed),
            (416, ErrorKind::InvalidArgument),
            (429, ErrorKind::Throttled),
            (503, ErrorKind::Throttled),
            (500, ErrorKind::Unavailable),
            (418, ErrorKind::Other),
        ] {
            assert_eq!(kind_of(status), kind, "{status}");
        }
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        let e = status_error(
            "gs://b/k",
            "get",
            reqwest::StatusCode::TOO_MANY_REQUESTS,
            &headers,
        );
        assert_eq!(e.kind(), ErrorKind::Throttled);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    }

    #[tokio::test]
    async fn retries_only_transient_failures_and_stops_at_the_limit() {
        let config = GcsConfig {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            ..GcsConfig::default()
        };
        let mut calls = 0;
        let r: Result<()> = retry(&config, || {
            calls += 1;
            async {
                Err(StorageError::new(
                    ErrorKind::Unavailable,
                    "gs://b/k",
                    "down",
                ))
            }
        })
        .await;
        assert_eq!((r.unwrap_err().kind(), calls), (ErrorKind::Unavailable, 3));
        let mut calls = 0;
        let r: Result<()> = retry(&config, || {
            calls += 1;
            async { Err(StorageError::not_found("gs://b/k")) }
        })
        .await;
        assert_eq!((r.unwrap_err().kind(), calls), (ErrorKind::NotFound, 1));
    }
}
