//! A TLS front for a plain-HTTP test server (s3s-fs): terminates TLS with a
//! test certificate (or, [`TlsProxy::start_plain`], none), forwards the
//! bytes both ways, and counts what the clients sent in the clear — how
//! many requests carried `x-amz-content-sha256: UNSIGNED-PAYLOAD`, how many
//! a hex payload hash, and how many an SDK checksum.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::certs::Pair;

/// What the proxy saw of the requests' signatures.
#[derive(Debug, Default)]
pub struct Seen {
    /// Requests signed with `UNSIGNED-PAYLOAD`.
    pub unsigned: AtomicUsize,
    /// Requests whose signature covers a SHA-256 of the body.
    pub hashed: AtomicUsize,
    /// Requests with a checksum of the body (`x-amz-sdk-checksum-algorithm`).
    pub checksummed: AtomicUsize,
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct TlsProxy {
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const HEADER: &[u8] = b"x-amz-content-sha256:";
const CHECKSUM: &[u8] = b"x-amz-sdk-checksum-algorithm:";

impl TlsProxy {
    /// Listens on a free loopback port with `cert`, forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr, cert: &Pair) -> TlsProxy {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert.cert)
            .expect("server certificate")
            .collect::<Result<_, _>>()
            .expect("server certificate");
        let key = PrivateKeyDer::from_pem_file(&cert.key).expect("server key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        Self::serve(upstream, Some(TlsAcceptor::from(Arc::new(config)))).await
    }

    /// The same, without TLS: plain HTTP in, plain HTTP out, counted.
    pub async fn start_plain(upstream: SocketAddr) -> TlsProxy {
        Self::serve(upstream, None).await
    }

    /// Accepts connections (through `tls` if any) and forwards each.
    async fn serve(upstream: SocketAddr, tls: Option<TlsAcceptor>) -> TlsProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Seen::default());
        let counts = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (tls, counts) = (tls.clone(), Arc::clone(&counts));
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                forward(stream, up, &counts).await;
                            }
                        }
                        None => forward(tcp, up, &counts).await,
                    }
                });
            }
        });
        TlsProxy { addr, seen, task }
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// The counts so far.
    pub fn seen(&self) -> &Seen {
        &self.seen
    }
}

async fn forward<S>(tls: S, up: TcpStream, seen: &Seen)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let (mut tls_r, mut tls_w) = tokio::io::split(tls);
    let (mut up_r, mut up_w) = up.into_split();
    let to_upstream = async {
        let mut buf = vec![0u8; 64 << 10];
        // Per header, the end of the previous read, so a header split
        // across two reads is still seen whole.
        let mut tails: [Vec<u8>; 2] = Default::default();
        loop {
            let n = match tls_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for (tail, header) in tails.iter_mut().zip([HEADER, CHECKSUM]) {
                let mut window = std::mem::take(tail);
                window.extend_from_slice(&buf[..n]);
                let carry = count(&window, header, |value| tally(header, value, seen));
                *tail = window[carry..].to_vec();
            }
            if up_w.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = up_w.shutdown().await;
    };
    let to_client = async {
        let _ = tokio::io::copy(&mut up_r, &mut tls_w).await;
        let _ = tls_w.shutdown().await;
    };
    tokio::join!(to_upstream, to_client);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// What one complete header says.
fn tally(header: &[u8], value: &[u8], seen: &Seen) {
    if header == CHECKSUM {
        seen.checksummed.fetch_add(1, Ordering::SeqCst);
    } else if value == b"UNSIGNED-PAYLOAD" {
        seen.unsigned.fetch_add(1, Ordering::SeqCst);
    } else if value.len() == 64 && value.iter().all(u8::is_ascii_hexdigit) {
        seen.hashed.fetch_add(1, Ordering::SeqCst);
    }
}

/// Passes the value of each complete `header` in `window` to `each`;
/// returns where to carry the window over from: an incomplete header, or
/// the bytes that may be the start of one (neither is seen yet).
fn count(window: &[u8], header: &[u8], mut each: impl FnMut(&[u8])) -> usize {
    let mut from = 0;
    while let Some(at) = find(&window[from..], header).map(|at| from + at) {
        let value = &window[at + header.len()..];
        let Some(end) = value.iter().position(|&b| b == b'\r') else {
            return at; // incomplete: seen with the next read
        };
        each(value[..end].trim_ascii());
        from = at + header.len() + end;
    }
    window.len() - (window.len() - from).min(header.len() - 1)
}
