//! Analysis of one experiment run, and comparison of two runs.
//!
//! Input is [`RunData`], a plain serialisable description of a run that does not depend on the
//! SQLite store (the store fills it; tests load it from JSON fixtures). [`analyze`] turns it into an
//! [`Analysis`], whose serde form *is* the JSON report; [`compare`] compares two runs.
//! Everything here is pure: no I/O, no clock, no global state. The same input always gives the
//! same output, because every random choice comes from a PRNG seeded from the model and condition.
//!
//! # Method (also recorded in [`Method`] inside every report)
//! - Latencies are converted from ns to ms (`f64`).
//! - `stdev` is the sample standard deviation (`ddof = 1`, like `numpy.std(x, ddof=1)`); 0 for n < 2.
//! - Percentiles use linear interpolation between closest ranks (Hyndman–Fan type 7, numpy's
//!   default `method="linear"`): `h = (n-1)·p`, `x[⌊h⌋] + (h-⌊h⌋)·(x[⌊h⌋+1]-x[⌊h⌋])`.
//! - Confidence intervals are 95 % percentile-bootstrap intervals with [`BOOTSTRAP_RESAMPLES`]
//!   resamples from a seeded xoshiro256** generator.
//!   - Mean: each resample draws `m = min(n, MEAN_RESAMPLE_CAP)` values with replacement; when
//!     `m < n` the deviation of the resample mean from the sample mean is scaled by `√(m/n)`
//!     (m-out-of-n bootstrap), which keeps the cost bounded for 100 000-sample phases.
//!   - Median: the resample median is drawn exactly from its bootstrap distribution by descending
//!     a binary tree over the sorted sample with binomial splits (O(log n) per resample instead
//!     of O(n)); binomials with more than 64 trials use the normal approximation.
//! - Samples from repeats of the same condition are pooled; each repeat's mean is also reported
//!   so the repeat-to-repeat spread is visible.
//! - A comparison (candidate vs baseline) bootstraps the difference of the two means from
//!   independent resamples. Verdict: `faster` when the whole 95 % CI of `candidate - baseline`
//!   is below 0, `slower` when above 0, otherwise `no_significant_change`.
//! - MPS effect (as in the seed study) = `mean(MPS off) / mean(MPS on) - 1`: +96 % means MPS made
//!   the model 1.96× faster.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub mod validation;
pub use validation::ValidationAnalysis;

// ---------------------------------------------------------------------------------------------
// Input data model
// ---------------------------------------------------------------------------------------------

/// How the models of a phase ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One model at a time.
    Alone,
    /// All models of the phase concurrently.
    Together,
    /// Concurrently, with a per-model MPS assignment (see [`MpsSetting::Mixed`]).
    Mixed,
}

/// Whether the phase's workers ran under CUDA MPS.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MpsSetting {
    Off,
    On,
    /// Only `on_models` were clients of the MPS server.
    Mixed {
        on_models: Vec<String>,
    },
}

/// One run as recorded by the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunData {
    pub run_id: u64,
    pub experiment: String,
    pub started_unix_ms: i64,
    #[serde(default)]
    pub finished_unix_ms: Option<i64>,
    pub status: String,
    pub phases: Vec<PhaseData>,
}

/// One phase: a set of models run under one condition for one repeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseData {
    pub index: u32,
    pub mode: Mode,
    pub mps: MpsSetting,
    /// Whether tegrastats/vmstat sampling was running during the phase.
    pub sampling: bool,
    pub repeat: u32,
    pub start_unix_ms: i64,
    pub end_unix_ms: i64,
    pub models: Vec<ModelPhaseData>,
    #[serde(default)]
    pub telemetry: Option<PhaseTelemetryInput>,
    #[serde(default)]
    pub timeline: Vec<TimelinePoint>,
}

/// One model's results in one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelPhaseData {
    pub model: String,
    /// Per-iteration latency after warm-up, in nanoseconds.
    pub latencies_ns: Vec<u64>,
    /// Digest of the model's outputs (same inputs in every phase, so equal digests = equal outputs).
    #[serde(default)]
    pub output_digest: Option<String>,
    /// Largest absolute difference from the reference outputs, where the worker measured it.
    #[serde(default)]
    pub max_abs_diff: Option<f64>,
    /// `"ok"` when the worker finished normally.
    pub status: String,
    #[serde(default)]
    pub error: Option<String>,
    /// Validation runs: (preprocess, inference, postprocess) ns of each image in the window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages_ns: Vec<[u64; 3]>,
    /// Validation runs: the worker's metrics, prediction digest and dataset issues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<crate::experiment::protocol::ValidationSummary>,
}

/// Telemetry of one phase, already summarised by the samplers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseTelemetryInput {
    /// GR3D load averaged over all tegrastats samples.
    #[serde(default)]
    pub gr3d_avg_pct: Option<f64>,
    /// GR3D load averaged over the samples where it was not 0.
    #[serde(default)]
    pub gr3d_avg_nonzero_pct: Option<f64>,
    #[serde(default)]
    pub gr3d_max_pct: Option<f64>,
    #[serde(default)]
    pub gr3d_nonzero_samples: Option<u64>,
    #[serde(default)]
    pub gr3d_samples: Option<u64>,
    /// vmstat `us`, `sy`, `wa` (percent) and `free` (MB).
    #[serde(default)]
    pub cpu_us_pct: Option<ValueRange>,
    #[serde(default)]
    pub cpu_sy_pct: Option<ValueRange>,
    #[serde(default)]
    pub cpu_wa_pct: Option<ValueRange>,
    #[serde(default)]
    pub free_mem_mb: Option<ValueRange>,
    /// Power rails (tegrastats), one entry per rail.
    #[serde(default)]
    pub rails: Vec<RailEnergy>,
}

/// Minimum, mean and maximum of a sampled value over a phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ValueRange {
    pub min: f64,
    pub mean: f64,
    pub max: f64,
}

/// Mean power of one rail over a phase and the energy it used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RailEnergy {
    pub rail: String,
    pub mean_mw: f64,
    pub energy_mj: f64,
}

/// One telemetry sample for the timeline chart.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// Wall-clock time, Unix milliseconds.
    pub wall_ms: i64,
    #[serde(default)]
    pub gr3d_pct: Option<f64>,
    /// Total input power (e.g. `VDD_IN`), mW.
    #[serde(default)]
    pub power_mw: Option<f64>,
}

// ---------------------------------------------------------------------------------------------
// Statistics primitives
// ---------------------------------------------------------------------------------------------

/// Number of bootstrap resamples behind every confidence interval.
pub const BOOTSTRAP_RESAMPLES: usize = 1000;
/// Largest resample size for the bootstrap of the mean (see the module docs).
pub const MEAN_RESAMPLE_CAP: usize = 2048;
/// Confidence level of every interval.
pub const CONFIDENCE: f64 = 0.95;

/// Small statistics toolbox: descriptive statistics, a seeded PRNG and bootstrap replicates.
pub mod stats {
    /// splitmix64 step: used to expand one seed into the xoshiro state and to mix hashes.
    pub fn splitmix64(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// xoshiro256** (Blackman & Vigna), seeded through splitmix64.
    #[derive(Debug, Clone)]
    pub struct Xoshiro256 {
        s: [u64; 4],
    }

    impl Xoshiro256 {
        pub fn seed_from_u64(seed: u64) -> Self {
            let mut sm = seed;
            let s = [
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
            ];
            Self { s }
        }

        pub fn next_u64(&mut self) -> u64 {
            let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
            let t = self.s[1] << 17;
            self.s[2] ^= self.s[0];
            self.s[3] ^= self.s[1];
            self.s[1] ^= self.s[2];
            self.s[0] ^= self.s[3];
            self.s[2] ^= t;
            self.s[3] = self.s[3].rotate_left(45);
            result
        }

        /// Uniform in [0, 1) with 53 random bits.
        pub fn next_f64(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
        }

        /// Uniform integer in [0, n) without modulo bias (Lemire's method). `n` must be > 0.
        pub fn below(&mut self, n: usize) -> usize {
            let n = n as u64;
            let mut m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) < n {
                let threshold = n.wrapping_neg() % n;
                while (m as u64) < threshold {
                    m = u128::from(self.next_u64()) * u128::from(n);
                }
            }
            (m >> 64) as usize
        }

        /// Standard normal deviate (Box–Muller).
        pub fn standard_normal(&mut self) -> f64 {
            let u1 = 1.0 - self.next_f64(); // (0, 1]: ln is finite
            let u2 = self.next_f64();
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }

        /// Binomial(trials, p): exact for small `trials`, normal approximation above 64.
        pub fn binomial(&mut self, trials: usize, p: f64) -> usize {
            if trials <= 64 {
                (0..trials).filter(|_| self.next_f64() < p).count()
            } else {
                let mean = trials as f64 * p;
                let sd = (mean * (1.0 - p)).sqrt();
                let x = (mean + sd * self.standard_normal()).round();
                x.clamp(0.0, trials as f64) as usize
            }
        }
    }

    pub fn mean(xs: &[f64]) -> f64 {
        if xs.is_empty() {
            return f64::NAN;
        }
        xs.iter().sum::<f64>() / xs.len() as f64
    }

    /// Sample standard deviation (ddof = 1), two-pass for accuracy; 0 for fewer than 2 values.
    pub fn stdev(xs: &[f64]) -> f64 {
        if xs.len() < 2 {
            return 0.0;
        }
        let m = mean(xs);
        let ss: f64 = xs.iter().map(|x| (x - m) * (x - m)).sum();
        (ss / (xs.len() - 1) as f64).sqrt()
    }

    /// Percentile `p` in [0, 100] of ascending `sorted`, linear interpolation (numpy "linear").
    pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
        match sorted.len() {
            0 => f64::NAN,
            1 => sorted[0],
            n => {
                let h = (n - 1) as f64 * (p / 100.0).clamp(0.0, 1.0);
                let lo = h.floor() as usize;
                let hi = (lo + 1).min(n - 1);
                sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
            }
        }
    }

    /// Sorts a copy ascending (NaN-free input assumed; NaNs sort last).
    pub fn sorted(xs: &[f64]) -> Vec<f64> {
        let mut v = xs.to_vec();
        v.sort_unstable_by(f64::total_cmp);
        v
    }

    /// Bootstrap replicates of the mean (m-out-of-n rescaled when `n > cap`, see module docs).
    pub fn bootstrap_means(
        data: &[f64],
        resamples: usize,
        cap: usize,
        rng: &mut Xoshiro256,
    ) -> Vec<f64> {
        let n = data.len();
        if n == 0 {
            return Vec::new();
        }
        let m = n.min(cap.max(1));
        let center = mean(data);
        let scale = (m as f64 / n as f64).sqrt();
        (0..resamples)
            .map(|_| {
                let mut sum = 0.0;
                for _ in 0..m {
                    sum += data[rng.below(n)];
                }
                center + (sum / m as f64 - center) * scale
            })
            .collect()
    }

    /// Index (into the sorted sample) of the `rank`-th smallest value (1-based) among `draws`
    /// uniform draws that landed in `[lo, hi)`. Returns the leaf index, the number of draws on
    /// it and the rank left within it; `next_right` receives the nearest non-empty range to the
    /// right of the path, needed for the following order statistic.
    fn descend(
        mut lo: usize,
        mut hi: usize,
        mut draws: usize,
        mut rank: usize,
        rng: &mut Xoshiro256,
        next_right: &mut Option<(usize, usize, usize)>,
    ) -> (usize, usize, usize) {
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let p = (mid - lo) as f64 / (hi - lo) as f64;
            let left = rng.binomial(draws, p);
            if rank <= left {
                if draws > left {
                    *next_right = Some((mid, hi, draws - left));
                }
                hi = mid;
                draws = left;
            } else {
                rank -= left;
                draws -= left;
                lo = mid;
            }
        }
        (lo, draws, rank)
    }

    /// One draw from the bootstrap distribution of the median of ascending `sorted` (non-empty).
    pub fn resampled_median(sorted: &[f64], rng: &mut Xoshiro256) -> f64 {
        let n = sorted.len();
        let k = n.div_ceil(2);
        let mut next_right = None;
        let (idx, draws, rank) = descend(0, n, n, k, rng, &mut next_right);
        let first = sorted[idx];
        if n % 2 == 1 {
            return first;
        }
        let second = if rank < draws {
            first
        } else if let Some((lo, hi, d)) = next_right {
            let mut unused = None;
            sorted[descend(lo, hi, d, 1, rng, &mut unused).0]
        } else {
            first
        };
        (first + second) / 2.0
    }

    /// Bootstrap replicates of the median of ascending `sorted`.
    pub fn bootstrap_medians(sorted: &[f64], resamples: usize, rng: &mut Xoshiro256) -> Vec<f64> {
        if sorted.is_empty() {
            return Vec::new();
        }
        (0..resamples)
            .map(|_| resampled_median(sorted, rng))
            .collect()
    }

    /// Central percentile interval of bootstrap replicates at `level` (e.g. 0.95).
    pub fn percentile_interval(replicates: &[f64], level: f64) -> (f64, f64) {
        let s = sorted(replicates);
        let tail = (1.0 - level) / 2.0 * 100.0;
        (
            percentile_sorted(&s, tail),
            percentile_sorted(&s, 100.0 - tail),
        )
    }

    /// 64-bit FNV-1a, to derive stable per-cell seeds from names.
    pub fn fnv1a(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01B3)
        })
    }
}

use stats::Xoshiro256;

// ---------------------------------------------------------------------------------------------
// Output model (the JSON report)
// ---------------------------------------------------------------------------------------------

/// A point estimate with its 95 % confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// Descriptive statistics of one sample of latencies, all in ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    pub n: usize,
    pub mean_ms: f64,
    pub stdev_ms: f64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// 95 % bootstrap CI of the mean.
    pub mean_ci_ms: [f64; 2],
    /// 95 % bootstrap CI of the median.
    pub median_ci_ms: [f64; 2],
}

/// Bootstrap replicates kept for comparisons (not part of the JSON report).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replicates {
    pub means: Vec<f64>,
    pub medians: Vec<f64>,
}

/// Statistics of a sample, and the replicates behind its intervals. `None` for an empty sample.
pub fn describe(latencies_ms: &[f64], seed: u64) -> Option<(LatencyStats, Replicates)> {
    if latencies_ms.is_empty() {
        return None;
    }
    let sorted = stats::sorted(latencies_ms);
    let mut rng = Xoshiro256::seed_from_u64(seed);
    let means = stats::bootstrap_means(
        latencies_ms,
        BOOTSTRAP_RESAMPLES,
        MEAN_RESAMPLE_CAP,
        &mut rng,
    );
    let medians = stats::bootstrap_medians(&sorted, BOOTSTRAP_RESAMPLES, &mut rng);
    let mean_ci = stats::percentile_interval(&means, CONFIDENCE);
    let median_ci = stats::percentile_interval(&medians, CONFIDENCE);
    let p = |q| stats::percentile_sorted(&sorted, q);
    let s = LatencyStats {
        n: sorted.len(),
        mean_ms: stats::mean(latencies_ms),
        stdev_ms: stats::stdev(latencies_ms),
        min_ms: sorted[0],
        p50_ms: p(50.0),
        p90_ms: p(90.0),
        p95_ms: p(95.0),
        p99_ms: p(99.0),
        max_ms: sorted[sorted.len() - 1],
        mean_ci_ms: [mean_ci.0, mean_ci.1],
        median_ci_ms: [median_ci.0, median_ci.1],
    };
    Some((s, Replicates { means, medians }))
}

/// Stable key of a condition (mode, MPS, sampling), e.g. `together/mps-on/sampling-on`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Condition {
    pub mode: Mode,
    pub mps: MpsSetting,
    pub sampling: bool,
}

impl Condition {
    pub fn key(&self) -> String {
        let mode = match self.mode {
            Mode::Alone => "alone",
            Mode::Together => "together",
            Mode::Mixed => "mixed",
        };
        let mps = match &self.mps {
            MpsSetting::Off => "mps-off".to_string(),
            MpsSetting::On => "mps-on".to_string(),
            MpsSetting::Mixed { on_models } => format!("mps-on-for-{}", on_models.join("+")),
        };
        let sampling = if self.sampling {
            "sampling-on"
        } else {
            "sampling-off"
        };
        format!("{mode}/{mps}/{sampling}")
    }

    /// Human label for tables, e.g. `together, MPS on`.
    pub fn label(&self) -> String {
        let mode = match self.mode {
            Mode::Alone => "alone",
            Mode::Together => "together",
            Mode::Mixed => "mixed",
        };
        let mps = match &self.mps {
            MpsSetting::Off => "MPS off".to_string(),
            MpsSetting::On => "MPS on".to_string(),
            MpsSetting::Mixed { on_models } => format!("MPS on for {}", on_models.join(", ")),
        };
        let sampling = if self.sampling { "" } else { ", no sampling" };
        format!("{mode}, {mps}{sampling}")
    }

    fn concurrent(&self) -> bool {
        self.mode != Mode::Alone
    }
}

/// A condition as it appears in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionInfo {
    pub key: String,
    pub label: String,
    pub mode: Mode,
    pub mps: MpsSetting,
    pub sampling: bool,
    /// Indices of the phases run under this condition.
    pub phases: Vec<u32>,
}

/// One repeat's share of a cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepeatStats {
    pub repeat: u32,
    pub n: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
}

/// Statistics of one model under one condition, pooled over repeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub model: String,
    pub condition: String,
    pub stats: LatencyStats,
    /// Inferences per second over the phases' wall time (None when the phases have no duration).
    pub throughput_per_s: Option<f64>,
    pub repeats: Vec<RepeatStats>,
    /// Largest minus smallest repeat mean (0 with one repeat).
    pub repeat_mean_range_ms: f64,
    /// True when repeat means differ by more than the pooled mean's CI is wide: the run-to-run
    /// variation then dominates, and the CI understates the uncertainty.
    pub repeat_spread_exceeds_ci: bool,
    #[serde(skip)]
    pub replicates: Replicates,
}

/// Verdict of a comparison, from the candidate's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Faster,
    Slower,
    NoSignificantChange,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Faster => "faster",
            Verdict::Slower => "slower",
            Verdict::NoSignificantChange => "no significant change",
        }
    }
}

/// What a comparison measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComparisonKind {
    /// Candidate: a concurrent condition; baseline: the model alone.
    TogetherVsAlone,
    /// Candidate: together with MPS on; baseline: together with MPS off.
    MpsEffect,
    /// Candidate: mixed MPS assignment; baseline: together with MPS on for all.
    MixedVsAllMps,
    /// Candidate: mixed MPS assignment; baseline: together with MPS off for all.
    MixedVsNoMps,
    /// Candidate: sampling on; baseline: the same condition with sampling off.
    SamplingOverhead,
    /// Candidate: run B; baseline: run A (fleet comparison).
    RunBVsRunA,
}

/// Candidate vs baseline mean latency of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonResult {
    pub kind: ComparisonKind,
    pub model: String,
    pub baseline: String,
    pub candidate: String,
    pub baseline_mean_ms: f64,
    pub candidate_mean_ms: f64,
    /// `candidate - baseline`, ms.
    pub diff_ms: Estimate,
    /// `candidate / baseline - 1`, percent (latency change; negative is faster).
    pub change_pct: Estimate,
    /// `baseline / candidate - 1`, percent (speed-up; for `mps_effect` this is the seed's
    /// "MPS effect": +96 means 1.96x faster with MPS).
    pub speedup_pct: Estimate,
    pub verdict: Verdict,
}

/// Compares two cells' means from their bootstrap replicates.
pub fn compare_cells(kind: ComparisonKind, baseline: &Cell, candidate: &Cell) -> ComparisonResult {
    let b = &baseline.replicates.means;
    let c = &candidate.replicates.means;
    let pairs = b.iter().zip(c.iter());
    let diffs: Vec<f64> = pairs.clone().map(|(b, c)| c - b).collect();
    let changes: Vec<f64> = pairs.clone().map(|(b, c)| (c / b - 1.0) * 100.0).collect();
    let speedups: Vec<f64> = pairs.map(|(b, c)| (b / c - 1.0) * 100.0).collect();
    let bm = baseline.stats.mean_ms;
    let cm = candidate.stats.mean_ms;
    let est = |value: f64, reps: &[f64]| {
        let (lo, hi) = if reps.is_empty() {
            (value, value)
        } else {
            stats::percentile_interval(reps, CONFIDENCE)
        };
        Estimate {
            value,
            ci_low: lo,
            ci_high: hi,
        }
    };
    let diff = est(cm - bm, &diffs);
    let verdict = if diff.ci_high < 0.0 {
        Verdict::Faster
    } else if diff.ci_low > 0.0 {
        Verdict::Slower
    } else {
        Verdict::NoSignificantChange
    };
    ComparisonResult {
        kind,
        model: candidate.model.clone(),
        baseline: baseline.condition.clone(),
        candidate: candidate.condition.clone(),
        baseline_mean_ms: bm,
        candidate_mean_ms: cm,
        diff_ms: diff,
        change_pct: est((cm / bm - 1.0) * 100.0, &changes),
        speedup_pct: est((bm / cm - 1.0) * 100.0, &speedups),
        verdict,
    }
}

/// One row of the seed-style MPS table (section 2.1 of the seed study).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MpsRow {
    pub model: String,
    pub alone_mean_ms: Option<f64>,
    pub mps_on_mean_ms: f64,
    pub mps_off_mean_ms: f64,
    /// `off / on - 1`, percent, with CI.
    pub mps_effect_pct: Estimate,
    /// Verdict for MPS on relative to MPS off.
    pub verdict: Verdict,
    /// `together(MPS on) / alone - 1`, percent.
    pub vs_alone_mps_on_pct: Option<Estimate>,
    /// `together(MPS off) / alone - 1`, percent.
    pub vs_alone_mps_off_pct: Option<Estimate>,
}

/// Telemetry of one condition (its phases combined).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetrySummary {
    pub condition: String,
    pub phases: Vec<u32>,
    /// Inferences completed by all models in these phases.
    pub inferences: u64,
    pub gr3d_avg_pct: Option<f64>,
    pub gr3d_avg_nonzero_pct: Option<f64>,
    pub gr3d_max_pct: Option<f64>,
    pub gr3d_nonzero_samples: Option<u64>,
    pub gr3d_samples: Option<u64>,
    pub cpu_us_pct: Option<ValueRange>,
    pub cpu_sy_pct: Option<ValueRange>,
    pub cpu_wa_pct: Option<ValueRange>,
    pub free_mem_mb: Option<ValueRange>,
    pub rails: Vec<RailSummary>,
}

/// Power and energy of one rail over a condition's phases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RailSummary {
    pub rail: String,
    pub mean_mw: f64,
    pub energy_mj: f64,
    /// `energy_mj / inferences`; None when no inference completed.
    pub energy_per_inference_mj: Option<f64>,
}

/// Whether a model's outputs were identical in every phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyStatus {
    Identical,
    Differs,
    /// No phase recorded an output digest.
    Unknown,
}

/// Phases that produced the same output digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DigestGroup {
    pub digest: String,
    pub phases: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConsistency {
    pub model: String,
    pub status: ConsistencyStatus,
    /// Largest digest group first.
    pub groups: Vec<DigestGroup>,
    /// Largest `max_abs_diff` any phase reported.
    pub max_abs_diff: Option<f64>,
    pub phases_without_digest: Vec<u32>,
}

/// MPS advice for one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MpsAdvice {
    On,
    Off,
    Either,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecommendation {
    pub model: String,
    pub mps: MpsAdvice,
    pub reason: String,
}

/// MPS assignment for the whole mix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MixStrategy {
    AllMps,
    NoMps,
    Mixed { on_models: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixRecommendation {
    pub strategy: MixStrategy,
    /// Whether this exact assignment was measured in the run.
    pub measured: bool,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendations {
    pub per_model: Vec<ModelRecommendation>,
    pub mix: Option<MixRecommendation>,
    /// Advice on keeping telemetry sampling on, when sampling on/off was measured.
    pub sampling: Option<String>,
}

/// One phase as listed in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseSummary {
    pub index: u32,
    pub condition: String,
    pub repeat: u32,
    pub start_unix_ms: i64,
    pub end_unix_ms: i64,
    pub models: Vec<String>,
}

/// Which statistical methods produced the numbers (so a reader can reproduce them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Method {
    pub stdev_ddof: u32,
    pub percentile_method: String,
    pub confidence: f64,
    pub bootstrap_resamples: usize,
    pub mean_resample_cap: usize,
    pub prng: String,
    pub mps_effect: String,
}

impl Default for Method {
    fn default() -> Self {
        Self {
            stdev_ddof: 1,
            percentile_method: "linear interpolation (Hyndman-Fan type 7, numpy default)".into(),
            confidence: CONFIDENCE,
            bootstrap_resamples: BOOTSTRAP_RESAMPLES,
            mean_resample_cap: MEAN_RESAMPLE_CAP,
            prng: "xoshiro256** seeded by splitmix64 from FNV-1a(model, condition)".into(),
            mps_effect: "mean(MPS off) / mean(MPS on) - 1".into(),
        }
    }
}

/// The analysis of one run; its JSON form is the machine-readable report.
///
/// # Stable JSON keys (schema 1)
/// - `schema` (1), `run_id`, `experiment`, `status`, `started_unix_ms`, `finished_unix_ms`
/// - `method`: `stdev_ddof`, `percentile_method`, `confidence`, `bootstrap_resamples`,
///   `mean_resample_cap`, `prng`, `mps_effect`
/// - `models`: model names in first-seen order
/// - `primary_sampling`: the sampling setting the headline tables use
/// - `phases[]`: `index`, `condition` (key), `repeat`, `start_unix_ms`, `end_unix_ms`, `models`
/// - `conditions[]`: `key`, `label`, `mode`, `mps`, `sampling`, `phases`
/// - `cells[]`: `model`, `condition`, `stats` {`n`, `mean_ms`, `stdev_ms`, `min_ms`, `p50_ms`,
///   `p90_ms`, `p95_ms`, `p99_ms`, `max_ms`, `mean_ci_ms` [lo, hi], `median_ci_ms` [lo, hi]},
///   `throughput_per_s`, `repeats[]` {`repeat`, `n`, `mean_ms`, `p50_ms`}, `repeat_mean_range_ms`,
///   `repeat_spread_exceeds_ci`
/// - `comparisons[]`: `kind` (`together_vs_alone` | `mps_effect` | `mixed_vs_all_mps` |
///   `mixed_vs_no_mps` | `sampling_overhead`), `model`, `baseline`, `candidate`,
///   `baseline_mean_ms`, `candidate_mean_ms`, `diff_ms`, `change_pct`, `speedup_pct` (each
///   {`value`, `ci_low`, `ci_high`}), `verdict` (`faster` | `slower` | `no_significant_change`)
/// - `mps_table[]`: `model`, `alone_mean_ms`, `mps_on_mean_ms`, `mps_off_mean_ms`,
///   `mps_effect_pct`, `verdict`, `vs_alone_mps_on_pct`, `vs_alone_mps_off_pct`
/// - `telemetry[]`: `condition`, `phases`, `inferences`, `gr3d_avg_pct`, `gr3d_avg_nonzero_pct`,
///   `gr3d_max_pct`, `gr3d_nonzero_samples`, `gr3d_samples`, `cpu_us_pct`, `cpu_sy_pct`,
///   `cpu_wa_pct`, `free_mem_mb` ({`min`, `mean`, `max`}), `rails[]` {`rail`, `mean_mw`,
///   `energy_mj`, `energy_per_inference_mj`}
/// - `consistency[]`: `model`, `status` (`identical` | `differs` | `unknown`), `groups[]`
///   {`digest`, `phases`}, `max_abs_diff`, `phases_without_digest`
/// - `recommendations`: `per_model[]` {`model`, `mps` (`on` | `off` | `either`), `reason`},
///   `mix` {`strategy` (`"all_mps"` | `"no_mps"` | {`mixed`: {`on_models`}}), `measured`,
///   `reason`} or null, `sampling` (string or null)
/// - `problems[]`: human-readable notes about failed workers or empty samples
///
/// Absent values are `null`, never 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub schema: u32,
    pub run_id: u64,
    pub experiment: String,
    pub status: String,
    pub started_unix_ms: i64,
    pub finished_unix_ms: Option<i64>,
    pub method: Method,
    pub models: Vec<String>,
    pub primary_sampling: bool,
    pub phases: Vec<PhaseSummary>,
    pub conditions: Vec<ConditionInfo>,
    pub cells: Vec<Cell>,
    pub comparisons: Vec<ComparisonResult>,
    pub mps_table: Vec<MpsRow>,
    pub telemetry: Vec<TelemetrySummary>,
    pub consistency: Vec<ModelConsistency>,
    pub recommendations: Recommendations,
    pub problems: Vec<String>,
    /// Validation runs only: stage split, task metrics and dataset issues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationAnalysis>,
}

/// Current `schema` value of [`Analysis`] and [`Comparison`].
pub const SCHEMA_VERSION: u32 = 1;

impl Analysis {
    pub fn cell(&self, model: &str, condition: &str) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.model == model && c.condition == condition)
    }

    pub fn condition(&self, key: &str) -> Option<&ConditionInfo> {
        self.conditions.iter().find(|c| c.key == key)
    }

    pub fn comparisons_of(&self, kind: ComparisonKind) -> impl Iterator<Item = &ComparisonResult> {
        self.comparisons.iter().filter(move |c| c.kind == kind)
    }
}

// ---------------------------------------------------------------------------------------------
// analyze
// ---------------------------------------------------------------------------------------------

/// Analyses one run. Pure and deterministic.
pub fn analyze(run: &RunData) -> Analysis {
    analyze_salted(run, 0)
}

fn cell_seed(model: &str, condition: &str, salt: u64) -> u64 {
    let mut h = stats::fnv1a(format!("{model}\u{0}{condition}").as_bytes()) ^ salt;
    stats::splitmix64(&mut h)
}

fn ns_to_ms(ns: &[u64]) -> impl Iterator<Item = f64> + '_ {
    ns.iter().map(|&v| v as f64 / 1e6)
}

/// `salt` separates the random streams of two runs compared with each other.
fn analyze_salted(run: &RunData, salt: u64) -> Analysis {
    let mut models: Vec<String> = Vec::new();
    let mut conditions: BTreeMap<Condition, Vec<u32>> = BTreeMap::new();
    let mut problems = Vec::new();
    for phase in &run.phases {
        let cond = phase_condition(phase);
        conditions.entry(cond).or_default().push(phase.index);
        for m in &phase.models {
            if !models.contains(&m.model) {
                models.push(m.model.clone());
            }
            if m.status != "ok" || m.error.is_some() {
                problems.push(format!(
                    "phase {} ({}): model {} ended with status {}{}",
                    phase.index,
                    phase_condition(phase).label(),
                    m.model,
                    m.status,
                    m.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    let sampling_on = run.phases.iter().filter(|p| p.sampling).count();
    let primary_sampling = sampling_on * 2 >= run.phases.len();

    let mut cells = Vec::new();
    for (cond, _) in conditions.iter() {
        let key = cond.key();
        for model in &models {
            let mut pooled = Vec::new();
            let mut repeats: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
            let mut wall_ms = 0i64;
            let mut present = false;
            for phase in run.phases.iter().filter(|p| &phase_condition(p) == cond) {
                for m in phase.models.iter().filter(|m| &m.model == model) {
                    present = true;
                    pooled.extend(ns_to_ms(&m.latencies_ns));
                    repeats
                        .entry(phase.repeat)
                        .or_default()
                        .extend(ns_to_ms(&m.latencies_ns));
                    wall_ms += (phase.end_unix_ms - phase.start_unix_ms).max(0);
                }
            }
            if !present {
                continue;
            }
            let Some((stats, replicates)) = describe(&pooled, cell_seed(model, &key, salt)) else {
                problems.push(format!(
                    "model {model} has no latency samples under {}",
                    cond.label()
                ));
                continue;
            };
            let repeats: Vec<RepeatStats> = repeats
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(repeat, v)| RepeatStats {
                    repeat,
                    n: v.len(),
                    mean_ms: stats::mean(&v),
                    // A single repeat is the pooled sample: skip sorting it a second time.
                    p50_ms: if v.len() == stats.n {
                        stats.p50_ms
                    } else {
                        stats::percentile_sorted(&stats::sorted(&v), 50.0)
                    },
                })
                .collect();
            let (lo, hi) = repeats
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| {
                    (lo.min(r.mean_ms), hi.max(r.mean_ms))
                });
            let range = if repeats.is_empty() { 0.0 } else { hi - lo };
            let ci_width = stats.mean_ci_ms[1] - stats.mean_ci_ms[0];
            cells.push(Cell {
                model: model.clone(),
                condition: key.clone(),
                throughput_per_s: (wall_ms > 0).then(|| stats.n as f64 / (wall_ms as f64 / 1000.0)),
                repeat_spread_exceeds_ci: repeats.len() > 1 && range > ci_width,
                repeat_mean_range_ms: range,
                repeats,
                stats,
                replicates,
            });
        }
    }

    let find = |model: &str, cond: &Condition| {
        let key = cond.key();
        cells
            .iter()
            .find(|c| c.model == model && c.condition == key)
    };
    let together = |mps: MpsSetting, sampling: bool| Condition {
        mode: Mode::Together,
        mps,
        sampling,
    };
    let alone_baseline = |model: &str| {
        [MpsSetting::Off, MpsSetting::On]
            .into_iter()
            .flat_map(|mps| [primary_sampling, !primary_sampling].map(|s| (mps.clone(), s)))
            .find_map(|(mps, sampling)| {
                find(
                    model,
                    &Condition {
                        mode: Mode::Alone,
                        mps,
                        sampling,
                    },
                )
            })
    };

    let mut comparisons = Vec::new();
    for model in &models {
        let alone = alone_baseline(model);
        for cond in conditions
            .keys()
            .filter(|c| c.concurrent() && c.sampling == primary_sampling)
        {
            if let (Some(base), Some(cand)) = (alone, find(model, cond)) {
                comparisons.push(compare_cells(ComparisonKind::TogetherVsAlone, base, cand));
            }
        }
        for sampling in [primary_sampling, !primary_sampling] {
            let on = find(model, &together(MpsSetting::On, sampling));
            let off = find(model, &together(MpsSetting::Off, sampling));
            if let (Some(off), Some(on)) = (off, on) {
                comparisons.push(compare_cells(ComparisonKind::MpsEffect, off, on));
            }
        }
        for cond in conditions
            .keys()
            .filter(|c| matches!(c.mps, MpsSetting::Mixed { .. }))
        {
            let Some(mixed) = find(model, cond) else {
                continue;
            };
            if let Some(all) = find(model, &together(MpsSetting::On, cond.sampling)) {
                comparisons.push(compare_cells(ComparisonKind::MixedVsAllMps, all, mixed));
            }
            if let Some(none) = find(model, &together(MpsSetting::Off, cond.sampling)) {
                comparisons.push(compare_cells(ComparisonKind::MixedVsNoMps, none, mixed));
            }
        }
        for cond in conditions.keys().filter(|c| c.sampling) {
            let without = Condition {
                sampling: false,
                ..cond.clone()
            };
            if let (Some(off), Some(on)) = (find(model, &without), find(model, cond)) {
                comparisons.push(compare_cells(ComparisonKind::SamplingOverhead, off, on));
            }
        }
    }

    let mps_table = mps_table(&models, &comparisons, primary_sampling, &alone_baseline);
    let telemetry = conditions
        .iter()
        .filter_map(|(cond, phases)| telemetry_summary(run, cond, phases))
        .collect();
    let consistency = models.iter().map(|m| consistency(run, m)).collect();
    let recommendations = recommend(&models, &cells, &comparisons, primary_sampling, &conditions);

    let validation = validation::analyze(
        run,
        &models,
        &conditions.keys().cloned().collect::<Vec<_>>(),
    );
    let phases = run
        .phases
        .iter()
        .map(|p| PhaseSummary {
            index: p.index,
            condition: phase_condition(p).key(),
            repeat: p.repeat,
            start_unix_ms: p.start_unix_ms,
            end_unix_ms: p.end_unix_ms,
            models: p.models.iter().map(|m| m.model.clone()).collect(),
        })
        .collect();
    let conditions = conditions
        .into_iter()
        .map(|(c, phases)| ConditionInfo {
            key: c.key(),
            label: c.label(),
            mode: c.mode,
            mps: c.mps,
            sampling: c.sampling,
            phases,
        })
        .collect();

    Analysis {
        schema: SCHEMA_VERSION,
        run_id: run.run_id,
        experiment: run.experiment.clone(),
        status: run.status.clone(),
        started_unix_ms: run.started_unix_ms,
        finished_unix_ms: run.finished_unix_ms,
        method: Method::default(),
        models,
        primary_sampling,
        phases,
        conditions,
        cells,
        comparisons,
        mps_table,
        telemetry,
        consistency,
        recommendations,
        problems,
        validation,
    }
}

/// The condition a phase ran under. A mixed MPS assignment always means concurrent models.
pub fn phase_condition(phase: &PhaseData) -> Condition {
    let mut mps = phase.mps.clone();
    if let MpsSetting::Mixed { on_models } = &mut mps {
        on_models.sort();
        on_models.dedup();
    }
    Condition {
        mode: phase.mode,
        mps,
        sampling: phase.sampling,
    }
}

fn mps_table<'a>(
    models: &[String],
    comparisons: &[ComparisonResult],
    primary_sampling: bool,
    alone_baseline: &dyn Fn(&str) -> Option<&'a Cell>,
) -> Vec<MpsRow> {
    let key = |mps| {
        Condition {
            mode: Mode::Together,
            mps,
            sampling: primary_sampling,
        }
        .key()
    };
    let (on_key, off_key) = (key(MpsSetting::On), key(MpsSetting::Off));
    let vs_alone = |model: &str, cand: &str| {
        comparisons
            .iter()
            .find(|c| {
                c.kind == ComparisonKind::TogetherVsAlone && c.model == model && c.candidate == cand
            })
            .map(|c| c.change_pct)
    };
    models
        .iter()
        .filter_map(|model| {
            let effect = comparisons.iter().find(|c| {
                c.kind == ComparisonKind::MpsEffect && &c.model == model && c.candidate == on_key
            })?;
            Some(MpsRow {
                model: model.clone(),
                alone_mean_ms: alone_baseline(model).map(|c| c.stats.mean_ms),
                mps_on_mean_ms: effect.candidate_mean_ms,
                mps_off_mean_ms: effect.baseline_mean_ms,
                mps_effect_pct: effect.speedup_pct,
                verdict: effect.verdict,
                vs_alone_mps_on_pct: vs_alone(model, &on_key),
                vs_alone_mps_off_pct: vs_alone(model, &off_key),
            })
        })
        .collect()
}

fn telemetry_summary(
    run: &RunData,
    cond: &Condition,
    phase_ids: &[u32],
) -> Option<TelemetrySummary> {
    let phases: Vec<&PhaseData> = run
        .phases
        .iter()
        .filter(|p| phase_ids.contains(&p.index))
        .collect();
    let with: Vec<(&PhaseData, &PhaseTelemetryInput)> = phases
        .iter()
        .filter_map(|p| p.telemetry.as_ref().map(|t| (*p, t)))
        .collect();
    if with.is_empty() {
        return None;
    }
    let inferences: u64 = phases
        .iter()
        .flat_map(|p| p.models.iter())
        .map(|m| m.latencies_ns.len() as u64)
        .sum();
    let samples = |t: &PhaseTelemetryInput| t.gr3d_samples.unwrap_or(1).max(1) as f64;
    // Averages weighted by sample counts so a long phase counts for more than a short one.
    let weighted = |get: &dyn Fn(&PhaseTelemetryInput) -> Option<f64>,
                    weight: &dyn Fn(&PhaseTelemetryInput) -> f64| {
        let (mut sum, mut w) = (0.0, 0.0);
        for (_, t) in &with {
            if let Some(v) = get(t) {
                sum += v * weight(t);
                w += weight(t);
            }
        }
        (w > 0.0).then(|| sum / w)
    };
    let nonzero_weight =
        |t: &PhaseTelemetryInput| t.gr3d_nonzero_samples.unwrap_or(1).max(1) as f64;
    let merge_range = |get: &dyn Fn(&PhaseTelemetryInput) -> Option<ValueRange>| {
        let ranges: Vec<ValueRange> = with.iter().filter_map(|(_, t)| get(t)).collect();
        (!ranges.is_empty()).then(|| ValueRange {
            min: ranges.iter().map(|r| r.min).fold(f64::INFINITY, f64::min),
            mean: ranges.iter().map(|r| r.mean).sum::<f64>() / ranges.len() as f64,
            max: ranges
                .iter()
                .map(|r| r.max)
                .fold(f64::NEG_INFINITY, f64::max),
        })
    };
    let sum_opt = |get: &dyn Fn(&PhaseTelemetryInput) -> Option<u64>| {
        let vals: Vec<u64> = with.iter().filter_map(|(_, t)| get(t)).collect();
        (!vals.is_empty()).then(|| vals.iter().sum())
    };
    let mut rails: Vec<RailSummary> = Vec::new();
    let mut rail_durations: BTreeMap<String, f64> = BTreeMap::new();
    for (phase, t) in &with {
        let secs = ((phase.end_unix_ms - phase.start_unix_ms).max(0) as f64 / 1000.0).max(1e-9);
        for r in &t.rails {
            let weight = rail_durations.entry(r.rail.clone()).or_insert(0.0);
            match rails.iter_mut().find(|x| x.rail == r.rail) {
                Some(x) => {
                    x.mean_mw = (x.mean_mw * *weight + r.mean_mw * secs) / (*weight + secs);
                    x.energy_mj += r.energy_mj;
                }
                None => rails.push(RailSummary {
                    rail: r.rail.clone(),
                    mean_mw: r.mean_mw,
                    energy_mj: r.energy_mj,
                    energy_per_inference_mj: None,
                }),
            }
            *weight += secs;
        }
    }
    for r in &mut rails {
        r.energy_per_inference_mj = (inferences > 0).then(|| r.energy_mj / inferences as f64);
    }
    Some(TelemetrySummary {
        condition: cond.key(),
        phases: with.iter().map(|(p, _)| p.index).collect(),
        inferences,
        gr3d_avg_pct: weighted(&|t| t.gr3d_avg_pct, &samples),
        gr3d_avg_nonzero_pct: weighted(&|t| t.gr3d_avg_nonzero_pct, &nonzero_weight),
        gr3d_max_pct: with
            .iter()
            .filter_map(|(_, t)| t.gr3d_max_pct)
            .reduce(f64::max),
        gr3d_nonzero_samples: sum_opt(&|t| t.gr3d_nonzero_samples),
        gr3d_samples: sum_opt(&|t| t.gr3d_samples),
        cpu_us_pct: merge_range(&|t| t.cpu_us_pct),
        cpu_sy_pct: merge_range(&|t| t.cpu_sy_pct),
        cpu_wa_pct: merge_range(&|t| t.cpu_wa_pct),
        free_mem_mb: merge_range(&|t| t.free_mem_mb),
        rails,
    })
}

fn consistency(run: &RunData, model: &str) -> ModelConsistency {
    let mut groups: Vec<DigestGroup> = Vec::new();
    let mut without = Vec::new();
    let mut max_abs_diff: Option<f64> = None;
    for phase in &run.phases {
        for m in phase.models.iter().filter(|m| m.model == model) {
            if let Some(d) = m.max_abs_diff {
                max_abs_diff = Some(max_abs_diff.map_or(d, |x| x.max(d)));
            }
            match &m.output_digest {
                None => without.push(phase.index),
                Some(digest) => match groups.iter_mut().find(|g| &g.digest == digest) {
                    Some(g) => g.phases.push(phase.index),
                    None => groups.push(DigestGroup {
                        digest: digest.clone(),
                        phases: vec![phase.index],
                    }),
                },
            }
        }
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.phases.len()));
    let status = match groups.len() {
        0 => ConsistencyStatus::Unknown,
        1 if max_abs_diff.is_none_or(|d| d == 0.0) => ConsistencyStatus::Identical,
        _ => ConsistencyStatus::Differs,
    };
    ModelConsistency {
        model: model.to_string(),
        status,
        groups,
        max_abs_diff,
        phases_without_digest: without,
    }
}

fn geomean(xs: &[f64]) -> f64 {
    (xs.iter().map(|x| x.ln()).sum::<f64>() / xs.len() as f64).exp()
}

fn recommend(
    models: &[String],
    cells: &[Cell],
    comparisons: &[ComparisonResult],
    primary_sampling: bool,
    conditions: &BTreeMap<Condition, Vec<u32>>,
) -> Recommendations {
    let on_key = Condition {
        mode: Mode::Together,
        mps: MpsSetting::On,
        sampling: primary_sampling,
    }
    .key();
    let mut per_model = Vec::new();
    for model in models {
        let Some(e) = comparisons.iter().find(|c| {
            c.kind == ComparisonKind::MpsEffect && &c.model == model && c.candidate == on_key
        }) else {
            continue;
        };
        let s = e.speedup_pct;
        let numbers = format!(
            "{:.2} ms without MPS vs {:.2} ms with it, 95 % CI of the effect {:+.1} to {:+.1} %",
            e.baseline_mean_ms, e.candidate_mean_ms, s.ci_low, s.ci_high
        );
        let (mps, reason) = match e.verdict {
            Verdict::Faster => (
                MpsAdvice::On,
                format!(
                    "MPS made {model} faster when running together: effect {:+.0} % ({numbers}).",
                    s.value
                ),
            ),
            Verdict::Slower => (
                MpsAdvice::Off,
                format!(
                    "MPS made {model} slower when running together: effect {:+.0} %, {:.0} % more \
                     time per inference ({numbers}).",
                    s.value, e.change_pct.value
                ),
            ),
            Verdict::NoSignificantChange => (
                MpsAdvice::Either,
                format!("MPS made no significant difference to {model} ({numbers})."),
            ),
        };
        per_model.push(ModelRecommendation {
            model: model.clone(),
            mps,
            reason,
        });
    }

    // Candidate assignments that were measured, scored by the geometric mean of the models'
    // mean latencies (equal weight per model, whatever its absolute speed).
    let mut measured: Vec<(MixStrategy, String, f64)> = Vec::new();
    for cond in conditions
        .keys()
        .filter(|c| c.concurrent() && c.sampling == primary_sampling)
    {
        let key = cond.key();
        let means: Vec<f64> = models
            .iter()
            .filter_map(|m| cells.iter().find(|c| &c.model == m && c.condition == key))
            .map(|c| c.stats.mean_ms)
            .collect();
        if means.len() != models.len() || means.iter().any(|m| *m <= 0.0) {
            continue;
        }
        let strategy = match &cond.mps {
            MpsSetting::On => MixStrategy::AllMps,
            MpsSetting::Off => MixStrategy::NoMps,
            MpsSetting::Mixed { on_models } => MixStrategy::Mixed {
                on_models: on_models.clone(),
            },
        };
        measured.push((strategy, cond.label(), geomean(&means)));
    }
    measured.sort_by(|a, b| a.2.total_cmp(&b.2));
    let describe_others = |skip: usize| {
        measured
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, (_, label, g))| format!("{label} {g:.2} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let any_mixed_measured = measured
        .iter()
        .any(|(s, _, _)| matches!(s, MixStrategy::Mixed { .. }));
    let on_models: Vec<String> = per_model
        .iter()
        .filter(|r| r.mps == MpsAdvice::On)
        .map(|r| r.model.clone())
        .collect();
    let off_models: Vec<String> = per_model
        .iter()
        .filter(|r| r.mps == MpsAdvice::Off)
        .map(|r| r.model.clone())
        .collect();
    let mix = if !any_mixed_measured && !on_models.is_empty() && !off_models.is_empty() {
        let best = measured
            .first()
            .map(|(_, label, g)| {
                format!(" Best measured set: {label} (geometric-mean latency {g:.2} ms).")
            })
            .unwrap_or_default();
        Some(MixRecommendation {
            strategy: MixStrategy::Mixed {
                on_models: on_models.clone(),
            },
            measured: false,
            reason: format!(
                "MPS helps {} but hurts {}, so run the former under MPS and the latter without it; \
                 this mix was not measured as a set, so confirm it with a mixed phase.{best}",
                on_models.join(", "),
                off_models.join(", ")
            ),
        })
    } else {
        measured.first().map(|(strategy, label, g)| MixRecommendation {
            strategy: strategy.clone(),
            measured: true,
            reason: if measured.len() > 1 {
                format!(
                    "{label} gave the lowest geometric-mean latency across models ({g:.2} ms; others: {}).",
                    describe_others(0)
                )
            } else {
                format!("{label} is the only concurrent assignment measured ({g:.2} ms geometric mean).")
            },
        })
    };

    let overheads: Vec<&ComparisonResult> = comparisons
        .iter()
        .filter(|c| c.kind == ComparisonKind::SamplingOverhead)
        .collect();
    let sampling = overheads
        .iter()
        .max_by(|a, b| a.change_pct.value.total_cmp(&b.change_pct.value))
        .map(|worst| {
            let slower = overheads.iter().filter(|c| c.verdict == Verdict::Slower).count();
            if worst.change_pct.value < 3.0 {
                format!(
                    "Keep telemetry sampling on: it changed latency by at most {:+.1} % ({} in {}); \
                     {slower} of {} comparisons were significantly slower.",
                    worst.change_pct.value,
                    worst.model,
                    worst.candidate,
                    overheads.len()
                )
            } else {
                format!(
                    "Sampling costs up to {:+.1} % ({} in {}): lengthen the sampling intervals or \
                     leave sampling off when measuring latency.",
                    worst.change_pct.value, worst.model, worst.candidate
                )
            }
        });
    Recommendations {
        per_model,
        mix,
        sampling,
    }
}

// ---------------------------------------------------------------------------------------------
// compare two runs
// ---------------------------------------------------------------------------------------------

/// Run A vs run B (fleet comparison). Its serde form is the JSON comparison report.
///
/// Stable JSON keys: `schema`, `run_a` and `run_b` ({`run_id`, `experiment`, `status`,
/// `started_unix_ms`}), `rows[]` (a [`ComparisonResult`] with `kind` = `run_b_vs_run_a`,
/// `baseline` = `candidate` = the condition key; baseline is run A), `only_in_a[]` and
/// `only_in_b[]` (`"model @ condition"` strings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub schema: u32,
    pub run_a: RunRef,
    pub run_b: RunRef,
    pub rows: Vec<ComparisonResult>,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRef {
    pub run_id: u64,
    pub experiment: String,
    pub status: String,
    pub started_unix_ms: i64,
}

impl RunRef {
    fn of(a: &Analysis) -> Self {
        Self {
            run_id: a.run_id,
            experiment: a.experiment.clone(),
            status: a.status.clone(),
            started_unix_ms: a.started_unix_ms,
        }
    }
}

/// Compares every model and condition present in both runs (B relative to A).
pub fn compare(a: &RunData, b: &RunData) -> Comparison {
    // Different salts: identical seeds would make the two runs' resamples correlated.
    let aa = analyze_salted(a, 0xA);
    let bb = analyze_salted(b, 0xB);
    let mut rows = Vec::new();
    let mut only_in_a = Vec::new();
    for ca in &aa.cells {
        match bb.cell(&ca.model, &ca.condition) {
            Some(cb) => rows.push(compare_cells(ComparisonKind::RunBVsRunA, ca, cb)),
            None => only_in_a.push(format!("{} @ {}", ca.model, ca.condition)),
        }
    }
    let only_in_b = bb
        .cells
        .iter()
        .filter(|cb| aa.cell(&cb.model, &cb.condition).is_none())
        .map(|cb| format!("{} @ {}", cb.model, cb.condition))
        .collect();
    Comparison {
        schema: SCHEMA_VERSION,
        run_a: RunRef::of(&aa),
        run_b: RunRef::of(&bb),
        rows,
        only_in_a,
        only_in_b,
    }
}

#[cfg(test)]
mod tests {
    use super::stats::*;
    use super::*;

    #[test]
    fn percentile_matches_hand_computed_linear_interpolation() {
        let s = [1.0, 2.0, 3.0, 4.0];
        // h = 3 * 0.9 = 2.7 -> 3 + 0.7 * (4 - 3)
        assert!((percentile_sorted(&s, 90.0) - 3.7).abs() < 1e-12);
        assert_eq!(percentile_sorted(&s, 50.0), 2.5);
        assert_eq!(percentile_sorted(&s, 0.0), 1.0);
        assert_eq!(percentile_sorted(&s, 100.0), 4.0);
        assert_eq!(percentile_sorted(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn stdev_uses_ddof_one() {
        // mean 5, squared deviations sum 32, /7 -> sqrt(32/7)
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert!((stdev(&xs) - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(stdev(&[3.0]), 0.0);
    }

    #[test]
    fn xoshiro_is_deterministic_and_below_stays_in_range() {
        let mut a = Xoshiro256::seed_from_u64(42);
        let mut b = Xoshiro256::seed_from_u64(42);
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut c = Xoshiro256::seed_from_u64(43);
        assert_ne!(xs[0], c.next_u64());
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[a.below(3)] += 1;
        }
        assert!(
            counts.iter().all(|&k| (9_000..11_000).contains(&k)),
            "{counts:?}"
        );
    }

    #[test]
    fn resampled_median_of_constant_sample_is_that_constant_and_stays_in_range() {
        let mut rng = Xoshiro256::seed_from_u64(1);
        assert_eq!(resampled_median(&[5.0; 10], &mut rng), 5.0);
        let sorted: Vec<f64> = (0..1001).map(f64::from).collect();
        for _ in 0..200 {
            let m = resampled_median(&sorted, &mut rng);
            assert!((400.0..=600.0).contains(&m), "{m}");
        }
    }

    #[test]
    fn consistency_reports_differing_phases() {
        let phase = |index, digest: &str, diff| PhaseData {
            index,
            mode: Mode::Alone,
            mps: MpsSetting::Off,
            sampling: true,
            repeat: 0,
            start_unix_ms: 0,
            end_unix_ms: 1000,
            models: vec![ModelPhaseData {
                model: "cls".into(),
                latencies_ns: vec![1_000_000],
                output_digest: Some(digest.into()),
                max_abs_diff: diff,
                status: "ok".into(),
                error: None,
                stages_ns: Vec::new(),
                validation: None,
            }],
            telemetry: None,
            timeline: vec![],
        };
        let run = RunData {
            run_id: 1,
            experiment: "x".into(),
            started_unix_ms: 0,
            finished_unix_ms: None,
            status: "done".into(),
            phases: vec![
                phase(0, "aa", None),
                phase(1, "aa", None),
                phase(2, "bb", Some(0.25)),
            ],
        };
        let c = consistency(&run, "cls");
        assert_eq!(c.status, ConsistencyStatus::Differs);
        assert_eq!(c.groups[0].phases, vec![0, 1]);
        assert_eq!(c.groups[1].phases, vec![2]);
        assert_eq!(c.max_abs_diff, Some(0.25));
    }
}
