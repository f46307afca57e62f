//! Board telemetry: tegrastats, vmstat-equivalent counters and per-process stats.

pub mod hub;
pub mod procstat;
pub mod summary;
pub mod tegrastats;
pub mod tegrastats_sampler;
pub mod vmstat;
