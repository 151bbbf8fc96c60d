//! `sluice_client::Session` against a real in-process daemon: shared-memory
//! leases and stream delivery, byte-exact; releases on drop and on the
//! death of the client process; a daemon that goes away; `sluice bench`
//! with each delivery.

use std::path::Path;
use std::time::Duration;

use sluice_client::{Client, Delivery, Fetched, Session, SessionOptions};
use sluice_engine::ByteSize;
use sluice_tests::daemon::{DaemonProcess, TestDaemon, bin};
use sluice_tests::grpc::pattern;
use tokio::io::AsyncBufReadExt;

const MIB: usize = 1 << 20;

/// A daemon whose arena segments (2 MiB) are smaller than the large test
/// object, so that it arrives as several extents.
async fn daemon() -> TestDaemon {
    TestDaemon::start_with(|c| {
        c.engine.part_size = ByteSize::mib(1);
        c.cache.segment_size = ByteSize::mib(2);
    })
    .await
}

fn write_file(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

async fn session(d: &TestDaemon, delivery: Delivery) -> Session {
    let client = Client::connect(&d.address()).await.unwrap();
    let options = SessionOptions {
        delivery,
        window: 8,
    };
    client.session(options).await.unwrap()
}

/// Checks that the parts follow each other from `start` and hold `want`.
fn assert_exact(fetched: &Fetched, start: u64, want: &[u8]) {
    let mut offset = start;
    for part in &fetched.parts {
        assert_eq!(part.object_offset(), offset, "parts are contiguous");
        offset += part.len() as u64;
    }
    assert_eq!(fetched.len(), want.len() as u64);
    assert!(fetched.to_vec() == want, "bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_memory_leases_are_byte_exact_and_mapped() {
    let d = daemon().await;
    let small = pattern(100_000, 1);
    let large = pattern(5 * MIB + 123, 2);
    write_file(d.root(), "small", &small);
    write_file(d.root(), "large", &large);
    let s = session(&d, Delivery::SharedMemory).await;
    assert!(s.shared_memory());

    for _pass in 0..2 {
        let fetched = s.fetch(&d.file_uri("small"), None).await.unwrap();
        assert_eq!(fetched.parts.len(), 1, "a small object is one lease");
        assert_exact(&fetched, 0, &small);
        let lease = &fetched.parts[0];
        assert!(lease.is_mapped() && lease.lease_id() != 0);
        assert!(s.is_mapped(lease.as_ptr()));
        assert!(s.is_mapped(lease.as_ptr().wrapping_add(lease.len() - 1)));
    }

    let fetched = s.fetch(&d.file_uri("large"), None).await.unwrap();
    assert!(fetched.parts.len() > 1, "{} parts", fetched.parts.len());
    assert_exact(&fetched, 0, &large);
    for part in &fetched.parts {
        assert!(part.is_mapped() && s.is_mapped(part.as_ptr()));
    }

    for range in [10..90_000u64, 99_999..100_000, 0..0] {
        let fetched = s.fetch(&d.file_uri("small"), Some(range.clone())).await;
        let want = &small[range.start as usize..range.end as usize];
        assert_exact(&fetched.unwrap(), range.start, want);
    }
    let range = (MIB as u64 - 7)..(4 * MIB as u64 + 9);
    let fetched = s.fetch(&d.file_uri("large"), Some(range.clone())).await;
    assert_exact(
        &fetched.unwrap(),
        range.start,
        &large[range.start as usize..range.end as usize],
    );
    let fetched = s
        .fetch(&d.file_uri("large"), Some(5 * MIB as u64..u64::MAX))
        .await;
    assert_exact(&fetched.unwrap(), 5 * MIB as u64, &large[5 * MIB..]);

    write_file(d.root(), "empty", b"");
    let empty = tokio::time::timeout(Duration::from_secs(5), s.fetch(&d.file_uri("empty"), None))
        .await
        .expect("an empty object is answered")
        .unwrap();
    assert!(empty.parts.is_empty() && empty.meta.size == 0);

    let error = s.fetch(&d.file_uri("missing"), None).await.unwrap_err();
    assert!(error.is_not_found(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_delivery_is_byte_exact_and_owned() {
    let d = daemon().await;
    let large = pattern(3 * MIB + 5, 3);
    write_file(d.root(), "large", &large);
    let s = session(&d, Delivery::Stream).await;
    assert!(!s.shared_memory());
    let fetched = s.fetch(&d.file_uri("large"), None).await.unwrap();
    assert_exact(&fetched, 0, &large);
    assert!(
        fetched
            .parts
            .iter()
            .all(|p| !p.is_mapped() && p.lease_id() == 0)
    );
    let range = 17..(2 * MIB as u64 + 1);
    let fetched = s.fetch(&d.file_uri("large"), Some(range.clone())).await;
    assert_exact(&fetched.unwrap(), 17, &large[17..range.end as usize]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_leases_releases_them_and_parts_stream_in_order() {
    let d = daemon().await;
    let large = pattern(5 * MIB, 4);
    write_file(d.root(), "large", &large);
    let s = session(&d, Delivery::SharedMemory).await;
    let uris: Vec<String> = (0..3).map(|_| d.file_uri("large")).collect();
    let mut held = Vec::new();
    for (index, result) in futures::StreamExt::collect::<Vec<_>>(s.fetch_many(uris, true)).await {
        let fetched = result.unwrap();
        assert_exact(&fetched, 0, &large);
        held.push((index, fetched));
    }
    assert_eq!(d.leased_bytes().await, 3.0 * large.len() as f64);
    held.truncate(1);
    d.wait_leased(large.len() as f64, Duration::from_secs(1))
        .await;

    // Parts one by one: each can be read and dropped before the next.
    let mut parts = s.fetch_parts(&d.file_uri("large"), None).await.unwrap();
    assert_eq!(parts.meta().size, large.len() as u64);
    let mut offset = 0;
    while let Some(part) = futures::StreamExt::next(&mut parts).await {
        let part = part.unwrap();
        let at = part.object_offset() as usize;
        assert_eq!(at, offset);
        assert!(*part == large[at..at + part.len()]);
        offset += part.len();
    }
    assert_eq!(offset, large.len());
    drop(held);
    d.wait_leased(0.0, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_client_releases_its_leases() {
    let d = daemon().await;
    write_file(d.root(), "a", &pattern(3 * MIB, 5));
    write_file(d.root(), "b", &pattern(1000, 6));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lease-holder"))
        .arg(d.address())
        .args([d.file_uri("a"), d.file_uri("b")])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("lease-holder answers")
        .unwrap()
        .expect("a line");
    let total = 3 * MIB + 1000;
    assert_eq!(line, format!("holding {total}"));
    assert_eq!(d.leased_bytes().await, total as f64);
    let pid = child.id().unwrap() as i32;
    // SAFETY: kill(2) on the pid of a child this test owns and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    child.wait().await.unwrap();
    d.wait_leased(0.0, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemon_fails_fetches_and_leases_stay_readable() {
    let mut d = tokio::task::spawn_blocking(|| DaemonProcess::spawn(&[]))
        .await
        .unwrap();
    let data = pattern(200_000, 7);
    write_file(&d.root, "a", &data);
    let uri = format!("file://{}/a", d.root.display());
    let client = Client::connect(&d.address()).await.unwrap();
    let options = SessionOptions {
        delivery: Delivery::SharedMemory,
        ..Default::default()
    };
    let s = client.session(options).await.unwrap();
    let held = s.fetch(&uri, None).await.unwrap();
    assert!(held.parts[0].is_mapped());
    d.signal(libc::SIGKILL);
    let d = tokio::task::spawn_blocking(move || {
        d.wait_exit(Duration::from_secs(10));
        d
    })
    .await
    .unwrap();
    let error = tokio::time::timeout(Duration::from_secs(5), s.fetch(&uri, None))
        .await
        .expect("the fetch fails instead of hanging")
        .unwrap_err();
    assert!(error.is_unavailable(), "{error}");
    assert!(error.to_string().contains(&d.address()), "{error}");
    assert_exact(&held, 0, &data);
    drop(s);
    assert_exact(&held, 0, &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_with_every_delivery() {
    let d = daemon().await;
    for i in 0..12 {
        write_file(d.root(), &format!("bench/{i:02}"), &pattern(50_000 + i, 8));
    }
    let total: usize = (0..12).map(|i| 50_000 + i).sum();
    let prefix = d.file_uri("bench/");
    for (delivery, mode) in [
        ("shm", "Session, shared memory"),
        ("stream", "Session, stream delivery"),
        ("read", "Read per object"),
    ] {
        let output = tokio::process::Command::new(bin("sluice"))
            .args(["--address", &d.address(), "bench", &prefix])
            .args(["--concurrency", "4", "--delivery", delivery])
            .env_remove("SLUICE_ADDRESS")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert!(
            output.status.success(),
            "{delivery}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.lines().next().unwrap().ends_with(mode), "{stdout}");
        let passes: Vec<&str> = stdout.lines().filter(|l| l.starts_with("pass ")).collect();
        assert_eq!(passes.len(), 2, "{stdout}");
        for (n, line) in passes.iter().enumerate() {
            let head = format!("pass {}: 12 objects, {total} bytes, ", n + 1);
            assert!(line.starts_with(&head), "{delivery}: {line}");
        }
    }
    d.wait_leased(0.0, Duration::from_secs(1)).await;
}
