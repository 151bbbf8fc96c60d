//! [`Client`]: the typed, async front of the `sluice.v1` API.
//!
//! A `Client` wraps one HTTP/2 channel to the daemon. Cloning it is cheap and
//! clones share the channel, so concurrent calls multiplex over one
//! connection; spawn tasks with clones rather than opening more clients.

use std::ops::Range;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sluice_proto::MAX_MESSAGE_SIZE;
use sluice_proto::v1::sluice_client::SluiceClient;
use sluice_proto::v1::{
    DeleteRequest, EvictRequest, ObjectMeta, ReadManyItem, ReadManyRequest, ReadRequest,
    StatRequest, WarmProgress, WarmRequest,
};
use tokio::io::AsyncRead;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::address::{Address, connect_channel, default_address};
use crate::credentials::{BearerAuth, ConnectOptions};
use crate::error::{Error, Result};
use crate::list::{self, Entry, ListPage};
use crate::read::{self, ReadStream};
use crate::read_many::{ReadItem, ReadManyStream};
use crate::session::{self, Session, SessionOptions};
use crate::trace::{CallMetadata, TraceContext};
use crate::transport::Transport;
use crate::upload_memory;
use crate::write::{self, Written};

/// The generated client over the channel, sending the bearer token if any;
/// failures of the connection name the daemon (see `transport`).
pub(crate) type Grpc = SluiceClient<InterceptedService<Transport, CallMetadata>>;

/// A connection to a sluice daemon.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Grpc,
    address: String,
    /// Upload memories (`Upload`), for a daemon on this node.
    uploads: std::sync::Arc<upload_memory::Pool>,
    /// The trace context sent with calls made outside
    /// [`crate::trace::in_trace`]; shared by clones.
    trace: std::sync::Arc<std::sync::RwLock<Option<TraceContext>>>,
}

impl Client {
    /// Connects to the daemon at `address` (see [`crate::address`] for the
    /// accepted forms), for `https://` with the TLS settings and token of
    /// the environment (see [`crate::credentials`]). Fails with an
    /// `Unavailable` error naming the address when nothing answers there.
    pub async fn connect(address: &str) -> Result<Self> {
        Self::connect_with(address, ConnectOptions::default()).await
    }

    /// Connects to the daemon at `address` with `options`, whose unset
    /// settings fall back to the environment. The options are used for
    /// `https://` addresses only: no token is ever sent in plaintext.
    pub async fn connect_with(address: &str, options: ConnectOptions) -> Result<Self> {
        let parsed: Address = address.parse()?;
        let options = match parsed {
            Address::Https(_) => options.or_env()?,
            _ => ConnectOptions::default(),
        };
        let fd_socket = match &parsed {
            Address::Unix(socket) => Some(crate::session::fd_socket_path(socket)),
            _ => None,
        };
        let channel = connect_channel(address, parsed, &options).await?;
        let mut client = Self::with_auth(channel, address, options.bearer());
        client.uploads = std::sync::Arc::new(upload_memory::Pool::new(fd_socket));
        Ok(client)
    }

    /// Connects to `$SLUICE_ADDRESS`, else to [`crate::DEFAULT_ADDRESS`].
    pub async fn connect_default() -> Result<Self> {
        Self::connect(&default_address()).await
    }

    /// A client over an existing channel; `address` is only used in messages.
    pub fn from_channel(channel: Channel, address: &str) -> Self {
        Self::with_auth(channel, address, BearerAuth::default())
    }

    fn with_auth(channel: Channel, address: &str, auth: BearerAuth) -> Self {
        let metadata = CallMetadata {
            auth,
            trace: Default::default(),
        };
        let trace = metadata.trace.clone();
        let inner = SluiceClient::with_interceptor(Transport::new(channel, address), metadata)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        Client {
            inner,
            address: address.to_owned(),
            uploads: Default::default(),
            trace,
        }
    }

    /// Sends `context` (a W3C trace context) with every later call of this
    /// client and its clones that is not made inside
    /// [`crate::trace::in_trace`]; `None` stops sending one. See
    /// [`crate::trace`].
    pub fn set_trace_context(&self, context: Option<TraceContext>) {
        *self
            .trace
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = context;
    }

    /// This client with uploads through shared memory turned on or off.
    /// They are on by default when the daemon is on this node (a Unix
    /// socket address) and offers them, and used only then.
    pub fn with_shared_uploads(mut self, on: bool) -> Self {
        if !on {
            let off = upload_memory::Pool::default();
            off.disable();
            self.uploads = std::sync::Arc::new(off);
        }
        self
    }

    /// Whether this client's next upload will try shared memory.
    pub fn shared_uploads(&self) -> bool {
        self.uploads.enabled()
    }

    /// The address this client was connected to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Metadata of one object.
    pub async fn stat(&self, uri: &str) -> Result<ObjectMeta> {
        let request = StatRequest {
            uri: uri.to_owned(),
        };
        let response = self.inner.clone().stat(request).await?.into_inner();
        response
            .meta
            .ok_or_else(|| Error::protocol(uri, "stat response has no metadata"))
    }

    /// One page of the listing of `prefix`. An empty `delimiter` lists
    /// recursively; `"/"` lists one level, with common prefixes. A
    /// `page_size` of 0 means the daemon's default; `page_token` is the
    /// previous page's `next_page_token`, `None` for the first page.
    pub async fn list_page(
        &self,
        prefix: &str,
        delimiter: &str,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<ListPage> {
        list::list_page(self.inner.clone(), prefix, delimiter, page_size, page_token).await
    }

    /// Every entry under `prefix` in URI order, walking all pages: all
    /// objects below it when `recursive`, else one level with directories
    /// as [`Entry::Prefix`].
    pub fn list(
        &self,
        prefix: &str,
        recursive: bool,
    ) -> impl Stream<Item = Result<Entry>> + Send + 'static {
        list::walk(self.inner.clone(), prefix.to_owned(), recursive)
    }

    /// Opens a read of `uri`, whole (`None`) or a byte range; a range
    /// `start..u64::MAX` reads from `start` to the end. Returns once the
    /// first message (with the metadata) has arrived, so a missing object
    /// fails here, not in the stream.
    pub async fn read(&self, uri: &str, range: Option<Range<u64>>) -> Result<ReadStream> {
        let request = ReadRequest {
            uri: uri.to_owned(),
            range: read::to_wire(uri, range.as_ref())?,
            no_cache: false,
        };
        let stream = self.inner.clone().read(request).await?.into_inner();
        ReadStream::start(uri, range.as_ref(), stream).await
    }

    /// Reads `uri` (or a range of it) into memory. Fails if the daemon
    /// delivers fewer or more bytes than the metadata and range promise.
    pub async fn read_to_bytes(&self, uri: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        self.read(uri, range).await?.into_bytes().await
    }

    /// Reads many objects in one call, `concurrency` at a time on the daemon
    /// (0: its default), each into memory. The stream yields one result per
    /// item, tagged with the item's index, in completion order or, with
    /// `ordered`, in request order. A failure of the whole call fails every
    /// item still owed.
    pub async fn read_many<I>(
        &self,
        items: I,
        concurrency: u32,
        ordered: bool,
    ) -> Result<ReadManyStream>
    where
        I: IntoIterator,
        I::Item: Into<ReadItem>,
    {
        let items: Vec<ReadItem> = items.into_iter().map(Into::into).collect();
        let wire = items
            .iter()
            .map(|item| {
                Ok(ReadManyItem {
                    uri: item.uri.clone(),
                    range: read::to_wire(&item.uri, item.range.as_ref())?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let request = ReadManyRequest {
            items: wire,
            concurrency,
            ordered,
        };
        let stream = self.inner.clone().read_many(request).await?.into_inner();
        Ok(ReadManyStream::new(items, stream))
    }

    /// Opens a [`Session`]: one long-lived stream for pipelined fetches,
    /// with results as leases on the daemon's shared memory where it offers
    /// it (see [`SessionOptions`]).
    pub async fn session(&self, options: SessionOptions) -> Result<Session> {
        session::open(self.inner.clone(), &self.address, options).await
    }

    /// Uploads the bytes of `data` to `uri`, in chunks of
    /// [`sluice_proto::DEFAULT_CHUNK_SIZE`] whatever the pieces' sizes.
    /// `size_hint` is the total size if known, else 0; the daemon fails the
    /// upload if the data does not match it.
    pub async fn write<S>(&self, uri: &str, data: S, size_hint: u64) -> Result<Written>
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        if let Some(memory) = self.uploads.take().await {
            let reader = tokio_util::io::StreamReader::new(data.map(Ok::<_, std::io::Error>));
            let reader = std::pin::pin!(reader);
            let source = upload_memory::Source::Reader(reader);
            return self.upload_shared(uri, memory, source, size_hint).await;
        }
        write::upload_infallible(self.inner.clone(), uri, data.boxed(), size_hint).await
    }

    /// Uploads everything `reader` yields to `uri`, holding at most a couple
    /// of chunks in memory. A read error ends the upload without
    /// its trailer (the daemon discards it) and is returned as [`Error::Io`].
    pub async fn write_reader<R>(&self, uri: &str, reader: R, size_hint: u64) -> Result<Written>
    where
        R: AsyncRead + Send + Unpin + 'static,
    {
        if let Some(memory) = self.uploads.take().await {
            let source = upload_memory::Source::Reader(reader);
            return self.upload_shared(uri, memory, source, size_hint).await;
        }
        let chunks = write::read_chunks(reader, sluice_proto::DEFAULT_CHUNK_SIZE);
        write::upload(self.inner.clone(), uri, chunks, size_hint).await
    }

    /// Uploads the whole of `file` (from its start, whatever its position)
    /// to `uri`; `progress` is told each count of bytes read.
    /// With the daemon on this node the file is read straight into the
    /// shared upload memory, with no copy in between.
    pub async fn write_file(
        &self,
        uri: &str,
        file: std::fs::File,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<Written> {
        let io_error = |source| Error::Io {
            uri: uri.to_owned(),
            source,
        };
        let size = file.metadata().map_err(io_error)?.len();
        if let Some(memory) = self.uploads.take().await {
            let source = upload_memory::Source::<tokio::fs::File>::File {
                file: std::sync::Arc::new(file),
                progress: Box::new(progress),
            };
            return self.upload_shared(uri, memory, source, size).await;
        }
        let progress: Box<dyn Fn(u64) + Send + Sync> = Box::new(progress);
        let reader = crate::write::Counting::new(tokio::fs::File::from_std(file), progress);
        self.write_reader(uri, reader, size).await
    }

    /// An upload through `memory`, which goes back to the pool unless the
    /// upload failed (its ring may still be being read).
    async fn upload_shared<R: AsyncRead + Unpin>(
        &self,
        uri: &str,
        mut memory: upload_memory::UploadMemory,
        source: upload_memory::Source<R>,
        size_hint: u64,
    ) -> Result<Written> {
        let written =
            upload_memory::upload(self.inner.clone(), uri, &mut memory, source, size_hint).await?;
        self.uploads.give_back(memory);
        Ok(written)
    }

    /// Uploads `data` to `uri` in one go (still chunked on the wire).
    pub async fn put(&self, uri: &str, data: Bytes) -> Result<Written> {
        let size = data.len() as u64;
        self.write(uri, futures::stream::iter([data]), size).await
    }

    /// Reads every object under `prefix` into the daemon's cache,
    /// `concurrency` at a time (0: the daemon's default): the counts as
    /// they change, the last with `done` set. Stops before the cache is
    /// full (`cache_full`).
    pub async fn warm(
        &self,
        prefix: &str,
        concurrency: u32,
    ) -> Result<impl Stream<Item = Result<WarmProgress>> + Send + 'static> {
        let request = WarmRequest {
            prefix: prefix.to_owned(),
            concurrency,
            uris: Vec::new(),
        };
        let stream = self.inner.clone().warm(request).await?.into_inner();
        Ok(stream.map(|item| item.map_err(Error::from)))
    }

    /// Reads `uris` into the daemon's cache, in their order (an epoch
    /// plan's first items, say), `concurrency` at a time: the counts as
    /// they change, the last with `done` set. At most 100,000 URIs; stops
    /// once the cache is full (`cache_full`).
    pub async fn warm_uris(
        &self,
        uris: Vec<String>,
        concurrency: u32,
    ) -> Result<impl Stream<Item = Result<WarmProgress>> + Send + 'static> {
        let request = WarmRequest {
            prefix: String::new(),
            concurrency,
            uris,
        };
        let stream = self.inner.clone().warm(request).await?.into_inner();
        Ok(stream.map(|item| item.map_err(Error::from)))
    }

    /// The daemon's live sessions (all of them for an admin, else this
    /// uid's) with their data-stall time and epoch plans, and the node's
    /// cache and prefetch counters.
    pub async fn stats(&self) -> Result<sluice_proto::v1::StatsResponse> {
        Ok(self
            .inner
            .clone()
            .stats(sluice_proto::v1::StatsRequest {})
            .await?
            .into_inner())
    }

    /// Drops every cached object under `prefix` (the objects stay);
    /// returns how many. Admin only (see the daemon's `server.admin_uids`).
    pub async fn evict(&self, prefix: &str) -> Result<u64> {
        let request = EvictRequest {
            prefix: prefix.to_owned(),
        };
        Ok(self
            .inner
            .clone()
            .evict(request)
            .await?
            .into_inner()
            .evicted)
    }

    /// Deletes `uri`, or with `recursive` the object `uri` and every
    /// object below `uri/` (whole path components: `run1` never touches
    /// `run10`). A whole bucket or file root is refused
    /// (`FailedPrecondition`); see [`Client::delete_whole_bucket`]. Returns
    /// the number of objects deleted.
    pub async fn delete(&self, uri: &str, recursive: bool) -> Result<u64> {
        self.delete_request(DeleteRequest {
            uri: uri.to_owned(),
            recursive,
            whole_bucket: false,
        })
        .await
    }

    /// Deletes every object under `uri`, which may name a whole bucket
    /// (`s3://bucket/`) or file root. Returns the number deleted.
    pub async fn delete_whole_bucket(&self, uri: &str) -> Result<u64> {
        self.delete_request(DeleteRequest {
            uri: uri.to_owned(),
            recursive: true,
            whole_bucket: true,
        })
        .await
    }

    async fn delete_request(&self, request: DeleteRequest) -> Result<u64> {
        Ok(self
            .inner
            .clone()
            .delete(request)
            .await?
            .into_inner()
            .deleted)
    }
}
