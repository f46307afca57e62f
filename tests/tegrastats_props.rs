//! Property tests: no input makes the parser panic, and what it keeps is bounded whatever the
//! input size.

use mpslab::telemetry::tegrastats::{
    error_json, parse_line, MAX_CPUS, MAX_GPU_CLOCKS, MAX_MAP_ENTRIES, MAX_UNKNOWN,
    MAX_UNKNOWN_TOKEN_BYTES,
};
use proptest::prelude::*;

/// Serialised size allowed for any sample: every map full of longest names plus the unknowns.
const MAX_JSON_BYTES: usize = 3 * MAX_MAP_ENTRIES * 256 + MAX_CPUS * 64 + MAX_UNKNOWN * 512 + 8192;

fn check(line: &[u8]) {
    match parse_line(line) {
        Ok(s) => {
            assert!(s.unknown.tokens().len() <= MAX_UNKNOWN);
            assert!(s
                .unknown
                .tokens()
                .iter()
                .all(|t| t.len() <= MAX_UNKNOWN_TOKEN_BYTES * 3));
            assert!(s.cpus.as_ref().map_or(0, Vec::len) <= MAX_CPUS);
            assert!(s.gpu.as_ref().map_or(0, |g| g.freq_mhz.len()) <= 2 * MAX_GPU_CLOCKS);
            for n in [s.engines.len(), s.temps_c.len(), s.rails.len()] {
                assert!(n <= MAX_MAP_ENTRIES);
            }
            let json = serde_json::to_vec(&s).unwrap();
            assert!(json.len() <= MAX_JSON_BYTES, "{} bytes", json.len());
        }
        Err(e) => {
            let v = error_json(line, &e);
            assert!(v["error"].is_string() && v["raw"].is_string());
        }
    }
}

/// Pieces of real lines, so random concatenations reach deep into every field parser.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"RAM".to_vec()),
        Just(b"RAM 1446/3957MB (lfb 458x4MB)".to_vec()),
        Just(b"SWAP 0/15311MB (cached 0MB)".to_vec()),
        Just(b"IRAM 0/252kB(lfb 252kB)".to_vec()),
        Just(b"CPU [".to_vec()),
        Just(b"CPU [1%@729,off,3%@1420]".to_vec()),
        Just(b"cpu [17%,13%]@408".to_vec()),
        Just(b"GR3D_FREQ 0%@[0,0]".to_vec()),
        Just(b"GR3D2_FREQ 0%@0".to_vec()),
        Just(b"@[".to_vec()),
        Just(b"]".to_vec()),
        Just(b"%@".to_vec()),
        Just(b"MTS fg 0% bg".to_vec()),
        Just(b"EDP limit".to_vec()),
        Just(b"CV0@-256C".to_vec()),
        Just(b"cpu@52.968C/52.968C".to_vec()),
        Just(b"VDD_IN 5299mW/5299mW/9".to_vec()),
        Just(b"NC 0/0".to_vec()),
        Just(b"05-09-2026 18:42:06".to_vec()),
        Just(b"off".to_vec()),
        "[A-Z0-9_@%/\\[\\],.C-]{0,12}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..16),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(line in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&line);
    }

    #[test]
    fn shuffled_real_fragments_never_panic(
        parts in proptest::collection::vec(fragment(), 0..40),
        sep in prop_oneof![Just(&b" "[..]), Just(&b"  "[..]), Just(&b"\t"[..]), Just(&b""[..])],
    ) {
        check(&parts.join(sep));
    }

    #[test]
    fn non_utf8_inside_a_real_line_is_contained(pos in 0usize..200, byte in 0x80u8..=0xff) {
        let mut line = b"RAM 1446/3957MB (lfb 458x4MB) CPU [17%@1428,11%@1428] EMC_FREQ 2%@1600 \
            GR3D_FREQ 0%@76 APE 25 PLL@20.5C POM_5V_IN 2830/1483".to_vec();
        let pos = pos.min(line.len());
        line.insert(pos, byte);
        check(&line);
        // Bytes inserted after RAM's value never lose RAM.
        if pos > 16 {
            prop_assert!(parse_line(&line).is_ok());
        }
    }
}

#[test]
fn one_megabyte_lines_stay_bounded() {
    let mb = 1 << 20;
    let mut many_tokens = b"RAM 1/2MB ".to_vec();
    while many_tokens.len() < mb {
        many_tokens.extend_from_slice(b"X@1C Y 1/1 Z 5 junk ");
    }
    let mut cpu_list = b"RAM 1/2MB CPU [".to_vec();
    while cpu_list.len() < mb {
        cpu_list.extend_from_slice(b"1%@729,");
    }
    cpu_list.push(b']');
    let mut gpu_list = b"RAM 1/2MB GR3D_FREQ 1%@[".to_vec();
    while gpu_list.len() < mb {
        gpu_list.extend_from_slice(b"1,");
    }
    let one_token = vec![b'A'; mb];
    let spaces = vec![b' '; mb];
    let mut open_brackets = b"RAM 1/2MB".to_vec();
    while open_brackets.len() < mb {
        open_brackets.extend_from_slice(b" CPU [ 1%@1,");
    }
    for line in [
        many_tokens,
        cpu_list,
        gpu_list,
        one_token,
        spaces,
        open_brackets,
        vec![0xff; mb],
    ] {
        check(&line);
    }
}
