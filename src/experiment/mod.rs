//! Experiments: planning, running worker processes, analysis and reports.

pub mod analysis;
pub mod orchestrator;
pub mod phase;
pub mod plan;
pub mod protocol;
pub mod report;
pub mod rundata;
pub mod schedule;
pub mod validation;
pub mod worker;
