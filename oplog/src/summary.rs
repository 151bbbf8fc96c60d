//! What a set of records adds up to, per operation: counts, errors, bytes,
//! throughput, latency percentiles; over all of them: the time span and the
//! most operations in flight at once. `sluice oplog stats` prints it for a
//! log, `sluice oplog replay` for what it replayed.
//!
//! Throughput is bytes over the span from the operation kind's first start
//! to its last end, in MB/s with MB = 10^6 bytes (the unit of `sluice bench`
//! and of disk and network datasheets). Percentiles are nearest-rank.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use crate::Record;

/// The figures of one operation kind.
#[derive(Debug, Clone, PartialEq)]
pub struct OpSummary {
    /// Operations.
    pub count: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Payload bytes moved, failed operations' partial bytes included.
    pub bytes: u64,
    /// MB/s over this kind's span.
    pub mb_per_s: f64,
    /// Latency (start to end) at the 50th, 90th and 99th percentile, and
    /// the largest.
    pub p50: Duration,
    /// See `p50`.
    pub p90: Duration,
    /// See `p50`.
    pub p99: Duration,
    /// See `p50`.
    pub max: Duration,
    /// Median time to first byte, where recorded.
    pub ttfb_p50: Option<Duration>,
}

/// The figures of a set of records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Per operation name, in name order.
    pub ops: BTreeMap<String, OpSummary>,
    /// From the first start to the last end.
    pub span: Duration,
    /// The most operations in flight at one instant.
    pub max_concurrency: u64,
}

impl Summary {
    /// Sums up `records` (any order).
    pub fn of(records: &[Record]) -> Summary {
        let mut by_op: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
        for r in records {
            by_op.entry(&r.op).or_default().push(r);
        }
        let ops = by_op
            .into_iter()
            .map(|(op, rs)| (op.to_owned(), op_summary(&rs)))
            .collect();
        Summary {
            ops,
            span: span(records.iter()),
            max_concurrency: max_concurrency(records),
        }
    }

    /// Operations in all.
    pub fn count(&self) -> u64 {
        self.ops.values().map(|o| o.count).sum()
    }
}

fn op_summary(records: &[&Record]) -> OpSummary {
    let mut lat: Vec<Duration> = records.iter().map(|r| r.duration()).collect();
    lat.sort_unstable();
    let mut ttfb: Vec<Duration> = records.iter().filter_map(|r| r.ttfb()).collect();
    ttfb.sort_unstable();
    let bytes: u64 = records.iter().map(|r| r.bytes).sum();
    let secs = span(records.iter().copied()).as_secs_f64();
    OpSummary {
        count: records.len() as u64,
        errors: records.iter().filter(|r| r.failed()).count() as u64,
        bytes,
        mb_per_s: if secs > 0.0 {
            bytes as f64 / secs / 1e6
        } else {
            0.0
        },
        p50: percentile(&lat, 50),
        p90: percentile(&lat, 90),
        p99: percentile(&lat, 99),
        max: lat.last().copied().unwrap_or_default(),
        ttfb_p50: (!ttfb.is_empty()).then(|| percentile(&ttfb, 50)),
    }
}

/// Nearest-rank percentile of sorted `values`.
pub fn percentile(values: &[Duration], p: u64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let rank = (values.len() as u64 * p).div_ceil(100).max(1);
    values[rank as usize - 1]
}

fn span<'a>(records: impl Iterator<Item = &'a Record>) -> Duration {
    let mut first: Option<SystemTime> = None;
    let mut last: Option<SystemTime> = None;
    for r in records {
        first = Some(first.map_or(r.start, |f| f.min(r.start)));
        last = Some(last.map_or(r.end, |l| l.max(r.end)));
    }
    match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f).unwrap_or_default(),
        _ => Duration::ZERO,
    }
}

/// The most records whose `[start, end)` share an instant.
fn max_concurrency(records: &[Record]) -> u64 {
    let mut events: Vec<(SystemTime, i8)> = Vec::with_capacity(records.len() * 2);
    for r in records {
        events.push((r.start, 1));
        events.push((r.end.max(r.start), -1));
    }
    // Ends sort before starts at the same instant: back-to-back operations
    // of one slot do not count as overlapping.
    events.sort_unstable();
    let (mut now, mut most) = (0i64, 0i64);
    for (_, step) in events {
        now += i64::from(step);
        most = most.max(now);
    }
    most as u64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<14} {:>9} {:>7} {:>14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "op",
            "count",
            "errors",
            "bytes",
            "MB/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "ttfb ms"
        )?;
        for (op, s) in &self.ops {
            let ttfb = s
                .ttfb_p50
                .map_or_else(|| "-".to_owned(), |t| format!("{:.3}", ms(t)));
            writeln!(
                f,
                "{op:<14} {:>9} {:>7} {:>14} {:>9.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {ttfb:>9}",
                s.count,
                s.errors,
                s.bytes,
                s.mb_per_s,
                ms(s.p50),
                ms(s.p90),
                ms(s.p99),
                ms(s.max)
            )?;
        }
        writeln!(
            f,
            "{} operations over {:.3} s, at most {} at once",
            self.count(),
            self.span.as_secs_f64(),
            self.max_concurrency
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn rec(op: &'static str, start_ms: u64, len_ms: u64, bytes: u64, error: &str) -> Record {
        let start = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + start_ms);
        Record {
            thread: 0,
            op: op.into(),
            client_id: "".into(),
            n_objects: 1,
            bytes,
            endpoint: "".into(),
            file: String::new(),
            error: error.to_owned(),
            start,
            first_byte: None,
            end: start + Duration::from_millis(len_ms),
            range_offset: None,
            range_length: None,
        }
    }

    #[test]
    fn per_op_figures() {
        let mut records: Vec<Record> = (0..100)
            .map(|i| rec("GET", i * 10, i + 1, 1_000_000, ""))
            .collect();
        records.push(rec("STAT", 0, 5, 0, "not found"));
        let s = Summary::of(&records);
        let get = &s.ops["GET"];
        assert_eq!((get.count, get.errors, get.bytes), (100, 0, 100_000_000));
        assert_eq!(get.p50, Duration::from_millis(50));
        assert_eq!(get.p90, Duration::from_millis(90));
        assert_eq!(get.p99, Duration::from_millis(99));
        assert_eq!(get.max, Duration::from_millis(100));
        // 100 MB from 0 ms to 990 + 100 ms.
        assert!(
            (get.mb_per_s - 100.0 / 1.09).abs() < 1e-6,
            "{}",
            get.mb_per_s
        );
        assert_eq!(s.ops["STAT"].errors, 1);
        assert_eq!(s.count(), 101);
        assert_eq!(s.span, Duration::from_millis(1090));
    }

    #[test]
    fn concurrency_counts_overlaps_not_neighbours() {
        let records = [
            rec("GET", 0, 10, 0, ""),
            rec("GET", 10, 10, 0, ""),
            rec("GET", 5, 10, 0, ""),
            rec("GET", 6, 1, 0, ""),
        ];
        assert_eq!(Summary::of(&records).max_concurrency, 3);
        assert_eq!(Summary::of(&records[..2]).max_concurrency, 1);
        assert_eq!(Summary::of(&[]).max_concurrency, 0);
    }
}
