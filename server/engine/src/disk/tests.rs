//! The disk tier on a real directory: write-back, reload after a restart,
//! damaged entries, the byte budget, a full queue and a failing disk.

use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

fn meta(uri: &str, size: usize, etag: &str) -> ObjectMeta {
    ObjectMeta {
        uri: uri.to_owned(),
        size: size as u64,
        etag: Some(etag.to_owned()),
        last_modified: Some(std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(1_234_567)),
        version: None,
    }
}

fn data(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn config(dir: &Path, max_bytes: u64) -> DiskConfig {
    DiskConfig {
        dirs: vec![dir.to_path_buf()],
        max_bytes: ByteSize(max_bytes),
        write_queue: ByteSize::mib(64),
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn started(config: &DiskConfig) -> Arc<DiskTier> {
    let tier = DiskTier::start(config, DiskMetrics::default())
        .unwrap()
        .unwrap();
    wait_until("the index to load", || tier.is_loaded()).await;
    tier
}

async fn written(tier: &DiskTier, n: u64) {
    wait_until("the writes", || {
        tier.metrics.writes.get() + tier.metrics.errors.get() >= n && tier.queued_bytes() == 0
    })
    .await;
}

async fn read_back(tier: &DiskTier, key: &str) -> Option<Vec<u8>> {
    let entry = tier.lookup(key)?;
    let buf = ReadBuf::aligned(entry.meta().size as usize, 4096);
    let (good, buf) = tier.read(key, &entry, buf).await;
    good.then(|| buf.as_slice().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_survive_a_restart_and_need_revalidation() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 30);
    let objects: Vec<(String, Bytes)> = (0..5)
        .map(|i| (format!("s3://b/k{i}"), data(10_000 + i * 4099, i as u8)))
        .collect();
    {
        let tier = started(&cfg).await;
        for (k, d) in &objects {
            tier.admit(k, &meta(k, d.len(), "e1"), d);
        }
        written(&tier, 5).await;
        assert_eq!(tier.len(), 5);
        let e = tier.lookup(&objects[0].0).unwrap();
        assert!(
            e.fresh(tier.now_ms(), Duration::from_secs(60)),
            "written in this run"
        );
        assert_eq!(
            tier.metrics.bytes.get() as usize,
            objects.iter().map(|(_, d)| d.len()).sum::<usize>()
        );
    }
    let tier = started(&cfg).await;
    assert_eq!(tier.len(), 5);
    for (k, d) in &objects {
        let e = tier.lookup(k).unwrap();
        assert_eq!(e.meta(), meta(k, d.len(), "e1"));
        assert!(
            !e.fresh(tier.now_ms(), Duration::from_secs(3600)),
            "loaded: not validated"
        );
        assert_eq!(read_back(&tier, k).await.as_deref(), Some(&d[..]), "{k}");
    }
    // A rewrite of a key replaces its entry (and its files).
    let (k, _) = &objects[1];
    let new = data(777, 99);
    tier.admit(k, &meta(k, new.len(), "e2"), &new);
    written(&tier, 1).await;
    assert_eq!(read_back(&tier, k).await.as_deref(), Some(&new[..]));
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(files.len(), 2 * 5, "two files per entry, nothing left over");
    // Only the daemon's user can read what it fetched for everyone.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.path()), 0o700);
    assert!(files.iter().all(|f| mode(&f.path()) == 0o600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_entries_are_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 30);
    let keys = ["s3://b/flip", "s3://b/short", "s3://b/nometa", "s3://b/ok"];
    {
        let tier = started(&cfg).await;
        for (i, k) in keys.iter().enumerate() {
            let d = data(20_000, i as u8);
            tier.admit(k, &meta(k, d.len(), "e"), &d);
        }
        written(&tier, 4).await;
        let path = |k: &str| {
            let e = tier.lookup(k).unwrap();
            (
                files::data_path(dir.path(), &e.id),
                dir.path().join(format!("{}.meta", e.id)),
            )
        };
        // A flipped byte: found by the checksum when read.
        let (flip, _) = path(keys[0]);
        let mut bytes = std::fs::read(&flip).unwrap();
        bytes[12_345] ^= 0x40;
        std::fs::write(&flip, bytes).unwrap();
        // Truncated (a crash mid-write): found by its size at load.
        let (short, _) = path(keys[1]);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&short)
            .unwrap()
            .set_len(4096)
            .unwrap();
        // Its meta never landed.
        let (_, meta_file) = path(keys[2]);
        std::fs::remove_file(meta_file).unwrap();
        std::fs::write(dir.path().join("leftover.data.tmp"), b"x").unwrap();
    }
    let tier = started(&cfg).await;
    assert_eq!(
        tier.metrics.corrupt.get(),
        1,
        "the truncated entry, at load"
    );
    assert!(tier.lookup(keys[1]).is_none());
    assert!(tier.lookup(keys[2]).is_none());
    assert_eq!(read_back(&tier, keys[0]).await, None, "checksum mismatch");
    assert_eq!(tier.metrics.corrupt.get(), 2);
    assert!(tier.lookup(keys[0]).is_none(), "removed once found damaged");
    assert_eq!(
        read_back(&tier, keys[3]).await.as_deref(),
        Some(&data(20_000, 3)[..])
    );
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, 2, "only the good entry's files remain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_removes_the_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let tier = started(&config(dir.path(), 100_000)).await;
    for i in 0..3 {
        let k = format!("s3://b/{i}");
        tier.admit(&k, &meta(&k, 40_000, "e"), &data(40_000, i));
        written(&tier, u64::from(i) + 1).await;
        if i == 1 {
            // Used: the older "0" goes first.
            tier.lookup("s3://b/0").unwrap();
        }
    }
    assert_eq!(tier.metrics.evictions.get(), 1);
    assert!(tier.lookup("s3://b/1").is_none());
    assert!(tier.lookup("s3://b/0").is_some() && tier.lookup("s3://b/2").is_some());
    assert_eq!(tier.metrics.bytes.get(), 80_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_skips_and_a_failing_disk_turns_the_tier_off() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DiskConfig {
        write_queue: ByteSize(50_000),
        ..config(dir.path(), 1 << 30)
    };
    let tier = started(&cfg).await;
    let big = data(40_000, 1);
    // The second does not fit while the first waits.
    tier.admit("s3://b/a", &meta("s3://b/a", big.len(), "e"), &big);
    tier.admit("s3://b/b", &meta("s3://b/b", big.len(), "e"), &big);
    assert!(tier.metrics.writes_skipped.get() >= 1);
    written(&tier, 1).await;
    // The directory goes away: every write fails, and after MAX_ERRORS in
    // a row the tier is off (RAM only), not failing reads.
    std::fs::remove_dir_all(dir.path()).unwrap();
    for i in 0..MAX_ERRORS {
        let k = format!("s3://b/x{i}");
        tier.admit(&k, &meta(&k, 100, "e"), &data(100, 2));
        wait_until("the failure", || tier.metrics.errors.get() > u64::from(i)).await;
    }
    assert_eq!(tier.metrics.up.get(), 0);
    assert!(
        tier.lookup("s3://b/a").is_none(),
        "off: every lookup misses"
    );
    tier.admit("s3://b/y", &meta("s3://b/y", 100, "e"), &data(100, 3));
    assert_eq!(tier.queued_bytes(), 0, "off: nothing is queued");
}
