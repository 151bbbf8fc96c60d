//! Storage backends of sluice behind one small async trait.
//!
//! Every backend implements [`Storage`]: `head`, ranged `get` as a byte
//! stream, one `list` page, `put`, multipart uploads and `delete`. The layers
//! above (RangeEngine, cache, daemon) only ever see this trait, [`ObjectUri`]
//! and [`StorageError`]; backend-private errors are converted at the boundary.
//!
//! Contract shared by all backends (checked by the conformance suite in
//! `tests/tests/conformance.rs`):
//! - `get` with a range returns exactly the bytes of `range ∩ [0, size)`;
//!   `GetResult::meta.size` is the size of the whole object; a range that
//!   starts past the end of a non-empty object is `InvalidArgument`; any range
//!   starting at 0 of an empty object returns an empty body.
//! - `get` with `if_match` fails with `Changed` when the object is not that
//!   [`Version`] (etag, else size and last-modified time; see [`version`]).
//! - `list` returns keys in lexicographic (byte) order, `page_size` entries at
//!   most, and a token to continue; with a delimiter, keys below the next
//!   delimiter are folded into common prefixes.
//! - a multipart upload is visible only after `complete`; `abort` leaves nothing.

pub mod azure;
pub mod buf;
pub mod checked;
pub mod direct;
pub mod error;
pub mod file;
pub mod gcs;
mod http_client;
pub mod oplog;
pub mod registry;
pub mod s3;
pub mod uri;
pub mod version;

#[cfg(feature = "fault-injection")]
pub mod fault;

use std::fmt::Debug;
use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub use buf::{BufResult, ReadBuf};
pub use error::{BoxError, ErrorKind, Result, StorageError};
pub use registry::Backends;
pub use uri::{MAX_URI_LEN, ObjectUri, Scheme};
pub use version::{Strength, Version, etag_matches};

/// The body of a `get`: chunks in order, each at most a few MiB.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// Metadata of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Full URI of the object.
    pub uri: String,
    /// Size of the whole object in bytes.
    pub size: u64,
    /// Entity tag; for files derived from size, mtime and inode.
    pub etag: Option<String>,
    /// Last modification time, when the backend reports it.
    pub last_modified: Option<SystemTime>,
    /// Version id on versioned buckets.
    pub version: Option<String>,
}

/// Options of [`Storage::get`].
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    /// Half-open byte range; `None` reads the whole object. The end is
    /// clamped to the object size.
    pub range: Option<Range<u64>>,
    /// Fail with [`ErrorKind::Changed`] unless the object is this version.
    pub if_match: Option<Version>,
}

/// Answer of [`Storage::get`].
pub struct GetResult {
    /// Metadata of the whole object (its full size, not the range's).
    pub meta: ObjectMeta,
    /// The bytes `body` carries, within `[0, meta.size)`.
    pub range: Range<u64>,
    /// The bytes, in order.
    pub body: ByteStream,
}

impl Debug for GetResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetResult")
            .field("meta", &self.meta)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// Options of [`Storage::list`].
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Fold keys below the next occurrence of this string into common prefixes.
    pub delimiter: Option<String>,
    /// Entries (objects plus prefixes) per page, at least 1.
    pub page_size: usize,
    /// Continuation token from the previous page.
    pub page_token: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Objects, in key order.
    pub objects: Vec<ObjectMeta>,
    /// Common prefixes as full URIs, in order (only with a delimiter).
    pub common_prefixes: Vec<String>,
    /// Token for the next page; `None` on the last page.
    pub next_token: Option<String>,
}

/// A storage backend.
#[async_trait]
pub trait Storage: Send + Sync + Debug + 'static {
    /// Backend name for metrics and logs: `file`, `s3`.
    fn name(&self) -> &'static str;

    /// Metadata of one object.
    async fn head(&self, uri: &ObjectUri) -> Result<ObjectMeta>;

    /// The bytes of one object, whole or a range.
    async fn get(&self, uri: &ObjectUri, opts: GetOptions) -> Result<GetResult>;

    /// One page of the objects whose URI starts with `prefix`.
    async fn list(&self, prefix: &ObjectUri, opts: &ListOptions) -> Result<ListPage>;

    /// Stores `data` as the whole object in one request.
    async fn put(&self, uri: &ObjectUri, data: Bytes) -> Result<ObjectMeta>;

    /// Starts a multipart upload; parts are sent in order.
    async fn start_multipart(&self, uri: &ObjectUri) -> Result<Box<dyn MultipartUpload>>;

    /// Smallest part a multipart upload accepts (except the last one).
    fn min_part_size(&self) -> u64 {
        1
    }

    /// Deletes one object. Deleting a missing object is `NotFound`.
    async fn delete(&self, uri: &ObjectUri) -> Result<()>;

    /// Reads exactly `dst.len()` bytes at `offset` of the object version
    /// `expect` into `dst`: a part of a ranged fetch whose first part gave
    /// the size and version. Another version is [`ErrorKind::Changed`].
    ///
    /// `dst` is owned (see [`buf`]): a backend whose reads outlive the
    /// future (io_uring) keeps it until the kernel is done, so dropping
    /// this future never lets the memory be reused under a read. The
    /// buffer comes back with the outcome, whole, once nothing writes to
    /// it any more. The default is a ranged [`get`](Storage::get) drained
    /// into `dst`; backends that can read straight into memory override it.
    async fn read_into(
        &self,
        uri: &ObjectUri,
        offset: u64,
        expect: &Version,
        mut dst: ReadBuf,
    ) -> BufResult {
        let res = read_into_via_get(self, uri, offset, expect, dst.as_mut_slice()).await;
        (res, dst)
    }

    /// The alignment this backend's reads want, in bytes, for the file
    /// offset, length and memory address of [`read_into`](Storage::read_into)
    /// (`O_DIRECT`: the device's block). Unaligned reads still work; aligned
    /// ones go straight into the buffer. The RangeEngine cuts parts at
    /// multiples of it.
    fn alignment(&self) -> u64 {
        1
    }

    /// Whether the RangeEngine should learn this backend's part size from
    /// first-byte waits and rates (`engine.adaptive_part_size`). A local
    /// device has no first-byte wait to amortise, and reads best in parts
    /// as large as `engine.part_size`, each read as several I/Os in flight:
    /// `direct://` says no.
    fn learns_part_size(&self) -> bool {
        true
    }
}

/// `len` bytes at `offset` of the object version `expect`, through
/// [`Storage::read_into`] into a fresh page-aligned buffer.
pub async fn read_exact_at<S: Storage + ?Sized>(
    storage: &S,
    uri: &ObjectUri,
    offset: u64,
    expect: &Version,
    len: usize,
) -> Result<Vec<u8>> {
    let (res, buf) = storage
        .read_into(uri, offset, expect, ReadBuf::aligned(len, 4096))
        .await;
    res.map(|()| buf.as_slice().to_vec())
}

/// [`Storage::read_into`] through a ranged `get`: checks the version (some
/// servers ignore preconditions) and the returned range, then copies the
/// body into `dst`, which it must fill.
pub async fn read_into_via_get<S: Storage + ?Sized>(
    storage: &S,
    uri: &ObjectUri,
    offset: u64,
    expect: &Version,
    dst: &mut [u8],
) -> Result<()> {
    let range = offset..offset + dst.len() as u64;
    let opts = GetOptions {
        range: Some(range.clone()),
        if_match: Some(expect.clone()),
    };
    let res = match storage.get(uri, opts).await {
        // The version this part belongs to had these bytes: refused as past
        // the end, the object shrank (or its first response lied about the
        // size). A change of the object, not a bad range of the caller's.
        Err(e)
            if e.kind() == ErrorKind::InvalidArgument
                && expect.size.is_some_and(|size| range.end <= size) =>
        {
            return Err(StorageError::new(
                ErrorKind::Changed,
                uri.to_string(),
                "object changed while being read (it ends before this part)",
            )
            .with_source(e));
        }
        other => other?,
    };
    expect.check(&uri.to_string(), &res.meta)?;
    if res.range != range {
        let msg = format!("asked for bytes {range:?}, got {:?}", res.range);
        return Err(StorageError::protocol(uri.to_string(), msg));
    }
    drain(res.body, uri, dst).await
}

/// Copies `body` into `dst`, which it must fill exactly.
pub async fn drain(mut body: ByteStream, uri: &ObjectUri, dst: &mut [u8]) -> Result<()> {
    use futures::StreamExt;
    let mut at = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        let end = at + chunk.len();
        if end > dst.len() {
            let msg = format!("body longer than the {} bytes asked for", dst.len());
            return Err(StorageError::protocol(uri.to_string(), msg));
        }
        dst[at..end].copy_from_slice(&chunk);
        at = end;
    }
    if at != dst.len() {
        let msg = format!("short body: {at} of {} bytes", dst.len());
        return Err(StorageError::protocol(uri.to_string(), msg));
    }
    Ok(())
}

/// An upload in progress. Dropping it without `complete` or `abort` leaves
/// cleanup to the backend (files: the temporary file is removed; S3: the
/// bucket's lifecycle rule), so callers always call one of them.
#[async_trait]
pub trait MultipartUpload: Send + Debug {
    /// Appends the next part.
    async fn put_part(&mut self, data: Bytes) -> Result<()>;

    /// Makes the object visible; returns its metadata.
    async fn complete(self: Box<Self>) -> Result<ObjectMeta>;

    /// Discards every part uploaded so far.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// `requested ∩ [0, size)`, with the contract's rules for empty objects and
/// ranges past the end.
pub fn clamp_range(
    uri: &ObjectUri,
    requested: Option<std::ops::Range<u64>>,
    size: u64,
) -> Result<std::ops::Range<u64>> {
    let Some(r) = requested else {
        return Ok(0..size);
    };
    if r.start > r.end {
        return Err(StorageError::invalid(
            uri.to_string(),
            "range start is after its end",
        ));
    }
    if r.start >= size && !(r.start == 0 && size == 0) {
        return Err(StorageError::invalid(
            uri.to_string(),
            format!(
                "range starts at {} but the object has {size} bytes",
                r.start
            ),
        ));
    }
    Ok(r.start..r.end.min(size))
}
