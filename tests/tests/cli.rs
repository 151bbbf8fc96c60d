//! The `sluice` command-line tool against an in-process daemon.
//!
//! The binary is the one `cargo build --workspace` put next to this test's
//! directory (`target/debug/sluice`); it runs as a child process with
//! `--address` pointing at the test daemon's socket.

use std::path::Path;
use std::process::Output;

use sluice_tests::cli::stdout_of as ok;
use sluice_tests::daemon::{TestDaemon, bin};

/// Runs `sluice --address <daemon> <args>` in `cwd`.
async fn sluice_in(daemon: &TestDaemon, cwd: &Path, args: &[&str]) -> Output {
    let address = daemon.address();
    let all: Vec<&str> = ["--address", address.as_str()]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    sluice_tests::cli::sluice_in(Some(cwd), &all).await
}

async fn sluice(daemon: &TestDaemon, args: &[&str]) -> Output {
    sluice_in(daemon, daemon.root(), args).await
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("utf-8 output")
}

/// Deterministic bytes that make misplaced ranges visible.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 253) as u8).collect()
}

fn write_file(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

#[tokio::test]
async fn put_then_get_and_cat_are_byte_exact() {
    let daemon = TestDaemon::start().await;
    let local = tempfile::tempdir().unwrap();
    // Several 1 MiB upload chunks and a ragged tail.
    let data = pattern(3 * (1 << 20) + 4321);
    let source = local.path().join("source.bin");
    std::fs::write(&source, &data).unwrap();
    let uri = daemon.file_uri("up/data.bin");

    ok(sluice(&daemon, &["put", source.to_str().unwrap(), &uri]).await);
    assert_eq!(
        std::fs::read(daemon.root().join("up/data.bin")).unwrap(),
        data
    );

    let copy = local.path().join("copy.bin");
    ok(sluice(&daemon, &["get", &uri, copy.to_str().unwrap()]).await);
    assert_eq!(std::fs::read(&copy).unwrap(), data);

    assert_eq!(ok(sluice(&daemon, &["cat", &uri]).await), data);
    assert_eq!(ok(sluice(&daemon, &["get", &uri, "-"]).await), data);

    // No FILE: the last key segment, in the working directory.
    ok(sluice_in(&daemon, local.path(), &["get", &uri]).await);
    assert_eq!(std::fs::read(local.path().join("data.bin")).unwrap(), data);
}

#[tokio::test]
async fn ranged_get_returns_the_range() {
    let daemon = TestDaemon::start().await;
    let data = pattern(100_000);
    write_file(daemon.root(), "r.bin", &data);
    let uri = daemon.file_uri("r.bin");

    let middle = ok(sluice(
        &daemon,
        &["get", &uri, "-", "--offset", "1000", "--length", "5000"],
    )
    .await);
    assert_eq!(middle, &data[1000..6000]);
    let tail = ok(sluice(&daemon, &["get", &uri, "-", "--offset", "99990"]).await);
    assert_eq!(tail, &data[99_990..]);
    let head = ok(sluice(&daemon, &["get", &uri, "-", "--length", "10"]).await);
    assert_eq!(head, &data[..10]);
}

#[tokio::test]
async fn ls_lists_levels_and_everything_below() {
    let daemon = TestDaemon::start().await;
    for (rel, len) in [("d/a", 1), ("d/b/1", 22), ("d/b/2", 333), ("d/c", 4444)] {
        write_file(daemon.root(), rel, &pattern(len));
    }
    write_file(daemon.root(), "elsewhere", b"x");
    let prefix = daemon.file_uri("d/");
    let uri = |rel: &str| daemon.file_uri(rel);

    let all = text(ok(sluice(&daemon, &["ls", "-r", &prefix]).await));
    let expected = [uri("d/a"), uri("d/b/1"), uri("d/b/2"), uri("d/c")];
    assert_eq!(all.lines().collect::<Vec<_>>(), expected);

    let level = text(ok(sluice(&daemon, &["ls", &prefix]).await));
    assert_eq!(
        level.lines().collect::<Vec<_>>(),
        [uri("d/a"), uri("d/b/"), uri("d/c")]
    );

    let long = text(ok(sluice(&daemon, &["ls", "-l", "-r", &prefix]).await));
    let sizes: Vec<&str> = long
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(sizes, ["1", "22", "333", "4444"]);
    let uris: Vec<&str> = long
        .lines()
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(uris, expected);
}

#[tokio::test]
async fn rm_then_stat_fails_naming_the_uri() {
    let daemon = TestDaemon::start().await;
    write_file(daemon.root(), "gone.bin", b"bye");
    let uri = daemon.file_uri("gone.bin");

    let stat = text(ok(sluice(&daemon, &["stat", &uri]).await));
    assert!(stat.contains("size:          3"), "{stat}");
    ok(sluice(&daemon, &["rm", &uri]).await);
    assert!(!daemon.root().join("gone.bin").exists());

    let output = sluice(&daemon, &["stat", &uri]).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(output.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(&uri), "{stderr}");
    assert!(output.stdout.is_empty());

    for rel in ["tree/1", "tree/2", "tree/sub/3"] {
        write_file(daemon.root(), rel, b"t");
    }
    ok(sluice(&daemon, &["rm", "-r", &daemon.file_uri("tree/")]).await);
    let left = text(ok(sluice(
        &daemon,
        &["ls", "-r", &daemon.file_uri("tree/")],
    )
    .await));
    assert_eq!(left, "");
}

#[tokio::test]
async fn bench_reports_every_pass() {
    let daemon = TestDaemon::start().await;
    for i in 0..20 {
        write_file(
            daemon.root(),
            &format!("bench/{i:02}"),
            &pattern(10_000 + i),
        );
    }
    let total: usize = (0..20).map(|i| 10_000 + i).sum();
    let prefix = daemon.file_uri("bench/");
    for extra in [&[][..], &["--read-many-batch", "8"][..]] {
        let mut args = vec!["bench", &*prefix, "--concurrency", "4"];
        args.extend_from_slice(extra);
        let out = text(ok(sluice(&daemon, &args).await));
        let passes: Vec<&str> = out.lines().filter(|l| l.starts_with("pass ")).collect();
        assert_eq!(passes.len(), 2, "{out}");
        for (n, line) in passes.iter().enumerate() {
            let head = format!("pass {}: 20 objects, {total} bytes, ", n + 1);
            assert!(line.starts_with(&head), "{line}");
            assert!(
                line.contains(" MB/s, ") && line.ends_with(" objects/s"),
                "{line}"
            );
        }
    }
}

#[tokio::test]
async fn usage_and_connection_errors_have_distinct_exit_codes() {
    let daemon = TestDaemon::start().await;
    let usage = sluice(&daemon, &["stat"]).await;
    assert_eq!(usage.status.code(), Some(2));

    let missing = daemon.root().join("no-daemon.sock");
    let address = format!("unix://{}", missing.display());
    let output = tokio::process::Command::new(bin("sluice"))
        .args(["--address", &address, "stat", "file:///x"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(output.stderr);
    assert!(stderr.contains(&address), "{stderr}");
}
