//! `gs://` and `az://` through a real daemon on real emulators
//! (`fake-gcs-server`, Azurite), the same scenarios on each: byte-exact
//! whole and ranged reads in several parts, an overwrite between the parts
//! of one read is ABORTED (never a mix), streamed writes, and a write
//! cancelled midway leaves nothing visible.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_engine::ByteSize;
use sluice_proto::v1;
use sluice_storage::{ObjectUri, Storage};
use sluice_tests::azurite::Azurite;
use sluice_tests::daemon::TestDaemon;
use sluice_tests::faultproxy::{FaultConfig, FaultProxy};
use sluice_tests::gcsserver::GcsServer;
use sluice_tests::grpc::{connect, pattern, read, write};
use tonic::Code;

const LEN: usize = (3 << 20) + 12_345;

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A daemon set up by `storage`, reading and writing in 1 MiB parts.
async fn daemon(storage: impl FnOnce(&mut sluiced::config::Config) + Send + 'static) -> TestDaemon {
    TestDaemon::start_with(move |c| {
        storage(c);
        c.engine.part_size = ByteSize::mib(1);
        c.engine.min_part_size = ByteSize::mib(1);
        c.write.part_size = ByteSize::mib(1);
    })
    .await
}

/// A proxy in front of the emulator listening on `port`.
async fn proxy(port: u16) -> FaultProxy {
    let upstream = format!("127.0.0.1:{port}").parse().unwrap();
    FaultProxy::start(upstream, FaultConfig::default()).await
}

/// Stores `data` as `base` + `name` straight on the emulator, as another
/// writer would.
async fn put(other: &Arc<dyn Storage>, base: &str, name: &str, data: &[u8]) -> String {
    let uri = ObjectUri::parse(&format!("{base}{name}")).unwrap();
    let meta = other.put(&uri, Bytes::copy_from_slice(data)).await.unwrap();
    meta.etag.unwrap()
}

/// Reads through the daemon under `base` (ending in `/`), where `other`
/// writes straight to the store behind `proxy`.
async fn reads_scenario(d: &TestDaemon, proxy: &FaultProxy, other: &Arc<dyn Storage>, base: &str) {
    let mut client = connect(d.socket()).await;
    let (v1, v2) = (pattern(LEN, 1), pattern(LEN, 2));

    let etag = put(other, base, "dir/obj.bin", &v1).await;
    let uri = format!("{base}dir/obj.bin");
    let (meta, got) = read(&mut client, &uri, None).await.unwrap();
    assert!(got == v1, "whole read differs");
    assert_eq!(meta.size, LEN as u64);
    assert_eq!(meta.etag, etag, "the read reports the writer's etag");
    let range = v1::ByteRange {
        offset: 1_000_000,
        length: 1_500_000,
        to_end: false,
    };
    let (_, got) = read(&mut client, &uri, Some(range)).await.unwrap();
    assert!(got == v1[1_000_000..2_500_000], "ranged read differs");

    // Overwritten while the later parts of one read are held: ABORTED.
    put(other, base, "race", &v1).await;
    proxy.hold_later_parts();
    let mut racer = connect(d.socket()).await;
    let race = format!("{base}race");
    let reading = {
        let race = race.clone();
        tokio::spawn(async move { read(&mut racer, &race, None).await })
    };
    wait_until("a later part is held", || proxy.held() > 0).await;
    put(other, base, "race", &v2).await;
    proxy.release();
    let status = match reading.await.unwrap() {
        Err(status) => status,
        Ok((_, got)) => panic!(
            "a read across the overwrite succeeded: all old {}, all new {}",
            got == v1,
            got == v2
        ),
    };
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(
        status.message().contains(&race) && status.message().contains("changed"),
        "{status:?}"
    );
    // Read again: the new version, whole.
    let (_, got) = read(&mut client, &race, None).await.unwrap();
    assert!(got == v2, "the reread is not the new version");

    // A missing object: NOT_FOUND naming the URI.
    let missing = format!("{base}nope");
    let err = read(&mut client, &missing, None).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains(&missing), "{err:?}");
}

/// Writes through the daemon under `base` (ending in `/`, empty).
async fn writes_scenario(d: &TestDaemon, base: &str) {
    use v1::write_request::Msg;
    let mut client = connect(d.socket()).await;

    // Small (one request) and large (parts sent as they come, in pieces
    // that are not multiples of anything the store likes).
    for (key, len) in [("small", 1000), ("large", LEN)] {
        let data = pattern(len, 7);
        let uri = format!("{base}{key}");
        let put = write(&mut client, &uri, &data, 100_003, 0).await.unwrap();
        assert_eq!(put.meta.unwrap().size, len as u64, "{key}");
        let (_, got) = read(&mut client, &uri, None).await.unwrap();
        assert!(got == data, "{key}: read back differs");
    }

    // A write cancelled after three parts: nothing becomes visible.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::WriteRequest {
        msg: Some(Msg::Header(v1::WriteHeader {
            uri: format!("{base}partial"),
            size_hint: 0,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut writer = connect(d.socket()).await;
    let call = tokio::spawn(async move {
        writer
            .write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    for _ in 0..3 {
        let data = Bytes::from(pattern(1 << 20, 5));
        tx.send(v1::WriteRequest {
            msg: Some(Msg::Data(data)),
        })
        .await
        .unwrap();
    }
    call.abort();
    let _ = call.await;
    drop(tx);
    let req = v1::ListRequest {
        prefix: base.into(),
        page_size: 100,
        ..Default::default()
    };
    let page = client.list(req).await.unwrap().into_inner();
    let mut names: Vec<_> = page.objects.into_iter().map(|o| o.uri).collect();
    names.sort();
    assert_eq!(
        names,
        [format!("{base}large"), format!("{base}small")],
        "the cancelled write is not visible"
    );
    let err = read(&mut client, &format!("{base}partial"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

fn port_of(url: &str) -> u16 {
    let after = url.rsplit_once(':').unwrap().1;
    after.split('/').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_reads_are_byte_exact_and_an_overwrite_mid_read_is_aborted() {
    let gcs = GcsServer::start().await;
    gcs.bucket("reads").await;
    let proxy = proxy(port_of(&gcs.endpoint_url())).await;
    let cfg = sluice_storage::gcs::GcsConfig {
        endpoint: Some(proxy.endpoint_url()),
        ..gcs.config()
    };
    let d = daemon(move |c| c.storage.gcs = cfg).await;
    let other: Arc<dyn Storage> =
        Arc::new(sluice_storage::gcs::GcsStorage::new(&gcs.config()).unwrap());
    reads_scenario(&d, &proxy, &other, "gs://reads/").await;
    // The etag of a gs:// object is its generation.
    let generation = gcs.put("reads", "gen", vec![1, 2, 3]).await;
    let mut client = connect(d.socket()).await;
    let (meta, _) = read(&mut client, "gs://reads/gen", None).await.unwrap();
    assert_eq!(meta.etag, generation.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_writes_are_exact_and_a_cancelled_one_leaves_nothing() {
    let gcs = GcsServer::start().await;
    gcs.bucket("writes").await;
    let cfg = gcs.config();
    let d = daemon(move |c| c.storage.gcs = cfg).await;
    writes_scenario(&d, "gs://writes/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_reads_are_byte_exact_and_an_overwrite_mid_read_is_aborted() {
    let az = Azurite::start().await;
    let container = az.container("reads").await;
    let proxy = proxy(az.port()).await;
    let cfg = az.config_with(sluice_storage::azure::AzureAccount {
        endpoint: Some(format!(
            "{}/{}",
            proxy.endpoint_url(),
            sluice_tests::azurite::ACCOUNT
        )),
        ..az.config().accounts.remove(0)
    });
    let d = daemon(move |c| c.storage.azure = cfg).await;
    let other = sluice_storage::azure::AzureBackends::new(&az.config())
        .unwrap()
        .for_uri(&container)
        .unwrap();
    reads_scenario(&d, &proxy, &other, &container.to_string()).await;
    // The https:// form names the same blob.
    let mut client = connect(d.socket()).await;
    let https = format!(
        "https://{}.blob.core.windows.net/reads/dir/obj.bin",
        sluice_tests::azurite::ACCOUNT
    );
    let (meta, got) = read(&mut client, &https, None).await.unwrap();
    assert_eq!(got.len(), LEN);
    assert_eq!(meta.uri, format!("{container}dir/obj.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_writes_are_exact_and_a_cancelled_one_leaves_nothing() {
    let az = Azurite::start().await;
    let container = az.container("writes").await;
    let cfg = az.config();
    let d = daemon(move |c| c.storage.azure = cfg).await;
    writes_scenario(&d, &container.to_string()).await;
}

/// Only listed accounts are reached: another account name is refused
/// before any request, whatever its form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_azure_accounts_are_refused() {
    let az = Azurite::start().await;
    az.container("data").await;
    let cfg = az.config();
    let d = daemon(move |c| c.storage.azure = cfg).await;
    let mut client = connect(d.socket()).await;
    for uri in [
        "az://otheraccount/data/x",
        "https://otheraccount.blob.core.windows.net/data/x",
    ] {
        let err = read(&mut client, uri, None).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{uri}: {err:?}");
        assert!(
            err.message().contains("[[storage.azure.accounts]]"),
            "{err:?}"
        );
    }
}

/// A wrong SAS or key is refused by the service with 403: the error is
/// PERMISSION_DENIED naming the URI, and carries neither the SAS nor the
/// key (the SDK's own error text can hold request URLs, so it is never
/// passed on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_errors_never_carry_the_sas_or_the_key() {
    let az = Azurite::start().await;
    az.container("secret").await;
    const BAD_SIG: &str = "c2x1aWNlLWRpc3RpbmN0aXZlLWJhZC1zaWduYXR1cmU=";
    let mut sas = sluice_storage::azure::account_sas(
        sluice_tests::azurite::ACCOUNT,
        sluice_tests::azurite::KEY,
        Duration::from_secs(3600),
    )
    .unwrap();
    let at = sas.find("sig=").unwrap();
    sas.truncate(at);
    sas.push_str(&format!("sig={}", BAD_SIG.replace('=', "%3D")));
    // A well-formed key that is not the account's.
    const BAD_KEY: &str = "ZGlzdGluY3RpdmUtd3Jvbmcta2V5LWZvci1zbHVpY2UtdGVzdHM=";
    for (label, account) in [
        (
            "sas",
            sluice_storage::azure::AzureAccount {
                sas_token: Some(sluice_storage::s3::Secret::new(sas.clone())),
                ..az.account()
            },
        ),
        (
            "key",
            sluice_storage::azure::AzureAccount {
                account_key: Some(sluice_storage::s3::Secret::new(BAD_KEY)),
                ..az.account()
            },
        ),
    ] {
        let cfg = az.config_with(account);
        let d = daemon(move |c| c.storage.azure = cfg).await;
        let mut client = connect(d.socket()).await;
        let uri = format!("az://{}/secret/x", sluice_tests::azurite::ACCOUNT);
        let err = read(&mut client, &uri, None).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{label}: {err:?}");
        let message = err.message();
        assert!(message.contains(&uri), "{label}: {message}");
        for secret in [
            BAD_SIG,
            &BAD_SIG.replace('=', "%3D"),
            BAD_KEY,
            sluice_tests::azurite::KEY,
        ] {
            assert!(!message.contains(secret), "{label}: {message}");
        }
        assert!(!message.contains("sig="), "{label}: {message}");
    }
}

/// The operator's mistakes in `[storage.azure]` and `[storage.gcs]` are
/// refused by `check-config` naming the key; secrets print redacted.
#[test]
fn cloud_settings_are_checked_at_startup() {
    let check = |toml: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluiced.toml");
        std::fs::write(&path, toml).unwrap();
        let mut cmd = std::process::Command::new(sluice_tests::daemon::bin("sluiced"));
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
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running sluiced check-config");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = check(
        r#"
[storage.gcs]
endpoint = "http://127.0.0.1:4443"
anonymous = true

[[storage.azure.accounts]]
name = "mydata"
sas_token = "sv=2025-11-05&sig=distinctive-sas-signature"

[[storage.azure.accounts]]
name = "devstoreaccount1"
endpoint = "http://127.0.0.1:10000/devstoreaccount1"
account_key = "ZGlzdGluY3RpdmUta2V5"
"#,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("[[storage.azure.accounts]]")
            && out.contains("***redacted***")
            && !out.contains("distinctive-sas-signature")
            && !out.contains("ZGlzdGluY3RpdmUta2V5"),
        "{out}"
    );
    for (toml, says) in [
        (
            "[[storage.azure.accounts]]\nname = \"Bad_Name\"\n",
            "accounts[Bad_Name].name",
        ),
        (
            "[[storage.azure.accounts]]\nname = \"local\"\nendpoint = \"http://127.0.0.1:10000/local\"\n",
            "only sent over https",
        ),
        (
            "[storage.gcs]\nendpoint = \"http://127.0.0.1:4443/storage/v1\"\n",
            "[storage.gcs] endpoint",
        ),
        (
            "[storage.gcs]\nanonymous = true\ncredentials_file = \"/etc/k.json\"\n",
            "[storage.gcs] anonymous",
        ),
        (
            "[[storage.s3.endpoints]]\naddress = \"store:9000\"\ngateways = [\"a:1\", \"a:1\"]\n",
            "listed twice",
        ),
    ] {
        let (ok, _, err) = check(toml);
        assert!(!ok, "accepted: {toml}");
        assert!(err.contains(says), "{toml}: {err}");
    }
}
