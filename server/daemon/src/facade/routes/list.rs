//! ListObjectsV2, ListObjects (V1), ListBuckets and GetBucketLocation.
//!
//! A listing is one page of the backend's listing under the bucket's
//! prefix plus the request's `prefix`; keys are the backend's URIs with
//! the bucket's prefix taken off. The backend's continuation token is
//! passed through as the facade's. `start-after` (V1: `marker`) without a
//! token skips keys up to it, page after page.

use http::StatusCode;
use sluice_storage::ListOptions;

use super::{Req, Resp, State, object_uri, xml};
use crate::facade::error::S3Error;
use crate::facade::sigv4::{Principal, encode};
use crate::facade::time;
use crate::facade::xml::Xml;

/// S3's most keys per page.
const MAX_KEYS: usize = 1000;

/// ListBuckets: the facade buckets the principal may use.
pub(super) fn list_buckets(state: &State, principal: &Principal) -> Result<Resp, S3Error> {
    let mut x = Xml::new();
    x.open_s3("ListAllMyBucketsResult");
    x.open("Owner");
    x.elem("ID", "sluice");
    x.elem("DisplayName", "sluice");
    x.close("Owner");
    x.open("Buckets");
    let created = time::iso8601(state.started);
    for name in state.buckets.keys().filter(|b| principal.may_use(b)) {
        x.open("Bucket");
        x.elem("Name", name);
        x.elem("CreationDate", &created);
        x.close("Bucket");
    }
    x.close("Buckets");
    x.close("ListAllMyBucketsResult");
    Ok(xml(StatusCode::OK, x.finish()))
}

/// GetBucketLocation: the facade's region (empty for us-east-1, as S3).
pub(super) fn location(req: &Req<'_>) -> Result<Resp, S3Error> {
    let region = &req.state.config.region;
    let mut x = Xml::new();
    x.open_s3("LocationConstraint");
    let text = if region == "us-east-1" {
        ""
    } else {
        region.as_str()
    };
    x.text(text);
    x.close("LocationConstraint");
    Ok(xml(StatusCode::OK, x.finish()))
}

/// One page of a listing, with the bucket prefix taken off.
struct Page {
    keys: Vec<sluice_storage::ObjectMeta>,
    prefixes: Vec<String>,
    next: Option<String>,
}

/// ListObjectsV2 (`v2`) or ListObjects.
pub(super) async fn list_objects(req: &Req<'_>, v2: bool) -> Result<Resp, S3Error> {
    let q = &req.query;
    let prefix = q.get("prefix").unwrap_or_default().to_owned();
    let delimiter = q
        .get("delimiter")
        .filter(|d| !d.is_empty())
        .map(str::to_owned);
    let max_keys = match q.get("max-keys") {
        Some(n) => n
            .parse::<usize>()
            .map_err(|_| S3Error::invalid_argument("max-keys must be a non-negative integer"))?
            .min(MAX_KEYS),
        None => MAX_KEYS,
    };
    let token = if v2 {
        q.get("continuation-token")
    } else {
        None
    }
    .map(str::to_owned);
    let after = if v2 {
        q.get("start-after")
    } else {
        q.get("marker")
    }
    .unwrap_or_default()
    .to_owned();
    let url = q.get("encoding-type") == Some("url");
    let page = if max_keys == 0 {
        Page {
            keys: Vec::new(),
            prefixes: Vec::new(),
            next: None,
        }
    } else {
        page(
            req,
            &prefix,
            delimiter.clone(),
            max_keys,
            token.clone(),
            &after,
        )
        .await?
    };
    let show = |s: &str| if url { encode(s, false) } else { s.to_owned() };
    let mut x = Xml::new();
    x.open_s3("ListBucketResult");
    x.elem("Name", &req.bucket);
    x.elem("Prefix", &show(&prefix));
    if let Some(d) = &delimiter {
        x.elem("Delimiter", &show(d));
    }
    x.elem("MaxKeys", &max_keys.to_string());
    if url {
        x.elem("EncodingType", "url");
    }
    x.elem(
        "IsTruncated",
        if page.next.is_some() { "true" } else { "false" },
    );
    if v2 {
        x.elem(
            "KeyCount",
            &(page.keys.len() + page.prefixes.len()).to_string(),
        );
        if let Some(t) = &token {
            x.elem("ContinuationToken", t);
        }
        if let Some(n) = &page.next {
            x.elem("NextContinuationToken", n);
        }
        if !after.is_empty() {
            x.elem("StartAfter", &show(&after));
        }
    } else {
        x.elem("Marker", &show(&after));
        // The last key or prefix of the page: where the next one starts.
        let last = page
            .keys
            .last()
            .map(|o| &o.uri)
            .into_iter()
            .chain(page.prefixes.last())
            .max();
        if let (Some(_), Some(last)) = (&page.next, last) {
            x.elem("NextMarker", &show(last));
        }
    }
    for o in &page.keys {
        x.open("Contents");
        x.elem("Key", &show(&o.uri));
        if let Some(t) = o.last_modified {
            x.elem("LastModified", &time::iso8601(t));
        }
        // None rather than `""`: clients send a listed ETag back in
        // If-Match (the aws cli's and s3fs's ranged reads), which `""`
        // would fail; without one they ask HeadObject.
        if let Some(etag) = o
            .etag
            .as_deref()
            .filter(|e| !e.trim_matches('"').is_empty())
        {
            x.elem("ETag", &super::read::quoted(Some(etag)));
        }
        x.elem("Size", &o.size.to_string());
        x.elem("StorageClass", "STANDARD");
        x.close("Contents");
    }
    for p in &page.prefixes {
        x.open("CommonPrefixes");
        x.elem("Prefix", &show(p));
        x.close("CommonPrefixes");
    }
    x.close("ListBucketResult");
    Ok(xml(StatusCode::OK, x.finish()))
}

/// The next page, keys relative to the bucket. V1's `next` is the last
/// key or prefix (its NextMarker); V2's the backend's token.
async fn page(
    req: &Req<'_>,
    prefix: &str,
    delimiter: Option<String>,
    max_keys: usize,
    mut token: Option<String>,
    after: &str,
) -> Result<Page, S3Error> {
    let base = req.prefix().to_string();
    let uri = object_uri(req.prefix(), prefix).map_err(|e| e.on(req.resource.clone()))?;
    let storage = req.backend(&uri)?;
    let strip = |u: &str| u.strip_prefix(base.as_str()).map(str::to_owned);
    loop {
        let opts = ListOptions {
            delimiter: delimiter.clone(),
            page_size: max_keys,
            page_token: token.clone(),
        };
        let listed = storage
            .list(&uri, &opts)
            .await
            .map_err(|e| S3Error::storage(&e, &req.resource))?;
        let keys: Vec<_> = listed
            .objects
            .into_iter()
            .filter_map(|mut o| {
                o.uri = strip(&o.uri)?;
                (o.uri.as_str() > after).then_some(o)
            })
            .collect();
        let prefixes: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| strip(p))
            .filter(|p| p.as_str() > after)
            .collect();
        // Everything on this page was at or before `after`: the next one.
        if keys.is_empty()
            && prefixes.is_empty()
            && !after.is_empty()
            && listed.next_token.is_some()
        {
            token = listed.next_token;
            continue;
        }
        return Ok(Page {
            keys,
            prefixes,
            next: listed.next_token,
        });
    }
}
