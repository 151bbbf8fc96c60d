//! Rust client of the sluice daemon.
//!
//! ```no_run
//! # async fn demo() -> sluice_client::Result<()> {
//! use futures::StreamExt;
//!
//! let client = sluice_client::Client::connect_default().await?;
//! let meta = client.stat("s3://bucket/train/shard-0000.tar").await?;
//! let head = client.read_to_bytes(&meta.uri, Some(0..1024)).await?;
//! let mut entries = std::pin::pin!(client.list("s3://bucket/train/", true));
//! while let Some(entry) = entries.next().await {
//!     println!("{}", entry?.uri());
//! }
//! # let _ = head;
//! # Ok(())
//! # }
//! ```
//!
//! For training loops, a [`Session`] pipelines fetches over one stream and,
//! on the daemon's node, hands out [`Lease`]s on its shared memory instead of
//! copies:
//!
//! ```no_run
//! # async fn demo(client: sluice_client::Client) -> sluice_client::Result<()> {
//! use futures::StreamExt;
//!
//! let session = client.session(Default::default()).await?;
//! let shards = (0..100).map(|i| format!("s3://bucket/train/shard-{i:04}.tar"));
//! let mut results = std::pin::pin!(session.fetch_many(shards, false));
//! while let Some((index, fetched)) = results.next().await {
//!     for part in &fetched?.parts {
//!         let bytes: &[u8] = part; // read-only, no copy; released on drop
//!         # let _ = (index, bytes);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Module map: [`address`] parses daemon addresses and opens the channel,
//! [`credentials`] holds what an `https://` daemon is shown (CA, token,
//! client certificate),
//! `client` holds [`Client`] and its calls, `read` the single-object
//! [`ReadStream`], `read_many` the reassembly of batched reads, `write` the
//! chunked uploads, `list` the paged listings, `session` the pipelined
//! [`Session`] with shared-memory [`Lease`]s, `transport` the channel whose
//! connection failures name the daemon, and `error` the one [`Error`] type.
//! [`tfrecord`] frames TFRecord files and indexes them in bounded memory
//! (`sluice tfrecord index`, `sluice gen --format tfrecord`).
//!
//! # When the daemon stops or restarts
//!
//! Every call of a [`Client`] made while the daemon is down, or cut by its
//! death, fails at once with an `Unavailable` error naming the daemon's
//! address; none hangs. The `Client` needs nothing done to it: its next call
//! after the daemon is back on the same address connects again. A
//! [`Session`] is different: its fetch ids, leases and mapped arena belong
//! to the daemon process that died, so it stays closed
//! ([`Error::SessionClosed`], which says to open a new session) and the
//! caller opens a new one from the same `Client`. [`Lease`]s already held
//! stay readable and keep their bytes: the mapping of the dead daemon's
//! memory lives until the last of them is dropped.

pub mod address;
mod client;
pub mod credentials;
mod error;
mod list;
mod pool;
mod read;
mod read_many;
mod session;
pub mod tfrecord;
pub mod trace;
mod transport;
mod upload_memory;
mod write;

pub use address::{ADDRESS_ENV, Address, DEFAULT_ADDRESS};
pub use client::Client;
pub use credentials::{ConnectOptions, Token};
pub use error::{Error, Result};
pub use list::{Entry, ListPage};
pub use read::ReadStream;
pub use read_many::{ItemResult, ReadItem, ReadManyStream};
pub use session::{Delivery, FetchParts, Fetched, Lease, Session, SessionOptions};
pub use sluice_proto::v1::{ObjectMeta, PlanStats, SessionStats, StatsResponse, WarmProgress};
pub use tonic::Code;
pub use write::Written;
