//! One storage conformance suite, run against every backend on a real store:
//! `file://` and `direct://` in a temporary directory, `s3://` against `s3s-fs`, `gs://`
//! against `fake-gcs-server` and `az://` against Azurite (signed with the
//! account key, and with a SAS token).
//!
//! Each case is a function of a [`Storage`] and a base prefix URI (ending in
//! `/`) under which it owns every key. The `conformance!` macro instantiates
//! each case once per backend; every S3 case gets its own server and bucket.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use rand::{RngCore, SeedableRng};
use sluice_storage::s3::S3Backends;
use sluice_storage::{ErrorKind, GetOptions, ListOptions, ObjectUri, ReadBuf, Storage, Version};
use sluice_tests::s3server::S3Server;

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------- fixtures

#[path = "conformance/fixtures.rs"]
mod fixtures;
use fixtures::{azure_fixture, direct_fixture, file_fixture, gcs_fixture, s3_fixture};

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod file {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fx = super::file_fixture(None).await;
                super::$case(&*fx.storage, &fx.base).await;
            })*
        }
        // Paths resolved without openat2, as where a seccomp filter refuses it.
        mod file_walk {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fx = super::file_fixture(Some(sluice_storage::file::Resolver::Walk)).await;
                super::$case(&*fx.storage, &fx.base).await;
            })*
        }
        // O_DIRECT reads through io_uring, on the same kind of roots.
        mod direct {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fx = super::direct_fixture().await;
                super::$case(&*fx.storage, &fx.base).await;
            })*
        }
        mod s3 {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fx = super::s3_fixture(sluice_storage::s3::ChecksumMode::WhenSupported).await;
                super::$case(&*fx.storage, &fx.base).await;
            })*
        }
        mod s3_checksum_when_required {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fx = super::s3_fixture(sluice_storage::s3::ChecksumMode::WhenRequired).await;
                super::$case(&*fx.storage, &fx.base).await;
            })*
        }
        mod gcs {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fx = super::gcs_fixture().await;
                super::$case(&*fx.storage, &fx.base).await;
            })*
        }
        mod azure_shared_key {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fx = super::azure_fixture(false).await;
                super::$case(&*fx.storage, &fx.base).await;
            })*
        }
        mod azure_sas {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fx = super::azure_fixture(true).await;
                super::$case(&*fx.storage, &fx.base).await;
            })*
        }
    };
}

conformance!(
    put_head_get_are_byte_exact,
    ranged_gets_follow_the_contract,
    if_match_detects_changes,
    a_part_past_the_end_of_a_shrunk_object_is_changed,
    read_into_is_byte_exact_and_gives_the_buffer_back,
    missing_objects_are_not_found,
    recursive_listing_pages_in_key_order,
    delimited_listing_folds_common_prefixes,
    multipart_upload_is_exact_and_visible_only_after_complete,
    aborted_multipart_upload_leaves_nothing,
    delete_removes_only_its_object,
);

// ---------------------------------------------------------------- helpers

fn at(base: &ObjectUri, rel: &str) -> ObjectUri {
    base.with_key(format!("{}{rel}", base.key()))
}

/// Deterministic pseudo-random bytes.
fn data(len: usize, seed: u64) -> Bytes {
    let mut v = vec![0; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    Bytes::from(v)
}

async fn get_bytes(
    s: &dyn Storage,
    uri: &ObjectUri,
    range: Option<Range<u64>>,
) -> (sluice_storage::GetResult, Vec<u8>) {
    let mut got = s
        .get(
            uri,
            GetOptions {
                range,
                if_match: None,
            },
        )
        .await
        .unwrap();
    let body = std::mem::replace(&mut got.body, Box::pin(futures::stream::empty()));
    let bytes: Vec<Bytes> = body.try_collect().await.unwrap();
    (got, bytes.concat())
}

/// Compares without printing megabytes on failure.
#[track_caller]
fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i}");
    }
}

async fn put_all(s: &dyn Storage, base: &ObjectUri, keys: &[&str]) {
    for (i, key) in keys.iter().enumerate() {
        s.put(&at(base, key), data(i + 1, i as u64)).await.unwrap();
    }
}

// ---------------------------------------------------------------- cases

async fn put_head_get_are_byte_exact(s: &dyn Storage, base: &ObjectUri) {
    let cases = [
        ("empty", Bytes::new()),
        ("small.txt", Bytes::from_static(b"hello, sluice")),
        ("big.bin", data(20 * MIB + 12_345, 7)),
    ];
    for (key, want) in cases {
        let uri = at(base, key);
        let put = s.put(&uri, want.clone()).await.unwrap();
        assert_eq!(
            (put.uri.as_str(), put.size),
            (uri.to_string().as_str(), want.len() as u64),
            "{key}: put"
        );
        let head = s.head(&uri).await.unwrap();
        assert_eq!(
            (head.uri.as_str(), head.size),
            (put.uri.as_str(), put.size),
            "{key}: head"
        );
        assert!(head.etag.is_some(), "{key}: head has an etag");
        assert_eq!(put.etag, head.etag, "{key}: put and head agree on the etag");
        let (got, body) = get_bytes(s, &uri, None).await;
        assert_eq!(got.meta, head, "{key}: get meta");
        assert_eq!(got.range, 0..want.len() as u64, "{key}: get range");
        assert_bytes(&body, &want, key);
    }
}

async fn ranged_gets_follow_the_contract(s: &dyn Storage, base: &ObjectUri) {
    let want = data(1000, 3);
    let uri = at(base, "ranged");
    s.put(&uri, want.clone()).await.unwrap();
    for (range, expect) in [
        (100..300, 100..300),
        (900..5000, 900..1000),
        (0..1000, 0..1000),
        (10..10, 10..10),
    ] {
        let (got, body) = get_bytes(s, &uri, Some(range.clone())).await;
        assert_eq!(
            (got.range.clone(), got.meta.size),
            (expect.clone(), 1000),
            "range {range:?}"
        );
        assert_bytes(
            &body,
            &want[expect.start as usize..expect.end as usize],
            &format!("range {range:?}"),
        );
    }
    for past in [1000..1010, 2000..3000] {
        let e = s
            .get(
                &uri,
                GetOptions {
                    range: Some(past.clone()),
                    if_match: None,
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind(), e.uri()),
            (ErrorKind::InvalidArgument, uri.to_string().as_str()),
            "{past:?}: {e}"
        );
    }
    let empty = at(base, "empty");
    s.put(&empty, Bytes::new()).await.unwrap();
    for range in [Some(0..10), Some(0..0), None] {
        let (got, body) = get_bytes(s, &empty, range.clone()).await;
        assert_eq!(
            (got.range, got.meta.size, body.len()),
            (0..0, 0, 0),
            "empty object, range {range:?}"
        );
    }
    let e = s
        .get(
            &empty,
            GetOptions {
                range: Some(1..5),
                if_match: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
}

async fn if_match_detects_changes(s: &dyn Storage, base: &ObjectUri) {
    let uri = at(base, "versioned");
    s.put(&uri, Bytes::from_static(b"first version"))
        .await
        .unwrap();
    let first = s.head(&uri).await.unwrap();
    let etag = first.etag.clone().unwrap();
    // What a server without etags is held to: size and last-modified time.
    let dated = Version {
        etag: None,
        ..Version::of(&first)
    };
    assert!(dated.last_modified.is_some(), "head reports last-modified");
    let opts = |range, version: &Version| GetOptions {
        range,
        if_match: Some(version.clone()),
    };
    for version in [&Version::etag(etag.clone()), &dated] {
        let got = s.get(&uri, opts(Some(6..13), version)).await.unwrap();
        let body: Vec<Bytes> = got.body.try_collect().await.unwrap();
        assert_eq!(body.concat(), b"version", "{version:?}");
    }
    let bogus = opts(None, &Version::etag("\"0123456789abcdef\""));
    assert_eq!(
        s.get(&uri, bogus).await.unwrap_err().kind(),
        ErrorKind::Changed
    );

    s.put(&uri, Bytes::from_static(b"second version, longer"))
        .await
        .unwrap();
    let fresh = s.head(&uri).await.unwrap();
    assert_ne!(
        fresh.etag.as_deref(),
        Some(etag.as_str()),
        "rewriting changes the etag"
    );
    for version in [&Version::etag(etag.clone()), &dated] {
        for range in [None, Some(0..5)] {
            let e = s.get(&uri, opts(range.clone(), version)).await.unwrap_err();
            assert_eq!(
                (e.kind(), e.uri()),
                (ErrorKind::Changed, uri.to_string().as_str()),
                "{range:?}, {version:?}: {e}"
            );
        }
    }
    let (_, body) = get_bytes(s, &uri, None).await;
    assert_eq!(body, b"second version, longer");
}

/// A later part of a read, for bytes the version it started on had: the
/// object shrank since (or its first response lied about the size), which
/// is a change of the object, not a bad range of the caller's.
async fn a_part_past_the_end_of_a_shrunk_object_is_changed(s: &dyn Storage, base: &ObjectUri) {
    let uri = at(base, "shrinks");
    s.put(&uri, data(5000, 1)).await.unwrap();
    let long = Version::of(&s.head(&uri).await.unwrap());
    s.put(&uri, data(1000, 2)).await.unwrap();
    let dated = Version {
        etag: None,
        ..long.clone()
    };
    for version in [&long, &dated] {
        let e = sluice_storage::read_exact_at(s, &uri, 2000, version, 100)
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind(), e.uri()),
            (ErrorKind::Changed, uri.to_string().as_str()),
            "{version:?}: {e}"
        );
    }
}

/// `read_into` — what every later part of a fetch goes through — is byte
/// exact at block edges and into buffers at any address, hands the buffer
/// back (whole, for a retry) on success and failure, and holds the read to
/// the version the fetch began with.
async fn read_into_is_byte_exact_and_gives_the_buffer_back(s: &dyn Storage, base: &ObjectUri) {
    let size = 3 * MIB + 4097;
    let want = data(size, 9);
    let uri = at(base, "parts");
    s.put(&uri, want.clone()).await.unwrap();
    let version = Version::of(&s.head(&uri).await.unwrap());
    let align = s.alignment().max(1) as usize;
    for (start, len) in [
        (0, size),
        (0, 1),
        (1, 4095),
        (4095, 2),
        (4096, 4096),
        (4097, MIB + 1),
        (MIB - 1, MIB + 2),
        (size - 1, 1),
    ] {
        for skew in [0, 1] {
            let buf = ReadBuf::aligned(len + skew, 4096).split_at(skew).1;
            let addr = buf.addr();
            let (res, buf) = s.read_into(&uri, start as u64, &version, buf).await;
            res.unwrap_or_else(|e| panic!("{start}+{len} (skew {skew}): {e}"));
            assert_eq!((buf.addr(), buf.len()), (addr, len), "the same buffer back");
            assert_bytes(
                buf.as_slice(),
                &want[start..start + len],
                &format!("{start}+{len} (skew {skew}, alignment {align})"),
            );
        }
    }
    let buf = ReadBuf::aligned(4096, 4096);
    let addr = buf.addr();
    let (res, buf) = s
        .read_into(&uri, 0, &Version::etag("\"another version\""), buf)
        .await;
    let e = res.unwrap_err();
    assert_eq!(
        (e.kind(), buf.addr(), buf.len()),
        (ErrorKind::Changed, addr, 4096),
        "{e}"
    );
}

async fn missing_objects_are_not_found(s: &dyn Storage, base: &ObjectUri) {
    s.put(&at(base, "present"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    let uri = at(base, "absent");
    let shown = uri.to_string();
    let head = s.head(&uri).await.unwrap_err();
    assert_eq!(
        (head.kind(), head.uri()),
        (ErrorKind::NotFound, shown.as_str()),
        "head: {head}"
    );
    for range in [None, Some(0..10)] {
        let get = s
            .get(
                &uri,
                GetOptions {
                    range,
                    if_match: None,
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            (get.kind(), get.uri()),
            (ErrorKind::NotFound, shown.as_str()),
            "get: {get}"
        );
    }
    let delete = s.delete(&uri).await.unwrap_err();
    assert_eq!(
        (delete.kind(), delete.uri()),
        (ErrorKind::NotFound, shown.as_str()),
        "delete: {delete}"
    );
}

/// Keys in byte order: `-` (0x2d) sorts before `/` (0x2f).
const TREE: [&str; 7] = ["a", "b-x", "b/1", "b/2", "b/c/3", "c", "e"];

async fn recursive_listing_pages_in_key_order(s: &dyn Storage, base: &ObjectUri) {
    put_all(s, base, &TREE).await;
    // A sibling of the base prefix that must not be listed under it.
    let parent = base.key().trim_end_matches('/');
    s.put(
        &base.with_key(format!("{parent}-outside")),
        Bytes::from_static(b"x"),
    )
    .await
    .unwrap();

    let mut opts = ListOptions {
        delimiter: None,
        page_size: 2,
        page_token: None,
    };
    let mut pages = Vec::new();
    loop {
        let page = s.list(base, &opts).await.unwrap();
        assert!(
            page.common_prefixes.is_empty(),
            "no prefixes without a delimiter"
        );
        assert!(page.objects.len() <= 2, "page of {}", page.objects.len());
        pages.push(
            page.objects
                .iter()
                .map(|o| (o.uri.clone(), o.size))
                .collect::<Vec<_>>(),
        );
        match page.next_token {
            Some(t) => opts.page_token = Some(t),
            None => break,
        }
        assert!(pages.len() < 10, "listing does not end");
    }
    let expected: Vec<_> = TREE
        .iter()
        .enumerate()
        .map(|(i, k)| (at(base, k).to_string(), i as u64 + 1))
        .collect();
    let expected_pages: Vec<_> = expected.chunks(2).map(<[_]>::to_vec).collect();
    assert_eq!(pages, expected_pages);

    let nested = s
        .list(
            &at(base, "b/"),
            &ListOptions {
                page_size: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let uris: Vec<_> = nested.objects.iter().map(|o| o.uri.clone()).collect();
    assert_eq!(
        uris,
        ["b/1", "b/2", "b/c/3"].map(|k| at(base, k).to_string())
    );
    assert_eq!(nested.next_token, None);
}

async fn delimited_listing_folds_common_prefixes(s: &dyn Storage, base: &ObjectUri) {
    put_all(s, base, &TREE).await;
    let slash = |page_size| ListOptions {
        delimiter: Some("/".into()),
        page_size,
        page_token: None,
    };
    let uris = |keys: &[&str]| {
        keys.iter()
            .map(|k| at(base, k).to_string())
            .collect::<Vec<_>>()
    };

    let top = s.list(base, &slash(100)).await.unwrap();
    let objects: Vec<_> = top.objects.iter().map(|o| o.uri.clone()).collect();
    assert_eq!(objects, uris(&["a", "b-x", "c", "e"]));
    assert_eq!(top.common_prefixes, uris(&["b/"]));
    assert_eq!(top.next_token, None);

    let inner = s.list(&at(base, "b/"), &slash(100)).await.unwrap();
    let objects: Vec<_> = inner.objects.iter().map(|o| o.uri.clone()).collect();
    assert_eq!(
        (objects, inner.common_prefixes),
        (uris(&["b/1", "b/2"]), uris(&["b/c/"]))
    );

    // Prefixes count towards the page size and keep their place in key order.
    let mut opts = slash(2);
    let mut pages = Vec::new();
    loop {
        let page = s.list(base, &opts).await.unwrap();
        let objects: Vec<_> = page.objects.into_iter().map(|o| o.uri).collect();
        pages.push((objects, page.common_prefixes));
        match page.next_token {
            Some(t) => opts.page_token = Some(t),
            None => break,
        }
        assert!(pages.len() < 10, "listing does not end");
    }
    let expected = vec![
        (uris(&["a", "b-x"]), vec![]),
        (uris(&["c"]), uris(&["b/"])),
        (uris(&["e"]), vec![]),
    ];
    assert_eq!(pages, expected);
}

async fn multipart_upload_is_exact_and_visible_only_after_complete(
    s: &dyn Storage,
    base: &ObjectUri,
) {
    let min = s.min_part_size().max(5 * MIB as u64) as usize;
    let parts = [
        data(min, 11),
        data(min + 1, 12),
        data(min, 13),
        data(1234, 14),
    ];
    let want: Vec<u8> = parts.concat();
    let uri = at(base, "multi/part.bin");
    let mut up = s.start_multipart(&uri).await.unwrap();
    for part in &parts {
        up.put_part(part.clone()).await.unwrap();
    }
    let err = s.head(&uri).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "visible before complete: {err}"
    );
    let done = up.complete().await.unwrap();
    assert_eq!(
        (done.uri.as_str(), done.size),
        (uri.to_string().as_str(), want.len() as u64)
    );
    let head = s.head(&uri).await.unwrap();
    assert_eq!((head.size, &head.etag), (want.len() as u64, &done.etag));
    let (got, body) = get_bytes(s, &uri, None).await;
    assert_eq!(got.meta.size, want.len() as u64);
    assert_bytes(&body, &want, "multipart object");
    // A range across a part boundary.
    let cross = (min as u64 - 10)..(min as u64 + 10);
    let (_, body) = get_bytes(s, &uri, Some(cross.clone())).await;
    assert_bytes(
        &body,
        &want[cross.start as usize..cross.end as usize],
        "range across parts",
    );
}

async fn aborted_multipart_upload_leaves_nothing(s: &dyn Storage, base: &ObjectUri) {
    let uri = at(base, "aborted.bin");
    let mut up = s.start_multipart(&uri).await.unwrap();
    up.put_part(data(5 * MIB, 21)).await.unwrap();
    up.put_part(data(100, 22)).await.unwrap();
    up.abort().await.unwrap();
    assert_eq!(s.head(&uri).await.unwrap_err().kind(), ErrorKind::NotFound);
    let page = s
        .list(
            base,
            &ListOptions {
                page_size: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.objects, vec![], "nothing listed after abort");
}

async fn delete_removes_only_its_object(s: &dyn Storage, base: &ObjectUri) {
    let (gone, kept) = (at(base, "d/gone"), at(base, "d/kept"));
    s.put(&gone, Bytes::from_static(b"1")).await.unwrap();
    s.put(&kept, Bytes::from_static(b"22")).await.unwrap();
    s.delete(&gone).await.unwrap();
    assert_eq!(s.head(&gone).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        s.delete(&gone).await.unwrap_err().kind(),
        ErrorKind::NotFound,
        "second delete"
    );
    let page = s
        .list(
            base,
            &ListOptions {
                page_size: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let listed: Vec<_> = page
        .objects
        .iter()
        .map(|o| (o.uri.clone(), o.size))
        .collect();
    assert_eq!(listed, vec![(kept.to_string(), 2)]);
}

// ---------------------------------------------------------------- s3 only

/// `s3://bucket/key` (the configured endpoint) and `s3://host:port/bucket/key`
/// reach the same objects through different clients.
#[tokio::test]
async fn s3_default_and_explicit_endpoints_see_the_same_objects() {
    let server = S3Server::start().await;
    let explicit = server.bucket("endpoints").await.with_key("k");
    let backends = S3Backends::new(&server.config()).await.unwrap();
    let plain = ObjectUri::parse("s3://endpoints/k").unwrap();
    let (a, b) = (
        backends.for_uri(&explicit).unwrap(),
        backends.for_uri(&plain).unwrap(),
    );
    assert!(!Arc::ptr_eq(&a, &b));
    a.put(&explicit, Bytes::from_static(b"via explicit"))
        .await
        .unwrap();
    let (got, body) = get_bytes(&*b, &plain, None).await;
    assert_eq!(
        (got.meta.uri.as_str(), body.as_slice()),
        ("s3://endpoints/k", b"via explicit".as_slice())
    );
    let listed = b
        .list(
            &plain.with_key(""),
            &ListOptions {
                page_size: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        listed
            .objects
            .iter()
            .map(|o| o.uri.as_str())
            .collect::<Vec<_>>(),
        ["s3://endpoints/k"]
    );
}

/// Wrong keys are refused, and the error names neither the secret nor a signature.
#[tokio::test]
async fn s3_wrong_credentials_are_permission_denied_without_leaking_them() {
    let server = S3Server::start().await;
    let uri = server.bucket("creds").await.with_key("k");
    let wrong = || Some(sluice_storage::s3::Secret::new("not-the-secret"));
    let mut config = server.config();
    config.secret_access_key = wrong();
    config.endpoints[0].secret_access_key = wrong();
    let backends = S3Backends::new(&config).await.unwrap();
    // The explicit endpoint and the default one each sign with their own keys.
    for uri in [uri.clone(), ObjectUri::parse("s3://creds/k").unwrap()] {
        let e = backends
            .for_uri(&uri)
            .unwrap()
            .head(&uri)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        let shown = format!("{e} {e:?}");
        assert!(
            !shown.contains("not-the-secret") && !shown.contains("Signature="),
            "{shown}"
        );
    }
}

/// A missing bucket is NotFound for reads and listings.
#[tokio::test]
async fn s3_missing_bucket_is_not_found() {
    let server = S3Server::start().await;
    let uri = ObjectUri::parse(&format!("s3://{}/no-such-bucket/k", server.endpoint())).unwrap();
    let s = S3Backends::new(&server.config())
        .await
        .unwrap()
        .for_uri(&uri)
        .unwrap();
    assert_eq!(s.head(&uri).await.unwrap_err().kind(), ErrorKind::NotFound);
    let e = s.get(&uri, GetOptions::default()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let e = s
        .list(
            &uri.with_key(""),
            &ListOptions {
                page_size: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

/// Uploads that s3s-fs holds: it keeps each pending upload in `.upload*`
/// files at the top of its data directory.
fn pending_uploads(server: &S3Server) -> Vec<String> {
    std::fs::read_dir(server.data_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".upload"))
        .collect()
}

/// An upload dropped without `complete` or `abort` is aborted in the
/// background; `abort` cleans up at once.
#[tokio::test]
async fn s3_abandoned_uploads_are_aborted() {
    let server = S3Server::start().await;
    let uri = server.bucket("abandoned").await.with_key("k");
    let s = S3Backends::new(&server.config())
        .await
        .unwrap()
        .for_uri(&uri)
        .unwrap();
    for explicit_abort in [true, false] {
        let mut up = s.start_multipart(&uri).await.unwrap();
        up.put_part(data(100, 1)).await.unwrap();
        assert!(
            !pending_uploads(&server).is_empty(),
            "the upload is pending"
        );
        if explicit_abort {
            up.abort().await.unwrap();
            assert_eq!(pending_uploads(&server), Vec::<String>::new());
        } else {
            drop(up);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !pending_uploads(&server).is_empty() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "dropped upload not aborted: {:?}",
                    pending_uploads(&server)
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
    assert_eq!(s.head(&uri).await.unwrap_err().kind(), ErrorKind::NotFound);
}

/// Parts go up several at a time; one that fails — here the upload vanished
/// on the server (a lifecycle rule, another client's abort) — fails the
/// upload at the next call or at `complete`, naming the object, and nothing
/// becomes visible.
#[tokio::test]
async fn s3_a_failed_part_fails_the_upload() {
    let server = S3Server::start().await;
    let uri = server.bucket("failing").await.with_key("k");
    let s = S3Backends::new(&server.config())
        .await
        .unwrap()
        .for_uri(&uri)
        .unwrap();
    let mut up = s.start_multipart(&uri).await.unwrap();
    let pending = pending_uploads(&server);
    assert_eq!(pending.len(), 1, "{pending:?}");
    let path = server.data_dir().join(&pending[0]);
    if path.is_dir() {
        std::fs::remove_dir_all(&path).unwrap();
    } else {
        std::fs::remove_file(&path).unwrap();
    }
    let mut failed = None;
    for i in 0..6 {
        if let Err(e) = up.put_part(data(5 * MIB, i)).await {
            failed = Some(e);
            break;
        }
    }
    let err = match failed {
        Some(e) => e,
        None => up.complete().await.unwrap_err(),
    };
    assert!(err.to_string().contains(&uri.to_string()), "{err}");
    assert_eq!(s.head(&uri).await.unwrap_err().kind(), ErrorKind::NotFound);
}
