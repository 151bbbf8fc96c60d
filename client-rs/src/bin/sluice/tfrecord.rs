//! `sluice tfrecord index`: the index of a TFRecord object, read through
//! the daemon.
//!
//! The object is read by ranges of at most [`WINDOW`] bytes, fed to a
//! [`sluice_client::tfrecord::Indexer`] as chunks arrive, so memory stays
//! at a window whatever the object's size. Without `--verify-crc` only the
//! headers matter: a read is dropped as soon as the indexer has jumped past
//! its range, and once records prove larger than a window the next read
//! asks for a header only, so a file of large records costs a few bytes of
//! reading per record.
//!
//! The index (`offset size` per record, as DALI and `tfrecord2idx` write
//! it) goes to stdout or, with `--out`, to an object through the daemon's
//! writer as it is made. A failure aborts that upload (its stream ends in
//! an error, so the daemon discards it): no partial index is left behind.
//! With `--prefix`, every object below the prefix whose name ends in
//! `--suffix` gets its index beside it, `<object>.idx`, one after another.

use std::io::Write;

use anyhow::Context;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use sluice_client::tfrecord::{self, Indexer};
use sluice_client::{Client, Entry as ListEntry};
use tokio::sync::mpsc;

use crate::commands::UriContext;

/// Bytes per ranged read: large enough that small records cost one read
/// per thousands of them, small enough to drop cheaply when skipped.
const WINDOW: u64 = 8 << 20;
/// Index lines gathered before they go to `--out`.
const OUT_PIECE: usize = 64 << 10;

#[derive(Debug, clap::Subcommand)]
pub enum TfrecordCommand {
    /// Write the index of a TFRecord object (`offset size` per record, DALI's format).
    Index(IndexArgs),
}

#[derive(Debug, clap::Args)]
pub struct IndexArgs {
    /// The TFRecord object (with --prefix: the prefix).
    pub uri: String,
    /// Write the index to this object instead of stdout.
    #[arg(long, value_name = "URI")]
    pub out: Option<String>,
    /// Check every record's length and data CRC (reads every byte).
    #[arg(long)]
    pub verify_crc: bool,
    /// URI is a prefix: index every object below it whose name ends in
    /// --suffix, writing `<object>.idx` beside each.
    #[arg(long, conflicts_with = "out")]
    pub prefix: bool,
    /// With --prefix: the objects to index ("" for all).
    #[arg(long, default_value = ".tfrecord", requires = "prefix")]
    pub suffix: String,
}

pub async fn run(client: &Client, command: &TfrecordCommand) -> anyhow::Result<()> {
    match command {
        TfrecordCommand::Index(args) if args.prefix => index_prefix(client, args).await,
        TfrecordCommand::Index(args) => {
            index(client, &args.uri, args.out.as_deref(), args.verify_crc).await
        }
    }
}

/// Indexes each object under the prefix that ends in the suffix (never
/// an index itself), one after the other; the first failure stops.
async fn index_prefix(client: &Client, args: &IndexArgs) -> anyhow::Result<()> {
    let objects: Vec<String> = client
        .list(&args.uri, true)
        .try_filter_map(|entry| async move {
            Ok(match entry {
                ListEntry::Object(meta) => Some(meta.uri),
                ListEntry::Prefix(_) => None,
            })
        })
        .try_collect()
        .await
        .uri_context(&args.uri)?;
    let chosen = objects
        .iter()
        .filter(|uri| uri.ends_with(&args.suffix) && !uri.ends_with(".idx"));
    let mut indexed = 0;
    for uri in chosen {
        index(client, uri, Some(&format!("{uri}.idx")), args.verify_crc).await?;
        indexed += 1;
    }
    if indexed == 0 {
        anyhow::bail!("{}: no objects ending in {:?}", args.uri, args.suffix);
    }
    Ok(())
}

async fn index(
    client: &Client,
    uri: &str,
    out: Option<&str>,
    verify_crc: bool,
) -> anyhow::Result<()> {
    let mut windows = Windows::open(client, uri, verify_crc).await?;
    match out {
        None => {
            let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
            while let Some(entries) = windows.next().await? {
                for entry in entries {
                    stdout.write_all(tfrecord::index_line(entry).as_bytes())?;
                }
            }
            stdout.flush()?;
        }
        Some(out) => index_to_object(client, &mut windows, out).await?,
    }
    let (records, bytes) = windows.totals;
    let checked = if verify_crc { ", CRCs checked" } else { "" };
    let to = out.unwrap_or("stdout");
    eprintln!("{uri}: {records} records, {bytes} bytes{checked}; index written to {to}");
    Ok(())
}

/// Streams the index into the object `out`; on failure the upload is
/// aborted, so the daemon keeps nothing.
async fn index_to_object(
    client: &Client,
    windows: &mut Windows<'_>,
    out: &str,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    let pieces = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let reader = tokio_util::io::StreamReader::new(pieces);
    let produce = async move {
        let built = send_index(windows, &tx).await;
        if built.is_err() {
            let _ = tx.send(Err(std::io::Error::other("indexing failed"))).await;
        }
        built
    };
    let (built, written) = tokio::join!(produce, client.write_reader(out, reader, 0));
    built?;
    written.uri_context(out)?;
    Ok(())
}

/// Sends the index lines in pieces of about [`OUT_PIECE`] bytes; stops
/// early (without error) if the upload has ended.
async fn send_index(
    windows: &mut Windows<'_>,
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
) -> anyhow::Result<()> {
    let mut piece = Vec::with_capacity(OUT_PIECE);
    while let Some(entries) = windows.next().await? {
        for entry in entries {
            piece.extend_from_slice(tfrecord::index_line(entry).as_bytes());
        }
        if piece.len() >= OUT_PIECE
            && tx
                .send(Ok(Bytes::from(std::mem::take(&mut piece))))
                .await
                .is_err()
        {
            return Ok(());
        }
    }
    let _ = tx.send(Ok(Bytes::from(piece))).await;
    Ok(())
}

/// The records of an object, read a window at a time.
struct Windows<'c> {
    client: &'c Client,
    uri: &'c str,
    len: u64,
    indexer: Indexer,
    window: u64,
    verify_crc: bool,
    done: bool,
    /// Records and their bytes, once done.
    totals: (u64, u64),
}

impl<'c> Windows<'c> {
    async fn open(client: &'c Client, uri: &'c str, verify_crc: bool) -> anyhow::Result<Self> {
        let len = client.stat(uri).await.uri_context(uri)?.size;
        Ok(Windows {
            client,
            uri,
            len,
            indexer: Indexer::new(verify_crc),
            window: WINDOW,
            verify_crc,
            done: false,
            totals: (0, 0),
        })
    }

    /// The records completed by reading the next window (or by the end of
    /// the object); `None` once all were given.
    async fn next(&mut self) -> anyhow::Result<Option<Vec<tfrecord::Entry>>> {
        let uri = self.uri;
        if self.done {
            return Ok(None);
        }
        if self.indexer.position() >= self.len {
            self.totals = self.indexer.finish(self.len).context(uri.to_owned())?;
            self.done = true;
            return Ok(Some(self.indexer.take_entries()));
        }
        let start = self.indexer.position();
        let end = (start + self.window).min(self.len);
        let mut stream = self
            .client
            .read(uri, Some(start..end))
            .await
            .uri_context(uri)?;
        let mut at = start;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.uri_context(uri)?;
            self.indexer.feed(at, &chunk).context(uri.to_owned())?;
            at += chunk.len() as u64;
            if self.indexer.position() >= end {
                break;
            }
        }
        // Records larger than the window: read only the next header.
        let skipped = self.indexer.position() > end;
        self.window = match self.verify_crc {
            false if skipped => tfrecord::HEADER_LEN as u64,
            _ => WINDOW,
        };
        Ok(Some(self.indexer.take_entries()))
    }
}
