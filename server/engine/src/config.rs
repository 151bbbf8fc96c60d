//! Configuration of the engine (`[engine]` and `[cache]` in `sluiced.toml`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A byte count written as an integer or with a binary/decimal unit:
/// `1048576`, `"8MiB"`, `"2 GiB"`, `"500MB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` MiB.
    pub const fn mib(n: u64) -> Self {
        ByteSize(n << 20)
    }

    /// `n` GiB.
    pub const fn gib(n: u64) -> Self {
        ByteSize(n << 30)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid byte size {s:?}: expected e.g. 8MiB"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            other => return Err(format!("invalid byte size unit {other:?} in {s:?}")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("byte size {s:?} overflows"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if n >= 1 << shift && n.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}B")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// `[engine]`: the RangeEngine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// The largest ranged GET: each endpoint's part size, learned with
    /// `adaptive_part_size`, stays at or below it (and is it when not
    /// learned). Objects up to the part size take one request. 8 MiB: the
    /// smallest part that reaches full per-connection throughput on S3
    /// while keeping the first byte early.
    pub part_size: ByteSize,
    /// The smallest ranged GET an endpoint's learned part size goes to.
    pub min_part_size: ByteSize,
    /// Learn each endpoint's part size from its first-byte wait and
    /// per-connection throughput ([`crate::part_size`]). Off: every part is
    /// `part_size`.
    pub adaptive_part_size: bool,
    /// Ranged GETs in flight for one object.
    pub per_object_concurrency: usize,
    /// Ranged GETs in flight across the daemon; also the cap of each
    /// endpoint's adaptive limit.
    pub max_concurrency: usize,
    /// Adapt each endpoint's concurrency limit to what it sustains (grow
    /// while throughput grows, halve on throttling, back off on rising
    /// latency). Off: every endpoint may take `max_concurrency`.
    pub adaptive_concurrency: bool,
    /// Each endpoint's limit at start, with `adaptive_concurrency`.
    pub initial_concurrency: usize,
    /// Ranged GETs in flight for one client (connection). Unset: half of
    /// `max_concurrency`, so one client never takes every request slot.
    pub client_concurrency: Option<usize>,
    /// Longest wait for a request slot before RESOURCE_EXHAUSTED.
    #[serde(with = "humantime_serde")]
    pub request_wait: Duration,
    /// Attempts per part (first included) on transient failures: throttling,
    /// unavailability, short or broken bodies.
    pub part_attempts: u32,
    /// First backoff between part attempts; doubles, full jitter.
    #[serde(with = "humantime_serde")]
    pub part_backoff: Duration,
    /// Longest wait before a part's retry, whatever the backoff or the
    /// server's `Retry-After` asks: a hostile or broken server cannot park a
    /// request (and the caller behind it) for an hour.
    #[serde(with = "humantime_serde")]
    pub max_retry_wait: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            part_size: ByteSize::mib(8),
            // Below 1 MiB a part is mostly request overhead on any backend.
            min_part_size: ByteSize::mib(1),
            adaptive_part_size: true,
            // 8 × 8 MiB in flight per object saturates a 10 Gb/s link at
            // ~100 ms per part.
            per_object_concurrency: 8,
            // A cap, not a target: each endpoint's adaptive limit starts at
            // `initial_concurrency` and grows only while throughput does.
            // Small objects at object-store latency need hundreds in flight
            // (4,000 objects/s at 20 ms is 80).
            max_concurrency: 256,
            adaptive_concurrency: true,
            initial_concurrency: 32,
            client_concurrency: None,
            request_wait: Duration::from_secs(60),
            part_attempts: 3,
            part_backoff: Duration::from_millis(50),
            max_retry_wait: Duration::from_secs(20),
        }
    }
}

impl EngineConfig {
    /// Request slots one client may hold.
    pub fn client_concurrency(&self) -> usize {
        self.client_concurrency
            .unwrap_or(self.max_concurrency / 2)
            .clamp(1, self.max_concurrency.max(1))
    }
}

/// `[cache]`: the node-wide cache and the memory budget.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Payload bytes in memory at once: cached objects plus reads in flight.
    /// The daemon's RSS stays within this plus a fixed overhead.
    pub memory_budget: ByteSize,
    /// Objects larger than this are streamed through without being cached.
    /// Unset: a quarter of the budget.
    pub max_object_size: Option<ByteSize>,
    /// Cached objects are served without asking the backend for this long
    /// after they were last validated; then a HEAD (a `stat` for files)
    /// checks etag, size and mtime. `0s`: validate on every read.
    #[serde(with = "humantime_serde")]
    pub revalidate_after: Duration,
    /// How long a read waits for memory before RESOURCE_EXHAUSTED.
    #[serde(with = "humantime_serde")]
    pub memory_wait: Duration,
    /// Most payload bytes one client (connection) holds at once: buffers
    /// being fetched for it, bytes waiting to be sent to it, leased extents
    /// (a slice of a cached object counts the whole object). A client
    /// holding nothing may always take one reservation, however large.
    /// Unset: a quarter of the budget.
    pub client_share: Option<ByteSize>,
    /// Most payload bytes all clients together hold; the rest of the budget
    /// stays for the cache and for clients holding nothing. Unset: three
    /// quarters of the budget.
    pub clients_share: Option<ByteSize>,
    /// Largest object a ranged read of it fetches (and caches) whole when it
    /// is not cached: later reads of any range of it are then cache hits,
    /// as for clients that read objects in ranges (s3torchconnector, boto3's
    /// transfers, fsspec). Larger objects give just the range, uncached. The
    /// first request is the range's own, so nothing is fetched twice; what
    /// it costs is the first read's wait for the whole object. `0`: ranges
    /// are never widened. Capped by `max_object_size`.
    pub widen_range_max: ByteSize,
    /// Size of one shared-memory arena segment; the budget is split into
    /// segments of this size. No object is buffered (and cached) in more
    /// than one segment, so this also caps `max_object_size`.
    pub segment_size: ByteSize,
    /// Make the whole arena resident at startup, on a thread that runs only
    /// when a core is idle, instead of page by page as reads first fill it.
    /// The daemon's RSS then reaches the budget within seconds of start.
    pub prefault: bool,
    /// Which entry eviction picks: `plans` (Belady's rule over the clients'
    /// epoch plans; least recently used while no plan is live) or `lru`.
    pub policy: crate::cache::Policy,
    /// The disk tier below the RAM cache (`[cache.disk]`).
    pub disk: crate::disk::DiskConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory_budget: ByteSize::gib(2),
            max_object_size: None,
            // Training data is written once and read many times: 10 s bounds
            // staleness after an overwrite while costing one HEAD per object
            // per 10 s instead of one per read.
            revalidate_after: Duration::from_secs(10),
            memory_wait: Duration::from_secs(30),
            client_share: None,
            clients_share: None,
            // 64 MiB: samples and shards read in 8 MiB ranges are cached
            // whole, while a small read of a large object waits for at most
            // a few tens of milliseconds of extra transfer.
            widen_range_max: ByteSize::mib(64),
            // 256 MiB: few descriptors to hand out and map per client, and
            // large enough for typical samples and shards to be cached whole.
            segment_size: ByteSize::mib(256),
            // The pages are the budget: paid for once the cache has filled
            // anyway, and first touch costs more than the copy that fills a
            // page (`Arena::prefault`).
            prefault: true,
            policy: crate::cache::Policy::Plans,
            disk: crate::disk::DiskConfig::default(),
        }
    }
}

impl CacheConfig {
    /// Most bytes one client holds.
    pub fn client_share(&self) -> u64 {
        self.client_share.map_or(self.memory_budget.0 / 4, |b| b.0)
    }

    /// Most bytes all clients hold together.
    pub fn clients_share(&self) -> u64 {
        self.clients_share
            .map_or(self.memory_budget.0 / 4 * 3, |b| b.0)
    }

    /// Largest object that is cached.
    pub fn max_object_size(&self) -> u64 {
        self.max_object_size
            .map_or(self.memory_budget.0 / 4, |b| b.0)
    }
}

/// `[prefetch]`: epoch plans and reading ahead of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrefetchConfig {
    /// Read ahead of the clients' plans. Off: plans still guide eviction.
    pub enabled: bool,
    /// Objects prefetched at once, node-wide. Prefetch has request slots of
    /// its own, this many, beyond `engine.max_concurrency`: a demand read
    /// never waits for a slot a prefetch holds.
    pub concurrency: usize,
    /// Items read ahead of one plan's position, at most.
    pub lookahead_items: u32,
    /// Bytes read ahead of one plan's position, at most. Unset: an eighth
    /// of `cache.memory_budget`.
    pub lookahead_bytes: Option<ByteSize>,
    /// Bytes read ahead of all plans together, at most. Unset: half of
    /// `cache.memory_budget`.
    pub max_bytes: Option<ByteSize>,
    /// Most items in one plan.
    pub max_plan_items: u64,
    /// Most items of all live plans together (each costs about 8 bytes,
    /// plus its URI and ~60 bytes per distinct object).
    pub max_items: u64,
    /// Most live plans of one session.
    pub max_session_plans: usize,
    /// How long a plan with items left outlives its session: it keeps
    /// guiding eviction (not prefetch) until a plan with the same id comes
    /// from another session — the next epoch's DataLoader worker — or this
    /// time is up. 0s: plans end with their session.
    #[serde(with = "humantime_serde")]
    pub plan_linger: Duration,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        let limits = crate::plans::PlanLimits::default();
        PrefetchConfig {
            enabled: true,
            concurrency: 32,
            lookahead_items: limits.lookahead_items,
            lookahead_bytes: None,
            max_bytes: None,
            max_plan_items: limits.max_plan_items,
            max_items: limits.max_items,
            max_session_plans: limits.max_session_plans,
            plan_linger: limits.linger,
        }
    }
}

impl PrefetchConfig {
    /// The plan limits for a cache of `budget` bytes.
    pub fn limits(&self, budget: u64) -> crate::plans::PlanLimits {
        crate::plans::PlanLimits {
            max_plan_items: self.max_plan_items,
            max_items: self.max_items,
            max_session_plans: self.max_session_plans,
            lookahead_items: self.lookahead_items,
            lookahead_bytes: self.lookahead_bytes.map_or(budget / 8, |b| b.0),
            max_bytes: self.max_bytes.map_or(budget / 2, |b| b.0),
            linger: self.plan_linger,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_and_print() {
        assert_eq!("8MiB".parse::<ByteSize>().unwrap(), ByteSize(8 << 20));
        assert_eq!("2 GiB".parse::<ByteSize>().unwrap(), ByteSize(2 << 30));
        assert_eq!("500MB".parse::<ByteSize>().unwrap(), ByteSize(500_000_000));
        assert_eq!("17".parse::<ByteSize>().unwrap(), ByteSize(17));
        assert!("8 parsecs".parse::<ByteSize>().is_err());
        assert!("99999999999TiB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(8 << 20).to_string(), "8MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }
}
