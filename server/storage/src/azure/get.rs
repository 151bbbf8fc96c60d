//! Ranged GET of an `az://` blob: one request, no HEAD before it.
//!
//! Through the SDK's download with one partition as long as the range
//! (`parallel = 1`), which is exactly one `GET` with `Range: bytes=a-b`.
//! The whole size comes from `Content-Range` (or `Content-Length` when the
//! service answered the whole blob). A read held to a version sends
//! `If-Match` with its ETag (or `If-Unmodified-Since` for one without) and
//! compares the answer's too; a 412 is `Changed`. The SDK itself repeats a
//! 416 for a range starting at 0 without a range (an empty blob); any other
//! 416 is `InvalidArgument`. An empty range `a..a` asks for byte `a` and
//! drops it, as for `s3://`.

use std::num::NonZero;

use azure_core::http::Etag;
use azure_core::http::headers::HeaderName;
use azure_storage_blob::models::{BlobClientDownloadOptions, HttpRange};
use futures::TryStreamExt;

use super::{AzureStorage, error, system_time};
use crate::{GetOptions, GetResult, ObjectMeta, ObjectUri, Result, StorageError, Version};

/// The partition of a read with no end: longer than any blob.
const OPEN_ENDED: u64 = 1 << 50;

pub(super) async fn get(az: &AzureStorage, uri: &ObjectUri, opts: GetOptions) -> Result<GetResult> {
    let shown = uri.to_string();
    let blob = az.blob_client(uri)?;
    let (offset, length) = match &opts.range {
        Some(r) if r.start > r.end => {
            return Err(StorageError::invalid(shown, "range start is after its end"));
        }
        Some(r) => (r.start, r.end.max(r.start + 1) - r.start),
        None => (0, OPEN_ENDED),
    };
    let mut options = BlobClientDownloadOptions {
        range: Some(if opts.range.is_some() {
            HttpRange::new(offset, length)
        } else {
            HttpRange::from_offset(0)
        }),
        parallel: NonZero::new(1),
        partition_size: NonZero::new(usize::try_from(length).unwrap_or(usize::MAX)),
        ..BlobClientDownloadOptions::default()
    };
    match &opts.if_match {
        Some(Version {
            etag: Some(etag), ..
        }) => options.if_match = Some(Etag::from(etag.as_str())),
        Some(Version {
            last_modified: Some(at),
            ..
        }) => options.if_unmodified_since = Some((*at).into()),
        _ => {}
    }
    let res = match blob.download(Some(options)).await {
        Ok(res) => res,
        // Azurite answers a range on an empty blob with a `Content-Range`
        // the SDK cannot parse (Azure itself sends 416, which the SDK
        // handles): ask for the properties; an empty blob is the answer.
        Err(e) if offset == 0 && *e.kind() == azure_core::error::ErrorKind::DataConversion => {
            return empty_blob(az, uri, &opts).await;
        }
        Err(e) => {
            let err = error(&shown, "get", e);
            return Err(match opts.range {
                Some(r) if err.message().starts_with("azure get: http 416") => {
                    StorageError::invalid(
                        shown,
                        format!(
                            "range {}..{} starts at or past the end of the object",
                            r.start, r.end
                        ),
                    )
                }
                _ => err,
            });
        }
    };
    let content_range = res
        .headers
        .get_optional_str(&HeaderName::from_static("content-range"))
        .map(str::to_owned);
    let length_header = res.properties.content_length;
    let (sent, size) =
        match crate::checked::sent_span(content_range.as_deref(), length_header, &shown) {
            Ok(span) => span,
            Err(e) => {
                // Azurite answers a range past the end with `bytes */N` (or an
                // inverted span) instead of 416: that is the contract's bad
                // range when the start is at or past N.
                let total = content_range
                    .as_deref()
                    .and_then(|cr| cr.rsplit_once('/'))
                    .and_then(|(_, t)| t.trim().parse::<u64>().ok());
                if let Some(total) = total {
                    crate::clamp_range(uri, opts.range.clone(), total)?;
                }
                return Err(e);
            }
        };
    let meta = ObjectMeta {
        uri: shown.clone(),
        size,
        etag: res.properties.etag.as_ref().map(|e| e.to_string()),
        last_modified: res.properties.last_modified.map(system_time),
        version: None,
    };
    if let Some(want) = &opts.if_match {
        want.check(&shown, &meta)?;
    }
    let range = crate::checked::answered_range(uri, opts.range, size, &sent)?;
    let body = if range.is_empty() {
        Box::pin(futures::stream::empty()) as crate::ByteStream
    } else {
        // The SDK's errors are replaced by their kind: their text can hold
        // the request URL (and its SAS).
        let body = res
            .body
            .map_err(|e| std::io::Error::other(format!("azure body: {:?}", e.kind())));
        crate::checked::checked_body(Box::pin(body), shown, range.end - range.start, "azure get")
    };
    Ok(GetResult { meta, range, body })
}

/// The answer for a read starting at 0 of what must be an empty blob.
async fn empty_blob(az: &AzureStorage, uri: &ObjectUri, opts: &GetOptions) -> Result<GetResult> {
    use crate::Storage;
    let shown = uri.to_string();
    let meta = az.head(uri).await?;
    if let Some(want) = &opts.if_match {
        want.check(&shown, &meta)?;
    }
    if meta.size != 0 {
        return Err(StorageError::protocol(
            shown,
            "azure get: malformed content-range header",
        ));
    }
    Ok(GetResult {
        meta,
        range: 0..0,
        body: Box::pin(futures::stream::empty()),
    })
}
