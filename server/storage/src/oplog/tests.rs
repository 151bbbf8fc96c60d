use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;

use super::writer::FileNames;
use super::*;
use crate::file::FileStorage;
use crate::{GetOptions, ListOptions, ObjectUri, Storage, Version, read_exact_at};

fn config(dir: &Path) -> OpLogConfig {
    OpLogConfig {
        enabled: true,
        path: dir.join("logs/ops.csv.zst"),
        ..OpLogConfig::default()
    }
}

fn read(paths: &[PathBuf]) -> Vec<Record> {
    let read = sluice_oplog::read_logs(paths).expect("log reads");
    assert!(read.cut_short.is_empty(), "{:?}", read.cut_short);
    read.records
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn records_round_trip_through_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let log = OpLog::new(&c).unwrap();
    for i in 0..100u64 {
        let mut op = log
            .begin(op::GET, format!("s3://b/k{i}"))
            .unwrap()
            .endpoint("s3://")
            .range(i * 10, Some(10));
        op.first_byte();
        if i % 10 == 0 {
            op.failed(3, "throttled:\tslow\ndown");
        } else {
            op.done(10);
        }
    }
    log.close();
    assert_eq!(mode(&c.path), 0o600);
    assert_eq!(mode(c.path.parent().unwrap()), 0o700);
    let records = read(std::slice::from_ref(&c.path));
    assert_eq!(records.len(), 100);
    assert_eq!(log.metrics().records.get(), 100);
    assert_eq!(log.metrics().dropped_total(), 0);
    let r = &records[10];
    assert_eq!((r.file.as_str(), &*r.endpoint), ("s3://b/k10", "s3://"));
    assert_eq!((r.bytes, r.error.as_str()), (3, "throttled: slow down"));
    assert_eq!((r.range_offset, r.range_length), (Some(100), Some(10)));
    assert!(r.start <= r.first_byte.unwrap() && r.first_byte.unwrap() <= r.end);
    assert_eq!((&*records[11].op, records[11].error.as_str()), ("GET", ""));
    // Sequential operations share slot 0.
    assert!(records.iter().all(|r| r.thread == 0));
}

#[test]
fn files_rotate_complete_and_the_oldest_go() {
    let dir = tempfile::tempdir().unwrap();
    let c = OpLogConfig {
        max_file_bytes: 4 << 10,
        max_files: 3,
        ..config(dir.path())
    };
    let log = OpLog::new(&c).unwrap();
    let n = 500u64;
    for i in 0..n {
        log.begin(op::STAT, format!("file:///data/object-{i:05}"))
            .unwrap()
            .done(0);
    }
    log.close();
    let rotated = log.metrics().files_rotated.get();
    assert!(rotated >= 5, "only {rotated} rotations");
    let names = FileNames::new(&c.path);
    let kept = names.list_rotated().unwrap();
    // The current file and the two newest rotated ones.
    let seqs: Vec<u64> = kept.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [rotated - 1, rotated]);
    let mut files: Vec<PathBuf> = kept.into_iter().map(|(_, p)| p).collect();
    files.push(c.path.clone());
    for f in &files {
        // A complete zstd stream: decoding fails on an unfinished frame.
        let text = zstd::decode_all(std::fs::File::open(f).unwrap()).expect("complete stream");
        assert!(text.starts_with(sluice_oplog::HEADER.as_bytes()));
        assert_eq!(mode(f), 0o600);
    }
    // What is kept is the newest records, without a gap.
    let records = read(&files);
    let last = records.last().unwrap();
    assert_eq!(last.file, format!("file:///data/object-{:05}", n - 1));
    let number = |r: &Record| -> u64 { r.file["file:///data/object-".len()..].parse().unwrap() };
    let first = number(&records[0]);
    assert!(first > 0, "nothing was deleted");
    assert!(
        records
            .iter()
            .enumerate()
            .all(|(i, r)| number(r) == first + i as u64)
    );
    assert_eq!(records.len() as u64, n - first);
}

#[test]
fn a_file_left_by_an_earlier_run_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let first = OpLog::new(&c).unwrap();
    first.begin(op::PUT, "file:///a").unwrap().done(1);
    first.close();
    let second = OpLog::new(&c).unwrap();
    second.begin(op::PUT, "file:///b").unwrap().done(2);
    second.close();
    let earlier = FileNames::new(&c.path).rotated(1);
    assert_eq!(read(std::slice::from_ref(&earlier))[0].file, "file:///a");
    assert_eq!(read(std::slice::from_ref(&c.path))[0].file, "file:///b");
}

/// A log whose queue holds `queue` records and whose writer has not
/// started: the queue fills as it would behind a stalled disk.
fn stalled(dir: &Path, queue: usize, on_full: OnFull) -> (OpLog, OpLogConfig) {
    let c = OpLogConfig {
        queue,
        on_full,
        enabled: false,
        ..config(dir)
    };
    let log = OpLog::new(&c).unwrap();
    log.inner
        .enabled
        .store(true, std::sync::atomic::Ordering::Relaxed);
    (log, c)
}

#[test]
fn a_full_queue_drops_and_counts_never_silently() {
    let dir = tempfile::tempdir().unwrap();
    let (log, c) = stalled(dir.path(), 8, OnFull::Drop);
    for i in 0..20 {
        log.begin(op::GET, format!("file:///{i}")).unwrap().done(1);
    }
    let dropped = |m: &OpLogMetrics, reason| m.dropped.get_or_create(&DropLabels { reason }).get();
    assert_eq!(dropped(log.metrics(), DropReason::queue_full), 12);
    // The writer catches up; what was queued is written.
    log.set_enabled(true).unwrap();
    log.close();
    assert_eq!(log.metrics().records.get(), 8);
    assert_eq!(read(std::slice::from_ref(&c.path)).len(), 8);
    // An operation that ends after the close is counted as such.
    log.push(read(std::slice::from_ref(&c.path)).remove(0));
    assert_eq!(dropped(log.metrics(), DropReason::closed), 1);
    assert_eq!(
        log.metrics().records.get() + log.metrics().dropped_total(),
        21
    );
}

#[test]
fn block_waits_for_room_then_drops() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = stalled(dir.path(), 2, OnFull::Block);
    let began = Instant::now();
    for i in 0..4 {
        log.begin(op::GET, format!("file:///{i}")).unwrap().done(1);
    }
    // Two waited the whole block_timeout before being dropped.
    assert!(began.elapsed() >= 2 * log.inner.config.block_timeout);
    assert_eq!(log.metrics().dropped_total(), 2);
    log.set_enabled(true).unwrap();
    log.close();
    assert_eq!(log.metrics().records.get(), 2);
}

#[test]
fn a_blocked_push_succeeds_once_the_writer_takes() {
    let queue = Arc::new(queue::Queue::new(1));
    let sample = |i: u16| Record {
        thread: i,
        op: "GET".into(),
        client_id: "".into(),
        n_objects: 1,
        bytes: 0,
        endpoint: "".into(),
        file: String::new(),
        error: String::new(),
        start: std::time::UNIX_EPOCH,
        first_byte: None,
        end: std::time::UNIX_EPOCH,
        range_offset: None,
        range_length: None,
    };
    queue.push(sample(0), Duration::ZERO).unwrap();
    assert_eq!(
        queue.push(sample(1), Duration::ZERO),
        Err(queue::Refused::Full)
    );
    let pusher = {
        let queue = queue.clone();
        std::thread::spawn(move || queue.push(sample(2), Duration::from_secs(60)))
    };
    let mut taken = std::collections::VecDeque::new();
    queue.take(&mut taken, Duration::from_secs(60));
    assert_eq!(pusher.join().unwrap(), Ok(()));
    taken.clear();
    queue.take(&mut taken, Duration::from_secs(60));
    assert_eq!(taken.pop_front().map(|r| r.thread), Some(2));
}

#[test]
fn slots_are_the_lowest_free() {
    let mut s = Slots::default();
    assert_eq!([s.take(), s.take(), s.take()], [0, 1, 2]);
    s.give_back(1);
    s.give_back(0);
    assert_eq!([s.take(), s.take(), s.take()], [0, 1, 3]);
}

#[test]
fn off_means_nothing_recorded_and_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = OpLogConfig {
        enabled: false,
        ..config(dir.path())
    };
    let log = OpLog::new(&c).unwrap();
    assert!(log.begin(op::GET, "file:///x").is_none());
    assert!(!c.path.parent().unwrap().exists());
    log.set_enabled(true).unwrap();
    log.begin(op::GET, "file:///x").unwrap().done(0);
    log.set_enabled(false).unwrap();
    assert!(log.begin(op::GET, "file:///y").is_none());
    log.close();
    assert!(log.set_enabled(true).is_err());
    assert_eq!(read(std::slice::from_ref(&c.path)).len(), 1);
}

#[tokio::test]
async fn every_backend_operation_is_recorded() {
    let data = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(data.path()).unwrap();
    let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    // A name with a tab and a newline: kept exact in the log.
    let odd = "odd\tname\nhere";
    std::fs::write(root.join(odd), &body).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let c = config(logs.path());
    let log = OpLog::new(&c).unwrap();
    let inner: Arc<dyn Storage> = Arc::new(FileStorage::new(std::slice::from_ref(&root)).unwrap());
    let s = RecordingStorage::new(inner, log.clone());
    let uri = ObjectUri::parse(&format!("file://{}/{odd}", root.display())).unwrap();

    let meta = s.head(&uri).await.unwrap();
    let opts = GetOptions {
        range: Some(100..1100),
        ..Default::default()
    };
    let got = s.get(&uri, opts).await.unwrap();
    let n: usize = got
        .body
        .map(|c| c.unwrap().len())
        .collect::<Vec<_>>()
        .await
        .iter()
        .sum();
    assert_eq!(n, 1000);
    // Dropped after nothing was read.
    drop(s.get(&uri, GetOptions::default()).await.unwrap());
    let version = Version::of(&meta);
    let part = read_exact_at(&s, &uri, 2000, &version, 500).await.unwrap();
    assert_eq!(part, &body[2000..2500]);
    let prefix = ObjectUri::parse(&format!("file://{}/", root.display())).unwrap();
    let list = ListOptions {
        page_size: 10,
        ..Default::default()
    };
    s.list(&prefix, &list).await.unwrap();
    let other = prefix.with_key(format!("{}/new", root.display()));
    s.put(&other, Bytes::from_static(b"12345")).await.unwrap();
    s.delete(&other).await.unwrap();
    assert!(s.head(&other).await.is_err());
    log.close();

    let records = read(std::slice::from_ref(&c.path));
    let ops: Vec<&str> = records.iter().map(|r| &*r.op).collect();
    assert_eq!(
        ops,
        ["STAT", "GET", "GET", "GET", "LIST", "PUT", "DELETE", "STAT"]
    );
    let bytes: Vec<u64> = records.iter().map(|r| r.bytes).collect();
    assert_eq!(bytes, [0, 1000, 0, 500, 0, 5, 0, 0]);
    assert_eq!(records[0].file, uri.to_string());
    assert!(records.iter().all(|r| &*r.endpoint == "file://"));
    assert_eq!(
        (records[1].range_offset, records[1].range_length),
        (Some(100), Some(1000))
    );
    assert!(records[1].first_byte.is_some());
    assert_eq!(records[2].error, "canceled after 0 of 10000 bytes");
    assert_eq!(
        (records[3].range_offset, records[3].range_length),
        (Some(2000), Some(500))
    );
    assert_eq!(records[4].n_objects, 1);
    assert!(
        records[7].error.starts_with("not found"),
        "{}",
        records[7].error
    );
}
