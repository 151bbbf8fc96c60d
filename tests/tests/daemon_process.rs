//! The `sluiced` binary as a process: signals, draining, memory under load.

use std::time::{Duration, Instant};

use sluice_tests::daemon::DaemonProcess;
use sluice_tests::grpc::{connect, pattern, read};

/// Peak resident set size of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/pid/status");
    kb * 1024
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
    while let Some(m) = stream
        .message()
        .await
        .expect("in-flight read survives shutdown")
    {
        got.extend_from_slice(&m.data);
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
