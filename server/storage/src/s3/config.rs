//! Configuration of the `s3://` backend (`[storage.s3]`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::IgnoredAny;
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

/// `[storage.s3]`: the default endpoint (`s3://bucket/key`), the settings
/// every client shares (retries, timeouts, checksums) and the list of
/// explicit endpoints that `s3://host:port/bucket/key` URIs may name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Endpoint URL for `s3://bucket/key` URIs, e.g. `http://127.0.0.1:9000`.
    /// Unset: AWS's regional endpoint.
    pub endpoint: Option<String>,
    /// Region; unset: the SDK's chain (`AWS_REGION`, profile), then `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`host/bucket/key`) for the default endpoint.
    pub force_path_style: bool,
    /// Static access key of the default endpoint; set together with
    /// `secret_access_key`. Unset: the SDK's credential chain (environment,
    /// profile, web identity, container and instance metadata).
    pub access_key_id: Option<String>,
    /// Secret of `access_key_id`; printed as `***redacted***`.
    pub secret_access_key: Option<Secret>,
    /// Session token of temporary static credentials; printed as `***redacted***`.
    pub session_token: Option<Secret>,
    /// PEM file of extra CA certificates to trust for the default endpoint
    /// and the credential providers (private S3 deployments).
    pub ca_bundle: Option<PathBuf>,
    /// Upload checksums: `when_supported` (SDK default) or `when_required`.
    pub request_checksum: ChecksumMode,
    /// Parts of one multipart upload sent at once (every endpoint). Each
    /// holds a part's buffer (`write.part_size`) until it is stored.
    pub upload_concurrency: usize,
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
    /// The only endpoints `s3://host:port/bucket/key` URIs may name, each
    /// with its own scheme, region, credentials, CA bundle and path style.
    /// Empty: every URI with an explicit endpoint is refused.
    pub endpoints: Vec<S3Endpoint>,
    /// First wait before probing a gateway that was found unreachable
    /// (endpoints with `gateways`); doubles while probes fail.
    #[serde(with = "humantime_serde")]
    pub gateway_backoff: Duration,
    /// Longest wait between two probes of a gateway that is out.
    #[serde(with = "humantime_serde")]
    pub gateway_max_backoff: Duration,
    /// The removed `endpoint_scheme` key, kept only to reject it with an
    /// error that says what replaced it.
    #[doc(hidden)]
    #[serde(rename = "endpoint_scheme", skip_serializing)]
    pub removed_endpoint_scheme: Option<IgnoredAny>,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: None,
            force_path_style: false,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            ca_bundle: None,
            request_checksum: ChecksumMode::WhenSupported,
            upload_concurrency: 4,
            // 5 attempts with 100 ms doubling to 20 s ≈ 3 s of backoff at most
            // before the ceiling matters: rides out a throttling burst.
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(30),
            endpoints: Vec::new(),
            gateway_backoff: Duration::from_secs(1),
            gateway_max_backoff: Duration::from_secs(30),
            removed_endpoint_scheme: None,
        }
    }
}

impl S3Config {
    /// Checks what serde cannot: addresses, schemes, URLs, credentials that
    /// come in pairs, duplicate endpoints, retry settings. Reads no file
    /// (the CA bundles are checked when the clients are built). Errors are
    /// `InvalidArgument` naming the key.
    pub fn validate(&self) -> crate::Result<()> {
        super::client::validate(self)
    }
}

/// One `[[storage.s3.endpoints]]` entry: an S3-compatible server that URIs
/// may name as `s3://<address>/bucket/key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Endpoint {
    /// `host:port` exactly as written in the URIs: a DNS name, an IPv4
    /// address or a bracketed IPv6 address. The host compares
    /// case-insensitively, the port exactly.
    pub address: String,
    /// `https` (default) or `http`.
    pub scheme: String,
    /// Region to sign for; unset: the region of `[storage.s3]`.
    pub region: Option<String>,
    /// Path-style addressing (`host/bucket/key`); default `true`.
    pub force_path_style: bool,
    /// Static access key; set together with `secret_access_key`. Unset: the
    /// SDK's default credential chain (never the keys of `[storage.s3]`).
    pub access_key_id: Option<String>,
    /// Secret of `access_key_id`; printed as `***redacted***`.
    pub secret_access_key: Option<Secret>,
    /// Session token of temporary static credentials; printed as `***redacted***`.
    pub session_token: Option<Secret>,
    /// PEM file of extra CA certificates to trust for this endpoint (on top
    /// of the platform's roots; the `ca_bundle` of `[storage.s3]` does not
    /// apply here).
    pub ca_bundle: Option<PathBuf>,
    /// `host:port` of each server of one store (the gateways of a cluster):
    /// requests go to these, spread by least outstanding requests, with
    /// failover. Empty: requests go to `address` itself.
    pub gateways: Vec<String>,
}

impl S3Endpoint {
    /// An endpoint at `address` with the defaults: https, path style, the
    /// default credential chain.
    pub fn new(address: impl Into<String>) -> Self {
        S3Endpoint {
            address: address.into(),
            ..S3Endpoint::default()
        }
    }
}

impl Default for S3Endpoint {
    fn default() -> Self {
        S3Endpoint {
            address: String::new(),
            scheme: "https".into(),
            region: None,
            force_path_style: true,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            ca_bundle: None,
            gateways: Vec::new(),
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
