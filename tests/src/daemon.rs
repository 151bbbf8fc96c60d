//! Daemons for tests: in-process ([`TestDaemon`]) or as a real `sluiced`
//! process ([`DaemonProcess`]) for signal handling. Both listen on a socket
//! in a fresh temporary directory and serve `file://` from another one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluiced::{Config, Daemon};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a daemon may take to come up before a test fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A daemon running inside the test process.
#[derive(Debug)]
pub struct TestDaemon {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    root: PathBuf,
    socket: PathBuf,
    http: Option<SocketAddr>,
    tcp: Option<SocketAddr>,
    facade: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A configuration for tests: socket and file root in temporary directories,
/// HTTP on a free loopback port.
pub fn test_config(root: &Path, socket: &Path) -> Config {
    let mut c = Config::default();
    c.server.socket = socket.to_path_buf();
    c.server.http = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    c.server.grace_period = Duration::from_secs(10);
    c.storage.file.roots = vec![root.to_path_buf()];
    c.cache.memory_budget = sluice_engine::ByteSize::mib(256);
    c.log.level = "warn".into();
    c
}

impl TestDaemon {
    /// Starts a daemon with the test defaults.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a daemon after `configure` adjusted the test defaults.
    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let run = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(data.path()).expect("canonical root");
        let socket = run.path().join("sluiced.sock");
        let mut config = test_config(&root, &socket);
        configure(&mut config);
        config.validate().expect("test config is valid");
        let daemon = Daemon::bind(config).await.expect("daemon binds");
        let addrs = daemon.addresses();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(daemon.serve(async {
            let _ = rx.await;
        }));
        TestDaemon {
            _dirs: (data, run),
            root,
            socket: addrs.socket,
            http: addrs.http,
            tcp: addrs.tcp,
            facade: addrs.facade.tcp,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// The gRPC address for clients: `unix:///…`.
    pub fn address(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The `file://` root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `file://<root>/<rel>`.
    pub fn file_uri(&self, rel: &str) -> String {
        format!("file://{}/{}", self.root.display(), rel)
    }

    /// The metrics/health HTTP address.
    pub fn http(&self) -> SocketAddr {
        self.http.expect("http listener configured")
    }

    /// The gRPC TCP address, if configured.
    pub fn tcp(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The S3 facade's TCP address, if configured.
    pub fn facade(&self) -> SocketAddr {
        self.facade.expect("facade.listen configured")
    }

    /// Bytes leased to clients now (`sluice_session_leased_bytes`).
    pub async fn leased_bytes(&self) -> f64 {
        let body = crate::grpc::http_get(self.http(), "/metrics").await.1;
        crate::grpc::metric(&body, "sluice_session_leased_bytes")
    }

    /// Polls the leased bytes until they equal `want`; fails after `within`.
    pub async fn wait_leased(&self, want: f64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let now = self.leased_bytes().await;
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "leased bytes at {now} after {within:?}, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Shuts down and waits for `serve` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The directory holding the workspace's binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test>-<hash> → target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// Path of a workspace binary, which `cargo test --workspace` builds.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace` (or `cargo test --workspace`) first",
        path.display()
    );
    path
}

/// A `sluiced` process.
#[derive(Debug)]
pub struct DaemonProcess {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    /// The `file://` root.
    pub root: PathBuf,
    /// The gRPC socket.
    pub socket: PathBuf,
    /// The process; killed on drop if still running.
    pub child: Child,
    /// What it was started with, to start it again ([`DaemonProcess::restart`]).
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl DaemonProcess {
    /// Spawns `sluiced` with extra `args` (`--log-level info` unless they
    /// set one) and waits until its socket accepts.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with_env(args, &[])
    }

    /// As [`DaemonProcess::spawn`], with environment variables set for the
    /// daemon (`SLUICE_*` ones included).
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let run = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(data.path()).expect("canonical root");
        let socket = run.path().join("sluiced.sock");
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let child = start_sluiced(&root, &socket, &args, &env);
        let mut p = DaemonProcess {
            _dirs: (data, run),
            root,
            socket,
            child,
            args,
            env,
        };
        p.wait_ready();
        p
    }

    /// Kills the daemon with SIGKILL and waits until it is gone. Its socket
    /// files stay behind, as after a crash.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(START_TIMEOUT);
    }

    /// Starts the daemon again, after it exited, with the same arguments on
    /// the same socket and file root, and waits until its socket accepts.
    /// The log goes on in the same file.
    pub fn restart(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(Some(_))),
            "restart: the daemon is still running"
        );
        self.child = start_sluiced(&self.root, &self.socket, &self.args, &self.env);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = self.socket.with_file_name("sluiced.log");
                let stderr = std::fs::read_to_string(log).unwrap_or_default();
                panic!("sluiced exited during startup with {status}: {stderr}");
            }
            assert!(
                Instant::now() < deadline,
                "sluiced did not open {} in time",
                self.socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The gRPC address for clients.
    pub fn address(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.socket.with_file_name("sluiced.log")).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; returns the log.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} not in the daemon's log after {timeout:?}: {log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The gRPC TCP listener's address, as the startup line reports it.
    pub fn tcp(&self) -> SocketAddr {
        let log = self.wait_log("sluiced serving", START_TIMEOUT);
        let start = log.find("tcp=Some(").expect("a TCP listener") + "tcp=Some(".len();
        let end = start + log[start..].find(')').expect("closing parenthesis");
        log[start..end].parse().expect("a socket address")
    }

    /// The metrics/health HTTP listener's address, as the last startup line
    /// reports it.
    pub fn http(&self) -> SocketAddr {
        let log = self.wait_log("sluiced serving", START_TIMEOUT);
        let line = log
            .lines()
            .rfind(|l| l.contains("sluiced serving"))
            .expect("a startup line");
        let start = line.find("http=Some(").expect("an HTTP listener") + "http=Some(".len();
        let end = start + line[start..].find(')').expect("closing parenthesis");
        line[start..end].parse().expect("a socket address")
    }

    /// The value of one `/metrics` series now.
    pub async fn metric(&self, series: &str) -> f64 {
        let body = crate::grpc::http_get(self.http(), "/metrics").await.1;
        crate::grpc::metric(&body, series)
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sluiced did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts `sluiced` on `socket` serving `root`, appending to the log file
/// beside the socket.
fn start_sluiced(root: &Path, socket: &Path, args: &[String], env: &[(String, String)]) -> Child {
    let mut cmd = Command::new(bin("sluiced"));
    // The daemon rejects SLUICE_* variables that are not config keys;
    // whatever the environment running the tests holds must not reach it.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SLUICE_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(socket.with_file_name("sluiced.log"))
        .expect("log file");
    cmd.arg("--socket")
        .arg(socket)
        .arg("--file-root")
        .arg(root)
        .args(["--http", "127.0.0.1:0"])
        .args(if args.iter().any(|a| a == "--log-level") {
            &[][..]
        } else {
            &["--log-level", "info"][..]
        })
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn sluiced")
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
