//! The client library against an in-memory fake of the daemon, over a real
//! Unix socket and the real generated gRPC stubs.

mod fake;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use fake::{CHUNK, FakeDaemon};
use futures::{StreamExt, TryStreamExt, stream};
use sluice_client::{Client, Entry, Error};
use tokio::io::{AsyncRead, ReadBuf};

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

async fn connect(daemon: &FakeDaemon) -> Client {
    Client::connect(&daemon.address()).await.unwrap()
}

#[tokio::test]
async fn put_then_read_round_trips_through_chunks() {
    let daemon = FakeDaemon::start();
    let client = connect(&daemon).await;
    // Several upload chunks and many read chunks, with a ragged tail.
    let data = pattern(2 * sluice_proto::DEFAULT_CHUNK_SIZE + 12_345);
    let written = client.put("f:///a.bin", data.clone()).await.unwrap();
    assert_eq!(written.meta.size, data.len() as u64);
    assert_eq!(written.parts, 3);
    assert_eq!(daemon.get("f:///a.bin").unwrap(), data);

    let meta = client.stat("f:///a.bin").await.unwrap();
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(
        client.read_to_bytes("f:///a.bin", None).await.unwrap(),
        data
    );

    let stream = client.read("f:///a.bin", None).await.unwrap();
    assert_eq!(stream.meta().uri, "f:///a.bin");
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    assert!(chunks.len() > 2 && chunks.iter().all(|c| c.len() <= CHUNK));
    assert_eq!(chunks.concat(), data);
}

#[tokio::test]
async fn ranged_reads_return_the_range() {
    let daemon = FakeDaemon::start();
    let data = pattern(3 * CHUNK);
    daemon.insert("f:///r", data.clone());
    let client = connect(&daemon).await;
    let middle = client
        .read_to_bytes("f:///r", Some(100..CHUNK as u64 + 7))
        .await
        .unwrap();
    assert_eq!(middle, data.slice(100..CHUNK + 7));
    let tail = client
        .read_to_bytes("f:///r", Some(5000..u64::MAX))
        .await
        .unwrap();
    assert_eq!(tail, data.slice(5000..));
    let past_end = client
        .read_to_bytes("f:///r", Some(10..u64::MAX - 1))
        .await
        .unwrap();
    assert_eq!(past_end, data.slice(10..));
}

#[tokio::test]
async fn missing_object_is_not_found_naming_the_uri() {
    let daemon = FakeDaemon::start();
    let client = connect(&daemon).await;
    for error in [
        client.stat("f:///nope").await.unwrap_err(),
        client.read("f:///nope", None).await.unwrap_err(),
        client.delete("f:///nope", false).await.unwrap_err(),
    ] {
        assert!(error.is_not_found(), "{error}");
        assert!(error.to_string().contains("f:///nope"), "{error}");
    }
}

#[tokio::test]
async fn listings_walk_every_page_in_order() {
    let daemon = FakeDaemon::start();
    for key in ["a", "b/1", "b/2", "c", "d/x/1", "e"] {
        daemon.insert(&format!("f:///d/{key}"), "x");
    }
    daemon.insert("f:///other", "x");
    let client = connect(&daemon).await;

    let uris = |entries: Vec<Entry>| {
        entries
            .iter()
            .map(|e| e.uri().to_owned())
            .collect::<Vec<_>>()
    };
    let all: Vec<Entry> = client.list("f:///d/", true).try_collect().await.unwrap();
    assert_eq!(
        uris(all),
        [
            "f:///d/a",
            "f:///d/b/1",
            "f:///d/b/2",
            "f:///d/c",
            "f:///d/d/x/1",
            "f:///d/e"
        ]
    );
    let level: Vec<Entry> = client.list("f:///d/", false).try_collect().await.unwrap();
    assert!(matches!(level[1], Entry::Prefix(_)));
    assert_eq!(
        uris(level),
        ["f:///d/a", "f:///d/b/", "f:///d/c", "f:///d/d/", "f:///d/e"]
    );

    let page = client.list_page("f:///d/", "", 0, None).await.unwrap();
    assert_eq!(page.objects.len(), 2);
    let token = page.next_page_token.expect("more pages");
    let next = client
        .list_page("f:///d/", "", 0, Some(&token))
        .await
        .unwrap();
    assert_eq!(next.objects[0].uri, "f:///d/b/2");
}

#[tokio::test]
async fn read_many_returns_every_item_once() {
    let daemon = FakeDaemon::start();
    let big = pattern(2 * CHUNK + 3);
    daemon.insert("f:///m/big", big.clone());
    daemon.insert("f:///m/small", "tiny");
    daemon.insert("f:///m/empty", Bytes::new());
    let client = connect(&daemon).await;
    let items = [
        "f:///m/big",
        "f:///m/missing",
        "f:///m/small",
        "f:///m/empty",
    ];
    let mut results: Vec<_> = client
        .read_many(items, 4, true)
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
    assert!(error.is_not_found() && error.to_string().contains("f:///m/missing"));
    let (meta, small) = results[2].1.as_ref().unwrap();
    assert_eq!((meta.size, small.as_ref()), (4, &b"tiny"[..]));
    assert!(results[3].1.as_ref().unwrap().1.is_empty());

    let ranged = vec![("f:///m/big".to_owned(), 10..CHUNK as u64 + 10)];
    let results: Vec<_> = client
        .read_many(ranged, 0, false)
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(results[0].1.as_ref().unwrap().1, big.slice(10..CHUNK + 10));
}

#[tokio::test]
async fn write_streams_and_reader_uploads_are_chunked() {
    let daemon = FakeDaemon::start();
    let client = connect(&daemon).await;
    let pieces = stream::iter((0..1000).map(|i| Bytes::from(vec![i as u8; 3000])));
    let written = client
        .write("f:///w/pieces", pieces, 3_000_000)
        .await
        .unwrap();
    assert_eq!(written.meta.size, 3_000_000);
    assert_eq!(daemon.get("f:///w/pieces").unwrap().len(), 3_000_000);

    let data = pattern(sluice_proto::DEFAULT_CHUNK_SIZE + 1);
    let reader = io::Cursor::new(data.to_vec());
    client
        .write_reader("f:///w/reader", reader, 0)
        .await
        .unwrap();
    assert_eq!(daemon.get("f:///w/reader").unwrap(), data);

    client.put("f:///w/empty", Bytes::new()).await.unwrap();
    assert_eq!(daemon.get("f:///w/empty").unwrap().len(), 0);
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

#[tokio::test]
async fn failing_reader_aborts_the_upload() {
    let mut daemon = FakeDaemon::start();
    let client = connect(&daemon).await;
    // Fail only once the daemon holds data: a reset that looked like a
    // clean end would now commit a truncated object.
    let reader = FailsAfter {
        good: 2 * sluice_proto::DEFAULT_CHUNK_SIZE,
        gate: Box::pin(daemon.data_messages_reached(2)),
    };
    let error = client
        .write_reader("f:///w/broken", reader, 0)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Io { .. }), "{error:?}");
    assert!(error.to_string().contains("f:///w/broken"), "{error}");
    daemon.wait_aborted_writes(1).await;
    assert!(
        daemon.get("f:///w/broken").is_none(),
        "a truncated object was committed"
    );
}

#[tokio::test]
async fn recursive_delete_counts_objects() {
    let daemon = FakeDaemon::start();
    for key in ["x/1", "x/2", "x/3/4", "y"] {
        daemon.insert(&format!("f:///{key}"), "z");
    }
    let client = connect(&daemon).await;
    assert_eq!(client.delete("f:///x/", true).await.unwrap(), 3);
    assert_eq!(client.delete("f:///y", false).await.unwrap(), 1);
    assert!(client.stat("f:///y").await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn bare_socket_path_connects() {
    let daemon = FakeDaemon::start();
    daemon.insert("f:///p", "abc");
    let client = Client::connect(daemon.socket().to_str().unwrap())
        .await
        .unwrap();
    assert_eq!(client.stat("f:///p").await.unwrap().size, 3);
}
