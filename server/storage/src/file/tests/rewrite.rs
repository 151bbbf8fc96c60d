//! A file rewritten in place — same inode, truncated and written again —
//! while it is read: every `get` body and every `read_into` holds exactly
//! one version's bytes, or the read fails with `Changed`. Never a mix.
//!
//! The two versions differ in every byte, so any mix is caught. A read that
//! opened the file between the truncation and the end of the rewrite sees a
//! shorter file; its bytes must then be a prefix of one version, exactly as
//! long as the size it reported (or the range starts past that size:
//! `InvalidArgument`) — a consistent picture of a half-written file, which no
//! reader can tell from a short file. The writer
//! goes on until the readers have seen both clean reads and reads refused
//! by the check after the read (the race was really run), with a cap on
//! rewrites so that a reader that never gets through still ends the test.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::TryStreamExt;

use super::*;

/// Object size: 4 `get` chunks, many `write`s per rewrite.
const LEN: usize = 4 * READ_CHUNK;
/// Rewrites after which the writer gives up waiting for the readers.
const MAX_REWRITES: u64 = 5_000;
/// Reads refused after the read, and clean reads, the test waits for.
const WANT_EACH: u64 = 25;

fn versions() -> [Vec<u8>; 2] {
    let a: Vec<u8> = (0..LEN as u32).map(|i| (i * 31 % 251) as u8).collect();
    let b = a.iter().map(|x| x ^ 0x5a).collect();
    [a, b]
}

/// What the readers saw.
#[derive(Debug, Default)]
struct Tally {
    clean: AtomicU64,
    /// A prefix of one version, as long as the file was when opened.
    partial: AtomicU64,
    /// `Changed` from the check after the read.
    refused_after: AtomicU64,
    /// Any other `Changed` (etag differs at open, file shrank mid-read).
    refused_other: AtomicU64,
    mixed: AtomicU64,
}

impl Tally {
    fn enough(&self) -> bool {
        self.clean.load(Ordering::SeqCst) >= WANT_EACH
            && self.refused_after.load(Ordering::SeqCst) >= WANT_EACH
    }

    /// The writer may stop: enough was seen, or a mix already fails the test.
    fn done(&self) -> bool {
        self.enough() || self.mixed.load(Ordering::SeqCst) > 0
    }
}

/// Waits until the coarse clock is past the file's mtime, so that the next
/// write gets another timestamp even where timestamps move in clock ticks
/// (before Linux 6.13; see the module comment of `file.rs`).
fn next_tick(path: &Path) {
    let st = rustix::fs::stat(path).unwrap();
    #[allow(clippy::unnecessary_cast)]
    let mtime = (st.st_mtime as i64, st.st_mtime_nsec as i64);
    loop {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into `now`, which lives
        // for the whole call.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) };
        assert_eq!(rc, 0, "clock_gettime");
        #[allow(clippy::unnecessary_cast)]
        if (now.tv_sec as i64, now.tv_nsec as i64) > mtime {
            return;
        }
        std::thread::yield_now();
    }
}

/// Rewrites `path` in place with the two versions in turn until the readers
/// saw enough; returns how many rewrites it made.
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
        for piece in data.chunks(32 << 10) {
            f.write_all(piece).unwrap();
        }
        rewrites += 1;
    }
    rewrites
}

/// One read of `range` by `get` or `read_into`; sorts its outcome.
async fn read_once(s: &FileStorage, u: &ObjectUri, i: u64, versions: &[Vec<u8>; 2], t: &Tally) {
    let range = match i % 3 {
        0 => 0..LEN as u64,
        1 => 1000..LEN as u64 - 3000,
        _ => (i * 7919) % (LEN as u64 / 2)..LEN as u64 / 2 + 5000,
    };
    let got = if i.is_multiple_of(2) {
        let opts = GetOptions {
            range: Some(range.clone()),
            if_match: None,
        };
        match s.get(u, opts).await {
            Ok(res) => {
                let sent = res.range.clone();
                assert_eq!(sent, range.start..range.end.min(res.meta.size));
                res.body
                    .try_collect::<Vec<Bytes>>()
                    .await
                    .map(|b| (sent, b.concat()))
            }
            Err(e) => Err(e),
        }
    } else {
        let version = match s.head(u).await {
            Ok(meta) => Version::of(&meta),
            Err(e) => panic!("head during the rewrites: {e}"),
        };
        let len = (range.end - range.start) as usize;
        crate::read_exact_at(s, u, range.start, &version, len)
            .await
            .map(|dst| (range.clone(), dst))
    };
    match got {
        Ok((sent, bytes)) => {
            let (a, b) = (sent.start as usize, sent.end as usize);
            let counter = if bytes != versions[0][a..b] && bytes != versions[1][a..b] {
                &t.mixed
            } else if sent == range {
                &t.clean
            } else {
                &t.partial
            };
            counter.fetch_add(1, Ordering::SeqCst);
        }
        Err(e) if e.kind() == ErrorKind::InvalidArgument => {
            assert!(e.message().contains("but the object has"), "{e}");
            t.partial.fetch_add(1, Ordering::SeqCst);
        }
        Err(e) => {
            assert_eq!((e.kind(), e.uri()), (ErrorKind::Changed, &*u.to_string()));
            let counter = if e.message().contains("after the read") {
                &t.refused_after
            } else {
                &t.refused_other
            };
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_in_place_is_read_whole_or_refused() {
    let root = tempfile::tempdir().unwrap();
    let root_path = std::fs::canonicalize(root.path()).unwrap();
    let path = root_path.join("shard");
    let versions = Arc::new(versions());
    std::fs::write(&path, &versions[0]).unwrap();
    let s = Arc::new(storage(&root_path));
    let u = uri(&path);
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..2u64 {
        let (s, u, versions, tally, stop) = (
            s.clone(),
            u.clone(),
            versions.clone(),
            tally.clone(),
            stop.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut i = r;
            while !stop.load(Ordering::SeqCst) {
                read_once(&s, &u, i, &versions, &tally).await;
                i += 2;
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
    // Once the writer is done, reads are clean again.
    let last = &versions[(rewrites % 2) as usize];
    let body: Vec<Bytes> = s
        .get(&u, GetOptions::default())
        .await
        .unwrap()
        .body
        .try_collect()
        .await
        .unwrap();
    assert!(body.concat() == *last, "{seen}");
}
