//! `sluice gen`: write a synthetic dataset through the daemon.
//!
//! `--count` objects go under the prefix, `--concurrency` at a time, each
//! made on a blocking thread (generation is CPU work) while its upload
//! runs on the command's task. An object of at most [`PUT_LIMIT`] bytes is made
//! whole and sent with one put; a larger one is streamed to the daemon's
//! writer in chunks through a bounded channel, so memory stays at a few
//! chunks per object in flight whatever the sizes.
//!
//! Everything is a function of the seed: sample sizes are drawn from a
//! ChaCha8 stream per object (the seed's key, stream = object index), and
//! the bytes from the dataset-wide block numbering of [`data`]. So one seed
//! gives byte-identical datasets whatever the concurrency or the order in
//! which objects finish. The compression and dedup ratios are measured on
//! the bytes made ([`measure`]) and reported with the throughput (MB =
//! 10^6 bytes).

mod data;
mod example;
mod format;
mod measure;
mod numpy;
mod sizes;

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use indicatif::ProgressBar;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use sluice_client::Client;
use tokio::sync::mpsc;

use crate::commands::UriContext;
use crate::progress;
use data::{BLOCK, Payload, Source};
pub use format::Format;
use format::ObjectPlan;
use measure::{Measure, Ratios, Sampling};
pub use sizes::SizeSpec;

/// Objects up to this size are made whole and put in one call: the
/// daemon's default cache limit for one object, and small enough that
/// `--concurrency` of them in memory is no burden.
const PUT_LIMIT: u64 = 8 << 20;
/// Chunks of a streamed object: the daemon's upload chunk.
const CHUNK: usize = sluice_proto::DEFAULT_CHUNK_SIZE;
/// Chunks queued per streamed object before its generator waits.
const CHUNKS_QUEUED: usize = 4;

#[derive(Debug, clap::Args)]
pub struct GenArgs {
    /// Where the objects go: PREFIX/<name>_<index>.<ext>, e.g. s3://bucket/synthetic/.
    pub prefix: String,
    /// Objects (files) to write.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Bytes of each sample: SIZE (e.g. 128KiB), SIZE,SIZE,.. (cycled),
    /// choice:SIZE,.. (drawn), uniform:MIN-MAX, normal:MEAN,STDDEV (clipped
    /// at 1 byte). Units B, KB, MB, GB, KiB, MiB, GiB.
    #[arg(long, default_value = "128KiB")]
    pub size: SizeSpec,
    /// Layout of each object.
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    pub format: Format,
    /// tfrecord: records (samples) per file.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    pub records_per_file: u64,
    /// About how much zstd (level 3) compresses the data (>= 1).
    #[arg(long, default_value_t = 1.0, value_parser = ratio)]
    pub compress_ratio: f64,
    /// Blocks (4 KiB) per distinct block (>= 1).
    #[arg(long, default_value_t = 1.0, value_parser = ratio)]
    pub dedup_ratio: f64,
    /// Seed: the same seed writes the same bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Objects made and written at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
}

fn ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 1.0 => Ok(r),
        _ => Err(format!("{text:?}: a ratio is a number >= 1")),
    }
}

/// How objects are named and sampled: a function of the arguments only.
struct Layout {
    format: Format,
    prefix: String,
    width: usize,
    seed: u64,
    spec: SizeSpec,
    samples_per_object: u64,
}

impl Layout {
    /// Object `index`'s samples, drawn from its own stream.
    fn plan(&self, index: u64) -> ObjectPlan {
        let mut rng = ChaCha8Rng::from_seed(data::key(self.seed, *b"size"));
        rng.set_stream(index);
        let first_sample = index * self.samples_per_object;
        let samples = (first_sample..first_sample + self.samples_per_object)
            .map(|sample| self.spec.draw(sample, &mut rng))
            .collect();
        ObjectPlan {
            first_sample,
            samples,
        }
    }

    fn uri(&self, index: u64) -> String {
        let name = self.format.object_name(index, self.width);
        format!("{}/{name}", self.prefix)
    }

    fn object_size(&self, index: u64) -> u64 {
        self.format.object_size(&self.plan(index))
    }
}

/// The whole dataset, shared by the objects' tasks.
struct Dataset {
    layout: Layout,
    /// Dataset block index of each object's first payload block, and the
    /// total at the end (`count + 1` entries).
    first_blocks: Vec<u64>,
    source: Source,
    sampling: Sampling,
    /// Bytes of all objects.
    bytes: u64,
}

impl Dataset {
    fn new(args: &GenArgs) -> anyhow::Result<Self> {
        let layout = Layout {
            format: args.format,
            prefix: args.prefix.trim_end_matches('/').to_owned(),
            width: (args.count - 1).to_string().len().max(6),
            seed: args.seed,
            spec: args.size.clone(),
            samples_per_object: args.format.samples_per_object(args.records_per_file),
        };
        let mut first_blocks = Vec::with_capacity(args.count as usize + 1);
        let (mut blocks, mut bytes) = (0, 0);
        for index in 0..args.count {
            let plan = layout.plan(index);
            if let Err(reason) = args.format.check(&plan) {
                bail!("{}: {reason}", layout.uri(index));
            }
            first_blocks.push(blocks);
            blocks += plan.payload_len().div_ceil(BLOCK as u64);
            bytes += args.format.object_size(&plan);
        }
        first_blocks.push(blocks);
        Ok(Dataset {
            layout,
            first_blocks,
            source: Source::new(args.seed, args.compress_ratio, args.dedup_ratio, blocks),
            sampling: Sampling::for_blocks(blocks),
            bytes,
        })
    }

    /// Writes object `index` to `out`; returns its measurement sample.
    fn write(&self, index: u64, out: &mut dyn Write) -> io::Result<measure::Sample> {
        let plan = self.layout.plan(index);
        let first_block = self.first_blocks[index as usize];
        let mut payload = Payload::new(
            &self.source,
            &self.sampling,
            first_block,
            plan.payload_len(),
        );
        self.layout.format.write(&plan, &mut payload, out)?;
        out.flush()?;
        Ok(payload.sample)
    }
}

pub async fn run(client: &Client, args: &GenArgs) -> anyhow::Result<()> {
    let dataset = Arc::new(Dataset::new(args)?);
    let measure = Arc::new(Mutex::new(Measure::default()));
    let bar = progress::bytes_bar(dataset.bytes, "gen");
    let started = Instant::now();
    // The uploads run on this task; the CPU work on blocking threads.
    let objects = (0..args.count).map(|index| make_object(client, &dataset, index, &measure, &bar));
    let bytes = stream::iter(objects)
        .buffer_unordered(args.concurrency as usize)
        .try_fold(0, |sum, bytes| async move { Ok(sum + bytes) })
        .await?;
    let seconds = started.elapsed().as_secs_f64().max(f64::EPSILON);
    bar.finish_and_clear();
    let samples = args.count * dataset.layout.samples_per_object;
    println!(
        "wrote {} objects ({samples} samples, {bytes} bytes) under {}/ in {seconds:.3} s: {:.1} MB/s",
        args.count,
        dataset.layout.prefix,
        bytes as f64 / 1e6 / seconds
    );
    let ratios = measure.lock().expect("not poisoned").ratios()?;
    println!("{}", ratio_report(args, &ratios));
    Ok(())
}

fn ratio_report(args: &GenArgs, ratios: &Ratios) -> String {
    let sampled = if ratios.sampled == ratios.blocks {
        format!("all {} blocks", ratios.blocks)
    } else {
        format!("{} of {} blocks sampled", ratios.sampled, ratios.blocks)
    };
    format!(
        "compress ratio asked {:.1}, measured {:.2}; dedup ratio asked {:.1}, measured {:.2} \
         (4 KiB blocks of the samples, {sampled}; compression by zstd level 3 of distinct blocks)",
        args.compress_ratio, ratios.compress, args.dedup_ratio, ratios.dedup
    )
}

/// Makes and uploads object `index`; returns its size.
async fn make_object(
    client: &Client,
    dataset: &Arc<Dataset>,
    index: u64,
    measure: &Arc<Mutex<Measure>>,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    let uri = dataset.layout.uri(index);
    let size = dataset.layout.object_size(index);
    let (dataset, measure) = (dataset.clone(), measure.clone());
    if size <= PUT_LIMIT {
        let data = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(size as usize);
            let sample = dataset.write(index, &mut out)?;
            measure.lock().expect("not poisoned").merge(sample);
            io::Result::Ok(out)
        })
        .await?
        .with_context(|| format!("generating {uri}"))?;
        client
            .put(&uri, Bytes::from(data))
            .await
            .uri_context(&uri)?;
        bar.inc(size);
        return Ok(size);
    }
    let (tx, rx) = mpsc::channel(CHUNKS_QUEUED);
    let sink_bar = bar.clone();
    let generator = tokio::task::spawn_blocking(move || {
        let mut sink = ChunkSink::new(tx, sink_bar);
        let sample = dataset.write(index, &mut sink)?;
        measure.lock().expect("not poisoned").merge(sample);
        io::Result::Ok(())
    });
    let mut rx = rx;
    let chunks = stream::poll_fn(move |cx| rx.poll_recv(cx));
    let written = client.write(&uri, chunks, size).await;
    let generated = generator.await?;
    // A failed upload closes the channel, so the generator's error then
    // only echoes it: the upload's error comes first.
    written.uri_context(&uri)?;
    generated.with_context(|| format!("generating {uri}"))?;
    Ok(size)
}

/// A writer that sends what it is given as chunks of about [`CHUNK`]
/// bytes down a bounded channel (waiting while it is full).
struct ChunkSink {
    buf: Vec<u8>,
    tx: mpsc::Sender<Bytes>,
    bar: ProgressBar,
}

impl ChunkSink {
    fn new(tx: mpsc::Sender<Bytes>, bar: ProgressBar) -> Self {
        ChunkSink {
            buf: Vec::with_capacity(CHUNK),
            tx,
            bar,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let len = chunk.len() as u64;
        self.tx
            .blocking_send(Bytes::from(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload ended"))?;
        self.bar.inc(len);
        Ok(())
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(format: Format, size: &str, count: u64) -> GenArgs {
        GenArgs {
            prefix: "file:///d/syn/".into(),
            count,
            size: size.parse().unwrap(),
            format,
            records_per_file: 3,
            compress_ratio: 2.0,
            dedup_ratio: 2.0,
            seed: 42,
            concurrency: 4,
        }
    }

    fn object(dataset: &Dataset, index: u64) -> Vec<u8> {
        let mut out = Vec::new();
        dataset.write(index, &mut out).unwrap();
        out
    }

    #[test]
    fn a_seed_gives_the_same_bytes_in_any_order() {
        let a = Dataset::new(&args(Format::Tfrecord, "uniform:1KiB-9KiB", 6)).unwrap();
        let b = Dataset::new(&args(Format::Tfrecord, "uniform:1KiB-9KiB", 6)).unwrap();
        let forward: Vec<Vec<u8>> = (0..6).map(|i| object(&a, i)).collect();
        let mut backward: Vec<Vec<u8>> = (0..6).rev().map(|i| object(&b, i)).collect();
        backward.reverse();
        assert_eq!(forward, backward);
        let mut other = args(Format::Tfrecord, "uniform:1KiB-9KiB", 6);
        other.seed = 43;
        let other = Dataset::new(&other).unwrap();
        assert_ne!(object(&other, 0), forward[0]);
        for (i, bytes) in forward.iter().enumerate() {
            assert_eq!(bytes.len() as u64, a.layout.object_size(i as u64));
        }
    }

    #[test]
    fn names_and_totals() {
        let dataset = Dataset::new(&args(Format::Npy, "1000", 3)).unwrap();
        assert_eq!(dataset.layout.uri(2), "file:///d/syn/sample_000002.npy");
        assert_eq!(dataset.bytes, 3 * 1128);
        assert_eq!(dataset.first_blocks, [0, 1, 2, 3]);
        let tf = Dataset::new(&args(Format::Tfrecord, "5000", 2)).unwrap();
        assert_eq!(tf.layout.plan(1).samples, [5000; 3]);
        assert_eq!(tf.layout.plan(1).first_sample, 3);
    }

    #[test]
    fn ratios_are_reported_against_the_asked_ones() {
        let ratios = Ratios {
            compress: 1.973,
            dedup: 3.018,
            sampled: 10,
            blocks: 40,
        };
        let mut asked = args(Format::Raw, "1", 1);
        asked.dedup_ratio = 3.0;
        assert!(ratio_report(&asked, &ratios).starts_with(
            "compress ratio asked 2.0, measured 1.97; dedup ratio asked 3.0, measured 3.02 \
                 (4 KiB blocks of the samples, 10 of 40 blocks sampled;"
        ));
    }

    #[test]
    fn ratios_below_one_are_refused() {
        assert!(ratio("0.5").is_err());
        assert!(ratio("inf").is_err());
        assert_eq!(ratio("2.5"), Ok(2.5));
    }
}
