//! The session API over the wire, against the in-memory fake: stream
//! delivery only (the fake has no arena). Shared memory is tested against
//! the real daemon in the workspace's end-to-end tests.

#[allow(dead_code)]
mod fake;

use std::time::Duration;

use bytes::Bytes;
use fake::{CHUNK, FakeDaemon, HANG_UP, NO_ANSWER};
use futures::StreamExt;
use sluice_client::{Client, Delivery, Session, SessionOptions};

fn pattern(len: usize) -> Bytes {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

async fn session(daemon: &FakeDaemon, delivery: Delivery) -> Session {
    let client = Client::connect(&daemon.address()).await.unwrap();
    let options = SessionOptions {
        delivery,
        window: 3,
    };
    client.session(options).await.unwrap()
}

/// Fails the test instead of hanging.
async fn soon<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(5), future)
        .await
        .expect("no answer within 5 s")
}

#[tokio::test]
async fn auto_falls_back_to_the_stream_and_fetches_exact_bytes() {
    let daemon = FakeDaemon::start();
    let data = pattern(3 * CHUNK + 5);
    daemon.insert("f://big", data.clone());
    daemon.insert("f://empty", Bytes::new());
    let session = session(&daemon, Delivery::Auto).await;
    assert!(!session.shared_memory());
    assert_eq!((session.session_id(), session.window()), (7, 3));

    let whole = soon(session.fetch("f://big", None)).await.unwrap();
    assert_eq!(whole.meta.size, data.len() as u64);
    assert_eq!(whole.parts.len(), 1, "chunks joined into one part");
    assert_eq!(&*whole.parts[0], &data[..]);
    assert!(!whole.parts[0].is_mapped() && whole.parts[0].lease_id() == 0);

    let range = CHUNK as u64 - 3..2 * CHUNK as u64 + 9;
    let ranged = soon(session.fetch("f://big", Some(range.clone())))
        .await
        .unwrap();
    assert_eq!(ranged.parts[0].object_offset(), range.start);
    assert_eq!(
        ranged.to_vec(),
        &data[range.start as usize..range.end as usize]
    );

    let tail = soon(session.fetch("f://big", Some(3 * CHUNK as u64..u64::MAX)))
        .await
        .unwrap();
    assert_eq!(tail.to_vec(), &data[3 * CHUNK..]);

    let empty = soon(session.fetch("f://empty", None)).await.unwrap();
    assert!(empty.is_empty() && empty.parts.is_empty());
}

#[tokio::test]
async fn parts_stream_in_object_order() {
    let daemon = FakeDaemon::start();
    let data = pattern(2 * CHUNK + 1);
    daemon.insert("f://a", data.clone());
    let session = session(&daemon, Delivery::Stream).await;
    let mut parts = soon(session.fetch_parts("f://a", None)).await.unwrap();
    assert_eq!(parts.meta().size, data.len() as u64);
    let mut offsets = Vec::new();
    let mut joined = Vec::new();
    while let Some(part) = soon(parts.next()).await {
        let part = part.unwrap();
        offsets.push(part.object_offset());
        joined.extend_from_slice(&part);
    }
    assert_eq!(offsets, [0, CHUNK as u64, 2 * CHUNK as u64]);
    assert_eq!(joined, data);
}

#[tokio::test]
async fn a_failed_fetch_leaves_the_session_working() {
    let daemon = FakeDaemon::start();
    daemon.insert("f://a", pattern(10));
    let session = session(&daemon, Delivery::Stream).await;
    let error = soon(session.fetch("f://missing", None)).await.unwrap_err();
    assert!(error.is_not_found(), "{error}");
    assert!(error.to_string().contains("f://missing"), "{error}");
    #[allow(clippy::reversed_empty_ranges)]
    let error = soon(session.fetch("f://a", Some(5..2))).await.unwrap_err();
    assert!(error.is_invalid_argument(), "{error}");
    let fetched = soon(session.fetch("f://a", None)).await.unwrap();
    assert_eq!(fetched.to_vec(), &pattern(10)[..]);
}

#[tokio::test]
async fn required_shared_memory_names_the_descriptor_socket() {
    let daemon = FakeDaemon::start();
    let client = Client::connect(&daemon.address()).await.unwrap();
    let options = SessionOptions {
        delivery: Delivery::SharedMemory,
        ..Default::default()
    };
    let error = client.session(options).await.unwrap_err();
    assert!(error.is_unavailable(), "{error}");
    let fds = format!("{}.fds", daemon.socket().display());
    assert!(error.to_string().contains(&fds), "{error}");
}

#[tokio::test]
async fn fetch_many_yields_every_item_once() {
    let daemon = FakeDaemon::start();
    let uris: Vec<String> = (0..10).map(|i| format!("f://obj/{i}")).collect();
    for (i, uri) in uris.iter().enumerate() {
        daemon.insert(uri, pattern(i * 1000 + 1));
    }
    let session = session(&daemon, Delivery::Auto).await;
    let mut items: Vec<String> = uris.clone();
    items.insert(4, "f://missing".into());
    for ordered in [true, false] {
        let results: Vec<_> = soon(session.fetch_many(items.clone(), ordered).collect()).await;
        assert_eq!(results.len(), items.len());
        if ordered {
            let indices: Vec<usize> = results.iter().map(|(i, _)| *i).collect();
            assert_eq!(indices, (0..items.len()).collect::<Vec<_>>());
        }
        let mut seen = vec![false; items.len()];
        for (index, result) in results {
            assert!(!std::mem::replace(&mut seen[index], true), "twice: {index}");
            match result {
                Ok(fetched) => {
                    let data = daemon.get(&items[index]).unwrap();
                    assert_eq!(fetched.to_vec(), &data[..], "{}", items[index]);
                }
                Err(error) => {
                    assert_eq!(index, 4);
                    assert!(error.is_not_found());
                }
            }
        }
    }
}

#[tokio::test]
async fn a_session_that_ends_fails_every_fetch_promptly() {
    let daemon = FakeDaemon::start();
    daemon.insert("f://a", pattern(100));
    let session = session(&daemon, Delivery::Stream).await;
    let held = soon(session.fetch("f://a", None)).await.unwrap();
    // `join!` polls in order: the first fetch is sent, and waits, before
    // the hang-up goes out on the same stream.
    let (waiting, hang_up) =
        soon(async { tokio::join!(session.fetch(NO_ANSWER, None), session.fetch(HANG_UP, None)) })
            .await;
    for error in [waiting.unwrap_err(), hang_up.unwrap_err()] {
        assert!(error.is_unavailable(), "{error}");
        assert!(error.to_string().contains(&daemon.address()), "{error}");
    }
    let error = soon(session.fetch("f://a", None)).await.unwrap_err();
    assert!(error.is_unavailable(), "later fetches fail too: {error}");
    assert_eq!(
        held.to_vec(),
        &pattern(100)[..],
        "held results stay readable"
    );
}
