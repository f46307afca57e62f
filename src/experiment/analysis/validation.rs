//! Validation runs: the per-image split into preprocess / inference / postprocess per model and
//! condition, task metrics per condition, whether they agree across conditions, and the
//! dataset's per-file issues. Pure, like the rest of the analysis.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::{phase_condition, stats, Condition, RunData};
use crate::vision::metrics::TaskMetrics;
use crate::vision::DatasetIssue;

/// Mean, median and p95 of one stage, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StageStats {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

/// Per-image time split of one model under one condition (images in the measurement window,
/// pooled over repeats).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageCell {
    pub model: String,
    pub condition: String,
    pub n: usize,
    pub preprocess: StageStats,
    pub inference: StageStats,
    pub postprocess: StageStats,
}

/// Task metrics of one model in one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsCell {
    pub model: String,
    pub condition: String,
    pub phase: u32,
    pub repeat: u32,
    /// Images scored (a capped run scores fewer than the dataset holds).
    pub images: u64,
    pub dataset_images: u64,
    pub metrics: TaskMetrics,
    /// SHA-256 over every prediction: equal digests mean bit-identical predictions.
    pub predictions_sha256: String,
}

/// Whether one model's metrics (and predictions) were the same in every phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsAgreement {
    pub model: String,
    pub phases: usize,
    pub metrics_identical: bool,
    pub predictions_identical: bool,
    /// One line per metric that differs from the reference phase (the first alone, MPS-off one).
    pub differences: Vec<String>,
}

/// The dataset problems one model's worker reported, one entry per file and line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelIssues {
    pub model: String,
    pub issues: Vec<DatasetIssue>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ValidationAnalysis {
    pub stages: Vec<StageCell>,
    pub metrics: Vec<MetricsCell>,
    pub agreement: Vec<MetricsAgreement>,
    pub issues: Vec<ModelIssues>,
}

fn stage_stats(values_ms: &[f64]) -> StageStats {
    let sorted = stats::sorted(values_ms);
    StageStats {
        mean_ms: stats::mean(values_ms),
        p50_ms: stats::percentile_sorted(&sorted, 50.0),
        p95_ms: stats::percentile_sorted(&sorted, 95.0),
    }
}

/// `None` when no phase of the run carries a validation summary (a latency run).
pub fn analyze(
    run: &RunData,
    models: &[String],
    conditions: &[Condition],
) -> Option<ValidationAnalysis> {
    let validated = run
        .phases
        .iter()
        .any(|p| p.models.iter().any(|m| m.validation.is_some()));
    if !validated {
        return None;
    }
    let mut out = ValidationAnalysis::default();
    for cond in conditions {
        for model in models {
            let mut split: [Vec<f64>; 3] = Default::default();
            for phase in run.phases.iter().filter(|p| &phase_condition(p) == cond) {
                for m in phase.models.iter().filter(|m| &m.model == model) {
                    for s in &m.stages_ns {
                        for (dst, ns) in split.iter_mut().zip(s) {
                            dst.push(*ns as f64 / 1e6);
                        }
                    }
                }
            }
            if split[0].is_empty() {
                continue;
            }
            out.stages.push(StageCell {
                model: model.clone(),
                condition: cond.key(),
                n: split[0].len(),
                preprocess: stage_stats(&split[0]),
                inference: stage_stats(&split[1]),
                postprocess: stage_stats(&split[2]),
            });
        }
    }

    for phase in &run.phases {
        let condition = phase_condition(phase).key();
        for m in &phase.models {
            if let Some(v) = &m.validation {
                out.metrics.push(MetricsCell {
                    model: m.model.clone(),
                    condition: condition.clone(),
                    phase: phase.index,
                    repeat: phase.repeat,
                    images: v.images,
                    dataset_images: v.dataset_images,
                    metrics: v.metrics.clone(),
                    predictions_sha256: v.predictions_sha256.clone(),
                });
            }
        }
    }
    // Reference: the first alone, MPS-off phase of the model, else its first phase.
    let label = |key: &str| {
        conditions
            .iter()
            .find(|c| c.key() == key)
            .map(Condition::label)
            .unwrap_or_else(|| key.to_string())
    };
    for model in models {
        let cells: Vec<&MetricsCell> = out.metrics.iter().filter(|c| &c.model == model).collect();
        let Some(reference) = cells
            .iter()
            .find(|c| c.condition.starts_with("alone/mps-off/"))
            .or(cells.first())
        else {
            continue;
        };
        let mut differences = Vec::new();
        for c in &cells {
            for (name, a, b) in metric_values(&reference.metrics)
                .into_iter()
                .zip(metric_values(&c.metrics))
                .filter(|(a, b)| a.1 != b.1)
                .map(|(a, b)| (a.0, a.1, b.1))
            {
                differences.push(format!(
                    "{name}: {} in phase {} ({}) vs {} in phase {} ({})",
                    fmt_metric(a),
                    reference.phase,
                    label(&reference.condition),
                    fmt_metric(b),
                    c.phase,
                    label(&c.condition),
                ));
            }
        }
        out.agreement.push(MetricsAgreement {
            model: model.clone(),
            phases: cells.len(),
            metrics_identical: differences.is_empty(),
            predictions_identical: cells
                .iter()
                .all(|c| c.predictions_sha256 == reference.predictions_sha256),
            differences,
        });
    }

    for model in models {
        let mut seen: BTreeMap<(String, Option<usize>, String), DatasetIssue> = BTreeMap::new();
        for phase in &run.phases {
            for m in phase.models.iter().filter(|m| &m.model == model) {
                for issue in m.validation.iter().flat_map(|v| &v.issues) {
                    seen.entry((issue.file.clone(), issue.line, issue.message.clone()))
                        .or_insert_with(|| issue.clone());
                }
            }
        }
        if !seen.is_empty() {
            out.issues.push(ModelIssues {
                model: model.clone(),
                issues: seen.into_values().collect(),
            });
        }
    }
    Some(out)
}

/// Every metric as (name, value), in report order; absent metrics are `None`.
pub fn metric_values(m: &TaskMetrics) -> Vec<(String, Option<f64>)> {
    let mut v = vec![
        ("Images".to_string(), Some(m.images as f64)),
        ("Instances".to_string(), Some(m.instances as f64)),
        ("Detections".to_string(), Some(m.detections as f64)),
        ("Top-1".to_string(), m.top1),
        ("Top-5".to_string(), m.top5),
    ];
    for (kind, d) in [
        ("Box", &m.boxes),
        ("Mask", &m.masks),
        ("Pose", &m.keypoints),
    ] {
        for (name, x) in [
            ("P", d.map(|d| d.precision)),
            ("R", d.map(|d| d.recall)),
            ("F1", d.map(|d| d.f1)),
            ("mAP50", d.map(|d| d.map50)),
            ("mAP50-95", d.map(|d| d.map50_95)),
        ] {
            v.push((format!("{kind} {name}"), x));
        }
    }
    v
}

fn fmt_metric(x: Option<f64>) -> String {
    match x {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{x:.0}"),
        Some(x) => format!("{x:.6}"),
        None => "absent".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::analysis::{Mode, ModelPhaseData, MpsSetting, PhaseData};
    use crate::experiment::protocol::ValidationSummary;
    use crate::vision::metrics::DetMetrics;
    use crate::vision::IssueKind;

    fn metrics(map: f64) -> TaskMetrics {
        TaskMetrics {
            images: 8,
            instances: 20,
            detections: 19,
            top1: None,
            top5: None,
            boxes: Some(DetMetrics {
                precision: 0.9,
                recall: 0.85,
                f1: 0.874,
                map50: map,
                map50_95: map / 2.0,
            }),
            masks: None,
            keypoints: None,
        }
    }

    fn phase(index: u32, mode: Mode, mps: MpsSetting, map: f64, digest: &str) -> PhaseData {
        PhaseData {
            index,
            mode,
            mps,
            sampling: true,
            repeat: 0,
            start_unix_ms: 0,
            end_unix_ms: 1000,
            models: vec![ModelPhaseData {
                model: "det".into(),
                latencies_ns: vec![3_000_000, 4_000_000],
                output_digest: None,
                max_abs_diff: None,
                status: "ok".into(),
                error: None,
                stages_ns: vec![[1_000_000, 2_000_000, 0], [1_000_000, 2_500_000, 500_000]],
                validation: Some(ValidationSummary {
                    dataset_images: 9,
                    images: 8,
                    metrics: metrics(map),
                    predictions_sha256: digest.into(),
                    issues: vec![DatasetIssue {
                        file: "labels/val/b.txt".into(),
                        line: Some(2),
                        kind: IssueKind::BadLabel,
                        message: "class 7 out of range".into(),
                    }],
                }),
            }],
            telemetry: None,
            timeline: Vec::new(),
        }
    }

    fn run(phases: Vec<PhaseData>) -> RunData {
        RunData {
            run_id: 1,
            experiment: "val".into(),
            started_unix_ms: 0,
            finished_unix_ms: Some(1),
            status: "completed".into(),
            phases,
        }
    }

    fn conditions(r: &RunData) -> Vec<Condition> {
        let mut c: Vec<Condition> = r.phases.iter().map(phase_condition).collect();
        c.sort();
        c.dedup();
        c
    }

    #[test]
    fn equal_metrics_agree_and_stage_split_is_summarised() {
        let r = run(vec![
            phase(0, Mode::Alone, MpsSetting::Off, 0.8, "aa"),
            phase(1, Mode::Together, MpsSetting::On, 0.8, "aa"),
        ]);
        let v = analyze(&r, &["det".into()], &conditions(&r)).unwrap();
        assert_eq!(v.stages.len(), 2);
        let s = &v.stages[0];
        assert_eq!(s.n, 2);
        assert_eq!(s.preprocess.p50_ms, 1.0);
        assert_eq!(s.inference.mean_ms, 2.25);
        assert_eq!(s.postprocess.p50_ms, 0.25);
        assert_eq!(v.metrics.len(), 2);
        let a = &v.agreement[0];
        assert!(a.metrics_identical && a.predictions_identical, "{a:?}");
        assert_eq!(a.phases, 2);
        // The same issue reported by both phases is listed once.
        assert_eq!(v.issues[0].issues.len(), 1);
        assert_eq!(v.issues[0].issues[0].line, Some(2));
    }

    #[test]
    fn a_changed_metric_is_named_with_both_conditions() {
        let r = run(vec![
            phase(0, Mode::Together, MpsSetting::On, 0.75, "bb"),
            phase(1, Mode::Alone, MpsSetting::Off, 0.8, "aa"),
        ]);
        let v = analyze(&r, &["det".into()], &conditions(&r)).unwrap();
        let a = &v.agreement[0];
        assert!(!a.metrics_identical && !a.predictions_identical);
        assert_eq!(a.differences.len(), 2, "{:?}", a.differences);
        assert_eq!(
            a.differences[0],
            "Box mAP50: 0.800000 in phase 1 (alone, MPS off) vs 0.750000 in phase 0 (together, MPS on)"
        );
    }

    #[test]
    fn latency_runs_have_no_validation_section() {
        let mut p = phase(0, Mode::Alone, MpsSetting::Off, 0.8, "aa");
        p.models[0].validation = None;
        p.models[0].stages_ns.clear();
        let r = run(vec![p]);
        assert!(analyze(&r, &["det".into()], &conditions(&r)).is_none());
    }
}
