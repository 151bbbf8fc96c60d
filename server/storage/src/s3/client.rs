//! Building SDK clients: one shared [`SdkConfig`] (region, retries,
//! timeouts, the default credential chain) and one S3 client per endpoint
//! the configuration names, all built at startup.
//!
//! The HTTP clients are hyper 1 + rustls with the `ring` provider, built
//! explicitly so that no legacy (hyper 0.14 / rustls 0.21) stack is linked.
//! The credential providers (STS, SSO, instance and container metadata) use
//! one that trusts the platform's roots plus `[storage.s3] ca_bundle`. Each
//! S3 client has its own, trusting the platform's roots plus its endpoint's
//! `ca_bundle`, and resolving names through the
//! [`GuardedResolver`](super::endpoint::GuardedResolver), which refuses
//! link-local, metadata and unspecified addresses.
//!
//! The PEM files are checked here, at startup: the SDK only parses them on
//! the first connection, and panics there on an invalid certificate.

use std::collections::HashSet;
use std::path::Path;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation, SharedHttpClient,
};
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use super::config::{ChecksumMode, S3Config, S3Endpoint, Secret};
use super::endpoint::{Address, GuardedResolver};
use crate::{ErrorKind, Result, StorageError};

/// Region when neither the configuration nor the SDK's chain names one:
/// where unqualified buckets have always lived.
const FALLBACK_REGION: &str = "us-east-1";

/// Shown as the "uri" of configuration errors.
const CONFIG_URI: &str = "s3://";

fn config_error(key: &str, message: impl Into<String>) -> StorageError {
    StorageError::invalid(CONFIG_URI, format!("{key}: {}", message.into()))
}

/// Static credentials, or `None` for the default chain: both keys or none,
/// and a session token only with them.
fn check_keys(
    key: &str,
    id: Option<&String>,
    secret: Option<&Secret>,
    token: Option<&Secret>,
) -> Result<()> {
    if id.is_some() != secret.is_some() {
        return Err(config_error(
            key,
            "access_key_id and secret_access_key are set together or not at all",
        ));
    }
    if token.is_some() && id.is_none() {
        return Err(config_error(
            key,
            "session_token needs access_key_id and secret_access_key",
        ));
    }
    Ok(())
}

/// Checks the parts of `config` the SDK would only reject late (or not at
/// all). Reads no file: CA bundles are checked when the clients are built.
pub(super) fn validate(config: &S3Config) -> Result<()> {
    const TOP: &str = "[storage.s3]";
    if config.removed_endpoint_scheme.is_some() {
        return Err(config_error(
            TOP,
            "endpoint_scheme was removed: s3://host:port/bucket/key uris may only name the \
             endpoints listed under [[storage.s3.endpoints]], each with its own scheme \
             (address = \"host:port\", scheme = \"http\" or \"https\")",
        ));
    }
    if let Some(url) = &config.endpoint {
        let ok = url.parse::<http::Uri>().is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty())
        });
        if !ok {
            return Err(config_error(
                TOP,
                "endpoint must be an http:// or https:// url, e.g. https://minio.local:9000",
            ));
        }
    }
    check_keys(
        TOP,
        config.access_key_id.as_ref(),
        config.secret_access_key.as_ref(),
        config.session_token.as_ref(),
    )?;
    if config.upload_concurrency == 0 {
        return Err(config_error(TOP, "upload_concurrency must be at least 1"));
    }
    if config.max_attempts == 0 {
        return Err(config_error(TOP, "max_attempts must be at least 1"));
    }
    if config.gateway_backoff.is_zero() || config.gateway_backoff > config.gateway_max_backoff {
        return Err(config_error(
            TOP,
            "gateway_backoff must be above 0s and not exceed gateway_max_backoff",
        ));
    }
    if config.initial_backoff > config.max_backoff {
        return Err(config_error(
            TOP,
            "initial_backoff must not exceed max_backoff",
        ));
    }
    let mut seen = HashSet::new();
    for (i, ep) in config.endpoints.iter().enumerate() {
        let key = format!("[[storage.s3.endpoints]] #{}", i + 1);
        let address = Address::parse(&ep.address)
            .map_err(|why| config_error(&key, format!("address {:?}: {why}", ep.address)))?;
        let key = format!("[[storage.s3.endpoints]] {address}");
        let mut gateways = HashSet::new();
        for gw in &ep.gateways {
            let parsed = Address::parse(gw)
                .map_err(|why| config_error(&key, format!("gateway {gw:?}: {why}")))?;
            if !gateways.insert(parsed) {
                return Err(config_error(&key, format!("gateway {gw:?} listed twice")));
            }
        }
        if !matches!(ep.scheme.as_str(), "http" | "https") {
            return Err(config_error(&key, "scheme must be \"http\" or \"https\""));
        }
        if ep.region.as_deref() == Some("") {
            return Err(config_error(&key, "region must not be empty"));
        }
        check_keys(
            &key,
            ep.access_key_id.as_ref(),
            ep.secret_access_key.as_ref(),
            ep.session_token.as_ref(),
        )?;
        if !seen.insert(address) {
            return Err(config_error(
                &key,
                "listed twice (hosts compare case-insensitively, ports exactly)",
            ));
        }
    }
    Ok(())
}

/// Loads the shared SDK configuration: runs the region chain now; the
/// default credential chain runs lazily on its first use and is cached.
pub(super) async fn load_sdk_config(config: &S3Config) -> Result<SdkConfig> {
    let retry = RetryConfig::standard()
        .with_max_attempts(config.max_attempts)
        .with_initial_backoff(config.initial_backoff)
        .with_max_backoff(config.max_backoff);
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(config.connect_timeout)
        .operation_attempt_timeout(config.attempt_timeout)
        .build();
    // The credential providers must reach the metadata services: their
    // HTTP client has the system resolver, not the guarded one.
    let providers_http = http_client(config.ca_bundle.as_deref(), false).await?;
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(providers_http)
        .retry_config(retry)
        .timeout_config(timeouts);
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    let sdk = loader.load().await;
    if sdk.region().is_some() {
        return Ok(sdk);
    }
    Ok(sdk
        .into_builder()
        .region(Region::new(FALLBACK_REGION))
        .build())
}

/// The S3 client of the default endpoint (`s3://bucket/key`).
pub(super) async fn default_client(sdk: &SdkConfig, config: &S3Config) -> Result<Client> {
    let mut builder = s3_builder(sdk, config)
        .http_client(http_client(config.ca_bundle.as_deref(), true).await?)
        .force_path_style(config.force_path_style);
    if let Some(url) = &config.endpoint {
        builder = builder.endpoint_url(url.clone());
    }
    if let Some(creds) = static_credentials(
        config.access_key_id.as_ref(),
        config.secret_access_key.as_ref(),
        config.session_token.as_ref(),
    ) {
        builder = builder.credentials_provider(creds);
    }
    Ok(Client::from_conf(builder.build()))
}

/// The S3 client of one `[[storage.s3.endpoints]]` entry at `address`
/// (already parsed by [`validate`]).
/// `address` is where requests go: the entry's own, or one of its
/// gateways.
pub(super) async fn endpoint_client(
    sdk: &SdkConfig,
    config: &S3Config,
    address: &Address,
    ep: &S3Endpoint,
) -> Result<Client> {
    let mut builder = s3_builder(sdk, config)
        .http_client(http_client(ep.ca_bundle.as_deref(), true).await?)
        .endpoint_url(address.url(&ep.scheme))
        .force_path_style(ep.force_path_style);
    if let Some(region) = &ep.region {
        builder = builder.region(Region::new(region.clone()));
    }
    if let Some(creds) = static_credentials(
        ep.access_key_id.as_ref(),
        ep.secret_access_key.as_ref(),
        ep.session_token.as_ref(),
    ) {
        builder = builder.credentials_provider(creds);
    }
    Ok(Client::from_conf(builder.build()))
}

/// What every S3 client shares: the SDK configuration and the checksum mode.
fn s3_builder(sdk: &SdkConfig, config: &S3Config) -> aws_sdk_s3::config::Builder {
    let (checksum_calc, checksum_check) = match config.request_checksum {
        ChecksumMode::WhenSupported => (
            RequestChecksumCalculation::WhenSupported,
            ResponseChecksumValidation::WhenSupported,
        ),
        ChecksumMode::WhenRequired => (
            RequestChecksumCalculation::WhenRequired,
            ResponseChecksumValidation::WhenRequired,
        ),
    };
    aws_sdk_s3::config::Builder::from(sdk)
        .request_checksum_calculation(checksum_calc)
        .response_checksum_validation(checksum_check)
}

fn static_credentials(
    id: Option<&String>,
    secret: Option<&Secret>,
    token: Option<&Secret>,
) -> Option<Credentials> {
    let (id, secret) = (id?, secret?);
    Some(Credentials::new(
        id,
        secret.expose(),
        token.map(|t| t.expose().to_owned()),
        None,
        "sluice-config",
    ))
}

/// hyper 1 + rustls (ring), trusting the platform roots and `ca_bundle`;
/// `guarded`: names resolve through the [`GuardedResolver`].
async fn http_client(ca_bundle: Option<&Path>, guarded: bool) -> Result<SharedHttpClient> {
    let mut trust = TrustStore::default();
    if let Some(path) = ca_bundle {
        let shown = format!("file://{}", path.display());
        let pem = tokio::fs::read(path).await.map_err(|e| {
            let kind = StorageError::from_io(shown.clone(), std::io::Error::from(e.kind())).kind();
            StorageError::new(
                kind,
                shown.clone(),
                format!("ca_bundle cannot be read: {e}"),
            )
            .with_source(e)
        })?;
        check_pem(&shown, &pem)?;
        trust = trust.with_pem_certificate(pem);
    }
    let context = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| {
            StorageError::new(
                ErrorKind::Other,
                CONFIG_URI,
                "could not build the tls context",
            )
            .with_source(e)
        })?;
    let builder = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .tls_context(context);
    Ok(if guarded {
        builder.build_with_resolver(GuardedResolver)
    } else {
        builder.build_https()
    })
}

/// At least one certificate, and every one usable as a trust anchor.
fn check_pem(shown: &str, pem: &[u8]) -> Result<()> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let invalid = |what: &str| StorageError::invalid(shown, format!("ca_bundle: {what}"));
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("not a pem file of certificates").with_source(e))?;
    if certs.is_empty() {
        return Err(invalid("no certificate in the pem file"));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| invalid("a certificate cannot be parsed").with_source(e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(config: &S3Config) -> String {
        let e = validate(config).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        e.message().to_owned()
    }

    fn with_endpoints(endpoints: Vec<S3Endpoint>) -> S3Config {
        S3Config {
            endpoints,
            ..S3Config::default()
        }
    }

    #[test]
    fn validation_rejects_half_credentials_and_bad_settings() {
        assert!(validate(&S3Config::default()).is_ok());
        let half = S3Config {
            access_key_id: Some("AKIA".into()),
            ..S3Config::default()
        };
        assert!(message(&half).contains("access_key_id"));
        let token = S3Config {
            session_token: Some(Secret::new("t")),
            ..S3Config::default()
        };
        assert!(message(&token).contains("session_token"));
        let no_parts = S3Config {
            upload_concurrency: 0,
            ..S3Config::default()
        };
        assert!(message(&no_parts).contains("upload_concurrency"));
        let zero = S3Config {
            max_attempts: 0,
            ..S3Config::default()
        };
        assert!(message(&zero).contains("max_attempts"));
        for bad in [
            "minio.local:9000",
            "ftp://minio.local",
            "http://",
            "not a url",
        ] {
            let url = S3Config {
                endpoint: Some(bad.into()),
                ..S3Config::default()
            };
            assert!(message(&url).contains("endpoint must be"), "{bad}");
        }
    }

    #[test]
    fn the_removed_endpoint_scheme_says_what_replaced_it() {
        let old: S3Config = serde_json::from_str(r#"{"endpoint_scheme": "http"}"#).unwrap();
        let m = message(&old);
        assert!(
            m.contains("endpoint_scheme was removed") && m.contains("[[storage.s3.endpoints]]"),
            "{m}"
        );
    }

    #[test]
    fn endpoint_entries_are_validated_naming_the_entry() {
        let ok = with_endpoints(vec![
            S3Endpoint {
                scheme: "http".into(),
                access_key_id: Some("k".into()),
                secret_access_key: Some(Secret::new("s")),
                ..S3Endpoint::new("minio.local:9000")
            },
            S3Endpoint::new("[fd00::1]:443"),
            S3Endpoint::new("10.0.0.7:9000"),
        ]);
        assert!(validate(&ok).is_ok());
        let m = message(&with_endpoints(vec![S3Endpoint::new("minio.local")]));
        assert!(
            m.starts_with(
                "[[storage.s3.endpoints]] #1: address \"minio.local\": expected host:port"
            ),
            "{m}"
        );
        let m = message(&with_endpoints(vec![
            S3Endpoint::new("a.local:1"),
            S3Endpoint::new("[::1:9000"),
        ]));
        assert!(m.starts_with("[[storage.s3.endpoints]] #2: address"), "{m}");
        let m = message(&with_endpoints(vec![S3Endpoint::new("")]));
        assert!(m.contains("expected host:port"), "{m}");
        let m = message(&with_endpoints(vec![S3Endpoint {
            scheme: "ftp".into(),
            ..S3Endpoint::new("Minio.Local:9000")
        }]));
        assert_eq!(
            m,
            "[[storage.s3.endpoints]] minio.local:9000: scheme must be \"http\" or \"https\""
        );
        let m = message(&with_endpoints(vec![S3Endpoint {
            secret_access_key: Some(Secret::new("only-the-secret")),
            ..S3Endpoint::new("minio.local:9000")
        }]));
        assert!(
            m.contains("set together") && !m.contains("only-the-secret"),
            "{m}"
        );
        let m = message(&with_endpoints(vec![
            S3Endpoint::new("minio.local:9000"),
            S3Endpoint::new("MINIO.local:9000"),
        ]));
        assert!(m.contains("listed twice"), "{m}");
        assert!(
            validate(&with_endpoints(vec![
                S3Endpoint::new("minio.local:9000"),
                S3Endpoint::new("minio.local:9001"),
            ]))
            .is_ok(),
            "the same host on another port is another endpoint"
        );
    }

    #[test]
    fn endpoints_parse_from_toml_shaped_data_with_defaults() {
        let config: S3Config = serde_json::from_str(
            r#"{"endpoints": [
                {"address": "minio.local:9000", "scheme": "http", "region": "eu-west-1",
                 "access_key_id": "k", "secret_access_key": "s", "force_path_style": false},
                {"address": "ceph.local:443", "ca_bundle": "/etc/ssl/ceph.pem"}
            ]}"#,
        )
        .unwrap();
        let [a, b] = &config.endpoints[..] else {
            panic!("{config:?}")
        };
        assert_eq!(
            (a.scheme.as_str(), a.region.as_deref(), a.force_path_style),
            ("http", Some("eu-west-1"), false)
        );
        assert_eq!(a.secret_access_key.as_ref().unwrap().expose(), "s");
        assert_eq!(
            (
                b.scheme.as_str(),
                b.force_path_style,
                b.access_key_id.as_ref()
            ),
            ("https", true, None)
        );
        assert!(validate(&config).is_ok());
        let unknown = serde_json::from_str::<S3Config>(
            r#"{"endpoints": [{"address": "a.local:1", "schema": "http"}]}"#,
        )
        .unwrap_err();
        assert!(unknown.to_string().contains("schema"), "{unknown}");
    }

    #[tokio::test]
    async fn an_unreadable_ca_bundle_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = http_client(Some(&missing), true).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert_eq!(e.uri(), format!("file://{}", missing.display()));
        assert!(e.message().starts_with("ca_bundle cannot be read"), "{e}");
    }

    #[test]
    fn pem_check_rejects_garbage_and_empty_files() {
        let e = check_pem("file:///ca.pem", b"just text, no certificate").unwrap_err();
        assert_eq!(
            (e.kind(), e.message()),
            (
                ErrorKind::InvalidArgument,
                "ca_bundle: no certificate in the pem file"
            )
        );
        let bad = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = check_pem("file:///ca.pem", bad).unwrap_err();
        assert_eq!(e.message(), "ca_bundle: a certificate cannot be parsed");
    }
}
