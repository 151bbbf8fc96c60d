//! `direct://` through a real daemon: O_DIRECT reads into arena extents,
//! byte-exact whole and ranged, buffered and streamed, and reads dropped
//! midway that leave every other read intact.

use futures::StreamExt;
use sluice_engine::ByteSize;
use sluice_proto::v1;
use sluice_tests::daemon::TestDaemon;
use sluice_tests::grpc::{connect, http_get, metric, pattern, read};

fn range(offset: u64, length: u64) -> Option<v1::ByteRange> {
    Some(v1::ByteRange {
        offset,
        length,
        to_end: false,
    })
}

async fn direct_daemon() -> TestDaemon {
    TestDaemon::start_with(|c| {
        c.storage.direct.roots = c.storage.file.roots.clone();
        // Many parts per object, some objects streamed.
        c.engine.part_size = ByteSize(256 << 10);
        c.engine.adaptive_part_size = false;
        c.cache.max_object_size = Some(ByteSize::mib(8));
    })
    .await
}

fn direct_uri(d: &TestDaemon, name: &str) -> String {
    format!("direct://{}/{name}", d.root().display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reads_are_byte_exact_whole_ranged_and_streamed() {
    let d = direct_daemon().await;
    let mut client = connect(d.socket()).await;
    for (i, len) in [0usize, 1, 4095, 4097, (256 << 10) + 1, 12 * (1 << 20) + 333]
        .into_iter()
        .enumerate()
    {
        let data = pattern(len, i as u8);
        let name = format!("o{len}");
        std::fs::write(d.root().join(&name), &data).unwrap();
        let uri = direct_uri(&d, &name);
        for pass in 0..2 {
            let (meta, got) = read(&mut client, &uri, None).await.unwrap();
            assert_eq!((meta.uri.as_str(), meta.size), (uri.as_str(), len as u64));
            assert!(got == data, "{uri}: whole read differs (pass {pass})");
        }
        let end = (len as u64).saturating_sub(1);
        for (a, b) in [(1, 4097), (4095, 300_000), (len as u64 / 3, end)] {
            if a >= b || b > len as u64 {
                continue;
            }
            let (_, got) = read(&mut client, &uri, range(a, b - a)).await.unwrap();
            assert!(got == data[a as usize..b as usize], "{uri}: {a}..{b}");
        }
    }
    let (_, body) = http_get(d.http(), "/metrics").await;
    assert!(
        metric(
            &body,
            "sluice_backend_requests_total{backend=\"direct\",operation=\"read_part\"}"
        ) >= 10.0,
        "later parts go through read_into: {body}"
    );
    assert_eq!(metric(&body, "sluice_direct_buffered_reads_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_dropped_midway_leave_other_reads_intact() {
    let d = direct_daemon().await;
    let mut files = Vec::new();
    for i in 0..4u8 {
        let data = pattern(6 * (1 << 20) + 4321 * i as usize, 40 + i);
        let name = format!("d{i}");
        std::fs::write(d.root().join(&name), &data).unwrap();
        files.push((direct_uri(&d, &name), data));
    }
    let mut tasks = Vec::new();
    for worker in 0..6usize {
        let files = files.clone();
        let socket = d.socket().to_path_buf();
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&socket).await;
            for round in 0..6 {
                let (uri, data) = &files[(worker + round) % files.len()];
                let req = v1::ReadRequest {
                    uri: uri.clone(),
                    range: None,
                    // Every read goes to the backend.
                    no_cache: true,
                };
                if (worker + round) % 2 == 0 {
                    // Takes one message, then drops the stream.
                    let mut stream = client.read(req).await.unwrap().into_inner();
                    let first = stream.next().await.unwrap().unwrap();
                    assert!(first.data == data[..first.data.len()], "{uri}");
                } else {
                    let (_, got) = read(&mut client, uri, None).await.unwrap();
                    assert!(got == *data, "{uri}: round {round} worker {worker}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // And after them all, each object reads whole again.
    let mut client = connect(d.socket()).await;
    for (uri, data) in &files {
        let (_, got) = read(&mut client, uri, None).await.unwrap();
        assert!(got == *data, "{uri}");
    }
}
