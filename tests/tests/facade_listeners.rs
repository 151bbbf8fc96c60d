//! The S3 facade's other listeners on a real daemon: HTTPS with the
//! operator's certificate (what any non-loopback address needs), and the
//! Unix socket, where anonymous reads may be allowed.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sluice_tests::certs::Pki;
use sluice_tests::daemon::TestDaemon;
use sluice_tests::facade::facade_config;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Sends one unsigned request over `io`; the whole answer.
async fn exchange<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    io.write_all(req.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    // A TLS peer may close without close_notify once it answered.
    let _ = io.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_with_the_configured_certificate() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server = pki.server(&ca, "facade");
    let d = TestDaemon::start_with(|c| {
        facade_config(c, false);
        c.facade.tls.cert = Some(server.cert.clone());
        c.facade.tls.key = Some(server.key.clone());
    })
    .await;
    let tls = handshake(d.facade(), &ca.cert).await;
    let answer = exchange(tls, "/local/x").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("<Code>AccessDenied</Code>"), "{answer}");
    // Plaintext on the TLS port gets no S3 answer.
    let plain = tokio::net::TcpStream::connect(d.facade()).await.unwrap();
    let answer = exchange(plain, "/local/x").await;
    assert!(!answer.contains("HTTP/1.1"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_serves_anonymous_reads_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s3.sock");
    let path = socket.clone();
    let d = TestDaemon::start_with(move |c| {
        facade_config(c, false);
        c.facade.listen = None;
        c.facade.socket = Some(path);
        c.facade.anonymous = true;
    })
    .await;
    std::fs::write(d.root().join("x"), b"over the socket").unwrap();
    let io = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let answer = exchange(io, "/local/x").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nover the socket"), "{answer}");
    d.stop().await.unwrap();
    assert!(!socket.exists(), "the socket is removed at shutdown");
}

/// A `sluiced` process whose facade (loopback, port 0, with `env`) serves
/// bucket `data` = `file://DATA/` to the keys of `keys`; and its address.
fn facade_process(
    data: &std::path::Path,
    keys: &std::path::Path,
    env: &[(&str, &str)],
) -> (sluice_tests::daemon::DaemonProcess, std::net::SocketAddr) {
    use sluice_tests::daemon::{DaemonProcess, START_TIMEOUT};
    let buckets = format!("{{data=\"file://{}/\"}}", data.display());
    let mut all = vec![
        ("SLUICE_FACADE__LISTEN", "127.0.0.1:0"),
        ("SLUICE_FACADE__BUCKETS", buckets.as_str()),
        ("SLUICE_FACADE__KEYS_FILE", keys.to_str().unwrap()),
    ];
    all.extend_from_slice(env);
    let d = DaemonProcess::spawn_with_env(&["--file-root", data.to_str().unwrap()], &all);
    let log = d.wait_log("sluiced serving", START_TIMEOUT);
    let at = log.find("facade=Some(").expect("a facade listener") + "facade=Some(".len();
    let end = at + log[at..].find(')').unwrap();
    (d, log[at..end].parse().unwrap())
}

/// A `sluiced` process reads its facade keys file again on SIGHUP: a key
/// added works, a key removed is unknown from then on; SIGTERM stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_keys_file() {
    use sluice_tests::daemon::START_TIMEOUT;
    use sluice_tests::facade::client;
    let dir = tempfile::tempdir().unwrap();
    let data = std::fs::canonicalize(dir.path()).unwrap().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("obj"), b"reloaded").unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "OLDKEY old-secret\n").unwrap();
    let (mut d, addr) = facade_process(&data, &keys, &[]);
    let read = |key: (&'static str, &'static str)| async move {
        let out = client(addr, key)
            .get_object()
            .bucket("data")
            .key("obj")
            .send()
            .await;
        out.map(|_| ()).map_err(|e| {
            e.into_service_error()
                .meta()
                .code()
                .unwrap_or_default()
                .to_owned()
        })
    };
    assert_eq!(read(("OLDKEY", "old-secret")).await, Ok(()));
    assert_eq!(
        read(("NEWKEY", "new-secret")).await,
        Err("InvalidAccessKeyId".into())
    );
    std::fs::write(&keys, "NEWKEY new-secret data\n").unwrap();
    d.signal(libc::SIGHUP);
    d.wait_log("facade access keys reloaded", START_TIMEOUT);
    assert_eq!(read(("NEWKEY", "new-secret")).await, Ok(()));
    assert_eq!(
        read(("OLDKEY", "old-secret")).await,
        Err("InvalidAccessKeyId".into())
    );
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(START_TIMEOUT).success());
}

/// `sluiced check-config` reads the facade's files as the daemon would: a
/// keys file with a bad line, or a TLS key that is not one, is refused
/// naming the key; the good files pass.
#[test]
fn check_config_reads_the_keys_file_and_the_tls_files() {
    use sluice_tests::daemon::bin;
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let pki = Pki::new();
    let ca = pki.ca("facade test CA");
    let server = pki.server(&ca, "facade");
    let keys = root.join("keys");
    let check = |keys_text: &str, key: &std::path::Path| {
        std::fs::write(&keys, keys_text).unwrap();
        let buckets = format!("{{data=\"file://{}/\"}}", root.display());
        let mut cmd = std::process::Command::new(bin("sluiced"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SLUICE_") {
                cmd.env_remove(name);
            }
        }
        let out = cmd
            .args(["--file-root", root.to_str().unwrap(), "check-config"])
            .env("SLUICE_FACADE__LISTEN", "10.1.2.3:9443")
            .env("SLUICE_FACADE__BUCKETS", &buckets)
            .env("SLUICE_FACADE__KEYS_FILE", &keys)
            .env("SLUICE_FACADE__TLS__CERT", &server.cert)
            .env("SLUICE_FACADE__TLS__KEY", key)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), stderr)
    };
    let (ok, stderr) = check("GOODKEY a-secret data\n", &server.key);
    assert!(ok, "{stderr}");
    let (ok, stderr) = check("GOODKEY a-secret nosuchbucket\n", &server.key);
    assert!(!ok && stderr.contains("facade.keys_file"), "{stderr}");
    assert!(
        !stderr.contains("a-secret"),
        "no secret in the error: {stderr}"
    );
    let (ok, stderr) = check("GOODKEY a-secret data\n", &server.cert);
    assert!(!ok && stderr.contains("facade.tls"), "{stderr}");
}

/// The certificate a TLS handshake with the facade at `addr` presents.
async fn served_certificate(addr: std::net::SocketAddr, ca: &std::path::Path) -> Vec<u8> {
    let tls = handshake(addr, ca).await;
    let (_, session) = tls.get_ref();
    session.peer_certificates().expect("a certificate")[0].to_vec()
}

/// A TLS connection to the facade at `addr` as `localhost`, trusting `ca`.
async fn handshake(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("the handshake succeeds with the operator's CA")
}

/// The first certificate of a PEM file, DER.
fn first_certificate(path: &std::path::Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// A `sluiced` process reads the facade's certificate and key again on
/// SIGHUP: new handshakes present the new certificate; files that do not
/// load change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tls_certificate() {
    use sluice_tests::daemon::START_TIMEOUT;
    let dir = tempfile::tempdir().unwrap();
    let data = std::fs::canonicalize(dir.path()).unwrap().join("data");
    std::fs::create_dir(&data).unwrap();
    let pki = Pki::new();
    let ca = pki.ca("facade test CA");
    let (old, new) = (pki.server(&ca, "old"), pki.server(&ca, "new"));
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(&old.cert, &cert).unwrap();
    std::fs::copy(&old.key, &key).unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "SOMEKEY some-secret\n").unwrap();
    let (mut d, addr) = facade_process(
        &data,
        &keys,
        &[
            ("SLUICE_FACADE__TLS__CERT", cert.to_str().unwrap()),
            ("SLUICE_FACADE__TLS__KEY", key.to_str().unwrap()),
        ],
    );
    assert_eq!(
        served_certificate(addr, &ca.cert).await,
        first_certificate(&old.cert)
    );

    std::fs::copy(&new.cert, &cert).unwrap();
    std::fs::copy(&new.key, &key).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_log("facade TLS certificate reloaded", START_TIMEOUT);
    assert_eq!(
        served_certificate(addr, &ca.cert).await,
        first_certificate(&new.cert)
    );

    // A key file that holds no key: refused, the new pair stays in use.
    std::fs::copy(&old.cert, &key).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_log("facade TLS reload failed", START_TIMEOUT);
    assert_eq!(
        served_certificate(addr, &ca.cert).await,
        first_certificate(&new.cert)
    );
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(START_TIMEOUT).success());
}
