//! What a client shows an `https://` daemon: the CA its certificate must
//! chain to, a bearer token, a client certificate.
//!
//! Every setting is used only for `https://` addresses: a token is never
//! sent over plaintext, and a Unix socket needs none. Settings left unset
//! fall back to the environment:
//!
//! | setting       | environment                                     |
//! |---------------|-------------------------------------------------|
//! | `ca_file`     | `SLUICE_CA_FILE` (unset: the system's roots)    |
//! | `token`       | `SLUICE_TOKEN`, or `SLUICE_TOKEN_FILE` (a file) |
//! | `client_cert` | `SLUICE_CLIENT_CERT`                            |
//! | `client_key`  | `SLUICE_CLIENT_KEY`                             |
//!
//! A [`Token`] never shows itself: its `Debug` is redacted, it is sent as
//! sensitive metadata (never indexed by HTTP/2 header compression), and no
//! error message quotes it.
//!
//! ```no_run
//! # async fn demo() -> sluice_client::Result<()> {
//! use sluice_client::{Client, ConnectOptions, Token};
//!
//! let options = ConnectOptions {
//!     ca_file: Some("/etc/sluice/ca.crt".into()),
//!     token: Some(Token::from_file("/etc/sluice/token")?),
//!     ..ConnectOptions::default()
//! };
//! let client = Client::connect_with("https://node-17.cluster:7420", options).await?;
//! # let _ = client;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::error::{Error, Result};

/// The CA certificates (PEM) a daemon's certificate must chain to.
pub const CA_FILE_ENV: &str = "SLUICE_CA_FILE";
/// The bearer token itself.
pub const TOKEN_ENV: &str = "SLUICE_TOKEN";
/// A file holding the bearer token.
pub const TOKEN_FILE_ENV: &str = "SLUICE_TOKEN_FILE";
/// The client certificate chain (PEM), for daemons that require one.
pub const CLIENT_CERT_ENV: &str = "SLUICE_CLIENT_CERT";
/// The client certificate's private key (PEM).
pub const CLIENT_KEY_ENV: &str = "SLUICE_CLIENT_KEY";

/// A bearer token. `Debug` shows `Token(<redacted>)`.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A token from its text (surrounding whitespace trimmed). `setting`
    /// names where it came from in errors.
    fn parse(text: &str, setting: &str) -> Result<Token> {
        let token = text.trim();
        if token.is_empty() {
            return Err(Error::credentials(setting, "the token is empty"));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::credentials(
                setting,
                "a token is visible ASCII without spaces",
            ));
        }
        Ok(Token(token.into()))
    }

    /// A token given as text.
    pub fn new(token: &str) -> Result<Token> {
        Self::parse(token, "token")
    }

    /// The token in the file at `path`: its first line that is neither
    /// blank nor a `#` comment.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Token> {
        let path = path.as_ref();
        let setting = format!("token file {}", path.display());
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::credentials_io(&setting, "cannot read it", e))?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| Error::credentials(&setting, "holds no token"))?;
        Self::parse(line, &setting)
    }

    /// `Bearer <token>`, marked sensitive.
    fn header(&self) -> MetadataValue<Ascii> {
        let mut value: MetadataValue<Ascii> = format!("Bearer {}", self.0)
            .parse()
            .expect("a token is visible ASCII");
        value.set_sensitive(true);
        value
    }
}

/// TLS and authentication settings for `https://` addresses (see the
/// module docs). `Debug` never shows the token.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// CA certificates (PEM) that the daemon's certificate must chain to;
    /// unset: the system's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// The bearer token, for daemons that require one.
    pub token: Option<Token>,
    /// Client certificate chain (PEM), for daemons that require mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub client_key: Option<PathBuf>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl ConnectOptions {
    /// Everything from the environment.
    pub fn from_env() -> Result<Self> {
        Self::default().or_env()
    }

    /// These options, with what is unset taken from the environment
    /// (`SLUICE_TOKEN` and `SLUICE_TOKEN_FILE` together are an error).
    pub fn or_env(mut self) -> Result<Self> {
        if self.ca_file.is_none() {
            self.ca_file = env(CA_FILE_ENV).map(PathBuf::from);
        }
        if self.client_cert.is_none() && self.client_key.is_none() {
            self.client_cert = env(CLIENT_CERT_ENV).map(PathBuf::from);
            self.client_key = env(CLIENT_KEY_ENV).map(PathBuf::from);
        }
        if self.token.is_none() {
            self.token = match (env(TOKEN_ENV), env(TOKEN_FILE_ENV)) {
                (Some(_), Some(_)) => {
                    return Err(Error::credentials(
                        &format!("{TOKEN_ENV} and {TOKEN_FILE_ENV}"),
                        "set one or the other, not both",
                    ));
                }
                (Some(token), None) => Some(Token::parse(&token, TOKEN_ENV)?),
                (None, Some(path)) => Some(Token::from_file(path)?),
                (None, None) => None,
            };
        }
        Ok(self)
    }

    /// The TLS configuration: files read and checked here, so that a bad
    /// one is named rather than failing the handshake.
    pub(crate) fn tls_config(&self) -> Result<ClientTlsConfig> {
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca_file {
            Some(path) => {
                let pem = read_pem("CA file", path)?;
                let setting = format!("CA file {}", path.display());
                let certs = CertificateDer::pem_slice_iter(&pem)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| Error::credentials(&setting, &format!("not valid PEM: {e}")))?;
                if certs.is_empty() {
                    return Err(Error::credentials(&setting, "holds no PEM certificate"));
                }
                tls.ca_certificate(Certificate::from_pem(pem))
            }
            None => tls.with_native_roots(),
        };
        match (&self.client_cert, &self.client_key) {
            (Some(cert_path), Some(key_path)) => {
                let cert = read_pem("client certificate", cert_path)?;
                if CertificateDer::pem_slice_iter(&cert).next().is_none() {
                    return Err(Error::credentials(
                        &format!("client certificate {}", cert_path.display()),
                        "holds no PEM certificate",
                    ));
                }
                let key = read_pem("client key", key_path)?;
                if PrivateKeyDer::from_pem_slice(&key).is_err() {
                    return Err(Error::credentials(
                        &format!("client key {}", key_path.display()),
                        "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                    ));
                }
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            (None, None) => {}
            _ => {
                return Err(Error::credentials(
                    "client certificate",
                    "client_cert and client_key go together: set both or neither",
                ));
            }
        }
        Ok(tls)
    }

    /// The interceptor that sends the token.
    pub(crate) fn bearer(&self) -> BearerAuth {
        BearerAuth(self.token.as_ref().map(Token::header))
    }
}

fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::credentials_io(&format!("{what} {}", path.display()), "cannot read it", e)
    })
}

/// Adds `authorization: Bearer <token>` to every call, when there is a
/// token. `Debug` never shows it.
#[derive(Clone, Default)]
pub struct BearerAuth(Option<MetadataValue<Ascii>>);

impl fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.0.is_some() {
            "<redacted>"
        } else {
            "none"
        };
        write!(f, "BearerAuth({state})")
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_debug_is_redacted() {
        let token = Token::new("s3cr3t-value-0123456789").unwrap();
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
        let options = ConnectOptions {
            token: Some(token.clone()),
            ..ConnectOptions::default()
        };
        assert!(!format!("{options:?}").contains("s3cr3t"));
        assert!(!format!("{:?}", options.bearer()).contains("s3cr3t"));
        assert!(token.header().is_sensitive());
        assert_eq!(
            token.header().to_str().unwrap(),
            "Bearer s3cr3t-value-0123456789"
        );
    }

    #[test]
    fn bad_tokens_are_refused_without_being_shown() {
        for bad in ["", "   ", "two words-secret"] {
            let error = Token::new(bad).unwrap_err();
            assert!(error.is_invalid_argument(), "{error}");
            assert!(!error.to_string().contains("secret"), "{error}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "# comment\n\n  tok-from-file-123  \nignored\n").unwrap();
        let token = Token::from_file(&path).unwrap();
        assert_eq!(&*token.0, "tok-from-file-123");
        std::fs::write(&path, "# nothing\n").unwrap();
        let error = Token::from_file(&path).unwrap_err();
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );
        let error = Token::from_file(dir.path().join("none")).unwrap_err();
        assert!(error.to_string().contains("cannot read"), "{error}");
    }

    #[test]
    fn bad_tls_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "no pem here\n").unwrap();
        let options = ConnectOptions {
            ca_file: Some(garbage.clone()),
            ..ConnectOptions::default()
        };
        let error = options.tls_config().unwrap_err();
        assert!(error.is_invalid_argument());
        assert!(error.to_string().contains("CA file"), "{error}");
        assert!(error.to_string().contains("garbage.pem"), "{error}");
        let options = ConnectOptions {
            client_cert: Some(garbage),
            ..ConnectOptions::default()
        };
        let error = options.tls_config().unwrap_err();
        assert!(error.to_string().contains("go together"), "{error}");
    }
}
