//! The client library against the real daemon, started in-process and
//! serving `file://` from a temporary directory, over its Unix socket.

mod common;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::{CHUNK, TestDaemon, eventually};
use futures::{StreamExt, TryStreamExt, stream};
use sluice_client::{Client, Entry, Error};
use tokio::io::{AsyncRead, ReadBuf};

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// A daemon that reads in [`CHUNK`]s and uploads in parts of one client
/// chunk, so multi-chunk and multipart paths run on small data.
async fn daemon() -> TestDaemon {
    TestDaemon::start_with(|c| {
        c.read.chunk_size = format!("{CHUNK}B").parse().unwrap();
        c.write.part_size = format!("{}B", sluice_proto::DEFAULT_CHUNK_SIZE)
            .parse()
            .unwrap();
    })
    .await
}

async fn connect(daemon: &TestDaemon) -> Client {
    Client::connect(&daemon.address()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_then_read_round_trips_through_chunks() {
    let daemon = daemon().await;
    let client = connect(&daemon).await;
    let uri = daemon.file_uri("a.bin");
    // Several upload chunks and parts, many read chunks, a ragged tail.
    let data = pattern(2 * sluice_proto::DEFAULT_CHUNK_SIZE + 12_345);
    let written = client.put(&uri, data.clone()).await.unwrap();
    assert_eq!(written.meta.uri, uri);
    assert_eq!(written.meta.size, data.len() as u64);
    assert_eq!(written.parts, 3);
    assert!(
        daemon.read("a.bin").unwrap() == data,
        "bytes on disk differ"
    );

    let meta = client.stat(&uri).await.unwrap();
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(client.read_to_bytes(&uri, None).await.unwrap(), data);

    let stream = client.read(&uri, None).await.unwrap();
    assert_eq!(stream.meta().uri, uri);
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    assert!(chunks.len() > 2 && chunks.iter().all(|c| c.len() <= CHUNK));
    assert_eq!(chunks.concat(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_reads_return_the_range() {
    let daemon = daemon().await;
    let data = pattern(3 * CHUNK);
    let uri = daemon.write("r", &data);
    let client = connect(&daemon).await;
    let middle = client
        .read_to_bytes(&uri, Some(100..CHUNK as u64 + 7))
        .await
        .unwrap();
    assert_eq!(middle, data.slice(100..CHUNK + 7));
    let tail = client
        .read_to_bytes(&uri, Some(5000..u64::MAX))
        .await
        .unwrap();
    assert_eq!(tail, data.slice(5000..));
    let past_end = client
        .read_to_bytes(&uri, Some(10..u64::MAX - 1))
        .await
        .unwrap();
    assert_eq!(past_end, data.slice(10..));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_object_is_not_found_naming_the_uri() {
    let daemon = daemon().await;
    let client = connect(&daemon).await;
    let uri = daemon.file_uri("nope");
    for error in [
        client.stat(&uri).await.unwrap_err(),
        client.read(&uri, None).await.unwrap_err(),
        client.delete(&uri, false).await.unwrap_err(),
    ] {
        assert!(error.is_not_found(), "{error}");
        assert!(error.to_string().contains(&uri), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_walk_every_page_in_order() {
    let daemon = daemon().await;
    for key in ["a", "b/1", "b/2", "c", "d/x/1", "e"] {
        daemon.write(&format!("d/{key}"), "x");
    }
    daemon.write("other", "x");
    let client = connect(&daemon).await;
    let d = |key: &str| daemon.file_uri(&format!("d/{key}"));

    let uris = |entries: Vec<Entry>| {
        entries
            .iter()
            .map(|e| e.uri().to_owned())
            .collect::<Vec<_>>()
    };
    let all: Vec<Entry> = client.list(&d(""), true).try_collect().await.unwrap();
    assert_eq!(uris(all), ["a", "b/1", "b/2", "c", "d/x/1", "e"].map(d));
    let level: Vec<Entry> = client.list(&d(""), false).try_collect().await.unwrap();
    assert!(matches!(level[1], Entry::Prefix(_)));
    assert_eq!(uris(level), ["a", "b/", "c", "d/", "e"].map(d));

    let page = client.list_page(&d(""), "", 2, None).await.unwrap();
    assert_eq!(page.objects.len(), 2);
    let token = page.next_page_token.expect("more pages");
    let next = client.list_page(&d(""), "", 2, Some(&token)).await.unwrap();
    assert_eq!(next.objects[0].uri, d("b/2"));

    // More entries than one page of the walk (1000), every tenth a
    // "directory", so a page boundary falls among objects and prefixes.
    let keys: Vec<String> = (0..1203)
        .map(|i| match i % 10 {
            0 => format!("{i:04}/x"),
            _ => format!("{i:04}"),
        })
        .collect();
    for key in &keys {
        daemon.write(&format!("many/{key}"), "y");
    }
    let many = |key: &str| daemon.file_uri(&format!("many/{key}"));
    let all: Vec<Entry> = client.list(&many(""), true).try_collect().await.unwrap();
    assert_eq!(uris(all), keys.iter().map(|k| many(k)).collect::<Vec<_>>());
    let level: Vec<Entry> = client.list(&many(""), false).try_collect().await.unwrap();
    let want: Vec<String> = keys
        .iter()
        .map(|k| many(k.strip_suffix('x').unwrap_or(k)))
        .collect();
    assert_eq!(uris(level), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_many_returns_every_item_once() {
    let daemon = daemon().await;
    let big = pattern(2 * CHUNK + 3);
    daemon.write("m/big", &big);
    daemon.write("m/small", "tiny");
    daemon.write("m/empty", "");
    let client = connect(&daemon).await;
    let items = ["m/big", "m/missing", "m/small", "m/empty"].map(|k| daemon.file_uri(k));
    let mut results: Vec<_> = client
        .read_many(items.clone(), 4, true)
        .await
        .unwrap()
        .collect()
        .await;
    results.sort_by_key(|(index, _)| *index);
    assert_eq!(
        results.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert_eq!(results[0].1.as_ref().unwrap().1, big);
    let error = results[1].1.as_ref().unwrap_err();
    assert!(
        error.is_not_found() && error.to_string().contains(&items[1]),
        "{error}"
    );
    let (meta, small) = results[2].1.as_ref().unwrap();
    assert_eq!((meta.size, small.as_ref()), (4, &b"tiny"[..]));
    assert!(results[3].1.as_ref().unwrap().1.is_empty());

    let ranged = vec![(items[0].clone(), 10..CHUNK as u64 + 10)];
    let results: Vec<_> = client
        .read_many(ranged, 0, false)
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(results[0].1.as_ref().unwrap().1, big.slice(10..CHUNK + 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_streams_and_reader_uploads_are_chunked() {
    let daemon = daemon().await;
    let client = connect(&daemon).await;
    let pieces = stream::iter((0..1000).map(|i| Bytes::from(vec![i as u8; 3000])));
    let written = client
        .write(&daemon.file_uri("w/pieces"), pieces, 3_000_000)
        .await
        .unwrap();
    assert_eq!(written.meta.size, 3_000_000);
    let on_disk = daemon.read("w/pieces").unwrap();
    let want: Vec<u8> = (0..1000).flat_map(|i| vec![i as u8; 3000]).collect();
    assert!(on_disk == want, "bytes on disk differ");

    let data = pattern(sluice_proto::DEFAULT_CHUNK_SIZE + 1);
    let reader = io::Cursor::new(data.to_vec());
    let written = client
        .write_reader(&daemon.file_uri("w/reader"), reader, 0)
        .await
        .unwrap();
    assert_eq!((written.meta.size, written.parts), (data.len() as u64, 2));
    assert!(
        daemon.read("w/reader").unwrap() == data,
        "bytes on disk differ"
    );

    client
        .put(&daemon.file_uri("w/empty"), Bytes::new())
        .await
        .unwrap();
    assert_eq!(daemon.read("w/empty").unwrap().len(), 0);
}

/// Yields `good` bytes, then fails once `gate` resolves.
struct FailsAfter {
    good: usize,
    gate: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl AsyncRead for FailsAfter {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.good == 0 {
            std::task::ready!(self.gate.as_mut().poll(cx));
            return Poll::Ready(Err(io::Error::other("disk on fire")));
        }
        let n = self.good.min(buf.remaining());
        buf.put_slice(&vec![1; n]);
        self.good -= n;
        Poll::Ready(Ok(()))
    }
}

/// Sizes of the daemon's temporary upload files in `dir`.
fn uploads_in_progress(dir: &std::path::Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().contains(".sluice-tmp-"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_reader_aborts_the_upload() {
    let daemon = daemon().await;
    let client = connect(&daemon).await;
    let dir = daemon.root().join("w");
    // Fail only once the daemon has written a part of the upload: a reset
    // that looked like a clean end would now commit a truncated object.
    let part = sluice_proto::DEFAULT_CHUNK_SIZE as u64;
    let gate_dir = dir.clone();
    let reader = FailsAfter {
        good: 2 * sluice_proto::DEFAULT_CHUNK_SIZE,
        gate: Box::pin(async move {
            eventually(
                "a part of the upload on disk",
                Duration::from_secs(10),
                || uploads_in_progress(&gate_dir).iter().any(|&n| n >= part),
            )
            .await;
        }),
    };
    let uri = daemon.file_uri("w/broken");
    let error = client.write_reader(&uri, reader, 0).await.unwrap_err();
    assert!(matches!(error, Error::Io { .. }), "{error:?}");
    assert!(error.to_string().contains(&uri), "{error}");
    eventually("the upload discarded", Duration::from_secs(10), || {
        uploads_in_progress(&dir).is_empty()
    })
    .await;
    assert!(
        daemon.read("w/broken").is_none(),
        "a truncated object was committed"
    );
    assert!(client.stat(&uri).await.unwrap_err().is_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_delete_counts_objects() {
    let daemon = daemon().await;
    for key in ["x/1", "x/2", "x/3/4", "y", "xy"] {
        daemon.write(key, "z");
    }
    let client = connect(&daemon).await;
    assert_eq!(
        client.delete(&daemon.file_uri("x/"), true).await.unwrap(),
        3
    );
    assert_eq!(
        client.delete(&daemon.file_uri("y"), false).await.unwrap(),
        1
    );
    for key in ["x/1", "x/2", "x/3/4", "y"] {
        assert!(daemon.read(key).is_none(), "{key} still there");
    }
    assert!(daemon.read("xy").is_some(), "outside the prefix");
    let error = client.stat(&daemon.file_uri("y")).await.unwrap_err();
    assert!(error.is_not_found(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_socket_path_connects() {
    let daemon = daemon().await;
    let uri = daemon.write("p", "abc");
    let client = Client::connect(daemon.socket().to_str().unwrap())
        .await
        .unwrap();
    assert_eq!(client.stat(&uri).await.unwrap().size, 3);
}
