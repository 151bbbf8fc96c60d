//! The S3-compatible facade for tests: a daemon with `[facade]` on a free
//! loopback port, and `aws-sdk-s3` clients pointed at it.
//!
//! [`facade_config`] is the configuration the facade tests (and anyone
//! driving the facade from another language) start from: facade bucket
//! `local` on the daemon's `file://` root, two access keys — [`KEY_ALL`]
//! for every bucket and [`KEY_LOCAL`] for `local` only — and region
//! `us-east-1`.

use std::net::SocketAddr;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use sluice_storage::s3::Secret;
use sluiced::Config;
use sluiced::facade::config::FacadeKey;

/// Access key id and secret allowed every facade bucket.
pub const KEY_ALL: (&str, &str) = ("FACADEALLKEY", "facade-secret-all");
/// Access key id and secret allowed only the `local` bucket.
pub const KEY_LOCAL: (&str, &str) = ("FACADELOCALKEY", "facade-secret-local");

/// Sets `[facade]` on `c`: loopback port 0, bucket `local` on the first
/// `file://` root, the two test keys, writes as asked.
pub fn facade_config(c: &mut Config, writes: bool) {
    let root = c.storage.file.roots[0].clone();
    let f = &mut c.facade;
    f.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    f.buckets
        .insert("local".into(), format!("file://{}/", root.display()));
    f.keys = [KEY_ALL, KEY_LOCAL]
        .iter()
        .map(|(id, secret)| FacadeKey {
            access_key_id: (*id).into(),
            secret_access_key: Secret::new(*secret),
            buckets: if *id == KEY_LOCAL.0 {
                vec!["local".into()]
            } else {
                Vec::new()
            },
        })
        .collect();
    f.writes = writes;
}

/// An S3 client of the facade (or any S3-compatible server) at `addr`,
/// path style, region `us-east-1`, signing with `key`.
pub fn client(addr: SocketAddr, key: (&str, &str)) -> aws_sdk_s3::Client {
    client_with(addr, key, |b| b)
}

/// As [`client`], after `adjust` changed the configuration.
pub fn client_with(
    addr: SocketAddr,
    key: (&str, &str),
    adjust: impl FnOnce(aws_sdk_s3::config::Builder) -> aws_sdk_s3::config::Builder,
) -> aws_sdk_s3::Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(format!("http://{addr}"))
        .force_path_style(true)
        .credentials_provider(Credentials::new(key.0, key.1, None, None, "facade-test"))
        .http_client(http);
    aws_sdk_s3::Client::from_conf(adjust(config).build())
}

/// A raw HTTP/1.1 request to `addr`: the status and the body.
pub async fn raw(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    crate::grpc::http_request(addr, method, path).await
}
