//! `file://` as a hostile local user would try it, against the real daemon:
//! a directory swapped for a symlink to outside the root while reads,
//! writes and deletes go through it; FIFOs, sockets and devices under the
//! root; writes and deletes naming the root; escapes by `..` and symlinks.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rustix::fs::{FileType, Mode, OFlags, RenameFlags};
use sluice_proto::v1;
use sluice_proto::v1::sluice_client::SluiceClient;
use sluice_tests::daemon::{DaemonProcess, TestDaemon};
use sluice_tests::grpc::{connect, write};
use tonic::Code;
use tonic::transport::Channel;

/// Bytes that exist only outside the root: never served.
const SECRET: &[u8] = b"OUTSIDE-THE-ROOT-SECRET";
/// What the files inside the root hold.
const INSIDE: &[u8] = b"inside the root, as it should be";

/// How long the race runs: hundreds of requests through the daemon on a
/// loaded two-core machine, short enough for CI.
const RACE_FOR: Duration = Duration::from_millis(2500);

/// Fails the test if `f` does not return: a guard against a hang, not a
/// measure of speed.
async fn returns<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not return"))
}

/// Reads `uri` bypassing the cache, so every read reaches the filesystem.
async fn read_uncached(
    client: &mut SluiceClient<Channel>,
    uri: &str,
) -> Result<Vec<u8>, tonic::Status> {
    let req = v1::ReadRequest {
        uri: uri.to_owned(),
        range: None,
        no_cache: true,
    };
    let mut stream = client.read(req).await?.into_inner();
    let mut data = Vec::new();
    while let Some(msg) = stream.next().await {
        data.extend_from_slice(&msg?.data);
    }
    Ok(data)
}

async fn stat(
    client: &mut SluiceClient<Channel>,
    uri: &str,
) -> Result<v1::ObjectMeta, tonic::Status> {
    let req = v1::StatRequest {
        uri: uri.to_owned(),
    };
    Ok(client.stat(req).await?.into_inner().meta.expect("meta"))
}

async fn delete(client: &mut SluiceClient<Channel>, uri: &str) -> Result<u64, tonic::Status> {
    let req = v1::DeleteRequest {
        uri: uri.to_owned(),
        recursive: false,
        whole_bucket: false,
    };
    Ok(client.delete(req).await?.into_inner().deleted)
}

/// A directory beside the root (same parent), with the secret in it; its
/// path and a relative symlink target that reaches it from the root.
fn outside_of(root: &Path) -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let outside = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(
        outside.parent(),
        root.parent(),
        "root and outside are siblings"
    );
    for name in ["f", "victim", "secret"] {
        std::fs::write(outside.join(name), SECRET).unwrap();
    }
    let rel = format!("../{}", outside.file_name().unwrap().to_string_lossy());
    (dir, outside, rel)
}

/// Names and contents in `dir`, sorted.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let content = std::fs::read(e.path()).unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), content)
        })
        .collect();
    out.sort();
    out
}

/// Exchanges each pair under `root` and back, until told to stop.
fn swapper(root: PathBuf, pairs: [(&str, &str); 2], stop: Arc<AtomicBool>, swaps: Arc<AtomicU64>) {
    let dir = rustix::fs::open(&root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
    let exchange = |(a, b): (&str, &str)| {
        rustix::fs::renameat_with(&dir, a, &dir, b, RenameFlags::EXCHANGE).unwrap();
    };
    while !stop.load(Ordering::Relaxed) {
        for pair in pairs {
            exchange(pair);
            swaps.fetch_add(1, Ordering::Relaxed);
            std::thread::yield_now();
            exchange(pair);
        }
    }
}

#[derive(Debug, Default)]
struct Seen {
    served: u64,
    denied: u64,
}

impl Seen {
    /// Counts an outcome; a refusal must be PERMISSION_DENIED (the symlink
    /// led outside) or NOT_FOUND (a component was mid-swap).
    fn count<T>(&mut self, what: &str, r: Result<T, tonic::Status>) -> Option<T> {
        match r {
            Ok(v) => {
                self.served += 1;
                Some(v)
            }
            Err(s) if s.code() == Code::PermissionDenied => {
                self.denied += 1;
                None
            }
            Err(s) if s.code() == Code::NotFound => None,
            Err(s) => panic!("{what}: unexpected {s:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_symlink_swap_race_never_reads_writes_or_deletes_outside_the_root() {
    let d = TestDaemon::start().await;
    let root = d.root().to_path_buf();
    let (_keep, outside, rel) = outside_of(&root);
    let before = snapshot(&outside);
    for dir in ["d", "e"] {
        std::fs::create_dir(root.join(dir)).unwrap();
        std::fs::write(root.join(dir).join("f"), INSIDE).unwrap();
    }
    // `d` swaps with an absolute symlink, `e` with a relative one.
    symlink(&outside, root.join("abs")).unwrap();
    symlink(rel, root.join("rel")).unwrap();

    let (stop, swaps) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let thread = {
        let (root, stop, swaps) = (root.clone(), stop.clone(), swaps.clone());
        std::thread::spawn(move || swapper(root, [("d", "abs"), ("e", "rel")], stop, swaps))
    };
    let mut client = connect(d.socket()).await;
    let mut seen = Seen::default();
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < RACE_FOR {
        for dir in ["d", "e"] {
            let f = d.file_uri(&format!("{dir}/f"));
            if let Some(m) = seen.count("stat", stat(&mut client, &f).await) {
                assert_eq!(m.size, INSIDE.len() as u64, "stat of {f} saw another file");
            }
            if let Some(data) = seen.count("read", read_uncached(&mut client, &f).await) {
                assert!(
                    data == INSIDE,
                    "read of {f} returned {:?}",
                    String::from_utf8_lossy(&data)
                );
            }
            let w = d.file_uri(&format!("{dir}/sub{}/w{}", i % 3, i % 5));
            seen.count("write", write(&mut client, &w, b"w", 1, 0).await);
            let victim = d.file_uri(&format!("{dir}/victim"));
            seen.count("write", write(&mut client, &victim, b"v", 1, 0).await);
            seen.count("delete", delete(&mut client, &victim).await);
        }
        i += 1;
    }
    stop.store(true, Ordering::Relaxed);
    thread.join().unwrap();
    let swaps = swaps.load(Ordering::Relaxed);
    println!("{swaps} swaps, {i} rounds, {seen:?}");
    assert!(swaps > 0, "the race never ran");
    assert!(seen.denied > 0, "no request ever met the swapped symlink");
    assert!(seen.served > 0, "no request was ever served");
    assert_eq!(snapshot(&outside), before, "the outside directory changed");
}

/// A FIFO, a listening socket and, as root, a character device under `root`.
fn special_files(root: &Path) -> (Vec<&'static str>, std::os::unix::net::UnixListener) {
    let cwd = rustix::fs::CWD;
    let mode = Mode::from_raw_mode(0o666);
    rustix::fs::mknodat(cwd, root.join("fifo"), FileType::Fifo, mode, 0).unwrap();
    let socket = std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap();
    let mut names = vec!["fifo", "socket"];
    let dev = rustix::fs::makedev(1, 3); // what /dev/null is
    match rustix::fs::mknodat(cwd, root.join("null"), FileType::CharacterDevice, mode, dev) {
        Ok(()) => names.push("null"),
        Err(e) => println!("skipping the device case: mknod needs CAP_MKNOD ({e})"),
    }
    (names, socket)
}

/// PERMISSION_DENIED naming `uri`.
fn assert_denied<T: std::fmt::Debug>(what: &str, uri: &str, r: Result<T, tonic::Status>) {
    let s = r.expect_err(what);
    assert_eq!(s.code(), Code::PermissionDenied, "{what} {uri}: {s:?}");
    assert!(
        s.message().contains(uri),
        "{what}: {} does not name {uri}",
        s.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_sockets_and_devices_are_refused_without_blocking() {
    let d = TestDaemon::start().await;
    let (names, _socket) = special_files(d.root());
    let mut client = connect(d.socket()).await;
    for name in names {
        let uri = d.file_uri(name);
        let read = returns("read", sluice_tests::grpc::read(&mut client, &uri, None)).await;
        assert_denied("read", &uri, read);
        assert_denied(
            "uncached read",
            &uri,
            returns("read", read_uncached(&mut client, &uri)).await,
        );
        assert_denied("stat", &uri, returns("stat", stat(&mut client, &uri)).await);
        let over = returns("write", write(&mut client, &uri, b"x", 1, 0)).await;
        assert_denied("write over", &uri, over);
        assert_denied(
            "delete",
            &uri,
            returns("delete", delete(&mut client, &uri)).await,
        );
        let kind = d.root().join(name).symlink_metadata().unwrap().file_type();
        assert!(!kind.is_file(), "{name} is still what it was");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_still_exits_after_a_fifo_read() {
    let mut p = DaemonProcess::spawn(&[]);
    let fifo = p.root.join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        FileType::Fifo,
        Mode::from_raw_mode(0o666),
        0,
    )
    .unwrap();
    let uri = format!("file://{}", fifo.display());
    let mut client = connect(&p.socket).await;
    for _ in 0..4 {
        let read = returns("read", sluice_tests::grpc::read(&mut client, &uri, None)).await;
        assert_denied("read", &uri, read);
        assert_denied("stat", &uri, returns("stat", stat(&mut client, &uri)).await);
    }
    drop(client);
    p.signal(libc::SIGTERM);
    let status = p.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roots_escapes_and_links_behave_as_documented() {
    let d = TestDaemon::start().await;
    let root = d.root().to_path_buf();
    let (_keep, outside, up) = outside_of(&root);
    let mut client = connect(d.socket()).await;
    // The root itself is never written or deleted.
    let root_uri = format!("file://{}", root.display());
    for uri in [root_uri.clone(), format!("{root_uri}/")] {
        assert_denied("write", &uri, write(&mut client, &uri, b"x", 1, 0).await);
        assert_denied("delete", &uri, delete(&mut client, &uri).await);
    }
    assert!(root.is_dir());
    // `..`, absolute and climbing symlinks lead nowhere.
    symlink(&outside, root.join("abs")).unwrap();
    symlink(up, root.join("up")).unwrap();
    let out_name = outside.file_name().unwrap().to_string_lossy().into_owned();
    for rel in [
        format!("../{out_name}/secret"),
        "abs/secret".into(),
        "up/secret".into(),
    ] {
        let uri = d.file_uri(&rel);
        assert_denied(
            "read",
            &uri,
            sluice_tests::grpc::read(&mut client, &uri, None).await,
        );
        assert_denied("delete", &uri, delete(&mut client, &uri).await);
        let new = d.file_uri(&rel.replace("secret", "new"));
        assert_denied("write", &new, write(&mut client, &new, b"x", 1, 0).await);
    }
    // A symlink that stays beneath the root is followed.
    std::fs::create_dir(root.join("data")).unwrap();
    std::fs::write(root.join("data/f"), INSIDE).unwrap();
    symlink("data/f", root.join("latest")).unwrap();
    let (_, got) = sluice_tests::grpc::read(&mut client, &d.file_uri("latest"), None)
        .await
        .unwrap();
    assert!(got == INSIDE);
    assert_eq!(snapshot(&outside).len(), 3, "outside untouched");
    assert!(snapshot(&outside).iter().all(|(_, c)| c == SECRET));
}
