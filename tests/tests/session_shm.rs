//! Sessions through a real daemon: leased shared-memory extents, stream
//! fallback, quotas, release on session end, eviction under leases, and no
//! descriptor or mapping left behind per session.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sluice_engine::ByteSize;
use sluice_proto::v1;
use sluice_proto::v1::session_response::Msg as Out;
use sluice_tests::daemon::{DaemonProcess, TestDaemon};
use sluice_tests::grpc::{connect, http_get, metric, pattern, read};
use sluice_tests::shm::{RawSession, map_segments};
use tonic::Code;

fn fd_socket(d: &TestDaemon) -> PathBuf {
    let mut p = d.socket().as_os_str().to_owned();
    p.push(".fds");
    PathBuf::from(p)
}

/// Collects the extents of `n` fetches (or their errors), by id.
async fn collect(
    s: &mut RawSession,
    n: usize,
) -> HashMap<u64, Result<Vec<v1::LeasedExtent>, v1::FetchError>> {
    let mut done = HashMap::new();
    let mut parts: HashMap<u64, Vec<v1::LeasedExtent>> = HashMap::new();
    while done.len() < n {
        match s.next().await {
            Out::Extent(e) => {
                let id = e.id;
                let last = e.last;
                parts.entry(id).or_default().push(e);
                if last {
                    done.insert(id, Ok(parts.remove(&id).unwrap()));
                }
            }
            Out::Error(e) => {
                done.insert(e.id, Err(e));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_extents_are_byte_exact_and_released() {
    let d = TestDaemon::start_with(|c| {
        c.engine.part_size = ByteSize(256 << 10);
        c.cache.max_object_size = Some(ByteSize::mib(2));
    })
    .await;
    let small = pattern(128 << 10, 1);
    let large = pattern((5 << 20) + 333, 2); // above max_object_size: leased part by part
    std::fs::write(d.root().join("small"), &small).unwrap();
    std::fs::write(d.root().join("large"), &large).unwrap();
    std::fs::write(d.root().join("empty"), b"").unwrap();
    let maps = map_segments(&fd_socket(&d));
    let mut client = connect(d.socket()).await;
    let mut s = RawSession::open(&mut client, true).await;
    assert!(s.opened.shared_memory);
    assert_eq!(s.opened.segments.len(), maps.len());
    for seg in &s.opened.segments {
        assert_eq!(maps[&seg.id].slice(0, 0).len(), 0);
    }
    let range = v1::ByteRange {
        offset: 1000,
        length: 50_000,
        to_end: false,
    };
    s.fetch(1, &d.file_uri("small"), None).await;
    s.fetch(2, &d.file_uri("large"), None).await;
    s.fetch(3, &d.file_uri("missing"), None).await;
    s.fetch(4, &d.file_uri("small"), Some(range)).await;
    s.fetch(5, &d.file_uri("empty"), None).await;
    let done = collect(&mut s, 5).await;
    let bytes = |id: u64| -> Vec<u8> {
        let extents = done[&id].as_ref().unwrap();
        let mut out = Vec::new();
        for e in extents {
            assert_eq!(
                e.object_offset,
                extents[0].object_offset + out.len() as u64,
                "extents in order"
            );
            out.extend_from_slice(maps[&e.segment].slice(e.segment_offset, e.length));
        }
        out
    };
    assert!(bytes(1) == small, "whole small object");
    assert_eq!(
        done[&1].as_ref().unwrap().len(),
        1,
        "a small object is one extent"
    );
    assert!(bytes(2) == large, "large object, part by part");
    assert!(
        done[&2].as_ref().unwrap().len() > 1,
        "a large object comes in parts"
    );
    assert_eq!(done[&3].as_ref().unwrap_err().code, Code::NotFound as i32);
    assert!(bytes(4) == small[1000..51_000], "ranged fetch");
    assert!(bytes(5).is_empty());
    assert_eq!(
        done[&1].as_ref().unwrap()[0].meta.as_ref().unwrap().size,
        small.len() as u64
    );

    // Leases count what they pin: the range of `small` is a slice of the
    // cached object the first fetch leased already (nothing more), unless it
    // was read before that object was cached (then its own buffer).
    let leased = d.leased_bytes().await;
    let pinned = (small.len() + large.len()) as f64;
    assert!(
        leased == pinned || leased == pinned + 50_000.0,
        "leased {leased}, pinned {pinned}"
    );
    let ids: Vec<u64> = done[&1]
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.lease_id)
        .collect();
    s.release(ids).await;
    // The object stays pinned while the range's lease of it lives.
    let after = if leased == pinned {
        leased
    } else {
        leased - small.len() as f64
    };
    d.wait_leased(after, Duration::from_secs(5)).await;
    // Ending the session releases the rest.
    drop(s);
    d.wait_leased(0.0, Duration::from_secs(5)).await;
    let (_, body) = http_get(d.http(), "/metrics").await;
    assert!(
        metric(
            &body,
            "sluice_session_delivered_bytes_total{transport=\"shm\"}"
        ) >= leased as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_shared_memory_results_come_as_chunks() {
    let d = TestDaemon::start_with(|c| c.read.chunk_size = ByteSize(64 << 10)).await;
    let data = pattern(300_000, 3);
    std::fs::write(d.root().join("o"), &data).unwrap();
    let mut client = connect(d.socket()).await;
    let mut s = RawSession::open(&mut client, false).await;
    assert!(!s.opened.shared_memory);
    s.fetch(7, &d.file_uri("o"), None).await;
    let mut got = Vec::new();
    loop {
        match s.next().await {
            Out::Chunk(c) => {
                assert_eq!((c.id, c.offset), (7, got.len() as u64));
                got.extend_from_slice(&c.data);
                if c.last {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(got == data);
    assert_eq!(d.leased_bytes().await, 0.0);
}

/// Fetches sent as one `FetchBatch` are answered exactly as if they came
/// one by one (a client that accepts batches may get the answers together);
/// a client that did not ask for batches never gets one; a batch over the
/// protocol's limit ends the session with INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_batches_are_answered_like_single_fetches() {
    let d = TestDaemon::start().await;
    let objects: Vec<Vec<u8>> = (0..40).map(|i| pattern(1000 + i * 977, i as u8)).collect();
    for (i, data) in objects.iter().enumerate() {
        std::fs::write(d.root().join(format!("o{i}")), data).unwrap();
    }
    let maps = map_segments(&fd_socket(&d));
    let mut client = connect(d.socket()).await;
    for batches in [true, false] {
        let mut s = RawSession::open_with(&mut client, true, batches).await;
        assert!(s.opened.batches, "the daemon takes fetch batches");
        // Twice: cold (read from the files), then cached.
        for round in 0..2u64 {
            let mut fetches: Vec<(u64, String)> = (0..40u64)
                .map(|i| (round * 100 + i, d.file_uri(&format!("o{i}"))))
                .collect();
            fetches.push((round * 100 + 99, d.file_uri("missing")));
            s.fetch_batch(&fetches).await;
            let done = collect(&mut s, fetches.len()).await;
            assert_eq!(done.len(), 41);
            for (i, data) in objects.iter().enumerate() {
                let extents = done[&(round * 100 + i as u64)].as_ref().unwrap();
                assert_eq!(extents.len(), 1);
                let e = &extents[0];
                assert!(
                    maps[&e.segment].slice(e.segment_offset, e.length) == &data[..],
                    "object {i}, round {round}"
                );
            }
            let missing = done[&(round * 100 + 99)].as_ref().unwrap_err();
            assert_eq!(missing.code, Code::NotFound as i32);
        }
        if !batches {
            assert_eq!(s.batches_received, 0, "batches only to a client asking");
        }
    }
    let s = RawSession::open_with(&mut client, true, true).await;
    let too_many: Vec<(u64, String)> = (0..1025u64).map(|i| (i, d.file_uri("o0"))).collect();
    s.fetch_batch(&too_many).await;
    let mut rx = s.rx;
    let status = loop {
        match rx.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the session ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(status.message().contains("1024"), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_quota_is_enforced() {
    let d = TestDaemon::start_with(|c| {
        c.session.lease_quota = ByteSize(1 << 20);
        c.session.lease_wait = Duration::from_millis(200);
        c.cache.max_object_size = Some(ByteSize(1 << 20));
        c.engine.part_size = ByteSize(1 << 20);
    })
    .await;
    for i in 0..3 {
        std::fs::write(d.root().join(format!("o{i}")), pattern(600 << 10, i)).unwrap();
    }
    std::fs::write(d.root().join("huge"), pattern(2 << 20, 9)).unwrap();
    let mut client = connect(d.socket()).await;
    let mut s = RawSession::open(&mut client, true).await;
    assert_eq!(s.opened.lease_quota, 1 << 20);
    s.fetch(1, &d.file_uri("o0"), None).await;
    let first = collect(&mut s, 1).await.remove(&1).unwrap().unwrap();
    s.fetch(2, &d.file_uri("o1"), None).await;
    let err = collect(&mut s, 1).await.remove(&2).unwrap().unwrap_err();
    assert_eq!(err.code, Code::ResourceExhausted as i32, "{}", err.message);
    assert!(
        err.message.contains("1048576"),
        "names the quota: {}",
        err.message
    );
    s.fetch(3, &d.file_uri("huge"), None).await;
    let err = collect(&mut s, 1).await.remove(&3).unwrap().unwrap_err();
    assert_eq!(err.code, Code::ResourceExhausted as i32, "{}", err.message);
    // After a release the same fetch fits.
    s.release(vec![first[0].lease_id]).await;
    s.fetch(4, &d.file_uri("o2"), None).await;
    assert!(collect(&mut s, 1).await.remove(&4).unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pressure_on_the_cache_never_frees_a_leased_extent() {
    // An 8 MiB arena; one leased 1 MiB object, then 40 MiB of other
    // objects read through it, so everything unleased is evicted many times.
    let d = TestDaemon::start_with(|c| {
        c.cache.memory_budget = ByteSize::mib(8);
        c.cache.segment_size = ByteSize::mib(2);
        c.engine.part_size = ByteSize::mib(1);
        c.write.part_size = ByteSize::mib(1);
    })
    .await;
    let held = pattern(1 << 20, 42);
    std::fs::write(d.root().join("held"), &held).unwrap();
    for i in 0..40 {
        std::fs::write(d.root().join(format!("o{i}")), pattern(1 << 20, i)).unwrap();
    }
    let maps = map_segments(&fd_socket(&d));
    let mut client = connect(d.socket()).await;
    let mut s = RawSession::open(&mut client, true).await;
    s.fetch(1, &d.file_uri("held"), None).await;
    let extent = collect(&mut s, 1)
        .await
        .remove(&1)
        .unwrap()
        .unwrap()
        .remove(0);
    for round in 0..2 {
        for i in 0..40 {
            let (_, got) = read(&mut client, &d.file_uri(&format!("o{i}")), None)
                .await
                .unwrap();
            assert!(got == pattern(1 << 20, i), "round {round} object {i}");
        }
    }
    let seen = maps[&extent.segment].slice(extent.segment_offset, extent.length);
    assert!(
        seen == held,
        "a leased extent was overwritten under cache pressure"
    );
    let (_, body) = http_get(d.http(), "/metrics").await;
    assert!(
        metric(&body, "sluice_cache_evictions_total") >= 30.0,
        "the cache was under pressure"
    );
}

/// What a process holds of the arena and of descriptors, from `/proc`.
#[derive(Debug)]
struct Held {
    /// The targets of its open descriptors, sorted.
    fds: Vec<String>,
    /// Descriptors that are arena segments.
    arena_fds: usize,
    /// Mappings of arena segments.
    arena_maps: usize,
}

const ARENA: &str = "/memfd:sluice-arena";

fn held(pid: u32) -> Held {
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's descriptors")
        .flatten()
        // A descriptor may close between the listing and the readlink.
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .collect();
    fds.sort();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("the daemon's maps");
    Held {
        arena_fds: fds.iter().filter(|t| t.starts_with(ARENA)).count(),
        arena_maps: maps.lines().filter(|l| l.contains(ARENA)).count(),
        fds,
    }
}

/// One client's life: receives and maps the segments, opens a session, reads
/// one object through a lease, and goes away. Returns the segment count.
async fn one_session(p: &DaemonProcess, uri: &str, data: &[u8]) -> usize {
    let pid = p.child.id();
    let mut fds = p.socket.as_os_str().to_owned();
    fds.push(".fds");
    let maps = map_segments(&PathBuf::from(fds));
    let mut client = connect(&p.socket).await;
    let mut s = RawSession::open(&mut client, true).await;
    assert_eq!(s.opened.segments.len(), maps.len());
    // Sending the descriptors leaves the daemon holding each segment once.
    let now = held(pid);
    assert_eq!(
        now.arena_fds,
        maps.len(),
        "daemon descriptors: {:?}",
        now.fds
    );
    s.fetch(1, uri, None).await;
    let extents = collect(&mut s, 1).await.remove(&1).unwrap().unwrap();
    let mut got = Vec::new();
    for e in &extents {
        got.extend_from_slice(maps[&e.segment].slice(e.segment_offset, e.length));
    }
    assert!(got == data, "leased bytes differ from the file");
    drop(s);
    drop(client);
    maps.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_leave_no_descriptors_or_mappings_behind() {
    // A real daemon process, so that /proc shows only what it holds.
    let p = DaemonProcess::spawn_with_env(
        &["--memory-budget", "64MiB"],
        &[("SLUICE_CACHE__SEGMENT_SIZE", "16MiB")],
    );
    let pid = p.child.id();
    let data = pattern(100_000, 5);
    std::fs::write(p.root.join("o"), &data).unwrap();
    let uri = format!("file://{}/o", p.root.display());
    let before = held(pid);
    assert_eq!(
        before.arena_fds, 4,
        "one memfd per segment: {:?}",
        before.fds
    );
    assert!(before.arena_maps >= 4, "each segment mapped once");
    // The arena is anonymous memory: nothing named in any directory.
    assert!(
        before.fds.iter().all(|t| !t.starts_with("/dev/shm")),
        "{:?}",
        before.fds
    );
    const SESSIONS: usize = 20;
    for _ in 0..SESSIONS {
        assert_eq!(one_session(&p, &uri, &data).await, 4);
    }
    // Every client is gone: once the daemon has closed their connections,
    // it holds what it held before. A descriptor or mapping kept per
    // session would leave at least SESSIONS more.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let after = held(pid);
        if after.fds.len() <= before.fds.len()
            && after.arena_fds == before.arena_fds
            && after.arena_maps == before.arena_maps
        {
            break;
        }
        if Instant::now() > deadline {
            let mut extra = after.fds.clone();
            for t in &before.fds {
                if let Some(i) = extra.iter().position(|x| x == t) {
                    extra.remove(i);
                }
            }
            panic!(
                "after {SESSIONS} sessions the daemon holds {} descriptors (was {}), \
                 {} arena mappings (was {}); new: {extra:?}",
                after.fds.len(),
                before.fds.len(),
                after.arena_maps,
                before.arena_maps
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_sessions_without_waiting_out_the_grace_period() {
    let d = TestDaemon::start_with(|c| c.server.grace_period = Duration::from_secs(30)).await;
    std::fs::write(d.root().join("o"), pattern(4096, 1)).unwrap();
    let mut client = connect(d.socket()).await;
    let mut s = RawSession::open(&mut client, true).await;
    s.fetch(1, &d.file_uri("o"), None).await;
    assert!(collect(&mut s, 1).await.remove(&1).unwrap().is_ok());
    let started = Instant::now();
    let stopping = tokio::spawn(d.stop());
    let end = tokio::time::timeout(Duration::from_secs(10), s.rx.message())
        .await
        .expect("session ended");
    assert_eq!(end.unwrap_err().code(), Code::Unavailable);
    drop(s);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("daemon stopped")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited {:?}",
        started.elapsed()
    );
}
