//! `sluice oplog replay`: a recorded workload, again, against other data.
//!
//! # Mapping
//! A recorded object `<from><rest>` is replayed as `<to><rest>`. Without
//! `--from`, `<from>` is the longest prefix all replayed objects share, cut
//! after its last `/`; objects outside `--from` are skipped (counted).
//!
//! # Timing and concurrency
//! One task per recorded slot (the `thread` column), issuing that slot's
//! operations in order. No two operations of a slot overlapped when they
//! were recorded, so the replay never runs more at once than the recording
//! did. An operation is issued `(its start - the first start) / speed`
//! after the replay began, or at once when its slot is behind; how late it
//! was is its lag, reported as percentiles. A replay that keeps up shows
//! lags of a millisecond or less.
//!
//! # What is replayed
//! Through the daemon: GET as a Read of the recorded range (whole when none
//! was recorded), STAT as Stat, LIST as one page of a one-level listing.
//! PUT (zeros, the recorded size) and DELETE only with `--writes`: they
//! overwrite and remove objects under `--to`. Anything else (multipart
//! steps, client requests) is skipped and counted. Failures are reported
//! per operation in the summary, as in the recording; they do not stop
//! the replay.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::bail;
use bytes::Bytes;
use futures::StreamExt;
use sluice_client::Client;
use sluice_oplog::summary::percentile;
use sluice_oplog::{Record, Summary, op};

/// `sluice oplog replay`
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Log files (rotated ones too), read together.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Prefix to replay against, e.g. s3://other-bucket/copy/.
    #[arg(long, value_name = "PREFIX")]
    pub to: String,
    /// Prefix of the recorded objects that --to replaces [default: the
    /// longest prefix they share, up to a `/`].
    #[arg(long, value_name = "PREFIX")]
    pub from: Option<String>,
    /// Time factor: 2 replays twice as fast (recorded gaps halved).
    #[arg(long, default_value_t = 1.0, value_parser = positive)]
    pub speed: f64,
    /// Also replay PUT (zeros of the recorded size) and DELETE, which
    /// overwrite and remove objects under --to.
    #[arg(long)]
    pub writes: bool,
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

/// What one replayed operation does.
#[derive(Debug, Clone, PartialEq)]
enum Action {
    Get(Option<Range<u64>>),
    Stat,
    List,
    Put(u64),
    Delete,
}

/// One operation to issue.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    /// When, after the replay began.
    at: Duration,
    op: &'static str,
    action: Action,
    uri: String,
}

/// The steps per slot, and what was left out.
#[derive(Debug, Default)]
struct Plan {
    slots: BTreeMap<u16, Vec<Step>>,
    /// Left out, by reason.
    skipped: BTreeMap<String, u64>,
    from: String,
    /// From the first replayed start to the last replayed end, as recorded.
    span: Duration,
}

impl Plan {
    fn steps(&self) -> usize {
        self.slots.values().map(Vec::len).sum()
    }
}

/// The action of `r`, or why it is not replayed.
fn action(r: &Record, writes: bool) -> Result<(&'static str, Action), String> {
    let range = r
        .range_offset
        .map(|o| o..r.range_length.map_or(u64::MAX, |l| o.saturating_add(l)));
    Ok(match &*r.op {
        op::GET => (op::GET, Action::Get(range)),
        op::STAT => (op::STAT, Action::Stat),
        op::LIST => (op::LIST, Action::List),
        op::PUT if writes => (op::PUT, Action::Put(r.bytes)),
        op::DELETE if writes => (op::DELETE, Action::Delete),
        op::PUT | op::DELETE => return Err(format!("{} (without --writes)", r.op)),
        other => return Err(other.to_owned()),
    })
}

/// The longest prefix of all `names`, cut after its last `/`.
fn common_prefix<'a>(mut names: impl Iterator<Item = &'a str>) -> String {
    let Some(first) = names.next() else {
        return String::new();
    };
    let mut len = first.len();
    for name in names {
        len = first
            .bytes()
            .zip(name.bytes())
            .take(len)
            .take_while(|(a, b)| a == b)
            .count();
    }
    let prefix = &first[..len];
    prefix[..prefix.rfind('/').map_or(0, |i| i + 1)].to_owned()
}

fn plan(records: &[Record], args: &ReplayArgs) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    let mut chosen = Vec::new();
    for r in records {
        match action(r, args.writes) {
            Ok((op, a)) => chosen.push((r, op, a)),
            Err(why) => *plan.skipped.entry(why).or_default() += 1,
        }
    }
    plan.from = match &args.from {
        Some(from) => from.clone(),
        None => common_prefix(chosen.iter().map(|(r, ..)| r.file.as_str())),
    };
    let Some(t0) = chosen.iter().map(|(r, ..)| r.start).min() else {
        bail!(
            "nothing to replay: the log holds no GET, STAT or LIST (nor PUT or DELETE with --writes)"
        );
    };
    let mut last_end = t0;
    for (r, op, action) in chosen {
        let Some(rest) = r.file.strip_prefix(plan.from.as_str()) else {
            *plan
                .skipped
                .entry(format!("outside {}", plan.from))
                .or_default() += 1;
            continue;
        };
        let recorded = r.start.duration_since(t0).unwrap_or_default();
        last_end = last_end.max(r.end);
        plan.slots.entry(r.thread).or_default().push(Step {
            at: recorded.div_f64(args.speed),
            op,
            action,
            uri: format!("{}{rest}", args.to),
        });
    }
    plan.span = last_end.duration_since(t0).unwrap_or_default();
    Ok(plan)
}

/// A replayed operation, as a record, and how late it was issued.
struct Done {
    record: Record,
    lag: Duration,
}

pub async fn run(client: &Client, args: &ReplayArgs) -> anyhow::Result<()> {
    let log = super::read(&args.files)?;
    let plan = plan(&log.records, args)?;
    if plan.steps() == 0 {
        bail!(
            "nothing to replay: no recorded object is under {}",
            plan.from
        );
    }
    eprintln!(
        "replaying {} operations on {} slots: {} -> {} at {}x",
        plan.steps(),
        plan.slots.len(),
        plan.from,
        args.to,
        args.speed
    );
    let began = Instant::now();
    let wall = SystemTime::now();
    // The slots run as futures of this one task: the client mostly waits
    // for the daemon, and counts the bytes it gets without copying them.
    let slots = plan
        .slots
        .iter()
        .map(|(slot, steps)| run_slot(client, *slot, steps, began, wall));
    let done: Vec<Done> = futures::future::join_all(slots)
        .await
        .into_iter()
        .flatten()
        .collect();
    report(&plan, args, &done, began.elapsed(), log.records.len())
}

async fn run_slot(
    client: &Client,
    slot: u16,
    steps: &[Step],
    began: Instant,
    wall: SystemTime,
) -> Vec<Done> {
    let at = |i: Instant| wall + i.duration_since(began);
    let mut out = Vec::with_capacity(steps.len());
    for step in steps {
        let due = began + step.at;
        tokio::time::sleep_until(due.into()).await;
        let issued = Instant::now();
        let outcome = execute(client, step).await;
        let end = Instant::now();
        let (range_offset, range_length) = match &step.action {
            Action::Get(Some(r)) => (Some(r.start), (r.end != u64::MAX).then(|| r.end - r.start)),
            _ => (None, None),
        };
        let record = Record {
            thread: slot,
            op: Cow::Borrowed(step.op),
            client_id: Cow::Borrowed("replay"),
            n_objects: outcome.objects,
            bytes: outcome.bytes,
            endpoint: Cow::Borrowed(""),
            file: step.uri.clone(),
            error: outcome.error,
            start: at(issued),
            first_byte: outcome.first_byte.map(at),
            end: at(end),
            range_offset,
            range_length,
        };
        let lag = issued.saturating_duration_since(due);
        out.push(Done { record, lag });
    }
    out
}

/// What one operation did.
#[derive(Debug)]
struct Outcome {
    bytes: u64,
    objects: u64,
    first_byte: Option<Instant>,
    error: String,
}

async fn execute(client: &Client, step: &Step) -> Outcome {
    let mut out = Outcome {
        bytes: 0,
        objects: 1,
        first_byte: None,
        error: String::new(),
    };
    if let Err(error) = issue(client, step, &mut out).await {
        out.error = error.to_string();
    }
    out
}

async fn issue(client: &Client, step: &Step, out: &mut Outcome) -> sluice_client::Result<()> {
    let uri = step.uri.as_str();
    match &step.action {
        Action::Get(range) => {
            let mut stream = client.read(uri, range.clone()).await?;
            out.first_byte = Some(Instant::now());
            while let Some(chunk) = stream.next().await {
                out.bytes += chunk?.len() as u64;
            }
        }
        Action::Stat => drop(client.stat(uri).await?),
        Action::List => {
            let page = client.list_page(uri, "/", 0, None).await?;
            out.objects = (page.objects.len() + page.prefixes.len()) as u64;
        }
        Action::Put(n) => {
            let zeros = Bytes::from(vec![0u8; usize::try_from(*n).unwrap_or(usize::MAX)]);
            client.put(uri, zeros).await?;
            out.bytes = *n;
        }
        Action::Delete => drop(client.delete(uri, false).await?),
    }
    Ok(())
}

fn report(
    plan: &Plan,
    args: &ReplayArgs,
    done: &[Done],
    took: Duration,
    recorded: usize,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "replayed {} of {recorded} recorded operations: {} -> {}",
        done.len(),
        plan.from,
        args.to
    )?;
    if !plan.skipped.is_empty() {
        let skipped: Vec<String> = plan
            .skipped
            .iter()
            .map(|(why, n)| format!("{why}: {n}"))
            .collect();
        writeln!(out, "skipped: {}", skipped.join(", "))?;
    }
    let records: Vec<Record> = done.iter().map(|d| d.record.clone()).collect();
    write!(out, "{}", Summary::of(&records))?;
    let mut lags: Vec<Duration> = done.iter().map(|d| d.lag).collect();
    lags.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let late = lags
        .iter()
        .filter(|l| **l > Duration::from_millis(1))
        .count();
    writeln!(
        out,
        "lag behind schedule: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; {late} started over 1 ms late",
        ms(percentile(&lags, 50)),
        ms(percentile(&lags, 99)),
        ms(lags.last().copied().unwrap_or_default()),
    )?;
    writeln!(
        out,
        "took {:.3} s; recorded span {:.3} s, {:.3} s at {}x",
        took.as_secs_f64(),
        plan.span.as_secs_f64(),
        plan.span.div_f64(args.speed).as_secs_f64(),
        args.speed
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn rec(thread: u16, op: &'static str, file: &str, start_ms: u64) -> Record {
        let start = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + start_ms);
        Record {
            thread,
            op: op.into(),
            client_id: "sluiced".into(),
            n_objects: 1,
            bytes: 7,
            endpoint: "file://".into(),
            file: file.to_owned(),
            error: String::new(),
            start,
            first_byte: None,
            end: start + Duration::from_millis(5),
            range_offset: None,
            range_length: None,
        }
    }

    fn args(from: Option<&str>, writes: bool) -> ReplayArgs {
        ReplayArgs {
            files: vec![],
            to: "s3://b/copy/".into(),
            from: from.map(str::to_owned),
            speed: 2.0,
            writes,
        }
    }

    #[test]
    fn objects_map_under_the_new_prefix_on_their_slots() {
        let mut ranged = rec(1, "GET", "file:///d/set/a/2", 100);
        ranged.range_offset = Some(10);
        ranged.range_length = Some(20);
        let records = [
            rec(0, "GET", "file:///d/set/a/1", 0),
            ranged,
            rec(0, "STAT", "file:///d/set/b", 40),
            rec(0, "MPU_PART", "file:///d/set/c", 50),
            rec(2, "PUT", "file:///d/set/d", 60),
        ];
        let p = plan(&records, &args(None, false)).unwrap();
        assert_eq!(p.from, "file:///d/set/");
        assert_eq!(p.slots[&0].len(), 2);
        assert_eq!(p.slots[&0][1].uri, "s3://b/copy/b");
        let part = &p.slots[&1][0];
        assert_eq!(part.uri, "s3://b/copy/a/2");
        assert_eq!(part.action, Action::Get(Some(10..30)));
        // Half the recorded 100 ms at speed 2.
        assert_eq!(part.at, Duration::from_millis(50));
        assert_eq!(p.skipped["MPU_PART"], 1);
        assert_eq!(p.skipped["PUT (without --writes)"], 1);
        assert_eq!(p.span, Duration::from_millis(105));
        let with_writes = plan(&records, &args(None, true)).unwrap();
        assert_eq!(with_writes.slots[&2][0].action, Action::Put(7));
    }

    #[test]
    fn objects_outside_from_are_skipped() {
        let records = [
            rec(0, "GET", "file:///d/x/1", 0),
            rec(0, "GET", "file:///e/1", 1),
        ];
        let p = plan(&records, &args(Some("file:///d/"), false)).unwrap();
        assert_eq!(p.steps(), 1);
        assert_eq!(p.skipped["outside file:///d/"], 1);
        assert!(plan(&records[..0], &args(None, false)).is_err());
    }

    #[test]
    fn common_prefix_stops_at_a_slash() {
        let names = ["s3://b/train/shard-01", "s3://b/train/shard-02"];
        assert_eq!(common_prefix(names.into_iter()), "s3://b/train/");
        assert_eq!(common_prefix(["s3://b/k"].into_iter()), "s3://b/");
        assert_eq!(common_prefix(std::iter::empty()), "");
    }
}
