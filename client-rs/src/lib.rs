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
//! Module map: [`address`] parses daemon addresses and opens the channel,
//! `client` holds [`Client`] and its calls, `read` the single-object
//! [`ReadStream`], `read_many` the reassembly of batched reads, `write` the
//! chunked uploads, `list` the paged listings, and `error` the one [`Error`]
//! type.

pub mod address;
mod client;
mod error;
mod list;
mod read;
mod read_many;
mod write;

pub use address::{ADDRESS_ENV, Address, DEFAULT_ADDRESS};
pub use client::Client;
pub use error::{Error, Result};
pub use list::{Entry, ListPage};
pub use read::ReadStream;
pub use read_many::{ItemResult, ReadItem, ReadManyStream};
pub use sluice_proto::v1::ObjectMeta;
pub use tonic::Code;
pub use write::Written;
