//! Harnesses shared by the end-to-end tests.

pub mod s3server;
