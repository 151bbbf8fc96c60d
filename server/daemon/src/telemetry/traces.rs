//! OpenTelemetry traces: `[traces]`, the OTLP exporter, and the W3C trace
//! context taken from a request's metadata.
//!
//! Spans are ordinary `tracing` spans; when traces are on, a
//! `tracing-opentelemetry` layer turns them into OpenTelemetry spans and the
//! SDK's batch processor exports them over OTLP/gRPC (tonic, as the server
//! uses). Off — the default — that layer is not installed, and the spans that
//! exist only for traces (target [`TARGET`]: session fetches, RangeEngine
//! parts, backend requests) are disabled at their call sites: each costs one
//! cached interest check. The RPC span exists either way; logs use it too.
//!
//! Sampling is parent-based: a request whose `traceparent` says "sampled" is
//! traced whatever the ratio, so a trainer that traces a step sees the
//! daemon's side of it; requests without one are sampled at
//! `traces.sample_ratio`. Exported span attributes come from closed sets
//! (method, code, backend, source, cache outcome) plus sizes: never URIs,
//! object names or keys, which belong to the jobs and not to a trace
//! collector shared by the fleet.
//!
//! The batch processor exports from a thread of its own, outside the tokio
//! runtime; tonic needs the runtime's reactor, so every export is run as a
//! task on the daemon's runtime ([`OnRuntime`]) and awaited from that thread.

use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// The `tracing` target of spans that exist only for traces.
pub const TARGET: &str = sluice_engine::spans::TARGET;

/// `[traces]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// Export spans over OTLP.
    pub enabled: bool,
    /// The OTLP/gRPC receiver (an OpenTelemetry Collector, Tempo, Jaeger…).
    pub endpoint: String,
    /// The share of requests without a sampled parent that are traced,
    /// 0.0–1.0. A read of a cached object makes one RPC span; a cold one a
    /// handful more per part, so 1.0 on a busy node exports thousands of
    /// spans per second.
    pub sample_ratio: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Spans waiting for export; more are dropped (the SDK logs it).
    pub max_queue: usize,
    /// How long one export may take before it is abandoned.
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            enabled: false,
            endpoint: "http://127.0.0.1:4317".into(),
            // One request in a hundred: enough to see where time goes on a
            // node serving thousands of reads per second.
            sample_ratio: 0.01,
            service_name: "sluiced".into(),
            // The SDK's default; at 512 spans per export every 5 s.
            max_queue: 2048,
            export_timeout: Duration::from_secs(10),
        }
    }
}

impl TracesConfig {
    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| ConfigError::Invalid {
            key,
            message: message.to_owned(),
        };
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(invalid(
                "traces.sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        if self.max_queue == 0 {
            return Err(invalid("traces.max_queue", "must be at least 1"));
        }
        let uri: http::Uri = self
            .endpoint
            .parse()
            .map_err(|_| invalid("traces.endpoint", "is not a URL (http://host:port)"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(invalid(
                "traces.endpoint",
                "must be http://host:port or https://host:port",
            ));
        }
        Ok(())
    }
}

/// The tracer provider of a daemon exporting traces; flushes and stops the
/// exporter when shut down.
#[derive(Debug)]
pub struct Exporting {
    provider: SdkTracerProvider,
}

impl Exporting {
    /// Sets up the exporter to `config.endpoint`; call on the runtime.
    pub fn start(config: &TracesConfig) -> anyhow::Result<Exporting> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.endpoint.clone())
            .with_timeout(config.export_timeout)
            .build()?;
        let exporter = OnRuntime {
            inner: std::sync::Arc::new(exporter),
            runtime: tokio::runtime::Handle::current(),
            timeout: config.export_timeout,
        };
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(config.max_queue)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        Ok(Exporting { provider })
    }

    /// A tracer for the `tracing-opentelemetry` layer.
    pub fn tracer(&self) -> opentelemetry_sdk::trace::Tracer {
        self.provider.tracer("sluiced")
    }

    /// Exports what is queued and stops. Blocks: call from a thread that
    /// may block (not a runtime worker), the runtime still running.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "traces: the last spans could not be exported");
        }
    }
}

/// Runs the OTLP exporter's calls on the daemon's runtime (see the module
/// docs).
#[derive(Debug)]
struct OnRuntime {
    inner: std::sync::Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl SpanExporter for OnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = self.inner.clone();
        let timeout = self.timeout;
        let task = self.runtime.spawn(async move {
            tokio::time::timeout(timeout, inner.export(batch))
                .await
                .unwrap_or(Err(OTelSdkError::Timeout(timeout)))
        });
        task.await
            .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        if let Some(inner) = std::sync::Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// The W3C trace context (`traceparent`, `tracestate`) of a request.
pub fn parent_of(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;

    use super::*;

    #[test]
    fn validation_names_the_key() {
        let ok = TracesConfig::default();
        ok.validate().unwrap();
        for (config, key) in [
            (
                TracesConfig {
                    sample_ratio: 1.5,
                    ..ok.clone()
                },
                "traces.sample_ratio",
            ),
            (
                TracesConfig {
                    sample_ratio: -0.1,
                    ..ok.clone()
                },
                "traces.sample_ratio",
            ),
            (
                TracesConfig {
                    max_queue: 0,
                    ..ok.clone()
                },
                "traces.max_queue",
            ),
            (
                TracesConfig {
                    endpoint: "localhost:4317".into(),
                    ..ok.clone()
                },
                "traces.endpoint",
            ),
            (
                TracesConfig {
                    endpoint: "ftp://h:1".into(),
                    ..ok.clone()
                },
                "traces.endpoint",
            ),
        ] {
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(key), "{error}");
        }
    }

    #[test]
    fn the_parent_comes_from_traceparent() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let cx = parent_of(&headers);
        let span = cx.span();
        let parent = span.span_context();
        assert!(parent.is_remote() && parent.is_sampled());
        assert_eq!(
            parent.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parent.span_id().to_string(), "00f067aa0ba902b7");
        // None, or a malformed one: no parent.
        assert!(
            !parent_of(&http::HeaderMap::new())
                .span()
                .span_context()
                .is_valid()
        );
        headers.insert("traceparent", "00-zz-00f067aa0ba902b7-01".parse().unwrap());
        assert!(!parent_of(&headers).span().span_context().is_valid());
    }
}
