//! Listings: single pages, and a stream that walks every page.
//!
//! A page holds objects and (with a delimiter) common prefixes in two lists,
//! each in key order. [`ListPage::into_entries`] merges them into one sorted
//! sequence so a listing reads like a directory: `a.bin`, `b/`, `c.bin`.
//! Pages follow each other in key order, so the walk stays sorted.

use futures::{Stream, TryStreamExt, stream};
use sluice_proto::v1::{ListRequest, ListResponse, ObjectMeta};

use crate::client::Grpc;
use crate::error::{Error, Result};

/// Page size of [`crate::Client::list`]: the daemon's default, large enough
/// that a page costs far more in backend time than in round trips.
const WALK_PAGE_SIZE: u32 = 1000;

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// An object.
    Object(ObjectMeta),
    /// A "directory": a prefix URI one level below the listed prefix,
    /// ending with `/` (non-recursive listings only).
    Prefix(String),
}

impl Entry {
    /// The entry's URI.
    pub fn uri(&self) -> &str {
        match self {
            Entry::Object(meta) => &meta.uri,
            Entry::Prefix(uri) => uri,
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListPage {
    /// Objects, in key order.
    pub objects: Vec<ObjectMeta>,
    /// Common prefixes, in key order, each ending with `/`.
    pub prefixes: Vec<String>,
    /// Token of the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

impl From<ListResponse> for ListPage {
    fn from(response: ListResponse) -> Self {
        ListPage {
            objects: response.objects,
            prefixes: response
                .common_prefixes
                .into_iter()
                .map(|mut p| {
                    if !p.ends_with('/') {
                        p.push('/');
                    }
                    p
                })
                .collect(),
            next_page_token: Some(response.next_page_token).filter(|t| !t.is_empty()),
        }
    }
}

impl ListPage {
    /// Objects and prefixes merged into one sequence in URI order.
    pub fn into_entries(self) -> Vec<Entry> {
        let mut entries = Vec::with_capacity(self.objects.len() + self.prefixes.len());
        let mut objects = self.objects.into_iter().peekable();
        let mut prefixes = self.prefixes.into_iter().peekable();
        loop {
            let take_object = match (objects.peek(), prefixes.peek()) {
                (Some(object), Some(prefix)) => object.uri <= *prefix,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return entries,
            };
            entries.push(if take_object {
                Entry::Object(objects.next().unwrap())
            } else {
                Entry::Prefix(prefixes.next().unwrap())
            });
        }
    }
}

/// Fetches one page.
pub(crate) async fn list_page(
    mut client: Grpc,
    prefix: &str,
    delimiter: &str,
    page_size: u32,
    page_token: Option<&str>,
) -> Result<ListPage> {
    let request = ListRequest {
        prefix: prefix.to_owned(),
        delimiter: delimiter.to_owned(),
        page_size,
        page_token: page_token.unwrap_or_default().to_owned(),
    };
    let page = ListPage::from(client.list(request).await?.into_inner());
    if page
        .next_page_token
        .as_deref()
        .is_some_and(|t| Some(t) == page_token)
    {
        return Err(Error::protocol(
            prefix,
            "listing returned its own page token again",
        ));
    }
    Ok(page)
}

/// Every entry under `prefix`, page after page.
pub(crate) fn walk(
    client: Grpc,
    prefix: String,
    recursive: bool,
) -> impl Stream<Item = Result<Entry>> + Send + 'static {
    let delimiter = if recursive { "" } else { "/" };
    // State: the token of the next page, `None` once the last page is out.
    let pages = stream::try_unfold(Some(String::new()), move |token| {
        let client = client.clone();
        let prefix = prefix.clone();
        async move {
            let Some(token) = token else {
                return Ok::<_, Error>(None);
            };
            let token = Some(token).filter(|t| !t.is_empty());
            let page =
                list_page(client, &prefix, delimiter, WALK_PAGE_SIZE, token.as_deref()).await?;
            let next = page.next_page_token.clone();
            let entries = page.into_entries().into_iter().map(Ok);
            Ok(Some((stream::iter(entries), next)))
        }
    });
    pages.try_flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(uri: &str) -> ObjectMeta {
        ObjectMeta {
            uri: uri.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn entries_merge_objects_and_prefixes_in_order() {
        let page = ListPage {
            objects: vec![object("f:///d/a.bin"), object("f:///d/c.bin")],
            prefixes: vec!["f:///d/b/".into(), "f:///d/z/".into()],
            next_page_token: None,
        };
        let uris: Vec<String> = page
            .into_entries()
            .iter()
            .map(|e| e.uri().to_owned())
            .collect();
        assert_eq!(
            uris,
            ["f:///d/a.bin", "f:///d/b/", "f:///d/c.bin", "f:///d/z/"]
        );
    }

    #[test]
    fn response_normalises_token_and_prefixes() {
        let page = ListPage::from(ListResponse {
            objects: vec![],
            common_prefixes: vec!["s3://b/x".into(), "s3://b/y/".into()],
            next_page_token: String::new(),
        });
        assert_eq!(page.prefixes, ["s3://b/x/", "s3://b/y/"]);
        assert_eq!(page.next_page_token, None);
        let page = ListPage::from(ListResponse {
            next_page_token: "t1".into(),
            ..Default::default()
        });
        assert_eq!(page.next_page_token.as_deref(), Some("t1"));
    }
}
