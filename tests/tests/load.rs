//! Load: many concurrent Read streams and sessions against a small budget,
//! next to a client that stopped reading. The daemon's memory stays within
//! its budget plus a fixed overhead plus a per-stream allowance; every read
//! returns the right bytes or fails with RESOURCE_EXHAUSTED (never another
//! error, never an OOM); health checks and `/metrics` answer throughout; an
//! idle client's small cached reads keep going through.
//!
//! The size is set by `SLUICE_LOAD_STREAMS` / `SLUICE_LOAD_SESSIONS`
//! (defaults sized for CI; `tests/bench/load.sh` runs 1000 / 200).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_proto::v1;
use sluice_proto::v1::session_response::Msg as Out;
use sluice_tests::daemon::DaemonProcess;
use sluice_tests::grpc::{connect, http_get, pattern, read};
use sluice_tests::shm::RawSession;
use tonic::Code;

const MIB: u64 = 1 << 20;
const BUDGET_MIB: u64 = 64;
/// What the daemon may use beyond the budget whatever the load: code,
/// runtime, metadata, allocator.
const BASE_MIB: u64 = 64;
/// Per stream being sent: one encoded message (`read.chunk_size`) plus the
/// HTTP/2 send buffer (400 KiB).
const CHUNK: u64 = 256 << 10;
const PER_STREAM: u64 = CHUNK + (400 << 10);

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing"))
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    exhausted: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_and_sessions_stay_within_memory_and_keep_answering() {
    let streams = env("SLUICE_LOAD_STREAMS", 200);
    let sessions = env("SLUICE_LOAD_SESSIONS", 40);
    let rounds = env("SLUICE_LOAD_ROUNDS", 2);
    let daemon = DaemonProcess::spawn_with_env(
        &[],
        &[
            ("SLUICE_CACHE__MEMORY_BUDGET", "64MiB"),
            ("SLUICE_CACHE__SEGMENT_SIZE", "64MiB"),
            ("SLUICE_CACHE__MEMORY_WAIT", "60s"),
            ("SLUICE_READ__CHUNK_SIZE", "256KiB"),
            ("SLUICE_READ__STALL_TIMEOUT", "0s"),
            ("SLUICE_SERVER__LIMITS__MAX_CONCURRENT_STREAMS", "1024"),
        ],
    );
    let pid = daemon.child.id();
    let root = daemon.root.clone();
    // 96 objects of 64 KiB … 6 MiB (~150 MiB in all: more than the budget,
    // so the cache churns) and a small one for the idle client.
    let objects: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
        (0..96)
            .map(|i| {
                let len = (64 << 10) * (1 + (i * 7) % 96);
                let data = pattern(len, i as u8);
                std::fs::write(root.join(format!("o{i}")), &data).unwrap();
                (format!("file://{}/o{i}", root.display()), data)
            })
            .collect(),
    );
    std::fs::write(root.join("small"), pattern(1000, 1)).unwrap();
    let small = format!("file://{}/small", root.display());
    let http = daemon.http();
    let socket = daemon.socket.clone();
    let rss_base = status_kib(pid, "VmRSS:");

    // A client that stopped reading: streams of the largest objects, first
    // message taken, then never asked for more.
    let mut stalled_client = connect(&socket).await;
    let mut stalled = Vec::new();
    for (uri, _) in objects.iter().rev().take(2) {
        let req = v1::ReadRequest {
            uri: uri.clone(),
            range: None,
            no_cache: false,
        };
        let mut s = stalled_client.read(req).await.unwrap().into_inner();
        s.message().await.unwrap();
        stalled.push(s);
    }

    let done = Arc::new(AtomicBool::new(false));
    // Health and /metrics throughout; and the idle client's small reads.
    let watcher = {
        let (done, socket, small) = (done.clone(), socket.clone(), small.clone());
        tokio::spawn(async move {
            let mut idle = connect(&socket).await;
            let mut health = tonic_health::pb::health_client::HealthClient::new(
                sluice_tests::grpc::channel(&socket).await,
            );
            let (mut latencies, mut failures) = (Vec::new(), Vec::new());
            let mut peak = 0;
            while !done.load(Ordering::SeqCst) {
                let t = Instant::now();
                match read(&mut idle, &small, None).await {
                    Ok((_, d)) => {
                        assert_eq!(d, pattern(1000, 1));
                        latencies.push(t.elapsed());
                    }
                    Err(e) => failures.push(format!("idle read: {e}")),
                }
                let (code, body) = http_get(http, "/metrics").await;
                if code != 200 || !body.contains("sluice_share_held_bytes") {
                    failures.push(format!("/metrics answered {code}"));
                }
                let req = tonic_health::pb::HealthCheckRequest {
                    service: "sluice.v1.Sluice".into(),
                };
                if let Err(e) = health.check(req).await {
                    failures.push(format!("health: {e}"));
                }
                peak = peak.max(status_kib(pid, "VmRSS:"));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (latencies, failures, peak)
        })
    };

    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    // Streams: spread over connections of up to 250 each.
    let conns = streams.div_ceil(250).max(1);
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(connect(&socket).await);
    }
    for i in 0..streams {
        let (mut client, objects, tally) =
            (clients[i % conns].clone(), objects.clone(), tally.clone());
        tasks.spawn(async move {
            for r in 0..rounds {
                let (uri, data) = &objects[(i * 13 + r * 7) % objects.len()];
                match read(&mut client, uri, None).await {
                    Ok((_, got)) => {
                        assert!(got == *data, "{uri}: wrong bytes");
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.code() == Code::ResourceExhausted => {
                        tally.exhausted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("{uri}: {e}"),
                }
            }
        });
    }
    // Sessions (shared memory), each on its own connection: fetch, check
    // the leased bytes in the mapping, release.
    let segments = Arc::new(sluice_tests::shm::map_segments(&std::path::PathBuf::from(
        format!("{}.fds", socket.display()),
    )));
    for s in 0..sessions {
        let (socket, objects, tally, segments) = (
            socket.clone(),
            objects.clone(),
            tally.clone(),
            segments.clone(),
        );
        tasks.spawn(async move {
            let mut client = connect(&socket).await;
            let mut session = RawSession::open(&mut client, true).await;
            for r in 0..rounds as u64 {
                let (uri, data) = &objects[(s * 5 + r as usize * 11) % objects.len()];
                session.fetch(r, uri, None).await;
                let mut got = Vec::new();
                let mut leases = Vec::new();
                loop {
                    match session.next().await {
                        Out::Extent(e) => {
                            let m = &segments[&e.segment];
                            got.extend_from_slice(m.slice(e.segment_offset, e.length));
                            if e.lease_id != 0 {
                                leases.push(e.lease_id);
                            }
                            if e.last {
                                assert!(got == *data, "{uri}: wrong bytes through a session");
                                tally.ok.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                        Out::Error(e) => {
                            assert_eq!(
                                e.code,
                                Code::ResourceExhausted as i32,
                                "{uri}: {}",
                                e.message
                            );
                            tally.exhausted.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                session.release(leases).await;
            }
        });
    }
    while let Some(res) = tasks.join_next().await {
        res.expect("a load task failed");
    }
    let took = started.elapsed();
    done.store(true, Ordering::SeqCst);
    let (latencies, failures, peak_sampled) = watcher.await.unwrap();
    let hwm = status_kib(pid, "VmHWM:") * 1024;
    drop(stalled);

    let ok = tally.ok.load(Ordering::Relaxed);
    let exhausted = tally.exhausted.load(Ordering::Relaxed);
    let allowance = BASE_MIB * MIB + (streams as u64 + 2) * PER_STREAM;
    eprintln!(
        "load: {streams} streams, {sessions} sessions, {rounds} rounds in {took:?}: {ok} ok, \
         {exhausted} RESOURCE_EXHAUSTED; RSS before {} MiB, peak sampled {} MiB, VmHWM {} MiB \
         (budget {BUDGET_MIB} MiB + allowance {} MiB); idle client's small read p50 {:?} p99 {:?} \
         over {} reads",
        rss_base / 1024,
        peak_sampled / 1024,
        hwm / MIB,
        allowance / MIB,
        percentile(latencies.clone(), 0.5),
        percentile(latencies.clone(), 0.99),
        latencies.len(),
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(!latencies.is_empty(), "the idle client read nothing");
    assert!(ok > 0);
    assert!(
        hwm <= BUDGET_MIB * MIB + allowance,
        "peak RSS {} MiB over budget {BUDGET_MIB} MiB + {} MiB",
        hwm / MIB,
        allowance / MIB
    );
    let _ = sessions_check(&daemon).await;
}

/// Every lease and charge is given back once the clients are done.
async fn sessions_check(daemon: &DaemonProcess) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = daemon.metric("sluice_share_held_bytes").await;
        let leased = daemon.metric("sluice_session_leased_bytes").await;
        if held == 0.0 && leased == 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still held {held}, leased {leased}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
