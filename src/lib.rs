//! mpslab: concurrent-inference experiments with and without CUDA MPS on NVIDIA Jetson.
//!
//! The library holds all logic; the three binaries (`mpslabd`, `mpslabctl`, `mpslab-worker`)
//! are thin shells around it. Pure logic (parsers, planning, statistics) does no I/O.

pub mod config;
pub mod ctl;
pub mod daemon;
pub mod dbus;
pub mod error;
pub mod exit;
pub mod experiment;
pub mod export;
pub mod logging;
pub mod mps;
pub mod notify;
pub mod store;
pub mod telemetry;
pub mod vision;

/// The daemon's version, as reported on D-Bus and by `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
