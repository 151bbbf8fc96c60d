//! The read path's races with invalidation, on a real file backend.
use sluice_storage::registry::{FileConfig, StorageConfig};

use super::*;
use crate::config::ByteSize;

async fn reader(root: &std::path::Path) -> Reader {
    let storage = StorageConfig {
        file: FileConfig {
            roots: vec![root.to_path_buf()],
        },
        ..StorageConfig::default()
    };
    let backends = Backends::new(&storage).await.unwrap();
    let cache = CacheConfig {
        memory_budget: ByteSize::mib(16),
        ..CacheConfig::default()
    };
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
