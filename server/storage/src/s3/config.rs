//! Configuration of the `s3://` backend (`[storage.s3]`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

/// What a [`Secret`] shows instead of its value.
pub const REDACTED: &str = "***redacted***";

/// A credential: `Debug` and serialization (`check-config`) show
/// [`REDACTED`], never the value; only [`Secret::expose`] reveals it.
///
/// Any scalar deserializes into one (an environment value such as
/// `123456` is read as a number by the config layer): a type error would
/// print the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Scalar;
        impl serde::de::Visitor<'_> for Scalar {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_char<E: serde::de::Error>(self, v: char) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
        }
        d.deserialize_any(Scalar)
    }
}

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for handing to the SDK.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// When request checksums are computed on uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumMode {
    /// The SDK default: checksum every upload (aws-chunked framing on streams).
    WhenSupported,
    /// Only where the operation requires it. Some S3-compatible servers store
    /// aws-chunked framing verbatim; use this for them.
    WhenRequired,
}

/// `[storage.s3]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Endpoint URL for `s3://bucket/key` URIs, e.g. `http://127.0.0.1:9000`.
    /// Unset: AWS's regional endpoint.
    pub endpoint: Option<String>,
    /// `http` or `https` for explicit endpoints in URIs (`s3://host:port/bucket/key`).
    pub endpoint_scheme: String,
    /// Region; unset: the SDK's chain (`AWS_REGION`, profile), then `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`host/bucket/key`) for the default endpoint.
    /// Explicit endpoints always use path style.
    pub force_path_style: bool,
    /// Static access key for S3-compatible servers; set together with
    /// `secret_access_key`. Unset: the SDK's credential chain (environment,
    /// profile, web identity, container and instance metadata).
    pub access_key_id: Option<String>,
    /// Secret of `access_key_id`; printed as `***redacted***`.
    pub secret_access_key: Option<Secret>,
    /// Session token of temporary static credentials; printed as `***redacted***`.
    pub session_token: Option<Secret>,
    /// PEM file of extra CA certificates to trust (private S3 deployments).
    pub ca_bundle: Option<PathBuf>,
    /// Upload checksums: `when_supported` (SDK default) or `when_required`.
    pub request_checksum: ChecksumMode,
    /// Attempts per request, first one included (SDK standard retry mode).
    pub max_attempts: u32,
    /// First retry backoff; doubles per attempt with full jitter.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Backoff ceiling.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// TCP + TLS connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Timeout of one attempt of one request (headers, not the whole body).
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            endpoint_scheme: "https".into(),
            region: None,
            force_path_style: false,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            ca_bundle: None,
            request_checksum: ChecksumMode::WhenSupported,
            // 5 attempts with 100 ms doubling to 20 s ≈ 3 s of backoff at most
            // before the ceiling matters: rides out a throttling burst.
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let config = S3Config {
            access_key_id: Some("AKIDEXAMPLE".into()),
            secret_access_key: Some(Secret::new("wJalrXUtnFEMI")),
            session_token: Some(Secret::new("FwoGZXIvYXdzEJr")),
            ..S3Config::default()
        };
        let json = serde_json::to_string(&config).unwrap();
        let debug = format!("{config:?}");
        for shown in [&json, &debug] {
            assert!(
                !shown.contains("wJalrXUtnFEMI") && !shown.contains("FwoGZXIvYXdzEJr"),
                "{shown}"
            );
            assert_eq!(shown.matches(REDACTED).count(), 2, "{shown}");
            assert!(shown.contains("AKIDEXAMPLE"), "{shown}");
        }
        let parsed: S3Config =
            serde_json::from_str(r#"{"access_key_id": "k", "secret_access_key": "s3cr3t"}"#)
                .unwrap();
        assert_eq!(parsed.secret_access_key.unwrap().expose(), "s3cr3t");
    }
}
