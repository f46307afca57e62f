//! Reports: Markdown (laid out like the seed study), JSON and a self-contained HTML page.
//!
//! The document is built once as a list of [`Block`]s from an [`Analysis`]; the Markdown and
//! HTML renderers only lay those blocks out, so both formats always carry the same numbers.
//! The JSON report is the serde form of [`Analysis`] (keys documented there).

mod charts;
mod html;

use super::analysis::validation::{metric_values, MetricsCell, StageStats, ValidationAnalysis};
use super::analysis::{
    Analysis, Cell, Comparison, ComparisonKind, ComparisonResult, ConsistencyStatus, Estimate,
    MixStrategy, MpsAdvice, RunData, TelemetrySummary, ValueRange, Verdict,
};
use crate::vision::IssueKind;
use std::collections::BTreeMap;

pub use super::analysis::{analyze, compare};

/// A table shared by the Markdown and HTML renderers.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// Charts the HTML renderer draws where the Markdown report has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChartKind {
    MeanBars,
    Distributions,
    Timeline,
    /// Validation runs: the per-image preprocess / inference / postprocess split.
    Stages,
}

/// One piece of the report document.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Heading(u8, String),
    Paragraph(String),
    Bullets(Vec<String>),
    Table(Table),
    Chart(ChartKind),
}

fn ms(x: f64) -> String {
    format!("{x:.3} ms")
}

fn pct(x: f64) -> String {
    format!("{x:+.1}%")
}

fn ci_pct(e: &Estimate) -> String {
    format!("[{:+.1}, {:+.1}]%", e.ci_low, e.ci_high)
}

fn ci_ms(lo: f64, hi: f64) -> String {
    format!("[{lo:.3}, {hi:.3}]")
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "n/a".into())
}

fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn label_of(a: &Analysis, key: &str) -> String {
    a.condition(key)
        .map(|c| c.label.clone())
        .unwrap_or_else(|| key.to_string())
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> Block {
    Block::Table(Table {
        headers: headers.iter().map(|h| h.to_string()).collect(),
        rows,
    })
}

/// Effect wording for the MPS table: the seed writes "+96% (faster)".
fn effect_cell(e: &Estimate, verdict: Verdict) -> String {
    let word = match verdict {
        Verdict::Faster => "faster",
        Verdict::Slower => "slower",
        Verdict::NoSignificantChange => "no significant change",
    };
    format!("{} ({word})", pct(e.value))
}

fn comparison_row(a: &Analysis, c: &ComparisonResult, condition: &str) -> Vec<String> {
    vec![
        c.model.clone(),
        label_of(a, condition),
        ms(c.baseline_mean_ms),
        ms(c.candidate_mean_ms),
        format!("{:+.3} ms", c.diff_ms.value),
        pct(c.change_pct.value),
        ci_pct(&c.change_pct),
        c.verdict.as_str().into(),
    ]
}

/// Builds the report document for one run.
pub fn document(a: &Analysis) -> Vec<Block> {
    let mut doc = vec![Block::Heading(
        1,
        format!("mpslab report: run {} ({})", a.run_id, a.experiment),
    )];
    doc.push(Block::Paragraph(format!(
        "Status: {}. Started {}, finished {}. {} phases, {} models ({}).",
        a.status,
        utc(a.started_unix_ms),
        opt(a.finished_unix_ms, utc),
        a.phases.len(),
        a.models.len(),
        a.models.join(", ")
    )));
    doc.push(Block::Paragraph(format!(
        "Latency is per inference, after warm-up. Repeats are pooled. Intervals are 95 % \
         bootstrap intervals ({} resamples, fixed seed). Percentiles: {}. Stdev: ddof = {}. A \
         verdict is 'faster' or 'slower' only when the whole interval of the difference is on \
         one side of zero.",
        a.method.bootstrap_resamples, a.method.percentile_method, a.method.stdev_ddof
    )));

    // 1. How much does concurrency slow each model?
    doc.push(Block::Heading(
        2,
        "1. Alone vs together (mean latency)".into(),
    ));
    let rows: Vec<Vec<String>> = a
        .comparisons_of(ComparisonKind::TogetherVsAlone)
        .map(|c| comparison_row(a, c, &c.candidate))
        .collect();
    if rows.is_empty() {
        doc.push(Block::Paragraph(
            "Not measured: the run has no alone phase paired with a concurrent one.".into(),
        ));
    } else {
        doc.push(table(
            &[
                "Model",
                "Condition",
                "Alone",
                "Together",
                "Difference",
                "Change",
                "95 % CI (change)",
                "Verdict",
            ],
            rows,
        ));
    }

    // 2. Does MPS help each model?
    doc.push(Block::Heading(
        2,
        "2. MPS on vs off (running together)".into(),
    ));
    if a.mps_table.is_empty() {
        doc.push(Block::Paragraph(
            "Not measured: the run lacks together phases with MPS both on and off.".into(),
        ));
    } else {
        doc.push(Block::Heading(3, "2.1 Latency".into()));
        let rows = a
            .mps_table
            .iter()
            .map(|r| {
                vec![
                    r.model.clone(),
                    opt(r.alone_mean_ms, ms),
                    ms(r.mps_on_mean_ms),
                    ms(r.mps_off_mean_ms),
                    effect_cell(&r.mps_effect_pct, r.verdict),
                    opt(r.vs_alone_mps_on_pct, |e| pct(e.value)),
                    opt(r.vs_alone_mps_off_pct, |e| pct(e.value)),
                ]
            })
            .collect();
        doc.push(table(
            &[
                "Model",
                "Alone (mean)",
                "MPS on (mean)",
                "MPS off (mean)",
                "MPS effect",
                "vs alone (MPS on)",
                "vs alone (MPS off)",
            ],
            rows,
        ));
        doc.push(Block::Paragraph(
            "MPS effect = mean(MPS off) / mean(MPS on) - 1: +96% means MPS made the model 1.96x \
             faster; a negative effect means MPS slowed it down. 'vs alone' = together / alone - 1."
                .into(),
        ));
        doc.push(Block::Heading(
            3,
            "2.2 MPS effect with confidence intervals".into(),
        ));
        let rows = a
            .mps_table
            .iter()
            .map(|r| {
                vec![
                    r.model.clone(),
                    pct(r.mps_effect_pct.value),
                    ci_pct(&r.mps_effect_pct),
                    r.verdict.as_str().into(),
                    opt(r.vs_alone_mps_on_pct, |e| ci_pct(&e)),
                    opt(r.vs_alone_mps_off_pct, |e| ci_pct(&e)),
                ]
            })
            .collect();
        doc.push(table(
            &[
                "Model",
                "MPS effect",
                "95 % CI",
                "With MPS",
                "95 % CI vs alone (MPS on)",
                "95 % CI vs alone (MPS off)",
            ],
            rows,
        ));
    }
    let mixed: Vec<Vec<String>> = a
        .comparisons_of(ComparisonKind::MixedVsAllMps)
        .chain(a.comparisons_of(ComparisonKind::MixedVsNoMps))
        .map(|c| {
            let mut row = comparison_row(a, c, &c.candidate);
            row[2] = format!("{} ({})", ms(c.baseline_mean_ms), label_of(a, &c.baseline));
            row
        })
        .collect();
    if !mixed.is_empty() {
        doc.push(Block::Heading(
            3,
            "2.3 Mixed MPS assignment vs all MPS and no MPS".into(),
        ));
        doc.push(table(
            &[
                "Model",
                "Mixed condition",
                "Baseline",
                "Mixed",
                "Difference",
                "Change",
                "95 % CI (change)",
                "Verdict",
            ],
            mixed,
        ));
    }
    doc.push(Block::Chart(ChartKind::MeanBars));

    // 3. Is accuracy unchanged?
    doc.push(Block::Heading(2, "3. Output consistency".into()));
    let rows = a
        .consistency
        .iter()
        .map(|c| {
            let (verdict, detail) = match c.status {
                ConsistencyStatus::Identical => (
                    "identical in all phases".to_string(),
                    format!(
                        "digest {}",
                        c.groups
                            .first()
                            .map(|g| short(&g.digest))
                            .unwrap_or_default()
                    ),
                ),
                ConsistencyStatus::Unknown => ("not recorded".into(), "no output digests".into()),
                ConsistencyStatus::Differs => (
                    "DIFFERENT".into(),
                    c.groups
                        .iter()
                        .map(|g| format!("{} in phases {}", short(&g.digest), join_u32(&g.phases)))
                        .collect::<Vec<_>>()
                        .join("; ")
                        + &c.max_abs_diff
                            .map(|d| format!("; max abs diff {d:.3e}"))
                            .unwrap_or_default(),
                ),
            };
            let missing = if c.phases_without_digest.is_empty() {
                String::new()
            } else {
                format!(
                    " (no digest in phases {})",
                    join_u32(&c.phases_without_digest)
                )
            };
            vec![c.model.clone(), verdict, detail + &missing]
        })
        .collect();
    doc.push(table(&["Model", "Outputs", "Detail"], rows));
    if let Some(v) = &a.validation {
        validation_blocks(a, v, &mut doc);
    }

    // 4. What did the GPU and CPU do?
    doc.push(Block::Heading(2, "4. GPU, CPU and power".into()));
    if a.telemetry.is_empty() {
        doc.push(Block::Paragraph(
            "No telemetry was recorded for this run.".into(),
        ));
    } else {
        telemetry_blocks(a, &mut doc);
    }
    doc.push(Block::Chart(ChartKind::Timeline));

    // 5. What does sampling cost?
    doc.push(Block::Heading(2, "5. Sampling overhead".into()));
    let rows: Vec<Vec<String>> = a
        .comparisons_of(ComparisonKind::SamplingOverhead)
        .map(|c| {
            let cond = label_of(a, &c.candidate);
            let mut row = comparison_row(a, c, &c.candidate);
            row[1] = cond;
            row
        })
        .collect();
    if rows.is_empty() {
        doc.push(Block::Paragraph(
            "Not measured: no condition was run both with and without telemetry sampling.".into(),
        ));
    } else {
        doc.push(table(
            &[
                "Model",
                "Condition",
                "Sampling off",
                "Sampling on",
                "Overhead",
                "Overhead (%)",
                "95 % CI",
                "Verdict",
            ],
            rows,
        ));
    }

    // 6. The numbers behind everything.
    doc.push(Block::Heading(
        2,
        "6. Latency statistics per model and condition".into(),
    ));
    let rows = a.cells.iter().map(|c| stats_row(a, c)).collect();
    doc.push(table(
        &[
            "Model",
            "Condition",
            "n",
            "Mean",
            "95 % CI (mean)",
            "Stdev",
            "Min",
            "p50",
            "95 % CI (p50)",
            "p90",
            "p95",
            "p99",
            "Max",
            "Throughput",
            "Repeat means",
        ],
        rows,
    ));
    if a.cells.iter().any(|c| c.repeat_spread_exceeds_ci) {
        doc.push(Block::Paragraph(
            "(!) marks cells whose repeat means differ by more than the pooled mean's interval is \
             wide: run-to-run variation dominates there, so treat their intervals as too narrow."
                .into(),
        ));
    }
    doc.push(Block::Chart(ChartKind::Distributions));

    // 7. What should I do?
    doc.push(Block::Heading(
        2,
        "7. Conclusions and recommendations".into(),
    ));
    conclusion_blocks(a, &mut doc);
    doc
}

/// First 12 characters of a digest, after any `algorithm:` prefix.
fn short(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex.chars().take(12).collect()
}

fn join_u32(xs: &[u32]) -> String {
    xs.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

fn stats_row(a: &Analysis, c: &Cell) -> Vec<String> {
    let s = &c.stats;
    let f = |x: f64| format!("{x:.3}");
    let repeats = c
        .repeats
        .iter()
        .map(|r| format!("{:.3}", r.mean_ms))
        .collect::<Vec<_>>()
        .join(" / ");
    let repeats = if c.repeats.len() > 1 {
        format!(
            "{repeats} (range {:.3} ms){}",
            c.repeat_mean_range_ms,
            if c.repeat_spread_exceeds_ci {
                " (!)"
            } else {
                ""
            }
        )
    } else {
        repeats
    };
    vec![
        c.model.clone(),
        label_of(a, &c.condition),
        s.n.to_string(),
        f(s.mean_ms),
        ci_ms(s.mean_ci_ms[0], s.mean_ci_ms[1]),
        f(s.stdev_ms),
        f(s.min_ms),
        f(s.p50_ms),
        ci_ms(s.median_ci_ms[0], s.median_ci_ms[1]),
        f(s.p90_ms),
        f(s.p95_ms),
        f(s.p99_ms),
        f(s.max_ms),
        opt(c.throughput_per_s, |t| format!("{t:.1}/s")),
        repeats,
    ]
}

fn range_cell(r: Option<ValueRange>, unit: &str) -> String {
    opt(r, |r| {
        format!("{:.0}-{:.0}{unit} (mean {:.1}{unit})", r.min, r.max, r.mean)
    })
}

fn telemetry_blocks(a: &Analysis, doc: &mut Vec<Block>) {
    let t = &a.telemetry;
    let mut headers: Vec<String> = vec!["Metric".into()];
    headers.extend(t.iter().map(|s| label_of(a, &s.condition)));
    let metric = |name: &str, f: &dyn Fn(&TelemetrySummary) -> String| {
        let mut row = vec![name.to_string()];
        row.extend(t.iter().map(f));
        row
    };
    doc.push(Block::Heading(
        3,
        "4.1 GPU load (tegrastats GR3D_FREQ)".into(),
    ));
    doc.push(Block::Table(Table {
        headers: headers.clone(),
        rows: vec![
            metric("GR3D average (all samples)", &|s| {
                opt(s.gr3d_avg_pct, |v| format!("{v:.2}%"))
            }),
            metric("GR3D average (non-zero samples)", &|s| {
                opt(s.gr3d_avg_nonzero_pct, |v| format!("{v:.2}%"))
            }),
            metric("GR3D maximum", &|s| {
                opt(s.gr3d_max_pct, |v| format!("{v:.0}%"))
            }),
            metric(
                "Non-zero samples",
                &|s| match (s.gr3d_nonzero_samples, s.gr3d_samples) {
                    (Some(nz), Some(all)) => format!("{nz} of {all}"),
                    (Some(nz), None) => nz.to_string(),
                    _ => "n/a".into(),
                },
            ),
        ],
    }));
    doc.push(Block::Heading(3, "4.2 CPU, memory and I/O (vmstat)".into()));
    doc.push(Block::Table(Table {
        headers,
        rows: vec![
            metric("CPU user (us)", &|s| range_cell(s.cpu_us_pct, "%")),
            metric("CPU system (sy)", &|s| range_cell(s.cpu_sy_pct, "%")),
            metric("I/O wait (wa)", &|s| range_cell(s.cpu_wa_pct, "%")),
            metric("Free memory", &|s| {
                opt(s.free_mem_mb, |r| {
                    format!("{:.1}-{:.1} GB", r.min / 1024.0, r.max / 1024.0)
                })
            }),
        ],
    }));
    let rows: Vec<Vec<String>> = t
        .iter()
        .flat_map(|s| {
            s.rails.iter().map(move |r| {
                vec![
                    label_of(a, &s.condition),
                    r.rail.clone(),
                    format!("{:.0} mW", r.mean_mw),
                    format!("{:.0} mJ", r.energy_mj),
                    s.inferences.to_string(),
                    opt(r.energy_per_inference_mj, |e| format!("{e:.2} mJ")),
                ]
            })
        })
        .collect();
    doc.push(Block::Heading(3, "4.3 Power and energy".into()));
    if rows.is_empty() {
        doc.push(Block::Paragraph("No power rails were recorded.".into()));
    } else {
        doc.push(table(
            &[
                "Condition",
                "Rail",
                "Mean power",
                "Energy",
                "Inferences (all models)",
                "Energy per inference",
            ],
            rows,
        ));
    }
}

fn conclusion_blocks(a: &Analysis, doc: &mut Vec<Block>) {
    let r = &a.recommendations;
    doc.push(Block::Heading(3, "MPS per model".into()));
    if r.per_model.is_empty() {
        doc.push(Block::Paragraph(
            "No per-model MPS advice: MPS on and off were not both measured.".into(),
        ));
    } else {
        doc.push(Block::Bullets(
            r.per_model
                .iter()
                .map(|m| {
                    let advice = match m.mps {
                        MpsAdvice::On => "use MPS",
                        MpsAdvice::Off => "run without MPS",
                        MpsAdvice::Either => "either (MPS makes no significant difference)",
                    };
                    format!("{}: {advice}. {}", m.model, m.reason)
                })
                .collect(),
        ));
    }
    doc.push(Block::Heading(3, "The mix as a whole".into()));
    match &r.mix {
        Some(mix) => {
            let what = match &mix.strategy {
                MixStrategy::AllMps => "all models under MPS".to_string(),
                MixStrategy::NoMps => "no MPS".to_string(),
                MixStrategy::Mixed { on_models } => {
                    let off: Vec<&str> = a
                        .models
                        .iter()
                        .filter(|m| !on_models.contains(m))
                        .map(String::as_str)
                        .collect();
                    format!(
                        "mixed strategy: MPS for {}; without MPS: {}",
                        on_models.join(", "),
                        off.join(", ")
                    )
                }
            };
            let measured = if mix.measured {
                "measured"
            } else {
                "suggested, not measured"
            };
            doc.push(Block::Bullets(vec![format!(
                "Recommended: {what} ({measured}). {}",
                mix.reason
            )]));
        }
        None => doc.push(Block::Paragraph(
            "No advice for the mix: no concurrent condition covered every model.".into(),
        )),
    }

    let mut findings = Vec::new();
    for cond in a.conditions.iter().filter(|c| {
        a.comparisons_of(ComparisonKind::TogetherVsAlone)
            .any(|x| x.candidate == c.key)
    }) {
        let cs: Vec<&ComparisonResult> = a
            .comparisons_of(ComparisonKind::TogetherVsAlone)
            .filter(|x| x.candidate == cond.key)
            .collect();
        let most = cs
            .iter()
            .max_by(|x, y| x.change_pct.value.total_cmp(&y.change_pct.value));
        let least = cs
            .iter()
            .min_by(|x, y| x.change_pct.value.total_cmp(&y.change_pct.value));
        if let (Some(most), Some(least)) = (most, least) {
            findings.push(format!(
                "Concurrency ({}): {} changed most ({}, {:.2} -> {:.2} ms), {} least ({}).",
                cond.label,
                most.model,
                pct(most.change_pct.value),
                most.baseline_mean_ms,
                most.candidate_mean_ms,
                least.model,
                pct(least.change_pct.value)
            ));
        }
    }
    let identical: Vec<&str> = a
        .consistency
        .iter()
        .filter(|c| c.status == ConsistencyStatus::Identical)
        .map(|c| c.model.as_str())
        .collect();
    let differing: Vec<&str> = a
        .consistency
        .iter()
        .filter(|c| c.status == ConsistencyStatus::Differs)
        .map(|c| c.model.as_str())
        .collect();
    if !identical.is_empty() {
        findings.push(format!(
            "Accuracy: outputs were identical in every phase for {}; running together did not change them.",
            identical.join(", ")
        ));
    }
    if !differing.is_empty() {
        findings.push(format!(
            "Accuracy: outputs differed between phases for {} (see section 3).",
            differing.join(", ")
        ));
    }
    if let Some(v) = &a.validation {
        let same: Vec<&str> = v
            .agreement
            .iter()
            .filter(|g| g.metrics_identical)
            .map(|g| g.model.as_str())
            .collect();
        let changed: Vec<&str> = v
            .agreement
            .iter()
            .filter(|g| !g.metrics_identical)
            .map(|g| g.model.as_str())
            .collect();
        if !same.is_empty() {
            findings.push(format!(
                "Task metrics: identical across all conditions for {} (section 3.1).",
                same.join(", ")
            ));
        }
        if !changed.is_empty() {
            findings.push(format!(
                "Task metrics: changed between conditions for {} (section 3.1).",
                changed.join(", ")
            ));
        }
        let issues: usize = v.issues.iter().map(|m| m.issues.len()).sum();
        if issues > 0 {
            findings.push(format!(
                "Dataset: {issues} per-file problem(s) reported (section 3.3)."
            ));
        }
    }
    if let Some(s) = &r.sampling {
        findings.push(format!("Sampling: {s}"));
    }
    if !findings.is_empty() {
        doc.push(Block::Heading(3, "Findings".into()));
        doc.push(Block::Bullets(findings));
    }
    if !a.problems.is_empty() {
        doc.push(Block::Heading(3, "Problems".into()));
        doc.push(Block::Bullets(a.problems.clone()));
    }
}

/// Validation runs: task metrics per phase, whether they agree, the per-image stage split and
/// the dataset's per-file issues.
fn validation_blocks(a: &Analysis, v: &ValidationAnalysis, doc: &mut Vec<Block>) {
    doc.push(Block::Heading(3, "3.1 Task metrics".into()));
    let rows = v
        .agreement
        .iter()
        .map(|g| {
            let verdict = match (g.metrics_identical, g.predictions_identical) {
                (true, true) => "identical in all phases (metrics and every prediction)",
                (true, false) => "metrics identical; some predictions differ slightly",
                (false, _) => "DIFFERENT",
            };
            let detail = if g.differences.is_empty() {
                format!("{} phases compared", g.phases)
            } else {
                g.differences.join("; ")
            };
            vec![g.model.clone(), verdict.to_string(), detail]
        })
        .collect();
    doc.push(table(
        &["Model", "Metrics across conditions", "Detail"],
        rows,
    ));
    for model in &a.models {
        let cells: Vec<&MetricsCell> = v.metrics.iter().filter(|c| &c.model == model).collect();
        let Some(first) = cells.first() else { continue };
        // Only the metrics this model's task has.
        let names: Vec<String> = metric_values(&first.metrics)
            .into_iter()
            .filter(|(n, x)| x.is_some() && n != "Images")
            .map(|(n, _)| n)
            .collect();
        let mut headers = vec!["Condition", "Phase", "Images"];
        headers.extend(names.iter().map(String::as_str));
        headers.push("Predictions");
        let rows = cells
            .iter()
            .map(|c| {
                let values: BTreeMap<String, Option<f64>> =
                    metric_values(&c.metrics).into_iter().collect();
                let mut row = vec![
                    label_of(a, &c.condition),
                    c.phase.to_string(),
                    format!("{} of {}", c.images, c.dataset_images),
                ];
                row.extend(
                    names
                        .iter()
                        .map(|n| match values.get(n).copied().flatten() {
                            Some(x) if matches!(n.as_str(), "Instances" | "Detections") => {
                                format!("{x:.0}")
                            }
                            Some(x) => format!("{x:.4}"),
                            None => "n/a".into(),
                        }),
                );
                row.push(short(&c.predictions_sha256));
                row
            })
            .collect();
        doc.push(Block::Paragraph(format!("{model}:")));
        doc.push(table(&headers, rows));
    }

    doc.push(Block::Heading(
        3,
        "3.2 Per-image time: preprocess, inference, postprocess".into(),
    ));
    doc.push(Block::Paragraph(
        "Mean (p95) per image, as Ultralytics' speed line splits it; every image of the pass, \
         repeats pooled. Decoding the image file is not timed. Together, a model that finishes \
         its dataset first leaves the others to run their last images alone."
            .into(),
    ));
    let stage = |s: &StageStats| format!("{:.3} ({:.3}) ms", s.mean_ms, s.p95_ms);
    let rows = v
        .stages
        .iter()
        .map(|c| {
            vec![
                c.model.clone(),
                label_of(a, &c.condition),
                c.n.to_string(),
                stage(&c.preprocess),
                stage(&c.inference),
                stage(&c.postprocess),
            ]
        })
        .collect();
    doc.push(table(
        &[
            "Model",
            "Condition",
            "Images",
            "Preprocess",
            "Inference",
            "Postprocess",
        ],
        rows,
    ));
    doc.push(Block::Chart(ChartKind::Stages));

    doc.push(Block::Heading(3, "3.3 Dataset issues".into()));
    if v.issues.is_empty() {
        doc.push(Block::Paragraph(
            "None: every image decoded and every label line parsed.".into(),
        ));
    }
    for m in &v.issues {
        doc.push(Block::Paragraph(format!(
            "{}: {} file(s) with problems (images with bad labels were left out; images \
             without a label file count as background).",
            m.model,
            m.issues.len()
        )));
        let rows = m
            .issues
            .iter()
            .map(|i| {
                vec![
                    i.file.clone(),
                    i.line.map(|l| l.to_string()).unwrap_or_default(),
                    issue_kind(i.kind).into(),
                    i.message.clone(),
                ]
            })
            .collect();
        doc.push(table(&["File", "Line", "Problem", "Detail"], rows));
    }
}

fn issue_kind(k: IssueKind) -> &'static str {
    match k {
        IssueKind::MissingLabel => "missing label",
        IssueKind::BadLabel => "bad label",
        IssueKind::BadImage => "unreadable image",
    }
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Lays out a document as GitHub-flavoured Markdown (charts are skipped).
pub fn blocks_to_markdown(doc: &[Block]) -> String {
    let mut out = String::new();
    for b in doc {
        match b {
            Block::Heading(level, text) => {
                out.push_str(&"#".repeat(usize::from(*level)));
                out.push(' ');
                out.push_str(text);
                out.push_str("\n\n");
            }
            Block::Paragraph(p) => {
                out.push_str(p);
                out.push_str("\n\n");
            }
            Block::Bullets(items) => {
                for i in items {
                    out.push_str("- ");
                    out.push_str(i);
                    out.push('\n');
                }
                out.push('\n');
            }
            Block::Table(t) => {
                let line = |cells: &[String]| {
                    format!(
                        "| {} |\n",
                        cells
                            .iter()
                            .map(|c| md_cell(c))
                            .collect::<Vec<_>>()
                            .join(" | ")
                    )
                };
                out.push_str(&line(&t.headers));
                out.push_str(&format!("|{}\n", "---|".repeat(t.headers.len())));
                for r in &t.rows {
                    out.push_str(&line(r));
                }
                out.push('\n');
            }
            Block::Chart(_) => {}
        }
    }
    out
}

/// The Markdown report of one run.
pub fn render_markdown(a: &Analysis) -> String {
    blocks_to_markdown(&document(a))
}

/// The JSON report of one run (pretty-printed; keys documented on [`Analysis`]).
pub fn render_json(a: &Analysis) -> String {
    to_json(a)
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Serialising these plain structs cannot fail (string keys, no custom serialisers); the
    // fallback still yields valid JSON rather than a panic.
    serde_json::to_string_pretty(v).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("could not serialise report: {e}") }).to_string()
    })
}

/// The self-contained HTML report of one run: tables plus inline SVG charts, no external files.
pub fn render_html(a: &Analysis, run: &RunData) -> String {
    html::render(a, run, &document(a))
}

/// The Markdown comparison of two runs.
pub fn render_compare_markdown(c: &Comparison) -> String {
    let mut doc = vec![
        Block::Heading(
            1,
            format!(
                "mpslab comparison: run {} ({}) vs run {} ({})",
                c.run_b.run_id, c.run_b.experiment, c.run_a.run_id, c.run_a.experiment
            ),
        ),
        Block::Paragraph(format!(
            "Baseline: run {} (started {}). Candidate: run {} (started {}). Change = B / A - 1 \
             of the mean latency; 'faster' means run {} was significantly faster (95 % bootstrap \
             interval of the difference below zero).",
            c.run_a.run_id,
            utc(c.run_a.started_unix_ms),
            c.run_b.run_id,
            utc(c.run_b.started_unix_ms),
            c.run_b.run_id
        )),
    ];
    let rows = c
        .rows
        .iter()
        .map(|r| {
            vec![
                r.model.clone(),
                r.candidate.clone(),
                ms(r.baseline_mean_ms),
                ms(r.candidate_mean_ms),
                format!("{:+.3} ms", r.diff_ms.value),
                pct(r.change_pct.value),
                ci_pct(&r.change_pct),
                r.verdict.as_str().into(),
            ]
        })
        .collect();
    doc.push(table(
        &[
            "Model",
            "Condition",
            "Run A (mean)",
            "Run B (mean)",
            "Difference",
            "Change",
            "95 % CI (change)",
            "Verdict (B vs A)",
        ],
        rows,
    ));
    let count = |v: Verdict| c.rows.iter().filter(|r| r.verdict == v).count();
    doc.push(Block::Paragraph(format!(
        "Run B was faster in {}, slower in {} and not significantly different in {} of {} \
         model/condition pairs.",
        count(Verdict::Faster),
        count(Verdict::Slower),
        count(Verdict::NoSignificantChange),
        c.rows.len()
    )));
    if !c.only_in_a.is_empty() || !c.only_in_b.is_empty() {
        let mut items: Vec<String> = c
            .only_in_a
            .iter()
            .map(|s| format!("only in run A: {s}"))
            .collect();
        items.extend(c.only_in_b.iter().map(|s| format!("only in run B: {s}")));
        doc.push(Block::Bullets(items));
    }
    blocks_to_markdown(&doc)
}

/// The JSON comparison of two runs (keys documented on [`Comparison`]).
pub fn render_compare_json(c: &Comparison) -> String {
    to_json(c)
}
