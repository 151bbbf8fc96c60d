//! Reads through a real daemon over gRPC: content, ranges, errors, cache.

use std::time::Duration;

use sluice_engine::ByteSize;
use sluice_proto::v1;
use sluice_tests::daemon::TestDaemon;
use sluice_tests::grpc::{connect, http_get, metric, pattern, read};
use tonic::Code;

fn range(offset: u64, length: u64) -> Option<v1::ByteRange> {
    Some(v1::ByteRange {
        offset,
        length,
        to_end: false,
    })
}

fn to_end(offset: u64) -> Option<v1::ByteRange> {
    Some(v1::ByteRange {
        offset,
        length: 0,
        to_end: true,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_and_ranged_reads_are_byte_exact() {
    // Small parts so that the large object takes many ranged GETs, some of
    // them streamed (max_object_size below its size).
    let d = TestDaemon::start_with(|c| {
        c.engine.part_size = ByteSize(256 << 10);
        c.cache.max_object_size = Some(ByteSize::mib(8));
    })
    .await;
    let mut client = connect(d.socket()).await;
    let sizes = [
        0usize,
        1,
        1000,
        (256 << 10) - 1,
        256 << 10,
        5 * (1 << 20) + 77,
        20 * (1 << 20) + 123,
    ];
    for (i, &len) in sizes.iter().enumerate() {
        let data = pattern(len, i as u8);
        let name = format!("obj-{len}");
        std::fs::write(d.root().join(&name), &data).unwrap();
        let uri = d.file_uri(&name);
        for pass in 0..2 {
            let (meta, got) = read(&mut client, &uri, None).await.unwrap();
            assert_eq!(meta.size, len as u64);
            assert_eq!(meta.uri, uri);
            assert!(!meta.etag.is_empty());
            assert!(
                got == data,
                "whole read of {len} bytes differs (pass {pass})"
            );
        }
        if len > 10 {
            let (a, b) = (len as u64 / 3, len as u64 / 2);
            let (_, got) = read(&mut client, &uri, range(a, b - a)).await.unwrap();
            assert!(
                got == data[a as usize..b as usize],
                "range {a}..{b} of {len}"
            );
            let (_, got) = read(&mut client, &uri, to_end(a)).await.unwrap();
            assert!(got == data[a as usize..], "range {a}.. of {len}");
            // A range running past the end is clamped.
            let (_, got) = read(&mut client, &uri, range(len as u64 - 3, 100))
                .await
                .unwrap();
            assert_eq!(got, data[len - 3..]);
        }
    }
    let (_, body) = http_get(d.http(), "/metrics").await;
    assert!(metric(&body, "sluice_cache_hits_total") >= 5.0, "{body}");
    assert!(
        metric(&body, "sluice_rpc_reads_total{source=\"uncached\"}") >= 2.0,
        "large object streamed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_the_right_code_and_name_the_uri() {
    let d = TestDaemon::start().await;
    let mut client = connect(d.socket()).await;
    std::fs::write(d.root().join("small"), b"0123456789").unwrap();

    let missing = d.file_uri("missing");
    let err = read(&mut client, &missing, None).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains(&missing), "{}", err.message());

    for bad in [
        "",
        "no-scheme",
        "gopher://x/y",
        "file://relative/path",
        "s3://",
    ] {
        let err = read(&mut client, bad, None).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{bad:?}: {}",
            err.message()
        );
    }

    let escape = format!("file://{}/../etc/passwd", d.root().display());
    let err = read(&mut client, &escape, None).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    let err = read(&mut client, "file:///etc/passwd", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    std::os::unix::fs::symlink("/etc", d.root().join("etc-link")).unwrap();
    let err = read(&mut client, &d.file_uri("etc-link/passwd"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());

    let small = d.file_uri("small");
    let err = read(&mut client, &small, range(10, 5)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    let err = read(&mut client, &small, range(u64::MAX, 5))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    // An empty range is fine and answers with the metadata.
    let (meta, got) = read(&mut client, &small, range(4, 0)).await.unwrap();
    assert_eq!((meta.size, got.len()), (10, 0));

    let err = client
        .stat(v1::StatRequest {
            uri: missing.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overwrite_during_a_read_aborts_it() {
    let d = TestDaemon::start_with(|c| {
        c.engine.part_size = ByteSize(64 << 10);
        c.engine.per_object_concurrency = 1;
        c.cache.max_object_size = Some(ByteSize(1 << 20));
        c.read.chunk_size = ByteSize(16 << 10);
    })
    .await;
    let mut client = connect(d.socket()).await;
    let path = d.root().join("big");
    std::fs::write(&path, pattern(32 << 20, 1)).unwrap();
    let req = v1::ReadRequest {
        uri: d.file_uri("big"),
        range: None,
        no_cache: false,
    };
    let mut stream = client.read(req).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.meta.is_some());
    let tmp = d.root().join("big.new");
    std::fs::write(&tmp, pattern(32 << 20, 2)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let mut received = first.data.len();
    let err = loop {
        match stream.message().await {
            Ok(Some(m)) => received += m.data.len(),
            Ok(None) => panic!("read finished across an overwrite ({received} bytes)"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Code::Aborted, "{}", err.message());
    assert!(err.message().contains("changed"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_object_is_not_served_from_the_cache() {
    let d = TestDaemon::start_with(|c| c.cache.revalidate_after = Duration::ZERO).await;
    let mut client = connect(d.socket()).await;
    let path = d.root().join("o");
    std::fs::write(&path, b"version one").unwrap();
    let uri = d.file_uri("o");
    assert_eq!(
        read(&mut client, &uri, None).await.unwrap().1,
        b"version one"
    );
    assert_eq!(
        read(&mut client, &uri, None).await.unwrap().1,
        b"version one"
    );
    std::fs::write(d.root().join("o.tmp"), b"version two!").unwrap();
    std::fs::rename(d.root().join("o.tmp"), &path).unwrap();
    assert_eq!(
        read(&mut client, &uri, None).await.unwrap().1,
        b"version two!"
    );
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        read(&mut client, &uri, None).await.unwrap_err().code(),
        Code::NotFound
    );
    let (_, body) = http_get(d.http(), "/metrics").await;
    assert_eq!(metric(&body, "sluice_cache_hits_total"), 1.0, "{body}");
    assert_eq!(
        metric(&body, "sluice_cache_invalidations_total"),
        2.0,
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_fetch_once() {
    let d = TestDaemon::start().await;
    std::fs::write(d.root().join("shared"), pattern(4 << 20, 3)).unwrap();
    let uri = d.file_uri("shared");
    let reads = (0..16).map(|_| {
        let (socket, uri) = (d.socket().to_path_buf(), uri.clone());
        tokio::spawn(async move {
            let mut c = connect(socket).await;
            read(&mut c, &uri, None).await.unwrap().1
        })
    });
    for r in futures::future::join_all(reads).await {
        assert!(r.unwrap() == pattern(4 << 20, 3));
    }
    let (_, body) = http_get(d.http(), "/metrics").await;
    // 4 MiB < one 8 MiB part: one GET for the object, however many readers.
    assert_eq!(
        metric(
            &body,
            "sluice_backend_requests_total{backend=\"file\",operation=\"get\"}"
        ),
        1.0,
        "{body}"
    );
    assert_eq!(metric(&body, "sluice_cache_misses_total"), 1.0);
    let served =
        metric(&body, "sluice_cache_hits_total") + metric(&body, "sluice_cache_coalesced_total");
    assert_eq!(served, 15.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_many_tags_every_item() {
    let d = TestDaemon::start_with(|c| c.read.chunk_size = ByteSize(4096)).await;
    let mut client = connect(d.socket()).await;
    let mut items = Vec::new();
    for i in 0..40 {
        let len = 100 + i * 997; // up to ~39 KiB: several chunks each
        std::fs::write(d.root().join(format!("s{i}")), pattern(len, i as u8)).unwrap();
        items.push(v1::ReadManyItem {
            uri: d.file_uri(&format!("s{i}")),
            range: None,
        });
    }
    items.insert(
        7,
        v1::ReadManyItem {
            uri: d.file_uri("missing"),
            range: None,
        },
    );
    items.push(v1::ReadManyItem {
        uri: d.file_uri("s3"),
        range: range(10, 20),
    });
    for ordered in [true, false] {
        let req = v1::ReadManyRequest {
            items: items.clone(),
            concurrency: 8,
            ordered,
        };
        let mut stream = client.read_many(req).await.unwrap().into_inner();
        let mut got: Vec<Option<Result<Vec<u8>, i32>>> = vec![None; items.len()];
        let mut current: Option<(u32, Vec<u8>)> = None;
        let mut order = Vec::new();
        while let Some(m) = stream.message().await.unwrap() {
            let (idx, buf) = current.get_or_insert_with(|| (m.index, Vec::new()));
            assert_eq!(*idx, m.index, "chunks of one item arrive back to back");
            if let Some(e) = m.error {
                got[m.index as usize] = Some(Err(e.code));
                assert!(m.last);
                order.push(m.index);
                current = None;
                continue;
            }
            assert_eq!(
                m.offset as usize,
                buf.len() + if m.index == 41 { 10 } else { 0 }
            );
            buf.extend_from_slice(&m.data);
            if m.last {
                let (idx, buf) = current.take().unwrap();
                got[idx as usize] = Some(Ok(buf));
                order.push(idx);
            }
        }
        assert_eq!(got[7], Some(Err(Code::NotFound as i32)));
        for (i, g) in got.iter().enumerate() {
            match i {
                7 => {}
                41 => assert_eq!(
                    g.clone().unwrap().unwrap(),
                    pattern(100 + 3 * 997, 3)[10..30]
                ),
                _ => {
                    let k = if i < 7 { i } else { i - 1 };
                    assert!(
                        g.clone().unwrap().unwrap() == pattern(100 + k * 997, k as u8),
                        "item {i}"
                    );
                }
            }
        }
        if ordered {
            assert_eq!(order, (0..items.len() as u32).collect::<Vec<_>>());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_probes_answer() {
    let d = TestDaemon::start().await;
    let channel = {
        let path = d.socket().to_path_buf();
        tonic::transport::Endpoint::try_from("http://sluiced.local")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .unwrap()
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "sluice.v1.Sluice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert_eq!(http_get(d.http(), "/ready").await.0, 200);
    assert_eq!(http_get(d.http(), "/live").await.0, 200);
    let (status, body) = http_get(d.http(), "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "sluice_cache_hits_total",
        "sluice_memory_budget_bytes",
        "sluice_build_info{",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics");
    }
    assert_eq!(
        metric(&body, "sluice_memory_budget_bytes"),
        (256u64 << 20) as f64
    );
    assert!(
        !body.contains("info_info"),
        "a metric name carries its suffix twice"
    );
}
