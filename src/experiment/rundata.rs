//! Loading a stored run into the analysis input ([`RunData`]): measured latencies, output
//! digests (with the largest difference from the reference phase), and telemetry summarised
//! per phase window. Reads SQLite; the analysis itself stays pure.

use std::collections::BTreeMap;

use rusqlite::{params, Connection};

use crate::experiment::analysis::{
    Mode, ModelPhaseData, MpsSetting, PhaseData, PhaseTelemetryInput, RailEnergy, RunData,
    TimelinePoint, ValueRange,
};
use crate::experiment::protocol::OutputDigest;
use crate::store::{self, StoreError};
use crate::telemetry::summary::{self, GpuPoint, SummaryOptions, VmPoint, Window};

/// A model's stored result in one phase: digest, digest values, status, error.
/// digest, digest values, status, error, validation summary.
type PhaseModelRecord = (
    Option<String>,
    Vec<OutputDigest>,
    String,
    Option<String>,
    Option<crate::experiment::protocol::ValidationSummary>,
);

struct PhaseRow {
    id: i64,
    idx: u32,
    mode: String,
    mps: String,
    sampling: bool,
    repeat: u32,
    models: Vec<String>,
    started_ms: i64,
    ended_ms: i64,
}

fn mode_of(s: &str) -> Mode {
    match s {
        "together" => Mode::Together,
        "mixed" => Mode::Mixed,
        _ => Mode::Alone,
    }
}

/// Largest absolute difference between two digests' leading output values; `None` when they
/// cannot be compared (different shapes or no values).
pub fn max_abs_diff(a: &[OutputDigest], b: &[OutputDigest]) -> Option<f64> {
    let mut worst: Option<f64> = None;
    for (da, db) in a.iter().zip(b) {
        for (oa, ob) in da.outputs.iter().zip(&db.outputs) {
            if oa.shape != ob.shape || oa.head.len() != ob.head.len() {
                return None;
            }
            for (x, y) in oa.head.iter().zip(&ob.head) {
                let d = (x - y).abs();
                worst = Some(worst.map_or(d, |w: f64| w.max(d)));
            }
        }
    }
    worst
}

/// Everything the report needs about run `run_id`.
pub fn load(conn: &Connection, run_id: i64) -> Result<RunData, StoreError> {
    let run = store::get_run(conn, run_id)?;
    let mut stmt = conn.prepare(
        "SELECT id, idx, mode, mps, sampling, repeat, models, COALESCE(started_ms, 0), COALESCE(ended_ms, started_ms, 0) \
         FROM phases WHERE run_id=?1 ORDER BY idx",
    )?;
    let phases: Vec<PhaseRow> = stmt
        .query_map([run_id], |r| {
            let models: String = r.get(6)?;
            Ok(PhaseRow {
                id: r.get(0)?,
                idx: r.get(1)?,
                mode: r.get(2)?,
                mps: r.get(3)?,
                sampling: r.get(4)?,
                repeat: r.get(5)?,
                models: serde_json::from_str(&models).unwrap_or_default(),
                started_ms: r.get(7)?,
                ended_ms: r.get(8)?,
            })
        })?
        .collect::<Result<_, _>>()?;

    // Reference outputs per model: its first alone, MPS-off phase, else its first phase.
    let mut digests: BTreeMap<(i64, String), PhaseModelRecord> = BTreeMap::new();
    {
        let mut stmt = conn.prepare(
            "SELECT pm.phase_id, pm.model, pm.digest, pm.digest_values, pm.status, pm.error, pm.validation \
             FROM phase_models pm JOIN phases p ON p.id = pm.phase_id WHERE p.run_id=?1",
        )?;
        let rows = stmt.query_map([run_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, Option<String>>(6)?,
            ))
        })?;
        for row in rows {
            let (pid, model, digest, values, status, error, validation) = row?;
            let values: Vec<OutputDigest> = values
                .and_then(|v| serde_json::from_str(&v).ok())
                .unwrap_or_default();
            let validation = validation.and_then(|v| serde_json::from_str(&v).ok());
            digests.insert((pid, model), (digest, values, status, error, validation));
        }
    }
    let mut reference: BTreeMap<String, Vec<OutputDigest>> = BTreeMap::new();
    for pref in [true, false] {
        for p in &phases {
            if pref && !(p.mode == "alone" && p.mps == "off") {
                continue;
            }
            for m in &p.models {
                if let Some((_, v, ..)) = digests.get(&(p.id, m.clone())) {
                    if !v.is_empty() {
                        reference.entry(m.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
        }
    }

    let mut out_phases = Vec::with_capacity(phases.len());
    for p in &phases {
        let mut lat_stmt = conn.prepare_cached(
            "SELECT dur_ns, pre_ns, infer_ns, post_ns FROM iterations \
             WHERE phase_id=?1 AND model=?2 AND in_window=1 ORDER BY idx",
        )?;
        let mut models = Vec::new();
        for m in &p.models {
            let mut latencies_ns = Vec::new();
            let mut stages_ns = Vec::new();
            let rows = lat_stmt.query_map(params![p.id, m], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })?;
            for row in rows {
                let (dur, pre, infer, post) = row?;
                latencies_ns.push(dur.max(0) as u64);
                if let (Some(a), Some(b), Some(c)) = (pre, infer, post) {
                    stages_ns.push([a.max(0) as u64, b.max(0) as u64, c.max(0) as u64]);
                }
            }
            let (digest, values, status, error, validation) =
                digests.get(&(p.id, m.clone())).cloned().unwrap_or((
                    None,
                    Vec::new(),
                    "missing".into(),
                    Some("no result recorded".into()),
                    None,
                ));
            let diff = reference
                .get(m)
                .filter(|_| !values.is_empty())
                .and_then(|r| max_abs_diff(r, &values));
            // A validation run's outputs are its predictions: their digest stands in.
            let digest = digest.or_else(|| {
                validation
                    .as_ref()
                    .map(|v: &crate::experiment::protocol::ValidationSummary| {
                        v.predictions_sha256.clone()
                    })
            });
            models.push(ModelPhaseData {
                model: m.clone(),
                latencies_ns,
                output_digest: digest,
                max_abs_diff: diff,
                status,
                error,
                stages_ns,
                validation,
            });
        }
        let mps = match p.mps.as_str() {
            "on" => MpsSetting::On,
            "mixed" => {
                let mut on_models: Vec<String> = Vec::new();
                // The per-model assignment is in the run's plan.
                if let Some(plan) = conn
                    .query_row("SELECT plan FROM runs WHERE id=?1", [run_id], |r| {
                        r.get::<_, Option<String>>(0)
                    })?
                    .and_then(|s| serde_json::from_str::<crate::experiment::plan::Plan>(&s).ok())
                {
                    if let Some(pp) = plan.phases.iter().find(|x| x.idx == p.idx) {
                        on_models = pp.mps_models.clone();
                    }
                }
                MpsSetting::Mixed { on_models }
            }
            _ => MpsSetting::Off,
        };
        let (telemetry, timeline) = phase_telemetry(conn, p.id, p.started_ms, p.ended_ms)?;
        out_phases.push(PhaseData {
            index: p.idx,
            mode: mode_of(&p.mode),
            mps,
            sampling: p.sampling,
            repeat: p.repeat,
            start_unix_ms: p.started_ms,
            end_unix_ms: p.ended_ms,
            models,
            telemetry,
            timeline,
        });
    }
    Ok(RunData {
        run_id: run.id as u64,
        experiment: run.experiment,
        started_unix_ms: run.started_ms.unwrap_or(run.queued_ms),
        finished_unix_ms: run.finished_ms,
        status: run.status,
        phases: out_phases,
    })
}

fn rails_of(parsed: &serde_json::Value) -> Vec<(String, f64)> {
    parsed
        .get("rails")
        .and_then(|r| r.as_object())
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| {
                    v.get("cur_mw")
                        .and_then(|x| x.as_f64())
                        .map(|mw| (k.clone(), mw))
                })
                .collect()
        })
        .unwrap_or_default()
}

type Telemetry = (Option<PhaseTelemetryInput>, Vec<TimelinePoint>);

fn phase_telemetry(
    conn: &Connection,
    phase_id: i64,
    start_ms: i64,
    end_ms: i64,
) -> Result<Telemetry, StoreError> {
    let mut gpu = Vec::new();
    let mut timeline = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT wall_ms, gr3d_pct, emc_pct, power_mw, parsed FROM tegrastats_samples WHERE phase_id=?1 ORDER BY wall_ms",
    )?;
    let rows = stmt.query_map([phase_id], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Option<f64>>(1)?,
            r.get::<_, Option<f64>>(2)?,
            r.get::<_, Option<f64>>(3)?,
            r.get::<_, Option<String>>(4)?,
        ))
    })?;
    for row in rows {
        let (wall_ms, gr3d, emc, power, parsed) = row?;
        let rails = parsed
            .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok())
            .map(|v| rails_of(&v))
            .unwrap_or_default();
        gpu.push(GpuPoint {
            wall_ms,
            gr3d_pct: gr3d,
            emc_pct: emc,
            rails_mw: rails,
        });
        timeline.push(TimelinePoint {
            wall_ms,
            gr3d_pct: gr3d,
            power_mw: power,
        });
    }
    let mut vm = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT wall_ms, us, sy, idle, wa, free_kb FROM vmstat_samples WHERE phase_id=?1 ORDER BY wall_ms",
    )?;
    let rows = stmt.query_map([phase_id], |r| {
        Ok(VmPoint {
            wall_ms: r.get(0)?,
            us: r.get::<_, Option<f64>>(1)?.unwrap_or(0.0),
            sy: r.get::<_, Option<f64>>(2)?.unwrap_or(0.0),
            id: r.get::<_, Option<f64>>(3)?.unwrap_or(0.0),
            wa: r.get::<_, Option<f64>>(4)?.unwrap_or(0.0),
            free_kb: r.get::<_, Option<i64>>(5)?.unwrap_or(0).max(0) as u64,
        })
    })?;
    for r in rows {
        vm.push(r?);
    }
    if gpu.is_empty() && vm.is_empty() {
        return Ok((None, timeline));
    }
    let s = summary::summarize(
        Window {
            start_ms,
            end_ms: end_ms.max(start_ms),
        },
        &gpu,
        &vm,
        SummaryOptions::default(),
    );
    let range = |m: Option<summary::MinAvgMax>| {
        m.map(|m| ValueRange {
            min: m.min,
            mean: m.avg,
            max: m.max,
        })
    };
    let t = PhaseTelemetryInput {
        gr3d_avg_pct: s.gr3d.map(|g| g.avg_pct),
        gr3d_avg_nonzero_pct: s.gr3d.and_then(|g| g.avg_nonzero_pct),
        gr3d_max_pct: s.gr3d.map(|g| g.max_pct),
        gr3d_nonzero_samples: s.gr3d.map(|g| g.nonzero_samples as u64),
        gr3d_samples: s.gr3d.map(|g| g.samples as u64),
        cpu_us_pct: range(s.cpu_us),
        cpu_sy_pct: range(s.cpu_sy),
        cpu_wa_pct: range(s.cpu_wa),
        free_mem_mb: s.free_kb.map(|f| {
            let inside: Vec<u64> = vm
                .iter()
                .filter(|p| p.wall_ms >= start_ms && p.wall_ms <= end_ms)
                .map(|p| p.free_kb)
                .collect();
            let mean_kb = inside.iter().sum::<u64>() as f64 / inside.len().max(1) as f64;
            ValueRange {
                min: f.min as f64 / 1024.0,
                mean: mean_kb / 1024.0,
                max: f.max as f64 / 1024.0,
            }
        }),
        rails: s
            .rails
            .iter()
            .filter_map(|r| {
                Some(RailEnergy {
                    rail: r.rail.clone(),
                    mean_mw: r.mean_mw?,
                    energy_mj: r.energy_mj?,
                })
            })
            .collect(),
    };
    Ok((Some(t), timeline))
}

/// Render a run's report in `format` (md, json or html; anything else gives Markdown).
pub fn render_report(data: &RunData, format: &str) -> String {
    use crate::experiment::{analysis, report};
    let a = analysis::analyze(data);
    match format {
        "json" => report::render_json(&a),
        "html" => report::render_html(&a, data),
        _ => report::render_markdown(&a),
    }
}
