//! The symlink-swap race: while a thread exchanges a directory under the
//! root with a symlink to a directory outside it (`renameat2(RENAME_EXCHANGE)`
//! in a loop), reads, writes, deletes and listings go through the swapped
//! path. Not one byte may come from outside, nothing may be written or
//! removed there.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use futures::TryStreamExt;
use rustix::fs::RenameFlags;

use super::*;

/// How long each race runs: long enough for thousands of swaps and
/// requests on a loaded two-core machine, short enough for CI.
const RACE_FOR: Duration = Duration::from_millis(2500);

/// Content of the file inside the root; the outside one holds [`SECRET`].
const INSIDE: &[u8] = b"inside the root, as it should be";

/// Exchanges each pair `root/a`, `root/b` and back until told to stop,
/// counting the swaps; leaves both as they were.
fn swapper(
    root: PathBuf,
    pairs: Vec<(&'static str, &'static str)>,
    stop: Arc<AtomicBool>,
    swaps: Arc<AtomicU64>,
) {
    let dir = rustix::fs::open(&root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
    let exchange = |(a, b): (&str, &str)| {
        rustix::fs::renameat_with(&dir, a, &dir, b, RenameFlags::EXCHANGE).unwrap();
    };
    while !stop.load(Ordering::Relaxed) {
        for &pair in &pairs {
            exchange(pair);
            swaps.fetch_add(1, Ordering::Relaxed);
            std::thread::yield_now();
            exchange(pair);
        }
    }
}

/// What the requests saw.
#[derive(Debug, Default)]
struct Seen {
    /// Reads that returned the inside file.
    reads: u64,
    /// Requests refused because the path led outside the root.
    denied: u64,
    /// Writes and deletes that went through (inside the root).
    writes: u64,
    deletes: u64,
}

/// A swapped directory and what may be seen through it.
struct Swapped {
    dir: &'static str,
    /// Etag of the file inside the root.
    inside_etag: String,
    /// Etag suffixes (`-inode`) of the files outside.
    outside_inodes: Vec<String>,
}

/// One round of requests through a swapped directory.
async fn round(s: &FileStorage, t: &Tree, sw: &Swapped, i: u64, seen: &mut Seen) {
    let (dir, inside_etag) = (sw.dir, sw.inside_etag.as_str());
    let mut outcome = |r: Result<()>, counter: fn(&mut Seen) -> &mut u64| match r {
        Ok(()) => *counter(seen) += 1,
        Err(e) if e.kind() == ErrorKind::PermissionDenied => seen.denied += 1,
        // A component vanished mid-swap (the exchange is atomic, but a
        // walk spans several calls): fine, nothing was touched.
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => panic!("unexpected {e}"),
    };
    let f = t.uri(&format!("{dir}/f"));
    let r = s.head(&f).await.map(|m| {
        assert_eq!(
            m.etag.as_deref(),
            Some(inside_etag),
            "head of {f} saw another file"
        );
    });
    outcome(r, |s| &mut s.reads);
    let r = async {
        let got = s.get(&f, GetOptions::default()).await?;
        let body: Vec<Bytes> = got.body.try_collect().await?;
        assert_eq!(body.concat(), INSIDE, "get of {f} read another file");
        Ok(())
    };
    outcome(r.await, |s| &mut s.reads);
    let r = crate::read_exact_at(s, &f, 0, &Version::etag(inside_etag), INSIDE.len())
        .await
        .map(|dst| {
            assert_eq!(dst, INSIDE, "read_into of {f} read another file");
        });
    outcome(r, |s| &mut s.reads);
    let w = t.uri(&format!("{dir}/sub{}/written{}", i % 3, i % 5));
    outcome(s.put(&w, Bytes::from_static(b"w")).await.map(drop), |s| {
        &mut s.writes
    });
    let victim = t.uri(&format!("{dir}/victim"));
    outcome(
        s.put(&victim, Bytes::from_static(b"v")).await.map(drop),
        |s| &mut s.writes,
    );
    outcome(s.delete(&victim).await, |s| &mut s.deletes);
    let listed = s
        .list(
            &t.uri(&format!("{dir}/")),
            &ListOptions {
                page_size: 100,
                ..Default::default()
            },
        )
        .await;
    if let Ok(page) = listed {
        for o in page.objects {
            let etag = o.etag.unwrap();
            assert!(
                !sw.outside_inodes.iter().any(|i| etag.ends_with(i.as_str())),
                "listed an outside file as {}",
                o.uri
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_symlink_swap_race_never_leaves_the_root() {
    let t = Tree::new();
    std::fs::write(t.outside.join("f"), SECRET).unwrap();
    std::fs::write(t.outside.join("victim"), SECRET).unwrap();
    let before = t.outside_snapshot();
    // `d` and `e` are real directories; `abs` and `rel` lead outside, by an
    // absolute and by a relative symlink.
    for d in ["d", "e"] {
        std::fs::create_dir(t.root.join(d)).unwrap();
        std::fs::write(t.root.join(d).join("f"), INSIDE).unwrap();
    }
    std::os::unix::fs::symlink(&t.outside, t.root.join("abs")).unwrap();
    std::os::unix::fs::symlink("../outside", t.root.join("rel")).unwrap();
    for s in storages(&t.root) {
        let mut swapped = Vec::new();
        for dir in ["d", "e"] {
            swapped.push(Swapped {
                dir,
                inside_etag: s
                    .head(&t.uri(&format!("{dir}/f")))
                    .await
                    .unwrap()
                    .etag
                    .unwrap(),
                outside_inodes: ["f", "victim"]
                    .map(|n| format!("-{:x}", std::fs::metadata(t.outside.join(n)).unwrap().ino()))
                    .to_vec(),
            });
        }
        let (stop, swaps) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let thread = {
            let (root, stop, swaps) = (t.root.clone(), stop.clone(), swaps.clone());
            std::thread::spawn(move || swapper(root, vec![("d", "abs"), ("e", "rel")], stop, swaps))
        };
        let mut seen = Seen::default();
        let start = Instant::now();
        let mut i = 0;
        while start.elapsed() < RACE_FOR {
            for sw in &swapped {
                round(&s, &t, sw, i, &mut seen).await;
            }
            i += 1;
        }
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
        let swaps = swaps.load(Ordering::Relaxed);
        println!("{:?}: {swaps} swaps, {i} rounds, {seen:?}", s.resolver());
        assert!(swaps > 0, "the race never ran");
        assert!(seen.denied > 0, "no request ever met the swapped symlink");
        assert!(
            seen.reads > 0 && seen.writes > 0 && seen.deletes > 0,
            "{seen:?}"
        );
        assert_eq!(
            t.outside_snapshot(),
            before,
            "the outside directory changed"
        );
    }
}
