//! The object commands: stat, ls, get, cat, put, rm.
//!
//! Every failure is reported with the URI it concerns: daemon messages name
//! it already, and anything else gets it as context (see [`UriContext`]).
//! Output to stdout stops quietly when the reader goes away (`| head`).

use std::io::{self, IsTerminal, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures::StreamExt;
use sluice_client::{Client, Entry, ObjectMeta, ReadStream};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::progress;

/// Adds the URI to an error whose message does not name it yet.
pub trait UriContext<T> {
    fn uri_context(self, uri: &str) -> anyhow::Result<T>;
}

impl<T> UriContext<T> for Result<T, sluice_client::Error> {
    fn uri_context(self, uri: &str) -> anyhow::Result<T> {
        self.map_err(|error| {
            if error.to_string().contains(uri) {
                anyhow::Error::new(error)
            } else {
                anyhow::Error::new(error).context(uri.to_owned())
            }
        })
    }
}

pub async fn stat(client: &Client, uri: &str) -> anyhow::Result<()> {
    let meta = client.stat(uri).await.uri_context(uri)?;
    let mut out = io::stdout().lock();
    writeln!(out, "uri:           {}", meta.uri)?;
    writeln!(out, "size:          {}", meta.size)?;
    writeln!(out, "etag:          {}", meta.etag)?;
    writeln!(out, "last-modified: {}", modified(&meta))?;
    if !meta.version.is_empty() {
        writeln!(out, "version:       {}", meta.version)?;
    }
    Ok(())
}

fn modified(meta: &ObjectMeta) -> String {
    meta.last_modified
        .as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

/// The modification time to the second, as `ls -l` shows it.
fn modified_seconds(meta: &ObjectMeta) -> String {
    meta.last_modified.as_ref().map_or_else(
        || "-".to_owned(),
        |t| {
            prost_types::Timestamp {
                seconds: t.seconds,
                nanos: 0,
            }
            .to_string()
        },
    )
}

pub async fn ls(client: &Client, prefix: &str, recursive: bool, long: bool) -> anyhow::Result<()> {
    let mut entries = std::pin::pin!(client.list(prefix, recursive));
    let mut out = io::BufWriter::new(io::stdout().lock());
    while let Some(entry) = entries.next().await {
        let line = match entry.uri_context(prefix)? {
            Entry::Object(meta) if long => {
                format!(
                    "{:>14}  {:<20}  {}",
                    meta.size,
                    modified_seconds(&meta),
                    meta.uri
                )
            }
            Entry::Prefix(uri) if long => format!("{:>14}  {:<20}  {uri}", "DIR", ""),
            entry => entry.uri().to_owned(),
        };
        if quiet_on_broken_pipe(writeln!(out, "{line}"))? {
            return Ok(());
        }
    }
    quiet_on_broken_pipe(out.flush())
        .map(drop)
        .map_err(Into::into)
}

/// `Ok(true)`: the reader of stdout went away, stop writing.
fn quiet_on_broken_pipe(result: io::Result<()>) -> io::Result<bool> {
    match result {
        Ok(()) => Ok(false),
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(true),
        Err(error) => Err(error),
    }
}

/// The range `--offset` and `--length` select, `None` for the whole object.
pub fn range(offset: Option<u64>, length: Option<u64>) -> anyhow::Result<Option<Range<u64>>> {
    let start = offset.unwrap_or(0);
    Ok(match length {
        None if offset.is_none() => None,
        None => Some(start..u64::MAX),
        Some(length) => match start.checked_add(length) {
            Some(end) if end < u64::MAX => Some(start..end),
            _ => bail!("--offset {start} plus --length {length} is past the largest offset"),
        },
    })
}

/// Where `get` writes: the object's last key segment unless told otherwise,
/// inside `file` when that is a directory.
pub fn destination(uri: &str, file: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let name = || {
        let name = uri.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        if name.is_empty() || name.contains(':') {
            bail!("{uri}: no file name in the URI; give a destination FILE");
        }
        Ok(PathBuf::from(name))
    };
    match file {
        None => name(),
        Some(dir) if dir.is_dir() => Ok(dir.join(name()?)),
        Some(file) => Ok(file),
    }
}

pub async fn get(
    client: &Client,
    uri: &str,
    file: Option<PathBuf>,
    offset: Option<u64>,
    length: Option<u64>,
) -> anyhow::Result<()> {
    let range = range(offset, length)?;
    // Open the read first: a missing object must not clobber a local file.
    let stream = client.read(uri, range).await.uri_context(uri)?;
    if file.as_deref() == Some(Path::new("-")) {
        return download(uri, stream, tokio::io::stdout(), "stdout").await;
    }
    let path = destination(uri, file)?;
    let out = tokio::fs::File::create(&path)
        .await
        .with_context(|| format!("creating {}", path.display()))?;
    let result = download(uri, stream, out, &path.display().to_string()).await;
    if result.is_err() {
        // Leave no truncated file that could pass for the object.
        let _ = tokio::fs::remove_file(&path).await;
    }
    result
}

pub async fn cat(client: &Client, uri: &str) -> anyhow::Result<()> {
    let stream = client.read(uri, None).await.uri_context(uri)?;
    download(uri, stream, tokio::io::stdout(), "stdout").await
}

/// Streams the read of `uri` into `out` chunk by chunk, with a progress bar
/// if large.
async fn download<W>(
    uri: &str,
    mut stream: ReadStream,
    mut out: W,
    out_name: &str,
) -> anyhow::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let bar = progress::transfer_bar(stream.expected_len(), uri);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.uri_context(uri)?;
        if quiet_on_broken_pipe(out.write_all(&chunk).await)
            .with_context(|| format!("writing {out_name}"))?
        {
            return Ok(());
        }
        bar.inc(chunk.len() as u64);
    }
    quiet_on_broken_pipe(out.flush().await).with_context(|| format!("writing {out_name}"))?;
    bar.finish_and_clear();
    Ok(())
}

pub async fn put(client: &Client, file: &Path, uri: &str) -> anyhow::Result<()> {
    let source =
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let size = source
        .metadata()
        .with_context(|| format!("reading the size of {}", file.display()))?
        .len();
    let bar = progress::transfer_bar(size, uri);
    let counter = bar.clone();
    client
        .write_file(uri, source, move |n| counter.inc(n))
        .await
        .uri_context(uri)?;
    bar.finish_and_clear();
    Ok(())
}

pub async fn warm(client: &Client, prefix: &str, concurrency: u32) -> anyhow::Result<()> {
    let progress = client.warm(prefix, concurrency).await.uri_context(prefix)?;
    warm_report(prefix, progress).await
}

/// `sluice warm --from FILE`: the URIs of FILE (`-`: stdin), one per line,
/// blank lines and `#` comments skipped.
pub async fn warm_from(
    client: &Client,
    file: &std::path::Path,
    concurrency: u32,
) -> anyhow::Result<()> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let uris: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let label = file.display().to_string();
    let progress = client
        .warm_uris(uris, concurrency)
        .await
        .uri_context(&label)?;
    warm_report(&label, progress).await
}

async fn warm_report(
    prefix: &str,
    mut progress: impl futures::Stream<Item = sluice_client::Result<sluice_client::WarmProgress>>
    + Unpin,
) -> anyhow::Result<()> {
    let bar = progress::bytes_bar(0, prefix);
    let mut last = sluice_client::WarmProgress::default();
    while let Some(p) = progress.next().await {
        last = p.uri_context(prefix)?;
        bar.set_length(last.listed_bytes.max(last.warmed_bytes + last.cached_bytes));
        bar.set_position(last.warmed_bytes + last.cached_bytes);
    }
    bar.finish_and_clear();
    println!(
        "{prefix}: {} objects read into the cache ({}), {} already cached ({}), {} too large to cache, {} failed",
        last.warmed_objects,
        indicatif::HumanBytes(last.warmed_bytes),
        last.cached_objects,
        indicatif::HumanBytes(last.cached_bytes),
        last.skipped_objects,
        last.failed_objects,
    );
    if last.cache_full {
        eprintln!(
            "{prefix}: stopped before the end: the rest does not fit in the cache \
             ({} of {} objects listed)",
            last.warmed_objects + last.cached_objects + last.skipped_objects + last.failed_objects,
            last.listed_objects
        );
    }
    if last.failed_objects > 0 {
        anyhow::bail!(
            "{prefix}: {} objects could not be read; the first: {}",
            last.failed_objects,
            last.first_error
        );
    }
    Ok(())
}

pub async fn stats(client: &Client, watch: Option<f64>) -> anyhow::Result<()> {
    let Some(every) = watch else {
        print!("{}", render_stats(&client.stats().await?, None));
        return Ok(());
    };
    if !(every.is_finite() && every >= 0.1) {
        anyhow::bail!("--watch takes at least 0.1 seconds");
    }
    let every = std::time::Duration::from_secs_f64(every);
    let mut last: Option<(std::time::Instant, sluice_client::StatsResponse)> = None;
    loop {
        let now = client.stats().await?;
        let since = last.as_ref().map(|(at, prev)| (at.elapsed(), prev));
        // Clear the screen and go home, as top does.
        print!("\x1b[2J\x1b[H{}", render_stats(&now, since));
        last = Some((std::time::Instant::now(), now));
        tokio::time::sleep(every).await;
    }
}

/// The stats as a table; with a previous snapshot, per-second rates too.
fn render_stats(
    now: &sluice_client::StatsResponse,
    since: Option<(std::time::Duration, &sluice_client::StatsResponse)>,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let ratio = |hits: u64, all: u64| {
        if all == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}%", 100.0 * hits as f64 / all as f64)
        }
    };
    let _ = writeln!(
        out,
        "cache {} of {} in {} objects; hits {} misses {} ({}); requests in flight {}",
        human(now.cache_bytes),
        human(now.memory_budget),
        now.cache_entries,
        now.cache_hits,
        now.cache_misses,
        ratio(now.cache_hits, now.cache_hits + now.cache_misses),
        now.requests_in_flight
    );
    let _ = writeln!(
        out,
        "prefetch {} objects, {} hits, {} wasted; ahead now {} items, {}",
        now.prefetched,
        now.prefetch_hits,
        human(now.prefetch_wasted_bytes),
        now.lookahead_items,
        human(now.lookahead_bytes)
    );
    let _ = writeln!(
        out,
        "\n{:>8} {:>7} {:>8} {:>4} {:>9} {:>7} {:>9} {:>11} {:>10} {:>9}",
        "SESSION", "UID", "PID", "SHM", "FETCHES", "HITS", "STALLED", "STALL", "STALL/S", "LEASED"
    );
    for s in &now.sessions {
        let rate = since
            .and_then(|(dt, prev)| {
                let before = prev
                    .sessions
                    .iter()
                    .find(|p| p.session_id == s.session_id)?;
                let secs = dt.as_secs_f64();
                (secs > 0.0).then(|| (s.stall_seconds - before.stall_seconds).max(0.0) / secs)
            })
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.3}"));
        let _ = writeln!(
            out,
            "{:>8} {:>7} {:>8} {:>4} {:>9} {:>7} {:>9} {:>10.3}s {:>10} {:>9}",
            s.session_id,
            s.uid,
            s.pid,
            if s.shared_memory { "yes" } else { "no" },
            s.fetches,
            ratio(s.hits, s.fetches),
            s.stalled,
            s.stall_seconds,
            rate,
            human(s.leased_bytes)
        );
        for p in &s.plans {
            let _ = writeln!(
                out,
                "{:>8}   plan {} {}: {} of {} items{}, {} items / {} ahead",
                "",
                p.plan_id,
                if p.job.is_empty() { "-" } else { &p.job },
                p.position,
                p.items,
                if p.complete { "" } else { " (arriving)" },
                p.ahead_items,
                human(p.ahead_bytes)
            );
        }
    }
    if now.sessions.is_empty() {
        let _ = writeln!(out, "(no sessions visible to this user)");
    }
    out
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

pub async fn evict(client: &Client, prefix: &str) -> anyhow::Result<()> {
    let evicted = client.evict(prefix).await.uri_context(prefix)?;
    println!("{prefix}: {evicted} cached objects dropped");
    Ok(())
}

pub async fn rm(
    client: &Client,
    uri: &str,
    recursive: bool,
    whole_bucket: bool,
) -> anyhow::Result<()> {
    let deleted = if whole_bucket {
        client.delete_whole_bucket(uri).await
    } else {
        client.delete(uri, recursive).await
    }
    .uri_context(uri)?;
    if recursive && io::stderr().is_terminal() {
        eprintln!(
            "deleted {deleted} object{}",
            if deleted == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_flags() {
        assert_eq!(range(None, None).unwrap(), None);
        assert_eq!(range(Some(5), None).unwrap(), Some(5..u64::MAX));
        assert_eq!(range(Some(5), Some(10)).unwrap(), Some(5..15));
        assert_eq!(range(None, Some(10)).unwrap(), Some(0..10));
        assert!(range(Some(u64::MAX - 1), Some(5)).is_err());
    }

    #[test]
    fn destination_is_the_last_key_segment() {
        assert_eq!(
            destination("s3://b/dir/x.bin", None).unwrap(),
            PathBuf::from("x.bin")
        );
        assert_eq!(
            destination("file:///data/y/", None).unwrap(),
            PathBuf::from("y")
        );
        assert!(destination("s3://", None).is_err());
        let dir = tempfile::tempdir().unwrap();
        let inside = destination("s3://b/k", Some(dir.path().to_owned())).unwrap();
        assert_eq!(inside, dir.path().join("k"));
        let named = destination("s3://b/k", Some(PathBuf::from("out.bin"))).unwrap();
        assert_eq!(named, PathBuf::from("out.bin"));
    }

    #[test]
    fn uri_is_added_only_when_missing() {
        let named: Result<(), _> = Err(tonic::Status::not_found("not found: f:///a").into());
        assert_eq!(
            crate::render(&named.uri_context("f:///a").unwrap_err()),
            "not found: f:///a"
        );
        let bare: Result<(), _> = Err(tonic::Status::unavailable("transport error").into());
        assert_eq!(
            crate::render(&bare.uri_context("f:///a").unwrap_err()),
            "f:///a: transport error"
        );
    }
}
