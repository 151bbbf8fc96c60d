//! Telling systemd how the daemon is doing: the `sd_notify` protocol of a
//! `Type=notify` unit, spoken directly over a Unix datagram socket.
//!
//! systemd passes the address of its notification socket in
//! `NOTIFY_SOCKET`: an absolute path, or `@name` for a socket in the
//! abstract namespace (the `@` stands for the leading NUL byte). Each
//! message is one datagram of newline-separated `KEY=VALUE` lines. Without
//! `NOTIFY_SOCKET` (not under systemd, or another `Type=`) every call here
//! does nothing.
//!
//! What the daemon sends, and when ([`supervised`] wires it into `main`):
//!
//! - `READY=1` with a `STATUS=` line naming the listeners, once
//!   [`crate::Daemon::bind`] has returned: every listener is bound (a
//!   client that connects now is queued and served) and the shared-memory
//!   arena is mapped. systemd holds back units ordered after `sluiced` until
//!   then, and `systemctl start` returns only then.
//! - `WATCHDOG=1` every half of `WATCHDOG_USEC` (systemd sets it from
//!   `WatchdogSec=`), from a task on the tokio runtime: a runtime whose
//!   workers are all stuck stops the pings, and systemd kills the daemon
//!   with SIGABRT and restarts it (`Restart=on-failure`). Ignored when
//!   `WATCHDOG_PID` names another process.
//! - `STOPPING=1` when the shutdown signal arrives. The pings stop first:
//!   how long the drain may take is `server.grace_period`'s business, and
//!   systemd's `TimeoutStopSec`, not the watchdog's.
//!
//! Sending never blocks (the socket is non-blocking: a datagram systemd has
//! no room for is dropped, and the next ping tries again) and never stops
//! the daemon: the first failure is logged at warn, later ones not at all.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::server::Addresses;

/// Shortest ping interval: a `WATCHDOG_USEC` below 2 ms would otherwise ask
/// for a zero-length interval, which tokio refuses.
const MIN_PING_INTERVAL: Duration = Duration::from_millis(1);

/// A connection to systemd's notification socket, or nothing.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    warned: AtomicBool,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; does nothing when it is unset or empty.
    pub fn from_env() -> Self {
        Self::new(std::env::var_os("NOTIFY_SOCKET").as_deref())
    }

    /// From the value `NOTIFY_SOCKET` would have.
    pub fn new(socket: Option<&OsStr>) -> Self {
        let notifier = Notifier {
            target: None,
            warned: AtomicBool::new(false),
        };
        let Some(socket) = socket.filter(|s| !s.is_empty()) else {
            return notifier;
        };
        match connect(socket) {
            Ok(target) => Notifier {
                target: Some(target),
                ..notifier
            },
            Err(error) => {
                notifier.warn_once(&error);
                notifier
            }
        }
    }

    /// Whether messages go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one message (`KEY=VALUE` lines).
    pub fn notify(&self, message: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        match socket.send_to_addr(message.as_bytes(), addr) {
            Ok(n) if n == message.len() => {}
            Ok(_) => self.warn_once(&io::Error::other("message truncated")),
            Err(error) => self.warn_once(&error),
        }
    }

    /// `READY=1`, with the listeners in `STATUS=`.
    pub fn ready(&self, addrs: &Addresses) {
        self.notify(&format!("READY=1\nSTATUS={}", status_line(addrs)));
    }

    /// `STOPPING=1`: the drain began.
    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=draining in-flight calls");
    }

    fn warn_once(&self, error: &io::Error) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                %error,
                "cannot notify systemd (NOTIFY_SOCKET); later failures are not logged"
            );
        }
    }
}

/// An unbound, non-blocking datagram socket and the address to send to.
fn connect(socket: &OsStr) -> io::Result<(UnixDatagram, SocketAddr)> {
    let bytes = socket.as_bytes();
    let addr = match bytes.first() {
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..])?
        }
        Some(b'/') => SocketAddr::from_pathname(socket)?,
        // systemd also knows vsock: addresses (for virtual machines); a
        // daemon on a node has no use for them.
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither an absolute path nor @abstract",
            ));
        }
    };
    let datagram = UnixDatagram::unbound()?;
    datagram.set_nonblocking(true)?;
    Ok((datagram, addr))
}

/// `serving on /run/sluice/sluiced.sock, tcp 0.0.0.0:7420, http 127.0.0.1:7421`.
fn status_line(addrs: &Addresses) -> String {
    let mut line = format!("serving on {}", addrs.socket.display());
    if let Some(tcp) = addrs.tcp {
        line.push_str(&format!(", tcp {tcp}"));
    }
    if let Some(http) = addrs.http {
        line.push_str(&format!(", http {http}"));
    }
    line
}

/// The ping interval from `WATCHDOG_USEC` and `WATCHDOG_PID` (as systemd's
/// `sd_watchdog_enabled` reads them): half the timeout, or `None` when the
/// watchdog is off, the values do not parse, or it is meant for another
/// process than `own_pid`.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        let pid: u32 = pid.trim().parse().ok()?;
        if pid != own_pid {
            return None;
        }
    }
    Some((Duration::from_micros(usec) / 2).max(MIN_PING_INTERVAL))
}

/// The running watchdog pings; they stop when this is dropped.
#[derive(Debug)]
pub struct Watchdog {
    task: JoinHandle<()>,
}

impl Watchdog {
    /// Starts pinging every `interval` on the current tokio runtime, the
    /// first ping at once.
    pub fn spawn(notifier: Arc<Notifier>, interval: Duration) -> Self {
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            // A late ping is sent when the runtime gets to it, not made up
            // for with a burst.
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                notifier.notify("WATCHDOG=1");
            }
        });
        Watchdog { task }
    }

    /// Stops the pings and returns once none can be sent any more (a ping
    /// being sent on another worker right now finishes first).
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Announces a bound daemon to systemd and returns the `shutdown` future to
/// serve with: `READY=1` now, watchdog pings while it is pending, and when
/// `shutdown` completes the pings stop and `STOPPING=1` is sent. Nothing
/// of this happens outside systemd. Call it on the runtime that serves.
pub fn supervised<F>(addrs: &Addresses, shutdown: F) -> impl Future<Output = ()> + use<F>
where
    F: Future<Output = ()>,
{
    let notifier = Arc::new(Notifier::from_env());
    notifier.ready(addrs);
    let interval = watchdog_interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    );
    let watchdog = interval
        .filter(|_| notifier.is_enabled())
        .map(|every| Watchdog::spawn(notifier.clone(), every));
    async move {
        shutdown.await;
        if let Some(watchdog) = watchdog {
            watchdog.stop().await;
        }
        notifier.stopping();
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn addrs() -> Addresses {
        Addresses {
            socket: PathBuf::from("/run/sluice/sluiced.sock"),
            tcp: None,
            http: Some(([127, 0, 0, 1], 7421).into()),
            facade: Default::default(),
        }
    }

    fn recv(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a datagram");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_for_this_process_only() {
        let us = Some("30000000");
        assert_eq!(
            watchdog_interval(us, None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval(us, Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_interval(us, Some("8"), 7), None);
        assert_eq!(watchdog_interval(us, Some("x"), 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("-5"), None, 7), None);
        assert_eq!(
            watchdog_interval(Some("1"), None, 7),
            Some(MIN_PING_INTERVAL)
        );
    }

    #[test]
    fn ready_goes_to_a_path_socket_with_the_listeners() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(Some(path.as_os_str()));
        assert!(notifier.is_enabled());
        notifier.ready(&addrs());
        assert_eq!(
            recv(&systemd),
            "READY=1\nSTATUS=serving on /run/sluice/sluiced.sock, http 127.0.0.1:7421"
        );
    }

    #[test]
    fn at_names_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("sluice-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd = UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier::new(Some(OsStr::new(&format!("@{name}"))));
        notifier.stopping();
        assert_eq!(
            recv(&systemd),
            "STOPPING=1\nSTATUS=draining in-flight calls"
        );
    }

    #[test]
    fn without_a_usable_socket_nothing_is_sent() {
        for value in [None, Some(""), Some("relative/notify"), Some("vsock:2:1")] {
            let notifier = Notifier::new(value.map(OsStr::new));
            assert!(!notifier.is_enabled(), "{value:?}");
            notifier.notify("READY=1");
        }
    }

    #[test]
    fn a_socket_that_is_gone_is_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let notifier = Notifier::new(Some(dir.path().join("nobody").as_os_str()));
        assert!(notifier.is_enabled());
        notifier.notify("READY=1");
        notifier.notify("WATCHDOG=1");
        assert!(notifier.warned.load(Ordering::Relaxed));
    }

    #[tokio::test(start_paused = true)]
    async fn watchdog_pings_until_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = tokio::net::UnixDatagram::bind(&path).unwrap();
        let notifier = Arc::new(Notifier::new(Some(path.as_os_str())));
        let every = Duration::from_secs(15);
        let watchdog = Watchdog::spawn(notifier, every);
        let mut buf = [0u8; 64];
        let start = tokio::time::Instant::now();
        for _ in 0..3 {
            let n = systemd.recv(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"WATCHDOG=1");
        }
        // The first at once, then one per interval.
        assert_eq!(start.elapsed(), every * 2);
        watchdog.stop().await;
        tokio::time::sleep(every * 10).await;
        let err = systemd.try_recv(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
