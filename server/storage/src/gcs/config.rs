//! Configuration of the `gs://` backend (`[storage.gcs]`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Result, StorageError};

/// `[storage.gcs]`: where `gs://bucket/object` goes and with which
/// credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcsConfig {
    /// Base URL of the JSON API, e.g. `http://127.0.0.1:4443` for an
    /// emulator. Unset: `https://storage.googleapis.com`.
    pub endpoint: Option<String>,
    /// Send no credentials (an emulator, or public buckets).
    pub anonymous: bool,
    /// A service-account key or other credentials file (the JSON that
    /// `GOOGLE_APPLICATION_CREDENTIALS` names). Unset: application default
    /// credentials — `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's
    /// `application_default_credentials.json`, then the metadata server
    /// (GCE, GKE workload identity).
    pub credentials_file: Option<PathBuf>,
    /// Attempts per request, first one included, for requests that can be
    /// repeated as they are (stat, list, delete, GETs, whole-object
    /// uploads, opening an upload session).
    pub max_attempts: u32,
    /// First retry backoff; doubles per attempt with full jitter.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Backoff ceiling, also the longest `Retry-After` honoured.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// TCP + TLS connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for a response's headers, and between two reads of a
    /// body.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
}

impl Default for GcsConfig {
    fn default() -> Self {
        GcsConfig {
            endpoint: None,
            anonymous: false,
            credentials_file: None,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

/// The endpoint when none is configured.
pub const GOOGLE: &str = "https://storage.googleapis.com";

impl GcsConfig {
    /// The endpoint's base URL, without a trailing `/`.
    pub fn endpoint(&self) -> &str {
        self.endpoint
            .as_deref()
            .unwrap_or(GOOGLE)
            .trim_end_matches('/')
    }

    /// Checks what serde cannot; errors are `InvalidArgument` naming the key.
    pub fn validate(&self) -> Result<()> {
        let invalid = |key: &str, why: &str| {
            StorageError::invalid("gs://", format!("[storage.gcs] {key}: {why}"))
        };
        if let Some(url) = &self.endpoint {
            let parsed: http::Uri = url.parse().map_err(|_| invalid("endpoint", "not a URL"))?;
            if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
                return Err(invalid("endpoint", "must be http(s)://host[:port]"));
            }
            if parsed.query().is_some() || !parsed.path().trim_end_matches('/').is_empty() {
                return Err(invalid("endpoint", "must have no path or query"));
            }
        }
        if self.anonymous && self.credentials_file.is_some() {
            return Err(invalid(
                "anonymous",
                "cannot be set together with credentials_file",
            ));
        }
        if self.max_attempts == 0 {
            return Err(invalid("max_attempts", "must be at least 1"));
        }
        if self.connect_timeout.is_zero() || self.attempt_timeout.is_zero() {
            return Err(invalid("timeouts", "must be above 0s"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_naming_the_key() {
        let cases = [
            (
                GcsConfig {
                    endpoint: Some("http://127.0.0.1:4443/storage/v1".into()),
                    ..GcsConfig::default()
                },
                "endpoint",
            ),
            (
                GcsConfig {
                    endpoint: Some("ftp://h".into()),
                    ..GcsConfig::default()
                },
                "endpoint",
            ),
            (
                GcsConfig {
                    anonymous: true,
                    credentials_file: Some("/etc/key.json".into()),
                    ..GcsConfig::default()
                },
                "anonymous",
            ),
            (
                GcsConfig {
                    max_attempts: 0,
                    ..GcsConfig::default()
                },
                "max_attempts",
            ),
        ];
        for (config, key) in cases {
            let e = config.validate().unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
            assert!(e.message().contains(key), "{e}");
        }
        let ok = GcsConfig {
            endpoint: Some("http://127.0.0.1:4443/".into()),
            anonymous: true,
            ..GcsConfig::default()
        };
        ok.validate().unwrap();
        assert_eq!(ok.endpoint(), "http://127.0.0.1:4443");
        assert_eq!(GcsConfig::default().endpoint(), GOOGLE);
    }
}
