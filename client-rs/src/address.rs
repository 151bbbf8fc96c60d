//! Daemon addresses and the gRPC channel to them.
//!
//! The daemon listens on a Unix socket on the node (the normal case: no port
//! to allocate, file permissions decide who may connect) or on TCP. Accepted
//! forms:
//!
//! | address                      | meaning                          |
//! |------------------------------|----------------------------------|
//! | `unix:///run/sluice/s.sock`  | Unix socket, absolute path       |
//! | `unix:relative/s.sock`       | Unix socket, relative path       |
//! | `/run/sluice/s.sock`, `./s`  | a bare path is a Unix socket too |
//! | `https://sluice.example:7420`| TCP, TLS (see [`crate::credentials`]) |
//! | `http://127.0.0.1:7070`      | TCP, plaintext HTTP/2 (a daemon with `server.tcp_insecure`) |
//!
//! Over `https://` the daemon's certificate is verified against the CA file
//! (else the system's roots) for the address's host name or IP address, and
//! the token and client certificate of the [`ConnectOptions`] are shown.
//!
//! Unix sockets go through tonic's custom-connector hook: the endpoint URI is
//! a placeholder that only fills the `:authority` header, and the connector
//! opens the socket. Tonic calls the connector again whenever the connection
//! drops, so a restarted daemon is picked up without a new `Client`.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::credentials::ConnectOptions;
use crate::error::{Error, Result};

/// Environment variable naming the daemon address.
pub const ADDRESS_ENV: &str = "SLUICE_ADDRESS";

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_ADDRESS: &str = "unix:///run/sluice/sluiced.sock";

/// Giving up on a connection attempt after this long: a local daemon answers
/// in microseconds, so a long wait means it is wedged, not slow.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 flow-control windows. The defaults (2 MiB per stream, 5 MiB per
/// connection) cap a node-local transfer at a few round trips of data; with
/// 1 MiB chunks and dozens of reads in flight, larger windows keep the socket
/// busy. Memory is bounded by what the caller actually consumes.
const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;

/// Largest HTTP/2 frame the daemon may send us (the protocol's default is
/// 16 KiB): a 1 MiB chunk then travels as one DATA frame, not 64.
const MAX_FRAME: u32 = 1 << 20;

/// A parsed daemon address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A Unix domain socket.
    Unix(PathBuf),
    /// An `http://host:port` endpoint: plaintext.
    Http(String),
    /// An `https://host:port` endpoint: TLS.
    Https(String),
}

impl Address {
    /// Whether this is a Unix socket (on this node).
    pub fn is_unix(&self) -> bool {
        matches!(self, Address::Unix(_))
    }
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(address: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidAddress {
            address: address.to_owned(),
            reason,
        };
        let unix = |path: &str| {
            if path.is_empty() {
                Err(invalid("the socket path is empty"))
            } else {
                Ok(Address::Unix(PathBuf::from(path)))
            }
        };
        if address.is_empty() {
            return Err(invalid("the address is empty"));
        }
        if let Some(path) = address.strip_prefix("unix://") {
            return unix(path);
        }
        if let Some(path) = address.strip_prefix("unix:") {
            return unix(path);
        }
        let has_host = || {
            address
                .parse::<Uri>()
                .is_ok_and(|uri| uri.host().is_some_and(|h| !h.is_empty()))
        };
        if address.starts_with("http://") {
            return match has_host() {
                true => Ok(Address::Http(address.to_owned())),
                false => Err(invalid("not a valid http://host:port URI")),
            };
        }
        if address.starts_with("https://") {
            return match has_host() {
                true => Ok(Address::Https(address.to_owned())),
                false => Err(invalid("not a valid https://host:port URI")),
            };
        }
        if address.contains("://") {
            return Err(invalid(
                "unsupported scheme; use unix://, https:// or http://",
            ));
        }
        unix(address)
    }
}

/// Opens a channel to the daemon at `address` (as given, for error
/// messages; `parsed` is its parsed form). `options` are used for
/// `https://` only.
pub(crate) async fn connect_channel(
    address: &str,
    parsed: Address,
    options: &ConnectOptions,
) -> Result<Channel> {
    let connect_error = |source| Error::Connect {
        address: address.to_owned(),
        source,
    };
    match parsed {
        Address::Unix(path) => {
            let path = Arc::new(path);
            let connector = tower::service_fn(move |_: Uri| {
                let path = Arc::clone(&path);
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(&*path).await?)) }
            });
            // Only the authority of this URI is used, in request headers.
            configure(Endpoint::from_static("http://localhost"))
                .connect_with_connector(connector)
                .await
                .map_err(connect_error)
        }
        Address::Http(uri) => {
            let endpoint = Endpoint::from_shared(uri).map_err(connect_error)?;
            configure(endpoint).connect().await.map_err(connect_error)
        }
        Address::Https(uri) => {
            let tls = options.tls_config()?;
            let endpoint = Endpoint::from_shared(uri)
                .and_then(|e| e.tls_config(tls))
                .map_err(connect_error)?;
            configure(endpoint).connect().await.map_err(connect_error)
        }
    }
}

fn configure(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .tcp_nodelay(true)
}

/// The address from `SLUICE_ADDRESS`, else [`DEFAULT_ADDRESS`].
pub fn default_address() -> String {
    std::env::var(ADDRESS_ENV)
        .ok()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| DEFAULT_ADDRESS.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(path: &str) -> Address {
        Address::Unix(PathBuf::from(path))
    }

    #[test]
    fn unix_forms() {
        assert_eq!(
            "unix:///run/s.sock".parse::<Address>().unwrap(),
            unix("/run/s.sock")
        );
        assert_eq!(
            "unix:rel/s.sock".parse::<Address>().unwrap(),
            unix("rel/s.sock")
        );
        assert_eq!(
            "/run/s.sock".parse::<Address>().unwrap(),
            unix("/run/s.sock")
        );
        assert_eq!("./s.sock".parse::<Address>().unwrap(), unix("./s.sock"));
    }

    #[test]
    fn http_form() {
        assert_eq!(
            "http://127.0.0.1:7070".parse::<Address>().unwrap(),
            Address::Http("http://127.0.0.1:7070".into())
        );
    }

    #[test]
    fn https_form() {
        assert_eq!(
            "https://sluice.example:7420".parse::<Address>().unwrap(),
            Address::Https("https://sluice.example:7420".into())
        );
        assert!(!"https://h:1".parse::<Address>().unwrap().is_unix());
    }

    #[test]
    fn refused_forms_name_the_address() {
        for bad in ["", "unix://", "unix:", "https://", "grpc://h:1", "http://"] {
            let error = bad.parse::<Address>().unwrap_err();
            assert!(error.is_invalid_argument(), "{bad}: {error}");
            assert!(error.to_string().contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[tokio::test]
    async fn connect_error_names_the_address() {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("unix://{}/missing.sock", dir.path().display());
        let parsed = address.parse().unwrap();
        let error = connect_channel(&address, parsed, &ConnectOptions::default())
            .await
            .unwrap_err();
        assert!(error.is_unavailable(), "{error}");
        assert!(error.to_string().contains(&address), "{error}");
    }
}
