//! Building SDK clients: one shared [`SdkConfig`] (credentials, region,
//! retries, timeouts, checksums, HTTP client) and one S3 client per endpoint.
//!
//! The HTTP client is hyper 1 + rustls with the `ring` provider, built
//! explicitly so that no legacy (hyper 0.14 / rustls 0.21) stack is linked.
//! It trusts the platform's roots plus the PEM certificates of `ca_bundle`,
//! and serves both the credential providers (STS, SSO, IMDS) and S3.
//!
//! The PEM file is checked here, at startup: the SDK only parses it on the
//! first connection, and panics there on an invalid certificate.

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation, SharedHttpClient,
};
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use super::config::{ChecksumMode, S3Config};
use crate::{ErrorKind, Result, StorageError};

/// Region when neither the configuration nor the SDK's chain names one:
/// where unqualified buckets have always lived.
const FALLBACK_REGION: &str = "us-east-1";

/// Shown as the "uri" of configuration errors.
const CONFIG_URI: &str = "s3://";

fn config_error(message: impl Into<String>) -> StorageError {
    StorageError::invalid(CONFIG_URI, format!("[storage.s3]: {}", message.into()))
}

/// Checks the parts of `config` the SDK would only reject late (or not at all).
pub(super) fn validate(config: &S3Config) -> Result<()> {
    if !matches!(config.endpoint_scheme.as_str(), "http" | "https") {
        return Err(config_error(
            "endpoint_scheme must be \"http\" or \"https\"",
        ));
    }
    if config.access_key_id.is_some() != config.secret_access_key.is_some() {
        return Err(config_error(
            "access_key_id and secret_access_key are set together or not at all",
        ));
    }
    if config.session_token.is_some() && config.access_key_id.is_none() {
        return Err(config_error(
            "session_token needs access_key_id and secret_access_key",
        ));
    }
    if config.max_attempts == 0 {
        return Err(config_error("max_attempts must be at least 1"));
    }
    if config.initial_backoff > config.max_backoff {
        return Err(config_error("initial_backoff must not exceed max_backoff"));
    }
    Ok(())
}

/// Loads the shared SDK configuration: runs the region chain now; the
/// credential chain runs lazily on the first request and is cached.
pub(super) async fn load_sdk_config(config: &S3Config) -> Result<SdkConfig> {
    let retry = RetryConfig::standard()
        .with_max_attempts(config.max_attempts)
        .with_initial_backoff(config.initial_backoff)
        .with_max_backoff(config.max_backoff);
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(config.connect_timeout)
        .operation_attempt_timeout(config.attempt_timeout)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client(config).await?)
        .retry_config(retry)
        .timeout_config(timeouts);
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
        let token = config.session_token.as_ref().map(|t| t.expose().to_owned());
        loader = loader.credentials_provider(Credentials::new(
            id,
            secret.expose(),
            token,
            None,
            "sluice-config",
        ));
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

/// The S3 client for an explicit endpoint (`host:port` from a URI), always
/// path style, or for the default endpoint (`None`).
pub(super) fn s3_client(sdk: &SdkConfig, config: &S3Config, explicit: Option<&str>) -> Client {
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
    let mut builder = aws_sdk_s3::config::Builder::from(sdk)
        .request_checksum_calculation(checksum_calc)
        .response_checksum_validation(checksum_check);
    builder = match explicit {
        Some(host_port) => builder
            .endpoint_url(format!("{}://{host_port}", config.endpoint_scheme))
            .force_path_style(true),
        None => {
            if let Some(url) = &config.endpoint {
                builder = builder.endpoint_url(url.clone());
            }
            builder.force_path_style(config.force_path_style)
        }
    };
    Client::from_conf(builder.build())
}

/// hyper 1 + rustls (ring), trusting the platform roots and `ca_bundle`.
async fn http_client(config: &S3Config) -> Result<SharedHttpClient> {
    let mut trust = TrustStore::default();
    if let Some(path) = &config.ca_bundle {
        let shown = format!("file://{}", path.display());
        let pem = tokio::fs::read(path)
            .await
            .map_err(|e| StorageError::from_io(shown.clone(), e))?;
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
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .tls_context(context)
        .build_https())
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

    #[test]
    fn validation_rejects_half_credentials_and_bad_schemes() {
        assert!(validate(&S3Config::default()).is_ok());
        let half = S3Config {
            access_key_id: Some("AKIA".into()),
            ..S3Config::default()
        };
        let e = validate(&half).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().contains("access_key_id"), "{e}");
        let scheme = S3Config {
            endpoint_scheme: "ftp".into(),
            ..S3Config::default()
        };
        assert!(
            validate(&scheme)
                .unwrap_err()
                .message()
                .contains("endpoint_scheme")
        );
        let zero = S3Config {
            max_attempts: 0,
            ..S3Config::default()
        };
        assert!(
            validate(&zero)
                .unwrap_err()
                .message()
                .contains("max_attempts")
        );
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
