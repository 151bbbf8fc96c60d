//! The real daemon, started inside the test process as the workspace's
//! end-to-end tests do (`tests/src/daemon.rs`): its gRPC socket in one
//! temporary directory, the `file://` root it serves in another.

// Each test crate uses its own subset of the harness.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluiced::{Config, Daemon};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Read chunk size the tests configure: small, so several chunks (and
/// pages of a session's stream delivery) show up on small objects.
pub const CHUNK: usize = 64 << 10;

/// A `sluiced` serving inside the test process; stops when dropped.
#[derive(Debug)]
pub struct TestDaemon {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    root: PathBuf,
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
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
        let mut config = Config::default();
        config.server.socket = run.path().join("sluiced.sock");
        config.server.http = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.storage.file.roots = vec![root.clone()];
        config.cache.memory_budget = "256MiB".parse().expect("byte size");
        config.log.level = "warn".into();
        configure(&mut config);
        config.validate().expect("test config is valid");
        let daemon = Daemon::bind(config).await.expect("daemon binds");
        let socket = daemon.addresses().socket;
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(daemon.serve(async {
            let _ = rx.await;
        }));
        TestDaemon {
            _dirs: (data, run),
            root,
            socket,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// The gRPC address for clients: `unix:///…`.
    pub fn address(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The gRPC socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The directory served as `file://`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `file://<root>/<rel>`.
    pub fn file_uri(&self, rel: &str) -> String {
        format!("file://{}/{}", self.root.display(), rel)
    }

    /// Writes `data` to `<root>/<rel>` behind the daemon's back; returns
    /// its URI.
    pub fn write(&self, rel: &str, data: impl AsRef<[u8]>) -> String {
        let path = self.root.join(rel);
        std::fs::create_dir_all(path.parent().expect("under the root")).expect("mkdir");
        std::fs::write(&path, data).expect("write test object");
        self.file_uri(rel)
    }

    /// The bytes of `<root>/<rel>` on disk, if it exists.
    pub fn read(&self, rel: &str) -> Option<Vec<u8>> {
        match std::fs::read(self.root.join(rel)) {
            Ok(data) => Some(data),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("reading {rel}: {e}"),
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

/// Polls `condition` until it holds, failing the test after `within`.
pub async fn eventually(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
