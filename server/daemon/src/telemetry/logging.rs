//! Structured logs with `tracing`, and the OpenTelemetry layer when traces
//! are on.
//!
//! Two layers over one registry, each with its own filter: the log layer
//! (text or JSON on stderr) filtered by `log.level` — reloadable on SIGHUP
//! through [`Logging::set_level`] — and never showing the trace-only spans
//! ([`super::traces::TARGET`]); and, with `[traces] enabled`, the
//! `tracing-opentelemetry` layer taking the daemon's own spans (its crates
//! and [`super::traces::TARGET`]) at `info` and above. With traces off no span of that target is enabled by any layer,
//! so those call sites cost a cached interest check.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, filter, reload};

use super::traces::{Exporting, TARGET};
use crate::config::LogConfig;

/// The installed logging: changes the level, and owns the trace exporter.
#[derive(Debug)]
pub struct Logging {
    level: Option<reload::Handle<EnvFilter, Registry>>,
    /// Set when traces are exported.
    pub traces: Option<Exporting>,
}

impl Logging {
    /// Applies a new `log.level` (the `RUST_LOG` variable, when set at
    /// start, keeps precedence). Returns false when the filter does not
    /// parse; the old one stays.
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let Some(handle) = &self.level else {
            return Err("logging was not set up by this daemon".into());
        };
        if std::env::var_os("RUST_LOG").is_some() {
            return Err("RUST_LOG is set and takes precedence over log.level".into());
        }
        let filter = EnvFilter::try_new(with_quiet_defaults(level)).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }

    /// Flushes and stops the trace exporter. Blocks.
    pub fn shutdown(&self) {
        if let Some(traces) = &self.traces {
            traces.shutdown();
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` overrides `log.level`;
/// `traces`, when set, gets the daemon's spans. A second call (tests
/// starting several daemons) keeps the first subscriber and returns a
/// [`Logging`] that cannot reload.
pub fn init(config: &LogConfig, traces: Option<Exporting>) -> Logging {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(with_quiet_defaults(&config.level)));
    let (filter, handle) = reload::Layer::new(filter);
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let no_trace_spans = filter::filter_fn(|meta| meta.target() != TARGET);
    let fmt = if config.format == "json" {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let fmt = fmt.with_filter(filter).with_filter(no_trace_spans);
    let otel = traces.as_ref().map(|t| {
        // Per span only what the spans say: no source location, thread or
        // target attributes, no busy/idle timing on every enter and exit
        // (the RPC span is entered at each poll of a stream), no
        // OpenTelemetry context made current on entry (nothing in the
        // daemon reads it; parents come from the span tree).
        tracing_opentelemetry::layer()
            .with_tracer(t.tracer())
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(daemon_spans())
    });
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    Logging {
        level: installed.then_some(handle),
        traces,
    }
}

/// What the trace layer takes: the daemon's own spans and events at `info`
/// and above (a dependency's spans would say nothing about the daemon and
/// could carry what the daemon keeps out of traces).
fn daemon_spans() -> filter::Targets {
    let info = tracing::Level::INFO;
    filter::Targets::new()
        .with_target("sluiced", info)
        .with_target("sluice_engine", info)
        .with_target("sluice_storage", info)
        .with_target(TARGET, info)
}

/// Off EC2 the AWS SDK's region lookup in instance metadata fails at every
/// start; that is expected, so it is quiet unless asked for.
fn with_quiet_defaults(level: &str) -> String {
    if level.contains("aws_config") {
        level.to_owned()
    } else {
        format!("{level},aws_config::imds=error")
    }
}
