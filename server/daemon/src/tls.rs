//! TLS on the gRPC TCP listener: the `[server.tls]` keys, the certificate
//! material (read at startup, read again on SIGHUP) and the accept path.
//!
//! Any TCP listener, loopback included, speaks TLS and authenticates its
//! clients with bearer tokens, client certificates, or both (see
//! [`crate::auth`]), unless `server.tcp_insecure` is set, which is logged as
//! a warning at startup. Startup fails with an error naming the key when the
//! combination is incomplete or a file cannot be read or parsed.
//!
//! The rustls configuration (certificate and key, client CA) and the tokens
//! are built whole from the files and swapped in as one value: each new
//! connection takes the configuration current when it is accepted, so a
//! SIGHUP that changed the files is seen by every connection accepted after
//! it; connections already open keep theirs. A reload that fails (a missing
//! file, bad PEM, a key that does not match) keeps everything as it was and
//! logs the error.
//!
//! Each handshake runs in a task of its own with `server.tls.handshake_timeout`,
//! so a client that connects and sends nothing holds a task and a descriptor
//! for that long at most; at most [`MAX_HANDSHAKES`] handshakes run at once,
//! further connections wait in the kernel's accept queue.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures::Stream;
use futures::StreamExt;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::auth::{SharedTokens, TcpAuth, Tokens};
use crate::config::{ConfigError, ServerConfig};
use crate::listen::{Conn, Peer, TlsPeer};

/// Handshakes in progress at once on the TCP listener.
pub const MAX_HANDSHAKES: usize = 1024;

/// `[server.tls]`: TLS and client authentication of `server.tcp`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM, leaf first.
    pub cert: Option<PathBuf>,
    /// The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to: set,
    /// every client presents a certificate it verifies against (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// Bearer tokens, one per line: set, every RPC carries
    /// `authorization: Bearer <token>` with one of them.
    pub token_file: Option<PathBuf>,
    /// How long a client may take to complete the TLS handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            client_ca: None,
            token_file: None,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl TlsConfig {
    fn any_file(&self) -> bool {
        self.cert.is_some()
            || self.key.is_some()
            || self.client_ca.is_some()
            || self.token_file.is_some()
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Checks how `server.tcp`, `server.tcp_insecure` and `[server.tls]` go
/// together (no file is read here; [`TcpSecurity::load`] reads them).
pub(crate) fn validate(server: &ServerConfig) -> Result<(), ConfigError> {
    if server.allow_remote_tcp.is_some() {
        return Err(invalid(
            "server.allow_remote_tcp",
            "this key was removed: every TCP listener now uses TLS (server.tls.cert, \
             server.tls.key, and server.tls.token_file or server.tls.client_ca), or \
             server.tcp_insecure = true for plaintext without authentication",
        ));
    }
    let tls = &server.tls;
    if tls.handshake_timeout.is_zero() {
        return Err(invalid("server.tls.handshake_timeout", "must be above 0s"));
    }
    if server.tcp_insecure {
        if tls.any_file() {
            return Err(invalid(
                "server.tcp_insecure",
                "cannot be combined with server.tls.* files: remove one or the other",
            ));
        }
        return Ok(());
    }
    if server.tcp.is_none() {
        return Ok(());
    }
    let needed = "is required when server.tcp is set (every TCP listener uses TLS; \
                  server.tcp_insecure = true serves plaintext without authentication instead)";
    if tls.cert.is_none() {
        return Err(invalid("server.tls.cert", needed));
    }
    if tls.key.is_none() {
        return Err(invalid("server.tls.key", needed));
    }
    if tls.token_file.is_none() && tls.client_ca.is_none() {
        return Err(invalid(
            "server.tls.token_file",
            "server.tcp needs a way to authenticate clients: set server.tls.token_file \
             (bearer tokens), server.tls.client_ca (client certificates), or both",
        ));
    }
    Ok(())
}

/// The TCP listener's TLS configuration and tokens, as last loaded.
#[derive(Debug)]
pub struct TcpSecurity {
    config: TlsConfig,
    server: RwLock<Arc<rustls::ServerConfig>>,
    tokens: Option<SharedTokens>,
}

impl TcpSecurity {
    /// What `server` asks of its TCP listener: `None` when there is none or
    /// it is insecure (which is logged here as a warning), else the
    /// material read from the files.
    pub fn for_server(server: &ServerConfig) -> Result<Option<Arc<TcpSecurity>>, ConfigError> {
        let Some(addr) = server.tcp else {
            return Ok(None);
        };
        if server.tcp_insecure {
            tracing::warn!(
                tcp = %addr,
                "server.tcp_insecure = true: the TCP listener serves plaintext gRPC WITHOUT \
                 AUTHENTICATION; anyone who can reach {addr} can read and write everything this \
                 daemon can, and see the data in transit"
            );
            return Ok(None);
        }
        Self::load(&server.tls).map(|s| Some(Arc::new(s)))
    }

    /// Reads the files of `config` (already validated).
    pub fn load(config: &TlsConfig) -> Result<TcpSecurity, ConfigError> {
        let server = server_config(config)?;
        let tokens = match &config.token_file {
            Some(path) => Some(Arc::new(RwLock::new(Arc::new(Tokens::load(path)?)))),
            None => None,
        };
        Ok(TcpSecurity {
            config: config.clone(),
            server: RwLock::new(Arc::new(server)),
            tokens,
        })
    }

    /// Reads the files again and, if all of them load, puts them in use
    /// for the connections accepted from now on. On an error nothing changes.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let server = server_config(&self.config)?;
        let tokens = match (&self.config.token_file, &self.tokens) {
            (Some(path), Some(_)) => Some(Arc::new(Tokens::load(path)?)),
            _ => None,
        };
        *self.server.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(server);
        if let (Some(slot), Some(tokens)) = (&self.tokens, tokens) {
            *slot.write().unwrap_or_else(PoisonError::into_inner) = tokens;
        }
        Ok(())
    }

    /// The check the auth layer applies to requests over TCP.
    pub(crate) fn auth(&self) -> TcpAuth {
        TcpAuth::Tls {
            client_cert: self.config.client_ca.is_some(),
            tokens: self.tokens.clone(),
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(
            &self.server.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

/// Reads `path`, naming `key` in the error.
fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
}

/// The certificates of the PEM file at `path`; at least one.
fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, format!("{}: not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!("{}: holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// The rustls server configuration of `config`: ring, TLS 1.2 and 1.3,
/// HTTP/2 by ALPN, client certificates required when a client CA is set.
fn server_config(config: &TlsConfig) -> Result<rustls::ServerConfig, ConfigError> {
    let (Some(cert_path), Some(key_path)) = (&config.cert, &config.key) else {
        return Err(invalid(
            "server.tls.cert",
            "server.tls.cert and server.tls.key are required",
        ));
    };
    let certs = certificates("server.tls.cert", cert_path)?;
    let key_pem = read("server.tls.key", key_path)?;
    // The parser's own error could quote a line of the key file: not shown.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        invalid(
            "server.tls.key",
            format!(
                "{}: holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                key_path.display()
            ),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("server.tls", e.to_string()))?;
    let builder = match &config.client_ca {
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("server.tls.client_ca", ca_path)? {
                roots.add(cert).map_err(|e| {
                    invalid(
                        "server.tls.client_ca",
                        format!("{}: {e}", ca_path.display()),
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| {
                    invalid(
                        "server.tls.client_ca",
                        format!("{}: {e}", ca_path.display()),
                    )
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(certs, key).map_err(|e| {
        invalid(
            "server.tls.key",
            format!(
                "{} cannot serve the certificate of {}: {e}",
                key_path.display(),
                cert_path.display()
            ),
        )
    })?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(server)
}

/// The TLS connections made of `conns` (the TCP listener's accepted
/// connections, with their slots of the connection limit), handshakes done
/// (see the module docs). Never yields an error: failed handshakes are
/// logged, and accept errors are the accept loop's (`crate::listen`).
pub(crate) fn incoming<S>(
    conns: S,
    security: Arc<TcpSecurity>,
) -> impl Stream<Item = io::Result<Conn<TlsStream<TcpStream>>>> + Send + 'static
where
    S: Stream<Item = io::Result<Conn<TcpStream>>> + Send + Unpin + 'static,
{
    let accepting = Accepting {
        conns,
        timeout: security.config.handshake_timeout,
        security,
        handshakes: JoinSet::new(),
    };
    futures::stream::unfold(accepting, |mut accepting| async move {
        let connection = accepting.next().await?;
        Some((Ok(connection), accepting))
    })
}

/// The accept loop's state; dropping it aborts the handshakes in progress.
struct Accepting<S> {
    conns: S,
    security: Arc<TcpSecurity>,
    timeout: Duration,
    handshakes: JoinSet<Option<Conn<TlsStream<TcpStream>>>>,
}

impl<S> Accepting<S>
where
    S: Stream<Item = io::Result<Conn<TcpStream>>> + Send + Unpin + 'static,
{
    /// The next connection with its handshake done; `None` once the
    /// listener's stream ended.
    async fn next(&mut self) -> Option<Conn<TlsStream<TcpStream>>> {
        loop {
            let room = self.handshakes.len() < MAX_HANDSHAKES;
            tokio::select! {
                accepted = self.conns.next(), if room => match accepted {
                    Some(Ok(conn)) => self.handshake(conn),
                    Some(Err(error)) => tracing::warn!(%error, "cannot accept a TCP connection"),
                    None => return None,
                },
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(tls)) = done {
                        return Some(tls);
                    }
                }
            }
        }
    }

    fn handshake(&mut self, conn: Conn<TcpStream>) {
        let (tcp, mut slot) = conn.into_parts();
        let peer = match slot.peer() {
            Peer::Tcp { remote, .. } => Some(*remote),
            Peer::Unix(_) => None,
        };
        let acceptor = self.security.acceptor();
        let timeout = self.timeout;
        self.handshakes.spawn(async move {
            match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let client_cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|c| !c.is_empty());
                    slot.set_tls(TlsPeer { client_cert });
                    Some(Conn::new(tls, slot))
                }
                Ok(Err(error)) => {
                    tracing::info!(?peer, %error, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::info!(?peer, ?timeout, "TLS handshake timed out");
                    None
                }
            }
        });
    }
}

/// Reloads the TLS material from its files (on SIGHUP, see
/// [`crate::reload`]).
pub(crate) fn reload(security: Option<&TcpSecurity>) {
    match security {
        None => tracing::debug!("SIGHUP: no TLS material to reload"),
        Some(security) => match security.reload() {
            Ok(()) => tracing::info!(
                "SIGHUP: TLS certificate, client CA and tokens reloaded; new connections use them"
            ),
            Err(error) => tracing::error!(
                %error,
                "SIGHUP: TLS reload failed; the TLS material loaded before stays in use"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn server(tcp: bool) -> ServerConfig {
        ServerConfig {
            tcp: tcp.then(|| SocketAddr::from(([127, 0, 0, 1], 7420))),
            ..ServerConfig::default()
        }
    }

    fn key_of(result: Result<(), ConfigError>) -> &'static str {
        match result.unwrap_err() {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn combinations() {
        assert!(validate(&server(false)).is_ok());
        let mut s = server(true);
        assert_eq!(key_of(validate(&s)), "server.tls.cert");
        s.tls.cert = Some("/c".into());
        assert_eq!(key_of(validate(&s)), "server.tls.key");
        s.tls.key = Some("/k".into());
        assert_eq!(key_of(validate(&s)), "server.tls.token_file");
        s.tls.client_ca = Some("/ca".into());
        assert!(validate(&s).is_ok());
        s.tcp_insecure = true;
        assert_eq!(key_of(validate(&s)), "server.tcp_insecure");
        let mut s = server(true);
        s.tcp_insecure = true;
        assert!(validate(&s).is_ok());
        s.tls.handshake_timeout = Duration::ZERO;
        assert_eq!(key_of(validate(&s)), "server.tls.handshake_timeout");
    }

    #[test]
    fn unreadable_and_bad_files_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let config = TlsConfig {
            cert: Some(dir.path().join("missing.crt")),
            key: Some(garbage.clone()),
            token_file: Some(garbage.clone()),
            ..TlsConfig::default()
        };
        let error = TcpSecurity::load(&config).unwrap_err().to_string();
        assert!(
            error.contains("server.tls.cert") && error.contains("missing.crt"),
            "{error}"
        );
        let config = TlsConfig {
            cert: Some(garbage.clone()),
            ..config
        };
        let error = TcpSecurity::load(&config).unwrap_err().to_string();
        assert!(
            error.contains("server.tls.cert") && error.contains("no PEM certificate"),
            "{error}"
        );
    }
}
