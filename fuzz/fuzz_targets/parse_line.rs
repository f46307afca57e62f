//! Any bytes (non-UTF-8, huge, half lines) into `parse_line`: it must never panic, and what it
//! returns must serialise within the parser's documented bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/telemetry/tegrastats.rs"]
#[allow(dead_code)]
mod tegrastats;

fuzz_target!(|data: &[u8]| {
    match tegrastats::parse_line(data) {
        Ok(sample) => {
            assert!(sample.unknown.tokens().len() <= tegrastats::MAX_UNKNOWN);
            assert!(sample.cpus.as_ref().map_or(0, Vec::len) <= tegrastats::MAX_CPUS);
            let json = serde_json::to_vec(&sample).expect("sample serialises");
            assert!(json.len() < 1 << 20, "{} bytes of JSON", json.len());
        }
        Err(e) => {
            let v = tegrastats::error_json(data, &e);
            assert!(v["error"].is_string());
        }
    }
});
