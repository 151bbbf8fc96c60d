//! S3 endpoints are the operator's choice, never the client's: tried as a
//! hostile local user would, against the real daemon and a real
//! S3-compatible server.
//!
//! A "trap" is a TCP listener the test holds open on a loopback port: if
//! the daemon sent anything toward an endpoint it must not reach, the
//! connection would be waiting there when the call returns.

use std::io::ErrorKind as IoKind;
use std::net::TcpListener;
use std::process::{Command, Stdio};

use sluice_proto::v1;
use sluice_proto::v1::sluice_client::SluiceClient;
use sluice_storage::s3::{S3Endpoint, Secret};
use sluice_tests::daemon::{TestDaemon, bin};
use sluice_tests::grpc::{connect, pattern, read, write};
use sluice_tests::s3server::{ACCESS_KEY, S3Server, SECRET_KEY};
use tonic::Code;
use tonic::transport::Channel;

/// A loopback listener that must never see a connection.
struct Trap {
    listener: TcpListener,
}

impl Trap {
    fn new() -> Trap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the trap");
        listener.set_nonblocking(true).expect("non-blocking trap");
        Trap { listener }
    }

    fn port(&self) -> u16 {
        self.listener.local_addr().expect("trap address").port()
    }

    /// Panics if anything connected since the last call.
    fn assert_untouched(&self, what: &str) {
        match self.listener.accept() {
            Err(e) if e.kind() == IoKind::WouldBlock => {}
            Ok((_, peer)) => panic!("{what}: the daemon connected to the trap from {peer}"),
            Err(e) => panic!("{what}: accept on the trap failed: {e}"),
        }
    }
}

/// Every RPC that takes a URI, on `uri`: each must fail with `code` and a
/// message that names `uri` and contains `says`.
async fn every_rpc_fails(client: &mut SluiceClient<Channel>, uri: &str, code: Code, says: &str) {
    let check = |what: &str, status: tonic::Status| {
        assert_eq!(status.code(), code, "{what} {uri}: {status:?}");
        assert!(
            status.message().contains(uri) && status.message().contains(says),
            "{what} {uri}: {:?}",
            status.message()
        );
    };
    let stat = client
        .stat(v1::StatRequest { uri: uri.into() })
        .await
        .unwrap_err();
    check("stat", stat);
    check("read", read(client, uri, None).await.unwrap_err());
    let list = client
        .list(v1::ListRequest {
            prefix: uri.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    check("list", list);
    let data = pattern(100, 1);
    check(
        "write",
        write(client, uri, &data, 50, 100).await.unwrap_err(),
    );
    let delete = client
        .delete(v1::DeleteRequest {
            uri: uri.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    check("delete", delete);
    let mut many = client
        .read_many(v1::ReadManyRequest {
            items: vec![v1::ReadManyItem {
                uri: uri.into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("read_many opens")
        .into_inner();
    let mut failed = 0;
    while let Some(msg) = many.message().await.expect("read_many stream") {
        if let Some(e) = msg.error {
            assert_eq!(e.code, code as i32, "read_many {uri}: {e:?}");
            assert!(e.message.contains(uri) && e.message.contains(says), "{e:?}");
            failed += 1;
        }
    }
    assert_eq!(failed, 1, "read_many {uri}: one failed item");
}

const NOT_CONFIGURED: &str = "endpoint not configured";

/// The configured endpoint is served; the same server under another
/// spelling, a port on this node that the configuration does not name, and
/// the cloud metadata services are refused by every RPC, and nothing
/// reaches the trap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_configured_endpoints_are_reached() {
    let s3 = S3Server::start().await;
    let bucket = s3.bucket("trust").await;
    let cfg = s3.config();
    let d = TestDaemon::start_with(move |c| c.storage.s3 = cfg).await;
    let mut client = connect(d.socket()).await;

    let served = format!("{bucket}served");
    let data = pattern(4096, 7);
    write(&mut client, &served, &data, 1000, 4096)
        .await
        .expect("writing to the configured endpoint");
    let (_, got) = read(&mut client, &served, None)
        .await
        .expect("reading from the configured endpoint");
    assert!(got == data);

    let trap = Trap::new();
    let port = s3.endpoint().rsplit_once(':').unwrap().1.to_owned();
    for uri in [
        format!("s3://127.0.0.1:{}/trust/k", trap.port()),
        format!("s3://LOCALHOST:{}/trust/k", trap.port()),
        // The real server, spelled otherwise: still not what was listed.
        format!("s3://localhost:{port}/trust/served"),
        format!("s3://127.0.0.2:{port}/trust/served"),
        "s3://169.254.169.254:80/latest/meta-data/iam/security-credentials/role".to_owned(),
        "s3://[fd00:ec2::254]:80/latest/meta-data/iam/security-credentials/role".to_owned(),
        "s3://169.254.170.2:80/v2/credentials/guid".to_owned(),
        "s3://100.100.100.200:80/latest/meta-data/ram".to_owned(),
    ] {
        every_rpc_fails(&mut client, &uri, Code::PermissionDenied, NOT_CONFIGURED).await;
        trap.assert_untouched(&uri);
    }
}

/// A configured endpoint (and the default endpoint) whose name resolves to
/// a refused address fails with PERMISSION_DENIED and sends nothing: `0`
/// resolves to 0.0.0.0, which Linux connects to the local host, so without
/// the resolver's filter the requests would land on the trap. The same
/// address listed as an IP literal is the operator's explicit choice and is
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_resolving_to_refused_addresses_are_not_connected() {
    let trap = Trap::new();
    // The trap is armed: a connection to 0.0.0.0:<port> does reach it.
    let probe = std::net::TcpStream::connect(("0.0.0.0", trap.port()))
        .expect("0.0.0.0 connects to the local host");
    let (accepted, _) = trap.listener.accept().expect("the probe reached the trap");
    drop((probe, accepted));
    trap.assert_untouched("after the probe");

    let s3 = S3Server::start().await;
    s3.bucket("trust").await;
    let s3_port = s3.endpoint().rsplit_once(':').unwrap().1.to_owned();
    let mut cfg = s3.config();
    cfg.endpoints.push(S3Endpoint {
        scheme: "http".into(),
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(Secret::new(SECRET_KEY)),
        ..S3Endpoint::new(format!("0:{}", trap.port()))
    });
    cfg.endpoints.push(S3Endpoint {
        address: format!("0.0.0.0:{s3_port}"),
        ..s3.endpoint_config()
    });
    let d = TestDaemon::start_with(move |c| c.storage.s3 = cfg).await;
    let mut client = connect(d.socket()).await;

    let uri = format!("s3://0:{}/trust/k", trap.port());
    let status = client
        .stat(v1::StatRequest { uri: uri.clone() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains(&uri)
            && status.message().contains("resolves to 0.0.0.0")
            && status.message().contains("refused"),
        "{:?}",
        status.message()
    );
    let read_err = read(&mut client, &uri, None).await.unwrap_err();
    assert_eq!(read_err.code(), Code::PermissionDenied, "{read_err:?}");
    trap.assert_untouched(&uri);

    // Listed as an IP literal, the same kind of address is served.
    let literal = format!("s3://0.0.0.0:{s3_port}/trust/literal");
    write(&mut client, &literal, b"listed", 10, 6)
        .await
        .expect("a listed ip literal is the operator's choice");
    let (_, got) = read(&mut client, &literal, None).await.unwrap();
    assert_eq!(got, b"listed");

    // The default endpoint resolves through the same filter.
    let d = TestDaemon::start_with(|c| {
        c.storage.s3 = sluice_storage::s3::S3Config {
            endpoint: Some(format!("http://0:{}", trap.port())),
            force_path_style: true,
            endpoints: Vec::new(),
            ..s3.config()
        }
    })
    .await;
    let mut client = connect(d.socket()).await;
    let status = client
        .stat(v1::StatRequest {
            uri: "s3://trust/k".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("resolves to 0.0.0.0"),
        "{status:?}"
    );
    trap.assert_untouched("the default endpoint");
}

/// `sluiced check-config` output for `toml`: (success, stdout, stderr).
fn check_config(toml: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluiced.toml");
    std::fs::write(&path, toml).unwrap();
    let mut cmd = Command::new(bin("sluiced"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SLUICE_") {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .arg("--config")
        .arg(&path)
        .args(["--file-root", dir.path().to_str().unwrap()])
        .arg("check-config")
        .stdin(Stdio::null())
        .output()
        .expect("running sluiced check-config");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The configuration the operator writes: the list parses from TOML, prints
/// with its secrets redacted, and the mistakes are refused naming the key.
#[test]
fn the_endpoint_list_is_checked_at_startup() {
    let (ok, out, err) = check_config(
        r#"
[storage.s3]
region = "us-east-1"

[[storage.s3.endpoints]]
address = "MinIO.local:9000"
scheme = "http"
access_key_id = "AKIDTRUSTS3"
secret_access_key = "distinctive-endpoint-secret"

[[storage.s3.endpoints]]
address = "[fd00::7]:443"
force_path_style = false
"#,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("[[storage.s3.endpoints]]")
            && out.contains("MinIO.local:9000")
            && out.contains("***redacted***")
            && !out.contains("distinctive-endpoint-secret")
            && !err.contains("distinctive-endpoint-secret"),
        "{out}\n{err}"
    );

    for (toml, says) in [
        (
            "endpoint_scheme = \"http\"\n",
            "endpoint_scheme was removed",
        ),
        (
            "[[storage.s3.endpoints]]\naddress = \"minio.local\"\n",
            "[[storage.s3.endpoints]] #1: address \"minio.local\": expected host:port",
        ),
        (
            "[[storage.s3.endpoints]]\naddress = \"a.local:1\"\nscheme = \"ftp\"\n",
            "[[storage.s3.endpoints]] a.local:1: scheme must be",
        ),
        (
            "[[storage.s3.endpoints]]\naddress = \"a.local:1\"\n[[storage.s3.endpoints]]\naddress = \"A.LOCAL:1\"\n",
            "[[storage.s3.endpoints]] a.local:1: listed twice",
        ),
        (
            "[[storage.s3.endpoints]]\naddress = \"a.local:1\"\nsecret_access_key = \"distinctive-half-secret\"\n",
            "access_key_id and secret_access_key are set together",
        ),
        (
            "[[storage.s3.endpoints]]\naddress = \"a.local:1\"\nca_bundle = \"/nonexistent/ca.pem\"\n",
            "ca_bundle cannot be read",
        ),
    ] {
        // A region keeps the SDK from asking instance metadata for one.
        let (ok, out, err) = check_config(&format!("[storage.s3]\nregion = \"us-east-1\"\n{toml}"));
        assert!(!ok, "{toml} was accepted");
        assert!(err.contains(says), "{toml}: {err}");
        assert!(
            !format!("{out}{err}").contains("distinctive-half-secret"),
            "{out}{err}"
        );
    }
}
