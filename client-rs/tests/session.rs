//! The session API over the wire, against the real daemon started
//! in-process: stream delivery byte-exact, fallback and refusal of shared
//! memory, fetch_many, and a daemon that shuts down under a session. Lease
//! handling over shared memory is tested end to end in the workspace's
//! `tests/` crate.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{CHUNK, TestDaemon};
use futures::StreamExt;
use sluice_client::{Client, Delivery, Session, SessionOptions};

fn pattern(len: usize) -> Bytes {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

const LEASE_QUOTA: u64 = 64 << 20;

/// A daemon that streams in [`CHUNK`]s; `shared_memory` says whether it
/// offers shared-memory delivery at all.
async fn daemon(shared_memory: bool) -> TestDaemon {
    TestDaemon::start_with(|c| {
        c.read.chunk_size = format!("{CHUNK}B").parse().unwrap();
        c.session.shared_memory = shared_memory;
        c.session.lease_quota = format!("{LEASE_QUOTA}B").parse().unwrap();
    })
    .await
}

async fn session(daemon: &TestDaemon, delivery: Delivery) -> Session {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_the_stream_and_fetches_exact_bytes() {
    let daemon = daemon(false).await;
    let data = pattern(3 * CHUNK + 5);
    let big = daemon.write("big", &data);
    let empty = daemon.write("empty", "");
    let session = session(&daemon, Delivery::Auto).await;
    assert!(!session.shared_memory());
    assert_eq!(session.window(), 3);
    assert_eq!(session.lease_quota(), LEASE_QUOTA);
    let other = self::session(&daemon, Delivery::Auto).await;
    assert_ne!(session.session_id(), other.session_id());
    assert!(session.session_id() > 0 && other.session_id() > 0);

    let whole = soon(session.fetch(&big, None)).await.unwrap();
    assert_eq!(whole.meta.uri, big);
    assert_eq!(whole.meta.size, data.len() as u64);
    assert_eq!(whole.parts.len(), 1, "chunks joined into one part");
    assert_eq!(&*whole.parts[0], &data[..]);
    assert!(!whole.parts[0].is_mapped() && whole.parts[0].lease_id() == 0);

    let range = CHUNK as u64 - 3..2 * CHUNK as u64 + 9;
    let ranged = soon(session.fetch(&big, Some(range.clone())))
        .await
        .unwrap();
    assert_eq!(ranged.parts[0].object_offset(), range.start);
    assert_eq!(
        ranged.to_vec(),
        &data[range.start as usize..range.end as usize]
    );

    let tail = soon(session.fetch(&big, Some(3 * CHUNK as u64..u64::MAX)))
        .await
        .unwrap();
    assert_eq!(tail.to_vec(), &data[3 * CHUNK..]);

    let empty = soon(session.fetch(&empty, None)).await.unwrap();
    assert!(empty.is_empty() && empty.parts.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_stream_in_object_order() {
    let daemon = daemon(true).await;
    let data = pattern(2 * CHUNK + 1);
    let uri = daemon.write("a", &data);
    let session = session(&daemon, Delivery::Stream).await;
    assert!(!session.shared_memory());
    let mut parts = soon(session.fetch_parts(&uri, None)).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fetch_leaves_the_session_working() {
    let daemon = daemon(true).await;
    let uri = daemon.write("a", pattern(10));
    let missing = daemon.file_uri("missing");
    let session = session(&daemon, Delivery::Stream).await;
    let error = soon(session.fetch(&missing, None)).await.unwrap_err();
    assert!(error.is_not_found(), "{error}");
    assert!(error.to_string().contains(&missing), "{error}");
    #[allow(clippy::reversed_empty_ranges)]
    let error = soon(session.fetch(&uri, Some(5..2))).await.unwrap_err();
    assert!(error.is_invalid_argument(), "{error}");
    let fetched = soon(session.fetch(&uri, None)).await.unwrap();
    assert_eq!(fetched.to_vec(), &pattern(10)[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_shared_memory_names_the_descriptor_socket() {
    // A daemon with shared memory off serves no descriptor socket.
    let daemon = daemon(false).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_many_yields_every_item_once() {
    let daemon = daemon(false).await;
    let mut keys: Vec<String> = (0..10).map(|i| format!("obj/{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        daemon.write(key, pattern(i * 1000 + 1));
    }
    let session = session(&daemon, Delivery::Auto).await;
    keys.insert(4, "missing".into());
    let items: Vec<String> = keys.iter().map(|k| daemon.file_uri(k)).collect();
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
                    let data = daemon.read(&keys[index]).unwrap();
                    assert_eq!(fetched.to_vec(), data, "{}", items[index]);
                }
                Err(error) => {
                    assert_eq!(index, 4);
                    assert!(error.is_not_found(), "{error}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_stops_fails_pending_and_later_fetches_promptly() {
    let daemon = daemon(false).await;
    let data = pattern(100);
    let uri = daemon.write("a", &data);
    let address = daemon.address();
    let session = session(&daemon, Delivery::Stream).await;
    let held = soon(session.fetch(&uri, None)).await.unwrap();

    // Fetches in flight while the daemon shuts down: the daemon finishes
    // those it took, and ends the session with UNAVAILABLE, failing those
    // it did not. The stop itself must not wait for the grace period (20 s)
    // on the session this client keeps open.
    let many = session.fetch_many(vec![uri.clone(); 2000], false);
    let mut many = std::pin::pin!(many);
    let (_, first) = soon(many.next()).await.expect("a first result");
    assert_eq!(first.unwrap().to_vec(), data);
    let (stopped, rest) =
        soon(async { tokio::join!(daemon.stop(), many.collect::<Vec<_>>()) }).await;
    stopped.unwrap();
    assert_eq!(rest.len(), 1999, "every fetch answered");
    let mut failed = 0;
    for (index, result) in rest {
        match result {
            Ok(fetched) => assert_eq!(fetched.to_vec(), data, "fetch {index}"),
            Err(error) => {
                assert!(error.is_unavailable(), "{error}");
                assert!(error.to_string().contains(&address), "{error}");
                failed += 1;
            }
        }
    }
    assert!(
        failed > 0,
        "the daemon answered every fetch despite stopping"
    );

    let error = soon(session.fetch(&uri, None)).await.unwrap_err();
    assert!(error.is_unavailable(), "later fetches fail too: {error}");
    assert!(error.to_string().contains(&address), "{error}");
    assert_eq!(held.to_vec(), &data[..], "held results stay readable");
}
