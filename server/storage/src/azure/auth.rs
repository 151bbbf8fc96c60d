//! How an account's requests are authorized.
//!
//! The SDK authorizes with Entra ID tokens only. Account keys are used by
//! signing every request with SharedKey in a pipeline policy of our own
//! ([`SharedKey`], the algorithm of the Blob service's "Authorize with
//! Shared Key"), rather than by deriving a SAS from the key: no expiry to
//! manage, and the key never leaves the daemon, not even as a derived
//! token in a URL. SAS tokens ride in each URL's query; `anonymous` adds
//! nothing. Entra ID credentials are built from `azure_identity`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::credentials::{Secret as AzSecret, TokenCredential};
use azure_core::http::headers::HeaderName;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request};
use azure_core::time::{OffsetDateTime, to_rfc7231};
use azure_identity::{
    ClientSecretCredential, DeveloperToolsCredential, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
};

use super::config::{AzureAccount, Credential};
use crate::{ErrorKind, Result, StorageError};

/// Signs each request with the account key (`Authorization: SharedKey`).
/// Runs as a per-try policy, so every retry is signed afresh.
pub(super) struct SharedKey {
    pub(super) account: String,
    pub(super) key: AzSecret,
}

impl std::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedKey")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Policy for SharedKey {
    // The trait's signature, which elides `Context`'s lifetime.
    #[allow(elided_lifetimes_in_paths)]
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        request.insert_header("x-ms-date", to_rfc7231(&OffsetDateTime::now_utc()));
        let signature =
            azure_core::hmac::hmac_sha256(&string_to_sign(&self.account, request), &self.key)?;
        request.insert_header(
            "authorization",
            format!("SharedKey {}:{signature}", self.account),
        );
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// The string SharedKey signs (service version 2015-02-21 and later).
fn string_to_sign(account: &str, request: &Request) -> String {
    let headers = request.headers();
    let get = |name: &'static str| {
        headers
            .get_optional_str(&HeaderName::from_static(name))
            .unwrap_or("")
            .to_owned()
    };
    let mut length = get("content-length");
    if length.is_empty()
        && let Some(n) = request.body().len()
    {
        length = n.to_string();
    }
    if length == "0" {
        length.clear();
    }
    // The empty line is Date: x-ms-date is sent instead.
    let mut s = format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n\n{}\n{}\n{}\n{}\n{}\n",
        request.method().as_str(),
        get("content-encoding"),
        get("content-language"),
        length,
        get("content-md5"),
        get("content-type"),
        get("if-modified-since"),
        get("if-match"),
        get("if-none-match"),
        get("if-unmodified-since"),
        get("range"),
    );
    let mut ms: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-ms-"))
        .map(|(k, v)| (k.as_str().to_owned(), v.as_str().trim().to_owned()))
        .collect();
    ms.sort();
    for (k, v) in &ms {
        s.push_str(k);
        s.push(':');
        s.push_str(v);
        s.push('\n');
    }
    let url = request.url();
    s.push('/');
    s.push_str(account);
    s.push_str(url.path());
    let mut query: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in url.query_pairs() {
        query
            .entry(k.to_lowercase())
            .or_default()
            .push(v.into_owned());
    }
    for (k, mut values) in query {
        values.sort();
        s.push('\n');
        s.push_str(&k);
        s.push(':');
        s.push_str(&values.join(","));
    }
    s
}

/// An account SAS for the blob service, valid for `ttl`: read, add,
/// create, write, delete and list on every container and blob, over https
/// or http. Signed with the account key (for tests and tooling: the daemon
/// signs with the key itself when it has one).
pub fn account_sas(account: &str, key: &str, ttl: std::time::Duration) -> Result<String> {
    let shown = format!("az://{account}");
    let ttl = azure_core::time::Duration::try_from(ttl)
        .map_err(|_| StorageError::invalid(&shown, "sas lifetime out of range"))?;
    let expiry = (OffsetDateTime::now_utc() + ttl)
        .replace_nanosecond(0)
        .map_err(|_| StorageError::invalid(&shown, "sas expiry out of range"))?;
    let se = azure_core::time::to_rfc3339(&expiry);
    let (sv, sp, ss, srt, spr) = ("2025-11-05", "racwdl", "b", "sco", "https,http");
    let to_sign = format!("{account}\n{sp}\n{ss}\n{srt}\n\n{se}\n\n{spr}\n{sv}\n\n");
    let signature = azure_core::hmac::hmac_sha256(&to_sign, &AzSecret::new(key.to_owned()))
        .map_err(|_| StorageError::invalid(&shown, "the account key is not base64"))?;
    let mut url = azure_core::http::Url::parse("http://sas.invalid/").expect("a valid url");
    url.query_pairs_mut()
        .append_pair("sv", sv)
        .append_pair("ss", ss)
        .append_pair("srt", srt)
        .append_pair("sp", sp)
        .append_pair("se", &se)
        .append_pair("spr", spr)
        .append_pair("sig", &signature);
    Ok(url.query().unwrap_or_default().to_owned())
}

/// Which credential `configured` means, given the environment `env`:
/// `auto` takes workload identity when its token file is set, a service
/// principal when its secret is, else the managed identity.
fn resolve(configured: Credential, env: impl Fn(&str) -> Option<String>) -> Credential {
    match configured {
        Credential::Auto if env("AZURE_FEDERATED_TOKEN_FILE").is_some() => {
            Credential::WorkloadIdentity
        }
        Credential::Auto if env("AZURE_CLIENT_SECRET").is_some() => Credential::ClientSecret,
        Credential::Auto => Credential::ManagedIdentity,
        other => other,
    }
}

/// The Entra ID credential of `account` (one that uses a token).
pub(super) fn token_credential(account: &AzureAccount) -> Result<Arc<dyn TokenCredential>> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let kind = resolve(account.credential, env);
    let failed = |e: azure_core::Error| {
        // The SDK's message names variables and files, never secrets.
        StorageError::new(
            ErrorKind::InvalidArgument,
            format!("az://{}", account.name),
            format!(
                "[storage.azure] accounts[{}]: credential {kind:?}: {e}",
                account.name
            ),
        )
    };
    let credential: Arc<dyn TokenCredential> = match kind {
        Credential::WorkloadIdentity => WorkloadIdentityCredential::new(None).map_err(failed)?,
        Credential::ManagedIdentity => {
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id: account.client_id.clone().map(UserAssignedId::ClientId),
                ..ManagedIdentityCredentialOptions::default()
            };
            ManagedIdentityCredential::new(Some(options)).map_err(failed)?
        }
        Credential::ClientSecret => {
            let missing = |name: &str| {
                StorageError::new(
                    ErrorKind::InvalidArgument,
                    format!("az://{}", account.name),
                    format!("credential client_secret needs {name} in the environment"),
                )
            };
            let tenant = env("AZURE_TENANT_ID").ok_or_else(|| missing("AZURE_TENANT_ID"))?;
            let client = env("AZURE_CLIENT_ID").ok_or_else(|| missing("AZURE_CLIENT_ID"))?;
            let secret =
                env("AZURE_CLIENT_SECRET").ok_or_else(|| missing("AZURE_CLIENT_SECRET"))?;
            ClientSecretCredential::new(&tenant, client, AzSecret::new(secret), None)
                .map_err(failed)?
        }
        Credential::Cli => DeveloperToolsCredential::new(None).map_err(failed)?,
        Credential::Auto => unreachable!("resolved above"),
    };
    Ok(credential)
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::http::{Method, Url};

    #[test]
    fn auto_picks_the_credential_the_environment_sets_up() {
        let env = |vars: &'static [&'static str]| {
            move |name: &str| vars.contains(&name).then(|| "set".to_owned())
        };
        let aks = env(&[
            "AZURE_FEDERATED_TOKEN_FILE",
            "AZURE_CLIENT_ID",
            "AZURE_TENANT_ID",
        ]);
        assert_eq!(resolve(Credential::Auto, aks), Credential::WorkloadIdentity);
        let sp = env(&["AZURE_CLIENT_SECRET", "AZURE_CLIENT_ID", "AZURE_TENANT_ID"]);
        assert_eq!(resolve(Credential::Auto, sp), Credential::ClientSecret);
        assert_eq!(
            resolve(Credential::Auto, env(&[])),
            Credential::ManagedIdentity
        );
        // An explicit choice wins over the environment.
        let aks = env(&["AZURE_FEDERATED_TOKEN_FILE"]);
        assert_eq!(resolve(Credential::Cli, aks), Credential::Cli);
    }

    #[test]
    fn a_client_secret_credential_needs_its_variables() {
        // Explicit client_secret with nothing in the environment: refused at
        // startup, naming the variable, not later at the first request.
        if std::env::var_os("AZURE_TENANT_ID").is_some() {
            return;
        }
        let account = AzureAccount {
            name: "acct".into(),
            credential: Credential::ClientSecret,
            ..AzureAccount::default()
        };
        let e = token_credential(&account).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().contains("AZURE_TENANT_ID"), "{e}");
    }

    /// The documented example shape: method, the standard headers in order,
    /// the x-ms- headers sorted, then the resource and sorted query.
    #[test]
    fn the_string_to_sign_follows_the_shared_key_rules() {
        let url = Url::parse("http://127.0.0.1:10000/devstoreaccount1/cont/a%20b?comp=list&Restype=container&b=2&b=1").unwrap();
        let mut req = Request::new(url, Method::Get);
        req.insert_header("x-ms-version", "2025-11-05");
        req.insert_header("x-ms-date", "Wed, 02 Dec 2026 16:00:00 GMT");
        req.insert_header("range", "bytes=0-9");
        req.insert_header("if-match", "\"0x8D\"");
        let s = string_to_sign("devstoreaccount1", &req);
        assert_eq!(
            s,
            "GET\n\n\n\n\n\n\n\n\"0x8D\"\n\n\nbytes=0-9\n\
             x-ms-date:Wed, 02 Dec 2026 16:00:00 GMT\nx-ms-version:2025-11-05\n\
             /devstoreaccount1/devstoreaccount1/cont/a%20b\nb:1,2\ncomp:list\nrestype:container"
        );
    }
}
