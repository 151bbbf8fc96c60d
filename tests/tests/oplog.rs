//! The operation log through a real daemon: what a client read is what the
//! log says the backend did (a large object as the RangeEngine's ranged
//! parts), and `sluice oplog stats` and `sluice oplog replay` read it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use sluice_client::Client;
use sluice_engine::ByteSize;
use sluice_storage::oplog::format::{Record, read_logs};
use sluice_tests::cli::{sluice_in, text_of as ok};
use sluice_tests::daemon::TestDaemon;
use sluice_tests::grpc::{http_get, metric, pattern};

const PART: u64 = 1 << 20;
/// Three whole parts and a half one.
const LARGE: usize = 3 * PART as usize + PART as usize / 2;

/// The objects read: name and size.
fn objects() -> [(&'static str, usize); 4] {
    [
        ("large.bin", LARGE),
        ("a.bin", 1000),
        ("dir/b.bin", 70_000),
        ("dir/c.bin", 1),
    ]
}

fn write_set(root: &Path, dir: &str) {
    for (i, (name, len)) in objects().into_iter().enumerate() {
        let path = root.join(dir).join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, pattern(len, i as u8)).unwrap();
    }
}

async fn sluice(args: &[&str]) -> Output {
    sluice_in(None, args).await
}

/// The summary line of `op`: count, errors, bytes.
fn summary_row(text: &str, op: &str) -> (u64, u64, u64) {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(op))
        .unwrap_or_else(|| panic!("no {op} row in:\n{text}"));
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(3)
        .map(|v| v.parse().unwrap())
        .collect();
    (n[0], n[1], n[2])
}

/// Waits until the daemon counts at least `want` records written.
async fn wait_records(daemon: &TestDaemon, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = http_get(daemon.http(), "/metrics").await.1;
        let now = metric(&body, "sluice_oplog_records_total");
        if now >= want {
            return;
        }
        assert!(Instant::now() < deadline, "{now} records after 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_logged_summarized_and_replayed() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("ops.csv.zst");
    let daemon = TestDaemon::start_with(|c| {
        c.oplog.enabled = true;
        c.oplog.path = log.clone();
        // Fixed parts: the large object is four ranged GETs.
        c.engine.adaptive_part_size = false;
        c.engine.part_size = ByteSize(PART);
    })
    .await;
    write_set(daemon.root(), "set");
    let client = Client::connect(&daemon.address()).await.unwrap();
    let stat_uri = daemon.file_uri("set/dir/c.bin");
    client.stat(&stat_uri).await.unwrap();
    let mut uris = Vec::new();
    for (i, (name, len)) in objects().into_iter().enumerate() {
        let uri = daemon.file_uri(&format!("set/{name}"));
        let data = client.read_to_bytes(&uri, None).await.unwrap();
        assert_eq!(data, pattern(len, i as u8), "{uri}");
        uris.push((uri, len as u64));
    }
    wait_records(&daemon, 5.0).await;
    let recorded_prefix = daemon.file_uri("set/");
    daemon.stop().await.unwrap();

    let read = read_logs(std::slice::from_ref(&log)).unwrap();
    assert!(read.cut_short.is_empty(), "{:?}", read.cut_short);
    check_records(&read.records, &uris, &stat_uri);
    let gets = read.records.iter().filter(|r| r.op == "GET").count() as u64;
    let stats = read.records.iter().filter(|r| r.op == "STAT").count() as u64;
    let total: u64 = uris.iter().map(|(_, len)| len).sum();

    let log_arg = log.to_str().unwrap();
    let text = ok(sluice(&["oplog", "stats", log_arg]).await);
    assert_eq!(summary_row(&text, "GET"), (gets, 0, total), "{text}");
    assert_eq!(summary_row(&text, "STAT").0, stats, "{text}");

    // The same objects under another prefix of another daemon.
    let other = TestDaemon::start().await;
    write_set(other.root(), "copy");
    let to = other.file_uri("copy/");
    let address = other.address();
    let text = ok(sluice(&[
        "--address",
        &address,
        "oplog",
        "replay",
        log_arg,
        "--to",
        &to,
        "--speed",
        "4",
    ])
    .await);
    assert!(
        text.contains(&format!("{recorded_prefix} -> {to}")),
        "{text}"
    );
    assert_eq!(summary_row(&text, "GET"), (gets, 0, total), "{text}");
    assert_eq!(summary_row(&text, "STAT"), (stats, 0, 0), "{text}");
    assert!(text.contains("lag behind schedule"), "{text}");
}

/// Each object's GETs cover it exactly once; the large one in parts; the
/// stat is there; nothing failed.
fn check_records(records: &[Record], uris: &[(String, u64)], stat_uri: &str) {
    let mut ranges: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for r in records {
        assert_eq!(r.error, "", "{r:?}");
        assert_eq!((&*r.endpoint, &*r.client_id), ("file://", "sluiced"));
        if r.op == "GET" {
            let start = r.range_offset.unwrap_or(0);
            ranges.entry(&r.file).or_default().push((start, r.bytes));
        }
    }
    assert!(
        records.iter().any(|r| r.op == "STAT" && r.file == stat_uri),
        "no STAT of {stat_uri}"
    );
    assert_eq!(ranges.len(), uris.len(), "{ranges:?}");
    for (uri, len) in uris {
        let mut parts = ranges[uri.as_str()].clone();
        parts.sort_unstable();
        let mut at = 0;
        for (start, bytes) in &parts {
            assert_eq!(*start, at, "{uri}: {parts:?}");
            at += bytes;
        }
        assert_eq!(at, *len, "{uri}: {parts:?}");
        if *len == LARGE as u64 {
            let starts: Vec<u64> = parts.iter().map(|p| p.0).collect();
            assert_eq!(starts, [0, PART, 2 * PART, 3 * PART]);
        }
    }
}
