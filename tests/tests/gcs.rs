//! `gs://` through a real daemon on a real GCS emulator (`fake-gcs-server`):
//! byte-exact whole and ranged reads in several parts, an overwrite between
//! the parts of one read is ABORTED (never a mix), streamed writes, and a
//! write cancelled midway leaves nothing visible.

use std::time::{Duration, Instant};

use sluice_engine::ByteSize;
use sluice_proto::v1;
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

/// A daemon whose `[storage.gcs]` reaches `gcs` through `proxy`, reading
/// in 1 MiB parts and writing in 1 MiB parts.
async fn daemon(gcs: &GcsServer, proxy: &FaultProxy) -> TestDaemon {
    let cfg = sluice_storage::gcs::GcsConfig {
        endpoint: Some(proxy.endpoint_url()),
        ..gcs.config()
    };
    TestDaemon::start_with(move |c| {
        c.storage.gcs = cfg;
        c.engine.part_size = ByteSize::mib(1);
        c.engine.min_part_size = ByteSize::mib(1);
        c.write.part_size = ByteSize::mib(1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_byte_exact_and_an_overwrite_mid_read_is_aborted() {
    let gcs = GcsServer::start().await;
    gcs.bucket("reads").await;
    let proxy = FaultProxy::start(
        format!(
            "127.0.0.1:{}",
            gcs.endpoint_url().rsplit(':').next().unwrap()
        )
        .parse()
        .unwrap(),
        FaultConfig::default(),
    )
    .await;
    let d = daemon(&gcs, &proxy).await;
    let mut client = connect(d.socket()).await;
    let (v1, v2) = (pattern(LEN, 1), pattern(LEN, 2));

    let generation = gcs.put("reads", "dir/obj.bin", v1.clone()).await;
    let uri = "gs://reads/dir/obj.bin";
    let (meta, got) = read(&mut client, uri, None).await.unwrap();
    assert!(got == v1, "whole read differs");
    assert_eq!(meta.size, LEN as u64);
    assert_eq!(
        meta.etag,
        generation.to_string(),
        "the etag is the generation"
    );
    let range = v1::ByteRange {
        offset: 1_000_000,
        length: 1_500_000,
        to_end: false,
    };
    let (_, got) = read(&mut client, uri, Some(range)).await.unwrap();
    assert!(got == v1[1_000_000..2_500_000], "ranged read differs");

    // Overwritten while the later parts of one read are held: ABORTED.
    gcs.put("reads", "race", v1.clone()).await;
    proxy.hold_later_parts();
    let mut racer = connect(d.socket()).await;
    let reading = tokio::spawn(async move { read(&mut racer, "gs://reads/race", None).await });
    wait_until("a later part is held", || proxy.held() > 0).await;
    gcs.put("reads", "race", v2.clone()).await;
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
        status.message().contains("gs://reads/race") && status.message().contains("changed"),
        "{status:?}"
    );
    // Read again: the new version, whole.
    let (_, got) = read(&mut client, "gs://reads/race", None).await.unwrap();
    assert!(got == v2, "the reread is not the new version");

    // Missing objects and buckets: NOT_FOUND naming the URI.
    let err = read(&mut client, "gs://reads/nope", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("gs://reads/nope"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_exact_and_a_cancelled_one_leaves_nothing() {
    use v1::write_request::Msg;
    let gcs = GcsServer::start().await;
    gcs.bucket("writes").await;
    let proxy = FaultProxy::start(
        format!(
            "127.0.0.1:{}",
            gcs.endpoint_url().rsplit(':').next().unwrap()
        )
        .parse()
        .unwrap(),
        FaultConfig::default(),
    )
    .await;
    let d = daemon(&gcs, &proxy).await;
    let mut client = connect(d.socket()).await;

    // Small (one request) and large (a resumable upload of several chunks,
    // sent in pieces that are not multiples of 256 KiB).
    for (key, len) in [("small", 1000), ("large", LEN)] {
        let data = pattern(len, 7);
        let uri = format!("gs://writes/{key}");
        let put = write(&mut client, &uri, &data, 100_003, 0).await.unwrap();
        assert_eq!(put.meta.unwrap().size, len as u64, "{key}");
        let (_, got) = read(&mut client, &uri, None).await.unwrap();
        assert!(got == data, "{key}: read back differs");
    }

    // A write cancelled after three parts: nothing becomes visible.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::WriteRequest {
        msg: Some(Msg::Header(v1::WriteHeader {
            uri: "gs://writes/partial".into(),
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
    let list = |client: &mut v1::sluice_client::SluiceClient<_>| {
        let req = v1::ListRequest {
            prefix: "gs://writes/".into(),
            page_size: 100,
            ..Default::default()
        };
        let mut client = client.clone();
        async move {
            let page = client.list(req).await.unwrap().into_inner();
            let mut names: Vec<_> = page.objects.into_iter().map(|o| o.uri).collect();
            names.sort();
            names
        }
    };
    assert_eq!(
        list(&mut client).await,
        ["gs://writes/large", "gs://writes/small"],
        "the cancelled write is not visible"
    );
    let err = read(&mut client, "gs://writes/partial", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}
