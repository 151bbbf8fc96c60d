//! Who may use the Unix sockets, and what the listeners hold up to: peer
//! credentials against `server.allowed_uids` / `allowed_gids` (tried from
//! processes running under other uids), session log lines naming the peer,
//! the connection limit, idle connections, and accepting while out of
//! descriptors.
//!
//! Foreign uids need root (`setuid` in the child): those tests say so and
//! pass without checking anything when not run as root.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_tests::daemon::{DaemonProcess, TestDaemon, bin};
use sluice_tests::grpc::{connect, http_get, metric, pattern, read};

const NOBODY: u32 = 65534;
const WAIT: Duration = Duration::from_secs(30);

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Lets every uid reach the socket: the directory searchable, the socket
/// (and the descriptor socket) world-connectable.
fn open_up(socket: &Path) {
    let dir = socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// What `peer-probe` reported, run as `uid`/`gid`.
#[derive(Debug)]
struct Probe {
    pid: u32,
    read: String,
    session: String,
    fds: String,
    /// `facade …`, when the daemon serves a facade socket.
    facade: Option<String>,
}

fn probe_as(uid: u32, gid: u32, socket: &Path, uri: &str) -> Probe {
    let mut cmd = Command::new(bin("peer-probe"));
    cmd.arg(socket).arg(uri).stdin(Stdio::null());
    let facade = facade_socket(socket);
    if facade.exists() {
        cmd.arg(&facade).arg("/local/obj");
    }
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "probe as {uid}:{gid} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |what: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(what))
            .unwrap_or_else(|| panic!("no {what} line in {stdout}"))
            .to_owned()
    };
    Probe {
        pid,
        read: line("read "),
        session: line("session "),
        fds: line("fds "),
        facade: stdout
            .lines()
            .find(|l| l.starts_with("facade "))
            .map(str::to_owned),
    }
}

async fn metrics(addr: SocketAddr) -> String {
    http_get(addr, "/metrics").await.1
}

/// Where [`daemon`]'s facade listens: beside the gRPC socket.
fn facade_socket(grpc: &Path) -> std::path::PathBuf {
    grpc.with_file_name("s3.sock")
}

/// A daemon whose sockets anyone may connect to, and whose facade serves
/// unsigned reads of bucket `local` on a Unix socket beside the gRPC one
/// (the same peer policy applies to both).
async fn daemon(configure: impl FnOnce(&mut sluiced::Config)) -> (TestDaemon, String) {
    let d = TestDaemon::start_with(|c| {
        c.server.socket_mode = "0666".into();
        sluice_tests::facade::facade_config(c, false);
        c.facade.listen = None;
        c.facade.socket = Some(facade_socket(&c.server.socket));
        c.facade.anonymous = true;
        configure(c);
    })
    .await;
    open_up(d.socket());
    std::fs::write(d.root().join("obj"), pattern(10_000, 3)).unwrap();
    let uri = d.file_uri("obj");
    (d, uri)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_outside_allowed_uids_gets_permission_denied_and_no_descriptors() {
    if !is_root() {
        eprintln!("skipped: needs root to run a client under another uid");
        return;
    }
    let (d, uri) = daemon(|c| c.server.allowed_uids = vec![4242]).await;
    let p = tokio::task::spawn_blocking({
        let (s, u) = (d.socket().to_path_buf(), uri.clone());
        move || probe_as(NOBODY, NOBODY, &s, &u)
    })
    .await
    .unwrap();
    assert!(
        p.read.starts_with("read err PermissionDenied") && p.read.contains("uid 65534"),
        "{p:?}"
    );
    assert!(!p.read.contains("4242"), "names no other uid: {p:?}");
    assert!(
        p.session.starts_with("session err PermissionDenied"),
        "{p:?}"
    );
    assert!(p.fds.starts_with("fds err"), "no descriptors: {p:?}");
    assert_eq!(p.facade.as_deref(), Some("facade closed"), "{p:?}");
    // Root (the daemon's own uid here) is allowed implicitly.
    let mut me = connect(d.socket()).await;
    let (_, data) = read(&mut me, &uri, None).await.expect("root is served");
    assert_eq!(data, pattern(10_000, 3));
    let m = metrics(d.http()).await;
    let refused = |l: &str| {
        metric(
            &m,
            &format!("sluice_listener_rejected_total{{listener=\"{l}\",reason=\"peer\"}}"),
        )
    };
    assert!(refused("unix") >= 1.0, "{m}");
    assert!(refused("fds") >= 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_uid_or_primary_gid_is_served_others_are_not() {
    if !is_root() {
        eprintln!("skipped: needs root to run a client under another uid");
        return;
    }
    let (d, uri) = daemon(|c| {
        c.server.allowed_uids = vec![NOBODY];
        c.server.allowed_gids = vec![4343];
    })
    .await;
    let socket = d.socket().to_path_buf();
    let run = move |uid, gid| {
        let (s, u) = (socket.clone(), uri.clone());
        tokio::task::spawn_blocking(move || probe_as(uid, gid, &s, &u))
    };
    let by_uid = run(NOBODY, NOBODY).await.unwrap();
    let by_gid = run(4000, 4343).await.unwrap();
    let neither = run(4000, 4000).await.unwrap();
    for p in [&by_uid, &by_gid] {
        assert_eq!(p.read, "read ok 10000", "{p:?}");
        assert_eq!(p.facade.as_deref(), Some("facade HTTP/1.1 200 OK"), "{p:?}");
        assert!(p.session.starts_with("session ok"), "{p:?}");
        assert!(p.fds.starts_with("fds ok"), "{p:?}");
        assert_ne!(p.fds, "fds ok 0", "segments handed out: {p:?}");
    }
    assert!(
        neither.read.starts_with("read err PermissionDenied") && neither.read.contains("uid 4000"),
        "{neither:?}"
    );
    assert!(neither.fds.starts_with("fds err"), "{neither:?}");
    assert_eq!(
        neither.facade.as_deref(),
        Some("facade closed"),
        "the facade's socket has the same policy: {neither:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_lists_serve_every_uid_the_socket_mode_lets_in() {
    if !is_root() {
        eprintln!("skipped: needs root to run a client under another uid");
        return;
    }
    let (d, uri) = daemon(|_| {}).await;
    let s = d.socket().to_path_buf();
    let p = tokio::task::spawn_blocking(move || probe_as(NOBODY, NOBODY, &s, &uri))
        .await
        .unwrap();
    assert_eq!(p.read, "read ok 10000", "{p:?}");
    assert!(p.session.starts_with("session ok"), "{p:?}");
    assert!(p.fds.starts_with("fds ok"), "{p:?}");
    assert_ne!(p.fds, "fds ok 0", "{p:?}");
    assert_eq!(p.facade.as_deref(), Some("facade HTTP/1.1 200 OK"), "{p:?}");
}

/// The daemon process's log so far.
fn log_of(p: &DaemonProcess) -> String {
    std::fs::read_to_string(p.socket.with_file_name("sluiced.log")).unwrap_or_default()
}

/// Waits until the log holds a line for which `pred` holds; returns it.
fn wait_log(p: &DaemonProcess, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(l) = log_of(p).lines().find(|l| pred(l)) {
            return l.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no log line {what} within {WAIT:?}:\n{}",
            log_of(p)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The metrics address of a daemon process, from its "serving" line.
fn http_of(p: &DaemonProcess) -> SocketAddr {
    let line = wait_log(p, "sluiced serving", |l| l.contains("sluiced serving"));
    let at = line.find("http=Some(").expect("http address logged") + "http=Some(".len();
    line[at..]
        .split(')')
        .next()
        .unwrap()
        .parse()
        .expect("http address")
}

fn config_file(p: &Path, toml: &str) -> std::path::PathBuf {
    let path = p.join("sluiced.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_log_lines_carry_the_peers_uid_gid_and_pid() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        "[server]\nsocket_mode = \"0666\"\nallowed_gids = [65534]\n",
    );
    let p = DaemonProcess::spawn(&["--config", cfg.to_str().unwrap()]);
    open_up(&p.socket);
    std::fs::write(p.root.join("obj"), pattern(10_000, 3)).unwrap();
    let uri = format!("file://{}/obj", p.root.display());
    let (uid, gid) = if is_root() {
        (NOBODY, NOBODY)
    } else {
        // SAFETY: getuid/getgid cannot fail.
        unsafe { (libc::getuid(), libc::getgid()) }
    };
    let s = p.socket.clone();
    let probe = tokio::task::spawn_blocking(move || probe_as(uid, gid, &s, &uri))
        .await
        .unwrap();
    assert!(probe.session.starts_with("session ok"), "{probe:?}");
    let who = format!("uid={uid} gid={gid} pid={}", probe.pid);
    let opened = wait_log(&p, "session opened", |l| {
        l.contains("session opened") && l.contains(&who)
    });
    // The probe exited: its session closes, and says whose it was.
    let closed = wait_log(&p, "session closed", |l| {
        l.contains("session closed") && l.contains(&who)
    });
    assert!(opened.contains("client_pid="), "{opened}");
    assert!(!closed.is_empty());
    if !is_root() {
        return;
    }
    // A refused peer: one line per refused connection, on both sockets.
    let (s, u) = (p.socket.clone(), format!("file://{}/obj", p.root.display()));
    let refused = tokio::task::spawn_blocking(move || probe_as(4000, 4000, &s, &u))
        .await
        .unwrap();
    assert!(
        refused.read.starts_with("read err PermissionDenied"),
        "{refused:?}"
    );
    let who = format!("uid=4000 gid=4000 pid={}", refused.pid);
    for listener in ["unix", "fds"] {
        wait_log(&p, "refusing a peer", |l| {
            l.contains("refusing a peer")
                && l.contains(&format!("listener=\"{listener}\""))
                && l.contains(&who)
        });
    }
}

fn series(name: &str, listener: &str, reason: Option<&str>) -> String {
    match reason {
        Some(r) => format!("{name}{{listener=\"{listener}\",reason=\"{r}\"}}"),
        None => format!("{name}{{listener=\"{listener}\"}}"),
    }
}

/// Polls the metrics until `series` satisfies `pred`.
async fn wait_metric(addr: SocketAddr, series: &str, pred: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = metric(&metrics(addr).await, series);
        if pred(v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stuck at {v} for {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_over_the_limit_is_closed_and_a_slot_frees_on_close() {
    let (d, uri) = daemon(|c| c.server.limits.max_connections = 2).await;
    let open = series("sluice_listener_connections", "unix", None);
    let mut a = connect(d.socket()).await;
    read(&mut a, &uri, None).await.expect("first is served");
    let mut b = connect(d.socket()).await;
    read(&mut b, &uri, None).await.expect("second is served");
    wait_metric(d.http(), &open, |v| v == 2.0).await;

    // The third is accepted, told why and closed: its first call fails
    // with RESOURCE_EXHAUSTED naming the limit; it is not left waiting.
    let third = tokio::time::timeout(WAIT, async {
        let path = d.socket().to_path_buf();
        let channel = tonic::transport::Endpoint::from_static("http://sluiced.local")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                }
            }))
            .await;
        match channel {
            Err(e) => Err(format!("connect: {e}")),
            Ok(ch) => {
                let mut c = sluice_proto::v1::sluice_client::SluiceClient::new(ch);
                match read(&mut c, &uri, None).await {
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => Err(format!("{s:?}")),
                    other => Ok(format!("{other:?}")),
                }
            }
        }
    })
    .await
    .expect("the third connection is answered, not left waiting");
    let err = third.expect_err("the third connection is not served");
    assert!(
        err.contains("max_connections = 2"),
        "names the limit: {err}"
    );
    let rejected = series("sluice_listener_rejected_total", "unix", Some("limit"));
    wait_metric(d.http(), &rejected, |v| v >= 1.0).await;
    // The two within the limit still work.
    read(&mut a, &uri, None).await.expect("first still served");

    drop(b);
    wait_metric(d.http(), &open, |v| v == 1.0).await;
    let mut c = connect(d.socket()).await;
    let (_, data) = read(&mut c, &uri, None)
        .await
        .expect("a freed slot is taken");
    assert_eq!(data.len(), 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_and_calls_in_flight_keep_theirs() {
    let (d, uri) = daemon(|c| c.server.limits.idle_timeout = Duration::from_millis(300)).await;
    let open = series("sluice_listener_connections", "unix", None);
    let idle = series("sluice_listener_idle_closed_total", "unix", None);
    // A session that stays open, silent, far longer than the idle timeout.
    let mut s = connect(d.socket()).await;
    let mut session = sluice_tests::shm::RawSession::open(&mut s, false).await;
    let mut a = connect(d.socket()).await;
    read(&mut a, &uri, None).await.expect("served");
    wait_metric(d.http(), &idle, |v| v >= 1.0).await;
    wait_metric(d.http(), &open, |v| v == 1.0).await;
    // The session's connection was kept: it still fetches.
    session.fetch(1, &uri, None).await;
    match session.next().await {
        sluice_proto::v1::session_response::Msg::Chunk(c) => assert_eq!(c.id, 1),
        other => panic!("expected the fetch's data, got {other:?}"),
    }
    assert_eq!(
        metric(&metrics(d.http()).await, &idle),
        1.0,
        "only the idle connection was closed"
    );
    // The closed one's client connects again on its next call.
    let again = read(&mut a, &uri, None).await;
    let again = match again {
        Ok(r) => Ok(r),
        // A call racing the close may see it once; the next reconnects.
        Err(e) if e.code() == tonic::Code::Unavailable => read(&mut a, &uri, None).await,
        Err(e) => Err(e),
    };
    assert_eq!(again.expect("reconnected").1.len(), 10_000);
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name: state is field 3,
    // utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_loop_backs_off_when_out_of_descriptors_and_recovers() {
    // The daemon's CPU is measured: without the thread making the arena
    // resident, which would be counted too.
    let p = DaemonProcess::spawn_with_env(&[], &[("SLUICE_CACHE__PREFAULT", "false")]);
    let http = http_of(&p);
    std::fs::write(p.root.join("obj"), pattern(10_000, 3)).unwrap();
    let uri = format!("file://{}/obj", p.root.display());
    let pid = p.child.id();
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    let limit = libc::rlimit {
        rlim_cur: open_fds + 16,
        rlim_max: open_fds + 16,
    };
    // SAFETY: prlimit on our own child, with a valid rlimit and no old value.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());

    // A burst of connections that say nothing: more than the daemon has
    // descriptors left; the rest wait in the backlog.
    let started = Instant::now();
    let burst: Vec<_> = (0..64)
        .map(|_| std::os::unix::net::UnixStream::connect(&p.socket).unwrap())
        .collect();
    wait_log(&p, "backing off", |l| {
        l.contains("cannot accept connections: backing off")
    });
    // Out of descriptors now, with connections pending: a loop that
    // retried at once would burn a whole core.
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    std::thread::sleep(Duration::from_millis(1500));
    let (cpu, wall) = (cpu_seconds(pid) - cpu0, t0.elapsed().as_secs_f64());
    assert!(
        cpu < 0.5 * wall,
        "daemon used {cpu:.2}s CPU in {wall:.2}s while out of descriptors"
    );

    drop(burst);
    let served = tokio::time::timeout(WAIT, async {
        let mut c = connect(&p.socket).await;
        read(&mut c, &uri, None).await
    })
    .await
    .expect("served again once descriptors are free");
    assert_eq!(served.expect("read").1.len(), 10_000);
    let out_of_fds = started.elapsed().as_secs_f64();
    wait_log(&p, "recovered", |l| {
        l.contains("accepting connections again")
    });

    let m = metrics(http).await;
    let errors = metric(
        &m,
        &series(
            "sluice_listener_accept_errors_total",
            "unix",
            Some("resource"),
        ),
    );
    let backoffs = metric(
        &m,
        &series("sluice_listener_accept_backoffs_total", "unix", None),
    );
    assert!(errors >= 1.0, "{m}");
    assert!(backoffs >= errors, "every resource error backed off: {m}");
    // 10 ms doubling to 1 s: about 7 tries in the first second, then one
    // a second. Retrying at once would be thousands.
    assert!(
        errors <= 10.0 + 2.0 * out_of_fds,
        "{errors} accept errors in {out_of_fds:.1}s"
    );
}
