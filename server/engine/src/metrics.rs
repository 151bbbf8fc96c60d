//! Engine metrics, and a [`Storage`] wrapper that measures every backend call.
//!
//! Metric handles are created unregistered and registered into the registry
//! the daemon passes down, so every test gets a fresh set. Labels come from
//! closed sets: backend names (`file`, `s3`), operations, error kinds.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use sluice_storage::{
    BufResult, GetOptions, GetResult, ListOptions, ListPage, MultipartUpload, ObjectMeta,
    ObjectUri, ReadBuf, Result, Storage, Strength, Version,
};

/// Cache counters and gauges (`sluice_cache_*`).
#[derive(Debug, Clone, Default)]
pub struct CacheMetrics {
    /// Reads served from the cache.
    pub hits: Counter,
    /// Reads that fetched from the backend.
    pub misses: Counter,
    /// Reads that joined another read's fetch of the same object.
    pub coalesced: Counter,
    /// Ranged reads of uncached objects that fetched and cached the whole
    /// object (`cache.widen_range_max`).
    pub widened: Counter,
    /// Entries evicted to make room.
    pub evictions: Counter,
    /// Bytes of evicted entries.
    pub evicted_bytes: Counter,
    /// Entries dropped because the object changed.
    pub invalidations: Counter,
    /// Objects cached now.
    pub entries: Gauge,
    /// Bytes cached now.
    pub bytes: Gauge,
}

/// Plans and prefetch (`sluice_prefetch_*`).
#[derive(Debug, Clone, Default)]
pub struct PrefetchMetrics {
    /// Objects cached by prefetch.
    pub fetched: Counter,
    /// Bytes cached by prefetch.
    pub fetched_bytes: Counter,
    /// Demand reads served by an entry a prefetch cached.
    pub hits: Counter,
    /// Bytes cached by prefetch and evicted before any read.
    pub wasted_bytes: Counter,
    /// Prefetches that found no room (nothing evictable needed later).
    pub no_room: Counter,
    /// Prefetches that failed at the backend.
    pub failed: Counter,
    /// Live plans.
    pub plans: Gauge,
    /// Items of all live plans.
    pub plan_items: Gauge,
    /// Items prefetched ahead of the plans' positions.
    pub lookahead_items: Gauge,
    /// Bytes prefetched ahead of the plans' positions.
    pub lookahead_bytes: Gauge,
}

/// Fair shares (`sluice_share_*`).
#[derive(Debug, Clone, Default)]
pub struct ShareMetrics {
    /// Clients (connections) with a share now.
    pub clients: Gauge,
    /// Bytes held by all clients together.
    pub held: Gauge,
    /// Charges that had to wait for room in a share.
    pub waits: Counter,
    /// Charges and request slots refused after their wait.
    pub refused: Counter,
}

/// Memory budget gauges (`sluice_memory_*`), refreshed at scrape time.
#[derive(Debug, Clone, Default)]
pub struct MemoryMetrics {
    /// The configured budget.
    pub budget: Gauge,
    /// Bytes reserved now (cached plus in flight).
    pub reserved: Gauge,
    /// Reservations that failed past their deadline.
    pub exhausted: Counter,
    /// Largest free extent of the arena (fragmentation: a reservation
    /// larger than this must evict or wait even if enough bytes are free).
    pub largest_free: Gauge,
    /// Arena segments (descriptors each client maps).
    pub segments: Gauge,
    /// Arena bytes made resident by the startup prefault so far.
    pub prefaulted: Gauge,
}

/// Backend operations, the `operation` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Operation {
    /// HEAD / stat.
    head,
    /// GET, whole or ranged.
    get,
    /// One listing page.
    list,
    /// Single-request upload.
    put,
    /// One part of a multipart upload (start and complete included).
    put_part,
    /// A later part of a ranged fetch, read into its buffer (whole transfer).
    read_part,
    /// Delete.
    delete,
}

/// `backend`, `operation`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OpLabels {
    /// `file`, `s3`.
    pub backend: &'static str,
    /// What was done.
    pub operation: Operation,
}

/// `backend`, `operation`, `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `file`, `s3`.
    pub backend: &'static str,
    /// What was done.
    pub operation: Operation,
    /// The error category.
    pub kind: &'static str,
}

/// `backend`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BackendLabels {
    /// `file`, `s3`.
    pub backend: &'static str,
}

/// `endpoint`: `file`, `s3`, or an `s3://host:port` the operator listed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The endpoint.
    pub endpoint: String,
}

/// `backend`, `direction`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ByteLabels {
    /// `file`, `s3`.
    pub backend: &'static str,
    /// `read` or `write`.
    pub direction: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~52 s in ×2 steps: local files to slow remote parts.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// Backend metrics (`sluice_backend_*`).
#[derive(Debug, Clone)]
pub struct StorageMetrics {
    requests: Family<OpLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: Family<OpLabels, Histogram, fn() -> Histogram>,
    bytes: Family<ByteLabels, Counter>,
    /// Part attempts the RangeEngine repeated after a transient failure.
    pub part_retries: Counter,
    /// Reads whose object came with neither an etag nor a last-modified
    /// time, so that no change during or after them can be noticed.
    unversioned: Family<BackendLabels, Counter>,
    /// Each endpoint's adaptive concurrency limit.
    pub concurrency: Family<EndpointLabels, Gauge>,
    /// Each endpoint's part size.
    pub part_size: Family<EndpointLabels, Gauge>,
    /// Backend requests in flight (demand and prefetch); refreshed at scrape.
    pub in_flight: Gauge,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        StorageMetrics {
            requests: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            bytes: Family::default(),
            part_retries: Counter::default(),
            unversioned: Family::default(),
            concurrency: Family::default(),
            part_size: Family::default(),
            in_flight: Gauge::default(),
        }
    }
}

/// Every engine metric.
#[derive(Debug, Clone, Default)]
pub struct EngineMetrics {
    /// Cache.
    pub cache: CacheMetrics,
    /// Memory budget.
    pub memory: MemoryMetrics,
    /// Fair shares.
    pub share: ShareMetrics,
    /// Plans and prefetch.
    pub prefetch: PrefetchMetrics,
    /// Backends.
    pub storage: Arc<StorageMetrics>,
    /// The disk tier.
    pub disk: crate::disk::DiskMetrics,
}

impl EngineMetrics {
    /// Registers everything under `registry` (prefix `sluice`).
    pub fn register(&self, registry: &mut Registry) {
        self.disk.register(registry);
        let c = &self.cache;
        let r = registry.sub_registry_with_prefix("cache");
        r.register("hits", "Reads served from the cache", c.hits.clone());
        r.register("misses", "Reads fetched from the backend", c.misses.clone());
        r.register(
            "coalesced",
            "Reads that joined a fetch of the same object in flight",
            c.coalesced.clone(),
        );
        r.register(
            "widened",
            "Ranged reads of uncached objects that fetched and cached the whole object",
            c.widened.clone(),
        );
        r.register(
            "evictions",
            "Entries evicted to make room",
            c.evictions.clone(),
        );
        r.register_with_unit(
            "evicted",
            "Bytes of evicted entries",
            Unit::Bytes,
            c.evicted_bytes.clone(),
        );
        r.register(
            "invalidations",
            "Entries dropped because the object changed",
            c.invalidations.clone(),
        );
        r.register("entries", "Objects in the cache", c.entries.clone());
        r.register_with_unit("size", "Bytes in the cache", Unit::Bytes, c.bytes.clone());
        let m = &self.memory;
        let r = registry.sub_registry_with_prefix("memory");
        r.register_with_unit(
            "largest_free",
            "Largest free extent of the shared-memory arena",
            Unit::Bytes,
            m.largest_free.clone(),
        );
        r.register(
            "segments",
            "Shared-memory arena segments",
            m.segments.clone(),
        );
        r.register_with_unit(
            "prefaulted",
            "Shared-memory arena bytes made resident by the startup prefault (cache.prefault)",
            Unit::Bytes,
            m.prefaulted.clone(),
        );
        r.register_with_unit(
            "budget",
            "Configured payload memory budget",
            Unit::Bytes,
            m.budget.clone(),
        );
        r.register_with_unit(
            "reserved",
            "Payload bytes reserved (cached and in flight)",
            Unit::Bytes,
            m.reserved.clone(),
        );
        r.register(
            "exhausted",
            "Reads that got no memory before their deadline",
            m.exhausted.clone(),
        );
        let p = &self.prefetch;
        let r = registry.sub_registry_with_prefix("prefetch");
        r.register("objects", "Objects cached by prefetch", p.fetched.clone());
        r.register_with_unit(
            "fetched",
            "Bytes cached by prefetch",
            Unit::Bytes,
            p.fetched_bytes.clone(),
        );
        r.register(
            "hits",
            "Demand reads served by an entry that a prefetch cached",
            p.hits.clone(),
        );
        r.register_with_unit(
            "wasted",
            "Bytes cached by prefetch and evicted before any read",
            Unit::Bytes,
            p.wasted_bytes.clone(),
        );
        r.register(
            "no_room",
            "Prefetches that found no room without evicting something needed sooner",
            p.no_room.clone(),
        );
        r.register(
            "failed",
            "Prefetches that failed at the backend",
            p.failed.clone(),
        );
        r.register("plans", "Live epoch plans", p.plans.clone());
        r.register(
            "plan_items",
            "Items of all live epoch plans",
            p.plan_items.clone(),
        );
        r.register(
            "lookahead_items",
            "Plan items prefetched ahead of their clients' positions",
            p.lookahead_items.clone(),
        );
        r.register_with_unit(
            "lookahead",
            "Bytes prefetched ahead of the clients' positions",
            Unit::Bytes,
            p.lookahead_bytes.clone(),
        );
        let sh = &self.share;
        let r = registry.sub_registry_with_prefix("share");
        r.register(
            "clients",
            "Clients (connections) with a share",
            sh.clients.clone(),
        );
        r.register_with_unit(
            "held",
            "Payload bytes held by clients: in flight, awaiting delivery, leased (by what they pin)",
            Unit::Bytes,
            sh.held.clone(),
        );
        r.register(
            "waits",
            "Charges that waited for room in a client's share",
            sh.waits.clone(),
        );
        r.register(
            "refused",
            "Charges and backend request slots refused after their wait (RESOURCE_EXHAUSTED)",
            sh.refused.clone(),
        );
        let s = &self.storage;
        let r = registry.sub_registry_with_prefix("backend");
        r.register("requests", "Backend requests", s.requests.clone());
        r.register(
            "errors",
            "Failed backend requests by error kind",
            s.errors.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Backend request latency (get: until the response headers)",
            Unit::Seconds,
            s.latency.clone(),
        );
        r.register_with_unit(
            "transferred",
            "Payload bytes moved to or from backends",
            Unit::Bytes,
            s.bytes.clone(),
        );
        r.register(
            "concurrency_limit",
            "Requests each backend endpoint may have in flight now (adaptive; engine.max_concurrency caps it)",
            s.concurrency.clone(),
        );
        r.register_with_unit(
            "part_size",
            "Bytes each ranged GET of a backend endpoint asks for now (adaptive; engine.part_size caps it)",
            Unit::Bytes,
            s.part_size.clone(),
        );
        r.register(
            "part_retries",
            "Ranged-GET parts retried after a transient failure",
            s.part_retries.clone(),
        );
        r.register(
            "requests_in_flight",
            "Backend requests in flight now, demand and prefetch",
            s.in_flight.clone(),
        );
        r.register(
            "unversioned_reads",
            "Reads of objects the backend gave neither an etag nor a last-modified time, \
             served without any version check",
            s.unversioned.clone(),
        );
    }
}

/// A [`Storage`] that records requests, errors, latency and bytes.
#[derive(Debug)]
pub struct Instrumented {
    inner: Arc<dyn Storage>,
    metrics: Arc<StorageMetrics>,
}

impl Instrumented {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Storage>, metrics: Arc<StorageMetrics>) -> Self {
        Instrumented { inner, metrics }
    }

    fn record<T>(&self, operation: Operation, started: Instant, res: &Result<T>) {
        let backend = self.inner.name();
        let labels = OpLabels { backend, operation };
        self.metrics.requests.get_or_create(&labels).inc();
        self.metrics
            .latency
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = res {
            let kind = e.kind().label();
            self.metrics
                .errors
                .get_or_create(&ErrorLabels {
                    backend,
                    operation,
                    kind,
                })
                .inc();
        }
    }

    fn count_bytes(&self, direction: &'static str) -> Counter {
        let labels = ByteLabels {
            backend: self.inner.name(),
            direction,
        };
        self.metrics.bytes.get_or_create(&labels).clone()
    }
}

#[async_trait]
impl Storage for Instrumented {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn head(&self, uri: &ObjectUri) -> Result<ObjectMeta> {
        let t = Instant::now();
        let res = self.inner.head(uri).await;
        self.record(Operation::head, t, &res);
        res
    }

    async fn get(&self, uri: &ObjectUri, opts: GetOptions) -> Result<GetResult> {
        let t = Instant::now();
        let res = self.inner.get(uri, opts).await;
        self.record(Operation::get, t, &res);
        let mut out = res?;
        if Version::of(&out.meta).strength() == Strength::None {
            let backend = self.inner.name();
            self.metrics
                .unversioned
                .get_or_create(&BackendLabels { backend })
                .inc();
        }
        let counter = self.count_bytes("read");
        out.body = Box::pin(out.body.inspect(move |c| {
            if let Ok(chunk) = c {
                counter.inc_by(chunk.len() as u64);
            }
        }));
        Ok(out)
    }

    async fn list(&self, prefix: &ObjectUri, opts: &ListOptions) -> Result<ListPage> {
        let t = Instant::now();
        let res = self.inner.list(prefix, opts).await;
        self.record(Operation::list, t, &res);
        res
    }

    async fn put(&self, uri: &ObjectUri, data: Bytes) -> Result<ObjectMeta> {
        let t = Instant::now();
        let len = data.len() as u64;
        let res = self.inner.put(uri, data).await;
        self.record(Operation::put, t, &res);
        if res.is_ok() {
            self.count_bytes("write").inc_by(len);
        }
        res
    }

    async fn start_multipart(&self, uri: &ObjectUri) -> Result<Box<dyn MultipartUpload>> {
        let t = Instant::now();
        let res = self.inner.start_multipart(uri).await;
        self.record(Operation::put_part, t, &res);
        Ok(Box::new(InstrumentedUpload {
            inner: res?,
            metrics: self.metrics.clone(),
            backend: self.inner.name(),
            bytes: self.count_bytes("write"),
        }))
    }

    fn min_part_size(&self) -> u64 {
        self.inner.min_part_size()
    }

    async fn delete(&self, uri: &ObjectUri) -> Result<()> {
        let t = Instant::now();
        let res = self.inner.delete(uri).await;
        self.record(Operation::delete, t, &res);
        res
    }

    async fn read_into(
        &self,
        uri: &ObjectUri,
        offset: u64,
        expect: &Version,
        dst: ReadBuf,
    ) -> BufResult {
        let t = Instant::now();
        let len = dst.len() as u64;
        let (res, dst) = self.inner.read_into(uri, offset, expect, dst).await;
        self.record(Operation::read_part, t, &res);
        if res.is_ok() {
            self.count_bytes("read").inc_by(len);
        }
        (res, dst)
    }

    fn alignment(&self) -> u64 {
        self.inner.alignment()
    }

    fn learns_part_size(&self) -> bool {
        self.inner.learns_part_size()
    }
}

#[derive(Debug)]
struct InstrumentedUpload {
    inner: Box<dyn MultipartUpload>,
    metrics: Arc<StorageMetrics>,
    backend: &'static str,
    bytes: Counter,
}

fn record_part<T>(
    metrics: &StorageMetrics,
    backend: &'static str,
    started: Instant,
    res: &Result<T>,
) {
    let operation = Operation::put_part;
    let labels = OpLabels { backend, operation };
    metrics.requests.get_or_create(&labels).inc();
    metrics
        .latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = res {
        let kind = e.kind().label();
        metrics
            .errors
            .get_or_create(&ErrorLabels {
                backend,
                operation,
                kind,
            })
            .inc();
    }
}

#[async_trait]
impl MultipartUpload for InstrumentedUpload {
    async fn put_part(&mut self, data: Bytes) -> Result<()> {
        let t = Instant::now();
        let len = data.len() as u64;
        let res = self.inner.put_part(data).await;
        record_part(&self.metrics, self.backend, t, &res);
        if res.is_ok() {
            self.bytes.inc_by(len);
        }
        res
    }

    async fn complete(self: Box<Self>) -> Result<ObjectMeta> {
        let t = Instant::now();
        let res = self.inner.complete().await;
        record_part(&self.metrics, self.backend, t, &res);
        res
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.inner.abort().await
    }
}
