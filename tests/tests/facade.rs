//! The S3-compatible facade on a real daemon, driven by `aws-sdk-s3`:
//! reads, ranges, conditions and listings over a `file://` bucket and one
//! on a real S3-compatible server (s3s-fs); the signature checks; bucket
//! limits of keys; writes off and on; the cache behind it.

use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use sluice_tests::daemon::TestDaemon;
use sluice_tests::facade::{KEY_ALL, KEY_LOCAL, client, client_with, facade_config, raw};
use sluice_tests::grpc::{http_get, metric, pattern};
use sluice_tests::s3server::S3Server;

/// The S3 error code of a failed call.
fn code<E: ProvideErrorMetadata + std::fmt::Debug>(
    e: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> String {
    match e.as_service_error().and_then(|s| s.code()) {
        Some(c) => c.to_owned(),
        None => match e.raw_response() {
            // HEAD answers and 304s have no body: the status says it.
            Some(r) => format!("http {}", r.status().as_u16()),
            None => panic!("not an answer of the facade: {e:?}"),
        },
    }
}

async fn get(c: &Client, bucket: &str, key: &str, range: Option<&str>) -> Vec<u8> {
    let mut req = c.get_object().bucket(bucket).key(key);
    if let Some(r) = range {
        req = req.range(r);
    }
    let out = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {bucket}/{key}: {e:?}"));
    out.body
        .collect()
        .await
        .expect("body")
        .into_bytes()
        .to_vec()
}

/// A daemon whose facade has `local` (file://) and `remote` (the s3s-fs
/// bucket `facade`), with writes as asked.
async fn start(s3: &S3Server, writes: bool) -> TestDaemon {
    let remote = s3.bucket("facade").await;
    let cfg = s3.config();
    TestDaemon::start_with(move |c| {
        c.storage.s3 = cfg;
        facade_config(c, writes);
        c.facade.buckets.insert("remote".into(), remote.to_string());
    })
    .await
}

/// Puts `data` under `key` of both buckets, behind the facade's back.
async fn seed(d: &TestDaemon, s3: &S3Server, key: &str, data: &[u8]) {
    let path = d.root().join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, data).unwrap();
    s3.put("facade", key, data.to_vec()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_ranges_and_conditions_on_both_backends() {
    let s3 = S3Server::start().await;
    let d = start(&s3, false).await;
    let c = client(d.facade(), KEY_ALL);
    let data = pattern(3 << 20, 7);
    seed(&d, &s3, "dir/big.bin", &data).await;
    for bucket in ["local", "remote"] {
        assert_eq!(get(&c, bucket, "dir/big.bin", None).await, data, "{bucket}");
        let out = c
            .get_object()
            .bucket(bucket)
            .key("dir/big.bin")
            .range("bytes=100-199")
            .send()
            .await
            .unwrap();
        assert_eq!(
            out.content_range(),
            Some(format!("bytes 100-199/{}", data.len()).as_str())
        );
        assert_eq!(out.content_length(), Some(100));
        let etag = out.e_tag().expect("an ETag").to_owned();
        assert!(etag.starts_with('"'), "{etag}");
        assert_eq!(
            out.body.collect().await.unwrap().into_bytes(),
            &data[100..200]
        );
        let tail = get(&c, bucket, "dir/big.bin", Some("bytes=-10")).await;
        assert_eq!(tail, &data[data.len() - 10..], "{bucket} suffix range");
        let rest = get(
            &c,
            bucket,
            "dir/big.bin",
            Some(&format!("bytes={}-", data.len() - 5)),
        )
        .await;
        assert_eq!(rest, &data[data.len() - 5..], "{bucket} open range");
        let past = c
            .get_object()
            .bucket(bucket)
            .key("dir/big.bin")
            .range(format!("bytes={}-", data.len()))
            .send()
            .await;
        assert_eq!(code(past.unwrap_err()), "InvalidRange", "{bucket}");

        let head = c
            .head_object()
            .bucket(bucket)
            .key("dir/big.bin")
            .send()
            .await
            .unwrap();
        assert_eq!(head.content_length(), Some(data.len() as i64));
        assert_eq!(head.e_tag(), Some(etag.as_str()));
        assert!(head.last_modified().is_some());
        let missing = c.get_object().bucket(bucket).key("dir/nope").send().await;
        assert_eq!(code(missing.unwrap_err()), "NoSuchKey");
        let missing = c.head_object().bucket(bucket).key("dir/nope").send().await;
        // HEAD errors have no body: the SDK names the status.
        assert_eq!(code(missing.unwrap_err()), "NotFound");

        let same = c
            .get_object()
            .bucket(bucket)
            .key("dir/big.bin")
            .if_none_match(&etag)
            .send()
            .await;
        assert_eq!(code(same.unwrap_err()), "http 304", "{bucket}");
        let other = c
            .get_object()
            .bucket(bucket)
            .key("dir/big.bin")
            .if_match("\"other\"")
            .send()
            .await;
        assert_eq!(code(other.unwrap_err()), "PreconditionFailed", "{bucket}");
        let ok = c
            .get_object()
            .bucket(bucket)
            .key("dir/big.bin")
            .if_match(&etag)
            .range("bytes=0-0")
            .send()
            .await;
        assert!(ok.is_ok(), "{bucket}: If-Match of the current ETag");
        let lm = head.last_modified().unwrap();
        let later = aws_sdk_s3::primitives::DateTime::from_secs(lm.secs() + 3600);
        let unchanged = c
            .get_object()
            .bucket(bucket)
            .key("dir/big.bin")
            .if_modified_since(later)
            .send()
            .await;
        assert_eq!(code(unchanged.unwrap_err()), "http 304");
        let earlier = aws_sdk_s3::primitives::DateTime::from_secs(lm.secs() - 3600);
        let changed = c
            .get_object()
            .bucket(bucket)
            .key("dir/big.bin")
            .if_unmodified_since(earlier)
            .send()
            .await;
        assert_eq!(code(changed.unwrap_err()), "PreconditionFailed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_page_and_fold_on_both_backends() {
    let s3 = S3Server::start().await;
    let d = start(&s3, false).await;
    let c = client(d.facade(), KEY_ALL);
    let mut keys: Vec<String> = (0..23).map(|i| format!("list/a/{i:03}")).collect();
    keys.extend(["list/b/x", "list/b/y", "list/top", "other/z"].map(String::from));
    for k in &keys {
        seed(&d, &s3, k, k.as_bytes()).await;
    }
    for bucket in ["local", "remote"] {
        // Pages of 5 with continuation tokens: every key once, in order.
        let (mut seen, mut token, mut pages) = (Vec::new(), None::<String>, 0);
        loop {
            let out = c
                .list_objects_v2()
                .bucket(bucket)
                .prefix("list/")
                .max_keys(5)
                .set_continuation_token(token.clone())
                .send()
                .await
                .unwrap();
            pages += 1;
            assert_eq!(out.key_count(), Some(out.contents().len() as i32));
            assert!(out.contents().len() <= 5);
            seen.extend(out.contents().iter().map(|o| o.key().unwrap().to_owned()));
            if out.is_truncated() != Some(true) {
                break;
            }
            token = out.next_continuation_token().map(str::to_owned);
        }
        let want: Vec<&String> = keys.iter().filter(|k| k.starts_with("list/")).collect();
        assert_eq!(seen.iter().collect::<Vec<_>>(), want, "{bucket}");
        assert_eq!(pages, 6, "{bucket}: 26 keys in pages of 5");
        let folded = c
            .list_objects_v2()
            .bucket(bucket)
            .prefix("list/")
            .delimiter("/")
            .send()
            .await
            .unwrap();
        let prefixes: Vec<_> = folded
            .common_prefixes()
            .iter()
            .map(|p| p.prefix().unwrap())
            .collect();
        assert_eq!(prefixes, ["list/a/", "list/b/"], "{bucket}");
        let objects: Vec<_> = folded.contents().iter().map(|o| o.key().unwrap()).collect();
        assert_eq!(objects, ["list/top"], "{bucket}");
        assert_eq!(folded.contents()[0].size(), Some(8));
        let after = c
            .list_objects_v2()
            .bucket(bucket)
            .prefix("list/a/")
            .start_after("list/a/020")
            .send()
            .await
            .unwrap();
        let after: Vec<_> = after.contents().iter().map(|o| o.key().unwrap()).collect();
        assert_eq!(after, ["list/a/021", "list/a/022"], "{bucket}");
    }
    let buckets = c.list_buckets().send().await.unwrap();
    let names: Vec<_> = buckets
        .buckets()
        .iter()
        .map(|b| b.name().unwrap())
        .collect();
    assert_eq!(names, ["local", "remote"]);
    let limited = client(d.facade(), KEY_LOCAL)
        .list_buckets()
        .send()
        .await
        .unwrap();
    assert_eq!(limited.buckets().len(), 1, "a key sees only its buckets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_keys_and_buckets_are_checked() {
    let s3 = S3Server::start().await;
    let d = start(&s3, false).await;
    seed(&d, &s3, "k", b"secret bytes").await;
    let head = |c: Client, bucket: &'static str| async move {
        c.get_object()
            .bucket(bucket)
            .key("k")
            .send()
            .await
            .map(|_| ())
            .map_err(code)
    };
    assert_eq!(head(client(d.facade(), KEY_ALL), "remote").await, Ok(()));
    let wrong_secret = client(d.facade(), (KEY_ALL.0, "not-the-secret"));
    assert_eq!(
        head(wrong_secret, "local").await.unwrap_err(),
        "SignatureDoesNotMatch"
    );
    let unknown = client(d.facade(), ("NOSUCHKEY", "whatever"));
    assert_eq!(
        head(unknown, "local").await.unwrap_err(),
        "InvalidAccessKeyId"
    );
    // Without retries: the SDK would otherwise correct its clock from the
    // answer's Date header and try again (which works too).
    let skewed = client_with(d.facade(), KEY_ALL, |b| {
        let off = SystemTime::now() - Duration::from_secs(3600);
        b.time_source(aws_smithy_async::time::StaticTimeSource::new(off))
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
    });
    assert_eq!(
        head(skewed, "local").await.unwrap_err(),
        "RequestTimeTooSkewed"
    );
    assert_eq!(
        head(client(d.facade(), KEY_ALL), "nope").await.unwrap_err(),
        "NoSuchBucket"
    );
    let limited = client(d.facade(), KEY_LOCAL);
    assert_eq!(head(limited.clone(), "local").await, Ok(()));
    assert_eq!(
        head(limited, "remote").await.unwrap_err(),
        "AccessDenied",
        "a key limited to local"
    );
    let (status, body) = raw(d.facade(), "GET", "/local/k").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("<Code>AccessDenied</Code>") && body.contains("<RequestId>"),
        "{body}"
    );
    assert!(!body.contains("secret"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_reads_only_where_allowed_and_keys_stay_inside() {
    let d = TestDaemon::start_with(|c| {
        facade_config(c, false);
        c.facade.anonymous = true;
    })
    .await;
    std::fs::create_dir_all(d.root().join("in")).unwrap();
    std::fs::write(d.root().join("in/x"), b"inside").unwrap();
    assert_eq!(
        raw(d.facade(), "GET", "/local/in/x").await,
        (200, "inside".to_owned())
    );
    for escape in [
        "/local/in/%2e%2e/%2e%2e/etc/passwd",
        "/local/in/..%2F..%2Fx",
        "/local/%2E%2E",
    ] {
        let (status, body) = raw(d.facade(), "GET", escape).await;
        assert_eq!(status, 400, "{escape}: {body}");
        assert!(body.contains("InvalidArgument"), "{escape}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_read_is_a_cache_hit() {
    let d = TestDaemon::start_with(|c| facade_config(c, false)).await;
    std::fs::write(d.root().join("hot"), pattern(1 << 20, 3)).unwrap();
    let c = client(d.facade(), KEY_ALL);
    let scrape = || async { http_get(d.http(), "/metrics").await.1 };
    let before = metric(&scrape().await, "sluice_cache_hits_total");
    assert_eq!(get(&c, "local", "hot", None).await, pattern(1 << 20, 3));
    assert_eq!(get(&c, "local", "hot", None).await, pattern(1 << 20, 3));
    let body = scrape().await;
    assert_eq!(
        metric(&body, "sluice_cache_hits_total"),
        before + 1.0,
        "{body}"
    );
    assert_eq!(
        metric(&body, "sluice_facade_reads_total{source=\"cache\"}"),
        1.0,
        "{body}"
    );
    let ok = "sluice_facade_requests_total{operation=\"get_object\",status=\"2xx\",code=\"ok\"}";
    assert_eq!(metric(&body, ok), 2.0, "{body}");
    assert!(metric(&body, "sluice_facade_sent_bytes_total") >= 2.0 * (1 << 20) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused_unless_switched_on() {
    let d = TestDaemon::start_with(|c| facade_config(c, false)).await;
    let c = client(d.facade(), KEY_ALL);
    let put = c
        .put_object()
        .bucket("local")
        .key("w")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    assert_eq!(code(put.unwrap_err()), "AccessDenied");
    let del = c.delete_object().bucket("local").key("w").send().await;
    assert_eq!(code(del.unwrap_err()), "AccessDenied");
    assert!(!d.root().join("w").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_multipart_uploads_and_deletes_when_on() {
    let s3 = S3Server::start().await;
    let d = start(&s3, true).await;
    let c = client(d.facade(), KEY_ALL);
    for bucket in ["local", "remote"] {
        let small = pattern(1000, 1);
        c.put_object()
            .bucket(bucket)
            .key("w/small")
            .body(small.clone().into())
            .send()
            .await
            .unwrap();
        assert_eq!(get(&c, bucket, "w/small", None).await, small, "{bucket}");
        let newer = pattern(1000, 2);
        c.put_object()
            .bucket(bucket)
            .key("w/small")
            .body(newer.clone().into())
            .send()
            .await
            .unwrap();
        assert_eq!(
            get(&c, bucket, "w/small", None).await,
            newer,
            "{bucket}: the cache saw the overwrite"
        );

        // Three parts, sent out of order and at once.
        let up = c
            .create_multipart_upload()
            .bucket(bucket)
            .key("w/big")
            .send()
            .await
            .unwrap();
        let id = up.upload_id().unwrap().to_owned();
        let parts = [
            pattern(5 << 20, 3),
            pattern(5 << 20, 4),
            pattern(1 << 20, 5),
        ];
        let send = |n: i32| {
            let (c, id, data) = (c.clone(), id.clone(), parts[n as usize - 1].clone());
            async move {
                let out = c
                    .upload_part()
                    .bucket(bucket)
                    .key("w/big")
                    .upload_id(id)
                    .part_number(n)
                    .body(data.into())
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("part {n}: {e:?}"));
                CompletedPart::builder()
                    .part_number(n)
                    .e_tag(out.e_tag().unwrap())
                    .build()
            }
        };
        let (p3, p1, p2) = tokio::join!(send(3), send(1), send(2));
        let done = CompletedMultipartUpload::builder()
            .parts(p1)
            .parts(p2)
            .parts(p3)
            .build();
        c.complete_multipart_upload()
            .bucket(bucket)
            .key("w/big")
            .upload_id(&id)
            .multipart_upload(done)
            .send()
            .await
            .unwrap();
        assert_eq!(
            get(&c, bucket, "w/big", None).await,
            parts.concat(),
            "{bucket}"
        );

        let gone = c
            .create_multipart_upload()
            .bucket(bucket)
            .key("w/gone")
            .send()
            .await
            .unwrap();
        let gone_id = gone.upload_id().unwrap();
        c.abort_multipart_upload()
            .bucket(bucket)
            .key("w/gone")
            .upload_id(gone_id)
            .send()
            .await
            .unwrap();
        let late = c
            .upload_part()
            .bucket(bucket)
            .key("w/gone")
            .upload_id(gone_id)
            .part_number(1)
            .body(ByteStream::from_static(b"late"))
            .send()
            .await;
        assert_eq!(code(late.unwrap_err()), "NoSuchUpload");

        c.delete_object()
            .bucket(bucket)
            .key("w/small")
            .send()
            .await
            .unwrap();
        let missing = c.get_object().bucket(bucket).key("w/small").send().await;
        assert_eq!(
            code(missing.unwrap_err()),
            "NoSuchKey",
            "{bucket}: deleted, not cached"
        );
        for k in ["w/d1", "w/d2"] {
            c.put_object()
                .bucket(bucket)
                .key(k)
                .body(ByteStream::from_static(b"d"))
                .send()
                .await
                .unwrap();
        }
        let ids = ["w/d1", "w/d2"].map(|k| ObjectIdentifier::builder().key(k).build().unwrap());
        let del = Delete::builder()
            .set_objects(Some(ids.to_vec()))
            .build()
            .unwrap();
        let out = c
            .delete_objects()
            .bucket(bucket)
            .delete(del)
            .send()
            .await
            .unwrap();
        assert_eq!(out.deleted().len(), 2, "{bucket}");
        let left = c
            .list_objects_v2()
            .bucket(bucket)
            .prefix("w/")
            .send()
            .await
            .unwrap();
        let left: Vec<_> = left.contents().iter().map(|o| o.key().unwrap()).collect();
        assert_eq!(left, ["w/big"], "{bucket}");
    }
}

/// Objects above `cache.max_object_size` stream part by part: the body is
/// whole and exact, and a range of one is too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_too_large_to_cache_stream_whole() {
    let d = TestDaemon::start_with(|c| {
        facade_config(c, false);
        c.cache.max_object_size = Some(sluice_engine::ByteSize::mib(1));
    })
    .await;
    let data = pattern((5 << 20) + 123, 9);
    std::fs::write(d.root().join("large"), &data).unwrap();
    let c = client(d.facade(), KEY_ALL);
    let out = c
        .get_object()
        .bucket("local")
        .key("large")
        .send()
        .await
        .unwrap();
    assert_eq!(out.content_length(), Some(data.len() as i64));
    assert_eq!(out.body.collect().await.unwrap().into_bytes(), data);
    let mid = get(&c, "local", "large", Some("bytes=1000000-3999999")).await;
    assert_eq!(mid, &data[1_000_000..4_000_000]);
    let body = http_get(d.http(), "/metrics").await.1;
    assert_eq!(
        metric(&body, "sluice_facade_reads_total{source=\"uncached\"}"),
        2.0,
        "{body}"
    );
}
