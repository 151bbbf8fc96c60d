//! Parsing of object URIs.
//!
//! | form | meaning |
//! |---|---|
//! | `file:///abs/path` | a local file (confined to the configured roots) |
//! | `s3://bucket/key` | an object at the configured default S3 endpoint |
//! | `s3://host:port/bucket/key` | an object at an explicit endpoint, served only when the configuration lists it |
//! | `gs://bucket/object` | a Google Cloud Storage object (at `[storage.gcs] endpoint`, or Google's) |
//! | `az://account/container/blob` | an Azure blob, served only when `[[storage.azure.accounts]]` lists the account |
//! | `https://account.blob.core.windows.net/container/blob` | the same blob (also the sovereign clouds' blob hosts); shown as `az://…` |
//!
//! A `file://` path has one spelling: runs of `/` collapse to one, so
//! `file:///d//x` and `file:///d/x` are one cache entry. An S3 authority
//! with a port is an endpoint: bucket names cannot contain `:`. Keys are taken literally (no percent-decoding), so any S3 key that
//! is valid UTF-8 can be named.
//!
//! A URI is at most [`MAX_URI_LEN`] bytes: room for any S3 object (keys are
//! at most 1,024 bytes) and any local path (`PATH_MAX` is 4,096). Longer
//! ones are refused before anything is copied, and an error names only
//! their first bytes.

use std::fmt;

use crate::error::{Result, StorageError};

/// The backend a URI belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    /// `file://`
    File,
    /// `direct://`: a local file read with `O_DIRECT`
    Direct,
    /// `s3://`
    S3,
    /// `gs://`
    Gs,
    /// `az://`
    Az,
}

impl Scheme {
    /// The scheme as written in URIs, also the backend's metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::File => "file",
            Scheme::Direct => "direct",
            Scheme::S3 => "s3",
            Scheme::Gs => "gs",
            Scheme::Az => "az",
        }
    }
}

/// A parsed object (or prefix) URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectUri {
    scheme: Scheme,
    /// `host:port` of an explicit S3 endpoint.
    endpoint: Option<String>,
    /// Bucket name; empty for `file://`.
    bucket: String,
    /// Object key; for `file://` the absolute path.
    key: String,
}

/// The longest URI accepted, in bytes.
pub const MAX_URI_LEN: usize = 4096;

/// How much of an overlong URI an error message shows.
const SHOWN_PREFIX: usize = 96;

/// Refuses a URI longer than [`MAX_URI_LEN`], naming only its beginning so
/// that the error itself stays small.
pub fn check_len(uri: &str) -> Result<()> {
    if uri.len() <= MAX_URI_LEN {
        return Ok(());
    }
    let mut cut = SHOWN_PREFIX;
    while !uri.is_char_boundary(cut) {
        cut -= 1;
    }
    Err(StorageError::invalid(
        format!("{}…", &uri[..cut]),
        format!(
            "uri of {} bytes exceeds the limit of {MAX_URI_LEN} bytes",
            uri.len()
        ),
    ))
}

impl ObjectUri {
    /// Parses `uri`; errors are `InvalidArgument` naming the URI.
    pub fn parse(uri: &str) -> Result<Self> {
        check_len(uri)?;
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| StorageError::invalid(uri, "not a uri: expected scheme://…"))?;
        match scheme {
            "file" => Self::parse_file(uri, rest, Scheme::File),
            "direct" => Self::parse_file(uri, rest, Scheme::Direct),
            "s3" => Self::parse_s3(uri, rest),
            "gs" => Self::parse_gs(uri, rest),
            "az" => Self::parse_az(uri, rest),
            "https" => Self::parse_azure_url(uri, rest),
            other => Err(StorageError::invalid(
                uri,
                format!(
                    "unsupported scheme {other:?}: expected file://, direct://, s3://, gs:// or az://"
                ),
            )),
        }
    }

    fn parse_file(uri: &str, rest: &str, scheme: Scheme) -> Result<Self> {
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        if !path.starts_with('/') {
            let name = scheme.as_str();
            return Err(StorageError::invalid(
                uri,
                format!("{name} uris need an absolute path: {name}:///abs/path"),
            ));
        }
        if path.contains('\0') {
            return Err(StorageError::invalid(uri, "path contains a nul byte"));
        }
        // One file, one name: `a//b` is `a/b` on every filesystem, so the
        // cache and invalidations see one key for both spellings.
        let mut key = String::with_capacity(path.len());
        for c in path.chars() {
            if !(c == '/' && key.ends_with('/')) {
                key.push(c);
            }
        }
        Ok(ObjectUri {
            scheme,
            endpoint: None,
            bucket: String::new(),
            key,
        })
    }

    fn parse_s3(uri: &str, rest: &str) -> Result<Self> {
        let (first, after) = rest.split_once('/').unwrap_or((rest, ""));
        let (endpoint, bucket, key) = if first.contains(':') {
            let (bucket, key) = after.split_once('/').unwrap_or((after, ""));
            (Some(first.to_owned()), bucket, key)
        } else {
            (None, first, after)
        };
        if let Some(ep) = &endpoint {
            let (host, port) = ep.rsplit_once(':').unwrap_or((ep, ""));
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(StorageError::invalid(uri, "endpoint must be host:port"));
            }
        }
        if !valid_bucket(bucket) {
            return Err(StorageError::invalid(
                uri,
                "missing or invalid bucket name (3-63 characters: a-z, 0-9, '.', '-')",
            ));
        }
        Ok(ObjectUri {
            scheme: Scheme::S3,
            endpoint,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }

    fn parse_gs(uri: &str, rest: &str) -> Result<Self> {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if !valid_gcs_bucket(bucket) {
            return Err(StorageError::invalid(
                uri,
                "missing or invalid bucket name (3-222 characters: a-z, 0-9, '.', '-', '_')",
            ));
        }
        // GCS object names: at most 1,024 bytes of UTF-8, no carriage
        // return or line feed.
        // `.` and `..` are not object names on GCS (and would be resolved
        // away in the request URL).
        if key.len() > 1024 || key.contains(['\r', '\n']) || key == "." || key == ".." {
            return Err(StorageError::invalid(
                uri,
                "invalid object name (at most 1024 bytes, no CR or LF, not '.' or '..')",
            ));
        }
        Ok(ObjectUri {
            scheme: Scheme::Gs,
            endpoint: None,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }

    fn parse_az(uri: &str, rest: &str) -> Result<Self> {
        let (account, path) = rest.split_once('/').unwrap_or((rest, ""));
        Self::azure(uri, account, path)
    }

    /// `https://<account>.blob.core.windows.net/<container>/<blob>` (or a
    /// sovereign cloud's blob host).
    fn parse_azure_url(uri: &str, rest: &str) -> Result<Self> {
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let account = AZURE_BLOB_HOSTS
            .iter()
            .find_map(|suffix| host.strip_suffix(suffix))
            .ok_or_else(|| {
                StorageError::invalid(
                    uri,
                    "https:// uris name Azure blobs only: https://<account>.blob.core.windows.net/<container>/<blob>",
                )
            })?;
        Self::azure(uri, account, path)
    }

    fn azure(uri: &str, account: &str, path: &str) -> Result<Self> {
        if !crate::azure::valid_account(account) {
            return Err(StorageError::invalid(
                uri,
                "missing or invalid storage account name (3-24 characters: a-z, 0-9)",
            ));
        }
        let (container, blob) = path.split_once('/').unwrap_or((path, ""));
        if !valid_container(container) {
            return Err(StorageError::invalid(
                uri,
                "missing or invalid container name (3-63 characters: a-z, 0-9, '-')",
            ));
        }
        if blob.len() > 1024 {
            return Err(StorageError::invalid(
                uri,
                "blob name longer than 1024 bytes",
            ));
        }
        // A `.` or `..` segment would be resolved away in the request URL
        // (`a/../b` is `b`, even another container): one blob, one name.
        if blob.split('/').any(|seg| seg == "." || seg == "..") {
            return Err(StorageError::invalid(
                uri,
                "blob names may not have '.' or '..' path segments",
            ));
        }
        Ok(ObjectUri {
            scheme: Scheme::Az,
            endpoint: Some(account.to_owned()),
            bucket: container.to_owned(),
            key: blob.to_owned(),
        })
    }

    /// The backend.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// `host:port` of an explicit S3 endpoint; the storage account of an
    /// `az://` URI.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// Bucket (empty for files).
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Key within the bucket; for files the absolute path.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The same location with another key (used to name listed objects).
    pub fn with_key(&self, key: impl Into<String>) -> Self {
        ObjectUri {
            key: key.into(),
            ..self.clone()
        }
    }
}

fn valid_bucket(bucket: &str) -> bool {
    // Permissive superset of S3's rules (also allows the underscores and
    // capitals that some S3-compatible servers accept); rejects what cannot
    // be a bucket at all.
    (1..=255).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Blob hosts of the Azure clouds: public, China, US Government.
const AZURE_BLOB_HOSTS: [&str; 3] = [
    ".blob.core.windows.net",
    ".blob.core.chinacloudapi.cn",
    ".blob.core.usgovcloudapi.net",
];

fn valid_container(name: &str) -> bool {
    // Azure's rules: 3-63 characters, lowercase letters, digits and single
    // hyphens, starting and ending with a letter or digit.
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.contains("--")
        && edge(name.bytes().next())
        && edge(name.bytes().last())
}

fn valid_gcs_bucket(bucket: &str) -> bool {
    // Google's rules: 3-63 characters (222 with dots), lowercase letters,
    // digits, '-', '_' and '.', starting and ending with a letter or digit.
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let max = if bucket.contains('.') { 222 } else { 63 };
    (3..=max).contains(&bucket.len())
        && bucket.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
        && edge(bucket.bytes().next())
        && edge(bucket.bytes().last())
}

impl fmt::Display for ObjectUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme {
            Scheme::File | Scheme::Direct => write!(f, "{}://{}", self.scheme.as_str(), self.key),
            Scheme::S3 => match &self.endpoint {
                Some(ep) => write!(f, "s3://{ep}/{}/{}", self.bucket, self.key),
                None => write!(f, "s3://{}/{}", self.bucket, self.key),
            },
            Scheme::Gs => write!(f, "gs://{}/{}", self.bucket, self.key),
            Scheme::Az => write!(
                f,
                "az://{}/{}/{}",
                self.endpoint.as_deref().unwrap_or_default(),
                self.bucket,
                self.key
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use proptest::prelude::*;

    #[test]
    fn parses_each_form() {
        let u = ObjectUri::parse("file:///data/a b.bin").unwrap();
        assert_eq!((u.scheme(), u.key()), (Scheme::File, "/data/a b.bin"));
        let u = ObjectUri::parse("s3://bucket/dir/key.tar").unwrap();
        assert_eq!(
            (u.endpoint(), u.bucket(), u.key()),
            (None, "bucket", "dir/key.tar")
        );
        let u = ObjectUri::parse("s3://127.0.0.1:9000/bkt/k").unwrap();
        assert_eq!(
            (u.endpoint(), u.bucket(), u.key()),
            (Some("127.0.0.1:9000"), "bkt", "k")
        );
        let u = ObjectUri::parse("s3://bkt").unwrap();
        assert_eq!((u.bucket(), u.key()), ("bkt", ""));
        let u = ObjectUri::parse("gs://my-bucket/dir/a b.bin").unwrap();
        assert_eq!(
            (u.scheme(), u.endpoint(), u.bucket(), u.key()),
            (Scheme::Gs, None, "my-bucket", "dir/a b.bin")
        );
        assert_eq!(u.to_string(), "gs://my-bucket/dir/a b.bin");
        let u = ObjectUri::parse("az://acct1/cont/dir/blob.tar").unwrap();
        assert_eq!(
            (u.scheme(), u.endpoint(), u.bucket(), u.key()),
            (Scheme::Az, Some("acct1"), "cont", "dir/blob.tar")
        );
        let https =
            ObjectUri::parse("https://acct1.blob.core.windows.net/cont/dir/blob.tar").unwrap();
        assert_eq!(https, u, "the https form names the same blob");
        assert_eq!(https.to_string(), "az://acct1/cont/dir/blob.tar");
    }

    #[test]
    fn rejects_malformed_uris_naming_them() {
        for bad in [
            "data/x",
            "file://relative",
            "gopher://x/y",
            "s3:///key",
            "s3://h:notaport/b/k",
            "s3://:9000/b/k",
            "gs://",
            "gs://ab/k",
            "gs://Upper/k",
            "gs://host:9000/b/k",
            "gs://-bkt/k",
            "gs://bkt/a\nb",
            "az://acct1",
            "az://Acct/cont/b",
            "az://acct1/c/b",
            "az://acct1/co--nt/b",
            "az://acct1/cont/../other/x",
            "az://acct1/cont/a/./b",
            "az://acct1/cont/..",
            "gs://bkt/..",
            "gs://bkt/.",
            "https://example.com/cont/b",
            "https://acct1.blob.core.windows.net.evil.com/cont/b",
        ] {
            let e = ObjectUri::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}");
            assert_eq!(e.uri(), bad);
        }
    }

    #[test]
    fn file_paths_have_one_spelling() {
        let u = ObjectUri::parse("file:////data//train///x.bin").unwrap();
        assert_eq!(u.key(), "/data/train/x.bin");
        assert_eq!(u.to_string(), "file:///data/train/x.bin");
        let dir = ObjectUri::parse("file:///data//train//").unwrap();
        assert_eq!(
            dir.key(),
            "/data/train/",
            "a prefix keeps its trailing slash"
        );
        // S3 keys are names, not paths: `a//b` and `a/b` are two objects.
        let s3 = ObjectUri::parse("s3://bkt/a//b").unwrap();
        assert_eq!(s3.key(), "a//b");
    }

    #[test]
    fn overlong_uris_are_refused_naming_only_their_start() {
        let at_limit = format!("s3://bkt/{}", "k".repeat(MAX_URI_LEN - 9));
        assert_eq!(at_limit.len(), MAX_URI_LEN);
        assert!(ObjectUri::parse(&at_limit).is_ok());
        let over = format!("{at_limit}é");
        let e = ObjectUri::parse(&over).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().len() < 300, "{e}");
        assert!(
            e.to_string().contains(&format!("{} bytes", over.len())),
            "{e}"
        );
        // A multi-byte character across the cut does not panic.
        let wide = "file:///".to_owned() + &"é".repeat(MAX_URI_LEN);
        assert_eq!(
            ObjectUri::parse(&wide).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }

    proptest! {
        /// Whatever a client sends: never a panic, and what parses
        /// re-parses to itself from its display form.
        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC{0,120}", tail in "(s3|file|gs|az|https)://\\PC{0,60}") {
            for input in [s.as_str(), tail.as_str()] {
                if let Ok(parsed) = ObjectUri::parse(input) {
                    prop_assert_eq!(ObjectUri::parse(&parsed.to_string()).ok(), Some(parsed));
                }
            }
        }

        #[test]
        fn display_round_trips(bucket in "[a-z0-9][a-z0-9.-]{2,20}", key in "[a-zA-Z0-9/ _.-]{0,40}", port in proptest::option::of(1u16..)) {
            let uri = match port {
                Some(p) => format!("s3://localhost:{p}/{bucket}/{key}"),
                None => format!("s3://{bucket}/{key}"),
            };
            let parsed = ObjectUri::parse(&uri).unwrap();
            prop_assert_eq!(parsed.to_string(), uri);
            prop_assert_eq!(parsed.key(), key.as_str());
        }
    }
}
