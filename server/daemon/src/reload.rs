//! SIGHUP: reload what can change safely, and say what cannot.
//!
//! On each SIGHUP the daemon reads its configuration again, from the same
//! file, environment and flags it started with, and then:
//!
//! - reloads the TCP listener's TLS material (certificate, key, client CA,
//!   tokens) from its files — new connections use it ([`crate::tls`]);
//! - applies `log.level`;
//! - turns the operation log on or off (`oplog.enabled`), when the daemon
//!   was started with one configured;
//! - lists every other key whose value changed as needing a restart — the
//!   arena, the listeners, the backends and their credentials are built
//!   once, and changing them under running sessions is not safe.
//!
//! A configuration that no longer loads or validates changes nothing: the
//! error is logged and the daemon runs on as before.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Config;
use crate::telemetry::logging::Logging;
use crate::tls::TcpSecurity;

/// Loads the configuration again, as at start.
pub type Loader = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

/// What a SIGHUP acts on.
pub struct Reload {
    /// Reads the configuration again; `None`: only the TLS material.
    pub loader: Option<Loader>,
    /// The logging to re-level.
    pub logging: Option<Arc<Logging>>,
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload")
            .field("loader", &self.loader.is_some())
            .field("logging", &self.logging.is_some())
            .finish()
    }
}

/// What one reload did, for the log and the tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Keys applied.
    pub applied: Vec<String>,
    /// Keys that changed and need a restart.
    pub need_restart: Vec<String>,
}

/// Turns the operation log on or off.
pub(crate) type OpLogSwitch = Arc<dyn Fn(bool) -> std::io::Result<()> + Send + Sync>;

/// The daemon's side of the reload: the state a SIGHUP acts on.
pub(crate) struct Live {
    pub(crate) reload: Reload,
    pub(crate) current: Config,
    pub(crate) security: Option<Arc<TcpSecurity>>,
    pub(crate) oplog: Option<OpLogSwitch>,
}

impl Live {
    /// Reloads on every SIGHUP until the task is aborted.
    pub(crate) async fn run(mut self) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::warn!(%error, "cannot install the SIGHUP handler: nothing is reloaded");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            tracing::info!("received SIGHUP: reloading");
            crate::tls::reload(self.security.as_deref());
            self.config_once();
        }
    }

    /// Reads the configuration again and applies it (see the module docs).
    pub(crate) fn config_once(&mut self) -> Option<Outcome> {
        let loader = self.reload.loader.as_ref()?;
        let new = match loader() {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "SIGHUP: the configuration does not load; nothing changed"
                );
                return None;
            }
        };
        let outcome = self.apply(new);
        if !outcome.applied.is_empty() {
            tracing::info!(keys = ?outcome.applied, "SIGHUP: applied");
        }
        if !outcome.need_restart.is_empty() {
            tracing::warn!(
                keys = ?outcome.need_restart,
                "SIGHUP: these keys changed but take effect only after a restart"
            );
        }
        Some(outcome)
    }

    fn apply(&mut self, new: Config) -> Outcome {
        let mut outcome = Outcome::default();
        for key in changed_keys(&self.current, &new) {
            // Applied without a restart. TLS paths are not among these: the
            // files are read again, but a new path needs a restart.
            let applied = match key.as_str() {
                "log.level" => self.set_level(&new.log.level),
                "oplog.enabled" => self.set_oplog(&new),
                _ => false,
            };
            if applied {
                outcome.applied.push(key);
            } else {
                outcome.need_restart.push(key);
            }
        }
        // What was applied is now current; the rest stays as running.
        let mut current = value_of(&self.current);
        let new_values = value_of(&new);
        for key in &outcome.applied {
            if let Some(v) = new_values.get(key) {
                current.insert(key.clone(), v.clone());
            }
        }
        if let Ok(config) = rebuild(&current) {
            self.current = config;
        }
        outcome
    }

    fn set_level(&self, level: &str) -> bool {
        let Some(logging) = &self.reload.logging else {
            return false;
        };
        match logging.set_level(level) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, level, "SIGHUP: log.level not applied");
                false
            }
        }
    }

    fn set_oplog(&self, new: &Config) -> bool {
        let Some(set) = &self.oplog else { return false };
        let on = oplog_enabled(new);
        match set(on) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, on, "SIGHUP: oplog.enabled not applied");
                false
            }
        }
    }
}

/// `oplog.enabled` of a configuration (false when it has no such key).
fn oplog_enabled(config: &Config) -> bool {
    value_of(config)
        .get("oplog.enabled")
        .and_then(toml::Value::as_bool)
        .unwrap_or(false)
}

/// The dotted keys whose values differ, sorted.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (old, new) = (value_of(old), value_of(new));
    let mut keys: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// A configuration as dotted keys (`section.key`, `section.sub.key`) and
/// their values; arrays are values, not descended into.
fn value_of(config: &Config) -> BTreeMap<String, toml::Value> {
    let mut out = BTreeMap::new();
    if let Ok(toml::Value::Table(table)) = toml::Value::try_from(config) {
        flatten("", table, &mut out);
    }
    out
}

fn flatten(prefix: &str, table: toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (key, value) in table {
        let key = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(t) => flatten(&key, t, out),
            v => {
                out.insert(key, v);
            }
        }
    }
}

/// A configuration back from dotted keys.
fn rebuild(values: &BTreeMap<String, toml::Value>) -> Result<Config, toml::de::Error> {
    let mut root = toml::Table::new();
    for (key, value) in values {
        let mut table = &mut root;
        let mut parts = key.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                table.insert(part.to_owned(), value.clone());
            } else {
                table = table
                    .entry(part.to_owned())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .expect("a key is either a table or a value");
            }
        }
    }
    toml::Value::Table(root).try_into()
}

#[cfg(test)]
mod tests;
