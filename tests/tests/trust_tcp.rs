//! Remote clients authenticate: the TCP listener speaks TLS and requires a
//! bearer token or a client certificate from its CA, unless the operator
//! set `server.tcp_insecure`. Each test tries the way in as a client
//! without the right credentials would, against the real daemon, and
//! checks that it gets nothing.
//!
//! Certificates are made by the tests with `openssl` (see
//! `sluice_tests::certs`).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_client::{Client, Code, ConnectOptions, Token};
use sluice_tests::certs::{Pair, Pki};
use sluice_tests::daemon::{DaemonProcess, START_TIMEOUT, TestDaemon, bin};
use sluice_tests::grpc::pattern;

/// The configured token, and one the daemon does not know. Distinctive, so
/// that a grep of every output finds any copy.
const TOKEN: &str = "tok-RIGHT-5b0d7c4e9a1f38e2b6d0a4c7";
const WRONG: &str = "tok-WRONG-e1c93f0b7d2a45e8c6b1d9f3";

/// A CA, a server certificate for 127.0.0.1 it issued, a token file.
struct Setup {
    pki: Pki,
    ca: Pair,
    server: Pair,
    tokens: PathBuf,
}

fn setup() -> Setup {
    let pki = Pki::new();
    let ca = pki.ca("server-ca");
    let server = pki.server(&ca, "server");
    let tokens = pki.path("tokens");
    std::fs::write(&tokens, format!("# remote trainers\n{TOKEN}\n")).unwrap();
    Setup {
        pki,
        ca,
        server,
        tokens,
    }
}

/// An in-process daemon with TLS on a loopback port: tokens and/or client
/// certificates from `client_ca`.
async fn tls_daemon(s: &Setup, tokens: bool, client_ca: Option<&Path>) -> TestDaemon {
    TestDaemon::start_with(|c| {
        c.server.tcp = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.server.tls.cert = Some(s.server.cert.clone());
        c.server.tls.key = Some(s.server.key.clone());
        c.server.tls.token_file = tokens.then(|| s.tokens.clone());
        c.server.tls.client_ca = client_ca.map(Path::to_path_buf);
    })
    .await
}

fn https(port: u16) -> String {
    format!("https://127.0.0.1:{port}")
}

fn options(ca: &Path, token: Option<&str>) -> ConnectOptions {
    ConnectOptions {
        ca_file: Some(ca.to_path_buf()),
        token: token.map(|t| Token::new(t).unwrap()),
        ..ConnectOptions::default()
    }
}

/// Connects and stats `uri`: the error of whichever step failed.
async fn stat(address: &str, options: ConnectOptions, uri: &str) -> sluice_client::Result<u64> {
    let client = Client::connect_with(address, options).await?;
    Ok(client.stat(uri).await?.size)
}

fn assert_quiet(text: &str) {
    assert!(!text.contains(TOKEN), "the token leaked: {text}");
    assert!(!text.contains(WRONG), "the wrong token was echoed: {text}");
}

#[tokio::test]
async fn plaintext_client_gets_no_answer_from_the_tls_listener() {
    let s = setup();
    let daemon = tls_daemon(&s, true, None).await;
    std::fs::write(daemon.root().join("f"), b"secret bytes").unwrap();
    let port = daemon.tcp().unwrap().port();

    // A gRPC client speaking plaintext HTTP/2, even with the right token.
    let result = async {
        let client = Client::connect(&format!("http://127.0.0.1:{port}")).await?;
        client.read_to_bytes(&daemon.file_uri("f"), None).await
    }
    .await;
    let error = result.expect_err("a plaintext client was served");
    assert_ne!(error.code(), Code::Ok);

    // The same by hand: the HTTP/2 preface and a SETTINGS frame. What comes
    // back is a TLS alert or nothing, never an HTTP/2 frame.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "not a TLS alert: {answer:02x?}"
    );
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn a_silent_client_is_disconnected_at_the_handshake_timeout() {
    let s = setup();
    let daemon = TestDaemon::start_with(|c| {
        c.server.tcp = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.server.tls.cert = Some(s.server.cert.clone());
        c.server.tls.key = Some(s.server.key.clone());
        c.server.tls.token_file = Some(s.tokens.clone());
        c.server.tls.handshake_timeout = Duration::from_millis(300);
    })
    .await;
    let port = daemon.tcp().unwrap().port();
    // Connects and sends nothing: the daemon closes the connection once the
    // handshake timeout has passed (the read's own timeout is only a bound
    // for a daemon that never does).
    let answer = tokio::task::spawn_blocking(move || {
        let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        raw.set_read_timeout(Some(START_TIMEOUT)).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 64];
        (raw.read(&mut buf).map_err(|e| e.kind()), started.elapsed())
    })
    .await
    .unwrap();
    match answer {
        (Ok(_), elapsed) => assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}"),
        (Err(kind), elapsed) => assert!(
            kind == std::io::ErrorKind::ConnectionReset,
            "still open after {elapsed:?}: {kind:?}"
        ),
    }
    // The listener still serves.
    let client = Client::connect_with(&https(port), options(&s.ca.cert, Some(TOKEN)))
        .await
        .unwrap();
    std::fs::write(daemon.root().join("f"), b"x").unwrap();
    assert_eq!(client.stat(&daemon.file_uri("f")).await.unwrap().size, 1);
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn tls_without_a_token_is_unauthenticated() {
    let s = setup();
    let daemon = tls_daemon(&s, true, None).await;
    std::fs::write(daemon.root().join("f"), b"secret bytes").unwrap();
    let address = https(daemon.tcp().unwrap().port());
    let error = stat(&address, options(&s.ca.cert, None), &daemon.file_uri("f"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated, "{error}");
    assert!(error.is_unauthenticated());
    assert!(error.to_string().contains("missing credentials"), "{error}");

    // Health and reflection too: nothing on this listener answers without
    // credentials (probes use the HTTP listener's /ready).
    let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(std::fs::read(&s.ca.cert).unwrap()),
    );
    let channel = tonic::transport::Endpoint::from_shared(address)
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status}");
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn a_wrong_token_is_unauthenticated_and_not_echoed() {
    let s = setup();
    let daemon = tls_daemon(&s, true, None).await;
    std::fs::write(daemon.root().join("f"), b"secret bytes").unwrap();
    let address = https(daemon.tcp().unwrap().port());
    for wrong in [WRONG, &TOKEN[..TOKEN.len() - 1], &format!("{TOKEN}x")] {
        let error = stat(
            &address,
            options(&s.ca.cert, Some(wrong)),
            &daemon.file_uri("f"),
        )
        .await
        .unwrap_err();
        assert_eq!(error.code(), Code::Unauthenticated, "{error}");
        assert_eq!(error.to_string(), "invalid bearer token");
        assert_quiet(&format!("{error:?}"));
    }
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn the_right_token_is_served_byte_exact() {
    let s = setup();
    let daemon = tls_daemon(&s, true, None).await;
    let data = pattern((3 << 20) + 5, 11);
    std::fs::write(daemon.root().join("big"), &data).unwrap();
    let address = https(daemon.tcp().unwrap().port());
    let client = Client::connect_with(&address, options(&s.ca.cert, Some(TOKEN)))
        .await
        .unwrap();
    let got = client
        .read_to_bytes(&daemon.file_uri("big"), None)
        .await
        .unwrap();
    assert!(got[..] == data[..], "the bytes differ");
    // A session over TCP streams its results (no shared memory off-node).
    let session = client.session(Default::default()).await.unwrap();
    assert!(!session.shared_memory());
    let fetched = session
        .fetch(&daemon.file_uri("big"), Some(7..70_007))
        .await
        .unwrap();
    let bytes: Vec<u8> = fetched.parts.iter().flat_map(|p| p.to_vec()).collect();
    assert!(bytes[..] == data[7..70_007], "the session's bytes differ");
    // The client's Debug never shows the token either.
    assert_quiet(&format!("{client:?}"));
    // The Unix socket needs no token: its permissions decide.
    let local = Client::connect(&daemon.address()).await.unwrap();
    assert_eq!(
        local.stat(&daemon.file_uri("big")).await.unwrap().size,
        data.len() as u64
    );
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn mutual_tls_serves_certificates_of_the_client_ca_only() {
    let s = setup();
    let client_ca = s.pki.ca("client-ca");
    let trainer = s.pki.client(&client_ca, "trainer");
    let rogue_ca = s.pki.ca("rogue-ca");
    let rogue = s.pki.client(&rogue_ca, "rogue");
    let daemon = tls_daemon(&s, false, Some(&client_ca.cert)).await;
    std::fs::write(daemon.root().join("f"), b"secret bytes").unwrap();
    let address = https(daemon.tcp().unwrap().port());
    let uri = daemon.file_uri("f");
    let with_cert = |pair: &Pair| ConnectOptions {
        client_cert: Some(pair.cert.clone()),
        client_key: Some(pair.key.clone()),
        ..options(&s.ca.cert, None)
    };

    assert_eq!(stat(&address, with_cert(&trainer), &uri).await.unwrap(), 12);
    let client = Client::connect_with(&address, with_cert(&trainer))
        .await
        .unwrap();
    assert_eq!(
        &client.read_to_bytes(&uri, None).await.unwrap()[..],
        b"secret bytes"
    );

    // A certificate from another CA, or none: the handshake fails, no RPC
    // is answered.
    let error = stat(&address, with_cert(&rogue), &uri).await.unwrap_err();
    assert_ne!(error.code(), Code::Ok, "{error}");
    let error = stat(&address, options(&s.ca.cert, None), &uri)
        .await
        .unwrap_err();
    assert_ne!(error.code(), Code::Ok, "{error}");
    // A client certificate does not stand in for the server's CA.
    let trusting_rogue = ConnectOptions {
        ca_file: Some(rogue_ca.cert.clone()),
        ..with_cert(&trainer)
    };
    let error = stat(&address, trusting_rogue, &uri).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error}");
    daemon.stop().await.unwrap();
}

/// A `sluiced` process with `config` (TOML) and a TCP listener on a free
/// loopback port, plus its TCP address.
fn daemon_process(config: &str, dir: &Path, extra: &[&str]) -> (DaemonProcess, SocketAddr) {
    let path = dir.join("sluiced.toml");
    std::fs::write(&path, config).unwrap();
    let mut args = vec!["--config", path.to_str().unwrap(), "--tcp", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let p = DaemonProcess::spawn(&args);
    let tcp = p.tcp();
    (p, tcp)
}

fn tls_toml(cert: &Path, key: &Path, tokens: &Path) -> String {
    format!(
        "[server.tls]\ncert = {:?}\nkey = {:?}\ntoken_file = {:?}\n",
        cert.display().to_string(),
        key.display().to_string(),
        tokens.display().to_string()
    )
}

/// Connects with a new connection until `ok` holds for the outcome; fails
/// after `START_TIMEOUT`.
async fn until<F>(what: &str, mut attempt: impl AsyncFnMut() -> sluice_client::Result<u64>, ok: F)
where
    F: Fn(&sluice_client::Result<u64>) -> bool,
{
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let outcome = attempt().await;
        if ok(&outcome) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still {outcome:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_for_new_connections() {
    let s = setup();
    let new_ca = s.pki.ca("new-ca");
    let new_server = s.pki.server(&new_ca, "new-server");
    let live = Pair {
        cert: s.pki.path("live.crt"),
        key: s.pki.path("live.key"),
    };
    std::fs::copy(&s.server.cert, &live.cert).unwrap();
    std::fs::copy(&s.server.key, &live.key).unwrap();
    let (p, tcp) = daemon_process(
        &tls_toml(&live.cert, &live.key, &s.tokens),
        s.pki.path("").as_path(),
        &[],
    );
    std::fs::write(p.root.join("f"), b"12345").unwrap();
    let uri = format!("file://{}/f", p.root.display());
    let address = https(tcp.port());

    assert_eq!(
        stat(&address, options(&s.ca.cert, Some(TOKEN)), &uri)
            .await
            .unwrap(),
        5
    );
    let error = stat(&address, options(&new_ca.cert, Some(TOKEN)), &uri)
        .await
        .unwrap_err();
    assert!(error.is_unavailable(), "{error}");

    // Replace both files (each by a rename), then SIGHUP.
    for (from, to) in [(&new_server.cert, &live.cert), (&new_server.key, &live.key)] {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }
    p.signal(libc::SIGHUP);
    until(
        "a client that trusts only the new CA",
        async || stat(&address, options(&new_ca.cert, Some(TOKEN)), &uri).await,
        |r| r.as_ref().is_ok_and(|size| *size == 5),
    )
    .await;
    let error = stat(&address, options(&s.ca.cert, Some(TOKEN)), &uri)
        .await
        .unwrap_err();
    assert!(
        error.is_unavailable(),
        "the old certificate is still served: {error}"
    );

    // A reload that fails keeps what was loaded.
    std::fs::write(&live.cert, "not a certificate\n").unwrap();
    p.signal(libc::SIGHUP);
    let log = p.wait_log("reload failed", START_TIMEOUT);
    assert!(log.contains("server.tls.cert"), "{log}");
    assert_eq!(
        stat(&address, options(&new_ca.cert, Some(TOKEN)), &uri)
            .await
            .unwrap(),
        5
    );
    assert_quiet(&p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_mode_serves_plaintext_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (p, tcp) = daemon_process("[server]\ntcp_insecure = true\n", dir.path(), &[]);
    let log = p.log();
    let warning = log
        .lines()
        .find(|l| l.contains("tcp_insecure"))
        .unwrap_or_else(|| panic!("no warning: {log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("WITHOUT AUTHENTICATION"), "{warning}");
    let data = pattern(100_003, 3);
    std::fs::write(p.root.join("f"), &data).unwrap();
    let client = Client::connect(&format!("http://{tcp}")).await.unwrap();
    let got = client
        .read_to_bytes(&format!("file://{}/f", p.root.display()), None)
        .await
        .unwrap();
    assert!(got[..] == data[..]);
}

/// Runs `sluiced` with `config` and a TCP listener; it must exit non-zero
/// before serving. Returns its stderr.
fn refuses_to_start(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluiced.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(bin("sluiced"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SLUICE_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .arg("--config")
        .arg(&path)
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .args(["--tcp", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + START_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sluiced started with {config:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{config:?}: {stderr}");
    stderr
}

#[test]
fn incomplete_or_broken_tls_settings_refuse_to_start_naming_the_key() {
    let s = setup();
    let other = s.pki.server(&s.ca, "other");
    let garbage = s.pki.path("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN NONSENSE-----\n").unwrap();
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let tls = |cert: &Path, key: &Path, rest: &str| {
        format!("[server.tls]\ncert = {}\nkey = {}\n{rest}", q(cert), q(key))
    };
    let tokens = format!("token_file = {}\n", q(&s.tokens));
    let cases = [
        (
            "".to_owned(),
            "server.tls.cert: is required when server.tcp is set",
        ),
        (
            "[server]\nallow_remote_tcp = true\n".to_owned(),
            "server.allow_remote_tcp: this key was removed",
        ),
        (
            tls(&s.server.cert, &s.server.key, ""),
            "server.tls.token_file: server.tcp needs a way to authenticate clients",
        ),
        (tls(&garbage, &s.server.key, &tokens), "server.tls.cert"),
        (
            tls(&s.pki.path("missing.crt"), &s.server.key, &tokens),
            "server.tls.cert: cannot read",
        ),
        (tls(&s.server.cert, &garbage, &tokens), "server.tls.key"),
        (tls(&s.server.cert, &other.key, &tokens), "server.tls.key"),
        (
            tls(
                &s.server.cert,
                &s.server.key,
                &format!("token_file = {}\n", q(&s.pki.path("no-tokens"))),
            ),
            "server.tls.token_file",
        ),
        (
            format!(
                "[server]\ntcp_insecure = true\n{}",
                tls(&s.server.cert, &s.server.key, &tokens)
            ),
            "server.tcp_insecure: cannot be combined",
        ),
    ];
    for (config, want) in cases {
        let stderr = refuses_to_start(&config);
        assert!(
            stderr.contains(want),
            "{config:?}: want {want:?} in {stderr}"
        );
        assert_quiet(&stderr);
        // No private key material in the message either.
        assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
    }
}

/// Runs the `sluice` CLI with `env` and `args`.
fn sluice_cli(env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin("sluice"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SLUICE_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_appear_in_any_output() {
    let s = setup();
    let (p, tcp) = daemon_process(
        &tls_toml(&s.server.cert, &s.server.key, &s.tokens),
        s.pki.path("").as_path(),
        &["--log-level", "debug"],
    );
    let data = pattern(200_000, 5);
    std::fs::write(p.root.join("f"), &data).unwrap();
    let uri = format!("file://{}/f", p.root.display());
    let address = https(tcp.port());
    let ca = s.ca.cert.to_str().unwrap();
    let token_file = s.pki.path("client-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let wrong_file = s.pki.path("wrong-token");
    std::fs::write(&wrong_file, format!("{WRONG}\n")).unwrap();
    let mut outputs = String::new();

    // The right token, from the environment and from a file.
    for (env, flags) in [
        (vec![("SLUICE_TOKEN", TOKEN)], vec![]),
        (vec![], vec!["--token-file", token_file.to_str().unwrap()]),
        (
            vec![("SLUICE_TOKEN_FILE", token_file.to_str().unwrap())],
            vec![],
        ),
    ] {
        let mut args = vec!["--address", &address, "--ca-file", ca];
        args.extend(flags);
        args.extend(["cat", &uri]);
        let out = sluice_cli(&env, &args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        assert!(out.stdout == data, "cat is not byte-exact");
        outputs.push_str(&stderr);
    }
    // A wrong token, no token, both variables: exit 1 with a message.
    for (env, want) in [
        (vec![("SLUICE_TOKEN", WRONG)], "invalid bearer token"),
        (
            vec![("SLUICE_TOKEN_FILE", wrong_file.to_str().unwrap())],
            "invalid bearer token",
        ),
        (vec![], "missing credentials"),
        (
            vec![
                ("SLUICE_TOKEN", WRONG),
                ("SLUICE_TOKEN_FILE", token_file.to_str().unwrap()),
            ],
            "set one or the other",
        ),
    ] {
        let out = sluice_cli(
            &env,
            &["--address", &address, "--ca-file", ca, "stat", &uri],
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(want), "want {want:?}: {stderr}");
        outputs.push_str(&stdout);
        outputs.push_str(&stderr);
    }
    // An untrusted server certificate: a clear TLS error, exit 1.
    let out = sluice_cli(
        &[("SLUICE_TOKEN", TOKEN)],
        &["--address", &address, "stat", &uri],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    outputs.push_str(&stderr);

    assert_quiet(&outputs);
    let log = p.log();
    assert!(log.contains("refused: invalid bearer token"), "{log}");
    assert_quiet(&log);
}
