//! The engine's trace spans: a RangeEngine fetch, each of its parts, and
//! each backend request a part makes (one per attempt).
//!
//! They exist for traces only (target [`TARGET`]): with traces off the
//! daemon's subscriber enables no span of that target, and each call here
//! is one cached interest check. Attributes come from closed sets (backend
//! name, operation, outcome) plus sizes; never the URI.

use std::ops::Range;

use sluice_storage::StorageError;
use tracing::Span;
use tracing::field::Empty;

/// The `tracing` target of spans that exist only for traces.
pub const TARGET: &str = "sluice_trace";

/// A fetch by the RangeEngine of (part of) one object from `backend`.
pub(crate) fn fetch(backend: &'static str) -> Span {
    tracing::info_span!(
        target: TARGET,
        "range_fetch",
        otel.name = "RangeEngine fetch",
        backend,
        object.size = Empty,
        bytes = Empty,
        part.size = Empty,
        mode = Empty,
    )
}

/// One part of the fetch `parent`.
pub(crate) fn part(parent: &Span, range: &Range<u64>) -> Span {
    tracing::info_span!(
        target: TARGET,
        parent: parent,
        "range_part",
        otel.name = "RangeEngine part",
        bytes = range.end - range.start,
        attempts = Empty,
    )
}

/// One request to the backend, under the current span.
pub(crate) fn request(backend: &'static str, op: &'static str, attempt: u32) -> Span {
    tracing::info_span!(
        target: TARGET,
        "backend_request",
        otel.name = op,
        otel.kind = "client",
        backend,
        attempt,
        outcome = Empty,
        otel.status_code = Empty,
    )
}

/// Records a request's outcome on its span.
pub(crate) fn outcome(span: &Span, res: &Result<impl Sized, StorageError>) {
    match res {
        Ok(_) => {
            span.record("outcome", "ok");
        }
        Err(e) => {
            span.record("outcome", e.kind().as_str());
            span.record("otel.status_code", "ERROR");
        }
    }
}
