//! The `sluiced` binary under a `Type=notify` unit: what systemd would
//! receive on its notification socket, played by a datagram socket the
//! test binds.

use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_tests::daemon::bin;

/// How long each expected message may take (a loaded 2-core machine).
const WAIT: Duration = Duration::from_secs(30);

/// Half of it is the ping interval: 100 ms, so several arrive quickly.
const WATCHDOG_USEC: &str = "200000";

/// Starts `sluiced` with its socket in `dir`, as systemd would with
/// `NOTIFY_SOCKET` and `WatchdogSec=` set.
fn start(dir: &Path, notify: &Path) -> Child {
    let mut cmd = Command::new(bin("sluiced"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SLUICE_") {
            cmd.env_remove(key);
        }
    }
    let log = std::fs::File::create(dir.join("sluiced.log")).unwrap();
    cmd.arg("--socket")
        .arg(dir.join("sluiced.sock"))
        .args(["--http", "127.0.0.1:0", "--memory-budget", "64MiB"])
        .args(["--log-level", "info"])
        .env("NOTIFY_SOCKET", notify)
        .env("WATCHDOG_USEC", WATCHDOG_USEC)
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn sluiced")
}

/// The next message, or `None` after `timeout`.
fn next(systemd: &UnixDatagram, timeout: Duration) -> Option<String> {
    systemd.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    match systemd.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8(buf[..n].to_vec()).expect("UTF-8 message")),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock) => None,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut) => None,
        Err(e) => panic!("recv: {e}"),
    }
}

/// Reads messages until one has `line`; returns it and those before it.
fn wait_for(systemd: &UnixDatagram, line: &str, log: &Path) -> (String, Vec<String>) {
    let deadline = Instant::now() + WAIT;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = next(systemd, left.max(Duration::from_millis(1))).unwrap_or_else(|| {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("no {line:?} within {WAIT:?}; got {before:?}; daemon log:\n{log}")
        });
        if message.lines().any(|l| l == line) {
            return (message, before);
        }
        before.push(message);
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "sluiced did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ready_when_bound_watchdog_while_serving_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let systemd = UnixDatagram::bind(&notify).unwrap();
    let socket = dir.path().join("sluiced.sock");
    let log = dir.path().join("sluiced.log");
    let mut child = start(dir.path(), &notify);

    // READY=1 comes first, and only once both sockets accept.
    let (ready, before) = wait_for(&systemd, "READY=1", &log);
    assert!(before.is_empty(), "messages before READY=1: {before:?}");
    UnixStream::connect(&socket).expect("the gRPC socket accepts at READY=1");
    UnixStream::connect(socket.with_extension("sock.fds"))
        .expect("the descriptor socket accepts at READY=1");
    let status = format!("STATUS=serving on {}, http 127.0.0.1:", socket.display());
    assert!(ready.contains(&status), "{ready:?} lacks {status:?}");

    // Pings, again and again, while serving.
    for _ in 0..3 {
        let (ping, _) = wait_for(&systemd, "WATCHDOG=1", &log);
        assert_eq!(ping, "WATCHDOG=1");
    }

    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let (stopping, _) = wait_for(&systemd, "STOPPING=1", &log);
    assert!(stopping.contains("STATUS=draining"), "{stopping:?}");
    let exit = wait_exit(&mut child);
    assert!(exit.success(), "sluiced exited with {exit}");

    // The pings stopped before STOPPING=1 was sent.
    let mut after = Vec::new();
    while let Some(message) = next(&systemd, Duration::from_millis(1)) {
        after.push(message);
    }
    assert!(
        after.iter().all(|m| !m.contains("WATCHDOG=1")),
        "pings after STOPPING=1: {after:?}"
    );
}
