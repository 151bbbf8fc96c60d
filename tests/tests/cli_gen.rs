//! `sluice gen` and `sluice tfrecord index` against an in-process daemon.
//!
//! The binary is the one `cargo build -p sluice-client --bins` put next to
//! this test's directory; it writes through the daemon to its file root,
//! where the test reads the files back.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Output;

use sluice_tests::cli::{sluice_in, text_of as ok};
use sluice_tests::daemon::TestDaemon;

async fn sluice(daemon: &TestDaemon, args: &[&str]) -> Output {
    let address = daemon.address();
    let all: Vec<&str> = ["--address", address.as_str()]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    sluice_in(None, &all).await
}

/// The files of a directory by name.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            (name, std::fs::read(entry.path()).unwrap())
        })
        .collect()
}

/// The number after `label ` in the report, e.g. `measured 1.97`.
fn after(report: &str, label: &str) -> Vec<f64> {
    report
        .split(label)
        .skip(1)
        .map(|rest| {
            let number: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            number.parse().unwrap()
        })
        .collect()
}

#[tokio::test]
async fn gen_is_deterministic_sized_and_hits_the_ratios() {
    let daemon = TestDaemon::start().await;
    let run = |dir: &'static str, concurrency: &'static str| {
        let prefix = daemon.file_uri(dir);
        let daemon = &daemon;
        async move {
            let args = [
                "gen",
                &prefix,
                "--count",
                "12",
                "--size",
                "64KiB,96KiB,128KiB",
                "--compress-ratio",
                "2",
                "--dedup-ratio",
                "3",
                "--seed",
                "7",
                "--concurrency",
                concurrency,
            ];
            ok(sluice(daemon, &args).await)
        }
    };
    let report = run("a", "1").await;
    run("b", "8").await;

    let a = files(&daemon.root().join("a"));
    assert_eq!(a, files(&daemon.root().join("b")), "same seed, same bytes");
    let names: Vec<&str> = a.keys().map(String::as_str).collect();
    assert_eq!(names.len(), 12);
    assert_eq!(
        (names[0], names[11]),
        ("sample_000000.bin", "sample_000011.bin")
    );
    let sizes: Vec<usize> = a.values().map(Vec::len).collect();
    assert_eq!(sizes[..4], [64 << 10, 96 << 10, 128 << 10, 64 << 10]);
    assert!(
        report.starts_with("wrote 12 objects (12 samples, 1179648 bytes)"),
        "{report}"
    );

    // The report's measurements, within 10 % of what was asked.
    let asked = after(&report, "asked ");
    let measured = after(&report, "measured ");
    assert_eq!(asked, [2.0, 3.0], "{report}");
    for (asked, measured) in asked.iter().zip(&measured) {
        assert!((measured / asked - 1.0).abs() < 0.1, "{report}");
    }
    // And the dedup ratio counted here, on the files' 4 KiB blocks.
    let blocks: Vec<&[u8]> = a.values().flat_map(|f| f.chunks(4096)).collect();
    let distinct: HashSet<&[u8]> = blocks.iter().copied().collect();
    let dedup = blocks.len() as f64 / distinct.len() as f64;
    assert!((dedup / 3.0 - 1.0).abs() < 0.1, "dedup {dedup}");

    // Another seed, other bytes.
    let prefix = daemon.file_uri("c");
    ok(sluice(
        &daemon,
        &[
            "gen", &prefix, "--count", "1", "--size", "64KiB", "--seed", "8",
        ],
    )
    .await);
    assert_ne!(
        files(&daemon.root().join("c"))["sample_000000.bin"],
        a["sample_000000.bin"]
    );
}

#[tokio::test]
async fn streamed_objects_are_deterministic_too() {
    let daemon = TestDaemon::start().await;
    // 9 MiB: past the single-put limit, so streamed in chunks.
    for (dir, concurrency) in [("a", "1"), ("b", "2")] {
        let prefix = daemon.file_uri(dir);
        let args = [
            "gen",
            &prefix,
            "--count",
            "2",
            "--size",
            "9MiB",
            "--format",
            "npy",
            "--compress-ratio",
            "4",
            "--concurrency",
            concurrency,
        ];
        ok(sluice(&daemon, &args).await);
    }
    let a = files(&daemon.root().join("a"));
    assert_eq!(a, files(&daemon.root().join("b")));
    let npy = &a["sample_000000.npy"];
    assert_eq!(npy.len(), 128 + (9 << 20));
    assert_eq!(&npy[..8], b"\x93NUMPY\x01\x00");
}

#[tokio::test]
async fn tfrecord_index_of_generated_shards() {
    let daemon = TestDaemon::start().await;
    let prefix = daemon.file_uri("tf");
    let args = [
        "gen",
        &prefix,
        "--count",
        "2",
        "--format",
        "tfrecord",
        "--records-per-file",
        "7",
        "--size",
        "uniform:1KiB-20KiB",
    ];
    ok(sluice(&daemon, &args).await);
    let shard = daemon.file_uri("tf/shard_000001.tfrecord");
    let len = std::fs::metadata(daemon.root().join("tf/shard_000001.tfrecord"))
        .unwrap()
        .len();
    let index = ok(sluice(&daemon, &["tfrecord", "index", "--verify-crc", &shard]).await);
    let entries: Vec<(u64, u64)> = index
        .lines()
        .map(|line| {
            let (offset, size) = line.split_once(' ').unwrap();
            (offset.parse().unwrap(), size.parse().unwrap())
        })
        .collect();
    assert_eq!(entries.len(), 7);
    assert_eq!(entries[0].0, 0);
    for pair in entries.windows(2) {
        assert_eq!(
            pair[0].0 + pair[0].1,
            pair[1].0,
            "records follow each other"
        );
    }
    let (last_offset, last_size) = entries[6];
    assert_eq!(last_offset + last_size, len);

    // The same index through --out, as an object.
    let out = daemon.file_uri("tf/shard_000001.idx");
    ok(sluice(&daemon, &["tfrecord", "index", &shard, "--out", &out]).await);
    let written = std::fs::read_to_string(daemon.root().join("tf/shard_000001.idx")).unwrap();
    assert_eq!(written, index);

    // A whole prefix: `<object>.idx` beside each shard, nothing else indexed.
    ok(sluice(&daemon, &["tfrecord", "index", "--prefix", &prefix]).await);
    let mut names: Vec<String> = files(&daemon.root().join("tf")).into_keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "shard_000000.tfrecord",
            "shard_000000.tfrecord.idx",
            "shard_000001.idx",
            "shard_000001.tfrecord",
            "shard_000001.tfrecord.idx"
        ]
    );
    let beside = daemon.root().join("tf/shard_000001.tfrecord.idx");
    assert_eq!(std::fs::read_to_string(beside).unwrap(), index);
}
