//! procstat
