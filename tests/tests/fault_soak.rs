//! Faults at the backend never become wrong bytes.
//!
//! A real daemon reads from a real S3-compatible server (`s3s-fs`) through
//! the fault proxy, which injects 503 SlowDown (with and without
//! Retry-After), stalls past the attempt timeout, connection resets mid-body,
//! truncated bodies and wrong Content-Ranges into 5 % of the requests.
//! Objects of mixed sizes are read whole and ranged, through a Read call
//! (stream), a session with shared-memory leases and a session with stream
//! delivery. Every read must return exactly the source's bytes, or fail with
//! UNAVAILABLE, ABORTED or INTERNAL and a message naming the URI — never
//! wrong bytes, never another code, never a hang. Retries must keep to the
//! written rules: at most `max_attempts` HTTP attempts per backend call, no
//! engine retry without a fault behind it.
//!
//! CI size by default; `tests/bench/fault_soak.sh` runs the long version
//! through the environment (`SOAK_READS`, `SOAK_OBJECTS`, `SOAK_MAX_MIB`,
//! `SOAK_RATE`, `SOAK_SEED`, `SOAK_CONCURRENCY`) and prints the figures.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_client::{Client, Delivery, SessionOptions};
use sluice_engine::ByteSize;
use sluice_tests::daemon::TestDaemon;
use sluice_tests::faultproxy::{FaultConfig, FaultKind, FaultProxy, Injected};
use sluice_tests::grpc::{http_get, metric};
use sluice_tests::s3server::S3Server;
use tokio::sync::Mutex;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// Part size of the soak's engine: small enough that most objects have
/// several parts.
const PART: u64 = MIB;
/// SDK attempts per backend call (the harness's S3 configuration).
const MAX_ATTEMPTS: u32 = 2;
/// A read that takes longer than this is a hang, not a slow read.
const HANG: Duration = Duration::from_secs(180);

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The soak's size.
#[derive(Debug, Clone, Copy)]
struct Size {
    reads: usize,
    objects: usize,
    max_size: u64,
    rate: f64,
    seed: u64,
    concurrency: usize,
}

impl Size {
    fn from_env() -> Size {
        Size {
            reads: env("SOAK_READS", 300),
            objects: env("SOAK_OBJECTS", 20),
            max_size: env("SOAK_MAX_MIB", 16) * MIB,
            rate: env("SOAK_RATE", 0.05),
            seed: env("SOAK_SEED", 8),
            concurrency: env("SOAK_CONCURRENCY", 6),
        }
    }
}

/// The source: byte `i` of object `seed` is a function of both, so any range
/// can be checked without keeping the objects in memory.
fn expected(seed: u64, range: Range<u64>) -> Vec<u8> {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let mut out = Vec::with_capacity((range.end - range.start) as usize);
    let mut word = range.start / 8;
    while (out.len() as u64) < range.end - range.start {
        let bytes = mix(seed.wrapping_mul(0x1000_0000_01b3) ^ word).to_le_bytes();
        let from = if word == range.start / 8 {
            (range.start % 8) as usize
        } else {
            0
        };
        let left = (range.end - range.start) as usize - out.len();
        out.extend_from_slice(&bytes[from..(from + left).min(8)]);
        word += 1;
    }
    out
}

/// Object sizes: the edges around a part, then log-uniform up to the maximum.
fn sizes(size: &Size, rng: &mut StdRng) -> Vec<u64> {
    let mut out = vec![KIB, PART, PART + 1, size.max_size];
    let (lo, hi) = ((KIB as f64).ln(), (size.max_size as f64).ln());
    while out.len() < size.objects {
        out.push(rng.random_range(lo..hi).exp() as u64);
    }
    out
}

/// How a read is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Path {
    Read,
    Shm,
    SessionStream,
}

/// What became of the reads.
#[derive(Debug, Default)]
struct Outcome {
    ok: BTreeMap<Path, u64>,
    failed: BTreeMap<String, u64>,
    /// The messages of the first failures.
    why: Vec<String>,
    corrupt: Vec<String>,
    bad_errors: Vec<String>,
    bytes: u64,
}

struct Readers {
    client: Client,
    shm: sluice_client::Session,
    stream: sluice_client::Session,
}

async fn read_one(
    readers: &Readers,
    path: Path,
    uri: &str,
    range: Option<Range<u64>>,
) -> Result<(u64, Vec<u8>), sluice_client::Error> {
    let start = range.as_ref().map_or(0, |r| r.start);
    let session = match path {
        Path::Read => {
            let bytes = readers.client.read_to_bytes(uri, range).await?;
            return Ok((start, bytes.to_vec()));
        }
        Path::Shm => &readers.shm,
        Path::SessionStream => &readers.stream,
    };
    let fetched = session.fetch(uri, range).await?;
    let mut data = Vec::with_capacity(fetched.len() as usize);
    for part in &fetched.parts {
        data.extend_from_slice(part);
    }
    Ok((start, data))
}

/// One read, checked against the source.
async fn soak_one(i: usize, size: &Size, objects: &[(String, u64, u64)], r: &Readers) -> Verdict {
    let mut rng = StdRng::seed_from_u64(size.seed.wrapping_mul(1_000_003) ^ i as u64);
    let (uri, seed, len) = &objects[rng.random_range(0..objects.len())];
    let path = [Path::Read, Path::Shm, Path::SessionStream][i % 3];
    let range = match rng.random_range(0..4) {
        0 | 1 => None,
        2 => {
            let a = rng.random_range(0..*len);
            Some(a..rng.random_range(a + 1..=*len))
        }
        _ => Some(rng.random_range(0..*len)..u64::MAX),
    };
    let want = range.clone().map_or(0..*len, |r| r.start..r.end.min(*len));
    let read = tokio::time::timeout(HANG, read_one(r, path, uri, range.clone())).await;
    let what = format!("{path:?} {uri} {range:?}");
    match read {
        Err(_) => Verdict::Bad(format!("{what}: no answer within {HANG:?}")),
        Ok(Ok((start, got))) => {
            let source = expected(*seed, want.clone());
            if start == want.start && got == source {
                Verdict::Ok(path, got.len() as u64)
            } else {
                let first = got.iter().zip(&source).position(|(a, b)| a != b);
                Verdict::Corrupt(format!(
                    "{what}: {} bytes from {start}, want {} from {}; first difference at {first:?}",
                    got.len(),
                    source.len(),
                    want.start
                ))
            }
        }
        Ok(Err(e)) => {
            let code = e.code();
            let clear = matches!(
                code,
                tonic::Code::Unavailable | tonic::Code::Aborted | tonic::Code::Internal
            );
            if clear && e.to_string().contains(uri.as_str()) {
                Verdict::Failed(format!("{code:?}"), format!("{what}: {e}"))
            } else {
                Verdict::Bad(format!("{what}: {code:?}: {e}"))
            }
        }
    }
}

enum Verdict {
    Ok(Path, u64),
    Failed(String, String),
    Corrupt(String),
    Bad(String),
}

/// Sum of every series of `name` whose labels start with `labels`.
fn sum_series(body: &str, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{{{labels}");
    body.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_at_the_backend_never_corrupt_a_byte() {
    let size = Size::from_env();
    let started = Instant::now();
    let s3 = S3Server::start().await;
    s3.bucket("soak").await;
    let mut rng = StdRng::seed_from_u64(size.seed);
    let proxy = FaultProxy::start(
        s3.endpoint().parse().unwrap(),
        FaultConfig {
            rate: 0.0,
            seed: size.seed,
            kinds: FaultKind::ALL.to_vec(),
            stall_for: Duration::from_secs(60),
        },
    )
    .await;
    let mut objects = Vec::new();
    for (n, len) in sizes(&size, &mut rng).into_iter().enumerate() {
        let seed = size.seed * 1000 + n as u64;
        let key = format!("o-{n:03}-{len}");
        s3.put("soak", &key, expected(seed, 0..len)).await;
        let uri = format!("s3://{}/soak/{key}", proxy.endpoint());
        objects.push((uri, seed, len));
    }
    let mut s3_config = proxy.s3_config(&s3);
    // A stall costs one attempt timeout; long enough that a loaded machine
    // answers every honest request in time.
    s3_config.attempt_timeout = Duration::from_secs(5);
    assert_eq!(s3_config.max_attempts, MAX_ATTEMPTS);
    let d = TestDaemon::start_with(move |c| {
        c.storage.s3 = s3_config;
        c.engine.part_size = ByteSize(PART);
        c.engine.max_retry_wait = Duration::from_millis(500);
        // Objects above 2 MiB are streamed part by part, smaller ones are
        // buffered and cached; every cache hit asks the backend (HEAD).
        c.cache.max_object_size = Some(ByteSize::mib(2));
        c.cache.revalidate_after = Duration::ZERO;
    })
    .await;
    let client = Client::connect(&d.address()).await.unwrap();
    let session = |delivery| {
        client.session(SessionOptions {
            delivery,
            window: 16,
        })
    };
    let readers = Arc::new(Readers {
        shm: session(Delivery::SharedMemory).await.unwrap(),
        stream: session(Delivery::Stream).await.unwrap(),
        client: client.clone(),
    });
    proxy.set_rate(size.rate);

    let next = Arc::new(AtomicUsize::new(0));
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let objects = Arc::new(objects);
    let mut workers = Vec::new();
    for _ in 0..size.concurrency {
        let (next, outcome, objects, readers) = (
            next.clone(),
            outcome.clone(),
            objects.clone(),
            readers.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= size.reads {
                    return;
                }
                let verdict = soak_one(i, &size, &objects, &readers).await;
                let mut o = outcome.lock().await;
                match verdict {
                    Verdict::Ok(path, n) => {
                        *o.ok.entry(path).or_default() += 1;
                        o.bytes += n;
                    }
                    Verdict::Failed(code, why) => {
                        *o.failed.entry(code).or_default() += 1;
                        if o.why.len() < 10 {
                            o.why.push(why);
                        }
                    }
                    Verdict::Corrupt(why) => o.corrupt.push(why),
                    Verdict::Bad(why) => o.bad_errors.push(why),
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    proxy.set_rate(0.0);

    let metrics = http_get(d.http(), "/metrics").await.1;
    let backend_calls = sum_series(&metrics, "sluice_backend_requests_total", "backend=\"s3\"");
    let part_retries = metric(&metrics, "sluice_backend_part_retries_total");
    let injected: Injected = proxy.injected();
    let o = outcome.lock().await;
    let failed: u64 = o.failed.values().sum();
    let summary = format!(
        "fault soak: {} reads in {:.1?} ({} MiB delivered), ok {:?}, failed {:?}, \
         corrupt {}, other errors {}; proxy: {} requests, {} faults {:?}; \
         daemon: {backend_calls} backend calls, {part_retries} part retries",
        size.reads,
        started.elapsed(),
        o.bytes / MIB,
        o.ok,
        o.failed,
        o.corrupt.len(),
        o.bad_errors.len(),
        injected.requests,
        injected.total(),
        injected.faults,
    );
    println!("{summary}");
    for why in &o.why {
        println!("  failed: {why}");
    }
    assert!(
        o.corrupt.is_empty(),
        "wrong bytes: {:#?}\n{summary}",
        o.corrupt
    );
    assert!(
        o.bad_errors.is_empty(),
        "unclear failures: {:#?}\n{summary}",
        o.bad_errors
    );
    // Five percent of requests faulted, with retries at two levels: a read
    // fails only when one part's every attempt fails, or on a lie the first
    // response told (a wrong total), which is ABORTED at once.
    assert!(
        failed * 10 <= size.reads as u64,
        "more than a tenth of the reads failed: {summary}"
    );
    // Retries keep to their rules: the SDK makes at most `max_attempts`
    // HTTP attempts per backend call (the proxy sees every attempt), and the
    // engine retries a part only after an attempt failed — every fault is
    // injected, so there are no more part retries than faults.
    assert!(
        injected.requests as f64 <= backend_calls * f64::from(MAX_ATTEMPTS),
        "more HTTP attempts than the retry rules allow: {summary}"
    );
    assert!(
        part_retries <= injected.total() as f64,
        "part retries without a fault: {summary}"
    );
    // Every reset or truncated body reaches the engine (the SDK does not
    // retry a body): each is retried or ends its read, never accepted.
    let broken = injected.of(FaultKind::Reset) + injected.of(FaultKind::Truncate);
    assert!(
        part_retries + failed as f64 >= broken as f64,
        "broken bodies neither retried nor failed: {summary}"
    );
    for kind in FaultKind::ALL {
        assert!(injected.of(kind) > 0, "no {kind:?} injected: {summary}");
    }
}
