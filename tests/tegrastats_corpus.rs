//! The parser against every real line of the corpus (tests/fixtures/tegrastats, a copy of
//! shared/tegrastats/corpus), values hand-read from the lines, and the 12 public parser bugs of
//! shared/research/tegrastats.md §5.1.

use mpslab::telemetry::tegrastats::{
    error_json, parse_line, EngineValue, LoadFreq, ParseError, TegraSample,
};
use serde_json::{json, Value};
use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tegrastats")
}

/// The non-comment, non-blank lines of one corpus file.
fn lines(file: &str) -> Vec<Vec<u8>> {
    let text = std::fs::read(corpus_dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    text.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
        .map(<[u8]>::to_vec)
        .collect()
}

fn sample(file: &str, index: usize) -> TegraSample {
    let all = lines(file);
    parse_line(&all[index]).unwrap_or_else(|e| panic!("{file}[{index}]: {e}"))
}

fn js(s: &TegraSample) -> Value {
    serde_json::to_value(s).unwrap()
}

fn lf(load: Option<u32>, freq: Option<u32>) -> Option<LoadFreq> {
    Some(LoadFreq {
        load_pct: load,
        freq_mhz: freq,
    })
}

fn platform_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".txt") && !n.starts_with('_'))
        .collect();
    files.sort();
    files
}

#[test]
fn every_real_line_parses_without_unknown_tokens() {
    let files = platform_files();
    assert!(files.len() >= 13, "corpus files missing: {files:?}");
    let mut count = 0;
    for file in &files {
        for (i, line) in lines(file).iter().enumerate() {
            let s = parse_line(line).unwrap_or_else(|e| panic!("{file}[{i}]: {e}"));
            assert!(
                s.unknown.is_empty(),
                "{file}[{i}]: unknown tokens {:?}",
                s.unknown.tokens()
            );
            assert!(s.cpus.is_some(), "{file}[{i}]: no CPU list");
            count += 1;
        }
    }
    assert!(count >= 65, "only {count} corpus lines");
}

#[test]
fn unverified_fragments_never_lose_ram() {
    for (i, line) in lines("_unverified-fragments.txt").iter().enumerate() {
        let text = String::from_utf8_lossy(line);
        let toks: Vec<&str> = text.split_whitespace().collect();
        let ram_value = toks
            .iter()
            .position(|t| *t == "RAM")
            .map(|p| toks[p + 1].trim_end_matches("MB").to_owned());
        match (parse_line(line), ram_value) {
            (Ok(s), Some(v)) => {
                assert_eq!(
                    format!("{}/{}", s.ram.used_mb, s.ram.total_mb),
                    v,
                    "line {i}"
                )
            }
            (Err(e), None) => assert!(matches!(e, ParseError::NoRam { .. }), "line {i}: {e}"),
            (r, v) => panic!("line {i}: parse {r:?} but RAM token {v:?}"),
        }
    }
}

#[test]
fn fragments_degrade_field_by_field() {
    let f = lines("_unverified-fragments.txt");
    // Runs of spaces between tokens (DataDog r36Sample) are just separators.
    let s = parse_line(&f[1]).unwrap();
    assert!(s.unknown.is_empty(), "{:?}", s.unknown.tokens());
    assert_eq!(s.engines.get("NVJPG1"), Some(&EngineValue::Off));
    assert_eq!(s.cpus.as_ref().unwrap().len(), 12);
    // Thor rails edited down to one value: kept as unknown, the rest of the line still parsed.
    let s = parse_line(&f[6]).unwrap();
    assert!(s.rails.is_empty());
    assert!(s.unknown.tokens().contains(&"VIN".to_owned()));
    assert_eq!(s.temps_c.get("gpu").unwrap().celsius, Some(43.968));
    // Spaces inside the CPU brackets.
    let s = parse_line(&f[7]).unwrap();
    assert_eq!(
        s.cpus.unwrap(),
        vec![lf(Some(6), Some(1420)), None, None, None]
    );
    // DRIVE OS `EMC_FREQ @2133`: clock without load.
    let s = parse_line(&f[8]).unwrap();
    assert_eq!(s.emc, lf(None, Some(2133)));
    // Android logcat line: RAM survives among unknown tokens, old `cpu [..]@MHz` still read.
    let s = parse_line(&f[9]).unwrap();
    assert_eq!((s.ram.used_mb, s.ram.total_mb), (250, 490));
    assert_eq!(
        s.cpus.unwrap(),
        vec![lf(Some(61), Some(835)), lf(Some(45), Some(835))]
    );
    assert!(!s.unknown.is_empty());
    // A fragment that starts at the CPU list is not a sample.
    assert!(matches!(parse_line(&f[4]), Err(ParseError::NoRam { .. })));
}

#[test]
fn agx_orin_r35_values() {
    let s = sample("agx-orin-r35.txt", 0);
    let v = js(&s);
    assert_eq!(v["timestamp"], "2025-04-11T10:36:27");
    assert_eq!(v["ram"], json!({"used_mb": 4321, "total_mb": 62801}));
    assert_eq!(
        v["swap"],
        json!({"used_mb": 19, "total_mb": 31400, "cached_mb": 0})
    );
    assert_eq!(v["cpus"].as_array().unwrap().len(), 12);
    assert_eq!(v["emc"], json!({"load_pct": 0, "freq_mhz": 2133}));
    assert_eq!(v["gpu"], json!({"load_pct": 0, "freq_mhz": [0, 0]}));
    assert_eq!(
        v["engines"]["VIC_FREQ"],
        json!({"load_pct": null, "freq_mhz": 729})
    );
    assert_eq!(v["temps_c"]["CV0"], Value::Null);
    assert_eq!(v["temps_c"]["GPU"], Value::Null);
    assert_eq!(v["temps_c"]["CPU"], 44.562);
    // `NC` printed twice: both kept, keys unique.
    assert_eq!(v["rails"]["NC"]["cur_mw"], 0);
    assert_eq!(v["rails"]["NC#2"]["cur_mw"], 0);
    assert_eq!(
        v["rails"]["VDD_GPU_SOC"],
        json!({"cur_mw": 2340, "avg_mw": 2340, "max_mw": null})
    );
    assert_eq!(s.ram.lfb_blocks, Some(1759));
    assert_eq!(s.ram.lfb_block_kb, Some(4096));

    let s = sample("agx-orin-r35.txt", 1);
    assert_eq!(
        js(&s)["gpu"],
        json!({"load_pct": 0, "freq_mhz": [114, 114]})
    );
    assert!(s.engines.get("GR3D2_FREQ").is_none());
    assert_eq!(
        s.engines.get("NVJPG1"),
        Some(&EngineValue::On(LoadFreq {
            load_pct: None,
            freq_mhz: Some(729)
        }))
    );
    assert_eq!(
        s.engines.get("APE"),
        Some(&EngineValue::On(LoadFreq {
            load_pct: None,
            freq_mhz: Some(233)
        }))
    );
}

#[test]
fn agx_orin_r36_values() {
    let s = sample("agx-orin-r36.txt", 0);
    let v = js(&s);
    assert_eq!(
        v["engines"]["NVENC"],
        json!({"load_pct": 79, "freq_mhz": 166})
    );
    assert_eq!(v["engines"]["NVDEC"], "off");
    assert_eq!(
        v["engines"]["VIC"],
        json!({"load_pct": 36, "freq_mhz": 115})
    );
    assert_eq!(v["engines"]["NVDLA1"], "off");
    assert_eq!(v["cpus"][4], json!({"load_pct": 46, "freq_mhz": 1267}));
    assert_eq!(v["temps_c"]["cpu"], 52.562);
    assert_eq!(v["rails"]["VIN_SYS_5V0"]["cur_mw"], 4707);
    assert_eq!(s.gr3d_load_pct(), Some(0.0));
    assert_eq!(s.emc_load_pct(), Some(3.0));
    let rails: Vec<(&str, u64)> = s.rails_mw().collect();
    assert_eq!(
        rails,
        [
            ("VDD_GPU_SOC", 2412),
            ("VDD_CPU_CV", 1607),
            ("VIN_SYS_5V0", 4707)
        ]
    );

    // Non-root R36: no EMC at all, GR3D load without clock, 4 slots off.
    let s = sample("agx-orin-r36.txt", 3);
    let v = js(&s);
    assert_eq!(v["emc"], Value::Null);
    assert_eq!(s.emc_load_pct(), None);
    assert_eq!(v["gpu"], json!({"load_pct": 0, "freq_mhz": null}));
    assert_eq!(v["cpus"][8], Value::Null);
    assert_eq!(v["cpus"][11], Value::Null);
    assert_eq!(v["engines"], json!({}));
    assert_eq!(v["temps_c"]["soc1"], 38.843);
}

#[test]
fn agx_xavier_r32_values() {
    // Rail names collide with the CPU keyword and with temperature zones.
    let s = sample("agx-xavier-r32.txt", 0);
    let v = js(&s);
    assert_eq!(
        v["rails"]["GPU"],
        json!({"cur_mw": 0, "avg_mw": 0, "max_mw": null})
    );
    assert_eq!(v["rails"]["CPU"]["cur_mw"], 311);
    assert_eq!(v["rails"]["SYS5V"]["avg_mw"], 1482);
    assert_eq!(v["temps_c"]["GPU"], 37.5);
    assert_eq!(v["temps_c"]["thermal"], 36.9);
    assert_eq!(v["cpus"].as_array().unwrap().len(), 8);
    assert_eq!(v["cpus"][4], Value::Null);
    assert_eq!(s.mts.as_ref().map(|m| (m.fg_pct, m.bg_pct)), Some((0, 0)));
    assert_eq!(v["timestamp"], Value::Null);

    let s = sample("agx-xavier-r32.txt", 1);
    assert_eq!(s.emc, lf(Some(0), None));
    assert_eq!(s.rails.get("CPU").map(|r| r.cur_mw), Some(618));
    assert_eq!(s.ram.lfb_block_kb, Some(2048));
}

#[test]
fn nano_r32_values() {
    let s = sample("nano-r32.txt", 0);
    let v = js(&s);
    assert_eq!(v["swap"], Value::Null);
    let iram = s.iram.as_ref().unwrap();
    assert_eq!(
        (iram.used_kb, iram.total_kb, iram.lfb_kb),
        (0, 252, Some(252))
    );
    assert_eq!(v["cpus"][0], json!({"load_pct": 17, "freq_mhz": 1428}));
    assert_eq!(v["gpu"], json!({"load_pct": 0, "freq_mhz": [76]}));
    assert_eq!(
        v["rails"]["POM_5V_IN"],
        json!({"cur_mw": 2830, "avg_mw": 1483, "max_mw": null})
    );
    assert_eq!(v["temps_c"]["thermal"], 22.25);
    assert_eq!(
        v["engines"]["APE"],
        json!({"load_pct": null, "freq_mhz": 25})
    );

    // Non-root JetAuto line: iwlwifi zone, no rails.
    let s = sample("nano-r32.txt", 3);
    assert_eq!(s.temps_c.get("iwlwifi").unwrap().celsius, Some(35.0));
    assert!(s.rails.is_empty());
    assert_eq!(js(&s)["rails"], json!({}));
    assert_eq!(s.cpus.as_ref().unwrap()[2], lf(Some(100), Some(1479)));

    // Encoder/decoder shown only while active, clock only.
    let all = lines("nano-r32.txt");
    let s = parse_line(all.last().unwrap()).unwrap();
    assert_eq!(
        js(&s)["engines"]["NVENC"],
        json!({"load_pct": null, "freq_mhz": 716})
    );
}

#[test]
fn orin_nano_values() {
    let s = sample("orin-nano-r35.txt", 0);
    let v = js(&s);
    assert_eq!(v["timestamp"], "2024-01-24T09:17:09");
    assert_eq!(v["gpu"], json!({"load_pct": 0, "freq_mhz": [305, 0]}));
    assert_eq!(v["cpus"][4], Value::Null);
    assert_eq!(s.ram.lfb_block_kb, Some(1024));
    assert_eq!(v["rails"]["VDD_IN"]["cur_mw"], 4915);

    let s = sample("orin-nano-r36.txt", 1);
    let v = js(&s);
    assert_eq!(v["gpu"], json!({"load_pct": 99, "freq_mhz": [612]}));
    assert_eq!(v["emc"], json!({"load_pct": 61, "freq_mhz": 2133}));
    assert_eq!(
        v["rails"]["VDD_IN"],
        json!({"cur_mw": 16321, "avg_mw": 11204, "max_mw": null})
    );
    assert_eq!(v["engines"]["APE"]["freq_mhz"], 200);
    assert_eq!(s.gr3d_load_pct(), Some(99.0));
}

#[test]
fn orin_nx_r35_values() {
    // Non-root: GR3D without clock but GR3D2 with one -> the position of each GPC is kept.
    let s = sample("orin-nx-r35.txt", 0);
    let v = js(&s);
    assert_eq!(v["gpu"], json!({"load_pct": 0, "freq_mhz": [null, 0]}));
    assert_eq!(v["emc"], json!({"load_pct": 0, "freq_mhz": null}));
    assert_eq!(v["rails"], json!({}));
    assert_eq!(v["cpus"].as_array().unwrap().len(), 8);

    let s = sample("orin-nx-r35.txt", 1);
    assert_eq!(js(&s)["gpu"], json!({"load_pct": 0, "freq_mhz": [611, 0]}));
    assert_eq!(js(&s)["timestamp"], "2023-06-16T10:45:09");
}

#[test]
fn thor_r38_values() {
    let s = sample("thor-r38.txt", 0);
    let v = js(&s);
    assert_eq!(v["gpu"], json!({"load_pct": null, "freq_mhz": [0, 0, 0]}));
    assert_eq!(s.gr3d_load_pct(), None);
    assert_eq!(
        v["engines"]["NVENC0_FREQ"],
        json!({"load_pct": null, "freq_mhz": 0})
    );
    assert_eq!(v["engines"]["VIC"], "off");
    assert_eq!(v["cpus"].as_array().unwrap().len(), 14);
    assert_eq!(v["temps_c"]["soc012"], 33.781);
    assert_eq!(v["ram"]["total_mb"], 125773);

    let s = sample("thor-r38.txt", 3);
    let v = js(&s);
    assert_eq!(v["swap"], Value::Null);
    assert_eq!(v["gpu"]["freq_mhz"], json!([314, 314, 314]));
    assert_eq!(v["rails"]["VIN"]["cur_mw"], 19780);
    assert_eq!(v["engines"]["OFA_FREQ"]["freq_mhz"], 315);

    let s = sample("thor-r38.txt", 4);
    let v = js(&s);
    assert_eq!(v["gpu"], Value::Null);
    assert_eq!(v["emc"], Value::Null);
    assert_eq!(v["engines"], json!({}));
    assert_eq!(v["cpus"][2], json!({"load_pct": 0, "freq_mhz": 1566}));
}

#[test]
fn tx1_r28_values() {
    // Old lower-case `cpu [..]@MHz`: every core gets the list's clock.
    let s = sample("tx1-r28.txt", 0);
    let v = js(&s);
    assert_eq!(
        v["cpus"],
        json!([
            {"load_pct": 17, "freq_mhz": 408}, {"load_pct": 13, "freq_mhz": 408},
            {"load_pct": 29, "freq_mhz": 408}, {"load_pct": 5, "freq_mhz": 408}
        ])
    );
    assert_eq!(v["emc"], json!({"load_pct": 1, "freq_mhz": 408}));
    assert_eq!(v["gpu"], json!({"load_pct": 3, "freq_mhz": [76]}));
    assert_eq!(v["swap"]["cached_mb"], 295);
    assert_eq!(v["temps_c"], json!({}));

    let s = sample("tx1-r28.txt", 4);
    let v = js(&s);
    assert_eq!(v["cpus"][1], json!({"load_pct": 4, "freq_mhz": 102}));
    assert_eq!(v["emc"], json!({"load_pct": 7, "freq_mhz": 408}));
    assert_eq!(
        v["rails"]["VDD_GPU"],
        json!({"cur_mw": 19, "avg_mw": 19, "max_mw": null})
    );
    assert_eq!(v["temps_c"]["Tdiode"], 42.75);
}

#[test]
fn tx2_values() {
    let s = sample("tx2-nx-r32.txt", 0);
    let v = js(&s);
    assert_eq!(v["cpus"][1], Value::Null);
    assert_eq!(v["cpus"][3], json!({"load_pct": 0, "freq_mhz": 345}));
    assert_eq!(v["gpu"], json!({"load_pct": 0, "freq_mhz": null}));
    assert_eq!(v["rails"], json!({}));

    let s = sample("tx2-r28.txt", 0);
    let v = js(&s);
    assert_eq!(v["gpu"], json!({"load_pct": 53, "freq_mhz": [140]}));
    assert_eq!(v["rails"]["VDD_DDR"]["cur_mw"], 575);
    assert_eq!(v["temps_c"]["Tdiode"], 37.75);
    assert_eq!(s.ram.lfb_block_kb, Some(1024));

    let s = sample("tx2-r32.txt", 0);
    let v = js(&s);
    assert_eq!(
        v["rails"]["VDD_4V0_WIFI"],
        json!({"cur_mw": 633, "avg_mw": 527, "max_mw": null})
    );
    assert_eq!(v["emc"], json!({"load_pct": 0, "freq_mhz": null}));
    assert_eq!(v["temps_c"]["thermal"], 41.9);
    let s = sample("tx2-r32.txt", 1);
    assert_eq!(s.mts.as_ref().map(|m| (m.fg_pct, m.bg_pct)), Some((1, 1)));
    assert_eq!(js(&s)["swap"]["cached_mb"], 181);
}

#[test]
fn xavier_nx_r32_values() {
    let s = sample("xavier-nx-r32.txt", 0);
    let v = js(&s);
    assert_eq!(s.mts.as_ref().map(|m| (m.fg_pct, m.bg_pct)), Some((1, 9)));
    assert_eq!(
        v["rails"]["VDD_CPU_GPU_CV"],
        json!({"cur_mw": 2706, "avg_mw": 2119, "max_mw": null})
    );
    assert_eq!(v["temps_c"]["thermal"], 31.35);
    assert_eq!(v["cpus"][5], json!({"load_pct": 96, "freq_mhz": 1420}));
    assert_eq!(
        v["swap"],
        json!({"used_mb": 983, "total_mb": 20269, "cached_mb": 280})
    );
}

// ---- the 12 public parser bugs (research note §5.1) -------------------------------------------

const ORIN_R35: &str = "RAM 6334/15388MB (lfb 1770x4MB) SWAP 491/7694MB (cached 0MB) \
    CPU [6%@729,9%@729,5%@729,16%@729,off,off,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@611 \
    VIC_FREQ 729 APE 174 CV0@45.812C CPU@47.937C GPU@45.875C tj@48.875C \
    VDD_IN 5299mW/5299mW VDD_CPU_GPU_CV 773mW/773mW VDD_SOC 1424mW/1424mW";

#[test]
fn bug01_engine_shown_only_while_active() {
    let base = "RAM 1180/3965MB (lfb 1x2MB) CPU [30%@1036,33%@1036] EMC_FREQ 10%@1600 \
                GR3D_FREQ 0%@76 APE 25 PLL@57C";
    let active = base.replace("APE 25", "NVDEC 192 APE 25");
    let a = parse_line(base.as_bytes()).unwrap();
    let b = parse_line(active.as_bytes()).unwrap();
    assert_eq!(
        b.engines.get("NVDEC"),
        Some(&EngineValue::On(LoadFreq {
            load_pct: None,
            freq_mhz: Some(192)
        }))
    );
    assert_eq!(a.engines.get("NVDEC"), None);
    assert_eq!((a.gpu, a.emc, a.temps_c), (b.gpu, b.emc, b.temps_c));
}

#[test]
fn bug02_negative_temperatures() {
    let s = parse_line(b"RAM 1/2MB CV0@-256C BCPU@-45C GPU@-12.5C").unwrap();
    let v = js(&s);
    assert_eq!(
        v["temps_c"],
        json!({"CV0": null, "BCPU": -45.0, "GPU": -12.5})
    );
    assert!(s.unknown.is_empty());
}

#[test]
fn bug03_rails_with_and_without_mw() {
    let with = parse_line(ORIN_R35.as_bytes()).unwrap();
    let without = parse_line(ORIN_R35.replace("mW", "").as_bytes()).unwrap();
    assert_eq!(
        with.rails.get("VDD_IN").map(|r| (r.cur_mw, r.avg_mw)),
        Some((5299, 5299))
    );
    assert_eq!(with.rails, without.rails);
    assert!(with.unknown.is_empty() && without.unknown.is_empty());
}

#[test]
fn bug04_timestamp_optional() {
    let plain = parse_line(ORIN_R35.as_bytes()).unwrap();
    let stamped = parse_line(format!("06-16-2023 10:45:09 {ORIN_R35}").as_bytes()).unwrap();
    assert_eq!(plain.timestamp, None);
    assert_eq!(js(&stamped)["timestamp"], "2023-06-16T10:45:09");
    let mut a = js(&plain);
    let mut b = js(&stamped);
    a["timestamp"] = Value::Null;
    b["timestamp"] = Value::Null;
    assert_eq!(a, b);
}

#[test]
fn bug05_gr3d2_is_a_second_gpc_not_a_second_gpu() {
    let s = parse_line(b"RAM 1/2MB GR3D_FREQ 0%@114 GR3D2_FREQ 0%@114").unwrap();
    assert_eq!(
        js(&s)["gpu"],
        json!({"load_pct": 0, "freq_mhz": [114, 114]})
    );
    assert!(s.engines.is_empty());
    // Printed in the other order, GPC0 still comes first.
    let s = parse_line(b"RAM 1/2MB GR3D2_FREQ 5%@200 GR3D_FREQ 5%@100").unwrap();
    assert_eq!(
        js(&s)["gpu"],
        json!({"load_pct": 5, "freq_mhz": [100, 200]})
    );
}

#[test]
fn bug06_bracketed_gpu_clocks_after_cpu_list() {
    let s = parse_line(
        b"RAM 1/2MB CPU [1%@729,2%@729,off] EMC_FREQ 1%@2133 GR3D_FREQ 0%@[0,0] VIC off",
    )
    .unwrap();
    assert_eq!(s.cpus.as_ref().unwrap().len(), 3);
    assert_eq!(js(&s)["gpu"], json!({"load_pct": 0, "freq_mhz": [0, 0]}));
    assert_eq!(js(&s)["emc"], json!({"load_pct": 1, "freq_mhz": 2133}));
    let s = parse_line(b"RAM 1/2MB CPU [1%@729] GR3D_FREQ 7%@[305]").unwrap();
    assert_eq!(js(&s)["gpu"], json!({"load_pct": 7, "freq_mhz": [305]}));
}

#[test]
fn bug07_thor_clocks_without_load() {
    let s = parse_line(b"RAM 1/2MB GR3D_FREQ @[1000,1000,1000] NVENC0_FREQ @1556").unwrap();
    let v = js(&s);
    assert_eq!(
        v["gpu"],
        json!({"load_pct": null, "freq_mhz": [1000, 1000, 1000]})
    );
    assert_eq!(
        v["engines"]["NVENC0_FREQ"],
        json!({"load_pct": null, "freq_mhz": 1556})
    );
    assert!(s.unknown.is_empty());
}

/// A JetPack 7.2 Orin line written from the grammar (the real one is held back for acceptance).
const JP72_ORIN: &str =
    "07-02-2026 20:41:39 RAM 2761/62841MB (lfb 10x4MB) SWAP 0/31420MB (cached 0MB) \
    CPU [3%@1728,1%@1728,0%@1728,0%@1728,off,off,off,off,off,off,off,off] EMC_FREQ 0%@3199 \
    GR3D_FREQ 0%@[1300,1300] NVENC0 off NVENC1 off NVDEC0 off NVDEC1 off NVJPG0 off VIC off \
    cpu@52.968C/52.968C soc2@48.5C/48.5C soc0@49C/49C gpu@47.25C/47.25C \
    VDD_GPU_SOC 3178mW/3178mW/3178mW VDD_CPU_CV 794mW/794mW/812mW VIN_SYS_5V0 4512mW/4512mW/4600mW";

#[test]
fn bug08_jp72_per_gpc_clocks_keep_load_and_clock() {
    let s = parse_line(JP72_ORIN.as_bytes()).unwrap();
    assert!(s.unknown.is_empty(), "{:?}", s.unknown.tokens());
    assert_eq!(
        js(&s)["gpu"],
        json!({"load_pct": 0, "freq_mhz": [1300, 1300]})
    );
    let s = parse_line(JP72_ORIN.replace("0%@[1300", "37%@[1300").as_bytes()).unwrap();
    assert_eq!(s.gr3d_load_pct(), Some(37.0));
}

#[test]
fn bug09_jetpack7_without_gr3d_two_valued_temps_three_valued_rails() {
    let s = parse_line(
        b"07-02-2026 20:41:39 RAM 37755/125749MB (lfb 529x4MB) SWAP 31/4096MB (cached 16MB) \
          CPU [2%@972,0%@972] cpu@40.281C/40.281C tj@41.843C/41.9C gpu@41.843C/41.843C \
          VDD_GPU 1975mW/1975mW/1980mW VIN 87426mW/43713mW/87426mW",
    )
    .unwrap();
    let v = js(&s);
    assert_eq!(v["gpu"], Value::Null);
    assert_eq!(
        v["temps_c"],
        json!({"cpu": 40.281, "tj": 41.843, "gpu": 41.843})
    );
    assert_eq!(s.temps_c.get("tj").unwrap().second_celsius, Some(41.9));
    assert_eq!(
        v["rails"]["VIN"],
        json!({"cur_mw": 87426, "avg_mw": 43713, "max_mw": 87426})
    );
    assert_eq!(v["rails"]["VDD_GPU"]["max_mw"], 1980);
    assert!(s.unknown.is_empty());
}

#[test]
fn bug10_pre_jp5_rails_and_upper_case_zones() {
    let s = sample("tx2-r32.txt", 1);
    let v = js(&s);
    assert_eq!(
        v["rails"]["VDD_IN"],
        json!({"cur_mw": 5297, "avg_mw": 5297, "max_mw": null})
    );
    assert_eq!(v["temps_c"]["GPU"], 39.5);
    assert_eq!(s.rails.len(), 6);
}

#[test]
fn bug11_non_root_emc_without_clock() {
    let s = parse_line(b"RAM 1/2MB EMC_FREQ 0% GR3D_FREQ 4%").unwrap();
    assert_eq!(s.emc, lf(Some(0), None));
    assert_eq!(s.emc_load_pct(), Some(0.0));
    assert_eq!(s.gr3d_load_pct(), Some(4.0));
    assert!(s.unknown.is_empty());
}

#[test]
fn bug12_many_cores_and_any_field_order() {
    let thor = sample("thor-r38.txt", 1);
    assert_eq!(thor.cpus.as_ref().unwrap().len(), 14);
    assert_eq!(thor.cpus.as_ref().unwrap()[9], lf(Some(17), Some(2601)));

    // The same fields in reverse order give the same sample.
    let line = String::from_utf8(lines("nano-r32.txt")[1].clone()).unwrap();
    let fields = [
        "RAM 1923/3964MB (lfb 2x2MB)",
        "SWAP 191/1982MB (cached 6MB)",
        "IRAM 0/252kB(lfb 252kB)",
        "CPU [5%@1224,4%@1224,3%@1224,6%@1224]",
        "EMC_FREQ 0%@1600",
        "GR3D_FREQ 0%@76",
        "APE 25",
        "PLL@37C CPU@40C PMIC@50C GPU@40C AO@45C thermal@40C",
        "POM_5V_IN 1750/1628 POM_5V_GPU 0/0 POM_5V_CPU 366/406",
    ];
    assert_eq!(fields.join(" "), line);
    let reversed: Vec<&str> = fields.iter().rev().copied().collect();
    let a = parse_line(line.as_bytes()).unwrap();
    let b = parse_line(reversed.join(" ").as_bytes()).unwrap();
    assert_eq!(js(&a), js(&b));
    assert_eq!(a.iram, b.iram);
    assert!(b.unknown.is_empty());
}

#[test]
fn error_object_for_lines_that_are_not_samples() {
    let raw = b"tegrastats: cannot open /sys/devices/gpu.0/load\n";
    let err = parse_line(raw).unwrap_err();
    let v = error_json(raw, &err);
    assert_eq!(v["raw"], "tegrastats: cannot open /sys/devices/gpu.0/load");
    assert!(v["error"].as_str().unwrap().contains("RAM"), "{v}");
    assert_eq!(v.as_object().unwrap().len(), 2);
}
