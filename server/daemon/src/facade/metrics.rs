//! The facade's metrics (`sluice_facade_*`); labels from closed sets only:
//! the operation, the status class and the S3 error code the facade sent
//! (every code is a constant of this module tree).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The S3 operation, the `operation` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types, missing_docs)]
pub enum Operation {
    list_buckets,
    head_bucket,
    get_bucket_location,
    list_objects,
    list_objects_v2,
    get_object,
    head_object,
    put_object,
    create_multipart_upload,
    upload_part,
    complete_multipart_upload,
    abort_multipart_upload,
    delete_object,
    delete_objects,
    /// Anything else (answered NotImplemented or MethodNotAllowed).
    other,
}

/// `operation`, `status`, `code`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// The operation.
    pub operation: Operation,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub status: &'static str,
    /// The S3 error code, `ok` on success (and 304).
    pub code: &'static str,
}

/// `operation`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OperationLabels {
    /// The operation.
    pub operation: Operation,
}

/// `source`: where a GET's bytes came from (the engine's closed set).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SourceLabels {
    /// `cache`, `backend`, `coalesced`, `uncached`, `disk`.
    pub source: &'static str,
}

/// `sluice_facade_*`.
#[derive(Debug, Clone)]
pub struct FacadeMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    /// Body bytes sent to clients.
    pub sent: Counter,
    /// Body bytes received from clients (decoded).
    pub received: Counter,
    reads: Family<SourceLabels, Counter>,
    /// Responses ended because their client stopped reading.
    pub stalled: Counter,
    /// Multipart uploads aborted after `facade.upload_idle_timeout` unused.
    pub uploads_expired: Counter,
}

fn duration_histogram() -> Histogram {
    // 50 µs … ~26 s: cached small reads to multi-GiB transfers.
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

impl FacadeMetrics {
    /// Registers the metrics under `sluice_facade_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = FacadeMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            sent: Counter::default(),
            received: Counter::default(),
            reads: Family::default(),
            stalled: Counter::default(),
            uploads_expired: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("facade");
        r.register(
            "requests",
            "S3 facade requests by operation, status class and S3 error code",
            m.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "S3 facade latency until the response head",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register_with_unit(
            "sent",
            "Body bytes the S3 facade sent",
            Unit::Bytes,
            m.sent.clone(),
        );
        r.register_with_unit(
            "received",
            "Body bytes the S3 facade received (decoded)",
            Unit::Bytes,
            m.received.clone(),
        );
        r.register(
            "reads",
            "S3 facade GETs by where their bytes came from",
            m.reads.clone(),
        );
        r.register(
            "stalled_responses_ended",
            "S3 facade responses ended because their client read nothing for read.stall_timeout",
            m.stalled.clone(),
        );
        r.register(
            "uploads_expired",
            "S3 facade multipart uploads aborted after facade.upload_idle_timeout without a request",
            m.uploads_expired.clone(),
        );
        m
    }

    /// Records a finished request.
    pub fn finished(&self, operation: Operation, status: u16, code: &'static str, seconds: f64) {
        let status = match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests
            .get_or_create(&RequestLabels {
                operation,
                status,
                code,
            })
            .inc();
        self.duration
            .get_or_create(&OperationLabels { operation })
            .observe(seconds);
    }

    /// Counts a GET by where its bytes came from.
    pub fn read(&self, source: sluice_engine::Source) {
        let source = source.as_str();
        self.reads.get_or_create(&SourceLabels { source }).inc();
    }
}
