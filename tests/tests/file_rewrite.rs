//! A `file://` object rewritten in place (same inode: truncated, written
//! again) while a real daemon reads and caches it: every read returns one
//! version's bytes or fails with ABORTED naming the URI — never a mix — and
//! once the writer stops, the cache holds the last version, not a mix.
//!
//! The two versions differ in every byte. A read that opened the file while
//! it was half-written sees a shorter file, whose bytes must then be a
//! prefix of one version exactly as long as the size it reported.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sluice_engine::ByteSize;
use sluice_proto::v1;
use sluice_tests::daemon::TestDaemon;
use sluice_tests::grpc::{connect, read};
use tonic::Code;

/// 4 parts of 1 MiB: the first through a streamed `get` (4 chunks), the rest
/// through `read_into` (one `pread` each).
const LEN: usize = 4 << 20;
const MAX_REWRITES: u64 = 5_000;
const WANT_EACH: u64 = 20;

#[derive(Debug, Default)]
struct Tally {
    clean: AtomicU64,
    partial: AtomicU64,
    aborted: AtomicU64,
    mixed: AtomicU64,
}

impl Tally {
    fn enough(&self) -> bool {
        self.clean.load(Ordering::SeqCst) >= WANT_EACH
            && self.aborted.load(Ordering::SeqCst) >= WANT_EACH
    }

    fn done(&self) -> bool {
        self.enough() || self.mixed.load(Ordering::SeqCst) > 0
    }
}

fn versions() -> [Vec<u8>; 2] {
    let a: Vec<u8> = (0..LEN as u32).map(|i| (i * 29 % 253) as u8).collect();
    let b = a.iter().map(|x| x ^ 0xa5).collect();
    [a, b]
}

/// Waits until the coarse clock has passed the file's mtime, so the next
/// write gets another timestamp where timestamps move in clock ticks (before
/// Linux 6.13); see `server/storage/src/file.rs`.
fn next_tick(path: &Path) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    loop {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into `now`, which lives
        // for the whole call.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) };
        assert_eq!(rc, 0, "clock_gettime");
        let now = std::time::UNIX_EPOCH + Duration::new(now.tv_sec as u64, now.tv_nsec as u32);
        if now > mtime {
            return;
        }
        std::thread::yield_now();
    }
}

fn writer(path: PathBuf, versions: Arc<[Vec<u8>; 2]>, tally: Arc<Tally>) -> u64 {
    let mut rewrites = 0;
    while !tally.done() && rewrites < MAX_REWRITES {
        next_tick(&path);
        let data = &versions[(rewrites % 2) as usize ^ 1];
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        for piece in data.chunks(16 << 10) {
            f.write_all(piece).unwrap();
        }
        rewrites += 1;
    }
    rewrites
}

fn sort(
    got: Result<(v1::ObjectMeta, Vec<u8>), tonic::Status>,
    uri: &str,
    v: &[Vec<u8>; 2],
    t: &Tally,
) {
    let counter = match got {
        Ok((meta, bytes)) => {
            assert_eq!(
                bytes.len() as u64,
                meta.size,
                "a whole read has the size it reports"
            );
            let n = bytes.len();
            if bytes != v[0][..n] && bytes != v[1][..n] {
                &t.mixed
            } else if n == LEN {
                &t.clean
            } else {
                &t.partial
            }
        }
        Err(status) => {
            assert_eq!(status.code(), Code::Aborted, "{status:?}");
            assert!(status.message().contains(uri), "{status:?}");
            &t.aborted
        }
    };
    counter.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_in_place_is_never_served_or_cached_mixed() {
    let d = TestDaemon::start_with(|c| {
        c.engine.part_size = ByteSize::mib(1);
        c.cache.revalidate_after = Duration::ZERO;
    })
    .await;
    let path = d.root().join("shard");
    let versions = Arc::new(versions());
    std::fs::write(&path, &versions[0]).unwrap();
    let uri = d.file_uri("shard");
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut client = connect(d.socket()).await;
        let (uri, versions, tally, stop) =
            (uri.clone(), versions.clone(), tally.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let got = read(&mut client, &uri, None).await;
                sort(got, &uri, &versions, &tally);
            }
        }));
    }
    let (p, v, t) = (path.clone(), versions.clone(), tally.clone());
    let rewrites = tokio::task::spawn_blocking(move || writer(p, v, t))
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }
    let seen = format!("{rewrites} rewrites, {tally:?}");
    assert_eq!(tally.mixed.load(Ordering::SeqCst), 0, "mixed reads: {seen}");
    assert!(tally.enough(), "the race was not run to the end: {seen}");
    // Writer done: what is cached (or fetched now) is the last version.
    let mut client = connect(d.socket()).await;
    let last = &versions[(rewrites % 2) as usize];
    for _ in 0..2 {
        let (_, got) = read(&mut client, &uri, None).await.unwrap();
        assert!(got == *last, "not the last version: {seen}");
    }
}
