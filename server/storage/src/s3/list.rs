//! One page of ListObjectsV2.
//!
//! The prefix URI's key is the S3 prefix; `page_size` is `MaxKeys` (S3
//! counts objects and common prefixes together and caps a page at 1000, as
//! the contract does); the page token is S3's opaque continuation token.
//! Listed keys become full URIs on the same endpoint and bucket.

use aws_sdk_s3::Client;
use aws_sdk_s3::types::Object;

use super::{errors, system_time};
use crate::{ListOptions, ListPage, ObjectMeta, ObjectUri, Result, StorageError};

/// S3's largest page.
const MAX_KEYS: usize = 1000;

pub(super) async fn list(
    client: &Client,
    prefix: &ObjectUri,
    opts: &ListOptions,
) -> Result<ListPage> {
    let max_keys = opts.page_size.clamp(1, MAX_KEYS) as i32;
    let mut req = client
        .list_objects_v2()
        .bucket(prefix.bucket())
        .prefix(prefix.key())
        .max_keys(max_keys);
    if let Some(d) = opts.delimiter.as_deref().filter(|d| !d.is_empty()) {
        req = req.delimiter(d);
    }
    if let Some(token) = &opts.page_token {
        req = req.continuation_token(token);
    }
    let out = req
        .send()
        .await
        .map_err(|e| errors::map(e, prefix, "list"))?;
    let objects = out
        .contents()
        .iter()
        .map(|o| object_meta(prefix, o))
        .collect::<Result<Vec<_>>>()?;
    let common_prefixes = out
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .map(|p| prefix.with_key(p).to_string())
        .collect();
    let next_token = match (out.is_truncated(), out.next_continuation_token()) {
        (Some(true), Some(token)) => Some(token.to_owned()),
        (Some(true), None) => {
            return Err(StorageError::protocol(
                prefix.to_string(),
                "listing is truncated but has no continuation token",
            ));
        }
        _ => None,
    };
    Ok(ListPage {
        objects,
        common_prefixes,
        next_token,
    })
}

fn object_meta(prefix: &ObjectUri, o: &Object) -> Result<ObjectMeta> {
    let key = o
        .key()
        .ok_or_else(|| StorageError::protocol(prefix.to_string(), "listed object has no key"))?;
    let uri = prefix.with_key(key).to_string();
    let size = u64::try_from(o.size().unwrap_or(0))
        .map_err(|_| StorageError::protocol(uri.clone(), "listed object has a negative size"))?;
    Ok(ObjectMeta {
        uri,
        size,
        etag: o.e_tag().map(str::to_owned),
        last_modified: o.last_modified().and_then(system_time),
        version: None,
    })
}
