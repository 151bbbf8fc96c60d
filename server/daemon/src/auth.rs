//! Who may call the gRPC services: the check in front of every RPC.
//!
//! One tower layer wraps the whole gRPC router. A request that came in over
//! the Unix socket passes (there the socket's permissions and its peer's
//! credentials decide who connects). Every other request, health and
//! reflection included, is held to the TCP listener's [`TcpAuth`]:
//!
//! - TLS with bearer tokens: `authorization: Bearer <token>` metadata must
//!   carry one of the tokens of `server.tls.token_file`, compared in
//!   constant time;
//! - TLS with client certificates: the handshake already required a chain
//!   to `server.tls.client_ca` (see [`crate::tls`]); the layer checks that
//!   the connection did present one;
//! - both configured: both are required;
//! - `server.tcp_insecure`: nothing is checked;
//! - no TCP listener: nothing but the Unix socket is served.
//!
//! The check runs on the request's headers, before any message is decoded.
//! A refusal is UNAUTHENTICATED and its message never repeats what the
//! client sent. Probes that hold no token use the HTTP listener's `/ready`
//! and `/live`, not the gRPC health service.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use crate::listen::Peer;
use futures::future::{Either, Ready, ready};
use subtle::ConstantTimeEq;
use tonic::Status;
use tower::{Layer, Service};

use crate::config::ConfigError;

/// Tokens shorter than this are refused when the file is read: a bearer
/// token must not be guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// The bearer tokens of `server.tls.token_file`. `Debug` shows only how
/// many there are.
pub(crate) struct Tokens(Vec<Vec<u8>>);

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} redacted)", self.0.len())
    }
}

impl Tokens {
    /// Reads `path`: one token per line; blank lines and lines starting
    /// with `#` are skipped, surrounding whitespace is trimmed. Errors name
    /// the key, the path and the line, never a token.
    pub(crate) fn load(path: &Path) -> Result<Tokens, ConfigError> {
        const KEY: &str = "server.tls.token_file";
        let invalid = |message: String| ConfigError::Invalid {
            key: KEY,
            message: format!("{}: {message}", path.display()),
        };
        let bytes = std::fs::read(path).map_err(|e| invalid(format!("cannot read: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|_| invalid("is not UTF-8 text".into()))?;
        let mut tokens = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let token = line.trim();
            if token.is_empty() || token.starts_with('#') {
                continue;
            }
            let line = index + 1;
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(format!(
                    "line {line}: a token is visible ASCII without spaces"
                )));
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(invalid(format!(
                    "line {line}: a token has at least {MIN_TOKEN_LEN} characters"
                )));
            }
            tokens.push(token.as_bytes().to_vec());
        }
        if tokens.is_empty() {
            return Err(invalid("holds no token".into()));
        }
        Ok(Tokens(tokens))
    }

    /// Whether `given` is one of the tokens. Every token is compared, each
    /// in constant time: the time taken tells nothing about which bytes
    /// matched (only, at most, whether the lengths did).
    pub(crate) fn contains(&self, given: &[u8]) -> bool {
        let mut found = subtle::Choice::from(0);
        for token in &self.0 {
            found |= token.as_slice().ct_eq(given);
        }
        found.into()
    }
}

/// Tokens that a reload replaces while requests are being checked.
pub(crate) type SharedTokens = Arc<RwLock<Arc<Tokens>>>;

/// What a request that did not come over the Unix socket must show.
#[derive(Debug, Clone)]
pub(crate) enum TcpAuth {
    /// No TCP listener: only the Unix socket is served.
    Closed,
    /// `server.tcp_insecure`: plaintext, nothing checked.
    Open,
    /// TLS, with a verified client certificate, a token, or both.
    Tls {
        /// `server.tls.client_ca` is set.
        client_cert: bool,
        /// `server.tls.token_file` is set.
        tokens: Option<SharedTokens>,
    },
}

impl TcpAuth {
    /// Whether `request` may go on.
    fn check<B>(&self, request: &http::Request<B>) -> Result<(), Status> {
        // The listener's peer guard (outermost layer) says where the
        // request came from; a request it did not see is refused.
        let (peer, tls) = match request.extensions().get::<Peer>() {
            Some(Peer::Unix(_)) => return Ok(()),
            Some(Peer::Tcp { remote, tls, .. }) => (Some(*remote), *tls),
            None => (None, None),
        };
        let (client_cert, tokens) = match self {
            TcpAuth::Open => return Ok(()),
            TcpAuth::Closed => {
                return Err(Status::unauthenticated(
                    "this daemon serves only its Unix socket",
                ));
            }
            TcpAuth::Tls {
                client_cert,
                tokens,
            } => (*client_cert, tokens),
        };
        let Some(tls) = tls else {
            return Err(Status::unauthenticated("this listener requires TLS"));
        };
        if client_cert && !tls.client_cert {
            tracing::info!(?peer, path = %request.uri().path(), "refused: no client certificate");
            return Err(Status::unauthenticated(
                "this listener requires a client certificate",
            ));
        }
        let Some(tokens) = tokens else {
            return Ok(());
        };
        let Some(value) = request.headers().get(http::header::AUTHORIZATION) else {
            tracing::info!(?peer, path = %request.uri().path(), "refused: no bearer token");
            return Err(Status::unauthenticated(
                "missing credentials: this listener requires `authorization: Bearer <token>` metadata",
            ));
        };
        let Some(token) = bearer(value.as_bytes()) else {
            tracing::info!(?peer, path = %request.uri().path(), "refused: malformed authorization metadata");
            return Err(Status::unauthenticated(
                "malformed authorization metadata: expected `Bearer <token>`",
            ));
        };
        let tokens = Arc::clone(&tokens.read().unwrap_or_else(PoisonError::into_inner));
        if tokens.contains(token) {
            Ok(())
        } else {
            tracing::info!(?peer, path = %request.uri().path(), "refused: invalid bearer token");
            Err(Status::unauthenticated("invalid bearer token"))
        }
    }
}

/// The token of an `authorization` value `Bearer <token>` (the scheme is
/// case-insensitive, RFC 6750).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if value.len() <= SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let token = value[SCHEME.len()..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The layer over the gRPC router (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct AuthLayer(Arc<TcpAuth>);

impl AuthLayer {
    pub(crate) fn new(auth: TcpAuth) -> Self {
        AuthLayer(Arc::new(auth))
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate {
            inner,
            auth: Arc::clone(&self.0),
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Authenticate<S> {
    inner: S,
    auth: Arc<TcpAuth>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Authenticate<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        match self.auth.check(&request) {
            Ok(()) => Either::Left(self.inner.call(request)),
            Err(status) => Either::Right(ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Result<Tokens, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, text).unwrap();
        Tokens::load(&path)
    }

    #[test]
    fn token_file_lines() {
        let t = tokens("# ops\n\n  aaaaaaaaaaaaaaaa-one  \nbbbbbbbbbbbbbbbb-two\n").unwrap();
        assert!(t.contains(b"aaaaaaaaaaaaaaaa-one"));
        assert!(t.contains(b"bbbbbbbbbbbbbbbb-two"));
        assert!(!t.contains(b"aaaaaaaaaaaaaaaa-on"));
        assert!(!t.contains(b"aaaaaaaaaaaaaaaa-one "));
        assert!(!t.contains(b""));
        assert!(!t.contains(b"# ops"));
        assert_eq!(format!("{t:?}"), "Tokens(2 redacted)");
    }

    #[test]
    fn bad_token_files_name_the_line_not_the_token() {
        for (text, want) in [
            ("", "holds no token"),
            ("# only a comment\n", "holds no token"),
            ("short-secret-x\n", "line 1: a token has at least 16"),
            (
                "# c\nsecret with spaces inside\n",
                "line 2: a token is visible ASCII",
            ),
        ] {
            let error = tokens(text).unwrap_err().to_string();
            assert!(error.contains("server.tls.token_file"), "{error}");
            assert!(error.contains(want), "{text:?}: {error}");
            assert!(!error.contains("secret"), "{error}");
        }
        let dir = tempfile::tempdir().unwrap();
        let error = Tokens::load(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("server.tls.token_file") && error.contains("cannot read"),
            "{error}"
        );
    }

    #[test]
    fn bearer_scheme() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"abc"), None);
    }
}
