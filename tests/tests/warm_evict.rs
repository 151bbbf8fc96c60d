//! Warm and Evict against a real daemon: a warmed prefix is served from the
//! cache, a second warm reads nothing, a warm stops before the cache is
//! full, Evict empties the prefix — and only admins may evict.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use futures::StreamExt;
use sluice_client::{Client, WarmProgress};
use sluice_engine::ByteSize;
use sluice_tests::daemon::{TestDaemon, bin};
use sluice_tests::grpc::{http_get, metric, pattern};
use tonic::Code;

async fn warm(client: &Client, prefix: &str) -> Vec<WarmProgress> {
    let stream = client.warm(prefix, 3).await.unwrap();
    stream.map(|p| p.unwrap()).collect().await
}

async fn warm_uris(client: &Client, uris: Vec<String>, concurrency: u32) -> WarmProgress {
    let stream = client.warm_uris(uris, concurrency).await.unwrap();
    let steps: Vec<WarmProgress> = stream.map(|p| p.unwrap()).collect().await;
    steps.last().cloned().expect("a warm sends its counts")
}

async fn hits(d: &TestDaemon) -> f64 {
    let (_, body) = http_get(d.http(), "/metrics").await;
    metric(&body, "sluice_cache_hits_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warmed_prefix_is_served_from_the_cache_until_evicted() {
    let d = TestDaemon::start_with(|c| c.cache.max_object_size = Some(ByteSize(64 << 10))).await;
    let dir = d.root().join("set");
    std::fs::create_dir_all(&dir).unwrap();
    let mut objects = Vec::new();
    for i in 0..20 {
        let data = pattern(10_000 + i, i as u8);
        std::fs::write(dir.join(format!("{i:02}")), &data).unwrap();
        objects.push((d.file_uri(&format!("set/{i:02}")), data));
    }
    std::fs::write(dir.join("large"), pattern(100_000, 1)).unwrap();
    // Not under the prefix (`set` is a string prefix: `set2` would be).
    std::fs::write(d.root().join("other"), b"other").unwrap();
    let client = Client::connect(&d.address()).await.unwrap();
    let prefix = d.file_uri("set/");

    let steps = warm(&client, &prefix).await;
    let last = steps.last().unwrap();
    assert!(last.done && last.listed && !last.cache_full, "{last:?}");
    assert_eq!(
        (
            last.listed_objects,
            last.warmed_objects,
            last.skipped_objects
        ),
        (21, 20, 1),
        "{last:?}"
    );
    let bytes: u64 = objects.iter().map(|(_, d)| d.len() as u64).sum();
    assert_eq!(last.warmed_bytes, bytes);
    assert_eq!((last.cached_objects, last.failed_objects), (0, 0));
    assert!(
        steps
            .windows(2)
            .all(|w| w[0].warmed_objects <= w[1].warmed_objects),
        "counts only grow"
    );

    // Every object now comes from the cache, byte-exact.
    let before = hits(&d).await;
    for (uri, data) in &objects {
        assert!(client.read_to_bytes(uri, None).await.unwrap() == *data);
    }
    assert_eq!(hits(&d).await - before, 20.0);

    // A second warm finds everything cached and reads nothing.
    let last = warm(&client, &prefix).await.pop().unwrap();
    assert_eq!(
        (last.warmed_objects, last.cached_objects),
        (0, 20),
        "{last:?}"
    );
    assert_eq!(last.cached_bytes, bytes);

    // Evict drops exactly the prefix (the test runs as root: an admin).
    assert_eq!(client.evict(&prefix).await.unwrap(), 20);
    let before = hits(&d).await;
    client.read_to_bytes(&objects[0].0, None).await.unwrap();
    assert_eq!(hits(&d).await, before, "evicted, so read from the files");

    // A prefix the daemon may not read fails the warm, named.
    let err = match client.warm("file:///sluice-not-a-root/", 0).await {
        Err(e) => e,
        Ok(mut s) => s.next().await.unwrap().unwrap_err(),
    };
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(
        err.to_string().contains("file:///sluice-not-a-root"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_stops_before_the_cache_is_full() {
    let d = TestDaemon::start_with(|c| {
        c.cache.memory_budget = ByteSize::mib(4);
        c.cache.segment_size = ByteSize::mib(1);
        c.engine.part_size = ByteSize::mib(1);
        c.write.part_size = ByteSize::mib(1);
    })
    .await;
    std::fs::create_dir_all(d.root().join("big")).unwrap();
    for i in 0..12 {
        std::fs::write(d.root().join(format!("big/{i:02}")), pattern(500_000, i)).unwrap();
    }
    let client = Client::connect(&d.address()).await.unwrap();
    let last = warm(&client, &d.file_uri("big/")).await.pop().unwrap();
    assert!(last.cache_full && last.done, "{last:?}");
    assert_eq!(
        last.warmed_objects, 8,
        "4 MiB holds 8 of 12 × 500 kB: {last:?}"
    );
    assert!(last.warmed_bytes <= 4 << 20);
}

/// Evict is for admins: another user gets PERMISSION_DENIED until the
/// operator lists it in `server.admin_uids`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_may_evict() {
    const NOBODY: u32 = 65534;
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run a client under another uid");
        return;
    }
    for admin in [false, true] {
        let d = TestDaemon::start_with(|c| {
            c.server.socket_mode = "0666".into();
            if admin {
                c.server.admin_uids = vec![NOBODY];
            }
        })
        .await;
        let run_dir = d.socket().parent().unwrap();
        std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(d.root().join("x"), b"x").unwrap();
        let client = Client::connect(&d.address()).await.unwrap();
        client.read_to_bytes(&d.file_uri("x"), None).await.unwrap();
        let out = Command::new(bin("sluice"))
            .args(["--address", &d.address(), "evict", &d.file_uri("")])
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if admin {
            assert!(out.status.success(), "{stderr}");
            assert!(stdout.contains("1 cached objects dropped"), "{stdout}");
        } else {
            assert!(!out.status.success(), "a non-admin evicted: {stdout}");
            assert!(stderr.contains("evicting is for"), "{stderr}");
            assert!(stderr.contains("server.admin_uids"), "{stderr}");
            // Nothing was dropped: the object is still a cache hit.
            let before = hits(&d).await;
            client.read_to_bytes(&d.file_uri("x"), None).await.unwrap();
            assert_eq!(hits(&d).await - before, 1.0);
        }
    }
}

/// Warm of a list of URIs (an epoch plan's first items): read in order,
/// byte-exact from the cache afterwards; it stops once the cache is full;
/// a bad URI, or both a prefix and URIs, is refused before anything is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_of_uris_reads_them_until_the_cache_is_full() {
    let d = TestDaemon::start_with(|c| {
        c.cache.memory_budget = ByteSize::mib(4);
        c.cache.segment_size = ByteSize::mib(1);
        c.engine.part_size = ByteSize::mib(1);
        c.write.part_size = ByteSize::mib(1);
    })
    .await;
    let mut uris = Vec::new();
    for i in 0..12 {
        std::fs::write(d.root().join(format!("u{i:02}")), pattern(500_000, i)).unwrap();
        uris.push(d.file_uri(&format!("u{i:02}")));
    }
    let client = Client::connect(&d.address()).await.unwrap();
    let first: Vec<String> = uris[..4].to_vec();
    let last = warm_uris(&client, first.clone(), 2).await;
    assert!(last.done && !last.cache_full, "{last:?}");
    assert_eq!(
        (last.listed_objects, last.warmed_objects),
        (4, 4),
        "{last:?}"
    );
    assert_eq!(last.warmed_bytes, 4 * 500_000);
    let before = hits(&d).await;
    for (i, uri) in first.iter().enumerate() {
        assert!(client.read_to_bytes(uri, None).await.unwrap() == pattern(500_000, i as u8));
    }
    assert_eq!(hits(&d).await - before, 4.0);

    // All 12 (6 MB) do not fit in 4 MiB: it stops, having read at most
    // what the cache holds.
    let last = warm_uris(&client, uris.clone(), 2).await;
    assert!(last.cache_full && last.done, "{last:?}");
    assert!(last.warmed_objects + last.cached_objects < 12, "{last:?}");
    assert!(last.warmed_bytes + last.cached_bytes <= 4 << 20, "{last:?}");

    let err = match client
        .warm_uris(vec![uris[0].clone(), "nosuch://x/y".into()], 0)
        .await
    {
        Err(e) => e,
        Ok(mut s) => s.next().await.unwrap().unwrap_err(),
    };
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.to_string().contains("nosuch://x/y"), "{err}");
    // Both a prefix and URIs: refused.
    let mut raw = sluice_tests::grpc::connect(d.socket()).await;
    let status = raw
        .warm(sluice_proto::v1::WarmRequest {
            prefix: d.file_uri(""),
            concurrency: 0,
            uris: vec![uris[0].clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("not both"),
        "{}",
        status.message()
    );
}
