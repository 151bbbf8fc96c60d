//! The `sluiced` binary as a process: signals, draining, memory under load.

use std::time::{Duration, Instant};

use sluice_proto::v1::session_response::Msg as Out;
use sluice_tests::daemon::DaemonProcess;
use sluice_tests::grpc::{connect, pattern, read};
use sluice_tests::shm::{RawSession, map_segments};

/// A `kB` field of `/proc/<pid>/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/pid/status"));
    kb * 1024
}

/// Peak resident set size of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_reads_in_flight_then_exits_zero() {
    let mut p = DaemonProcess::spawn(&["--memory-budget", "64MiB"]);
    // Larger than max_object_size (budget / 4): streamed part by part, so
    // the read really is in flight while the signal arrives.
    let data = pattern(48 << 20, 7);
    std::fs::write(p.root.join("big"), &data).unwrap();
    let uri = format!("file://{}/big", p.root.display());
    let mut client = connect(&p.socket).await;
    let req = sluice_proto::v1::ReadRequest {
        uri,
        range: None,
        no_cache: false,
    };
    let mut stream = client.read(req).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let mut got = first.data.to_vec();

    p.signal(libc::SIGTERM);
    // New connections are refused once the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&p.socket).is_ok() {
        assert!(
            Instant::now() < deadline,
            "socket still accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The read in flight finishes, byte-exact.
    loop {
        match stream.message().await {
            Ok(Some(m)) => got.extend_from_slice(&m.data),
            Ok(None) => break,
            Err(status) => panic!(
                "in-flight read did not survive shutdown after {} of {} bytes: {status:?}\n\
                 daemon exit: {:?}\ndaemon log:\n{}",
                got.len(),
                data.len(),
                p.child.try_wait(),
                p.log()
            ),
        }
    }
    assert!(got == data, "drained read differs");
    drop(stream);
    drop(client);
    let status = p.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(!p.socket.exists(), "socket file removed on exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_stays_within_budget_plus_overhead_under_load() {
    const BUDGET: u64 = 64 << 20;
    let p = DaemonProcess::spawn(&["--memory-budget", "64MiB"]);
    let pid = p.child.id();
    // 160 MiB of 4 MiB objects (cacheable: budget/4 = 16 MiB) and two
    // 24 MiB objects (streamed): 2.5× the budget, read twice by 16 clients.
    let mut uris = Vec::new();
    for i in 0..40 {
        std::fs::write(p.root.join(format!("o{i}")), pattern(4 << 20, i)).unwrap();
        uris.push(format!("file://{}/o{i}", p.root.display()));
    }
    for i in 0..2 {
        std::fs::write(p.root.join(format!("big{i}")), pattern(24 << 20, i)).unwrap();
        uris.push(format!("file://{}/big{i}", p.root.display()));
    }
    let baseline = peak_rss(pid);
    let clients = (0..16).map(|c| {
        let (socket, uris) = (p.socket.clone(), uris.clone());
        tokio::spawn(async move {
            let mut client = connect(socket).await;
            let mut bytes = 0;
            for pass in 0..2 {
                for k in 0..uris.len() {
                    let uri = &uris[(k + c * 3 + pass) % uris.len()];
                    bytes += read(&mut client, uri, None).await.unwrap().1.len();
                }
            }
            bytes
        })
    });
    let total: usize = futures::future::join_all(clients)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .sum();
    assert_eq!(total, 16 * 2 * (40 * (4 << 20) + 2 * (24 << 20)));
    let peak = peak_rss(pid);
    // Overhead outside the payload budget: runtime and allocator (64 MiB
    // allowed) plus per-connection HTTP/2 and encoding buffers (10 MiB per
    // client allowed). Loose on purpose, but an unbounded buffer of this load
    // (11 GiB moved) or a cache ignoring its budget (352 MiB of distinct
    // objects) would exceed it by far.
    let overhead = (64 << 20) + 16 * (10 << 20);
    assert!(
        peak <= baseline + BUDGET + overhead,
        "peak RSS {} MiB > baseline {} MiB + budget 64 MiB + {} MiB",
        peak >> 20,
        baseline >> 20,
        overhead >> 20
    );
}

fn fd_socket(p: &DaemonProcess) -> std::path::PathBuf {
    let mut s = p.socket.as_os_str().to_owned();
    s.push(".fds");
    s.into()
}

/// Fetches `uri` on a raw session and returns its single extent.
async fn fetch_one(s: &mut RawSession, id: u64, uri: &str) -> sluice_proto::v1::LeasedExtent {
    s.fetch(id, uri, None).await;
    match s.next().await {
        Out::Extent(e) if e.id == id && e.last => e,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemon_gives_clients_an_error_not_a_hang() {
    let mut p = DaemonProcess::spawn(&["--memory-budget", "64MiB"]);
    let data = pattern(256 << 10, 5);
    std::fs::write(p.root.join("o"), &data).unwrap();
    let uri = format!("file://{}/o", p.root.display());
    let maps = map_segments(&fd_socket(&p));
    let mut client = connect(&p.socket).await;
    let mut s = RawSession::open(&mut client, true).await;
    let e = fetch_one(&mut s, 1, &uri).await;

    p.signal(libc::SIGKILL);
    p.wait_exit(Duration::from_secs(10));
    // The session ends with an error, promptly.
    let next = tokio::time::timeout(Duration::from_secs(5), s.rx.message())
        .await
        .expect("no hang");
    assert!(next.is_err() || matches!(next, Ok(None)), "{next:?}");
    // New calls fail with a clear code, not a hang.
    let err = tokio::time::timeout(Duration::from_secs(5), read(&mut client, &uri, None))
        .await
        .expect("no hang")
        .unwrap_err();
    // UNAVAILABLE once the connection is known dead; CANCELLED when the call
    // raced the connection's teardown. Either is a clear, prompt error.
    assert!(
        matches!(
            err.code(),
            tonic::Code::Unavailable | tonic::Code::Cancelled
        ),
        "{err}"
    );
    // What was leased stays readable: the memfd lives while it is mapped.
    assert!(maps[&e.segment].slice(e.segment_offset, e.length) == data);
    let shm: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(!shm.iter().any(|n| n.contains("sluice")), "{shm:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_sessions_stay_within_budget_plus_overhead() {
    const BUDGET: u64 = 64 << 20;
    let p = DaemonProcess::spawn(&["--memory-budget", "64MiB"]);
    let pid = p.child.id();
    let mut uris = Vec::new();
    for i in 0..40 {
        std::fs::write(p.root.join(format!("o{i}")), pattern(1 << 20, i)).unwrap();
        uris.push(format!("file://{}/o{i}", p.root.display()));
    }
    let maps = std::sync::Arc::new(map_segments(&fd_socket(&p)));
    let baseline = peak_rss(pid);
    let sessions = (0..100).map(|c| {
        let (socket, uris, maps) = (p.socket.clone(), uris.clone(), maps.clone());
        tokio::spawn(async move {
            let mut client = connect(socket).await;
            let mut s = RawSession::open(&mut client, true).await;
            let mut checked = 0;
            for k in 0..20u64 {
                let i = (c * 7 + k as usize) % uris.len();
                let e = fetch_one(&mut s, k + 1, &uris[i]).await;
                let bytes = maps[&e.segment].slice(e.segment_offset, e.length);
                assert!(bytes == pattern(1 << 20, i as u8), "session {c} object {i}");
                checked += bytes.len();
                s.release(vec![e.lease_id]).await;
            }
            checked
        })
    });
    let total: usize = futures::future::join_all(sessions)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .sum();
    assert_eq!(total, 100 * 20 * (1 << 20));
    let peak = peak_rss(pid);
    // Runtime and allocator (64 MiB) plus per-connection HTTP/2 state
    // (512 KiB per session allowed). The payload itself lives only in the
    // arena, whatever the number of sessions.
    let overhead = (64 << 20) + 100 * (512 << 10);
    assert!(
        peak <= baseline + BUDGET + overhead,
        "peak RSS {} MiB > baseline {} MiB + budget 64 MiB + {} MiB",
        peak >> 20,
        baseline >> 20,
        overhead >> 20
    );
}

/// Shared-memory pages the process has resident, in bytes.
fn rss_shmem(pid: u32) -> u64 {
    status_bytes(pid, "RssShmem:")
}

/// By default the whole arena is made resident soon after start (on an
/// idle-priority thread); with `cache.prefault = false` its pages stay
/// untouched until reads fill them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_arena_is_made_resident_at_startup_unless_disabled() {
    const BUDGET: u64 = 64 << 20;
    let p = DaemonProcess::spawn(&["--memory-budget", "64MiB"]);
    // Idle priority: slow only when the machine is busy, so the wait is long.
    p.wait_log("shared-memory arena resident", Duration::from_secs(300));
    let resident = rss_shmem(p.child.id());
    assert!(
        resident >= BUDGET,
        "RssShmem {} MiB after the prefault of a {} MiB arena",
        resident >> 20,
        BUDGET >> 20
    );

    let lazy = DaemonProcess::spawn_with_env(
        &["--memory-budget", "64MiB"],
        &[("SLUICE_CACHE__PREFAULT", "false")],
    );
    let data = pattern(100_000, 5);
    std::fs::write(lazy.root.join("small"), &data).unwrap();
    let mut client = connect(&lazy.socket).await;
    let uri = format!("file://{}/small", lazy.root.display());
    assert_eq!(read(&mut client, &uri, None).await.unwrap().1, data);
    let resident = rss_shmem(lazy.child.id());
    assert!(
        resident < BUDGET / 4,
        "RssShmem {} MiB without prefault after one 100 kB read",
        resident >> 20
    );
    assert!(!lazy.log().contains("arena resident"), "{}", lazy.log());
}
