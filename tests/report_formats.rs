//! JSON keys stay as documented on `Analysis`; Markdown carries every section with real numbers.

use mpslab::experiment::analysis::{analyze, RunData};
use mpslab::experiment::report::{render_json, render_markdown};

fn synthetic_run() -> RunData {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/reports/synthetic_run.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

fn sorted(xs: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = xs.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn json_report_has_the_documented_stable_keys() {
    let json: serde_json::Value =
        serde_json::from_str(&render_json(&analyze(&synthetic_run()))).unwrap();
    assert_eq!(
        keys(&json),
        sorted(&[
            "schema",
            "run_id",
            "experiment",
            "status",
            "started_unix_ms",
            "finished_unix_ms",
            "method",
            "models",
            "primary_sampling",
            "phases",
            "conditions",
            "cells",
            "comparisons",
            "mps_table",
            "telemetry",
            "consistency",
            "recommendations",
            "problems",
        ])
    );
    assert_eq!(json["schema"], 1);
    assert_eq!(json["method"]["stdev_ddof"], 1);
    assert_eq!(json["method"]["bootstrap_resamples"], 1000);
    assert_eq!(
        keys(&json["cells"][0]["stats"]),
        sorted(&[
            "n",
            "mean_ms",
            "stdev_ms",
            "min_ms",
            "p50_ms",
            "p90_ms",
            "p95_ms",
            "p99_ms",
            "max_ms",
            "mean_ci_ms",
            "median_ci_ms"
        ])
    );
    assert_eq!(
        keys(&json["comparisons"][0]),
        sorted(&[
            "kind",
            "model",
            "baseline",
            "candidate",
            "baseline_mean_ms",
            "candidate_mean_ms",
            "diff_ms",
            "change_pct",
            "speedup_pct",
            "verdict"
        ])
    );
    assert_eq!(
        keys(&json["comparisons"][0]["diff_ms"]),
        sorted(&["value", "ci_low", "ci_high"])
    );
    let kinds: std::collections::BTreeSet<&str> = json["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "mixed_vs_all_mps",
            "mixed_vs_no_mps",
            "mps_effect",
            "sampling_overhead",
            "together_vs_alone"
        ]
    );
    let mixed = json["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["mode"] == "mixed")
        .unwrap();
    assert_eq!(mixed["key"], "mixed/mps-on-for-detect+seg/sampling-on");
    assert_eq!(
        mixed["mps"]["mixed"]["on_models"],
        serde_json::json!(["detect", "seg"])
    );
    // Energy per inference = rail energy / inferences of all models in those phases.
    let t = json["telemetry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["condition"] == "together/mps-on/sampling-on")
        .unwrap();
    let rail = &t["rails"][0];
    let per = rail["energy_mj"].as_f64().unwrap() / t["inferences"].as_f64().unwrap();
    assert!((rail["energy_per_inference_mj"].as_f64().unwrap() - per).abs() < 1e-9);
    assert_eq!(t["inferences"], 2 * 3 * 300);
    // Absent values are null, not 0: the sampling-off conditions have no telemetry at all, and
    // no model has a max_abs_diff except seg.
    assert!(json["consistency"][0]["max_abs_diff"].is_null());
}

#[test]
fn markdown_has_every_section_with_numbers() {
    let a = analyze(&synthetic_run());
    let md = render_markdown(&a);
    for heading in [
        "# mpslab report: run 42 (three-models)",
        "## 1. Alone vs together",
        "### 2.1 Latency",
        "### 2.2 MPS effect with confidence intervals",
        "### 2.3 Mixed MPS assignment vs all MPS and no MPS",
        "## 3. Output consistency",
        "### 4.1 GPU load",
        "### 4.2 CPU, memory and I/O",
        "### 4.3 Power and energy",
        "## 5. Sampling overhead",
        "## 6. Latency statistics per model and condition",
        "## 7. Conclusions and recommendations",
    ] {
        assert!(md.contains(heading), "missing {heading:?}\n{md}");
    }
    assert!(md.contains("| seg | DIFFERENT |"), "{md}");
    assert!(md.contains("max abs diff 3.100e-5"), "{md}");
    assert!(
        md.contains("phase 11 (mixed, MPS on for detect, seg): model cls ended with status failed"),
        "{md}"
    );
    // The stats table shows every cell with its n; the failed cls worker contributed 150 samples.
    let stats_section = md.split("## 6. Latency statistics").nth(1).unwrap();
    let cls_mixed = stats_section
        .lines()
        .find(|l| l.starts_with("| cls | mixed, MPS on for detect, seg |"))
        .unwrap();
    assert!(cls_mixed.contains("| 150 |"), "{cls_mixed}");
    // Two repeats of each together condition: repeat means shown.
    let det = stats_section
        .lines()
        .find(|l| l.starts_with("| detect | together, MPS off |") && l.contains("range"))
        .unwrap();
    assert!(det.contains(" / "), "{det}");
    for bad in ["NaN", "inf ms", "inf%", "| inf"] {
        assert!(!md.contains(bad), "{bad:?} in\n{md}");
    }
}
