//! The prefetcher against real files, through the fault-injecting double:
//! what it reads ahead, within which bounds, and that demand reads never
//! wait behind it.

use std::sync::Arc;
use std::time::Duration;

use sluice_engine::plans::PlanKey;
use sluice_engine::reader::{Body, Source};
use sluice_engine::{
    ByteSize, CacheConfig, ClientShare, Engine, EngineConfig, EngineMetrics, PrefetchConfig,
};
use sluice_storage::fault::{Fault, FaultStorage};
use sluice_storage::registry::{FileConfig, StorageConfig};
use sluice_storage::{Backends, ObjectUri};

const OBJECT: usize = 10_000;
const LANES: usize = 4;
const WINDOW: u32 = 8;

struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    fault: Arc<FaultStorage>,
    engine: Arc<Engine>,
    metrics: EngineMetrics,
    _prefetcher: tokio::task::JoinHandle<()>,
}

fn content(i: usize) -> Vec<u8> {
    (0..OBJECT).map(|j| (i * 7 + j % 251) as u8).collect()
}

async fn fixture(objects: usize, engine: EngineConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    for i in 0..objects {
        std::fs::write(root.join(format!("o{i:03}")), content(i)).unwrap();
    }
    let storage = StorageConfig {
        file: FileConfig {
            roots: vec![root.clone()],
        },
        ..StorageConfig::default()
    };
    let backends = Backends::new(&storage).await.unwrap();
    let fault = Arc::new(FaultStorage::new(backends.file()));
    let backends = backends.with_file(fault.clone());
    let metrics = EngineMetrics::default();
    let cache = CacheConfig {
        memory_budget: ByteSize::mib(16),
        segment_size: ByteSize::mib(4),
        ..CacheConfig::default()
    };
    let prefetch = PrefetchConfig {
        concurrency: LANES,
        lookahead_items: WINDOW,
        ..PrefetchConfig::default()
    };
    let engine = Arc::new(Engine::new(backends, engine, cache, prefetch, metrics.clone()).unwrap());
    let prefetcher = tokio::spawn(engine.clone().run_prefetcher());
    Fixture {
        _dir: dir,
        root,
        fault,
        engine,
        metrics,
        _prefetcher: prefetcher,
    }
}

impl Fixture {
    fn key(&self, i: usize) -> String {
        format!("file://{}/o{i:03}", self.root.display())
    }

    fn plan(&self, order: impl IntoIterator<Item = usize>) {
        let items: Vec<Option<Arc<str>>> = order
            .into_iter()
            .map(|i| Some(Arc::from(self.key(i))))
            .collect();
        let key = PlanKey { session: 1, id: 1 };
        self.engine
            .submit_plan(key, "test", &items, true, true)
            .unwrap();
    }

    async fn read(&self, i: usize) -> Source {
        let uri = ObjectUri::parse(&self.key(i)).unwrap();
        self.engine.plans(|p| p.consumed(1, &self.key(i)));
        let client = ClientShare::unlimited();
        let out = self
            .engine
            .read(&uri, None, false, &client, false)
            .await
            .unwrap();
        match out.body {
            Body::Bytes(b) => assert_eq!(&b[..], &content(i)[..], "object {i}"),
            Body::Stream(_) => panic!("small objects are buffered"),
        }
        out.source
    }
}

/// Waits (without a deadline of its own: the test harness's timeout ends a
/// hang) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let mut waited = 0;
    while !cond() {
        tokio::time::sleep(Duration::from_millis(5)).await;
        waited += 1;
        assert!(waited < 12_000, "waited a minute for: {what}");
    }
}

/// Prefetch holds every request the endpoint allows (its limit, 2, is
/// below prefetch's own slots) on a backend that does not answer. A demand
/// read still goes through at once, and a demand read of an object being
/// prefetched joins that fetch instead of starting a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demand_reads_never_wait_behind_prefetch() {
    let engine = EngineConfig {
        max_concurrency: 2,
        ..EngineConfig::default()
    };
    // The endpoint's limit (capped by max_concurrency), below prefetch's
    // own slots: prefetch fills it.
    let held = 2;
    let f = fixture(40, engine).await;
    f.fault.script(std::iter::repeat_n(Fault::Hold, held));
    f.plan(0..30);
    until("prefetch to fill the endpoint's limit", || {
        f.fault.in_flight() == held
    })
    .await;

    // In no plan: a demand read of its own, at once.
    assert_eq!(f.read(35).await, Source::Backend);
    assert_eq!(f.fault.in_flight(), held, "the prefetches are still held");

    // Being prefetched: join it.
    let joined = {
        let f_engine = f.engine.clone();
        let uri = ObjectUri::parse(&f.key(0)).unwrap();
        tokio::spawn(async move {
            let client = ClientShare::unlimited();
            let out = f_engine
                .read(&uri, None, false, &client, false)
                .await
                .unwrap();
            out.source
        })
    };
    let key = f.key(0);
    until("the read to join the prefetch", || {
        f.engine.reader().joined(&key) == 1
    })
    .await;
    f.fault.release();
    assert_eq!(joined.await.unwrap(), Source::Coalesced);
    until("the window to fill", || {
        f.metrics.prefetch.fetched.get() == u64::from(WINDOW)
    })
    .await;
    // The window's objects once each, and the demand read's own: the joined
    // read fetched nothing of its own.
    assert_eq!(f.fault.gets(), WINDOW as usize + 1);
    assert_eq!(f.read(0).await, Source::Cache);
    assert_eq!(
        f.metrics.prefetch.hits.get(),
        1,
        "the joined read was no cache hit"
    );
}

/// The window moves with the position, never past its bound; what it
/// prefetched is read from the cache and counted as prefetch hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_follows_the_reader_within_its_bound() {
    let f = fixture(40, EngineConfig::default()).await;
    f.plan(0..40);
    let ahead = || f.engine.plans(|p| p.list()[0].ahead_items);
    until("the window to fill", || {
        f.metrics.prefetch.fetched.get() == u64::from(WINDOW)
    })
    .await;
    let mut from_cache = 0;
    for i in 0..40 {
        assert!(ahead() <= u64::from(WINDOW), "window beyond its bound");
        if f.read(i).await == Source::Cache {
            from_cache += 1;
        }
        // Reading ahead of the plan's next item: wait for the window to be
        // refilled before the next read, as a consumer slower than the
        // backend would find it.
        let want = (i as u64 + 1 + u64::from(WINDOW)).min(40);
        until("the window to move", || {
            f.metrics.prefetch.fetched.get() >= want
        })
        .await;
    }
    assert_eq!(from_cache, 40, "every item was prefetched before its read");
    assert_eq!(f.metrics.prefetch.hits.get(), 40);
    assert_eq!(f.metrics.prefetch.fetched.get(), 40, "each object once");
    assert_eq!(f.metrics.prefetch.wasted_bytes.get(), 0);
    assert_eq!(f.engine.plans(|p| p.list()[0].position), 40);
}
