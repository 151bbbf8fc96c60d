//! An in-memory stand-in for the daemon, serving the real `sluice.v1` API on
//! a Unix socket, so the client's wire handling is tested end to end without
//! the daemon crate. It cuts reads into small chunks and pages into two
//! entries, so multi-chunk and multi-page paths run on small data. Its
//! `Session` refuses shared memory (it has no arena) and delivers chunks;
//! fetching [`HANG_UP`] ends the session with an error, as a daemon that
//! goes away would.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt, stream};
use sluice_proto::v1::sluice_server::{Sluice, SluiceServer};
use sluice_proto::v1::*;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// Read chunk size of the fake: small, so tests see several chunks.
pub const CHUNK: usize = 64 << 10;
/// Fetching this URI ends the session stream with `UNAVAILABLE`.
pub const HANG_UP: &str = "fake://hang-up";
/// Fetching this URI gets no answer (until the session ends).
pub const NO_ANSWER: &str = "fake://no-answer";
/// Entries per listing page: small, so tests walk several pages.
const PAGE: usize = 2;

type Objects = Arc<Mutex<BTreeMap<String, Bytes>>>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Debug, Clone)]
struct Fake {
    objects: Objects,
    aborted_writes: Arc<watch::Sender<usize>>,
    /// Data messages received by all uploads so far.
    data_messages: Arc<watch::Sender<usize>>,
}

/// A running fake daemon; stops when dropped.
#[derive(Debug)]
pub struct FakeDaemon {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    objects: Objects,
    aborted_writes: watch::Receiver<usize>,
    data_messages: watch::Receiver<usize>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeDaemon {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("fake.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let (aborted_tx, aborted_writes) = watch::channel(0);
        let (data_tx, data_messages) = watch::channel(0);
        let fake = Fake {
            objects: Objects::default(),
            aborted_writes: Arc::new(aborted_tx),
            data_messages: Arc::new(data_tx),
        };
        let objects = fake.objects.clone();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(SluiceServer::new(fake))
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await
                .unwrap();
        });
        FakeDaemon {
            _dir: dir,
            socket,
            objects,
            aborted_writes,
            data_messages,
            server,
        }
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    pub fn address(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn insert(&self, uri: &str, data: impl Into<Bytes>) {
        self.objects
            .lock()
            .unwrap()
            .insert(uri.to_owned(), data.into());
    }

    pub fn get(&self, uri: &str) -> Option<Bytes> {
        self.objects.lock().unwrap().get(uri).cloned()
    }

    /// Resolves once uploads have delivered `n` data messages in all.
    pub fn data_messages_reached(&self, n: usize) -> impl Future<Output = ()> + Send + 'static {
        let mut data_messages = self.data_messages.clone();
        async move {
            let wait = data_messages.wait_for(|&count| count >= n);
            tokio::time::timeout(Duration::from_secs(10), wait)
                .await
                .unwrap()
                .unwrap();
        }
    }

    /// Waits until the fake has seen `n` cancelled uploads.
    pub async fn wait_aborted_writes(&mut self, n: usize) {
        let wait = self.aborted_writes.wait_for(|&count| count >= n);
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap()
            .unwrap();
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn meta(uri: &str, data: &Bytes) -> ObjectMeta {
    ObjectMeta {
        uri: uri.to_owned(),
        size: data.len() as u64,
        etag: format!("\"{}\"", data.len()),
        ..Default::default()
    }
}

fn span(range: Option<ByteRange>, size: usize) -> Result<Range<usize>, Status> {
    let Some(range) = range else {
        return Ok(0..size);
    };
    let start = range.offset as usize;
    if start > size {
        return Err(Status::invalid_argument("range starts past the end"));
    }
    let end = if range.to_end {
        size
    } else {
        (start + range.length as usize).min(size)
    };
    Ok(start..end)
}

/// Counts an upload as aborted unless disarmed.
struct AbortOnDrop(Option<Arc<watch::Sender<usize>>>);

impl AbortOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(aborted) = self.0.take() {
            aborted.send_modify(|n| *n += 1);
        }
    }
}

impl Fake {
    fn lookup(&self, uri: &str) -> Result<Bytes, Status> {
        let objects = self.objects.lock().unwrap();
        objects
            .get(uri)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("not found: {uri}")))
    }

    /// (meta, offset, data) triples of one read, the meta on the first.
    fn chunks(
        &self,
        uri: &str,
        range: Option<ByteRange>,
    ) -> Result<Vec<(Option<ObjectMeta>, u64, Bytes)>, Status> {
        let data = self.lookup(uri)?;
        let span = span(range, data.len())?;
        let mut out = vec![(Some(meta(uri, &data)), span.start as u64, Bytes::new())];
        for start in span.clone().step_by(CHUNK) {
            let end = (start + CHUNK).min(span.end);
            out.push((None, start as u64, data.slice(start..end)));
        }
        Ok(out)
    }
}

#[tonic::async_trait]
impl Sluice for Fake {
    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let uri = request.into_inner().uri;
        let data = self.lookup(&uri)?;
        Ok(Response::new(StatResponse {
            meta: Some(meta(&uri, &data)),
        }))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let request = request.into_inner();
        let objects = self.objects.lock().unwrap();
        let mut response = ListResponse::default();
        let token = request.page_token;
        let mut last = None;
        let mut count = 0;
        for (uri, data) in objects.range(token.clone()..) {
            let seen = *uri == token || (token.ends_with('/') && uri.starts_with(&token));
            if !uri.starts_with(&request.prefix) || seen {
                continue;
            }
            let rest = &uri[request.prefix.len()..];
            let dir = rest
                .find('/')
                .filter(|_| request.delimiter == "/")
                .map(|slash| format!("{}{}", request.prefix, &rest[..=slash]));
            if dir.is_some() && dir == last {
                continue;
            }
            if count == PAGE {
                response.next_page_token = last.unwrap();
                break;
            }
            count += 1;
            match dir {
                Some(dir) => {
                    response.common_prefixes.push(dir.clone());
                    last = Some(dir);
                }
                None => {
                    response.objects.push(meta(uri, data));
                    last = Some(uri.clone());
                }
            }
        }
        Ok(Response::new(response))
    }

    type ReadStream = BoxStream<ReadResponse>;

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let request = request.into_inner();
        let chunks = self.chunks(&request.uri, request.range)?;
        let messages = chunks
            .into_iter()
            .map(|(meta, offset, data)| Ok(ReadResponse { meta, offset, data }));
        Ok(Response::new(stream::iter(messages).boxed()))
    }

    type ReadManyStream = BoxStream<ReadManyResponse>;

    async fn read_many(
        &self,
        request: Request<ReadManyRequest>,
    ) -> Result<Response<Self::ReadManyStream>, Status> {
        let mut messages = Vec::new();
        for (index, item) in request.into_inner().items.into_iter().enumerate() {
            let index = index as u32;
            match self.chunks(&item.uri, item.range) {
                Ok(chunks) => {
                    let n = chunks.len();
                    for (i, (meta, offset, data)) in chunks.into_iter().enumerate() {
                        let last = i + 1 == n;
                        messages.push(Ok(ReadManyResponse {
                            index,
                            meta,
                            offset,
                            data,
                            last,
                            error: None,
                        }));
                    }
                }
                Err(status) => messages.push(Ok(ReadManyResponse {
                    index,
                    last: true,
                    error: Some(ItemError {
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                    }),
                    ..Default::default()
                })),
            }
        }
        Ok(Response::new(stream::iter(messages).boxed()))
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        // Counts every write that ends without committing: hyper may drop
        // this future when the client resets the stream.
        let guard = AbortOnDrop(Some(self.aborted_writes.clone()));
        let mut requests = request.into_inner();
        let Some(Ok(WriteRequest {
            msg: Some(write_request::Msg::Header(header)),
        })) = requests.next().await
        else {
            return Err(Status::invalid_argument(
                "the first write message must be a header",
            ));
        };
        let mut data = Vec::new();
        let mut parts = 0;
        let mut trailer = None;
        // A cancelled call can end the stream cleanly: only a trailer commits.
        while let Some(message) = requests.message().await? {
            match message.msg {
                Some(write_request::Msg::Data(chunk)) if trailer.is_none() => {
                    assert!(chunk.len() <= sluice_proto::DEFAULT_CHUNK_SIZE);
                    data.extend_from_slice(&chunk);
                    parts += 1;
                    self.data_messages.send_modify(|n| *n += 1);
                }
                Some(write_request::Msg::Trailer(t)) if trailer.is_none() => trailer = Some(t),
                _ => {
                    return Err(Status::invalid_argument(
                        "data or one trailer after the header",
                    ));
                }
            }
        }
        let Some(trailer) = trailer else {
            return Err(Status::aborted(format!("no trailer: {}", header.uri)));
        };
        if trailer.total_size != data.len() as u64 {
            return Err(Status::data_loss(format!(
                "trailer mismatch: {}",
                header.uri
            )));
        }
        guard.disarm();
        if header.size_hint != 0 && header.size_hint != data.len() as u64 {
            return Err(Status::invalid_argument(format!(
                "size mismatch: {}",
                header.uri
            )));
        }
        let data = Bytes::from(data);
        let meta = meta(&header.uri, &data);
        self.objects.lock().unwrap().insert(header.uri, data);
        Ok(Response::new(WriteResponse {
            meta: Some(meta),
            parts,
        }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let request = request.into_inner();
        let mut objects = self.objects.lock().unwrap();
        let deleted = if request.recursive {
            let before = objects.len();
            objects.retain(|uri, _| !uri.starts_with(&request.uri));
            (before - objects.len()) as u64
        } else if objects.remove(&request.uri).is_some() {
            1
        } else {
            return Err(Status::not_found(format!("not found: {}", request.uri)));
        };
        Ok(Response::new(DeleteResponse { deleted }))
    }

    type SessionStream = BoxStream<SessionResponse>;

    async fn session(
        &self,
        request: Request<Streaming<SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        use session_request::Msg as In;
        use session_response::Msg as Out;
        let mut requests = request.into_inner();
        let Some(SessionRequest {
            msg: Some(In::Open(_)),
        }) = requests.message().await?
        else {
            return Err(Status::invalid_argument("first message must be `open`"));
        };
        let (tx, rx) = mpsc::channel(16);
        let fake = self.clone();
        tokio::spawn(async move {
            let send = |msg| {
                let tx = tx.clone();
                async move { tx.send(Ok(SessionResponse { msg: Some(msg) })).await }
            };
            let opened = SessionOpened {
                session_id: 7,
                lease_quota: 1 << 20,
                ..Default::default()
            };
            send(Out::Opened(opened)).await?;
            while let Ok(Some(request)) = requests.message().await {
                let Some(In::Fetch(fetch)) = request.msg else {
                    continue;
                };
                if fetch.uri == HANG_UP {
                    let gone = Status::unavailable("fake daemon went away");
                    return tx.send(Err(gone)).await;
                }
                if fetch.uri == NO_ANSWER {
                    continue;
                }
                let chunks = match fake.chunks(&fetch.uri, fetch.range) {
                    Ok(chunks) => chunks,
                    Err(status) => {
                        let error = FetchError {
                            id: fetch.id,
                            code: status.code() as i32,
                            message: status.message().to_owned(),
                        };
                        send(Out::Error(error)).await?;
                        continue;
                    }
                };
                let n = chunks.len();
                for (i, (meta, offset, data)) in chunks.into_iter().enumerate() {
                    let chunk = FetchChunk {
                        id: fetch.id,
                        meta,
                        offset,
                        data,
                        last: i + 1 == n,
                    };
                    send(Out::Chunk(chunk)).await?;
                }
            }
            Ok(())
        });
        Ok(Response::new(ReceiverStream::new(rx).boxed()))
    }
}
