//! The daemon's configuration tree and how it is loaded.
//!
//! Layers, later ones win: built-in defaults < TOML file (`--config`, else
//! `/etc/sluice/sluiced.toml` when it exists) < `SLUICE_` environment
//! variables (`__` between levels: `SLUICE_CACHE__MEMORY_BUDGET=8GiB`) <
//! command-line flags. Unknown keys are errors that name the key.
//! `docs/CONFIGURATION.md` lists every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use sluice_engine::{ByteSize, CacheConfig, EngineConfig, PrefetchConfig};
use sluice_storage::registry::StorageConfig;

/// Where the config file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sluice/sluiced.toml";

/// `SLUICE_` variables of the clients (address, TLS and token), not keys of
/// the daemon: ignored when the environment layer is read.
const CLIENT_ENV: [&str; 6] = [
    "address",
    "ca_file",
    "token",
    "token_file",
    "client_cert",
    "client_key",
];

/// Everything `sluiced` can be told.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners and shutdown.
    pub server: ServerConfig,
    /// Backends.
    pub storage: StorageConfig,
    /// RangeEngine.
    pub engine: EngineConfig,
    /// Cache and memory budget.
    pub cache: CacheConfig,
    /// Epoch plans and prefetch.
    pub prefetch: PrefetchConfig,
    /// Read and ReadMany.
    pub read: ReadConfig,
    /// Write.
    pub write: WriteConfig,
    /// Session streams and shared-memory leases.
    pub session: SessionConfig,
    /// Logging.
    pub log: LogConfig,
    /// The operation log: every backend operation in warp's format.
    pub oplog: sluice_storage::oplog::OpLogConfig,
    /// OpenTelemetry traces.
    pub traces: crate::telemetry::traces::TracesConfig,
    /// The S3-compatible HTTP facade (off unless a listener is set).
    pub facade: crate::facade::FacadeConfig,
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC Unix socket; clients on this node connect here.
    pub socket: PathBuf,
    /// Permission bits of the socket, octal: `"0660"` (an unquoted `660`
    /// from an environment variable is read as the same octal digits).
    #[serde(deserialize_with = "octal_digits")]
    pub socket_mode: String,
    /// Unix-socket peers allowed by uid (`SO_PEERCRED`); with
    /// `allowed_gids` both empty, anyone the socket mode lets in.
    pub allowed_uids: Vec<u32>,
    /// Unix-socket peers allowed by primary gid.
    pub allowed_gids: Vec<u32>,
    /// Uids that may use the admin calls (`Evict`) besides root and the
    /// daemon's own user; over the Unix socket only.
    pub admin_uids: Vec<u32>,
    /// Connection, stream, keepalive and idle limits of the listeners.
    pub limits: crate::listen::Limits,
    /// Optional gRPC TCP listener for clients on other nodes: TLS with
    /// tokens or client certificates (`[server.tls]`), loopback included.
    pub tcp: Option<SocketAddr>,
    /// Serve `tcp` as plaintext without authentication (warned at startup).
    pub tcp_insecure: bool,
    /// TLS and client authentication of `tcp`.
    pub tls: crate::tls::TlsConfig,
    /// Removed (TLS replaced it); only read to refuse it by name.
    #[serde(skip_serializing)]
    pub allow_remote_tcp: Option<serde::de::IgnoredAny>,
    /// HTTP listener for `/metrics`, `/ready` and `/live`.
    pub http: Option<SocketAddr>,
    /// After SIGTERM/SIGINT, how long in-flight calls may take to finish.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            socket: PathBuf::from("/run/sluice/sluiced.sock"),
            socket_mode: "0660".into(),
            allowed_uids: Vec::new(),
            admin_uids: Vec::new(),
            allowed_gids: Vec::new(),
            limits: crate::listen::Limits::default(),
            tcp: None,
            tcp_insecure: false,
            tls: crate::tls::TlsConfig::default(),
            allow_remote_tcp: None,
            http: Some(SocketAddr::from(([127, 0, 0, 1], 7421))),
            // Long enough for a multi-GiB read to finish on a fast link,
            // shorter than Kubernetes' default 30 s termination grace.
            grace_period: Duration::from_secs(20),
        }
    }
}

/// Accepts `"0660"` or `660` (digits read as octal later).
fn octal_digits<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Str(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Int(n) => n.to_string(),
        Raw::Str(s) => s,
    })
}

/// `[read]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadConfig {
    /// Payload bytes per streamed message.
    pub chunk_size: ByteSize,
    /// Items of one ReadMany fetched at once, unless the request says.
    pub read_many_concurrency: usize,
    /// Upper bound for a request's own concurrency.
    pub read_many_max_concurrency: usize,
    /// Items one ReadMany may name.
    pub read_many_max_items: usize,
    /// A Read, ReadMany or Session stream whose client has not asked for
    /// the next message for this long is ended (ABORTED) and what it held
    /// is freed; a Write whose client sends nothing for this long is
    /// aborted. `0s`: never.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            chunk_size: ByteSize::mib(1),
            read_many_concurrency: 32,
            read_many_max_concurrency: 256,
            read_many_max_items: 100_000,
            // Far beyond any pause of a reading client (a training step,
            // a checkpoint); short enough that a stopped process gives its
            // share back within minutes.
            stall_timeout: Duration::from_secs(120),
        }
    }
}

/// `[write]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriteConfig {
    /// Uploads larger than this go up as multipart uploads of this part
    /// size (raised to the backend's minimum, 5 MiB on S3).
    pub part_size: ByteSize,
}

impl Default for WriteConfig {
    fn default() -> Self {
        WriteConfig {
            part_size: ByteSize::mib(16),
        }
    }
}

/// `[session]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Deliver session results through shared memory to clients that map
    /// the arena. Off: every session gets stream chunks.
    pub shared_memory: bool,
    /// Bytes one session may hold leased at once.
    pub lease_quota: ByteSize,
    /// How long a fetch over quota waits for releases before
    /// RESOURCE_EXHAUSTED.
    #[serde(with = "humantime_serde")]
    pub lease_wait: Duration,
    /// Fetches of one session in progress at once; beyond it the daemon
    /// stops reading the session's requests until one finishes.
    pub max_outstanding: usize,
    /// Leases one session may hold at once (each is a table entry); a fetch
    /// beyond waits for releases like one over quota.
    pub max_leases: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            shared_memory: true,
            // A quarter of the default budget: one client cannot pin the
            // whole cache, four busy ones still can use all of it.
            lease_quota: ByteSize::mib(512),
            lease_wait: Duration::from_secs(10),
            max_outstanding: 1024,
            max_leases: 65_536,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter: `info`, `sluiced=debug,info`, …
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// A configuration that could not be loaded or is inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Parse errors, unknown keys, wrong types (figment names the key and source).
    #[error("invalid configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// Values that parse but do not make sense together.
    #[error("invalid configuration: {key}: {message}")]
    Invalid {
        /// The offending key, dotted.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Loads the layers. `file`: explicit config file (must exist);
    /// `overrides`: command-line values, highest priority.
    pub fn load(file: Option<&Path>, overrides: Figment) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::Invalid {
                        key: "--config",
                        message: format!("file {} does not exist", path.display()),
                    });
                }
                fig = fig.merge(Toml::file_exact(path));
            }
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                fig = fig.merge(Toml::file_exact(DEFAULT_CONFIG_PATH))
            }
            None => {}
        }
        // These belong to the clients; everything else is ours.
        let env = Env::prefixed("SLUICE_").split("__").ignore(&CLIENT_ENV);
        let config: Config = fig
            .merge(env)
            .merge(overrides)
            .extract()
            .map_err(|e| Box::new(scrub(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| ConfigError::Invalid {
            key,
            message: message.to_owned(),
        };
        self.socket_mode()?;
        crate::tls::validate(&self.server)?;
        self.oplog.validate().map_err(|e| ConfigError::Invalid {
            key: e.key,
            message: e.message,
        })?;
        self.traces.validate()?;
        self.facade.validate()?;
        let disk = &self.cache.disk;
        if disk.dirs.iter().any(|d| !d.is_absolute()) {
            return Err(invalid("cache.disk.dirs", "must be absolute paths"));
        }
        if disk.max_bytes.0 == 0 || disk.write_queue.0 == 0 {
            return Err(invalid(
                "cache.disk",
                "max_bytes and write_queue must be above 0",
            ));
        }
        let direct = &self.storage.direct;
        if !(1..=64).contains(&direct.rings) {
            return Err(invalid("storage.direct.rings", "must be between 1 and 64"));
        }
        if !(1..=4096).contains(&direct.queue_depth) {
            return Err(invalid(
                "storage.direct.queue_depth",
                "must be between 1 and 4096",
            ));
        }
        let prefetch = &self.prefetch;
        if !(1..=1024).contains(&prefetch.concurrency) {
            return Err(invalid(
                "prefetch.concurrency",
                "must be between 1 and 1024",
            ));
        }
        if prefetch.max_plan_items >= u64::from(u32::MAX) {
            return Err(invalid("prefetch.max_plan_items", "must be below 2^32 - 1"));
        }
        if prefetch.max_session_plans == 0 {
            return Err(invalid("prefetch.max_session_plans", "must be at least 1"));
        }
        let limits = &self.server.limits;
        if limits.max_connections == 0 || limits.max_concurrent_streams == 0 {
            return Err(invalid(
                "server.limits",
                "max_connections and max_concurrent_streams must be at least 1",
            ));
        }
        if !limits.keepalive_interval.is_zero() && limits.keepalive_timeout.is_zero() {
            return Err(invalid(
                "server.limits.keepalive_timeout",
                "must be above 0s while keepalive_interval is set",
            ));
        }
        if self.engine.part_size.0 < 64 << 10 {
            return Err(invalid("engine.part_size", "must be at least 64KiB"));
        }
        if self.engine.part_size.0 > u64::from(u32::MAX) {
            return Err(invalid("engine.part_size", "must be below 4GiB"));
        }
        // Above part_size it is part_size: the cap wins.
        if self.engine.min_part_size.0 < 256 << 10 {
            return Err(invalid("engine.min_part_size", "must be at least 256KiB"));
        }
        if self.engine.per_object_concurrency == 0
            || self.engine.max_concurrency == 0
            || self.engine.initial_concurrency == 0
        {
            return Err(invalid("engine", "concurrency limits must be at least 1"));
        }
        if self.engine.part_attempts == 0 {
            return Err(invalid("engine.part_attempts", "must be at least 1"));
        }
        if self.cache.memory_budget.0 < self.engine.part_size.0 {
            return Err(invalid(
                "cache.memory_budget",
                "must hold at least one engine.part_size",
            ));
        }
        if self.read.chunk_size.0 == 0
            || self.read.chunk_size.0 > (sluice_proto::MAX_MESSAGE_SIZE as u64 / 2)
        {
            return Err(invalid("read.chunk_size", "must be between 1B and 4MiB"));
        }
        if self.read.read_many_concurrency == 0 || self.read.read_many_max_concurrency == 0 {
            return Err(invalid("read", "read_many concurrency must be at least 1"));
        }
        if self.write.part_size.0 == 0 || self.write.part_size.0 > u64::from(u32::MAX) {
            return Err(invalid("write.part_size", "must be between 1B and 4GiB"));
        }
        if self.cache.memory_budget.0 < self.write.part_size.0 {
            return Err(invalid(
                "cache.memory_budget",
                "must hold at least one write.part_size",
            ));
        }
        if self.session.lease_quota.0 == 0 || self.session.lease_quota.0 > u64::from(u32::MAX) {
            return Err(invalid(
                "session.lease_quota",
                "must be between 1B and 4GiB",
            ));
        }
        if self.cache.segment_size.0 == 0 || !self.cache.segment_size.0.is_multiple_of(4096) {
            return Err(invalid(
                "cache.segment_size",
                "must be a positive multiple of 4KiB",
            ));
        }
        let largest_piece = self
            .cache
            .max_object_size()
            .min(self.cache.segment_size.0)
            .max(self.engine.part_size.0);
        if self.session.lease_quota.0 < largest_piece {
            return Err(invalid(
                "session.lease_quota",
                "must hold the largest piece a fetch leases at once: min(cache.max_object_size, cache.segment_size) and engine.part_size",
            ));
        }
        if self.cache.segment_size.0 < self.engine.part_size.0 {
            return Err(invalid(
                "cache.segment_size",
                "must hold at least one engine.part_size",
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid("log.format", "must be \"text\" or \"json\""));
        }
        Ok(())
    }

    /// Where segment descriptors are handed out: always the gRPC socket
    /// path + `.fds`, so that clients find it before opening a session.
    pub fn fd_socket(&self) -> PathBuf {
        let mut p = self.server.socket.clone().into_os_string();
        p.push(".fds");
        PathBuf::from(p)
    }

    /// `server.socket_mode` as bits.
    pub fn socket_mode(&self) -> Result<u32, ConfigError> {
        u32::from_str_radix(self.server.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| ConfigError::Invalid {
                key: "server.socket_mode",
                message: format!(
                    "{:?} is not an octal mode like \"0660\"",
                    self.server.socket_mode
                ),
            })
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        // Secrets serialize redacted by their own types (see
        // `sluice_storage::s3::S3Config`), so plain serialization is safe.
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// Whether a config key (its last path element) holds a credential.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "secret",
        "token",
        "password",
        "sas",
        "account_key",
        "private_key",
    ]
    .iter()
    .any(|s| key.contains(s))
        && !key.ends_with("_file")
        && !key.ends_with("_path")
}

/// A load error that cannot show a secret: errors about a key that holds a
/// credential lose their value ("found unsigned int `123…`"), and parse
/// errors lose the source line that a TOML error quotes.
fn scrub(error: figment::Error) -> figment::Error {
    let mut errors: Vec<figment::Error> = error.into_iter().collect();
    for e in &mut errors {
        if e.path.last().is_some_and(|k| is_secret_key(k)) {
            e.kind = figment::error::Kind::Message(
                "invalid value for a secret (the value is not shown)".into(),
            );
        } else if let figment::error::Kind::Message(m) = &e.kind {
            // TOML parse errors quote the offending line: `3 | key = "…`.
            let kept: Vec<&str> = m
                .lines()
                .filter(|l| {
                    let t = l.trim_start();
                    !(t.starts_with('|')
                        || t.split_once('|')
                            .is_some_and(|(n, _)| n.trim().chars().all(|c| c.is_ascii_digit())))
                })
                .collect();
            e.kind = figment::error::Kind::Message(kept.join(" "));
        }
    }
    let mut rest = errors.into_iter().rev();
    let last = rest.next().expect("an error has at least one error");
    rest.fold(last, figment::Error::chain)
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail closures return figment::Error
mod tests {
    use super::*;

    /// Loads `toml` with no `SLUICE_` variables of the environment that
    /// runs the tests leaking in.
    fn load(toml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluiced.toml");
        std::fs::write(&path, toml).unwrap();
        let mut out = None;
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            out = Some(Config::load(Some(&path), Figment::new()));
            Ok(())
        });
        out.expect("jail ran")
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluiced.toml");
        std::fs::write(
            &path,
            "[cache]\nmemory_budget = \"1GiB\"\n[engine]\npart_size = \"4MiB\"\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("SLUICE_ENGINE__PART_SIZE", "2MiB");
            jail.set_env("SLUICE_ENGINE__PER_OBJECT_CONCURRENCY", "3");
            jail.set_env("SLUICE_ADDRESS", "unix:///ignored");
            for client in [
                "CA_FILE",
                "TOKEN",
                "TOKEN_FILE",
                "CLIENT_CERT",
                "CLIENT_KEY",
            ] {
                jail.set_env(format!("SLUICE_{client}"), "a client's, ignored");
            }
            jail.set_env("SLUICE_SERVER__SOCKET_MODE", "0640");
            let flags = Figment::from(Serialized::global("engine.per_object_concurrency", 5));
            let c = Config::load(Some(&path), flags).map_err(|e| e.to_string())?;
            assert_eq!(c.cache.memory_budget, ByteSize::gib(1), "file over default");
            assert_eq!(c.engine.part_size, ByteSize::mib(2), "env over file");
            assert_eq!(c.engine.per_object_concurrency, 5, "flag over env");
            assert_eq!(
                c.engine.max_concurrency,
                EngineConfig::default().max_concurrency
            );
            let mode = c.socket_mode().map_err(|e| e.to_string())?;
            assert_eq!(
                mode, 0o640,
                "an unquoted environment value is read as octal digits"
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = load("[cache]\nmemory_budgett = 5\n").unwrap_err();
        assert!(err.to_string().contains("memory_budgett"), "{err}");
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("SLUICE_SERVER__SOKET", "/x");
            let err = Config::load(None, Figment::new()).unwrap_err();
            assert!(err.to_string().contains("soket"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn config_errors_never_show_secret_values() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            // A numeric secret from the environment is still a secret.
            jail.set_env("SLUICE_STORAGE__S3__SECRET_ACCESS_KEY", "918273645");
            jail.set_env("SLUICE_STORAGE__S3__ACCESS_KEY_ID", "AKIDNUMERIC");
            let c = Config::load(None, Figment::new()).map_err(|e| e.to_string())?;
            let secret = c.storage.s3.secret_access_key.as_ref().map(|s| s.expose());
            assert_eq!(secret, Some("918273645"));
            assert!(!c.to_redacted_toml().contains("918273645"));
            // Wrong types are errors that name the key, not the value.
            jail.set_env("SLUICE_STORAGE__S3__SESSION_TOKEN", "[\"tok-847362\"]");
            let err = Config::load(None, Figment::new()).unwrap_err().to_string();
            assert!(err.contains("SESSION_TOKEN"), "{err}");
            assert!(!err.contains("847362"), "{err}");
            Ok(())
        });
        // A TOML syntax error on a secret's line does not quote the line.
        let err = load("[storage.s3]\nsecret_access_key = \"unterminated-5551234\n")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("5551234"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn peer_lists_and_limits_load_from_file_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluiced.toml");
        std::fs::write(
            &path,
            "[server]\nallowed_uids = [1000, 1001]\n[server.limits]\nidle_timeout = \"0s\"\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("SLUICE_SERVER__ALLOWED_GIDS", "[5, 6]");
            jail.set_env("SLUICE_SERVER__LIMITS__MAX_CONNECTIONS", "10");
            let c = Config::load(Some(&path), Figment::new()).map_err(|e| e.to_string())?;
            assert_eq!(c.server.allowed_uids, [1000, 1001]);
            assert_eq!(c.server.allowed_gids, [5, 6]);
            assert_eq!(c.server.limits.max_connections, 10);
            assert!(c.server.limits.idle_timeout.is_zero());
            assert_eq!(c.server.limits.max_concurrent_streams, 256, "default kept");
            Ok(())
        });
        let err = load("[server.limits]\nmax_connections = 0\n").unwrap_err();
        assert!(err.to_string().contains("server.limits"), "{err}");
        let err = load("[server.limits]\nkeepalive_timeout = \"0s\"\n").unwrap_err();
        assert!(err.to_string().contains("keepalive_timeout"), "{err}");
    }

    #[test]
    fn inconsistent_values_are_rejected() {
        let err = load("[server]\ntcp = \"127.0.0.1:7420\"\n").unwrap_err();
        assert!(err.to_string().contains("server.tls.cert"), "{err}");
        let err = load("[server]\nallow_remote_tcp = true\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("server.allow_remote_tcp: this key was removed"),
            "{err}"
        );
        let c = load("[server]\ntcp = \"0.0.0.0:7420\"\ntcp_insecure = true\n").unwrap();
        assert!(c.server.tcp_insecure);
        let c = load("[server.tls]\ncert = \"/c\"\nhandshake_timeout = \"3s\"\n").unwrap();
        assert_eq!(c.server.tls.handshake_timeout, Duration::from_secs(3));
        let err = load("[server]\nsocket_mode = \"rw\"\n").unwrap_err();
        assert!(err.to_string().contains("socket_mode"), "{err}");
        let err = load("[cache]\nmemory_budget = \"1MiB\"\n").unwrap_err();
        assert!(err.to_string().contains("cache.memory_budget"), "{err}");
    }
}
