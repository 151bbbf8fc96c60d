//! The reqwest client of `gs://` and `az://`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::s3::endpoint::check_resolved;
use crate::{ErrorKind, Result, StorageError};

/// The resolver of the client: the system's, refusing names that resolve to
/// metadata, link-local or unspecified addresses (as for `s3://`; see
/// `s3/endpoint.rs`). An endpoint written as an IP literal is not resolved.
#[derive(Debug, Clone, Copy)]
struct GuardedDns;

impl reqwest::dns::Resolve for GuardedDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
            check_resolved(&host, &ips)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A client with these timeouts (connect; response headers and each body
/// read), no redirects (a redirect would carry the credentials elsewhere),
/// no automatic decompression (the stored bytes, always), and the guarded
/// resolver. TLS is rustls on ring, installed as the process's provider if
/// none is (the credential libraries build clients of their own).
pub(crate) fn client(connect: Duration, read: Duration) -> Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(connect)
        .read_timeout(read)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(GuardedDns))
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            StorageError::new(ErrorKind::Other, "", "cannot build the http client").with_source(e)
        })
}
