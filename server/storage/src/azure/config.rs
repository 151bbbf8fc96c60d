//! Configuration of the `az://` backend (`[storage.azure]`).

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::s3::Secret;
use crate::{Result, StorageError};

/// `[storage.azure]`: the storage accounts `az://account/container/blob`
/// may name, each with its credential, and the settings they share.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AzureConfig {
    /// The only accounts URIs may name. Empty: every `az://` URI is refused.
    pub accounts: Vec<AzureAccount>,
    /// Attempts per request, first one included (the SDK's retry policy:
    /// 408, 429, 500, 502, 503, 504, connection failures).
    pub max_attempts: u32,
    /// First retry backoff; doubles per attempt, with jitter.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Backoff ceiling.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// TCP + TLS connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for a response's headers, and between two reads of a
    /// body.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
}

impl Default for AzureConfig {
    fn default() -> Self {
        AzureConfig {
            accounts: Vec::new(),
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

/// How an account's requests are authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// Pick from the environment: workload identity when
    /// `AZURE_FEDERATED_TOKEN_FILE` is set, a service principal when
    /// `AZURE_CLIENT_SECRET` is, else the managed identity.
    Auto,
    /// Workload identity (AKS): `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
    /// `AZURE_FEDERATED_TOKEN_FILE`.
    WorkloadIdentity,
    /// The VM's or node pool's managed identity (IMDS); a user-assigned one
    /// with `client_id`.
    ManagedIdentity,
    /// A service principal: `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
    /// `AZURE_CLIENT_SECRET`.
    ClientSecret,
    /// The developer's `az login` (then `azd`).
    Cli,
}

/// One `[[storage.azure.accounts]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AzureAccount {
    /// The account name as written in URIs (3-24 lowercase letters and
    /// digits).
    pub name: String,
    /// Blob service URL. Unset: `https://<name>.blob.core.windows.net`.
    /// Azurite: `http://127.0.0.1:10000/<name>`; sovereign clouds: their
    /// blob host.
    pub endpoint: Option<String>,
    /// The account key (base64): requests are signed with it (SharedKey).
    /// Printed as `***redacted***`.
    pub account_key: Option<Secret>,
    /// A SAS token (the query string, with or without `?`), appended to
    /// every request. Printed as `***redacted***`.
    pub sas_token: Option<Secret>,
    /// No credential (public containers).
    pub anonymous: bool,
    /// The Entra ID credential, when neither a key, a SAS nor `anonymous`
    /// is set.
    pub credential: Credential,
    /// Client ID of a user-assigned managed identity.
    pub client_id: Option<String>,
}

impl Default for AzureAccount {
    fn default() -> Self {
        AzureAccount {
            name: String::new(),
            endpoint: None,
            account_key: None,
            sas_token: None,
            anonymous: false,
            credential: Credential::Auto,
            client_id: None,
        }
    }
}

impl AzureAccount {
    /// The account's blob service URL, without a trailing `/`.
    pub fn endpoint(&self) -> String {
        match &self.endpoint {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("https://{}.blob.core.windows.net", self.name),
        }
    }

    /// Whether requests carry an Entra ID token.
    pub fn uses_token(&self) -> bool {
        self.account_key.is_none() && self.sas_token.is_none() && !self.anonymous
    }
}

/// Whether `name` can be a storage account name.
pub fn valid_account(name: &str) -> bool {
    (3..=24).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl AzureConfig {
    /// Checks what serde cannot; errors are `InvalidArgument` naming the key.
    pub fn validate(&self) -> Result<()> {
        let invalid = |key: String, why: &str| {
            StorageError::invalid("az://", format!("[storage.azure] {key}: {why}"))
        };
        if self.max_attempts == 0 {
            return Err(invalid("max_attempts".into(), "must be at least 1"));
        }
        if self.connect_timeout.is_zero() || self.attempt_timeout.is_zero() {
            return Err(invalid("timeouts".into(), "must be above 0s"));
        }
        if self.initial_backoff > self.max_backoff {
            return Err(invalid(
                "initial_backoff".into(),
                "must not exceed max_backoff",
            ));
        }
        let mut seen = HashSet::new();
        for account in &self.accounts {
            let key = |k: &str| format!("accounts[{}].{k}", account.name);
            if !valid_account(&account.name) {
                return Err(invalid(
                    key("name"),
                    "must be 3-24 lowercase letters and digits",
                ));
            }
            if !seen.insert(account.name.as_str()) {
                return Err(invalid(key("name"), "listed twice"));
            }
            let ways = [
                account.account_key.is_some(),
                account.sas_token.is_some(),
                account.anonymous,
            ];
            if ways.iter().filter(|w| **w).count() > 1 {
                return Err(invalid(
                    key("account_key"),
                    "set at most one of account_key, sas_token and anonymous",
                ));
            }
            let url = account.endpoint();
            let parsed: http::Uri = url
                .parse()
                .map_err(|_| invalid(key("endpoint"), "not a URL"))?;
            let scheme = parsed.scheme_str();
            if !matches!(scheme, Some("http" | "https")) || parsed.host().is_none() {
                return Err(invalid(
                    key("endpoint"),
                    "must be http(s)://host[:port][/path]",
                ));
            }
            if parsed.query().is_some() {
                return Err(invalid(
                    key("endpoint"),
                    "must have no query (use sas_token)",
                ));
            }
            if account.uses_token() && scheme != Some("https") {
                return Err(invalid(
                    key("endpoint"),
                    "an Entra ID token is only sent over https: use https, or an account_key or sas_token",
                ));
            }
            if let Some(k) = &account.account_key {
                use azure_core::base64;
                if base64::decode(k.expose()).is_err() {
                    return Err(invalid(key("account_key"), "is not base64"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str) -> AzureAccount {
        AzureAccount {
            name: name.into(),
            ..AzureAccount::default()
        }
    }

    #[test]
    fn bad_accounts_are_refused_naming_the_key() {
        let cases = [
            (account("Bad_Name"), "name"),
            (
                AzureAccount {
                    endpoint: Some("http://127.0.0.1:10000/acct".into()),
                    ..account("acct")
                },
                "only sent over https",
            ),
            (
                AzureAccount {
                    account_key: Some(Secret::new("k")),
                    sas_token: Some(Secret::new("sv=1")),
                    ..account("acct")
                },
                "at most one",
            ),
            (
                AzureAccount {
                    account_key: Some(Secret::new("not base64!")),
                    ..account("acct")
                },
                "base64",
            ),
        ];
        for (a, says) in cases {
            let config = AzureConfig {
                accounts: vec![a],
                ..AzureConfig::default()
            };
            let e = config.validate().unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
            assert!(e.message().contains(says), "{e}");
        }
        let twice = AzureConfig {
            accounts: vec![account("acct"), account("acct")],
            ..AzureConfig::default()
        };
        assert!(twice.validate().unwrap_err().message().contains("twice"));
        let ok = AzureConfig {
            accounts: vec![account("acct")],
            ..AzureConfig::default()
        };
        ok.validate().unwrap();
        assert_eq!(
            ok.accounts[0].endpoint(),
            "https://acct.blob.core.windows.net"
        );
    }
}
