//! tegrastats
