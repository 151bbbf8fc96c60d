//! `sluiced`, the sluice daemon, as a library: configuration, the gRPC
//! service, telemetry, and the server lifecycle. `main.rs` is a thin shell
//! around [`Daemon`]; tests start daemons in-process the same way.

pub mod api;
mod auth;
pub mod config;
pub mod errors;
pub mod facade;
pub mod listen;
mod prefault;
pub mod reload;
pub mod server;
pub mod session;
mod stall;
pub mod systemd;
pub mod telemetry;
pub mod tls;
pub mod upload_memory;
mod uploads;

pub use config::Config;
pub use server::{Addresses, Daemon};
