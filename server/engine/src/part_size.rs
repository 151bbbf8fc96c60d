//! Adaptive part size: how many bytes each ranged GET of an endpoint asks
//! for.
//!
//! A part of `p` bytes costs one request's wait for its first byte, `t0`,
//! then `p / r` on its connection (`r`: what one connection moves per
//! second). Parts in flight together overlap their waits, so splitting an
//! object pays while a part's transfer time is long against `t0`, and stops
//! paying once parts are so small that the first-byte wait is most of each.
//! The size chosen is
//!
//! ```text
//! p = clamp(K · t0 · r,  engine.min_part_size,  engine.part_size)   K = 2
//! ```
//!
//! — each part transfers for twice its first-byte wait: a third of a part's
//! time is waiting, and an object of `p` bytes that one request would fetch
//! in `3·t0` would take `2·t0` as two halves, for twice the requests. Below
//! `p` an object is one request. At object-store latency (`t0` ≈ 20–50 ms,
//! `r` ≈ 100 MB/s) this is 4–10 MB, the sizes S3 recommends; on a local
//! server (`t0` under a millisecond) parts shrink to `min_part_size`, which
//! spreads a large object over more connections; over a slow, far link
//! they grow to the cap (`part_size`, the fixed key).
//!
//! `t0` and `r` are learned per endpoint from each fetch's first part, the
//! only request whose first byte and body are timed apart: `t0` from asking
//! to the response headers, `r` from the headers to the body's end (bodies
//! of at least [`MIN_RATE_SAMPLE`] only: shorter ones time the connection's
//! start, not its speed). Both are geometric moving averages (weight 1/5 per
//! sample, in log space: one outlier moves them little).
//! Parts never shrink below that sample size, so each fetch's first part
//! keeps timing the connection: a rate learned on a slow spell cannot pin
//! the parts small after the link recovers.
//! Until both are known — and always with `engine.adaptive_part_size` off —
//! parts are `part_size`. A fetch that starts while `per_object_concurrency`
//! other fetches run at its endpoint takes `part_size` too (see
//! `RangeEngine::fetch`): the link is fanned out then, and smaller parts add
//! requests, not throughput.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;

/// Transfer time of a part over its first-byte wait.
const K: f64 = 2.0;
/// Weight of a new sample in the moving averages.
const ALPHA: f64 = 0.2;
/// Smallest body that says how fast a connection is.
pub const MIN_RATE_SAMPLE: u64 = 256 << 10;
/// Part sizes are multiples of this.
const GRAIN: u64 = 64 << 10;

/// One endpoint's part size and what it learned.
#[derive(Debug)]
pub struct PartSizer {
    min: u64,
    cap: u64,
    adaptive: bool,
    state: Mutex<Estimates>,
    /// Shows the size last handed out.
    gauge: Gauge,
}

#[derive(Debug, Default, Clone, Copy)]
struct Estimates {
    /// Seconds to the first byte.
    first_byte: Option<f64>,
    /// Bytes per second on one connection.
    rate: Option<f64>,
}

impl PartSizer {
    /// Parts between `min` and `cap` bytes (`cap` always, unless
    /// `adaptive`); `gauge` shows the size last handed out. The floor is
    /// never below [`MIN_RATE_SAMPLE`] (unless `cap` is): smaller first
    /// parts could not time the connection again, and a rate learned on
    /// a slow spell would hold the parts small after the link recovered.
    pub fn new(min: u64, cap: u64, adaptive: bool, gauge: Gauge) -> Self {
        let cap = cap.max(1);
        gauge.set(cap as i64);
        PartSizer {
            min: min.max(MIN_RATE_SAMPLE).clamp(1, cap),
            cap,
            adaptive,
            state: Mutex::new(Estimates::default()),
            gauge,
        }
    }

    /// The part size now.
    pub fn part_size(&self) -> u64 {
        let size = self.learned();
        self.gauge.set(size as i64);
        size
    }

    fn learned(&self) -> u64 {
        if !self.adaptive {
            return self.cap;
        }
        let e = *self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (Some(t0), Some(r)) = (e.first_byte, e.rate) else {
            return self.cap;
        };
        let ideal = (K * t0 * r).min(self.cap as f64) as u64;
        let rounded = if ideal >= GRAIN {
            ideal / GRAIN * GRAIN
        } else {
            ideal
        };
        rounded.clamp(self.min, self.cap)
    }

    /// A first response's headers came `wait` after it was asked for.
    pub fn first_byte(&self, wait: Duration) {
        let mut e = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        e.first_byte = Some(average(e.first_byte, wait.as_secs_f64()));
    }

    /// A first response's body of `bytes` took `took` after its headers.
    pub fn body(&self, bytes: u64, took: Duration) {
        if bytes < MIN_RATE_SAMPLE {
            return;
        }
        let rate = bytes as f64 / took.as_secs_f64().max(1e-6);
        let mut e = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        e.rate = Some(average(e.rate, rate));
    }
}

/// Moves `old` towards `sample` in log space: a geometric moving average,
/// which one outlier (a stalled connection, a page-cache hit) moves little
/// and which follows a change by the same ratio up as down.
fn average(old: Option<f64>, sample: f64) -> f64 {
    let sample = sample.max(f64::MIN_POSITIVE);
    old.map_or(sample, |old| {
        (old.ln() + ALPHA * (sample.ln() - old.ln())).exp()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn learned(sizer: &PartSizer, first_byte: Duration, rate: f64, n: usize) -> u64 {
        for _ in 0..n {
            sizer.first_byte(first_byte);
            sizer.body(4 * MIB, Duration::from_secs_f64(4.0 * MIB as f64 / rate));
        }
        sizer.part_size()
    }

    #[test]
    fn the_cap_until_both_are_known_and_always_when_fixed() {
        let sizer = PartSizer::new(MIB, 8 * MIB, true, Gauge::default());
        assert_eq!(sizer.part_size(), 8 * MIB);
        sizer.first_byte(Duration::from_micros(100));
        assert_eq!(sizer.part_size(), 8 * MIB, "no rate yet");
        // A short body says nothing about the rate.
        sizer.body(64 << 10, Duration::from_micros(10));
        assert_eq!(sizer.part_size(), 8 * MIB);
        let fixed = PartSizer::new(MIB, 8 * MIB, false, Gauge::default());
        assert_eq!(
            learned(&fixed, Duration::from_micros(100), 1e9, 20),
            8 * MIB
        );
    }

    #[test]
    fn parts_transfer_for_twice_the_first_byte_wait() {
        // 20 ms to the first byte at 100 MB/s: 2 × 0.02 × 1e8 = 4 MB.
        let sizer = PartSizer::new(MIB, 16 * MIB, true, Gauge::default());
        let p = learned(&sizer, Duration::from_millis(20), 1e8, 30);
        assert_eq!(p % GRAIN, 0);
        assert!(p.abs_diff(4_000_000) <= GRAIN, "{p}");
        // A local server: the floor.
        let local = PartSizer::new(MIB, 16 * MIB, true, Gauge::default());
        assert_eq!(learned(&local, Duration::from_micros(200), 1e9, 30), MIB);
        // A far, slow-to-answer link: the cap.
        let far = PartSizer::new(MIB, 16 * MIB, true, Gauge::default());
        assert_eq!(learned(&far, Duration::from_millis(150), 2e8, 30), 16 * MIB);
    }

    #[test]
    fn follows_a_changing_endpoint() {
        let sizer = PartSizer::new(MIB, 16 * MIB, true, Gauge::default());
        learned(&sizer, Duration::from_micros(200), 1e9, 30);
        assert_eq!(sizer.part_size(), MIB);
        // The endpoint slows to answer: parts grow back within a few dozen
        // fetches.
        assert_eq!(
            learned(&sizer, Duration::from_millis(100), 2e8, 40),
            16 * MIB
        );
    }

    #[test]
    fn parts_stay_big_enough_to_time_the_connection() {
        // A floor below the rate sample is raised to it: every first part
        // still times the connection, so a slow spell is unlearned.
        let sizer = PartSizer::new(64 << 10, 16 * MIB, true, Gauge::default());
        assert_eq!(
            learned(&sizer, Duration::from_micros(200), 1e6, 30),
            MIN_RATE_SAMPLE
        );
        assert_eq!(
            learned(&sizer, Duration::from_millis(100), 2e8, 40),
            16 * MIB
        );
        // Unless the cap itself is smaller.
        let tiny = PartSizer::new(1, 4096, true, Gauge::default());
        assert_eq!(learned(&tiny, Duration::from_micros(200), 1e6, 5), 4096);
    }
}
