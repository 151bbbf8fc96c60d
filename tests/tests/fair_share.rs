//! One slow client never stalls the node: a client that stops reading holds
//! at most its share of the memory budget and no backend request slots, so
//! another client's read goes through at once; after `read.stall_timeout`
//! its streams are ended and what it held is freed.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_tests::daemon::{DaemonProcess, bin};
use sluice_tests::grpc::pattern;

const MIB: u64 = 1 << 20;

/// 32 sparse 32 MiB files (no disk written: they read as zeros) and one
/// small file.
fn data(root: &Path) {
    std::fs::create_dir(root.join("big")).unwrap();
    for i in 0..32 {
        let f = std::fs::File::create(root.join(format!("big/{i:02}"))).unwrap();
        f.set_len(32 * MIB).unwrap();
    }
    std::fs::write(root.join("small"), pattern(1000, 9)).unwrap();
}

fn daemon(stall_timeout: &str) -> DaemonProcess {
    DaemonProcess::spawn_with_env(
        &[],
        &[
            ("SLUICE_CACHE__MEMORY_BUDGET", "64MiB"),
            ("SLUICE_CACHE__SEGMENT_SIZE", "64MiB"),
            ("SLUICE_CACHE__MEMORY_WAIT", "30s"),
            ("SLUICE_READ__STALL_TIMEOUT", stall_timeout),
        ],
    )
}

/// `sluice bench … --delivery stream --concurrency 64` against `daemon`.
fn greedy_client(daemon: &DaemonProcess, stderr: Stdio) -> Child {
    let uri = format!("file://{}/big/", daemon.root.display());
    Command::new(bin("sluice"))
        .args(["--address", &daemon.address()])
        .args(["bench", &uri, "--delivery", "stream", "--concurrency", "64"])
        .args(["--passes", "100"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn sluice bench")
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

async fn wait_metric(
    daemon: &DaemonProcess,
    series: &str,
    what: &str,
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = daemon.metric(series).await;
        if ok(v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {series} = {v}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `sluice cat` of the small uncached file; its output and how long it took.
fn cat_small(daemon: &DaemonProcess) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let out = Command::new(bin("sluice"))
        .args(["--address", &daemon.address()])
        .args(["cat", &format!("file://{}/small", daemon.root.display())])
        .stdin(Stdio::null())
        .output()
        .expect("run sluice cat");
    (out, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_client_does_not_stall_the_others() {
    // Stalled streams are never ended here: what is tested is the share.
    let daemon = daemon("0s");
    data(&daemon.root);
    let mut greedy = greedy_client(&daemon, Stdio::null());
    // The greedy client holds memory (its streams' parts) …
    let held = wait_metric(
        &daemon,
        "sluice_share_held_bytes",
        "the greedy client reads",
        |v| v >= (8 * MIB) as f64,
    )
    .await;
    // … and stops reading.
    signal(&greedy, libc::SIGSTOP);
    eprintln!("greedy client stopped holding {held} bytes");
    let (out, took) = cat_small(&daemon);
    eprintln!("idle client's uncached read took {took:?}");
    assert!(
        out.status.success(),
        "the idle client's read failed while another client was stopped: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    assert_eq!(out.stdout, pattern(1000, 9));
    // The stopped client holds at most its share (a quarter of the budget)
    // plus the parts its streams took while their consumer worked on one:
    // within what all clients may hold, so the rest stays for others.
    let held = daemon.metric("sluice_share_held_bytes").await;
    assert!(held <= (48 * MIB) as f64, "held {held}");
    // And no request slot: the daemon's own reads still run (the cat above),
    // and the stopped client's fetches still finish into their buffers.
    signal(&greedy, libc::SIGCONT);
    let _ = greedy.kill();
    let _ = greedy.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_is_ended_and_frees_what_it_held() {
    let daemon = daemon("2s");
    data(&daemon.root);
    let mut greedy = greedy_client(&daemon, Stdio::piped());
    wait_metric(
        &daemon,
        "sluice_share_held_bytes",
        "the greedy client reads",
        |v| v >= (8 * MIB) as f64,
    )
    .await;
    signal(&greedy, libc::SIGSTOP);
    wait_metric(
        &daemon,
        "sluice_rpc_stalled_streams_ended_total",
        "the stalled session is ended",
        |v| v >= 1.0,
    )
    .await;
    wait_metric(
        &daemon,
        "sluice_share_held_bytes",
        "what it held is freed",
        |v| v == 0.0,
    )
    .await;
    // Back from the stop, the client is told why its session ended.
    signal(&greedy, libc::SIGCONT);
    let out = greedy.wait_with_output_timeout();
    assert!(
        !out.0.success(),
        "the bench of an ended session cannot succeed"
    );
    assert!(
        out.1.contains("session") && out.1.contains("ended"),
        "the client is told its session ended: {}",
        out.1
    );
    let log = daemon.log();
    assert!(
        log.contains("ended a response stream its client stopped reading"),
        "{log}"
    );
}

trait WaitOutput {
    fn wait_with_output_timeout(&mut self) -> (std::process::ExitStatus, String);
}

impl WaitOutput for Child {
    fn wait_with_output_timeout(&mut self) -> (std::process::ExitStatus, String) {
        use std::io::Read;
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "the client did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        self.stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, err)
    }
}

/// A writer that stops sending has its write aborted after the stall
/// timeout: its part buffer (charged to its share) is freed and nothing is
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_writer_gives_its_buffer_back() {
    use sluice_proto::v1;
    use sluice_proto::v1::write_request::Msg;
    use sluice_tests::daemon::TestDaemon;
    let daemon = TestDaemon::start_with(|c| {
        c.read.stall_timeout = Duration::from_secs(1);
    })
    .await;
    let uri = daemon.file_uri("stalled-write");
    let mut client = sluice_tests::grpc::connect(daemon.socket()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::WriteRequest {
        msg: Some(Msg::Header(v1::WriteHeader {
            uri: uri.clone(),
            size_hint: 0,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    tx.send(v1::WriteRequest {
        msg: Some(Msg::Data(bytes::Bytes::from(pattern(1 << 20, 3)))),
    })
    .await
    .unwrap();
    let call = tokio::spawn(async move {
        client
            .write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    // The write holds its part buffer, charged to the client …
    let metrics = |daemon: &TestDaemon| {
        let http = daemon.http();
        async move {
            let body = sluice_tests::grpc::http_get(http, "/metrics").await.1;
            sluice_tests::grpc::metric(&body, "sluice_share_held_bytes")
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics(&daemon).await == 0.0 {
        assert!(Instant::now() < deadline, "the write never held its buffer");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // … then sends nothing more, with its stream still open.
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted, "{}", err.message());
    assert!(
        err.message().contains("read.stall_timeout"),
        "{}",
        err.message()
    );
    assert_eq!(metrics(&daemon).await, 0.0, "the buffer was given back");
    assert!(
        !daemon.root().join("stalled-write").exists(),
        "nothing stored"
    );
    drop(tx);
}

/// A busy client that reads everything it is given always completes,
/// whatever the delivery, even when its fetches together need far more
/// than its share: streams and buffers of one client never wait for each
/// other's room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_client_completes_with_every_delivery() {
    let daemon = daemon("0s");
    data(&daemon.root);
    for i in 0..64 {
        std::fs::write(
            daemon.root.join(format!("big/s{i:02}")),
            pattern(300_000, i),
        )
        .unwrap();
    }
    let uri = format!("file://{}/big/", daemon.root.display());
    for delivery in ["shm", "stream", "read"] {
        let out = Command::new(bin("sluice"))
            .args(["--address", &daemon.address()])
            .args(["bench", &uri, "--delivery", delivery, "--concurrency", "64"])
            .args(["--passes", "1"])
            .stdin(Stdio::null())
            .output()
            .expect("run sluice bench");
        assert!(
            out.status.success(),
            "{delivery}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            daemon.log()
        );
    }
}
