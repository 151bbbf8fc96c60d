//! A TLS front for a plain-HTTP test server (s3s-fs): terminates TLS with a
//! test certificate, forwards the bytes both ways, and counts what the
//! clients sent in the clear — how many requests carried
//! `x-amz-content-sha256: UNSIGNED-PAYLOAD`, and how many a hex payload hash.

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
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Seen::default());
        let counts = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counts) = (acceptor.clone(), Arc::clone(&counts));
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    forward(tls, up, &counts).await;
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

async fn forward(tls: tokio_rustls::server::TlsStream<TcpStream>, up: TcpStream, seen: &Seen) {
    let (mut tls_r, mut tls_w) = tokio::io::split(tls);
    let (mut up_r, mut up_w) = up.into_split();
    let to_upstream = async {
        let mut buf = vec![0u8; 64 << 10];
        // The end of the previous read, so a header split across two reads
        // is still seen whole.
        let mut tail: Vec<u8> = Vec::new();
        loop {
            let n = match tls_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut window = std::mem::take(&mut tail);
            window.extend_from_slice(&buf[..n]);
            let carry = count(&window, seen);
            tail = window[carry..].to_vec();
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

/// Counts the complete `x-amz-content-sha256` headers in `window`; returns
/// where to carry the window over from: an incomplete header, or the bytes
/// that may be the start of one (neither is counted yet).
fn count(window: &[u8], seen: &Seen) -> usize {
    let mut from = 0;
    while let Some(at) = find(&window[from..], HEADER).map(|at| from + at) {
        let value = &window[at + HEADER.len()..];
        let Some(end) = value.iter().position(|&b| b == b'\r') else {
            return at; // incomplete: counted with the next read
        };
        let value = value[..end].trim_ascii();
        if value == b"UNSIGNED-PAYLOAD" {
            seen.unsigned.fetch_add(1, Ordering::SeqCst);
        } else if value.len() == 64 && value.iter().all(u8::is_ascii_hexdigit) {
            seen.hashed.fetch_add(1, Ordering::SeqCst);
        }
        from = at + HEADER.len() + end;
    }
    window.len() - (window.len() - from).min(HEADER.len() - 1)
}
