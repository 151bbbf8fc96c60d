//! A real Azure Blob emulator for tests: Azurite (blob service only, in
//! memory), one process per [`Azurite`].
//!
//! The launcher is `$AZURITE_BLOB_BIN`, else `azurite-blob` on `PATH`,
//! else `$HOME/.cache/sluice-tools/azurite/node_modules/.bin/azurite-blob`
//! (where `scripts/test.sh` installs it with npm). Start-up picks a free
//! port and polls until it accepts connections (with a deadline, no fixed
//! sleep), trying another port if the first was taken. Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_storage::ObjectUri;
use sluice_storage::azure::{AzureAccount, AzureConfig};
use sluice_storage::s3::Secret;
use tempfile::TempDir;

/// Azurite's well-known account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known key of [`ACCOUNT`] (public, in Azurite's docs).
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

const START_DEADLINE: Duration = Duration::from_secs(60);
const START_TRIES: usize = 3;
const INSTALL_HINT: &str = "install it with `npm install azurite@3.35.0` under \
     ~/.cache/sluice-tools/azurite (scripts/test.sh does), or point AZURITE_BLOB_BIN at azurite-blob";

/// A running Azurite; killed on drop.
#[derive(Debug)]
pub struct Azurite {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Azurite {
    /// Starts an empty emulator. Panics, saying why, when it cannot.
    pub async fn start() -> Azurite {
        let binary = binary();
        let mut failures = Vec::new();
        for _ in 0..START_TRIES {
            let dir = tempfile::tempdir().expect("creating the emulator's directory");
            let port = free_port();
            let mut child = spawn(&binary, dir.path(), port);
            match wait_until_accepting(&mut child, port).await {
                Ok(()) => {
                    return Azurite {
                        child,
                        port,
                        _dir: dir,
                    };
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log =
                        std::fs::read_to_string(dir.path().join("azurite.log")).unwrap_or_default();
                    failures.push(format!("port {port}: {why}\n{log}"));
                }
            }
        }
        panic!(
            "azurite ({}) did not start:\n{}",
            binary.display(),
            failures.join("\n")
        );
    }

    /// The blob service URL of [`ACCOUNT`].
    pub fn endpoint_url(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `[storage.azure]` with [`ACCOUNT`] signed by its key, failing fast.
    pub fn config(&self) -> AzureConfig {
        self.config_with(AzureAccount {
            account_key: Some(Secret::new(KEY)),
            ..self.account()
        })
    }

    /// [`ACCOUNT`] at this emulator, with no credential set.
    pub fn account(&self) -> AzureAccount {
        AzureAccount {
            name: ACCOUNT.into(),
            endpoint: Some(self.endpoint_url()),
            ..AzureAccount::default()
        }
    }

    /// `[storage.azure]` with `account` only, failing fast.
    pub fn config_with(&self, account: AzureAccount) -> AzureConfig {
        AzureConfig {
            accounts: vec![account],
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            ..AzureConfig::default()
        }
    }

    /// Creates container `name` (through the backend: the storage trait
    /// has no call for it, so a signed raw request); returns
    /// `az://devstoreaccount1/name/`.
    pub async fn container(&self, name: &str) -> ObjectUri {
        sluice_storage::azure::create_container(&self.config(), ACCOUNT, name)
            .await
            .unwrap_or_else(|e| panic!("creating container {name}: {e}"));
        ObjectUri::parse(&format!("az://{ACCOUNT}/{name}/")).expect("container uri")
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("AZURITE_BLOB_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "AZURITE_BLOB_BIN={} is not a file; {INSTALL_HINT}",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("azurite-blob"));
    let cached = std::env::var_os("HOME").map(|home| {
        Path::new(&home).join(".cache/sluice-tools/azurite/node_modules/.bin/azurite-blob")
    });
    on_path
        .chain(cached)
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("azurite-blob not found; {INSTALL_HINT}"))
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

fn spawn(binary: &Path, dir: &Path, port: u16) -> Child {
    let log = std::fs::File::create(dir.join("azurite.log")).expect("creating the log");
    Command::new(binary)
        .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
        .args(["--inMemoryPersistence", "--skipApiVersionCheck", "--loose"])
        .args(["--disableTelemetry", "--silent"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}; {INSTALL_HINT}", binary.display()))
}

/// Polls until Azurite answers an HTTP request (any status: an accepted
/// connection alone comes before the service is ready), the child exits,
/// or the deadline passes.
async fn wait_until_accepting(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("exited with {status}"));
        }
        if answers_http(port).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("not answering http after {START_DEADLINE:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn answers_http(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request = format!(
        "GET /{ACCOUNT}?comp=list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    if conn.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut head)).await;
    matches!(read, Ok(Ok(_))) && head.starts_with(b"HTTP/1.1 ")
}
