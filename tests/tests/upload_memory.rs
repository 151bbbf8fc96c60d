//! Uploads through shared memory against a real daemon: a client's memory
//! file registered on the descriptor socket, `Upload` messages naming its
//! ranges. What a hostile local client can send — a file that is not a
//! memory file, a token that is not its own, ranges past the end, a file
//! shrunk under the daemon — fails cleanly with the URI named and leaves no
//! object, and the daemon keeps serving.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sluice_proto::fdpass;
use sluice_proto::v1;
use sluice_proto::v1::sluice_client::SluiceClient;
use sluice_proto::v1::upload_response::Msg as Answer;
use sluice_proto::v1::write_request::Msg;
use sluice_tests::daemon::TestDaemon;
use sluice_tests::grpc::{connect, http_get, metric, pattern, read};
use tonic::Code;
use tonic::transport::Channel;

fn fd_socket(d: &TestDaemon) -> PathBuf {
    let mut p = d.socket().as_os_str().to_owned();
    p.push(".fds");
    PathBuf::from(p)
}

fn memfd(data: &[u8]) -> std::fs::File {
    // SAFETY: a valid C string; the result is checked.
    let fd = unsafe { libc::memfd_create(c"upload-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: a fresh descriptor nothing else owns.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.write_all(data).unwrap();
    f
}

/// A connection to the descriptor socket that registered `file`: the
/// connection (the registration lives while it is open) and the answer.
fn register(d: &TestDaemon, file: &impl AsFd) -> (UnixStream, Result<Vec<u8>, String>) {
    let sock = UnixStream::connect(fd_socket(d)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    drop(fdpass::recv_segments(&sock).unwrap());
    fdpass::send_registration(&sock, file.as_fd()).unwrap();
    let answer = fdpass::recv_registered(&sock).unwrap();
    (sock, answer.map(|t| t.to_vec()))
}

fn header(uri: &str, token: &[u8]) -> v1::WriteRequest {
    v1::WriteRequest {
        msg: Some(Msg::Header(v1::WriteHeader {
            uri: uri.to_owned(),
            size_hint: 0,
            shared_memory: Bytes::copy_from_slice(token),
        })),
    }
}

fn shared(offset: u64, length: u64) -> v1::WriteRequest {
    v1::WriteRequest {
        msg: Some(Msg::Shared(v1::SharedRange { offset, length })),
    }
}

fn trailer(total_size: u64) -> v1::WriteRequest {
    v1::WriteRequest {
        msg: Some(Msg::Trailer(v1::WriteTrailer { total_size })),
    }
}

/// Runs one `Upload` with `messages`; the `consumed` counts seen, then the
/// response or the error.
async fn upload(
    client: &mut SluiceClient<Channel>,
    messages: Vec<v1::WriteRequest>,
) -> (Vec<u64>, Result<v1::WriteResponse, tonic::Status>) {
    let mut answers = match client.upload(futures::stream::iter(messages)).await {
        Ok(r) => r.into_inner(),
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut consumed = Vec::new();
    loop {
        match answers.next().await {
            Some(Ok(v1::UploadResponse {
                msg: Some(Answer::Consumed(n)),
            })) => consumed.push(n),
            Some(Ok(v1::UploadResponse {
                msg: Some(Answer::Done(done)),
            })) => return (consumed, Ok(done)),
            Some(Err(status)) => return (consumed, Err(status)),
            other => panic!("unexpected answer {other:?}"),
        }
    }
}

async fn assert_absent(client: &mut SluiceClient<Channel>, uri: &str) {
    let err = client
        .stat(v1::StatRequest { uri: uri.into() })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "{uri}: a failed upload left an object"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_of_a_registered_memory_file_become_the_object() {
    let d = TestDaemon::start_with(|c| c.write.part_size = sluice_engine::ByteSize::mib(5)).await;
    let mut client = connect(d.socket()).await;
    // Three parts' worth, in ranges that cross part boundaries, read out of
    // order from the file: the object is the ranges in message order.
    let data = pattern(12 << 20, 3);
    let file = memfd(&data);
    let (_conn, token) = register(&d, &file);
    let token = token.expect("a memory file is accepted");
    assert_eq!(token.len(), fdpass::TOKEN_LEN);
    let uri = d.file_uri("up/object");
    let pieces = [(6 << 20, 6 << 20), (0, 3 << 20), (3 << 20, 3 << 20)];
    let mut messages = vec![header(&uri, &token)];
    messages.extend(pieces.iter().map(|&(o, l)| shared(o, l)));
    messages.push(trailer(12 << 20));
    let (consumed, done) = upload(&mut client, messages).await;
    let done = done.unwrap();
    assert_eq!(done.meta.unwrap().size, 12 << 20);
    assert_eq!(done.parts, 3);
    assert_eq!(
        consumed.last(),
        Some(&(12 << 20)),
        "every byte reported consumed"
    );
    assert!(consumed.windows(2).all(|w| w[0] < w[1]), "{consumed:?}");
    let mut want = data[6 << 20..].to_vec();
    want.extend_from_slice(&data[..6 << 20]);
    assert!(read(&mut client, &uri, None).await.unwrap().1 == want);

    // Shared ranges and inline data mix; a hole in the file reads as zeros.
    file.set_len((12 << 20) + 4096).unwrap();
    let uri = d.file_uri("up/mixed");
    let inline = v1::WriteRequest {
        msg: Some(Msg::Data(Bytes::from_static(b"inline"))),
    };
    let messages = vec![
        header(&uri, &token),
        shared(0, 10),
        inline,
        shared(12 << 20, 4),
        trailer(20),
    ];
    let (_, done) = upload(&mut client, messages).await;
    done.unwrap();
    let mut want = data[..10].to_vec();
    want.extend_from_slice(b"inline\0\0\0\0");
    assert_eq!(read(&mut client, &uri, None).await.unwrap().1, want);

    let (status, body) = http_get(d.http(), "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &body,
            r#"sluice_rpc_requests_total{method="upload",code="ok"}"#
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_registrations_and_ranges_fail_cleanly() {
    let d = TestDaemon::start_with(|c| c.write.part_size = sluice_engine::ByteSize::mib(5)).await;
    let mut client = connect(d.socket()).await;

    // Only memory files: not a file on disk, not a socket, not a file the
    // client cannot read.
    let on_disk = tempfile::tempfile().unwrap();
    let (_, answer) = register(&d, &on_disk);
    assert!(answer.unwrap_err().contains("not a memory file"));
    let (a, _b) = UnixStream::pair().unwrap();
    let (_, answer) = register(&d, &a);
    assert!(answer.is_err(), "a socket was accepted");
    let file = memfd(&pattern(1 << 20, 5));
    let write_only = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .unwrap();
    let (_, answer) = register(&d, &write_only);
    assert!(answer.unwrap_err().contains("not open for reading"));

    let (conn, token) = register(&d, &file);
    let token = token.unwrap();
    let uri = d.file_uri("up/hostile");

    // A token nobody registered.
    let (_, res) = upload(
        &mut client,
        vec![header(&uri, &[0xAB; 16]), shared(0, 1), trailer(1)],
    )
    .await;
    let err = res.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains(&uri), "{}", err.message());
    // Write (not Upload) does not take shared memory.
    let messages = vec![header(&uri, &token), shared(0, 1), trailer(1)];
    let err = client
        .write(futures::stream::iter(messages))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    // A shared range with no memory file named.
    let (_, res) = upload(
        &mut client,
        vec![header(&uri, &[]), shared(0, 1), trailer(1)],
    )
    .await;
    assert_eq!(res.unwrap_err().code(), Code::InvalidArgument);
    // Past the end of the file, and a range whose end overflows.
    for range in [
        shared(1 << 20, 1),
        shared((1 << 20) - 10, 11),
        shared(u64::MAX, 2),
        shared(1 << 63, 1),
    ] {
        let (_, res) = upload(&mut client, vec![header(&uri, &token), range, trailer(1)]).await;
        let err = res.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        assert!(err.message().contains(&uri), "{}", err.message());
    }
    // Shrunk under the daemon after the first part: the upload fails.
    let messages = vec![
        header(&uri, &token),
        shared(0, 1 << 20),
        shared(0, 1 << 20),
        shared(0, 1 << 20),
        shared(0, 1 << 20),
        shared(0, 1 << 20),
    ];
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for m in messages {
        tx.send(m).unwrap();
    }
    let mut answers = client.upload(tokio_stream(rx)).await.unwrap().into_inner();
    // The first part is full (5 MiB) once all five are consumed.
    loop {
        match answers.next().await.unwrap().unwrap().msg {
            Some(Answer::Consumed(n)) if n == 5 << 20 => break,
            Some(Answer::Consumed(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    file.set_len(100).unwrap();
    tx.send(shared(0, 1 << 20)).unwrap();
    tx.send(trailer(6 << 20)).unwrap();
    let err = loop {
        match answers.next().await {
            Some(Ok(_)) => {}
            Some(Err(status)) => break status,
            None => panic!("the upload ended without an error"),
        }
    };
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    drop(tx);
    assert_absent(&mut client, &uri).await;

    // Closing the descriptor-socket connection ends the registration.
    file.set_len(1 << 20).unwrap();
    drop(conn);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, res) = upload(
            &mut client,
            vec![header(&uri, &token), shared(0, 1), trailer(1)],
        )
        .await;
        match res {
            Err(status) if status.code() == Code::FailedPrecondition => break,
            Ok(_) => {
                client
                    .delete(v1::DeleteRequest {
                        uri: uri.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
            Err(status) => panic!("{status:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the registration outlived its connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_absent(&mut client, &uri).await;
    // The daemon still serves everyone.
    let (_conn, ok) = register(&d, &memfd(b"fine"));
    let token = ok.unwrap();
    let (_, done) = upload(
        &mut client,
        vec![header(&uri, &token), shared(0, 4), trailer(4)],
    )
    .await;
    done.unwrap();
    assert_eq!(read(&mut client, &uri, None).await.unwrap().1, b"fine");
}

fn tokio_stream(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<v1::WriteRequest>,
) -> impl futures::Stream<Item = v1::WriteRequest> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The client library uploads through shared memory by default, through
/// `Write` when told not to, and falls back to `Write` on its own when the
/// daemon offers no shared memory — the bytes the same every way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_uploads_through_shared_memory_and_falls_back() {
    let count = |body: &str, method: &str| {
        metric(
            body,
            &format!(r#"sluice_rpc_requests_total{{method="{method}",code="ok"}}"#),
        )
    };
    let d = TestDaemon::start_with(|c| c.write.part_size = sluice_engine::ByteSize::mib(5)).await;
    let client = sluice_client::Client::connect(&d.address()).await.unwrap();
    assert!(client.shared_uploads());
    let data = Bytes::from(pattern((17 << 20) + 3, 8));
    for i in 0..3 {
        let uri = d.file_uri(&format!("c/{i}"));
        let written = client.put(&uri, data.clone()).await.unwrap();
        assert_eq!((written.meta.size, written.parts), (data.len() as u64, 4));
        assert!(client.read_to_bytes(&uri, None).await.unwrap() == data);
    }
    let reader = std::io::Cursor::new(data.to_vec());
    client
        .write_reader(&d.file_uri("c/reader"), reader, data.len() as u64)
        .await
        .unwrap();
    assert!(std::fs::read(d.root().join("c/reader")).unwrap() == data);
    let plain = client.clone().with_shared_uploads(false);
    plain
        .put(&d.file_uri("c/plain"), data.clone())
        .await
        .unwrap();
    assert!(std::fs::read(d.root().join("c/plain")).unwrap() == data);
    let (_, body) = http_get(d.http(), "/metrics").await;
    assert_eq!((count(&body, "upload"), count(&body, "write")), (4.0, 1.0));

    let d = TestDaemon::start_with(|c| c.session.shared_memory = false).await;
    let client = sluice_client::Client::connect(&d.address()).await.unwrap();
    client.put(&d.file_uri("f"), data.clone()).await.unwrap();
    assert!(
        !client.shared_uploads(),
        "no descriptor socket: Write from now on"
    );
    assert!(std::fs::read(d.root().join("f")).unwrap() == data);
    let (_, body) = http_get(d.http(), "/metrics").await;
    assert_eq!((count(&body, "upload"), count(&body, "write")), (0.0, 1.0));
}

/// A reader that gives `data`, then nothing, forever.
struct Stalls(Vec<u8>);

impl tokio::io::AsyncRead for Stalls {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.0.is_empty() {
            return std::task::Poll::Pending;
        }
        let n = self.0.len().min(buf.remaining());
        buf.put_slice(&self.0[..n]);
        self.0.drain(..n);
        std::task::Poll::Ready(Ok(()))
    }
}

/// The daemon's refusal ends an upload even while the caller's reader has
/// nothing more to give (here: more bytes than the size announced, then a
/// reader that never ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_ends_while_the_reader_stalls() {
    let d = TestDaemon::start().await;
    let client = sluice_client::Client::connect(&d.address()).await.unwrap();
    let uri = d.file_uri("stalled");
    let upload = client.write_reader(&uri, Stalls(pattern(2 << 20, 1)), 1 << 20);
    let err = tokio::time::timeout(Duration::from_secs(60), upload)
        .await
        .expect("the refusal ends the upload")
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.to_string().contains(&uri), "{err}");
    assert!(std::fs::read(d.root().join("stalled")).is_err());
}

/// A reader that gives 100 bytes at a time and is "not ready" in between.
struct Trickle(Vec<u8>, bool);

impl tokio::io::AsyncRead for Trickle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.1 = !self.1;
        if self.1 {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        let n = self.0.len().min(buf.remaining()).min(100);
        buf.put_slice(&self.0[..n]);
        self.0.drain(..n);
        std::task::Poll::Ready(Ok(()))
    }
}

/// A caller that gives its bytes a little at a time makes thousands of
/// small ranges; they all arrive, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_ranges_arrive_in_order() {
    let d = TestDaemon::start().await;
    let client = sluice_client::Client::connect(&d.address()).await.unwrap();
    let data = pattern(300_000, 9);
    let uri = d.file_uri("trickle");
    let written = client
        .write_reader(&uri, Trickle(data.clone(), false), 0)
        .await
        .unwrap();
    assert_eq!(written.meta.size, data.len() as u64);
    assert!(std::fs::read(d.root().join("trickle")).unwrap() == data);
    let (_, body) = http_get(d.http(), "/metrics").await;
    assert_eq!(
        metric(
            &body,
            r#"sluice_rpc_requests_total{method="upload",code="ok"}"#
        ),
        1.0
    );
}
