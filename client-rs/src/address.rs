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
//! | `http://127.0.0.1:7070`      | TCP, plaintext HTTP/2            |
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

/// A parsed daemon address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A Unix domain socket.
    Unix(PathBuf),
    /// An `http://host:port` endpoint.
    Http(String),
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
        if address.starts_with("http://") {
            return match address.parse::<Uri>() {
                Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => {
                    Ok(Address::Http(address.to_owned()))
                }
                _ => Err(invalid("not a valid http://host:port URI")),
            };
        }
        if address.starts_with("https://") {
            return Err(invalid("TLS is not supported; use unix:// or http://"));
        }
        if address.contains("://") {
            return Err(invalid("unsupported scheme; use unix:// or http://"));
        }
        unix(address)
    }
}

/// Opens a channel to the daemon at `address` (as given, for error messages).
pub(crate) async fn connect_channel(address: &str) -> Result<Channel> {
    let parsed: Address = address.parse()?;
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
    }
}

fn configure(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
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
    fn refused_forms_name_the_address() {
        for bad in [
            "",
            "unix://",
            "unix:",
            "https://h:1",
            "grpc://h:1",
            "http://",
        ] {
            let error = bad.parse::<Address>().unwrap_err();
            assert!(error.is_invalid_argument(), "{bad}: {error}");
            assert!(error.to_string().contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[tokio::test]
    async fn connect_error_names_the_address() {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("unix://{}/missing.sock", dir.path().display());
        let error = connect_channel(&address).await.unwrap_err();
        assert!(error.is_unavailable(), "{error}");
        assert!(error.to_string().contains(&address), "{error}");
    }
}
