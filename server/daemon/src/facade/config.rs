//! `[facade]`: the S3-compatible HTTP facade's keys, and its access keys.
//!
//! The facade is off unless `facade.listen` (TCP) or `facade.socket` (a
//! Unix socket) is set. A TCP address that is not loopback needs TLS
//! (`facade.tls.cert` and `facade.tls.key`). Access keys are the
//! operator's, made for the facade — never the backends' credentials: from
//! `facade.keys_file` (read at start and again on SIGHUP) and from
//! `[[facade.keys]]` entries, whose secrets print redacted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_engine::ByteSize;
use sluice_storage::ObjectUri;
use sluice_storage::s3::Secret;

use crate::config::ConfigError;

/// `[facade]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FacadeConfig {
    /// TCP address of the facade (`127.0.0.1:9000`); off when unset.
    pub listen: Option<SocketAddr>,
    /// Unix socket of the facade; off when unset.
    pub socket: Option<PathBuf>,
    /// TLS of `listen`; required when it is not a loopback address.
    pub tls: FacadeTls,
    /// The region clients sign for (the credential scope's region).
    pub region: String,
    /// Facade buckets: name → backend URI prefix (`"s3://bkt/prefix/"`).
    pub buckets: BTreeMap<String, String>,
    /// Access keys, one `ACCESS_KEY_ID SECRET [bucket,bucket…]` per line.
    pub keys_file: Option<PathBuf>,
    /// Access keys written in the configuration.
    pub keys: Vec<FacadeKey>,
    /// Unsigned requests are served (loopback and Unix socket only).
    pub anonymous: bool,
    /// PutObject, multipart uploads and deletes are served.
    pub writes: bool,
    /// How far a request's `x-amz-date` may be from the daemon's clock.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// The largest PutObject or UploadPart body, held in memory while it
    /// is stored (larger objects go up as multipart uploads).
    pub max_part_size: ByteSize,
    /// A multipart upload with no request for this long is aborted: its
    /// parts held in memory are let go and the backend drops what it
    /// stored.
    #[serde(with = "humantime_serde")]
    pub upload_idle_timeout: Duration,
    /// Multipart uploads one access key (or all anonymous clients
    /// together) keeps open at once; the facade's limit is 1024.
    pub max_uploads_per_key: usize,
}

impl Default for FacadeConfig {
    fn default() -> Self {
        FacadeConfig {
            listen: None,
            socket: None,
            tls: FacadeTls::default(),
            region: "us-east-1".into(),
            buckets: BTreeMap::new(),
            keys_file: None,
            keys: Vec::new(),
            anonymous: false,
            writes: false,
            // S3's own limit on the skew of a signed request.
            max_clock_skew: Duration::from_secs(15 * 60),
            // Above the 8 MiB parts of boto3 and the aws cli, and the
            // 16 MiB of s3torchconnector; below S3's 5 GiB so that one
            // request cannot take a large share of the memory budget.
            max_part_size: ByteSize::mib(256),
            // Clients send a part every few seconds at most; one that went
            // quiet for this long has crashed or given up.
            upload_idle_timeout: Duration::from_secs(15 * 60),
            max_uploads_per_key: 64,
        }
    }
}

/// `[facade.tls]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FacadeTls {
    /// Certificate chain, PEM, leaf first.
    pub cert: Option<PathBuf>,
    /// Its private key, PEM.
    pub key: Option<PathBuf>,
}

/// `[[facade.keys]]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FacadeKey {
    /// The access key id clients sign with.
    pub access_key_id: String,
    /// Its secret (printed redacted).
    pub secret_access_key: Secret,
    /// Facade buckets this key may use; empty: all of them.
    #[serde(default)]
    pub buckets: Vec<String>,
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl FacadeConfig {
    /// Whether a facade listener is configured.
    pub fn enabled(&self) -> bool {
        self.listen.is_some() || self.socket.is_some()
    }

    /// Whether every listener of the facade is local (loopback or Unix).
    pub fn local_only(&self) -> bool {
        self.listen.is_none_or(|a| a.ip().is_loopback())
    }

    /// Checks what serde cannot (files are read at bind time).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(invalid("facade.tls", "cert and key go together"));
        }
        if !self.local_only() && self.tls.cert.is_none() {
            return Err(invalid(
                "facade.listen",
                "a non-loopback address needs TLS: set facade.tls.cert and facade.tls.key",
            ));
        }
        if self.anonymous && !self.local_only() {
            return Err(invalid(
                "facade.anonymous",
                "only on a loopback address or a Unix socket",
            ));
        }
        if self.region.is_empty() {
            return Err(invalid("facade.region", "must not be empty"));
        }
        if self.max_clock_skew.is_zero() {
            return Err(invalid("facade.max_clock_skew", "must be above 0s"));
        }
        if self.upload_idle_timeout.is_zero() {
            return Err(invalid("facade.upload_idle_timeout", "must be above 0s"));
        }
        if self.max_uploads_per_key == 0 {
            return Err(invalid("facade.max_uploads_per_key", "must be at least 1"));
        }
        if self.max_part_size.0 < 5 << 20 {
            return Err(invalid("facade.max_part_size", "must be at least 5MiB"));
        }
        if self.buckets.is_empty() {
            return Err(invalid(
                "facade.buckets",
                "the facade needs at least one bucket",
            ));
        }
        for (name, prefix) in &self.buckets {
            check_bucket(name, prefix)?;
        }
        if self.keys.is_empty() && self.keys_file.is_none() && !self.anonymous {
            return Err(invalid(
                "facade.keys",
                "no access keys (facade.keys or facade.keys_file) and anonymous access is off",
            ));
        }
        for key in &self.keys {
            check_key(&key.access_key_id, &key.buckets, &self.buckets)
                .map_err(|m| invalid("facade.keys", m))?;
        }
        Ok(())
    }

    /// The access keys: the entries and the keys file's lines.
    pub fn load_keys(&self) -> Result<Vec<FacadeKey>, ConfigError> {
        let mut keys = self.keys.clone();
        if let Some(path) = &self.keys_file {
            keys.extend(read_keys_file(path, &self.buckets)?);
        }
        Ok(keys)
    }
}

fn check_bucket(name: &str, prefix: &str) -> Result<(), ConfigError> {
    let ok_name = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'));
    if !ok_name {
        return Err(invalid(
            "facade.buckets",
            format!("{name:?} is not an S3 bucket name (3-63 of a-z, 0-9, '-', '.')"),
        ));
    }
    let uri =
        ObjectUri::parse(prefix).map_err(|e| invalid("facade.buckets", format!("{name}: {e}")))?;
    if !(uri.key().is_empty() || uri.key().ends_with('/')) {
        return Err(invalid(
            "facade.buckets",
            format!(
                "{name}: the prefix {prefix:?} must end with '/' (a directory, not a name start)"
            ),
        ));
    }
    Ok(())
}

fn check_key(id: &str, buckets: &[String], known: &BTreeMap<String, String>) -> Result<(), String> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
        return Err("an access key id is empty or has characters outside ASCII letters, digits and punctuation (or '/')".into());
    }
    match buckets.iter().find(|b| !known.contains_key(*b)) {
        Some(b) => Err(format!(
            "key {id} names bucket {b:?}, which facade.buckets lacks"
        )),
        None => Ok(()),
    }
}

/// Reads `ACCESS_KEY_ID SECRET [bucket,bucket…]` lines; `#` starts a
/// comment. Errors name the line, never its secret.
pub fn read_keys_file(
    path: &Path,
    known: &BTreeMap<String, String>,
) -> Result<Vec<FacadeKey>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        invalid(
            "facade.keys_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let bad = |why: String| {
            invalid(
                "facade.keys_file",
                format!("{} line {}: {why}", path.display(), n + 1),
            )
        };
        if !(2..=3).contains(&fields.len()) {
            return Err(bad("expected ACCESS_KEY_ID SECRET [bucket,bucket…]".into()));
        }
        let buckets: Vec<String> = fields
            .get(2)
            .map(|b| {
                b.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        check_key(fields[0], &buckets, known).map_err(bad)?;
        keys.push(FacadeKey {
            access_key_id: fields[0].to_owned(),
            secret_access_key: Secret::new(fields[1]),
            buckets,
        });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> FacadeConfig {
        FacadeConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9000))),
            buckets: [("train".to_owned(), "file:///data/".to_owned())].into(),
            anonymous: true,
            ..FacadeConfig::default()
        }
    }

    fn key_of(r: Result<(), ConfigError>) -> &'static str {
        match r.unwrap_err() {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn combinations_name_their_key() {
        assert!(FacadeConfig::default().validate().is_ok(), "off by default");
        assert!(base().validate().is_ok());
        let mut c = base();
        c.listen = Some(SocketAddr::from(([0, 0, 0, 0], 9000)));
        c.anonymous = false;
        c.keys_file = Some("/k".into());
        assert_eq!(key_of(c.validate()), "facade.listen");
        c.tls.cert = Some("/c".into());
        c.tls.key = Some("/k".into());
        assert!(c.validate().is_ok());
        c.anonymous = true;
        assert_eq!(key_of(c.validate()), "facade.anonymous");
        let mut c = base();
        c.buckets.insert("Bad_Name".into(), "file:///x/".into());
        assert_eq!(key_of(c.validate()), "facade.buckets");
        let mut c = base();
        c.buckets.insert("open".into(), "s3://bkt/pre".into());
        assert_eq!(key_of(c.validate()), "facade.buckets", "no trailing slash");
        let mut c = base();
        c.anonymous = false;
        assert_eq!(key_of(c.validate()), "facade.keys");
    }

    #[test]
    fn the_keys_file_is_parsed_and_errors_hide_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let known = base().buckets;
        std::fs::write(
            &path,
            "# ops\nAK1 s3cret-one\n\nAK2 s3cret-two train # limited\n",
        )
        .unwrap();
        let keys = read_keys_file(&path, &known).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].access_key_id, "AK2");
        assert_eq!(keys[1].secret_access_key.expose(), "s3cret-two");
        assert_eq!(keys[1].buckets, ["train"]);
        std::fs::write(&path, "AK3 s3cret-three other\n").unwrap();
        let e = read_keys_file(&path, &known).unwrap_err().to_string();
        assert!(e.contains("line 1") && !e.contains("s3cret"), "{e}");
        std::fs::write(&path, "lonely-s3cret\n").unwrap();
        let e = read_keys_file(&path, &known).unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
