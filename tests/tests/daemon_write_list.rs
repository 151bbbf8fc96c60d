//! Write, List and Delete through a real daemon, on file://, on a real
//! S3-compatible server and on the GCS and Azure Blob emulators.

use sluice_engine::ByteSize;
use sluice_proto::v1;
use sluice_tests::azurite::Azurite;
use sluice_tests::daemon::TestDaemon;
use sluice_tests::gcsserver::GcsServer;
use sluice_tests::grpc::{connect, pattern, read, write};
use sluice_tests::s3server::S3Server;
use tonic::Code;

async fn list_all(
    client: &mut v1::sluice_client::SluiceClient<tonic::transport::Channel>,
    prefix: &str,
    delimiter: &str,
    page_size: u32,
) -> (Vec<String>, Vec<String>, usize) {
    let (mut objects, mut prefixes, mut pages) = (Vec::new(), Vec::new(), 0);
    let mut token = String::new();
    loop {
        let req = v1::ListRequest {
            prefix: prefix.into(),
            delimiter: delimiter.into(),
            page_size,
            page_token: token.clone(),
        };
        let page = client.list(req).await.unwrap().into_inner();
        pages += 1;
        assert!(page.objects.len() + page.common_prefixes.len() <= page_size as usize);
        objects.extend(page.objects.into_iter().map(|o| o.uri));
        prefixes.extend(page.common_prefixes);
        if page.next_page_token.is_empty() {
            return (objects, prefixes, pages);
        }
        token = page.next_page_token;
    }
}

/// The same scenario on any backend, under `base` (ends with '/').
async fn write_list_delete(d: &TestDaemon, base: &str) {
    let mut client = connect(d.socket()).await;
    let keys = ["a", "b/1", "b/2", "b/c/3", "b-x", "c"];
    for (i, k) in keys.iter().enumerate() {
        let data = pattern(1000 + i, i as u8);
        let resp = write(
            &mut client,
            &format!("{base}{k}"),
            &data,
            333,
            data.len() as u64,
        )
        .await
        .unwrap();
        assert_eq!(resp.meta.unwrap().size, data.len() as u64);
    }
    // Recursive listing, two entries per page, in key order.
    let (objects, prefixes, pages) = list_all(&mut client, base, "", 2).await;
    let mut expected: Vec<String> = keys.iter().map(|k| format!("{base}{k}")).collect();
    expected.sort();
    assert_eq!(objects, expected);
    assert!(prefixes.is_empty());
    assert_eq!(pages, 3);
    // One level with a delimiter.
    let (objects, prefixes, _) = list_all(&mut client, base, "/", 1000).await;
    assert_eq!(
        objects,
        vec![format!("{base}a"), format!("{base}b-x"), format!("{base}c")]
    );
    assert_eq!(prefixes, vec![format!("{base}b/")]);
    // A prefix that is not a directory.
    let (objects, _, _) = list_all(&mut client, &format!("{base}b"), "", 1000).await;
    assert_eq!(objects.len(), 4);

    // Multipart write (the daemon's part size is 5 MiB here) reads back exactly.
    let big = pattern(12 * (1 << 20) + 5, 9);
    let uri = format!("{base}big");
    let resp = write(&mut client, &uri, &big, 1 << 20, 0).await.unwrap();
    assert_eq!(resp.parts, 3);
    assert!(read(&mut client, &uri, None).await.unwrap().1 == big);
    // Overwrite through the daemon: the cache is invalidated at once.
    write(&mut client, &uri, b"small now", 4, 0).await.unwrap();
    assert_eq!(read(&mut client, &uri, None).await.unwrap().1, b"small now");

    // A size mismatch fails the write and stores nothing.
    let bad = format!("{base}mismatch");
    let err = write(&mut client, &bad, &big, 1 << 20, 100)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    let err = client
        .stat(v1::StatRequest { uri: bad.clone() })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "a failed write left an object behind"
    );

    // Delete one, then the rest by prefix.
    let resp = client
        .delete(v1::DeleteRequest {
            uri: format!("{base}a"),
            recursive: false,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(resp.into_inner().deleted, 1);
    let err = client
        .delete(v1::DeleteRequest {
            uri: format!("{base}a"),
            recursive: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let resp = client
        .delete(v1::DeleteRequest {
            uri: base.into(),
            recursive: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(resp.into_inner().deleted, keys.len() as u64 - 1 + 1);
    let (objects, _, _) = list_all(&mut client, base, "", 1000).await;
    assert!(objects.is_empty(), "{objects:?}");
    let err = read(&mut client, &uri, None).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "deleted object still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_list_delete_on_files() {
    let d = TestDaemon::start_with(|c| c.write.part_size = ByteSize::mib(5)).await;
    let base = d.file_uri("data/");
    write_list_delete(&d, &base).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_list_delete_on_s3() {
    let s3 = S3Server::start().await;
    let bucket = s3.bucket("e2e").await;
    let cfg = s3.config();
    let d = TestDaemon::start_with(move |c| {
        c.storage.s3 = cfg;
        c.write.part_size = ByteSize::mib(5);
    })
    .await;
    write_list_delete(&d, &format!("{bucket}data/")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_list_delete_on_azure() {
    let az = Azurite::start().await;
    let container = az.container("e2e").await;
    let cfg = az.config();
    let d = TestDaemon::start_with(move |c| {
        c.storage.azure = cfg;
        c.write.part_size = ByteSize::mib(5);
    })
    .await;
    write_list_delete(&d, &format!("{container}data/")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_list_delete_on_gcs() {
    let gcs = GcsServer::start().await;
    let bucket = gcs.bucket("e2e").await;
    let cfg = gcs.config();
    let d = TestDaemon::start_with(move |c| {
        c.storage.gcs = cfg;
        c.write.part_size = ByteSize::mib(5);
    })
    .await;
    write_list_delete(&d, &format!("{bucket}data/")).await;
}

/// Uploads to an HTTPS endpoint go with `UNSIGNED-PAYLOAD` — TLS protects
/// the body and the checksum header lets the server verify it, so the
/// daemon skips the SHA-256 of every part — and still read back byte for
/// byte; over plain HTTP the payload hash stays in the signature, and no
/// checksum goes with it (the signature already covers every byte).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_https_are_not_hashed_and_read_back_exactly() {
    use std::sync::atomic::Ordering::SeqCst;

    use sluice_storage::s3::S3Endpoint;
    use sluice_tests::certs::Pki;
    use sluice_tests::tlsproxy::TlsProxy;

    let s3 = S3Server::start().await;
    let plain = s3.bucket("tls").await;
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let cert = pki.server(&ca, "s3");
    let proxy = TlsProxy::start(s3.endpoint().parse().unwrap(), &cert).await;
    let clear = TlsProxy::start_plain(s3.endpoint().parse().unwrap()).await;
    let mut cfg = s3.config();
    cfg.endpoints.push(S3Endpoint {
        address: proxy.address(),
        scheme: "https".into(),
        ca_bundle: Some(ca.cert.clone()),
        ..s3.endpoint_config()
    });
    cfg.endpoints.push(S3Endpoint {
        address: clear.address(),
        scheme: "http".into(),
        ..s3.endpoint_config()
    });
    let d = TestDaemon::start_with(move |c| {
        c.storage.s3 = cfg;
        c.write.part_size = ByteSize::mib(5);
    })
    .await;
    let mut client = connect(d.socket()).await;
    let big = pattern((11 << 20) + 7, 3); // three parts
    let small = pattern(1000, 4); // one PutObject
    for (name, data) in [("big", &big), ("small", &small)] {
        let uri = format!("s3://{}/tls/{name}", proxy.address());
        let resp = write(&mut client, &uri, data, 1 << 20, 0).await.unwrap();
        assert_eq!(resp.parts, if name == "big" { 3 } else { 1 });
        assert!(read(&mut client, &uri, None).await.unwrap().1 == *data);
        let uri = format!("s3://{}/tls/clear-{name}", clear.address());
        write(&mut client, &uri, data, 1 << 20, 0).await.unwrap();
        assert!(read(&mut client, &uri, None).await.unwrap().1 == *data);
        // The same bytes through the plain endpoint: the same object.
        let same = format!("{plain}{name}");
        assert!(read(&mut client, &same, None).await.unwrap().1 == *data);
    }
    let seen = proxy.seen();
    assert!(
        seen.unsigned.load(SeqCst) >= 4,
        "the three parts and the put go unsigned: {seen:?}"
    );
    // Everything else (create, complete, reads) still signs its (empty or
    // small) body.
    assert!(seen.hashed.load(SeqCst) > 0, "{seen:?}");
    assert!(
        seen.checksummed.load(SeqCst) >= 4,
        "unsigned bodies carry a checksum: {seen:?}"
    );
    let seen = clear.seen();
    assert_eq!(seen.unsigned.load(SeqCst), 0, "{seen:?}");
    assert!(seen.hashed.load(SeqCst) >= 4, "{seen:?}");
    assert_eq!(
        seen.checksummed.load(SeqCst),
        0,
        "signed bodies carry no checksum besides the signature: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_reads_are_byte_exact_through_the_daemon() {
    let s3 = S3Server::start().await;
    let bucket = s3.bucket("reads").await;
    let cfg = s3.config();
    let d = TestDaemon::start_with(move |c| {
        c.storage.s3 = cfg;
        c.engine.part_size = ByteSize(1 << 20);
    })
    .await;
    let mut client = connect(d.socket()).await;
    for (i, len) in [0usize, 10, (1 << 20) + 1, 9 * (1 << 20) + 333]
        .into_iter()
        .enumerate()
    {
        let data = pattern(len, i as u8);
        let uri = format!("{bucket}obj-{len}");
        write(&mut client, &uri, &data, 1 << 20, len as u64)
            .await
            .unwrap();
        let (meta, got) = read(&mut client, &uri, None).await.unwrap();
        assert_eq!(meta.size, len as u64);
        assert!(got == data, "{uri}");
        if len > 100 {
            let r = v1::ByteRange {
                offset: 7,
                length: len as u64 - 50,
                to_end: false,
            };
            let (_, got) = read(&mut client, &uri, Some(r)).await.unwrap();
            assert!(got == data[7..len - 43], "{uri} range");
        }
    }
    // The default-endpoint form reaches the same object.
    let short = "s3://reads/obj-10";
    assert_eq!(
        read(&mut client, short, None).await.unwrap().1,
        pattern(10, 1)
    );
    let err = read(&mut client, &format!("{bucket}missing"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    assert!(!err.message().contains(sluice_tests::s3server::SECRET_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_upload_leaves_nothing() {
    use v1::write_request::Msg;
    let d = TestDaemon::start_with(|c| c.write.part_size = ByteSize::mib(1)).await;
    let mut client = connect(d.socket()).await;
    let uri = d.file_uri("partial");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::WriteRequest {
        msg: Some(Msg::Header(v1::WriteHeader {
            uri: uri.clone(),
            size_hint: 0,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let call = tokio::spawn(async move {
        client
            .write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    for _ in 0..3 {
        // Three full parts: a multipart upload is under way.
        let data = bytes::Bytes::from(pattern(1 << 20, 5));
        tx.send(v1::WriteRequest {
            msg: Some(Msg::Data(data)),
        })
        .await
        .unwrap();
    }
    call.abort();
    let _ = call.await;
    drop(tx);
    // Wait (bounded) until the daemon has seen the cancellation and cleaned up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let leftovers: Vec<_> = std::fs::read_dir(d.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        if leftovers.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {leftovers:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!d.root().join("partial").exists());
}

/// `rm -r …/run1` takes the object `run1` and what lies below `run1/`, never
/// `run10/` or `run1.log`; a whole bucket or root needs the explicit flag.
async fn recursive_delete_matches_components(d: &TestDaemon, base: &str, whole: &str) {
    let mut client = connect(d.socket()).await;
    let keep = ["run10/a", "run10/b", "run1.log", "run1-x/c", "solo2"];
    let gone = ["run1/a", "run1/sub/b", "solo"];
    for k in keep.iter().chain(&gone) {
        let data = pattern(100, k.len() as u8);
        write(&mut client, &format!("{base}{k}"), &data, 1 << 20, 100)
            .await
            .unwrap();
    }
    let delete = |uri: String, recursive: bool, whole_bucket: bool| v1::DeleteRequest {
        uri,
        recursive,
        whole_bucket,
    };
    let resp = client
        .delete(delete(format!("{base}run1"), true, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.deleted, 2);
    // An object named exactly: itself, not its namesakes.
    let resp = client
        .delete(delete(format!("{base}solo"), true, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.deleted, 1);
    let (objects, _, _) = list_all(&mut client, base, "", 1000).await;
    let mut left: Vec<String> = objects
        .iter()
        .map(|o| o.strip_prefix(base).unwrap().to_owned())
        .collect();
    left.sort();
    let mut want: Vec<String> = keep.iter().map(|k| k.to_string()).collect();
    want.sort();
    assert_eq!(
        left, want,
        "a recursive delete crossed a component boundary"
    );

    // The whole bucket / root: refused without the flag, nothing deleted.
    let err = client
        .delete(delete(whole.to_owned(), true, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains(whole), "{}", err.message());
    let (objects, _, _) = list_all(&mut client, base, "", 1000).await;
    assert_eq!(objects.len(), keep.len(), "a refused delete deleted");
    // The flag only means something for recursive deletes.
    let err = client
        .delete(delete(format!("{base}run10/a"), false, true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let resp = client
        .delete(delete(whole.to_owned(), true, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.deleted, keep.len() as u64);
    let (objects, _, _) = list_all(&mut client, base, "", 1000).await;
    assert!(objects.is_empty(), "{objects:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_delete_matches_components_on_files() {
    let d = TestDaemon::start().await;
    let base = d.file_uri("runs/");
    let root = format!("file://{}/", d.root().display());
    recursive_delete_matches_components(&d, &base, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_delete_matches_components_on_s3() {
    let s3 = S3Server::start().await;
    let bucket = s3.bucket("components").await;
    let cfg = s3.config();
    let d = TestDaemon::start_with(move |c| c.storage.s3 = cfg).await;
    recursive_delete_matches_components(&d, &format!("{bucket}runs/"), &bucket.to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_delete_matches_components_on_azure() {
    let az = Azurite::start().await;
    let container = az.container("components").await;
    let cfg = az.config();
    let d = TestDaemon::start_with(move |c| c.storage.azure = cfg).await;
    recursive_delete_matches_components(&d, &format!("{container}runs/"), &container.to_string())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_delete_matches_components_on_gcs() {
    let gcs = GcsServer::start().await;
    let bucket = gcs.bucket("components").await;
    let cfg = gcs.config();
    let d = TestDaemon::start_with(move |c| c.storage.gcs = cfg).await;
    recursive_delete_matches_components(&d, &format!("{bucket}runs/"), &bucket.to_string()).await;
}
