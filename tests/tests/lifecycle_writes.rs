//! SIGTERM while large writes stream, to `file://` and to `s3://` (the
//! s3s-fs server, multipart): no partial object ever becomes visible. Some
//! writers finish after the signal (within the grace period, or cancelled
//! past it), others stall until the daemon cancels them. Afterwards every
//! object, read straight from the backend's directory, is absent, its old
//! content, or the complete new content, byte for byte — the new one
//! whenever the writer was told it succeeded — and no temporary file or
//! pending upload is left behind. The restarted daemon serves the same
//! bytes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::Client;
use sluice_tests::daemon::DaemonProcess;
use sluice_tests::grpc::{http_get, metric, pattern};
use sluice_tests::s3server::{ACCESS_KEY, S3Server, SECRET_KEY};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

const MIB: usize = 1 << 20;
/// Each object: three 5 MiB parts and a bit; half of it is sent before the
/// signal.
const SIZE: usize = 15 * MIB + 4321;
const BEFORE: usize = 8 * MIB;
const BUCKET: &str = "ckpt";

/// How a writer behaves once the daemon got SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq)]
enum After {
    /// Sends the rest and the trailer.
    Finish,
    /// Sends nothing more: the daemon cancels it past the grace period.
    Stall,
}

struct Object {
    uri: String,
    /// Where the backend keeps it.
    path: PathBuf,
    old: Option<Vec<u8>>,
    new: Vec<u8>,
    after: After,
}

/// Every file below `dir`, as paths relative to it.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                let rel = entry.path().strip_prefix(dir).unwrap().to_owned();
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Streams `data` to `uri`: `BEFORE` bytes at once, the rest (and the
/// trailer) once `go` says so, or never for a stalling writer.
async fn writer(
    client: Client,
    uri: String,
    data: Vec<u8>,
    after: After,
    mut go: watch::Receiver<bool>,
) -> sluice_client::Result<()> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let data = Bytes::from(data);
    let feed = tokio::spawn(async move {
        for chunk in data.slice(..BEFORE).chunks(MIB) {
            let _ = tx.send(Bytes::copy_from_slice(chunk)).await;
        }
        let _ = go.wait_for(|g| *g).await;
        match after {
            After::Finish => {
                for chunk in data.slice(BEFORE..).chunks(MIB) {
                    let _ = tx.send(Bytes::copy_from_slice(chunk)).await;
                }
            }
            // Holds the stream open, sending nothing, until the call ends.
            After::Stall => tx.closed().await,
        }
    });
    let written = client
        .write(&uri, ReceiverStream::new(rx), SIZE as u64)
        .await;
    feed.abort();
    written.map(|w| assert_eq!(w.meta.size, SIZE as u64))
}

/// Bytes the daemon received from writers so far: on the stream (`Write`)
/// or from shared memory (`Upload`).
async fn received(http: std::net::SocketAddr) -> f64 {
    let body = http_get(http, "/metrics").await.1;
    ["write", "upload"]
        .iter()
        .map(|m| {
            metric(
                &body,
                &format!("sluice_rpc_received_bytes_total{{method=\"{m}\"}}"),
            )
        })
        .sum()
}

/// Waits until the daemon has received `bytes` of writes.
async fn wait_received(http: std::net::SocketAddr, bytes: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = received(http).await;
        if got >= bytes as f64 {
            return;
        }
        assert!(Instant::now() < deadline, "writes stuck at {got} bytes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_large_writes_never_leaves_a_partial_object() {
    let s3 = S3Server::start().await;
    s3.bucket(BUCKET).await;
    let env = [
        ("SLUICE_STORAGE__S3__ENDPOINT", s3.endpoint_url()),
        ("SLUICE_STORAGE__S3__FORCE_PATH_STYLE", "true".into()),
        ("SLUICE_STORAGE__S3__REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ("SLUICE_WRITE__PART_SIZE", "5MiB".into()),
        // Long enough for the finishing writers on an idle machine; on a
        // loaded one they are cancelled instead, which the checks allow.
        ("SLUICE_SERVER__GRACE_PERIOD", "5s".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let d = tokio::task::block_in_place(|| {
        DaemonProcess::spawn_with_env(&["--memory-budget", "256MiB"], &env)
    });
    let client = Client::connect(&d.address()).await.unwrap();
    let bucket_dir = s3.data_dir().join(BUCKET);

    let mut objects = Vec::new();
    for i in 0..8u8 {
        let after = if i % 2 == 0 {
            After::Finish
        } else {
            After::Stall
        };
        let (uri, path) = if i < 4 {
            let name = format!("ckpt/file-{i}");
            let uri = format!("file://{}/{name}", d.root.display());
            (uri, d.root.join(&name))
        } else {
            (
                format!("s3://{BUCKET}/obj-{i}"),
                bucket_dir.join(format!("obj-{i}")),
            )
        };
        // Half of them replace an object that exists.
        let old = (i % 4 >= 2).then(|| pattern(3 * MIB + i as usize, 100 + i));
        if let Some(old) = &old {
            client.put(&uri, Bytes::from(old.clone())).await.unwrap();
            assert!(std::fs::read(&path).unwrap() == *old);
        }
        objects.push(Object {
            uri,
            path,
            old,
            new: pattern(SIZE, i),
            after,
        });
    }
    let sent_before = received(d.http()).await;

    let (go, wait) = watch::channel(false);
    // Every third one sends its bytes on the stream, the others through
    // shared memory: both calls are cut by the shutdown.
    let writers = futures::future::join_all(objects.iter().enumerate().map(|(i, o)| {
        let client = client.clone().with_shared_uploads(i % 3 != 0);
        let (uri, data) = (o.uri.clone(), o.new.clone());
        writer(client, uri, data, o.after, wait.clone())
    }));
    let signal = async {
        wait_received(d.http(), sent_before as usize + objects.len() * BEFORE).await;
        d.signal(libc::SIGTERM);
        go.send(true).unwrap();
    };
    let (results, ()) = tokio::time::timeout(Duration::from_secs(240), async {
        tokio::join!(writers, signal)
    })
    .await
    .expect("every write ends once the daemon stops");
    let mut d = d;
    let status = tokio::task::block_in_place(|| d.wait_exit(Duration::from_secs(120)));
    assert!(status.success(), "sluiced exits cleanly: {status}");

    for (o, result) in objects.iter().zip(&results) {
        let outcome = result
            .as_ref()
            .map(|()| "committed")
            .map_err(ToString::to_string);
        eprintln!("{} ({:?}): {outcome:?}", o.uri, o.after);
        let now = std::fs::read(&o.path).ok();
        let what = format!("{} ({:?}, {:?})", o.uri, o.after, result);
        if o.after == After::Stall {
            assert!(result.is_err(), "{what}: a stalled write cannot succeed");
        }
        match &now {
            Some(bytes) if *bytes == o.new => {}
            Some(bytes) => {
                assert!(result.is_err(), "{what}: succeeded but holds other bytes");
                assert!(
                    o.old.as_ref() == Some(bytes),
                    "{what}: {} bytes that are neither the old nor the new object",
                    bytes.len()
                );
            }
            None => {
                assert!(result.is_err(), "{what}: succeeded but is absent");
                assert!(o.old.is_none(), "{what}: the old object vanished");
            }
        }
    }
    // Nothing but the objects: no temporary file in the file root, no
    // pending upload or part in the S3 server's store.
    let mut want: Vec<String> = objects[..4]
        .iter()
        .filter(|o| o.path.exists())
        .map(|o| o.path.strip_prefix(&d.root).unwrap().display().to_string())
        .collect();
    want.sort();
    assert_eq!(walk(&d.root), want, "file root");
    // s3s-fs keeps a pending upload as `.upload*` files and writes through
    // `.tmp.*` files, at the top of its store; an object's metadata is a
    // `.bucket-*` file there.
    let store = walk(&s3.data_dir());
    let stray: Vec<_> = store
        .iter()
        .filter(|p| !p.starts_with(".bucket-") && !p.starts_with(&format!("{BUCKET}/obj-")))
        .collect();
    assert!(stray.is_empty(), "s3 store: {store:?}");

    // The restarted daemon serves what the backends hold.
    tokio::task::block_in_place(|| d.restart());
    for o in &objects {
        match std::fs::read(&o.path) {
            Ok(bytes) => assert!(client.read_to_bytes(&o.uri, None).await.unwrap() == bytes),
            Err(_) => assert!(client.stat(&o.uri).await.unwrap_err().is_not_found()),
        }
    }
    let listed: Vec<String> = client
        .list_page(&format!("file://{}/ckpt/", d.root.display()), "", 0, None)
        .await
        .unwrap()
        .objects
        .into_iter()
        .map(|m| m.uri)
        .collect();
    assert_eq!(listed.len(), want.len(), "{listed:?}");
}
