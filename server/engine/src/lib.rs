//! The engine of sluice: RangeEngine, memory budget, cache and the read path.
//!
//! Nothing here knows about gRPC; the daemon maps [`ReadError`] to statuses.

pub mod adaptive;
pub mod arena;
pub mod budget;
pub mod cache;
pub mod config;
pub mod disk;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod part_size;
pub mod plans;
pub mod prefetch;
pub mod range;
pub mod reader;
pub mod share;
pub mod spans;
pub mod split;

pub use config::{ByteSize, CacheConfig, EngineConfig, PrefetchConfig};
pub use engine::Engine;
pub use error::ReadError;
pub use metrics::EngineMetrics;
pub use reader::{Body, ReadOutput, Reader, Source};
pub use share::{ClientShare, ShareLimits, Shares};
