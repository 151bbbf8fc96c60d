//! The read path's races with invalidation, on a real file backend.
use sluice_storage::registry::{FileConfig, StorageConfig};

use super::*;
use crate::config::ByteSize;

async fn reader(root: &std::path::Path) -> Reader {
    reader_with(root, |_| {}).await
}

async fn reader_with(root: &std::path::Path, set: impl FnOnce(&mut CacheConfig)) -> Reader {
    let storage = StorageConfig {
        file: FileConfig {
            roots: vec![root.to_path_buf()],
        },
        ..StorageConfig::default()
    };
    let backends = Backends::new(&storage).await.unwrap();
    let mut cache = CacheConfig {
        memory_budget: ByteSize::mib(16),
        ..CacheConfig::default()
    };
    set(&mut cache);
    Reader::new(
        backends,
        EngineConfig::default(),
        cache,
        PlanLimits::default(),
        EngineMetrics::default(),
    )
    .unwrap()
}

fn hold() -> Hold {
    ClientShare::unlimited().try_acquire(9).unwrap()
}

fn got(meta: ObjectMeta) -> Got {
    Got {
        meta,
        data: Bytes::from_static(b"old bytes"),
        hold: hold(),
        source: Source::Backend,
    }
}

fn leader(reader: &Reader, key: &str) -> Leader {
    match reader.role(key) {
        Role::Lead(l) => l,
        Role::Follow(_) => panic!("{key}: expected to lead"),
    }
}

fn follower(reader: &Reader, key: &str) -> watch::Receiver<Option<Outcome>> {
    match reader.role(key) {
        Role::Follow(rx) => rx,
        Role::Lead(_) => panic!("{key}: expected to follow"),
    }
}

/// A fetch that started before a write or delete, and finishes after
/// its invalidation, never caches what it read; whatever joined it reads
/// again; later reads start a fetch of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_wins_over_a_fetch_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let reader = reader(&root).await;
    std::fs::write(root.join("o"), b"old bytes").unwrap();
    let uri = ObjectUri::parse(&format!("file://{}/o", root.display())).unwrap();
    let key = uri.to_string();
    let storage = reader.storage(&uri).unwrap();
    let old_meta = storage.head(&uri).await.unwrap();

    for prefix in [false, true] {
        let lead = leader(&reader, &key);
        let mut joined = follower(&reader, &key);
        if prefix {
            let dir = ObjectUri::parse(&format!("file://{}/", root.display())).unwrap();
            reader.invalidate_prefix(&dir);
        } else {
            reader.invalidate(&uri);
        }
        // A read after the invalidation does not join the stale flight.
        let fresh = leader(&reader, &key);
        drop(fresh);
        let out = reader
            .finish_lead(lead, &uri, None, got(old_meta.clone()))
            .unwrap();
        assert_eq!(out.source, Source::Uncached, "the stale leader's own read");
        assert!(reader.cache.get(&key).is_none(), "stale bytes were cached");
        joined.wait_for(Option::is_some).await.unwrap();
        assert!(matches!(*joined.borrow(), Some(Outcome::Stale)));
    }

    // Not overtaken: cached as before.
    let lead = leader(&reader, &key);
    reader.finish_lead(lead, &uri, None, got(old_meta)).unwrap();
    assert!(reader.cache.get(&key).is_some());

    // End to end: the new version is what a read returns.
    std::fs::write(root.join("o"), b"new bytes!").unwrap();
    reader.invalidate(&uri);
    let client = ClientShare::unlimited();
    let out = reader
        .read(&uri, None, false, &client, false)
        .await
        .unwrap();
    match out.body {
        Body::Bytes(b) => assert_eq!(&b[..], b"new bytes!"),
        Body::Stream(_) => panic!("a small object is buffered"),
    }
}

/// A file of `len` patterned bytes under `root`, and its URI.
fn object(root: &std::path::Path, name: &str, len: usize) -> (ObjectUri, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 253) as u8).collect();
    std::fs::write(root.join(name), &data).unwrap();
    let uri = ObjectUri::parse(&format!("file://{}/{name}", root.display())).unwrap();
    (uri, data)
}

async fn read_range(reader: &Reader, uri: &ObjectUri, range: Range<u64>) -> (Source, Vec<u8>) {
    let client = ClientShare::unlimited();
    let out = reader
        .read(uri, Some(range), false, &client, false)
        .await
        .unwrap();
    match out.body {
        Body::Bytes(b) => (out.source, b.to_vec()),
        Body::Stream(_) => panic!("a range within max_cached is buffered"),
    }
}

/// A range of an uncached object small enough to widen caches the whole
/// object: every later range of it, and the whole of it, is a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_an_uncached_object_caches_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let reader = reader(&root).await;
    let (uri, data) = object(&root, "o", (3 << 20) + 17);
    let (source, got) = read_range(&reader, &uri, 1_000_000..1_001_000).await;
    assert_eq!(source, Source::Backend);
    assert_eq!(got, &data[1_000_000..1_001_000]);
    assert_eq!(reader.metrics.cache.widened.get(), 1);
    let cached = reader.cache.get(&uri.to_string()).expect("cached whole");
    assert_eq!(&cached.data[..], &data[..]);
    for r in [0..10, 2_000_000..3_000_000, (3 << 20)..(4 << 20)] {
        let (source, got) = read_range(&reader, &uri, r.clone()).await;
        assert_eq!(source, Source::Cache, "{r:?}");
        let end = (r.end as usize).min(data.len());
        assert_eq!(got, &data[r.start as usize..end], "{r:?}");
    }
    assert_eq!(reader.metrics.cache.misses.get(), 1);
}

/// A range of an object larger than `widen_range_max` is fetched alone and
/// not cached, and the object is noted so that later ranges do not wait on
/// each other to learn its size; a whole read still caches it, and an
/// invalidation forgets the note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_an_object_too_large_to_widen_is_read_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    // Notes last `revalidate_after`: an hour, longer than any stall here.
    let reader = reader_with(&root, |c| {
        c.widen_range_max = ByteSize::mib(1);
        c.revalidate_after = std::time::Duration::from_secs(3600);
    })
    .await;
    let (uri, data) = object(&root, "o", 3 << 20);
    let key = uri.to_string();
    let (source, got) = read_range(&reader, &uri, 5..2_000_000).await;
    assert_eq!(source, Source::Uncached);
    assert_eq!(got, &data[5..2_000_000]);
    assert!(reader.cache.get(&key).is_none());
    let ttl = reader.note_ttl();
    assert!(reader.too_large.noted(&key, ttl));
    assert_eq!(reader.metrics.cache.widened.get(), 0);

    // Noted: a range does not lead, so it never joins a flight either.
    let lead = leader(&reader, &key);
    let (source, got) = read_range(&reader, &uri, 7..9).await;
    assert_eq!((source, &got[..]), (Source::Uncached, &data[7..9]));
    assert_eq!(reader.joined(&key), 0);
    drop(lead);

    let client = ClientShare::unlimited();
    let out = reader
        .read(&uri, None, false, &client, false)
        .await
        .unwrap();
    assert_eq!(out.source, Source::Backend, "a whole read caches it");
    let (source, _) = read_range(&reader, &uri, 7..9).await;
    assert_eq!(source, Source::Cache);

    reader.invalidate(&uri);
    assert!(!reader.too_large.noted(&key, ttl));
}

/// `widen_range_max = 0` keeps ranges of uncached objects uncached; an
/// empty range never widens, nor marks the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_stay_uncached_when_widening_is_off_or_they_are_empty() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let off = reader_with(&root, |c| c.widen_range_max = ByteSize(0)).await;
    let (uri, data) = object(&root, "o", 100_000);
    let key = uri.to_string();
    for _ in 0..2 {
        let (source, got) = read_range(&off, &uri, 10..20).await;
        assert_eq!((source, &got[..]), (Source::Uncached, &data[10..20]));
    }
    assert!(off.cache.get(&key).is_none());

    let on = reader(&root).await;
    let (source, got) = read_range(&on, &uri, 50..50).await;
    assert_eq!((source, got.len()), (Source::Uncached, 0));
    assert!(on.cache.get(&key).is_none());
    assert!(!on.too_large.noted(&key, on.note_ttl()));
    let (source, _) = read_range(&on, &uri, 50..60).await;
    assert_eq!(source, Source::Backend, "widened after the empty range");
}

/// A range read of an object being fetched joins that fetch and is a
/// slice of what it caches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_joins_a_fetch_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let reader = Arc::new(reader(&root).await);
    std::fs::write(root.join("o"), b"old bytes").unwrap();
    let uri = ObjectUri::parse(&format!("file://{}/o", root.display())).unwrap();
    let key = uri.to_string();
    let meta = reader.storage(&uri).unwrap().head(&uri).await.unwrap();
    let lead = leader(&reader, &key);
    let joining = {
        let (reader, uri) = (reader.clone(), uri.clone());
        tokio::spawn(async move { read_range(&reader, &uri, 4..9).await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while reader.joined(&key) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the range never joined"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    reader.finish_lead(lead, &uri, None, got(meta)).unwrap();
    let (source, got) = joining.await.unwrap();
    assert_eq!((source, &got[..]), (Source::Coalesced, &b"bytes"[..]));
}

/// HEAD answers from a fresh cache entry without asking the backend, as a
/// read would; an entry due for revalidation gets the backend's answer,
/// and is dropped when the object changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_from_a_fresh_entry() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let client = ClientShare::unlimited();
    for (revalidate, cached) in [(3600, true), (0, false)] {
        let reader = reader_with(&root, |c| {
            c.revalidate_after = std::time::Duration::from_secs(revalidate);
        })
        .await;
        let (uri, _) = object(&root, "o", 9);
        reader
            .read(&uri, None, false, &client, false)
            .await
            .unwrap();
        std::fs::write(root.join("o"), b"eleven byte").unwrap();
        let meta = reader.head(&uri).await.unwrap();
        let key = uri.to_string();
        if cached {
            assert_eq!(meta.size, 9, "from the fresh entry");
            assert!(reader.cache.get(&key).is_some());
        } else {
            assert_eq!(meta.size, 11, "from the backend");
            assert!(reader.cache.get(&key).is_none(), "the changed entry stays");
        }
    }
}

/// A whole read that finds the object too large to cache notes it too:
/// ranges of it are then read side by side, none leading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_read_of_an_object_too_large_to_cache_notes_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let reader = reader_with(&root, |c| {
        c.max_object_size = Some(ByteSize::mib(1));
        c.revalidate_after = std::time::Duration::from_secs(3600);
    })
    .await;
    let (uri, data) = object(&root, "o", 3 << 20);
    let key = uri.to_string();
    let client = ClientShare::unlimited();
    let out = reader
        .read(&uri, None, false, &client, false)
        .await
        .unwrap();
    assert_eq!(out.source, Source::Uncached);
    drop(out);
    assert!(reader.too_large.noted(&key, reader.note_ttl()));
    let lead = leader(&reader, &key);
    let (source, got) = read_range(&reader, &uri, 100..200).await;
    assert_eq!((source, &got[..]), (Source::Uncached, &data[100..200]));
    assert_eq!(reader.joined(&key), 0, "the range did not wait on a leader");
    drop(lead);
}
