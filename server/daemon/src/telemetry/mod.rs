//! Metrics, the health/metrics HTTP endpoint, RPC telemetry, traces and
//! logging.

pub mod http;
pub mod logging;
pub mod metrics;
pub(crate) mod rpc;
pub mod traces;
