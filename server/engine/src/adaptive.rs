//! Adaptive concurrency: how many requests each backend endpoint gets.
//!
//! One [`Controller`] per endpoint (`file`, `s3` for the default S3
//! endpoint, `s3://host:port` for each listed one) keeps a *limit* on the
//! requests in flight to it, between 1 and `engine.max_concurrency` (the
//! fixed key is the cap). The limit moves once per *window* — at least
//! `max(limit, 8)` finished requests and 20 ms — by these rules, in order:
//!
//! 1. **Throttled** (a 503 SlowDown or 429 in the window): halve the limit.
//! 2. The limit was not reached during the window (demand was lower): keep
//!    it — there is nothing to learn about more concurrency.
//! 3. **Latency rising** (the window's mean request time above twice the
//!    baseline — the lowest recent window mean, which drifts up 2 % per
//!    window so it follows a slower backend): take 20 % off.
//! 4. **Throughput grew** (≥ 5 % over the previous window's bytes per
//!    second): double in slow start, else add one.
//! 5. Flat throughput at baseline-like latency (within 1.2×): add one — the
//!    backend shows no sign of queueing, so probing costs nothing. Else
//!    keep.
//!
//! Slow start (doubling) ends at the first window that does not grow. This
//! is AIMD with a latency guard: additive increase while it pays, a
//! multiplicative cut when the server says so (throttling) or shows it
//! (latency).
//!
//! Demand reads and prefetch share the limit, but never in the order that
//! would make a demand read wait behind prefetch: a demand request waits
//! only while *demand* requests fill the limit; a prefetch request waits
//! while all requests do. So demand may exceed the limit by the prefetch
//! requests in flight (at most `prefetch.concurrency`), and prefetch only
//! uses what demand leaves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use crate::metrics::EndpointLabels;
use crate::part_size::PartSizer;

/// The shortest window.
const MIN_WINDOW: Duration = Duration::from_millis(20);
/// The fewest requests in a window.
const MIN_WINDOW_REQUESTS: u64 = 8;

/// What a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A client waits for it.
    Demand,
    /// Read ahead of a plan.
    Prefetch,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or failed for a reason that says nothing about load).
    Done {
        /// Payload bytes moved.
        bytes: u64,
    },
    /// The server asked to slow down (503 SlowDown, 429).
    Throttled,
}

/// Every endpoint's controller.
#[derive(Debug)]
pub struct Controllers {
    cap: usize,
    initial: usize,
    adaptive: bool,
    parts: PartSizes,
    map: Mutex<HashMap<String, Arc<Controller>>>,
    gauge: Family<EndpointLabels, Gauge>,
    part_gauge: Family<EndpointLabels, Gauge>,
}

/// Bounds of each endpoint's part size ([`crate::part_size`]).
#[derive(Debug, Clone, Copy)]
pub struct PartSizes {
    /// The smallest part.
    pub min: u64,
    /// The largest part (and the only one when not `adaptive`).
    pub cap: u64,
    /// Learn each endpoint's part size.
    pub adaptive: bool,
}

impl Controllers {
    /// Controllers capped at `cap` requests per endpoint, starting at
    /// `initial`; with `adaptive` off, every limit stays at `cap`. Each
    /// endpoint's parts are sized within `parts`. `gauge` and `part_gauge`
    /// show each endpoint's limit and part size.
    pub fn new(
        cap: usize,
        initial: usize,
        adaptive: bool,
        parts: PartSizes,
        gauge: Family<EndpointLabels, Gauge>,
        part_gauge: Family<EndpointLabels, Gauge>,
    ) -> Self {
        let cap = cap.max(1);
        Controllers {
            cap,
            initial: if adaptive { initial.clamp(1, cap) } else { cap },
            adaptive,
            parts,
            map: Mutex::new(HashMap::new()),
            gauge,
            part_gauge,
        }
    }

    /// The controller of `endpoint`.
    pub fn get(&self, endpoint: &str) -> Arc<Controller> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(endpoint.to_owned())
            .or_insert_with(|| {
                let labels = EndpointLabels {
                    endpoint: endpoint.to_owned(),
                };
                let gauge = self.gauge.get_or_create(&labels).clone();
                let PartSizes { min, cap, adaptive } = self.parts;
                let part_gauge = self.part_gauge.get_or_create(&labels).clone();
                let sizer = PartSizer::new(min, cap, adaptive, part_gauge);
                Arc::new(Controller::new(
                    self.initial,
                    self.cap,
                    self.adaptive,
                    gauge,
                    sizer,
                ))
            })
            .clone()
    }

    /// Each endpoint's limit now.
    pub fn limits(&self) -> Vec<(String, usize)> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = map.iter().map(|(k, c)| (k.clone(), c.limit())).collect();
        out.sort();
        out
    }
}

/// One endpoint's limit and what it learned.
#[derive(Debug)]
pub struct Controller {
    cap: usize,
    adaptive: bool,
    demand: AtomicUsize,
    total: AtomicUsize,
    /// Fetches (objects) in progress at the endpoint.
    fetches: AtomicUsize,
    freed: Notify,
    state: Mutex<State>,
    gauge: Gauge,
    sizer: PartSizer,
}

#[derive(Debug)]
struct State {
    limit: f64,
    slow_start: bool,
    started: Instant,
    requests: u64,
    bytes: u64,
    latency: Duration,
    throttled: bool,
    /// The most requests in flight at once during the window.
    peak: usize,
    previous: Option<f64>,
    baseline: Option<f64>,
}

/// A request slot of an endpoint; give it back with [`Permit::finish`]
/// (a permit dropped unfinished — a cancelled request — teaches nothing).
#[derive(Debug)]
pub struct Permit {
    controller: Arc<Controller>,
    priority: Priority,
    started: Instant,
}

impl Controller {
    fn new(initial: usize, cap: usize, adaptive: bool, gauge: Gauge, sizer: PartSizer) -> Self {
        gauge.set(initial as i64);
        Controller {
            cap,
            adaptive,
            demand: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
            fetches: AtomicUsize::new(0),
            freed: Notify::new(),
            state: Mutex::new(State {
                limit: initial as f64,
                slow_start: true,
                started: Instant::now(),
                requests: 0,
                bytes: 0,
                latency: Duration::ZERO,
                throttled: false,
                peak: 0,
                previous: None,
                baseline: None,
            }),
            gauge,
            sizer,
        }
    }

    /// A fetch at the endpoint starts; it counts until the guard drops.
    /// Returns the guard and how many other fetches were in progress.
    pub fn start_fetch(self: &Arc<Self>) -> (FetchGuard, usize) {
        let others = self.fetches.fetch_add(1, Ordering::SeqCst);
        (FetchGuard(self.clone()), others)
    }

    /// The endpoint's part size ([`crate::part_size`]).
    pub fn sizer(&self) -> &PartSizer {
        &self.sizer
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        (self.state().limit as usize).clamp(1, self.cap)
    }

    /// Requests in flight now (demand and prefetch).
    pub fn in_flight(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// A slot for a request of `priority`: demand waits while demand fills
    /// the limit, prefetch while everything does.
    pub async fn acquire(self: &Arc<Self>, priority: Priority) -> Permit {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_take(priority) {
                return Permit {
                    controller: self.clone(),
                    priority,
                    started: Instant::now(),
                };
            }
            freed.await;
        }
    }

    fn try_take(&self, priority: Priority) -> bool {
        let limit = self.limit();
        let counter = match priority {
            Priority::Demand => &self.demand,
            Priority::Prefetch => &self.total,
        };
        // Counted first, then checked, so that two racing takers cannot
        // both see room for one.
        let before = counter.fetch_add(1, Ordering::SeqCst);
        if before >= limit {
            counter.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        if priority == Priority::Demand {
            self.total.fetch_add(1, Ordering::SeqCst);
        }
        // Whether the limit binds: what this taker counts against it.
        self.note_peak(before + 1);
        true
    }

    fn note_peak(&self, now: usize) {
        let mut s = self.state();
        s.peak = s.peak.max(now);
    }

    fn release(&self, priority: Priority) {
        if priority == Priority::Demand {
            self.demand.fetch_sub(1, Ordering::SeqCst);
        }
        self.total.fetch_sub(1, Ordering::SeqCst);
        self.freed.notify_waiters();
    }

    /// Records a finished request at `now` (a parameter, for tests).
    fn record(&self, latency: Duration, outcome: Outcome, now: Instant) {
        if !self.adaptive {
            return;
        }
        let mut s = self.state();
        s.requests += 1;
        s.latency += latency;
        match outcome {
            Outcome::Done { bytes } => s.bytes += bytes,
            Outcome::Throttled => s.throttled = true,
        }
        let elapsed = now.saturating_duration_since(s.started);
        let limit = s.limit.floor().max(1.0) as u64;
        if s.requests < limit.max(MIN_WINDOW_REQUESTS) || elapsed < MIN_WINDOW {
            return;
        }
        let throughput = s.bytes as f64 / elapsed.as_secs_f64();
        let mean = s.latency.as_secs_f64() / s.requests as f64;
        let baseline = s.baseline.map_or(mean, |b| (b * 1.02).min(mean));
        let binding = s.peak >= limit as usize;
        let cap = self.cap as f64;
        let next = if s.throttled {
            s.slow_start = false;
            (s.limit / 2.0).max(1.0)
        } else if !binding {
            s.limit
        } else if mean > 2.0 * baseline {
            s.slow_start = false;
            (s.limit * 0.8).max(1.0)
        } else if s.previous.is_none_or(|p| throughput >= p * 1.05) {
            if s.slow_start {
                s.limit * 2.0
            } else {
                s.limit + 1.0
            }
        } else {
            s.slow_start = false;
            if mean <= 1.2 * baseline {
                s.limit + 1.0
            } else {
                s.limit
            }
        };
        s.limit = next.clamp(1.0, cap);
        s.baseline = Some(baseline);
        s.previous = Some(throughput);
        s.started = now;
        s.requests = 0;
        s.bytes = 0;
        s.latency = Duration::ZERO;
        s.throttled = false;
        s.peak = self.total.load(Ordering::SeqCst);
        self.gauge.set(s.limit as i64);
        drop(s);
        // A higher limit lets waiters in.
        self.freed.notify_waiters();
    }
}

/// A fetch in progress at an endpoint (see [`Controller::start_fetch`]).
#[derive(Debug)]
pub struct FetchGuard(Arc<Controller>);

impl Drop for FetchGuard {
    fn drop(&mut self) {
        self.0.fetches.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Permit {
    /// The endpoint's controller.
    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    /// The request ended with `outcome`.
    pub fn finish(self, outcome: Outcome) {
        let latency = self.started.elapsed();
        self.controller.record(latency, outcome, Instant::now());
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.controller.release(self.priority);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller(initial: usize, cap: usize) -> Arc<Controller> {
        let sizer = PartSizer::new(1, 1, false, Gauge::default());
        Arc::new(Controller::new(initial, cap, true, Gauge::default(), sizer))
    }

    /// Runs one window: `n` requests, all in flight at once (the limit is
    /// reached), each taking `latency` and moving `bytes`; the window lasts
    /// `span`. Returns the limit after it.
    fn window(
        c: &Arc<Controller>,
        at: &mut Instant,
        latency: Duration,
        bytes: u64,
        throttled: bool,
        span: Duration,
    ) -> usize {
        let n = c.limit().max(MIN_WINDOW_REQUESTS as usize);
        let permits: Vec<_> = (0..c.limit())
            .map(|_| {
                assert!(c.try_take(Priority::Demand));
                Permit {
                    controller: c.clone(),
                    priority: Priority::Demand,
                    started: *at,
                }
            })
            .collect();
        *at += span;
        for i in 0..n {
            let outcome = if throttled && i == 0 {
                Outcome::Throttled
            } else {
                Outcome::Done { bytes }
            };
            c.record(latency, outcome, *at);
        }
        drop(permits);
        c.limit()
    }

    #[test]
    fn grows_while_throughput_grows_then_adds_one_while_latency_holds() {
        let c = controller(2, 64);
        let mut at = Instant::now();
        let ms = Duration::from_millis;
        // Throughput proportional to concurrency: slow start doubles.
        let mut limits = vec![c.limit()];
        for _ in 0..4 {
            let l = c.limit() as u64;
            limits.push(window(
                &c,
                &mut at,
                ms(20),
                1 << 20,
                false,
                ms(20 * l.max(8) / l),
            ));
        }
        assert_eq!(limits, [2, 4, 8, 16, 32]);
        // Flat throughput, latency doubling (queueing): back off.
        let before = c.limit();
        let after = window(&c, &mut at, ms(60), 1 << 16, false, ms(100));
        assert!(after < before, "{before} -> {after}");
        // Never above the cap, never below 1.
        let capped = controller(60, 64);
        let mut at = Instant::now();
        for _ in 0..5 {
            window(&capped, &mut at, ms(1), 1 << 20, false, ms(20));
        }
        assert_eq!(capped.limit(), 64);
    }

    #[test]
    fn throttling_halves_and_ends_slow_start() {
        let c = controller(32, 64);
        let mut at = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(window(&c, &mut at, ms(10), 1 << 20, true, ms(20)), 16);
        assert_eq!(window(&c, &mut at, ms(10), 1 << 20, true, ms(20)), 8);
        for _ in 0..6 {
            window(&c, &mut at, ms(10), 1 << 20, true, ms(20));
        }
        assert_eq!(c.limit(), 1, "never below one");
        // Growing again is additive now.
        let mut grown = Vec::new();
        for i in 1..4u64 {
            grown.push(window(&c, &mut at, ms(10), (1 << 20) * i, false, ms(20)));
        }
        assert_eq!(grown, [2, 3, 4]);
    }

    #[test]
    fn an_unreached_limit_does_not_move() {
        let c = controller(16, 64);
        let mut at = Instant::now();
        // Two requests at a time: the limit of 16 is never reached.
        for _ in 0..10 {
            let a = c.clone();
            let permits: Vec<_> = (0..2)
                .map(|_| {
                    assert!(a.try_take(Priority::Demand));
                    Permit {
                        controller: a.clone(),
                        priority: Priority::Demand,
                        started: at,
                    }
                })
                .collect();
            drop(permits);
            // Peak is reset at each window's end to what is in flight.
            at += Duration::from_millis(25);
            for _ in 0..16 {
                c.record(
                    Duration::from_millis(1),
                    Outcome::Done { bytes: 1 << 20 },
                    at,
                );
            }
        }
        assert_eq!(c.limit(), 16);
    }

    #[tokio::test]
    async fn demand_never_waits_behind_prefetch() {
        let c = controller(2, 64);
        let p1 = c.acquire(Priority::Prefetch).await;
        let p2 = c.acquire(Priority::Prefetch).await;
        assert!(
            !c.try_take(Priority::Prefetch),
            "prefetch waits at the limit"
        );
        // Demand takes its own two slots though prefetch holds the limit.
        let d1 = c.acquire(Priority::Demand).await;
        let d2 = c.acquire(Priority::Demand).await;
        assert!(
            !c.try_take(Priority::Demand),
            "demand waits at the limit of demand"
        );
        assert_eq!(c.in_flight(), 4);
        drop((p1, p2));
        assert!(
            !c.try_take(Priority::Prefetch),
            "demand fills the limit: prefetch yields"
        );
        drop((d1, d2));
        assert!(c.try_take(Priority::Prefetch));
    }
}
