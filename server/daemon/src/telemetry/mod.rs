//! Metrics, the health/metrics HTTP endpoint, and logging.

pub mod http;
pub mod logging;
pub mod metrics;
