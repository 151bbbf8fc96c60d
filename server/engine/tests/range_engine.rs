//! RangeEngine and Reader against real files, through the fault-injecting double.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use proptest::prelude::*;
use sluice_engine::budget::{Evict, MemoryBudget};
use sluice_engine::metrics::StorageMetrics;
use sluice_engine::range::{Fetched, Memory, RangeEngine};
use sluice_engine::{ByteSize, EngineConfig};
use sluice_storage::fault::{Fault, FaultStorage};
use sluice_storage::file::FileStorage;
use sluice_storage::{ErrorKind, ObjectUri, Storage};

struct NoEvict;
impl Evict for NoEvict {
    fn evict_one(&self) -> bool {
        false
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    fault: Arc<FaultStorage>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let file: Arc<dyn Storage> = Arc::new(FileStorage::new(std::slice::from_ref(&root)).unwrap());
    Fixture {
        _dir: dir,
        root,
        fault: Arc::new(FaultStorage::new(file)),
    }
}

impl Fixture {
    fn object(&self, name: &str, len: usize) -> (ObjectUri, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 + i / 251) as u8).collect();
        let path = self.root.join(name);
        std::fs::write(&path, &data).unwrap();
        (
            ObjectUri::parse(&format!("file://{}", path.display())).unwrap(),
            data,
        )
    }
}

fn engine(part: u64, per_object: usize, global: usize) -> RangeEngine {
    let cfg = EngineConfig {
        part_size: ByteSize(part),
        per_object_concurrency: per_object,
        max_concurrency: global,
        // Fixed limits: these tests are about the engine's own rules
        // (the adaptive controller has tests of its own, below).
        adaptive_concurrency: false,
        part_attempts: 3,
        part_backoff: Duration::from_millis(1),
        ..EngineConfig::default()
    };
    RangeEngine::new(cfg, Arc::new(StorageMetrics::default()))
}

fn memory(total: u64) -> Memory {
    Memory {
        budget: MemoryBudget::with_capacity(total, total.min(1 << 30), Duration::from_secs(5))
            .unwrap(),
        evict: Arc::new(NoEvict),
        client: sluice_engine::ClientShare::unlimited(),
        whole: false,
    }
}

async fn collect(f: Fetched) -> Vec<u8> {
    match f {
        Fetched::Buffered { data, .. } => data.to_vec(),
        Fetched::Streaming { body, .. } => {
            let parts: Vec<_> = body.try_collect().await.unwrap();
            parts.concat()
        }
    }
}

#[tokio::test]
async fn whole_and_ranged_reads_are_byte_exact() {
    let fx = fixture();
    let part = 4096;
    let mem = memory(1 << 30);
    let e = engine(part, 3, 16);
    for len in [0, 1, 4095, 4096, 4097, 5 * 4096 + 3] {
        let (uri, data) = fx.object(&format!("o{len}"), len);
        for max_buffer in [0, u64::MAX] {
            let got = collect(
                e.fetch(fx.fault.clone(), &uri, None, &mem, max_buffer)
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(got, data, "len {len}, max_buffer {max_buffer}");
            if len > 10 {
                let r = 3..(len as u64 - 2);
                let got = collect(
                    e.fetch(fx.fault.clone(), &uri, Some(r.clone()), &mem, max_buffer)
                        .await
                        .unwrap(),
                )
                .await;
                assert_eq!(
                    got,
                    &data[r.start as usize..r.end as usize],
                    "len {len} range {r:?}"
                );
            }
        }
    }
    assert_eq!(
        mem.budget.available(),
        1 << 30,
        "every reservation was returned"
    );
}

#[tokio::test]
async fn an_object_changed_between_parts_is_an_error_not_a_mix() {
    let fx = fixture();
    let (uri, _) = fx.object("o", 10 * 1024);
    fx.fault
        .script([Fault::None, Fault::Etag("someone-else".into())]);
    let err = engine(1024, 2, 4)
        .fetch(fx.fault.clone(), &uri, None, &memory(1 << 20), u64::MAX)
        .await
        .unwrap_err();
    assert_eq!(err.storage_kind(), Some(ErrorKind::Changed), "{err}");
}

#[tokio::test]
async fn a_real_overwrite_during_a_read_is_detected() {
    let fx = fixture();
    let (uri, _) = fx.object("o", 64 * 1024);
    let e = engine(1024, 1, 1);
    let mem = memory(1 << 20);
    // Streaming mode with one part in flight: overwrite after the first part.
    let Fetched::Streaming { mut body, .. } = e
        .fetch(fx.fault.clone(), &uri, None, &mem, 0)
        .await
        .unwrap()
    else {
        panic!("expected streaming")
    };
    let _first = body.try_next().await.unwrap().unwrap();
    std::fs::write(fx.root.join("o.new"), vec![1u8; 64 * 1024]).unwrap();
    std::fs::rename(fx.root.join("o.new"), fx.root.join("o")).unwrap();
    let err = loop {
        match body.try_next().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("read completed across an overwrite"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.storage_kind(), Some(ErrorKind::Changed), "{err}");
}

#[tokio::test]
async fn short_parts_are_retried_then_fail() {
    let fx = fixture();
    let (uri, data) = fx.object("o", 8 * 1024);
    let metrics = Arc::new(StorageMetrics::default());
    let cfg = EngineConfig {
        part_size: ByteSize(1024),
        per_object_concurrency: 1,
        max_concurrency: 4,
        part_attempts: 3,
        part_backoff: Duration::from_millis(1),
        ..EngineConfig::default()
    };
    let e = RangeEngine::new(cfg, metrics.clone());
    fx.fault
        .script([Fault::None, Fault::Short(10), Fault::BreakAfter(100)]);
    let got = collect(
        e.fetch(fx.fault.clone(), &uri, None, &memory(1 << 20), u64::MAX)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got, data);
    assert_eq!(metrics.part_retries.get(), 2);
    assert_eq!(fx.fault.gets(), 8 + 2);

    fx.fault.script([
        Fault::None,
        Fault::Short(1),
        Fault::Short(1),
        Fault::Short(1),
    ]);
    let err = e
        .fetch(fx.fault.clone(), &uri, None, &memory(1 << 20), u64::MAX)
        .await
        .unwrap_err();
    assert_eq!(err.storage_kind(), Some(ErrorKind::Protocol), "{err}");
    assert!(err.to_string().contains("short body"), "{err}");
}

/// A first answer that lies about the object's size (a wrong
/// `Content-Range` total, same etag) is caught by the next part, whose
/// answer has the real size: the read fails with `Changed` instead of
/// serving a truncated object as whole.
#[tokio::test]
async fn a_wrong_total_in_the_first_answer_is_never_served() {
    let fx = fixture();
    let (uri, _) = fx.object("o", 8 * 1024);
    let e = engine(1024, 2, 4);
    for streamed in [false, true] {
        fx.fault.script([Fault::Size(5 * 1024)]);
        let mem = memory(1 << 20);
        let max_buffer = if streamed { 0 } else { u64::MAX };
        let read = async {
            let fetched = e
                .fetch(fx.fault.clone(), &uri, None, &mem, max_buffer)
                .await?;
            match fetched {
                Fetched::Buffered { data, .. } => Ok(data.len()),
                Fetched::Streaming { body, .. } => {
                    let parts: Vec<_> = body.try_collect().await?;
                    Ok(parts.concat().len())
                }
            }
        };
        let err: sluice_engine::ReadError = read.await.unwrap_err();
        assert_eq!(err.storage_kind(), Some(ErrorKind::Changed), "{err}");
        assert!(err.to_string().contains("sizes 5120 and 8192"), "{err}");
    }
}

/// A first part whose body breaks is retried like any other part: after a
/// backoff, counted in `part_retries`, within `part_attempts` — buffered and
/// streamed alike.
#[tokio::test]
async fn a_broken_first_body_is_retried_by_the_same_rules() {
    let fx = fixture();
    let (uri, data) = fx.object("o", 8 * 1024);
    let metrics = Arc::new(StorageMetrics::default());
    let cfg = EngineConfig {
        part_size: ByteSize(1024),
        // One part at a time: the script's faults meet the first part.
        per_object_concurrency: 1,
        part_attempts: 3,
        part_backoff: Duration::from_millis(1),
        ..EngineConfig::default()
    };
    let e = RangeEngine::new(cfg, metrics.clone());
    for (n, max_buffer) in [(1, u64::MAX), (2, 0)] {
        fx.fault.script([Fault::BreakAfter(100)]);
        let mem = memory(1 << 20);
        let fetched = e.fetch(fx.fault.clone(), &uri, None, &mem, max_buffer);
        assert_eq!(collect(fetched.await.unwrap()).await, data);
        assert_eq!(metrics.part_retries.get(), n, "max_buffer {max_buffer}");
    }
    // Two more breaks: the third attempt is the last one.
    fx.fault
        .script([Fault::BreakAfter(10), Fault::Short(1), Fault::Short(1)]);
    let err = e
        .fetch(fx.fault.clone(), &uri, None, &memory(1 << 20), u64::MAX)
        .await
        .unwrap_err();
    assert_eq!(err.storage_kind(), Some(ErrorKind::Protocol), "{err}");
    assert_eq!(metrics.part_retries.get(), 4);
}

/// A server's `Retry-After` is honoured up to `max_retry_wait`, never
/// beyond: an hour-long hint cannot park the request (time is paused and
/// advanced by tokio, so the measured wait is exactly what was slept).
#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_up_to_the_cap() {
    let fx = fixture();
    let (uri, data) = fx.object("o", 4 * 1024);
    let metrics = Arc::new(StorageMetrics::default());
    let cfg = EngineConfig {
        part_size: ByteSize(64 * 1024),
        part_attempts: 3,
        part_backoff: Duration::from_millis(1),
        max_retry_wait: Duration::from_secs(2),
        ..EngineConfig::default()
    };
    let e = RangeEngine::new(cfg, metrics.clone());
    for (hint, expected) in [
        (Duration::from_millis(700), Duration::from_millis(700)),
        (Duration::from_secs(3600), Duration::from_secs(2)),
    ] {
        fx.fault.script([Fault::Throttle(hint)]);
        let start = tokio::time::Instant::now();
        let got = collect(
            e.fetch(fx.fault.clone(), &uri, None, &memory(1 << 20), u64::MAX)
                .await
                .unwrap(),
        )
        .await;
        let waited = start.elapsed();
        assert_eq!(got, data);
        assert!(
            waited >= expected && waited < expected + Duration::from_millis(100),
            "hint {hint:?}: waited {waited:?}, expected {expected:?}"
        );
    }
    assert_eq!(metrics.part_retries.get(), 2);
}

#[tokio::test]
async fn not_found_is_not_retried() {
    let fx = fixture();
    let uri = ObjectUri::parse(&format!("file://{}/missing", fx.root.display())).unwrap();
    let err = engine(1024, 2, 2)
        .fetch(fx.fault.clone(), &uri, None, &memory(1 << 20), u64::MAX)
        .await
        .unwrap_err();
    assert_eq!(err.storage_kind(), Some(ErrorKind::NotFound));
    assert_eq!(fx.fault.gets(), 1);
}

#[tokio::test]
async fn a_part_larger_than_the_budget_fails_with_resource_exhausted() {
    let fx = fixture();
    let (uri, _) = fx.object("o", 64 * 1024);
    // Parts of 16 KiB, an arena of one 8 KiB segment.
    let err = engine(16 * 1024, 2, 2)
        .fetch(fx.fault.clone(), &uri, None, &memory(8192), u64::MAX)
        .await
        .unwrap_err();
    assert!(
        matches!(err, sluice_engine::ReadError::Memory { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn the_global_limit_holds_across_objects() {
    let fx = fixture();
    let e = engine(1024, 4, 3);
    let mem = memory(1 << 30);
    let objects: Vec<_> = (0..6)
        .map(|i| fx.object(&format!("o{i}"), 16 * 1024))
        .collect();
    let reads = objects.iter().map(|(uri, data)| {
        let (e, fault, mem) = (e.clone(), fx.fault.clone(), mem.clone());
        async move {
            let got = collect(e.fetch(fault, uri, None, &mem, u64::MAX).await.unwrap()).await;
            assert_eq!(&got, data);
        }
    });
    futures::future::join_all(reads).await;
    assert!(
        fx.fault.max_in_flight() <= 3,
        "{} in flight",
        fx.fault.max_in_flight()
    );
    assert_eq!(fx.fault.gets(), 6 * 16);
}

/// The requested `ranges` (the first as asked, possibly past the end)
/// cover `0..len` exactly, none overlapping, none over `part`.
fn covers_once(
    mut ranges: Vec<std::ops::Range<u64>>,
    len: u64,
    part: u64,
) -> Result<(), TestCaseError> {
    ranges[0].end = ranges[0].end.min(len);
    ranges.sort_by_key(|r| r.start);
    let mut at = 0;
    for r in &ranges {
        prop_assert_eq!(r.start, at, "gap or overlap at {}", at);
        prop_assert!(r.end - r.start <= part);
        at = r.end;
    }
    prop_assert_eq!(at, len);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The requested parts cover the wanted bytes exactly, never overlap,
    /// and never exceed the per-object limit in flight.
    #[test]
    fn parts_cover_the_object_exactly(len in 0usize..40_000, part in 512u64..8192, per_object in 1usize..6, streaming: bool) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let fx = fixture();
            let (uri, data) = fx.object("o", len);
            let e = engine(part, per_object, 64);
            let max_buffer = if streaming { 0 } else { u64::MAX };
            let got = collect(e.fetch(fx.fault.clone(), &uri, None, &memory(1 << 30), max_buffer).await.unwrap()).await;
            prop_assert_eq!(&got, &data);
            let ranges = fx.fault.ranges();
            prop_assert_eq!(ranges[0].start, 0);
            prop_assert_eq!(ranges[0].end, part, "the first part asks for a whole part");
            covers_once(ranges, len as u64, part)?;
            prop_assert!(fx.fault.max_in_flight() <= per_object, "{} > {}", fx.fault.max_in_flight(), per_object);
            Ok(())
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// A widened fetch of a range gives the whole object when it is at most
    /// `widen` bytes, asking for every byte exactly once, starting with the
    /// range's own first part; a larger object gives just the range.
    #[test]
    fn a_widened_range_is_the_whole_object_fetched_once(
        len in 1usize..40_000,
        start_frac in 0.0f64..1.0,
        want_len in 1u64..20_000,
        part in 512u64..8192,
        widen_more: bool,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let fx = fixture();
            let (uri, data) = fx.object("o", len);
            let e = engine(part, 3, 64);
            let start = ((len as f64 * start_frac) as u64).min(len as u64 - 1);
            let want = start..start + want_len;
            let widen = if widen_more { len as u64 } else { len as u64 - 1 };
            let fetched = e
                .fetch_widening(fx.fault.clone(), &uri, Some(want.clone()), &memory(1 << 30), u64::MAX, widen)
                .await
                .unwrap();
            let Fetched::Buffered { range, data: got, .. } = fetched else {
                panic!("a fetch within max_buffer is buffered");
            };
            let ranges = fx.fault.ranges();
            prop_assert_eq!(ranges[0].start, start, "the first request is the range's own");
            if !widen_more {
                let end = want.end.min(len as u64);
                prop_assert_eq!(range.clone(), start..end);
                prop_assert_eq!(&got[..], &data[start as usize..end as usize]);
                return Ok(());
            }
            prop_assert_eq!(range, 0..len as u64);
            prop_assert_eq!(&got[..], &data[..]);
            covers_once(ranges, len as u64, part)

        })?;
    }
}

/// Waits for `cond`, failing after a generous deadline (the condition is
/// what the test is about, not the time it takes).
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Consumers that stop reading streamed objects hold no request slots: the
/// parts already asked for finish into their buffers and give their slots
/// back, so other fetches are not starved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_consumers_hold_no_request_slots() {
    let fx = fixture();
    let e = engine(1024, 2, 4);
    let mem = memory(1 << 30);
    let (uri, data) = fx.object("big", 64 * 1024);
    let mut stalled = Vec::new();
    for _ in 0..4 {
        // Streamed (max_buffer 0); the bodies are not read.
        stalled.push(
            e.fetch(fx.fault.clone(), &uri, None, &mem, 0)
                .await
                .unwrap(),
        );
    }
    wait_until("every request slot is free", || e.free_slots() == 4).await;
    let (small, small_data) = fx.object("small", 100);
    let got = collect(
        e.fetch(fx.fault.clone(), &small, None, &mem, u64::MAX)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got, small_data);
    for f in stalled {
        assert_eq!(
            collect(f).await,
            data,
            "the stalled reads' bytes are intact"
        );
    }
}

/// What a streamed read holds ahead of its consumer is charged to the
/// client's share and stays within it, whatever `per_object_concurrency`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_read_stays_within_its_clients_share() {
    use futures::StreamExt;
    use sluice_engine::share::{ShareLimits, Shares};
    let fx = fixture();
    let e = engine(4096, 8, 64);
    let shares = Shares::new(
        ShareLimits {
            client_bytes: 3 * 4096,
            clients_bytes: u64::MAX,
            client_requests: 64,
            wait: Duration::from_secs(30),
            request_wait: Duration::from_secs(30),
        },
        Default::default(),
    );
    let client = shares.client();
    let mem = Memory {
        client: client.clone(),
        ..memory(1 << 30)
    };
    let (uri, data) = fx.object("big", 64 * 4096);
    let Fetched::Streaming { mut body, .. } = e
        .fetch(fx.fault.clone(), &uri, None, &mem, 0)
        .await
        .unwrap()
    else {
        panic!("max_buffer 0 streams");
    };
    let mut got = Vec::new();
    let mut most = 0;
    while let Some(part) = body.next().await {
        // Let the parts ahead run before looking.
        wait_until("parts ahead settle", || e.free_slots() == 64).await;
        most = most.max(client.held());
        got.extend_from_slice(&part.unwrap());
    }
    assert_eq!(got, data);
    assert!(most <= 3 * 4096, "held {most} bytes, share 12288");
    assert!(most >= 2 * 4096, "parts ahead are charged: {most}");
    drop(body);
    assert_eq!(client.held(), 0, "everything given back");
}

/// The adaptive controller gates requests: with an endpoint limit of 3, a
/// 64-part object never has more than 3 parts in flight however high the
/// fixed limits are, while nothing finishes to teach it otherwise; without
/// adaptation the per-object limit is what holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_limit_gates_parts() {
    for adaptive in [true, false] {
        let fx = fixture();
        let (uri, data) = fx.object("big", 64 * 4096);
        let cfg = EngineConfig {
            part_size: ByteSize(4096),
            per_object_concurrency: 16,
            max_concurrency: 64,
            adaptive_concurrency: adaptive,
            initial_concurrency: 3,
            ..EngineConfig::default()
        };
        let e = RangeEngine::new(cfg, Arc::new(StorageMetrics::default()));
        // The first part passes (its answer starts the fan-out); the rest
        // are held until released.
        fx.fault
            .script(std::iter::once(Fault::None).chain(std::iter::repeat_n(Fault::Hold, 63)));
        let mem = memory(1 << 20);
        let fetch = {
            let (e, fault, uri) = (e.clone(), fx.fault.clone(), uri.clone());
            tokio::spawn(async move {
                let mem = mem;
                collect(e.fetch(fault, &uri, None, &mem, u64::MAX).await.unwrap()).await
            })
        };
        let want = if adaptive { 3 } else { 16 };
        wait_until("the parts to fill the limit", || {
            fx.fault.in_flight() == want
        })
        .await;
        // Nothing finishes, so no limit moves: still exactly `want`.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fx.fault.in_flight(), want, "adaptive {adaptive}");
        assert_eq!(fx.fault.max_in_flight(), want, "adaptive {adaptive}");
        fx.fault.release();
        assert_eq!(fetch.await.unwrap(), data);
        let limits = e.endpoint_limits();
        assert_eq!(limits.len(), 1);
        assert_eq!(limits[0].0, "file");
    }
}

/// Parts follow the endpoint: a connection that is slow against its first
/// byte gets small parts (splitting pays), a slow first byte big ones
/// (each part's wait would dominate). The rates are far from where the
/// rule turns, so a loaded machine's timing cannot flip the outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_part_size_follows_the_endpoint() {
    const KIB: u64 = 1 << 10;
    let fx = fixture();
    let cfg = EngineConfig {
        part_size: ByteSize(1024 * KIB),
        min_part_size: ByteSize(256 * KIB),
        per_object_concurrency: 2,
        adaptive_concurrency: false,
        ..EngineConfig::default()
    };
    let e = RangeEngine::new(cfg.clone(), Arc::new(StorageMetrics::default()));
    let mem = memory(1 << 30);
    let (big, data) = fx.object("big", 1024 * KIB as usize);
    let parts_of_big = |e: RangeEngine| {
        let (fault, big, data) = (fx.fault.clone(), big.clone(), data.clone());
        let mem = mem.clone();
        async move {
            let before = fault.ranges().len();
            let got = collect(
                e.fetch(fault.clone(), &big, None, &mem, u64::MAX)
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(got, data);
            fault.ranges()[before..]
                .iter()
                .map(|r| r.end - r.start)
                .collect::<Vec<_>>()
        }
    };
    // Nothing learned: the cap, one request.
    assert_eq!(parts_of_big(e.clone()).await, [1024 * KIB]);
    // A fresh engine whose first samples are 256 KiB bodies at 250 kB/s: the
    // rate is learned as 250 kB/s, and 2 × t0 × r stays under the 320 KiB
    // where parts would round up from the floor unless the first byte
    // averages over 650 ms — far beyond what a local file takes, loaded or not.
    let e = RangeEngine::new(cfg.clone(), Arc::new(StorageMetrics::default()));
    for i in 0..2 {
        let (uri, small) = fx.object(&format!("slow{i}"), 256 * KIB as usize);
        fx.fault.script([Fault::Pace(250_000)]);
        assert_eq!(
            collect(
                e.fetch(fx.fault.clone(), &uri, None, &mem, u64::MAX)
                    .await
                    .unwrap()
            )
            .await,
            small
        );
    }
    assert_eq!(parts_of_big(e.clone()).await, [256 * KIB; 4]);
    // While the endpoint is busy (`per_object_concurrency` other fetches
    // running, here two held reads), a fetch takes the cap: smaller parts
    // would add requests, not throughput.
    let (held, _) = fx.object("held", 4096);
    fx.fault.script([Fault::Hold, Fault::Hold]);
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let (e, fault, held, mem) = (e.clone(), fx.fault.clone(), held.clone(), mem.clone());
            tokio::spawn(async move {
                collect(e.fetch(fault, &held, None, &mem, u64::MAX).await.unwrap()).await
            })
        })
        .collect();
    wait_until("two reads to be held", || fx.fault.in_flight() == 2).await;
    assert_eq!(parts_of_big(e.clone()).await, [1024 * KIB]);
    fx.fault.release();
    for h in holders {
        assert_eq!(h.await.unwrap().len(), 4096);
    }
    // The endpoint now answers after 100 ms at file speed: parts grow back
    // to the cap (after twenty fetches t0 ≥ 85 ms whatever the first byte
    // took before, and 2 × t0 × r reaches 1 MiB once r averages 6 MB/s,
    // which a file read at 7 MB/s or more gives).
    for i in 0..20 {
        let (uri, obj) = fx.object(&format!("far{i}"), 512 * KIB as usize);
        fx.fault.script([Fault::Delay(Duration::from_millis(100))]);
        assert_eq!(
            collect(
                e.fetch(fx.fault.clone(), &uri, None, &mem, u64::MAX)
                    .await
                    .unwrap()
            )
            .await,
            obj
        );
    }
    assert_eq!(parts_of_big(e.clone()).await, [1024 * KIB]);
}
