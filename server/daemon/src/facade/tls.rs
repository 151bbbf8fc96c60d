//! TLS of the facade's TCP listener (`[facade.tls]`), as the gRPC TCP
//! listener does it ([`crate::tls`]): certificate and key from PEM files,
//! read at start and again on SIGHUP (a reload that fails keeps what was
//! loaded), each connection taking the configuration current when it is
//! accepted; HTTP/1.1 by ALPN; a handshake must finish within
//! [`HANDSHAKE_TIMEOUT`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::ConfigError;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate in use and where it comes from.
#[derive(Debug)]
pub struct FacadeTls {
    cert: PathBuf,
    key: PathBuf,
    server: RwLock<Arc<rustls::ServerConfig>>,
}

fn invalid(key: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { key, message }
}

impl FacadeTls {
    /// Reads `cert` and `key`.
    pub fn load(cert: &Path, key: &Path) -> Result<FacadeTls, ConfigError> {
        let server = server_config(cert, key)?;
        Ok(FacadeTls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            server: RwLock::new(Arc::new(server)),
        })
    }

    /// Reads the files again; on an error nothing changes.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let server = server_config(&self.cert, &self.key)?;
        *self.server.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(server);
        Ok(())
    }

    /// Completes the handshake of `io`; `None` (logged) if it fails.
    pub async fn accept<IO>(&self, io: IO) -> Option<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = TlsAcceptor::from(Arc::clone(
            &self.server.read().unwrap_or_else(PoisonError::into_inner),
        ));
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(error)) => {
                tracing::info!(%error, "facade TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::info!("facade TLS handshake timed out");
                None
            }
        }
    }
}

fn server_config(cert_path: &Path, key_path: &Path) -> Result<rustls::ServerConfig, ConfigError> {
    let read = |key, path: &Path| {
        std::fs::read(path)
            .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
    };
    let pem = read("facade.tls.cert", cert_path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            invalid(
                "facade.tls.cert",
                format!("{}: not valid PEM: {e}", cert_path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(invalid(
            "facade.tls.cert",
            format!("{}: holds no PEM certificate", cert_path.display()),
        ));
    }
    let key_pem = read("facade.tls.key", key_path)?;
    // The parser's own error could quote a line of the key file: not shown.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        invalid(
            "facade.tls.key",
            format!(
                "{}: holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                key_path.display()
            ),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("facade.tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            invalid(
                "facade.tls.key",
                format!(
                    "{} cannot serve the certificate of {}: {e}",
                    key_path.display(),
                    cert_path.display()
                ),
            )
        })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(server)
}
