//! Multipart uploads through the facade that are left open: each access
//! key's limit on open uploads, and the expiry of idle ones, which lets go
//! of their parts held in memory and of what the backend stored.

use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use sluice_tests::daemon::TestDaemon;
use sluice_tests::facade::{KEY_ALL, KEY_LOCAL, client, facade_config};
use sluice_tests::grpc::{http_get, metric, pattern};

async fn create(c: &Client, key: &str) -> Result<String, String> {
    c.create_multipart_upload()
        .bucket("local")
        .key(key)
        .send()
        .await
        .map(|out| out.upload_id().expect("an upload id").to_owned())
        .map_err(|e| e.code().unwrap_or("no code").to_owned())
}

async fn scrape(d: &TestDaemon, name: &str) -> f64 {
    metric(&http_get(d.http(), "/metrics").await.1, name)
}

/// One key holds at most `facade.max_uploads_per_key` open uploads; the
/// others' keys still open theirs, and aborting one makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_access_key_has_its_own_limit_of_open_uploads() {
    let d = TestDaemon::start_with(|c| {
        facade_config(c, true);
        c.facade.max_uploads_per_key = 2;
    })
    .await;
    let all = client(d.facade(), KEY_ALL);
    let local = client(d.facade(), KEY_LOCAL);
    let first = create(&all, "a").await.unwrap();
    create(&all, "b").await.unwrap();
    assert_eq!(create(&all, "c").await, Err("SlowDown".into()));
    create(&local, "d")
        .await
        .expect("another key is not limited by this one");
    all.abort_multipart_upload()
        .bucket("local")
        .key("a")
        .upload_id(first)
        .send()
        .await
        .unwrap();
    create(&all, "c").await.expect("room again after an abort");
}

/// An upload with no request for `facade.upload_idle_timeout` is aborted:
/// its early part (held in the arena) is let go, the backend keeps
/// nothing, and the upload id is unknown from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_uploads_expire_and_let_their_memory_go() {
    let d = TestDaemon::start_with(|c| {
        facade_config(c, true);
        c.facade.upload_idle_timeout = Duration::from_secs(2);
    })
    .await;
    let c = client(d.facade(), KEY_ALL);
    let part = pattern(5 << 20, 3);
    // Part 2 before part 1: it waits in memory for part 1, which never
    // comes. (A loaded machine may expire the upload before part 2
    // arrives: then start again.)
    let mut created = 0.0;
    let id = loop {
        let id = create(&c, "dir/left.bin").await.unwrap();
        created += 1.0;
        let sent = c
            .upload_part()
            .bucket("local")
            .key("dir/left.bin")
            .upload_id(&id)
            .part_number(2)
            .body(ByteStream::from(part.clone()))
            .send()
            .await;
        match sent {
            Ok(_) => break id,
            Err(e) if e.code() == Some("NoSuchUpload") => continue,
            Err(e) => panic!("upload part: {e:?}"),
        }
    };
    let held = scrape(&d, "sluice_memory_reserved_bytes").await;
    assert!(held >= part.len() as f64, "the early part is held: {held}");

    let deadline = Instant::now() + Duration::from_secs(60);
    while scrape(&d, "sluice_facade_uploads_expired_total").await < created {
        assert!(Instant::now() < deadline, "the idle upload never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(scrape(&d, "sluice_memory_reserved_bytes").await, 0.0);
    let again = c
        .upload_part()
        .bucket("local")
        .key("dir/left.bin")
        .upload_id(&id)
        .part_number(1)
        .body(ByteStream::from(part.clone()))
        .send()
        .await;
    assert_eq!(again.unwrap_err().code(), Some("NoSuchUpload"));
    let dir = d.root().join("dir");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|entries| entries.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "the backend kept {left:?}");
}
