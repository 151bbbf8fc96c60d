//! The daemon's metrics registry (`sluice_*`).
//!
//! One registry per daemon instance, passed down: tests get fresh counters.
//! Names carry units; labels come from closed sets (RPC method names, gRPC
//! codes, backend names) — never URIs or keys. `docs/METRICS.md` lists them.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use sluice_engine::EngineMetrics;

/// RPC methods, the `method` label: the service's methods, the health and
/// reflection services, and `unknown` for any other path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types, missing_docs)]
pub enum Method {
    stat,
    list,
    read,
    read_many,
    write,
    upload,
    warm,
    evict,
    stats,
    delete,
    session,
    health,
    reflection,
    unknown,
}

impl Method {
    /// The method a request path names.
    pub fn of_path(path: &str) -> Method {
        if let Some(name) = path.strip_prefix("/sluice.v1.Sluice/") {
            return match name {
                "Stat" => Method::stat,
                "List" => Method::list,
                "Read" => Method::read,
                "ReadMany" => Method::read_many,
                "Write" => Method::write,
                "Upload" => Method::upload,
                "Warm" => Method::warm,
                "Evict" => Method::evict,
                "Stats" => Method::stats,
                "Delete" => Method::delete,
                "Session" => Method::session,
                _ => Method::unknown,
            };
        }
        if path.starts_with("/grpc.health.v1.Health/") {
            Method::health
        } else if path.starts_with("/grpc.reflection.v1.ServerReflection/") {
            Method::reflection
        } else {
            Method::unknown
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        use Method::*;
        match self {
            stat => "stat",
            list => "list",
            read => "read",
            read_many => "read_many",
            write => "write",
            upload => "upload",
            warm => "warm",
            evict => "evict",
            stats => "stats",
            delete => "delete",
            session => "session",
            health => "health",
            reflection => "reflection",
            unknown => "unknown",
        }
    }

    /// `service/Method`, the name of its span.
    pub fn path(self) -> &'static str {
        use Method::*;
        match self {
            stat => "sluice.v1.Sluice/Stat",
            list => "sluice.v1.Sluice/List",
            read => "sluice.v1.Sluice/Read",
            read_many => "sluice.v1.Sluice/ReadMany",
            write => "sluice.v1.Sluice/Write",
            upload => "sluice.v1.Sluice/Upload",
            warm => "sluice.v1.Sluice/Warm",
            evict => "sluice.v1.Sluice/Evict",
            stats => "sluice.v1.Sluice/Stats",
            delete => "sluice.v1.Sluice/Delete",
            session => "sluice.v1.Sluice/Session",
            health => "grpc.health.v1.Health",
            reflection => "grpc.reflection.v1.ServerReflection",
            unknown => "unknown",
        }
    }
}

/// `method`, `code`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RpcLabels {
    /// The RPC.
    pub method: Method,
    /// gRPC status code name, `ok` on success.
    pub code: &'static str,
}

/// `method`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MethodLabels {
    /// The RPC.
    pub method: Method,
}

/// `source`: where served bytes came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SourceLabels {
    /// `cache`, `backend`, `coalesced`, `uncached`.
    pub source: &'static str,
}

fn duration_histogram() -> Histogram {
    // 50 µs … ~26 s: cached small reads to multi-GiB transfers.
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

/// RPC-level metrics.
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    requests: Family<RpcLabels, Counter>,
    duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    in_flight: Family<MethodLabels, Gauge>,
    sent: Family<MethodLabels, Counter>,
    received: Family<MethodLabels, Counter>,
    served: Family<SourceLabels, Counter>,
    /// Response streams ended because their client stopped reading.
    pub stalled: Counter,
}

impl Default for RpcMetrics {
    fn default() -> Self {
        RpcMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            in_flight: Family::default(),
            sent: Family::default(),
            received: Family::default(),
            served: Family::default(),
            stalled: Counter::default(),
        }
    }
}

impl RpcMetrics {
    /// The in-flight gauge of `method` (the RPC layer's).
    pub(crate) fn in_flight(&self, method: Method) -> Gauge {
        self.in_flight
            .get_or_create(&MethodLabels { method })
            .clone()
    }

    /// Records a finished call (the RPC layer's).
    pub(crate) fn finished(&self, method: Method, code: &'static str, seconds: f64) {
        self.in_flight.get_or_create(&MethodLabels { method }).dec();
        self.requests
            .get_or_create(&RpcLabels { method, code })
            .inc();
        self.duration
            .get_or_create(&MethodLabels { method })
            .observe(seconds);
    }

    /// Counts payload bytes sent to clients.
    pub fn sent(&self, method: Method) -> Counter {
        self.sent.get_or_create(&MethodLabels { method }).clone()
    }

    /// Counts payload bytes received from clients.
    pub fn received(&self, method: Method) -> Counter {
        self.received
            .get_or_create(&MethodLabels { method })
            .clone()
    }

    /// Counts a read by where its bytes came from.
    pub fn served(&self, source: sluice_engine::Source) {
        let source = source.as_str();
        self.served.get_or_create(&SourceLabels { source }).inc();
    }

    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("rpc");
        r.register(
            "stalled_streams_ended",
            "Response streams ended because their client read nothing for read.stall_timeout",
            self.stalled.clone(),
        );
        r.register(
            "requests",
            "Finished RPCs by method and gRPC code",
            self.requests.clone(),
        );
        r.register_with_unit(
            "duration",
            "RPC latency until the last message",
            Unit::Seconds,
            self.duration.clone(),
        );
        r.register("in_flight", "RPCs in progress", self.in_flight.clone());
        r.register_with_unit(
            "sent",
            "Payload bytes sent to clients",
            Unit::Bytes,
            self.sent.clone(),
        );
        r.register_with_unit(
            "received",
            "Payload bytes received from clients",
            Unit::Bytes,
            self.received.clone(),
        );
        r.register(
            "reads",
            "Reads by where their bytes came from",
            self.served.clone(),
        );
    }
}

/// gRPC code as a lowercase label value.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

/// `transport`: how session bytes reached the client.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TransportLabels {
    /// `shm` or `stream`.
    pub transport: &'static str,
}

/// Session metrics (`sluice_session_*`).
#[derive(Debug, Clone)]
pub struct SessionMetrics {
    /// Sessions open now.
    pub active: Gauge,
    /// Bytes leased to clients now.
    pub leased_bytes: Gauge,
    delivered: Family<TransportLabels, Counter>,
    wait: Histogram,
    stall: Histogram,
    /// The data stall of each client (`sluice_session_client_*`).
    pub clients: crate::session::clients::ClientMetrics,
}

impl Default for SessionMetrics {
    fn default() -> Self {
        SessionMetrics {
            active: Gauge::default(),
            leased_bytes: Gauge::default(),
            delivered: Family::default(),
            wait: duration_histogram(),
            stall: duration_histogram(),
            clients: Default::default(),
        }
    }
}

/// Decrements the active-session gauge when the session ends.
#[derive(Debug)]
pub struct ActiveSession(Gauge);

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl SessionMetrics {
    /// Counts a session as active until the guard drops.
    pub fn active_guard(&self) -> ActiveSession {
        self.active.inc();
        ActiveSession(self.active.clone())
    }

    /// Counter of payload bytes delivered by `transport`.
    pub fn delivered(&self, transport: &'static str) -> Counter {
        self.delivered
            .get_or_create(&TransportLabels { transport })
            .clone()
    }

    /// Records how long a fetch waited for its data; `ready`: the data
    /// was in the cache (a hit). A fetch that was not ready is a data stall.
    pub fn observe_wait(&self, waited: std::time::Duration, ready: bool) {
        self.wait.observe(waited.as_secs_f64());
        if !ready {
            self.stall.observe(waited.as_secs_f64());
        }
    }

    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("session");
        r.register("active", "Session streams open", self.active.clone());
        r.register_with_unit(
            "leased",
            "Payload bytes leased to clients",
            Unit::Bytes,
            self.leased_bytes.clone(),
        );
        r.register_with_unit(
            "delivered",
            "Payload bytes delivered by sessions, by transport",
            Unit::Bytes,
            self.delivered.clone(),
        );
        r.register_with_unit(
            "fetch_wait",
            "Time a session fetch waited for its data (cache or backend)",
            Unit::Seconds,
            self.wait.clone(),
        );
        r.register_with_unit(
            "stall",
            "Time a session fetch waited for data that was not in the cache (a miss, or a join of a fetch in flight): the client's data stall",
            Unit::Seconds,
            self.stall.clone(),
        );
        self.clients.register(r);
    }
}

/// Every metric of one daemon, and the registry they live in.
#[derive(Debug)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// RPCs.
    pub rpc: RpcMetrics,
    /// Engine (cache, memory, backends).
    pub engine: EngineMetrics,
    /// Sessions and leases.
    pub session: SessionMetrics,
}

impl Metrics {
    /// A fresh registry with everything registered under `sluice_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let rpc = RpcMetrics::default();
        let engine = EngineMetrics::default();
        let session = SessionMetrics::default();
        rpc.register(&mut registry);
        engine.register(&mut registry);
        session.register(&mut registry);
        Metrics {
            registry,
            rpc,
            engine,
            session,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
