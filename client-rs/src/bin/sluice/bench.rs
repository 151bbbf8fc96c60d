//! `sluice bench`: read every object under a prefix, pass after pass.
//!
//! The first pass measures the backend (or whatever the daemon has cached
//! already), later passes the daemon's cache. Objects are streamed and their
//! bytes counted, never collected, so memory stays at a few chunks per read
//! in flight whatever the objects' sizes. Each read runs in its own task so
//! decoding spreads over all cores, as it would in a data loader.
//!
//! Three deliveries: `read` issues `Read` (or `ReadMany`) calls; `shm` and
//! `stream` fetch through one [`Session`] with `--concurrency` fetches
//! outstanding, leases on the daemon's shared memory or bytes in the stream.
//! Each fetched object is touched, one byte per 4 KiB page, before its
//! leases are dropped: reading mapped memory costs page faults, and a
//! benchmark that never looks at the bytes would hide them.
//!
//! Throughput is reported in MB/s with MB = 10^6 bytes, the unit of network
//! and disk datasheets.

use std::time::Instant;

use anyhow::bail;
use futures::{StreamExt, TryStreamExt, stream};
use indicatif::ProgressBar;
use sluice_client::{
    Address, Client, Delivery, Entry, Fetched, ObjectMeta, Session, SessionOptions,
};

use crate::commands::UriContext;
use crate::progress;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The prefix whose objects are read (recursively).
    pub prefix: String,
    /// Requests in flight: Read calls, or ReadMany calls with --read-many-batch.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Passes over all objects.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub passes: u32,
    /// Objects per ReadMany call; 0 reads each object with its own Read call.
    #[arg(long, default_value_t = 0)]
    pub read_many_batch: u32,
    /// How objects arrive: shm (session, leases on shared memory), stream
    /// (session, bytes in the stream) or read (Read calls). Default: shm on
    /// a Unix socket (stream if the daemon does not offer it), else read.
    #[arg(long, value_enum)]
    pub delivery: Option<DeliveryArg>,
}

/// The `--delivery` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeliveryArg {
    /// A session with shared-memory leases.
    Shm,
    /// A session with the bytes in the stream.
    Stream,
    /// `Read` or `ReadMany` calls.
    Read,
}

/// How one bench runs: Read calls, or a session with this delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Read,
    Session(Delivery),
}

/// The mode for the arguments and the daemon's address.
fn mode(args: &BenchArgs, address: &str) -> anyhow::Result<Mode> {
    let batched = args.read_many_batch > 0;
    Ok(match args.delivery {
        Some(DeliveryArg::Read) => Mode::Read,
        Some(_) if batched => bail!("--read-many-batch needs --delivery read"),
        Some(DeliveryArg::Shm) => Mode::Session(Delivery::SharedMemory),
        Some(DeliveryArg::Stream) => Mode::Session(Delivery::Stream),
        None if batched => Mode::Read,
        None => match address.parse::<Address>() {
            Ok(Address::Unix(_)) => Mode::Session(Delivery::Auto),
            _ => Mode::Read,
        },
    })
}

/// What one pass read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct PassTotals {
    objects: u64,
    bytes: u64,
}

impl std::ops::Add for PassTotals {
    type Output = PassTotals;

    fn add(self, other: PassTotals) -> PassTotals {
        PassTotals {
            objects: self.objects + other.objects,
            bytes: self.bytes + other.bytes,
        }
    }
}

pub async fn run(client: &Client, args: &BenchArgs) -> anyhow::Result<()> {
    let objects: Vec<ObjectMeta> = client
        .list(&args.prefix, true)
        .try_filter_map(|entry| async move {
            Ok(match entry {
                Entry::Object(meta) => Some(meta),
                Entry::Prefix(_) => None,
            })
        })
        .try_collect()
        .await
        .uri_context(&args.prefix)?;
    if objects.is_empty() {
        bail!("{}: no objects under the prefix", args.prefix);
    }
    let total: u64 = objects.iter().map(|m| m.size).sum();
    let session = match mode(args, client.address())? {
        Mode::Read => None,
        Mode::Session(delivery) => {
            let options = SessionOptions {
                delivery,
                window: args.concurrency as usize,
            };
            Some(client.session(options).await?)
        }
    };
    let mode = match (&session, args.read_many_batch) {
        (Some(s), _) if s.shared_memory() => "Session, shared memory".to_owned(),
        (Some(_), _) => "Session, stream delivery".to_owned(),
        (None, 0) => "Read per object".to_owned(),
        (None, n) => format!("ReadMany of {n} objects"),
    };
    println!(
        "{} objects, {total} bytes under {}; {} in flight, {mode}",
        objects.len(),
        args.prefix,
        args.concurrency
    );
    for pass in 1..=args.passes {
        let bar = progress::bytes_bar(total, &format!("pass {pass}"));
        let started = Instant::now();
        let totals = match (&session, args.read_many_batch) {
            (Some(session), _) => fetch_all(session, &objects, &bar).await?,
            (None, 0) => read_each(client, &objects, args.concurrency, &bar).await?,
            (None, n) => read_batched(client, &objects, n, args.concurrency, &bar).await?,
        };
        let seconds = started.elapsed().as_secs_f64().max(f64::EPSILON);
        bar.finish_and_clear();
        println!("{}", report(pass, totals, seconds));
    }
    Ok(())
}

fn report(pass: u32, totals: PassTotals, seconds: f64) -> String {
    format!(
        "pass {pass}: {} objects, {} bytes, {seconds:.3} s, {:.1} MB/s, {:.1} objects/s",
        totals.objects,
        totals.bytes,
        totals.bytes as f64 / 1e6 / seconds,
        totals.objects as f64 / seconds,
    )
}

/// One `Read` call per object, `concurrency` at a time.
async fn read_each(
    client: &Client,
    objects: &[ObjectMeta],
    concurrency: u32,
    bar: &ProgressBar,
) -> anyhow::Result<PassTotals> {
    let reads = objects.iter().map(|meta| {
        let (client, bar, uri) = (client.clone(), bar.clone(), meta.uri.clone());
        tokio::spawn(async move {
            let mut stream = client.read(&uri, None).await.uri_context(&uri)?;
            let mut bytes = 0;
            while let Some(chunk) = stream.next().await {
                let len = chunk.uri_context(&uri)?.len() as u64;
                bytes += len;
                bar.inc(len);
            }
            anyhow::Ok(PassTotals { objects: 1, bytes })
        })
    });
    sum_tasks(reads, concurrency).await
}

/// Every object through the session, its window full; each result is
/// touched and dropped (so its leases are released) as soon as it arrives.
async fn fetch_all(
    session: &Session,
    objects: &[ObjectMeta],
    bar: &ProgressBar,
) -> anyhow::Result<PassTotals> {
    let uris = objects.iter().map(|meta| meta.uri.clone());
    let mut results = std::pin::pin!(session.fetch_many(uris, false));
    let mut totals = PassTotals::default();
    while let Some((index, result)) = results.next().await {
        let fetched = result.uri_context(&objects[index].uri)?;
        std::hint::black_box(touch(&fetched));
        totals = totals
            + PassTotals {
                objects: 1,
                bytes: fetched.len(),
            };
        bar.inc(fetched.len());
    }
    Ok(totals)
}

/// Reads one byte of every 4 KiB page of the result; returns their sum.
fn touch(fetched: &Fetched) -> u64 {
    const PAGE: usize = 4096;
    fetched
        .parts
        .iter()
        .flat_map(|part| part.iter().step_by(PAGE))
        .map(|&byte| u64::from(byte))
        .sum()
}

/// `ReadMany` calls of `batch` objects, `concurrency` calls at a time.
async fn read_batched(
    client: &Client,
    objects: &[ObjectMeta],
    batch: u32,
    concurrency: u32,
    bar: &ProgressBar,
) -> anyhow::Result<PassTotals> {
    let calls = objects.chunks(batch as usize).map(|chunk| {
        let (client, bar) = (client.clone(), bar.clone());
        let uris: Vec<String> = chunk.iter().map(|m| m.uri.clone()).collect();
        tokio::spawn(async move {
            let mut results = client
                .read_many(uris.clone(), 0, false)
                .await
                .uri_context(&uris[0])?;
            let mut totals = PassTotals::default();
            while let Some((index, result)) = results.next().await {
                let (_, data) = result.uri_context(&uris[index])?;
                totals = totals
                    + PassTotals {
                        objects: 1,
                        bytes: data.len() as u64,
                    };
                bar.inc(data.len() as u64);
            }
            anyhow::Ok(totals)
        })
    });
    sum_tasks(calls, concurrency).await
}

/// Awaits the tasks, at most `concurrency` started at once, and sums their
/// totals; the first failure ends the pass.
async fn sum_tasks<I>(tasks: I, concurrency: u32) -> anyhow::Result<PassTotals>
where
    I: Iterator<Item = tokio::task::JoinHandle<anyhow::Result<PassTotals>>>,
{
    // `tokio::spawn` starts a task at once; `stream::iter` pulls (and so
    // spawns) the next one only when the buffer has room.
    stream::iter(tasks)
        .buffer_unordered(concurrency as usize)
        .map(|joined| joined?)
        .try_fold(PassTotals::default(), |sum, totals| async move {
            Ok(sum + totals)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(delivery: Option<DeliveryArg>, read_many_batch: u32) -> BenchArgs {
        BenchArgs {
            prefix: "file:///d/".into(),
            concurrency: 8,
            passes: 1,
            read_many_batch,
            delivery,
        }
    }

    #[test]
    fn delivery_defaults_to_a_session_on_unix_sockets() {
        let unix = "unix:///run/s.sock";
        let tcp = "http://127.0.0.1:7070";
        assert_eq!(
            mode(&args(None, 0), unix).unwrap(),
            Mode::Session(Delivery::Auto)
        );
        assert_eq!(mode(&args(None, 0), tcp).unwrap(), Mode::Read);
        assert_eq!(mode(&args(None, 8), unix).unwrap(), Mode::Read);
        let shm = Some(DeliveryArg::Shm);
        assert_eq!(
            mode(&args(shm, 0), tcp).unwrap(),
            Mode::Session(Delivery::SharedMemory)
        );
        let stream = Some(DeliveryArg::Stream);
        assert_eq!(
            mode(&args(stream, 0), unix).unwrap(),
            Mode::Session(Delivery::Stream)
        );
        assert!(mode(&args(stream, 8), unix).is_err());
        assert_eq!(
            mode(&args(Some(DeliveryArg::Read), 8), unix).unwrap(),
            Mode::Read
        );
    }

    #[test]
    fn report_uses_decimal_megabytes() {
        let totals = PassTotals {
            objects: 10,
            bytes: 4_000_000,
        };
        assert_eq!(
            report(2, totals, 2.0),
            "pass 2: 10 objects, 4000000 bytes, 2.000 s, 2.0 MB/s, 5.0 objects/s"
        );
    }
}
