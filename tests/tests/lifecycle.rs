//! The daemon killed (SIGKILL) and restarted on the same socket under a
//! client that keeps going: every call made while it is down fails promptly
//! with UNAVAILABLE naming the daemon's address (never a hang, a panic or a
//! crash on a vanished mapping); calls broken midway fail the same way;
//! leases already held stay readable and byte-exact; after the restart the
//! same `Client` works again on its next call, and a session, whose state
//! died with the daemon, says to open a new one.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use sluice_client::{Client, Delivery, Error, Fetched, SessionOptions};
use sluice_tests::daemon::DaemonProcess;
use sluice_tests::grpc::pattern;

const MIB: usize = 1 << 20;

/// What "promptly" means for a call to a dead daemon: it fails at once (the
/// socket refuses), so this only guards against a hang, on any machine.
const NO_HANG: Duration = Duration::from_secs(30);

/// A daemon process with a small part size, so that reads of a few MiB run
/// as several parts and several stream messages.
async fn spawn() -> DaemonProcess {
    tokio::task::spawn_blocking(|| {
        DaemonProcess::spawn(&["--memory-budget", "128MiB", "--log-level", "warn"])
    })
    .await
    .unwrap()
}

async fn kill(mut d: DaemonProcess) -> DaemonProcess {
    tokio::task::spawn_blocking(move || {
        d.kill();
        d
    })
    .await
    .unwrap()
}

async fn restart(mut d: DaemonProcess) -> DaemonProcess {
    tokio::task::spawn_blocking(move || {
        d.restart();
        d
    })
    .await
    .unwrap()
}

/// `n` files `o00`, `o01`, … of `size` bytes; their URIs and contents.
fn objects(root: &Path, n: usize, size: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let data = pattern(size + i, i as u8);
            let path = root.join(format!("o{i:02}"));
            std::fs::write(&path, &data).unwrap();
            (format!("file://{}", path.display()), data)
        })
        .collect()
}

/// Runs `call` with a hang guard.
async fn no_hang<T>(what: &str, call: impl Future<Output = T>) -> T {
    tokio::time::timeout(NO_HANG, call)
        .await
        .unwrap_or_else(|_| panic!("{what} hangs with the daemon gone"))
}

/// The error of a call to a daemon that is gone: UNAVAILABLE, naming it.
#[track_caller]
fn assert_daemon_gone(what: &str, error: &Error, address: &str) {
    assert!(
        error.is_unavailable(),
        "{what}: {error} ({:?})",
        error.code()
    );
    assert!(
        error.to_string().contains(address),
        "{what}: the message names the daemon's address: {error}"
    );
}

fn assert_exact(fetched: &Fetched, want: &[u8]) {
    assert_eq!(fetched.len(), want.len() as u64);
    assert!(fetched.to_vec() == want, "bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_fails_clearly_while_the_daemon_is_down_and_works_after_it_returns() {
    let d = spawn().await;
    let objs = objects(&d.root, 3, 300_000);
    let (uri, data) = &objs[0];
    let address = d.address();
    let client = Client::connect(&address).await.unwrap();
    assert_eq!(client.read_to_bytes(uri, None).await.unwrap(), &data[..]);

    let d = kill(d).await;
    let e = no_hang("stat", client.stat(uri)).await.unwrap_err();
    assert_daemon_gone("stat", &e, &address);
    let e = no_hang("read", client.read_to_bytes(uri, None))
        .await
        .unwrap_err();
    assert_daemon_gone("read", &e, &address);
    let e = no_hang("read_many", client.read_many([uri.as_str()], 0, true))
        .await
        .unwrap_err();
    assert_daemon_gone("read_many", &e, &address);
    let e = no_hang("list", client.list_page(uri, "", 0, None))
        .await
        .unwrap_err();
    assert_daemon_gone("list", &e, &address);
    let e = no_hang("write", client.put(uri, data.clone().into()))
        .await
        .unwrap_err();
    assert_daemon_gone("write", &e, &address);
    let e = no_hang("delete", client.delete(uri, false))
        .await
        .unwrap_err();
    assert_daemon_gone("delete", &e, &address);
    for delivery in [Delivery::Auto, Delivery::SharedMemory, Delivery::Stream] {
        let options = SessionOptions {
            delivery,
            ..Default::default()
        };
        let e = no_hang("session", client.session(options))
            .await
            .unwrap_err();
        // Shared memory is set up first, through the descriptor socket
        // beside the gRPC socket, which the error names.
        let named = match delivery {
            Delivery::SharedMemory => format!("{}.fds", d.socket.display()),
            _ => address.clone(),
        };
        assert_daemon_gone(&format!("session {delivery:?}"), &e, &named);
    }
    let e = no_hang("connect", Client::connect(&address))
        .await
        .unwrap_err();
    assert_daemon_gone("connect", &e, &address);

    // Back on the same socket: the same client's next calls work.
    let d = restart(d).await;
    assert_eq!(client.stat(uri).await.unwrap().size, data.len() as u64);
    assert_eq!(client.read_to_bytes(uri, None).await.unwrap(), &data[..]);
    let mut many = client
        .read_many(objs.iter().map(|(u, _)| u.as_str()), 0, true)
        .await
        .unwrap();
    for (i, (_, want)) in objs.iter().enumerate() {
        let (index, result) = many.next().await.unwrap();
        assert_eq!(index, i);
        assert!(result.unwrap().1 == want[..], "item {i}");
    }
    let s = client.session(SessionOptions::default()).await.unwrap();
    assert!(
        s.shared_memory(),
        "a session after the restart maps the new arena"
    );
    assert_exact(&s.fetch(uri, None).await.unwrap(), data);
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_many_cut_by_the_daemons_death_fails_its_owed_items_clearly() {
    let d = spawn().await;
    let objs = objects(&d.root, 48, MIB);
    let address = d.address();
    let client = Client::connect(&address).await.unwrap();
    let mut many = client
        .read_many(objs.iter().map(|(u, _)| u.as_str()), 2, true)
        .await
        .unwrap();
    let (index, first) = many.next().await.unwrap();
    assert_eq!(index, 0);
    assert!(first.unwrap().1 == objs[0].1[..]);

    let d = kill(d).await;
    let rest: Vec<_> = no_hang("the rest of read_many", many.collect()).await;
    assert_eq!(rest.len(), objs.len() - 1, "one result per item");
    let mut failed = 0;
    for (index, result) in rest {
        match result {
            Ok((_, bytes)) => assert!(bytes == objs[index].1[..], "item {index}"),
            Err(e) => {
                assert_daemon_gone(&format!("item {index}"), &e, &address);
                failed += 1;
            }
        }
    }
    // HTTP/2 windows hold a few MiB ahead of the consumer, not 47.
    assert!(failed > 0, "items owed when the daemon died fail");

    let d = restart(d).await;
    let mut many = client
        .read_many(objs.iter().map(|(u, _)| u.as_str()), 4, false)
        .await
        .unwrap();
    let mut seen = 0;
    while let Some((index, result)) = many.next().await {
        assert!(result.unwrap().1 == objs[index].1[..], "item {index}");
        seen += 1;
    }
    assert_eq!(seen, objs.len());
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_cut_midway_fails_clearly() {
    let d = spawn().await;
    let objs = objects(&d.root, 1, 24 * MIB);
    let (uri, data) = &objs[0];
    let address = d.address();
    let client = Client::connect(&address).await.unwrap();
    let mut read = client.read(uri, None).await.unwrap();
    let first = read.next().await.unwrap().unwrap();
    assert!(first[..] == data[..first.len()]);

    let d = kill(d).await;
    let mut got = first.len();
    let error = no_hang("the rest of the read", async {
        loop {
            match read.next().await {
                Some(Ok(chunk)) => {
                    assert!(chunk[..] == data[got..got + chunk.len()]);
                    got += chunk.len();
                }
                Some(Err(e)) => break e,
                None => panic!("a read of 24 MiB ended without error after {got} bytes"),
            }
        }
    })
    .await;
    assert!(got < data.len());
    assert_daemon_gone("read", &error, &address);

    let d = restart(d).await;
    assert!(client.read_to_bytes(uri, None).await.unwrap() == data[..]);
    drop(d);
}

/// A session's fetches cut by the daemon's death; `delivery` is shared
/// memory or the stream.
async fn session_cut_midway(delivery: Delivery) {
    let d = spawn().await;
    let objs = objects(&d.root, 48, 512 << 10);
    let address = d.address();
    let client = Client::connect(&address).await.unwrap();
    let options = SessionOptions {
        delivery,
        window: 8,
    };
    let s = client.session(options).await.unwrap();
    assert_eq!(s.shared_memory(), delivery == Delivery::SharedMemory);
    let mut results = Box::pin(s.fetch_many(objs.iter().map(|(u, _)| u.as_str()), true));
    let mut held = Vec::new();
    for (i, (_, want)) in objs.iter().enumerate().take(2) {
        let (index, fetched) = results.next().await.unwrap();
        assert_eq!(index, i);
        let fetched = fetched.unwrap();
        assert_exact(&fetched, want);
        held.push(fetched);
    }

    let d = kill(d).await;
    // What is held stays readable: the mapping of the memfd outlives the
    // daemon.
    for (i, fetched) in held.iter().enumerate() {
        assert_exact(fetched, &objs[i].1);
    }
    let rest: Vec<_> = no_hang("the rest of fetch_many", results.collect()).await;
    let mut failed = 0;
    for (index, result) in rest {
        match result {
            Ok(fetched) => assert_exact(&fetched, &objs[index].1),
            Err(e) => {
                assert_daemon_gone(&format!("fetch {index}"), &e, &address);
                failed += 1;
            }
        }
    }
    assert!(failed > 0, "fetches owed when the daemon died fail");
    let (uri, data) = &objs[0];
    let e = no_hang("fetch", s.fetch(uri, None)).await.unwrap_err();
    assert_daemon_gone("a later fetch", &e, &address);
    assert!(
        e.to_string().contains("open a new session"),
        "the message says what to do: {e}"
    );

    let d = restart(d).await;
    // The old session stays closed (its leases and ids died with the
    // daemon) and keeps saying so; a new one on the same client works.
    let e = s.fetch(uri, None).await.unwrap_err();
    assert_daemon_gone("the old session after the restart", &e, &address);
    let fresh = client.session(options).await.unwrap();
    assert_ne!(fresh.session_id(), 0);
    let fetched = fresh.fetch(uri, None).await.unwrap();
    assert_exact(&fetched, data);
    if delivery == Delivery::SharedMemory {
        assert!(fetched.parts.iter().all(|p| p.is_mapped()));
        assert!(fresh.is_mapped(fetched.parts[0].as_ptr()));
        assert!(!s.is_mapped(fetched.parts[0].as_ptr()), "a new arena");
    }
    // Still readable after the restart, and after the old session is gone.
    drop(s);
    for (i, fetched) in held.iter().enumerate() {
        assert_exact(fetched, &objs[i].1);
    }
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_memory_session_cut_midway_keeps_its_leases_and_a_new_one_works() {
    session_cut_midway(Delivery::SharedMemory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_session_cut_midway_fails_clearly_and_a_new_one_works() {
    session_cut_midway(Delivery::Stream).await;
}
