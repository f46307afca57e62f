//! Telemetry summaries for one phase of an experiment (a time window), as reports show them.
//!
//! Pure: the caller loads the samples (tegrastats and vmstat rows) and passes plain points.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One tegrastats sample, reduced to what summaries use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuPoint {
    pub wall_ms: i64,
    /// GR3D load; `None` where the line shows clocks only.
    pub gr3d_pct: Option<f64>,
    pub emc_pct: Option<f64>,
    /// Instantaneous power per rail (`VDD_IN`, ...) in mW.
    pub rails_mw: Vec<(String, f64)>,
}

/// One vmstat row, reduced to what summaries use. Pass delta rows only: a since-boot first
/// row averages the whole uptime and would skew the phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VmPoint {
    pub wall_ms: i64,
    pub us: f64,
    pub sy: f64,
    pub id: f64,
    pub wa: f64,
    pub free_kb: u64,
}

/// The phase, `[start_ms, end_ms]` in Unix milliseconds, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Window {
    fn contains(&self, t: i64) -> bool {
        self.start_ms <= t && t <= self.end_ms
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SummaryOptions {
    /// Two consecutive power samples further apart than this are a gap (sampler stalled or
    /// restarted): the span between them is not integrated and not counted as covered.
    pub max_gap_ms: i64,
}

impl Default for SummaryOptions {
    /// Five tegrastats intervals at the default 1000 ms.
    fn default() -> Self {
        SummaryOptions { max_gap_ms: 5000 }
    }
}

/// A utilisation percentage over the window's samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoadSummary {
    /// Samples that carried a value.
    pub samples: usize,
    pub avg_pct: f64,
    /// Average over the samples above 0: how busy the unit was while it was used at all.
    pub avg_nonzero_pct: Option<f64>,
    pub max_pct: f64,
    pub nonzero_samples: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MinAvgMax {
    pub min: f64,
    pub avg: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinMax {
    pub min: u64,
    pub max: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RailSummary {
    pub rail: String,
    /// Samples of this rail inside the window.
    pub samples: usize,
    /// Time-weighted mean over the covered time; with no covered time (one sample) the plain
    /// mean of the samples inside the window.
    pub mean_mw: Option<f64>,
    /// Energy over the covered time; `None` when nothing could be integrated.
    pub energy_mj: Option<f64>,
    /// Milliseconds of the window integrated (gaps and the parts before the first / after the
    /// last sample are not). Compare with the window length to judge `energy_mj`.
    pub covered_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseTelemetry {
    pub window: Window,
    pub gpu_samples: usize,
    pub gr3d: Option<LoadSummary>,
    pub emc: Option<LoadSummary>,
    pub vm_samples: usize,
    pub cpu_us: Option<MinAvgMax>,
    pub cpu_sy: Option<MinAvgMax>,
    pub cpu_id: Option<MinAvgMax>,
    pub cpu_wa: Option<MinAvgMax>,
    pub free_kb: Option<MinMax>,
    /// Sorted by rail name.
    pub rails: Vec<RailSummary>,
}

/// Summarises the samples that fall in `window`. Points may come in any order; non-finite
/// values are ignored. Power samples just outside the window are used to interpolate power at
/// its edges.
pub fn summarize(
    window: Window,
    gpu: &[GpuPoint],
    vm: &[VmPoint],
    options: SummaryOptions,
) -> PhaseTelemetry {
    let gpu_in: Vec<&GpuPoint> = gpu.iter().filter(|p| window.contains(p.wall_ms)).collect();
    let vm_in: Vec<&VmPoint> = vm.iter().filter(|p| window.contains(p.wall_ms)).collect();
    let gr3d = load_summary(gpu_in.iter().filter_map(|p| p.gr3d_pct));
    let emc = load_summary(gpu_in.iter().filter_map(|p| p.emc_pct));
    let cpu = |pick: fn(&VmPoint) -> f64| min_avg_max(vm_in.iter().map(|p| pick(p)));
    let free_kb = vm_in
        .iter()
        .map(|p| p.free_kb)
        .fold(None, |acc, v| match acc {
            None => Some(MinMax { min: v, max: v }),
            Some(m) => Some(MinMax {
                min: m.min.min(v),
                max: m.max.max(v),
            }),
        });

    let mut series: BTreeMap<&str, Vec<(i64, f64)>> = BTreeMap::new();
    for p in gpu {
        for (rail, mw) in &p.rails_mw {
            if mw.is_finite() {
                series
                    .entry(rail.as_str())
                    .or_default()
                    .push((p.wall_ms, *mw));
            }
        }
    }
    let rails = series
        .into_iter()
        .map(|(rail, mut points)| {
            points.sort_by_key(|&(t, _)| t);
            rail_summary(rail, &points, window, options.max_gap_ms)
        })
        .collect();

    PhaseTelemetry {
        window,
        gpu_samples: gpu_in.len(),
        gr3d,
        emc,
        vm_samples: vm_in.len(),
        cpu_us: cpu(|p| p.us),
        cpu_sy: cpu(|p| p.sy),
        cpu_id: cpu(|p| p.id),
        cpu_wa: cpu(|p| p.wa),
        free_kb,
        rails,
    }
}

fn load_summary(values: impl Iterator<Item = f64>) -> Option<LoadSummary> {
    let values: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    let stats = min_avg_max(values.iter().copied())?;
    let nonzero: Vec<f64> = values.iter().copied().filter(|&v| v > 0.0).collect();
    Some(LoadSummary {
        samples: values.len(),
        avg_pct: stats.avg,
        avg_nonzero_pct: min_avg_max(nonzero.iter().copied()).map(|s| s.avg),
        max_pct: stats.max,
        nonzero_samples: nonzero.len(),
    })
}

fn min_avg_max(values: impl Iterator<Item = f64>) -> Option<MinAvgMax> {
    let (mut n, mut sum, mut min, mut max) = (0usize, 0.0, f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        n += 1;
        sum += v;
        min = min.min(v);
        max = max.max(v);
    }
    (n > 0).then(|| MinAvgMax {
        min,
        avg: sum / n as f64,
        max,
    })
}

/// Energy by the trapezoid rule: tegrastats gives instantaneous power at sample instants, and
/// joining them by straight lines is the natural estimate between two readings. Unlike a
/// rectangle (step) sum it does not shift energy by one sample interval when power steps at a
/// phase boundary, and it yields the power at the window edges by interpolation, so a window
/// that cuts a sample interval gets exactly its share.
fn rail_summary(rail: &str, points: &[(i64, f64)], window: Window, max_gap_ms: i64) -> RailSummary {
    let inside: Vec<f64> = points
        .iter()
        .filter(|(t, _)| window.contains(*t))
        .map(|&(_, v)| v)
        .collect();
    let (mut area_mw_ms, mut covered_ms) = (0.0, 0i64);
    for pair in points.windows(2) {
        let ((t0, v0), (t1, v1)) = (pair[0], pair[1]);
        if t1 <= t0 || t1 - t0 > max_gap_ms {
            continue;
        }
        let (a, b) = (t0.max(window.start_ms), t1.min(window.end_ms));
        if b <= a {
            continue;
        }
        let at = |t: i64| v0 + (v1 - v0) * (t - t0) as f64 / (t1 - t0) as f64;
        area_mw_ms += (b - a) as f64 * (at(a) + at(b)) / 2.0;
        covered_ms += b - a;
    }
    let (mean_mw, energy_mj) = if covered_ms > 0 {
        (
            Some(area_mw_ms / covered_ms as f64),
            Some(area_mw_ms / 1000.0),
        )
    } else {
        (min_avg_max(inside.iter().copied()).map(|s| s.avg), None)
    };
    RailSummary {
        rail: rail.to_owned(),
        samples: inside.len(),
        mean_mw,
        energy_mj,
        covered_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(t: i64, gr3d: Option<f64>, rails: &[(&str, f64)]) -> GpuPoint {
        GpuPoint {
            wall_ms: t,
            gr3d_pct: gr3d,
            emc_pct: gr3d.map(|g| g / 2.0),
            rails_mw: rails.iter().map(|(r, v)| (r.to_string(), *v)).collect(),
        }
    }

    fn vm(t: i64, us: f64, sy: f64, wa: f64, free_kb: u64) -> VmPoint {
        VmPoint {
            wall_ms: t,
            us,
            sy,
            id: 100.0 - us - sy - wa,
            wa,
            free_kb,
        }
    }

    const W: Window = Window {
        start_ms: 0,
        end_ms: 10_000,
    };

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    #[test]
    fn no_samples_gives_nothing() {
        let s = summarize(W, &[], &[], SummaryOptions::default());
        assert_eq!((s.gpu_samples, s.vm_samples), (0, 0));
        assert_eq!(
            (s.gr3d, s.emc, s.cpu_us, s.free_kb),
            (None, None, None, None)
        );
        assert!(s.rails.is_empty());
    }

    #[test]
    fn gr3d_averages_over_all_and_over_busy_samples() {
        let pts = [
            gpu(0, Some(0.0), &[]),
            gpu(1000, Some(50.0), &[]),
            gpu(2000, Some(0.0), &[]),
            gpu(3000, Some(100.0), &[]),
            gpu(4000, None, &[]),
            gpu(20_000, Some(99.0), &[]), // outside the window
        ];
        let s = summarize(W, &pts, &[], SummaryOptions::default());
        assert_eq!(s.gpu_samples, 5);
        let g = s.gr3d.unwrap();
        assert_eq!((g.samples, g.nonzero_samples), (4, 2));
        close(g.avg_pct, 37.5);
        close(g.avg_nonzero_pct.unwrap(), 75.0);
        close(g.max_pct, 100.0);
        close(s.emc.unwrap().avg_pct, 18.75);
    }

    #[test]
    fn idle_gpu_has_no_busy_average() {
        let pts = [gpu(0, Some(0.0), &[]), gpu(1000, Some(0.0), &[])];
        let g = summarize(W, &pts, &[], SummaryOptions::default())
            .gr3d
            .unwrap();
        assert_eq!((g.avg_nonzero_pct, g.nonzero_samples), (None, 0));
        close(g.avg_pct, 0.0);
    }

    #[test]
    fn cpu_and_memory_ranges() {
        let pts = [
            vm(0, 10.0, 5.0, 0.0, 3000),
            vm(1000, 30.0, 1.0, 4.0, 1000),
            vm(2000, 20.0, 3.0, 2.0, 2000),
            vm(-1, 90.0, 9.0, 1.0, 1), // before the window
        ];
        let s = summarize(W, &[], &pts, SummaryOptions::default());
        assert_eq!(s.vm_samples, 3);
        let us = s.cpu_us.unwrap();
        close(us.min, 10.0);
        close(us.avg, 20.0);
        close(us.max, 30.0);
        let sy = s.cpu_sy.unwrap();
        close(sy.min, 1.0);
        close(sy.avg, 3.0);
        close(sy.max, 5.0);
        let wa = s.cpu_wa.unwrap();
        close(wa.min, 0.0);
        close(wa.avg, 2.0);
        close(wa.max, 4.0);
        close(s.cpu_id.unwrap().avg, 75.0);
        assert_eq!(
            s.free_kb,
            Some(MinMax {
                min: 1000,
                max: 3000
            })
        );
    }

    #[test]
    fn energy_is_trapezoidal_and_clipped_to_the_window() {
        // 1000 -> 2000 -> 2000 -> 0 mW at 0, 1, 2, 3 s; window 0.5 s .. 2.5 s.
        let pts = [
            gpu(0, None, &[("VDD_IN", 1000.0)]),
            gpu(1000, None, &[("VDD_IN", 2000.0)]),
            gpu(2000, None, &[("VDD_IN", 2000.0)]),
            gpu(3000, None, &[("VDD_IN", 0.0)]),
        ];
        let w = Window {
            start_ms: 500,
            end_ms: 2500,
        };
        let s = summarize(w, &pts, &[], SummaryOptions::default());
        let r = &s.rails[0];
        assert_eq!(
            (r.rail.as_str(), r.samples, r.covered_ms),
            ("VDD_IN", 2, 2000)
        );
        // 0.5 s at mean 1750 + 1 s at 2000 + 0.5 s at mean 1500 = 875 + 2000 + 750 mJ.
        close(r.energy_mj.unwrap(), 3625.0);
        close(r.mean_mw.unwrap(), 1812.5);
    }

    #[test]
    fn gaps_are_not_integrated() {
        let pts: Vec<GpuPoint> = [0, 1000, 9000, 10_000]
            .iter()
            .map(|&t| gpu(t, None, &[("VDD_GPU", 500.0 + t as f64 / 10.0)]))
            .collect();
        let s = summarize(W, &pts, &[], SummaryOptions { max_gap_ms: 5000 });
        let r = &s.rails[0];
        assert_eq!((r.samples, r.covered_ms), (4, 2000));
        // [0,1] s: 500 -> 600 mW = 550 mJ; [9,10] s: 1400 -> 1500 mW = 1450 mJ.
        close(r.energy_mj.unwrap(), 2000.0);
        close(r.mean_mw.unwrap(), 1000.0);
    }

    #[test]
    fn single_sample_has_a_mean_but_no_energy() {
        let pts = [gpu(5000, Some(40.0), &[("VDD_IN", 4200.0)])];
        let s = summarize(W, &pts, &[], SummaryOptions::default());
        let r = &s.rails[0];
        assert_eq!((r.samples, r.covered_ms, r.energy_mj), (1, 0, None));
        close(r.mean_mw.unwrap(), 4200.0);
        close(s.gr3d.unwrap().avg_pct, 40.0);
    }

    #[test]
    fn rails_are_separate_unordered_input_is_sorted_and_nan_ignored() {
        let pts = [
            gpu(2000, None, &[("B", 300.0), ("A", 10.0)]),
            gpu(0, None, &[("B", 100.0)]),
            gpu(1000, None, &[("A", f64::NAN), ("B", 200.0)]),
        ];
        let s = summarize(W, &pts, &[], SummaryOptions::default());
        let names: Vec<&str> = s.rails.iter().map(|r| r.rail.as_str()).collect();
        assert_eq!(names, ["A", "B"]);
        assert_eq!((s.rails[0].samples, s.rails[0].energy_mj), (1, None));
        close(s.rails[1].energy_mj.unwrap(), 400.0); // 150 mW·s + 250 mW·s
    }

    #[test]
    fn serializes_for_reports() {
        let pts = [
            gpu(0, Some(10.0), &[("VDD_IN", 1.0)]),
            gpu(1000, Some(20.0), &[("VDD_IN", 3.0)]),
        ];
        let v = serde_json::to_value(summarize(W, &pts, &[], SummaryOptions::default())).unwrap();
        assert_eq!(v["gr3d"]["max_pct"], 20.0);
        assert_eq!(v["rails"][0]["energy_mj"], 2.0);
        assert!(v["cpu_us"].is_null());
    }
}
