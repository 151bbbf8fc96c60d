//! A real S3 server for tests: `s3s-fs`, one process per [`S3Server`].
//!
//! The binary is `$S3S_FS_BIN`, else `s3s-fs` on `PATH`, else
//! `$HOME/.cargo/bin/s3s-fs`; install it with
//! `cargo install s3s-fs --version 0.14.1 --features binary --locked`.
//!
//! Start-up binds `127.0.0.1:0` to pick a free port, releases it and starts
//! the server there, then polls until the port accepts connections (with a
//! deadline, never a fixed sleep). If another process grabbed the port in
//! between, the server exits and the start is tried again on a new port.
//! Data lives in a temporary directory; the process is killed on drop.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_storage::ObjectUri;
use sluice_storage::s3::{S3Config, S3Endpoint, Secret};
use tempfile::TempDir;

/// Access key the server is started with.
pub const ACCESS_KEY: &str = "sluice-test-access";
/// Secret key the server is started with.
pub const SECRET_KEY: &str = "sluice-test-secret";

/// How long a server may take to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// Starts tried before giving up (a start fails when the port was taken).
const START_TRIES: usize = 3;

const INSTALL_HINT: &str = "install it with `cargo install s3s-fs --version 0.14.1 --features binary --locked`, \
     or point S3S_FS_BIN at the binary";

/// A running `s3s-fs`; killed on drop.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    port: u16,
    dir: TempDir,
    /// Where the buckets are (another server's, for a replica).
    data: PathBuf,
    client: aws_sdk_s3::Client,
    buckets: tokio::sync::Mutex<HashSet<String>>,
}

impl S3Server {
    /// Starts a server with an empty store. Panics, saying why, when it cannot.
    pub async fn start() -> S3Server {
        let binary = binary();
        let mut failures = Vec::new();
        for _ in 0..START_TRIES {
            let dir = tempfile::tempdir().expect("creating the s3s-fs directory");
            let data = dir.path().join("data");
            std::fs::create_dir(&data).expect("creating the s3s-fs data directory");
            let port = free_port();
            let mut child = spawn(&binary, dir.path(), &data, port);
            match wait_until_accepting(&mut child, port).await {
                Ok(()) => {
                    return S3Server {
                        child,
                        port,
                        client: admin_client(port),
                        dir,
                        data,
                        buckets: Default::default(),
                    };
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log =
                        std::fs::read_to_string(dir.path().join("s3s-fs.log")).unwrap_or_default();
                    failures.push(format!("port {port}: {why}\n{log}"));
                }
            }
        }
        panic!(
            "s3s-fs ({}) did not start:\n{}",
            binary.display(),
            failures.join("\n")
        );
    }

    /// `127.0.0.1:port`, as written in `s3://host:port/bucket/key` URIs.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:port`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.endpoint())
    }

    /// Where the server keeps its buckets, one directory each.
    pub fn data_dir(&self) -> PathBuf {
        self.data.clone()
    }

    /// Another server process over this one's buckets (a gateway of the
    /// same store), on a port of its own.
    pub async fn replica(&self) -> S3Server {
        let binary = binary();
        let dir = tempfile::tempdir().expect("creating the s3s-fs directory");
        for _ in 0..START_TRIES {
            let port = free_port();
            let mut child = spawn(&binary, dir.path(), &self.data, port);
            if wait_until_accepting(&mut child, port).await.is_ok() {
                return S3Server {
                    child,
                    port,
                    client: admin_client(port),
                    dir,
                    data: self.data.clone(),
                    buckets: Default::default(),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("an s3s-fs replica did not start");
    }

    /// Kills the server process (its port stops answering).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port, after [`kill`](Self::kill).
    pub async fn restart(&mut self) {
        let binary = binary();
        let mut child = spawn(&binary, self.dir.path(), &self.data, self.port);
        wait_until_accepting(&mut child, self.port)
            .await
            .unwrap_or_else(|why| panic!("s3s-fs did not restart on port {}: {why}", self.port));
        self.child = child;
    }

    /// A configuration that reaches this server both as the default endpoint
    /// (`s3://bucket/key`) and as explicit `s3://127.0.0.1:port/…` URIs (the
    /// one entry of `endpoints`, see [`S3Server::endpoint_config`]).
    pub fn config(&self) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint_url()),
            region: Some("us-east-1".into()),
            force_path_style: true,
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(Secret::new(SECRET_KEY)),
            // Tests should fail fast, not ride out outages.
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            endpoints: vec![self.endpoint_config()],
            ..S3Config::default()
        }
    }

    /// The `[[storage.s3.endpoints]]` entry of this server: `127.0.0.1:port`
    /// over http with the server's keys.
    pub fn endpoint_config(&self) -> S3Endpoint {
        S3Endpoint {
            scheme: "http".into(),
            region: Some("us-east-1".into()),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(Secret::new(SECRET_KEY)),
            ..S3Endpoint::new(self.endpoint())
        }
    }

    /// Creates `name` unless it exists; returns `s3://127.0.0.1:port/name/`.
    pub async fn bucket(&self, name: &str) -> ObjectUri {
        let mut buckets = self.buckets.lock().await;
        if !buckets.contains(name) {
            self.client
                .create_bucket()
                .bucket(name)
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "creating bucket {name}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(e)
                    )
                });
            buckets.insert(name.to_owned());
        }
        ObjectUri::parse(&format!("s3://{}/{name}/", self.endpoint())).expect("bucket uri")
    }

    /// Stores `data` as `bucket/key` (the bucket must exist), straight to
    /// the server; returns the object's Last-Modified time.
    pub async fn put(&self, bucket: &str, key: &str, data: Vec<u8>) -> std::time::SystemTime {
        use aws_sdk_s3::error::DisplayErrorContext as Shown;
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(data.into())
            .send()
            .await
            .unwrap_or_else(|e| panic!("putting {bucket}/{key}: {}", Shown(e)));
        let head = self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("head of {bucket}/{key}: {}", Shown(e)));
        let at = head.last_modified().expect("s3s-fs sends Last-Modified");
        std::time::SystemTime::try_from(*at).expect("a time after 1970")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `s3s-fs` binary, or a panic that says how to install it.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("S3S_FS_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "S3S_FS_BIN={} is not a file; {INSTALL_HINT}",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("s3s-fs"));
    let in_cargo = std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo/bin/s3s-fs"));
    on_path
        .chain(in_cargo)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("s3s-fs not found (S3S_FS_BIN, PATH, ~/.cargo/bin); {INSTALL_HINT}")
        })
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

fn spawn(binary: &Path, dir: &Path, data: &Path, port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("s3s-fs.log"))
        .expect("creating the s3s-fs log");
    Command::new(binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(data)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}; {INSTALL_HINT}", binary.display()))
}

/// Polls until `port` accepts connections, the child exits, or the deadline passes.
async fn wait_until_accepting(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("exited with {status}"));
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "not accepting connections after {START_DEADLINE:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A plain SDK client for what the storage trait does not do (buckets).
fn admin_client(port: u16) -> aws_sdk_s3::Client {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    crate::facade::client(addr, (ACCESS_KEY, SECRET_KEY))
}
