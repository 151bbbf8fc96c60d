//! Listing an `az://` prefix: one List Blobs request per page.
//!
//! The SDK's `list_blobs` takes no delimiter, so the request is built here
//! and sent through the account's pipeline (same transport, retries and
//! signing as every other request), and the XML is parsed here. Blobs and
//! prefixes come in one key order; `maxresults` counts both.

use azure_core::http::{Context, Method, Request};
use serde::Deserialize;

use super::{AzureStorage, error};
use crate::{ListOptions, ListPage, ObjectMeta, ObjectUri, Result, Scheme, StorageError};

/// The service version the requests speak (the SDK's default).
const VERSION: &str = "2026-04-06";

#[derive(Debug, Deserialize)]
struct EnumerationResults {
    #[serde(rename = "Blobs", default)]
    blobs: Blobs,
    #[serde(rename = "NextMarker", default)]
    next_marker: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Blobs {
    #[serde(rename = "$value", default)]
    entries: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
enum Entry {
    Blob(BlobXml),
    BlobPrefix(PrefixXml),
}

#[derive(Debug, Deserialize)]
struct PrefixXml {
    #[serde(rename = "Name")]
    name: String,
}

#[derive(Debug, Deserialize)]
struct BlobXml {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Properties")]
    properties: PropertiesXml,
}

#[derive(Debug, Deserialize)]
struct PropertiesXml {
    #[serde(rename = "Content-Length")]
    length: u64,
    #[serde(rename = "Etag", default)]
    etag: Option<String>,
    #[serde(rename = "Last-Modified", default)]
    last_modified: Option<String>,
}

pub(super) async fn list(
    az: &AzureStorage,
    prefix: &ObjectUri,
    opts: &ListOptions,
) -> Result<ListPage> {
    let shown = prefix.to_string();
    if prefix.scheme() != Scheme::Az {
        return Err(StorageError::invalid(shown, "not an az:// uri"));
    }
    let mut url = az.url(prefix.bucket(), None)?;
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("restype", "container")
            .append_pair("comp", "list")
            .append_pair("maxresults", &opts.page_size.clamp(1, 5000).to_string());
        if !prefix.key().is_empty() {
            query.append_pair("prefix", prefix.key());
        }
        if let Some(d) = &opts.delimiter {
            query.append_pair("delimiter", d);
        }
        if let Some(marker) = &opts.page_token {
            query.append_pair("marker", marker);
        }
    }
    let mut request = Request::new(url, Method::Get);
    request.insert_header("x-ms-version", VERSION);
    let response = az
        .pipeline
        .send(&Context::new(), &mut request, None)
        .await
        .map_err(|e| error(&shown, "list", e))?;
    let body = response.into_body();
    let page: EnumerationResults = azure_core::xml::from_xml(body)
        .map_err(|_| StorageError::protocol(&shown, "azure list: malformed answer"))?;
    let mut out = ListPage::default();
    for entry in page.blobs.entries {
        match entry {
            Entry::Blob(b) => out.objects.push(ObjectMeta {
                uri: prefix.with_key(b.name.clone()).to_string(),
                size: b.properties.length,
                etag: b.properties.etag,
                last_modified: b
                    .properties
                    .last_modified
                    .and_then(|t| httpdate::parse_http_date(&t).ok()),
                version: None,
            }),
            Entry::BlobPrefix(p) => out
                .common_prefixes
                .push(prefix.with_key(p.name).to_string()),
        }
    }
    out.next_token = page.next_marker.filter(|m| !m.is_empty());
    Ok(out)
}
