//! An S3-compatible server that sends no ETag: the daemon holds every read
//! to size and Last-Modified instead, and counts reads it could hold to
//! nothing. Real daemon, real `s3s-fs`, the fault proxy stripping headers.

use std::time::{Duration, Instant, SystemTime};

use sluice_engine::ByteSize;
use sluice_tests::daemon::TestDaemon;
use sluice_tests::faultproxy::{FaultConfig, FaultProxy};
use sluice_tests::grpc::{connect, http_get, metric, pattern, read};
use sluice_tests::s3server::S3Server;
use tonic::Code;

const LEN: usize = 3 << 20;
const UNVERSIONED: &str = "sluice_backend_unversioned_reads_total{backend=\"s3\"}";

/// Waits until the wall clock is in a later second than `t`: an object
/// written from then on has another Last-Modified (one-second resolution).
async fn next_second(t: SystemTime) {
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let deadline = Instant::now() + Duration::from_secs(10);
    while secs(SystemTime::now()) <= secs(t) {
        assert!(Instant::now() < deadline, "the clock did not move");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_etags_is_held_to_size_and_last_modified() {
    let s3 = S3Server::start().await;
    s3.bucket("plain").await;
    let proxy = FaultProxy::start(s3.endpoint().parse().unwrap(), FaultConfig::default()).await;
    proxy.set_strip(&["ETag"]);
    let cfg = proxy.s3_config(&s3);
    let d = TestDaemon::start_with(move |c| {
        c.storage.s3 = cfg;
        c.engine.part_size = ByteSize::mib(1);
        c.cache.revalidate_after = Duration::ZERO;
    })
    .await;
    let mut client = connect(d.socket()).await;
    let uri = |key: &str| format!("s3://{}/plain/{key}", proxy.endpoint());
    let (v1, v2) = (pattern(LEN, 1), pattern(LEN, 2));

    // A plain read works and reports no etag.
    let at = s3.put("plain", "cached", v1.clone()).await;
    let (meta, got) = read(&mut client, &uri("cached"), None).await.unwrap();
    assert!(got == v1 && meta.etag.is_empty(), "etag {:?}", meta.etag);

    // Overwritten between the parts of one read (same size, a later
    // second): the later parts see another Last-Modified. ABORTED, not a mix.
    let race_at = s3.put("plain", "race", v1.clone()).await;
    proxy.hold_later_parts();
    let mut racer = connect(d.socket()).await;
    let race_uri = uri("race");
    let reading = tokio::spawn(async move { read(&mut racer, &race_uri, None).await });
    wait_until("a later part is held", || proxy.held() > 0).await;
    next_second(race_at).await;
    s3.put("plain", "race", v2.clone()).await;
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
        status.message().contains(&uri("race")) && status.message().contains("changed"),
        "{status:?}"
    );
    // Nothing of the mix was cached: the next read has the new version.
    assert_eq!(read(&mut client, &uri("race"), None).await.unwrap().1, v2);

    // The cached copy is revalidated by size and Last-Modified too.
    next_second(at).await;
    s3.put("plain", "cached", v2.clone()).await;
    assert_eq!(read(&mut client, &uri("cached"), None).await.unwrap().1, v2);

    // Every read so far could be checked.
    let scrape = || async { http_get(d.http(), "/metrics").await.1 };
    assert_eq!(metric(&scrape().await, UNVERSIONED), 0.0);
    // Neither ETag nor Last-Modified: the read goes through and is counted.
    proxy.set_strip(&["ETag", "Last-Modified"]);
    s3.put("plain", "bare", v1.clone()).await;
    assert_eq!(read(&mut client, &uri("bare"), None).await.unwrap().1, v1);
    assert_eq!(metric(&scrape().await, UNVERSIONED), 1.0);
}
