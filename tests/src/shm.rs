//! A raw shared-memory session for tests: the descriptor socket, read-only
//! mappings, and the Session stream, without the client library — so the
//! tests check the wire contract itself.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use sluice_proto::v1;
use sluice_proto::v1::session_request::Msg as In;
use sluice_proto::v1::session_response::Msg as Out;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// One segment mapped read-only.
#[derive(Debug)]
pub struct Mapping {
    ptr: *const u8,
    len: usize,
}

// SAFETY: a read-only shared mapping may be read from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// `len` bytes at `offset`.
    pub fn slice(&self, offset: u64, len: u64) -> &[u8] {
        assert!(
            offset + len <= self.len as u64,
            "extent outside its segment"
        );
        // SAFETY: within the mapping, which lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.add(offset as usize), len as usize) }
    }

    /// Whether `p` points into this mapping.
    pub fn contains(&self, p: *const u8) -> bool {
        p >= self.ptr && p < self.ptr.wrapping_add(self.len)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping what `map_segments` mapped.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// Receives the segment descriptors from `fd_socket` and maps them read-only.
pub fn map_segments(fd_socket: &Path) -> HashMap<u32, Mapping> {
    let sock =
        std::os::unix::net::UnixStream::connect(fd_socket).expect("connect descriptor socket");
    let segments = sluice_proto::fdpass::recv_segments(&sock).expect("receive descriptors");
    segments
        .into_iter()
        .map(|s| {
            use std::os::fd::AsRawFd;
            // SAFETY: mapping a memfd we own, read-only and shared.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    s.size as usize,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    s.fd.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(ptr, libc::MAP_FAILED, "mmap segment {}", s.id);
            (
                s.id,
                Mapping {
                    ptr: ptr as *const u8,
                    len: s.size as usize,
                },
            )
        })
        .collect()
}

/// An open session.
#[derive(Debug)]
pub struct RawSession {
    /// Requests to the daemon.
    pub tx: mpsc::Sender<v1::SessionRequest>,
    /// Responses from the daemon.
    pub rx: tonic::Streaming<v1::SessionResponse>,
    /// The daemon's answer to open.
    pub opened: v1::SessionOpened,
    /// Responses of a batch not handed out yet.
    unbatched: VecDeque<Out>,
    /// `ResponseBatch` messages received so far.
    pub batches_received: usize,
}

impl RawSession {
    /// Opens a session on `client`, one response per message.
    pub async fn open(
        client: &mut v1::sluice_client::SluiceClient<tonic::transport::Channel>,
        shared_memory: bool,
    ) -> RawSession {
        Self::open_with(client, shared_memory, false).await
    }

    /// Opens a session on `client`, accepting batched responses if
    /// `batches`.
    pub async fn open_with(
        client: &mut v1::sluice_client::SluiceClient<tonic::transport::Channel>,
        shared_memory: bool,
        batches: bool,
    ) -> RawSession {
        let (tx, rx) = mpsc::channel(1024);
        let open = v1::SessionOpen {
            shared_memory,
            pid: std::process::id(),
            batches,
        };
        tx.send(v1::SessionRequest {
            msg: Some(In::Open(open)),
        })
        .await
        .unwrap();
        let mut rx = client
            .session(ReceiverStream::new(rx))
            .await
            .expect("session")
            .into_inner();
        let opened = match rx.message().await.unwrap().and_then(|m| m.msg) {
            Some(Out::Opened(o)) => o,
            other => panic!("expected opened, got {other:?}"),
        };
        RawSession {
            tx,
            rx,
            opened,
            unbatched: VecDeque::new(),
            batches_received: 0,
        }
    }

    /// Sends a fetch.
    pub async fn fetch(&self, id: u64, uri: &str, range: Option<v1::ByteRange>) {
        let f = v1::FetchRequest {
            id,
            uri: uri.to_owned(),
            range,
        };
        self.tx
            .send(v1::SessionRequest {
                msg: Some(In::Fetch(f)),
            })
            .await
            .unwrap();
    }

    /// Sends fetches `(id, uri)` in one `FetchBatch`.
    pub async fn fetch_batch(&self, fetches: &[(u64, String)]) {
        let fetches = fetches
            .iter()
            .map(|(id, uri)| v1::FetchRequest {
                id: *id,
                uri: uri.clone(),
                range: None,
            })
            .collect();
        self.tx
            .send(v1::SessionRequest {
                msg: Some(In::FetchBatch(v1::FetchBatch { fetches })),
            })
            .await
            .unwrap();
    }

    /// Releases leases.
    pub async fn release(&self, lease_ids: Vec<u64>) {
        let r = v1::ReleaseRequest { lease_ids };
        self.tx
            .send(v1::SessionRequest {
                msg: Some(In::Release(r)),
            })
            .await
            .unwrap();
    }

    /// The next response (the responses of a batch one by one).
    pub async fn next(&mut self) -> Out {
        loop {
            if let Some(next) = self.unbatched.pop_front() {
                return next;
            }
            let msg = self
                .rx
                .message()
                .await
                .expect("session stream")
                .expect("session open")
                .msg
                .expect("message");
            let Out::Batch(batch) = msg else {
                return msg;
            };
            self.batches_received += 1;
            assert!(!batch.responses.is_empty(), "an empty batch");
            for response in batch.responses {
                let response = response.msg.expect("message in a batch");
                assert!(!matches!(response, Out::Batch(_)), "a nested batch");
                self.unbatched.push_back(response);
            }
        }
    }
}
