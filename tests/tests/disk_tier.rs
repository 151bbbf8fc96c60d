//! The disk tier through a real daemon process: a dataset three times the
//! RAM budget read again from disk, not from the backend; and after a
//! SIGKILL mid write-back, a damaged file and an object changed while the
//! daemon was down, every object still byte-exact.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_tests::daemon::DaemonProcess;
use sluice_tests::grpc::{connect, pattern, read};

const MIB: usize = 1 << 20;

/// A daemon with a 16 MiB arena and a disk tier in `disk`.
fn daemon(disk: &Path, work: &Path) -> DaemonProcess {
    let config = work.join("sluiced.toml");
    std::fs::write(
        &config,
        format!(
            "[cache]\nmemory_budget = \"16MiB\"\nsegment_size = \"16MiB\"\n\
             [cache.disk]\ndirs = [{:?}]\n",
            disk.display().to_string()
        ),
    )
    .unwrap();
    DaemonProcess::spawn(&["--config", config.to_str().unwrap()])
}

async fn wait_metric(d: &DaemonProcess, series: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = d.metric(series).await;
        if v >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed at {v}, below {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write_objects(root: &Path, n: usize, seed: u8) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let data = pattern(MIB + 4096 * i + 7, seed.wrapping_add(i as u8));
            let path = root.join(format!("o-{i}"));
            std::fs::write(&path, &data).unwrap();
            (format!("file://{}", path.display()), data)
        })
        .collect()
}

const GETS: &str = "sluice_backend_requests_total{backend=\"file\",operation=\"get\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_three_times_ram_is_read_again_from_disk() {
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk");
    let d = daemon(&disk, work.path());
    d.wait_log("disk tier index loaded", Duration::from_secs(30));
    let objects = write_objects(&d.root, 48, 1);
    let mut client = connect(&d.socket).await;
    for (uri, data) in &objects {
        let (_, got) = read(&mut client, uri, None).await.unwrap();
        assert!(got == *data, "{uri}");
    }
    wait_metric(&d, "sluice_disk_writes_total", 48.0).await;
    let gets = d.metric(GETS).await;
    for (uri, data) in &objects {
        let (_, got) = read(&mut client, uri, None).await.unwrap();
        assert!(got == *data, "{uri}, second pass");
    }
    assert_eq!(
        d.metric(GETS).await,
        gets,
        "the second pass fetched from the backend"
    );
    let hits = d.metric("sluice_disk_hits_total").await;
    assert!(hits >= 30.0, "disk hits {hits}");
    assert!(
        d.metric("sluice_rpc_reads_total{source=\"disk\"}").await >= 30.0,
        "reads report the disk as their source"
    );
}

/// The data file of the disk entry of `uri`.
fn entry_file(disk: &Path, uri: &str) -> Option<PathBuf> {
    std::fs::read_dir(disk).unwrap().flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        let id = name.strip_suffix(".meta")?;
        let meta = std::fs::read_to_string(e.path()).ok()?;
        meta.contains(&format!("\"uri\":\"{uri}\""))
            .then(|| disk.join(format!("{id}.data")))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_damage_and_changes_every_object_is_exact() {
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk");
    let mut d = daemon(&disk, work.path());
    d.wait_log("disk tier index loaded", Duration::from_secs(30));
    let mut objects = write_objects(&d.root, 24, 7);
    let mut client = connect(&d.socket).await;
    for (uri, data) in &objects[..12] {
        assert!(read(&mut client, uri, None).await.unwrap().1 == *data);
    }
    wait_metric(&d, "sluice_disk_writes_total", 12.0).await;
    for (uri, data) in &objects[12..] {
        assert!(read(&mut client, uri, None).await.unwrap().1 == *data);
    }
    // Killed with the second half's write-back queued or under way.
    drop(client);
    d.kill();
    // While it is down: an object changes at the backend, and a file of
    // the tier is damaged.
    let changed = pattern(2 * MIB + 1, 99);
    std::fs::write(d.root.join("o-3"), &changed).unwrap();
    objects[3].1 = changed;
    let damaged = entry_file(&disk, &objects[5].0).expect("o-5 was written before the kill");
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[MIB / 2] ^= 0x01;
    std::fs::write(&damaged, bytes).unwrap();

    d.restart();
    d.wait_log("disk tier index loaded", Duration::from_secs(30));
    let mut client = connect(&d.socket).await;
    for pass in 0..2 {
        for (uri, data) in &objects {
            let (meta, got) = read(&mut client, uri, None).await.unwrap();
            assert_eq!(meta.size, data.len() as u64, "{uri}");
            assert!(
                got == *data,
                "{uri} differs after the restart (pass {pass})"
            );
        }
    }
    assert!(
        d.metric("sluice_disk_corrupt_total").await >= 1.0,
        "the damaged file was found"
    );
    assert!(
        d.metric("sluice_disk_stale_total").await >= 1.0,
        "the changed object's entry was dropped"
    );
    assert!(
        d.metric("sluice_disk_hits_total").await >= 10.0,
        "the tier served after the restart"
    );
}
