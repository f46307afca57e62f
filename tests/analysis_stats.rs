//! Latency statistics checked against numpy (scripts/stats_check.py), hand-computed values and
//! the known sampling distribution of N(0, 1) data.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use mpslab::experiment::analysis::stats::{self, Xoshiro256};
use mpslab::experiment::analysis::{
    analyze, describe, Mode, ModelPhaseData, MpsSetting, PhaseData, RunData,
};

const PERCENTILES: [f64; 10] = [0.0, 1.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 100.0];

fn python() -> PathBuf {
    common::venv_python("numpy reference for the statistics")
}

fn numpy_reference(samples: &[Vec<f64>]) -> Vec<serde_json::Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stats_check.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start stats_check.py");
    let req = serde_json::json!({ "samples": samples, "percentiles": PERCENTILES });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(req.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "stats_check.py failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

// serde_json parses floats to within 1 ulp, so exact values are compared with a tolerance too.
/// Samples of several shapes and sizes, including ties, one and two values, heavy tails.
fn generated_samples() -> Vec<Vec<f64>> {
    let mut rng = Xoshiro256::seed_from_u64(2024);
    let mut out = vec![
        vec![7.25],
        vec![3.0, 1.0],
        vec![5.0, 5.0, 5.0, 1.0, 9.0, 5.0, 5.0],
    ];
    out.push((0..1000).map(|_| rng.next_f64() * 10.0).collect());
    out.push(
        (0..997)
            .map(|_| -(1.0 - rng.next_f64()).ln() * 12.0 + 3.0)
            .collect(),
    );
    out.push(
        (0..513)
            .map(|_| 1.0 / (1.0 - rng.next_f64()).powf(0.7))
            .collect(),
    );
    out.push((0..250).map(|_| (rng.below(20) as f64) * 0.5).collect());
    out
}

#[test]
fn descriptive_statistics_match_numpy() {
    let samples = generated_samples();
    let reference = numpy_reference(&samples);
    for (xs, r) in samples.iter().zip(&reference) {
        let (s, _) = describe(xs, 1).unwrap();
        let get = |k: &str| r[k].as_f64().unwrap();
        assert_eq!(s.n as u64, r["n"].as_u64().unwrap());
        assert!(
            close(s.mean_ms, get("mean")),
            "mean {} vs {}",
            s.mean_ms,
            get("mean")
        );
        assert!(
            close(s.stdev_ms, get("stdev")),
            "stdev {} vs {}",
            s.stdev_ms,
            get("stdev")
        );
        assert!(close(s.min_ms, get("min")));
        assert!(close(s.max_ms, get("max")));
        let sorted = stats::sorted(xs);
        let ps = r["percentiles"].as_array().unwrap();
        for (p, want) in PERCENTILES.iter().zip(ps) {
            let got = stats::percentile_sorted(&sorted, *p);
            assert!(
                close(got, want.as_f64().unwrap()),
                "n={} p{p}: {got} vs {want}",
                xs.len()
            );
        }
        let pick = |p: f64| {
            ps[PERCENTILES.iter().position(|x| *x == p).unwrap()]
                .as_f64()
                .unwrap()
        };
        for (got, p) in [
            (s.p50_ms, 50.0),
            (s.p90_ms, 90.0),
            (s.p95_ms, 95.0),
            (s.p99_ms, 99.0),
        ] {
            assert!(close(got, pick(p)), "p{p}: {got} vs {}", pick(p));
        }
    }
}

fn one_model_run(latencies_ns: Vec<Vec<u64>>) -> RunData {
    let phases = latencies_ns
        .into_iter()
        .enumerate()
        .map(|(i, lat)| PhaseData {
            index: i as u32,
            mode: Mode::Alone,
            mps: MpsSetting::Off,
            sampling: true,
            repeat: i as u32,
            start_unix_ms: 1_000 * i as i64,
            end_unix_ms: 1_000 * i as i64 + 500,
            models: vec![ModelPhaseData {
                model: "det".into(),
                latencies_ns: lat,
                output_digest: None,
                max_abs_diff: None,
                status: "ok".into(),
                error: None,
                stages_ns: Vec::new(),
                validation: None,
            }],
            telemetry: None,
            timeline: vec![],
        })
        .collect();
    RunData {
        run_id: 9,
        experiment: "e".into(),
        started_unix_ms: 0,
        finished_unix_ms: Some(3_000),
        status: "succeeded".into(),
        phases,
    }
}

#[test]
fn analyze_pools_repeats_in_ms_and_matches_numpy() {
    let mut rng = Xoshiro256::seed_from_u64(5);
    let r0: Vec<u64> = (0..400)
        .map(|_| 20_000_000 + rng.below(4_000_000) as u64)
        .collect();
    let r1: Vec<u64> = (0..300)
        .map(|_| 30_000_000 + rng.below(4_000_000) as u64)
        .collect();
    let a = analyze(&one_model_run(vec![r0.clone(), r1.clone()]));
    assert_eq!(a.cells.len(), 1);
    let cell = &a.cells[0];
    let pooled: Vec<f64> = r0.iter().chain(&r1).map(|&ns| ns as f64 / 1e6).collect();
    let r = &numpy_reference(&[pooled])[0];
    assert_eq!(cell.stats.n, 700);
    assert!(close(cell.stats.mean_ms, r["mean"].as_f64().unwrap()));
    assert!(close(cell.stats.stdev_ms, r["stdev"].as_f64().unwrap()));
    assert!(close(
        cell.stats.p99_ms,
        r["percentiles"][7].as_f64().unwrap()
    ));
    // Two repeats ~10 ms apart: the spread is shown and flagged as larger than the CI.
    assert_eq!(cell.repeats.len(), 2);
    assert_eq!((cell.repeats[0].n, cell.repeats[1].n), (400, 300));
    assert!(
        (cell.repeat_mean_range_ms - 10.0).abs() < 0.5,
        "{}",
        cell.repeat_mean_range_ms
    );
    assert!(cell.repeat_spread_exceeds_ci);
    // 700 inferences over 2 x 0.5 s of phase time.
    assert!((cell.throughput_per_s.unwrap() - 700.0).abs() < 1e-9);
}

#[test]
fn hand_computed_fixture() {
    let (s, _) = describe(&[4.0, 1.0, 100.0, 3.0, 2.0], 3).unwrap();
    assert_eq!(s.mean_ms, 22.0);
    // squared deviations 441 + 400 + 361 + 324 + 6084 = 7610, / (5 - 1)
    assert!((s.stdev_ms - (7610.0f64 / 4.0).sqrt()).abs() < 1e-12);
    assert_eq!(s.p50_ms, 3.0);
    assert!((s.p90_ms - 61.6).abs() < 1e-12); // h = 3.6: 4 + 0.6 * 96
    assert!((s.p99_ms - 96.16).abs() < 1e-12); // h = 3.96: 4 + 0.96 * 96
    assert_eq!((s.min_ms, s.max_ms), (1.0, 100.0));
    // Every bootstrap mean lies within the sample's range and the CI brackets the mean.
    assert!(s.mean_ci_ms[0] >= 1.0 && s.mean_ci_ms[1] <= 100.0);
    assert!(s.mean_ci_ms[0] < 22.0 && 22.0 < s.mean_ci_ms[1]);
}

fn normal_sample(seed: u64, n: usize) -> Vec<f64> {
    let mut rng = Xoshiro256::seed_from_u64(seed);
    (0..n).map(|_| rng.standard_normal()).collect()
}

#[test]
fn bootstrap_ci_of_normal_mean_has_the_textbook_width() {
    for n in [400usize, 20_000] {
        // 20 000 exceeds the resample cap: the rescaled (m-out-of-n) path must give the same width.
        let xs = normal_sample(11, n);
        let (s, _) = describe(&xs, 99).unwrap();
        let [lo, hi] = s.mean_ci_ms;
        assert!(lo < 0.0 && 0.0 < hi, "n={n}: CI [{lo}, {hi}] misses 0");
        let expected = 2.0 * 1.96 / (n as f64).sqrt();
        assert!(
            ((hi - lo) / expected - 1.0).abs() < 0.12,
            "n={n}: width {} vs {expected}",
            hi - lo
        );
        // Median of N(0,1): asymptotic sd is sqrt(pi/2)/sqrt(n), so the CI is ~1.25x wider.
        let [mlo, mhi] = s.median_ci_ms;
        let expected_median = expected * (std::f64::consts::PI / 2.0).sqrt();
        assert!(
            mlo < 0.0 && 0.0 < mhi,
            "n={n}: median CI [{mlo}, {mhi}] misses 0"
        );
        assert!(
            ((mhi - mlo) / expected_median - 1.0).abs() < 0.3,
            "n={n}: median width {} vs {expected_median}",
            mhi - mlo
        );
    }
}

#[test]
fn bootstrap_ci_coverage_is_near_95_percent() {
    let trials = 400;
    let (mut mean_hits, mut median_hits) = (0, 0);
    for seed in 0..trials {
        let xs = normal_sample(1_000 + seed, 101);
        let (s, _) = describe(&xs, seed).unwrap();
        mean_hits += usize::from(s.mean_ci_ms[0] < 0.0 && 0.0 < s.mean_ci_ms[1]);
        median_hits += usize::from(s.median_ci_ms[0] <= 0.0 && 0.0 <= s.median_ci_ms[1]);
    }
    let mean_cov = mean_hits as f64 / trials as f64;
    let median_cov = median_hits as f64 / trials as f64;
    // Binomial sd at 95 % over 400 trials is 1.1 points; percentile bootstrap runs slightly low.
    assert!(
        (0.91..=0.98).contains(&mean_cov),
        "mean CI coverage {mean_cov}"
    );
    assert!(
        (0.90..=0.99).contains(&median_cov),
        "median CI coverage {median_cov}"
    );
}

#[test]
fn same_input_gives_identical_report() {
    let run = one_model_run(vec![(0..500)
        .map(|i| 1_000_000 + (i * 7919 % 1000) * 1000)
        .collect()]);
    let a = serde_json::to_string(&analyze(&run)).unwrap();
    let b = serde_json::to_string(&analyze(&run)).unwrap();
    assert_eq!(a, b);
}
