//! Harnesses shared by the end-to-end tests.

pub mod azurite;
pub mod certs;
pub mod cli;
pub mod daemon;
pub mod facade;
pub mod faultproxy;
pub mod gcsserver;
pub mod grpc;
pub mod otlp;
pub mod prometheus;
pub mod s3server;
pub mod shm;
pub mod tlsproxy;
