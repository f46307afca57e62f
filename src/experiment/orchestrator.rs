//! Runs one experiment: its phases one after another, each with MPS in the state the phase
//! needs (freshly started for MPS-on phases, stopped for MPS-off ones), telemetry tagged with
//! the phase, worker CPU/RSS sampled, and every result persisted as it arrives.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch, Mutex};
use tokio_util::sync::CancellationToken;

use crate::config::{
    Config, ExperimentConfig, ExperimentKind, FailurePolicy, ModelConfig, Provider,
};
use crate::experiment::phase::{self, PhaseProgress, PhaseSpec, WorkerSpec};
use crate::experiment::plan::{mode_str, PhasePlan, Plan};
use crate::mps::{worker_env, MpsClientMode, MpsManager, MpsState};
use crate::store::{
    EventRow, IterationRow, NewPhase, PhaseEnd, PhaseModelRow, ProcRow, Tag, WriteOp, WriterHandle,
};
use crate::telemetry::procstat;

/// Live progress of the active run, for D-Bus and `mpslabctl status`.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct RunProgress {
    pub run_id: u64,
    /// 1-based index of the running phase.
    pub phase: u32,
    pub phases: u32,
    pub label: String,
    /// Measured iterations so far in this phase, summed over its workers.
    pub iterations: u64,
    /// What the phase needs, summed over its workers.
    pub target: u64,
}

/// What the orchestrator tells the daemon as it goes, for D-Bus signals.
#[derive(Debug, Clone, PartialEq)]
pub enum RunSignal {
    Phase {
        run_id: u64,
        phase: u32,
        phases: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// completed | failed | cancelled
    pub status: String,
    pub error: Option<String>,
}

/// Everything a run needs from the daemon; shared by all runs.
pub struct Runner {
    pub writer: WriterHandle,
    pub mps: Arc<Mutex<MpsManager>>,
    pub telemetry_tag: watch::Sender<Tag>,
    pub telemetry_enabled: watch::Sender<bool>,
    pub progress: watch::Sender<Option<RunProgress>>,
    pub signals: mpsc::UnboundedSender<RunSignal>,
    pub worker_bin: PathBuf,
}

/// Arguments that make `mpslab-worker` run `model` as configured.
pub fn worker_args(cfg: &Config, model: &ModelConfig) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--ort-lib".into(),
        cfg.runtime.onnxruntime_path.clone().into(),
        "--model".into(),
        model.path.clone().into(),
        "--provider".into(),
        cfg.runtime.provider.to_string().into(),
        "--threads".into(),
        model
            .intra_threads
            .unwrap_or(cfg.runtime.intra_threads)
            .to_string()
            .into(),
    ];
    for (k, v) in &model.dims {
        args.push("--dim".into());
        args.push(format!("{k}={v}").into());
    }
    if cfg.runtime.provider == Provider::Tensorrt {
        args.push("--trt-engine-cache".into());
        args.push(cfg.daemon.state_dir.join("trt-cache").into());
        if cfg.runtime.trt_fp16 {
            args.push("--trt-fp16".into());
        }
    }
    args
}

/// Extra arguments that make a worker walk `model`'s dataset in a validation experiment.
/// `images` caps the images (the experiment's `iterations`).
pub fn validation_args(model: &ModelConfig, images: Option<u64>) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let Some(dataset) = &model.dataset else {
        return args;
    };
    let v = &model.val;
    args.extend([
        "--task".into(),
        model.task.as_str().into(),
        "--dataset".into(),
        dataset.clone().into(),
        "--split".into(),
        model.split.clone().into(),
        "--conf".into(),
        v.conf.to_string().into(),
        "--iou".into(),
        v.iou.to_string().into(),
        "--max-det".into(),
        v.max_det.to_string().into(),
        "--report-conf".into(),
        v.report_conf.to_string().into(),
    ]);
    if let Some(n) = images {
        args.push("--iterations".into());
        args.push(n.to_string().into());
    }
    args
}

fn label(p: &PhasePlan) -> String {
    format!(
        "{} mps={} sampling={} repeat={} [{}]",
        mode_str(p.mode),
        p.mps.as_str(),
        if p.sampling { "on" } else { "off" },
        p.repeat + 1,
        p.models.join(",")
    )
}

impl Runner {
    /// Run every phase of `plan`. Never panics; failures end up in the outcome and the store.
    pub async fn execute(
        &self,
        cfg: Arc<Config>,
        run_id: i64,
        exp: &ExperimentConfig,
        plan: &Plan,
        cancel: CancellationToken,
    ) -> RunOutcome {
        let phases = plan.phases.len() as u32;
        let mut failed: Vec<String> = Vec::new();
        let mut outcome = None;
        for p in &plan.phases {
            if cancel.is_cancelled() {
                outcome = Some(cancelled());
                break;
            }
            let _ = self.signals.send(RunSignal::Phase {
                run_id: run_id as u64,
                phase: p.idx + 1,
                phases,
            });
            self.progress.send_replace(Some(RunProgress {
                run_id: run_id as u64,
                phase: p.idx + 1,
                phases,
                label: label(p),
                iterations: 0,
                target: exp.iterations.unwrap_or(0) * p.models.len() as u64,
            }));
            match self.run_phase(&cfg, run_id, exp, p, &cancel).await {
                Ok(()) => {}
                Err(PhaseFailure::Cancelled) => {
                    outcome = Some(cancelled());
                    break;
                }
                Err(PhaseFailure::Failed(why)) => {
                    failed.push(format!("phase {} ({}): {why}", p.idx + 1, label(p)));
                    if exp.on_failure == FailurePolicy::Abort {
                        break;
                    }
                }
            }
            if exp.cooldown_s > 0 && p.idx + 1 < phases {
                tokio::select! {
                    _ = cancel.cancelled() => { outcome = Some(cancelled()); break; }
                    _ = tokio::time::sleep(Duration::from_secs(exp.cooldown_s)) => {}
                }
            }
        }
        // Leave MPS as the run found it: stopped.
        if plan.needs_mps() {
            let mut mps = self.mps.lock().await;
            if matches!(
                mps.status().state,
                MpsState::Running | MpsState::Failed | MpsState::Starting
            ) {
                if let Err(e) = mps.stop().await {
                    tracing::warn!(run_id, error = %e, "stopping MPS after the run failed");
                }
            }
        }
        self.telemetry_tag.send_replace(Tag::default());
        self.telemetry_enabled.send_replace(true);
        self.progress.send_replace(None);
        outcome.unwrap_or_else(|| {
            if failed.is_empty() {
                RunOutcome {
                    status: "completed".into(),
                    error: None,
                }
            } else {
                RunOutcome {
                    status: "failed".into(),
                    error: Some(failed.join("; ")),
                }
            }
        })
    }

    async fn prepare_mps(&self, p: &PhasePlan) -> Result<MpsClientMode, String> {
        let mut mps = self.mps.lock().await;
        let state = mps.status().state;
        if p.mps.needs_mps() {
            // Every MPS phase gets a fresh control daemon, so one phase's faults or leftover
            // clients cannot colour the next.
            if matches!(
                state,
                MpsState::Running | MpsState::Failed | MpsState::Starting
            ) {
                mps.stop()
                    .await
                    .map_err(|e| format!("stopping MPS before the phase: {e}"))?;
            }
            mps.probe().await.map_err(|e| format!("MPS probe: {e}"))?;
            mps.start()
                .await
                .map_err(|e| format!("starting MPS: {e}"))?;
            Ok(mps.client_mode(None))
        } else {
            if matches!(
                state,
                MpsState::Running | MpsState::Failed | MpsState::Starting
            ) {
                mps.stop()
                    .await
                    .map_err(|e| format!("stopping MPS for an MPS-off phase: {e}"))?;
            }
            Ok(MpsClientMode::Off)
        }
    }

    async fn run_phase(
        &self,
        cfg: &Config,
        run_id: i64,
        exp: &ExperimentConfig,
        p: &PhasePlan,
        cancel: &CancellationToken,
    ) -> Result<(), PhaseFailure> {
        let phase_id = self
            .writer
            .create_phase(NewPhase {
                run_id,
                idx: p.idx,
                mode: mode_str(p.mode).into(),
                mps: p.mps.as_str().into(),
                sampling: p.sampling,
                repeat: p.repeat,
                models: p.models.clone(),
            })
            .await
            .map_err(|e| PhaseFailure::Failed(format!("cannot record the phase: {e}")))?;
        let span = tracing::info_span!("phase", run_id, phase = p.idx + 1);
        let _enter = span.enter();
        tracing::info!(label = %label(p), "phase starting");
        let tag = Tag {
            run_id: Some(run_id),
            phase_id: Some(phase_id),
        };

        let end = |status: &str, error: Option<String>| PhaseEnd {
            phase_id,
            status: status.into(),
            error,
            ..PhaseEnd::default()
        };
        let mps_mode = match self.prepare_mps(p).await {
            Ok(m) => m,
            Err(why) => {
                let _ = self
                    .writer
                    .send(WriteOp::EndPhase(end("failed", Some(why.clone()))))
                    .await;
                return Err(PhaseFailure::Failed(why));
            }
        };

        let base_env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        let mut workers = Vec::new();
        for name in &p.models {
            let Some(model) = cfg.model(name) else {
                let why = format!("model `{name}` is no longer configured");
                let _ = self
                    .writer
                    .send(WriteOp::EndPhase(end("failed", Some(why.clone()))))
                    .await;
                return Err(PhaseFailure::Failed(why));
            };
            let mode = if p.mps_models.contains(name) {
                mps_mode.clone()
            } else {
                MpsClientMode::Off
            };
            workers.push(WorkerSpec {
                model: name.clone(),
                worker_bin: self.worker_bin.clone(),
                args: match exp.kind {
                    ExperimentKind::Latency => worker_args(cfg, model),
                    ExperimentKind::Validation => {
                        let mut args = worker_args(cfg, model);
                        args.extend(validation_args(model, exp.iterations));
                        args
                    }
                },
                env: worker_env(base_env.clone(), &mode),
            });
        }

        self.telemetry_tag.send_replace(tag);
        self.telemetry_enabled.send_replace(p.sampling);
        let (progress_tx, progress_rx) = watch::channel(PhaseProgress::default());
        let spec = PhaseSpec {
            workers,
            iterations: exp.iterations.unwrap_or(500),
            warmup: exp.warmup,
            load_timeout: Duration::from_secs(300),
            phase_timeout: Duration::from_secs(exp.phase_timeout_s),
            stall_timeout: Duration::from_secs(60),
            progress: Some(progress_tx),
            self_paced: exp.kind == ExperimentKind::Validation,
        };
        let sampler_stop = CancellationToken::new();
        let proc_task = tokio::spawn(sample_workers(
            progress_rx.clone(),
            self.writer.clone(),
            tag,
            cfg.telemetry.proc_root.clone(),
            sampler_stop.clone(),
        ));
        let progress_task = tokio::spawn(forward_progress(
            progress_rx,
            self.progress.clone(),
            sampler_stop.clone(),
        ));
        let outcome = phase::run_phase(spec, cancel.child_token()).await;
        sampler_stop.cancel();
        let proc_stats = proc_task.await.unwrap_or_default();
        let _ = progress_task.await;
        self.telemetry_tag.send_replace(Tag {
            run_id: Some(run_id),
            phase_id: None,
        });

        for w in &outcome.workers {
            // Stages arrive in the same batches as their records, so indexes line up.
            let stages: std::collections::HashMap<u64, &crate::experiment::protocol::Stage> =
                w.stages.iter().map(|st| (st.index, st)).collect();
            let rows: Vec<IterationRow> = w
                .records
                .iter()
                .map(|r| IterationRow {
                    idx: r.index,
                    start_ns: r.start_ns,
                    dur_ns: r.duration_ns,
                    // A validation pass scores every image once, so every image counts.
                    in_window: exp.kind == ExperimentKind::Validation
                        || outcome.window.map(|win| win.contains(r)).unwrap_or(false),
                    stages: stages
                        .get(&r.index)
                        .map(|st| (st.pre_ns, st.infer_ns, st.post_ns)),
                })
                .collect();
            if !rows.is_empty() {
                let _ = self
                    .writer
                    .send(WriteOp::Iterations {
                        phase_id,
                        model: w.model.clone(),
                        rows,
                    })
                    .await;
            }
            let stats = proc_stats.get(&w.model);
            let digest = (!w.digests.is_empty()).then(|| {
                w.digests
                    .iter()
                    .map(|d| d.sha256.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            });
            let _ = self
                .writer
                .send(WriteOp::PhaseModel(PhaseModelRow {
                    phase_id,
                    model: w.model.clone(),
                    status: if w.error.is_none() {
                        "ok".into()
                    } else {
                        "failed".into()
                    },
                    pid: w.pid.map(|p| p as i32),
                    exit_status: w.exit_status.map(|s| s.to_string()),
                    digest,
                    digest_values: serde_json::to_string(&w.digests).ok(),
                    cpu_pct_avg: stats.and_then(|s| s.cpu_avg()),
                    cpu_pct_max: stats.and_then(|s| s.cpu_max),
                    rss_kb_max: stats.map(|s| s.rss_max_kb as i64),
                    error: w.error.clone(),
                    stderr_tail: (!w.stderr_tail.is_empty()).then(|| w.stderr_tail.clone()),
                    validation: w
                        .validation
                        .as_ref()
                        .and_then(|v| serde_json::to_string(v).ok()),
                }))
                .await;
        }
        let status = match (&outcome.error, cancel.is_cancelled()) {
            (_, true) => "cancelled",
            (None, false) => "completed",
            (Some(_), false) => "failed",
        };
        let error = outcome.error.as_ref().map(|e| e.to_string());
        let _ = self
            .writer
            .send(WriteOp::EndPhase(PhaseEnd {
                phase_id,
                status: status.into(),
                window_start_ns: outcome.window.map(|w| w.start_ns),
                window_end_ns: outcome.window.map(|w| w.end_ns),
                barrier_skew_ns: outcome.barrier_skew_ns,
                error: error.clone(),
            }))
            .await;
        match (status, error) {
            ("cancelled", _) => Err(PhaseFailure::Cancelled),
            ("completed", _) => {
                tracing::info!(
                    skew_us = outcome.barrier_skew_ns.map(|n| n / 1000),
                    "phase completed"
                );
                Ok(())
            }
            (_, why) => {
                let why = why.unwrap_or_else(|| "phase failed".into());
                tracing::warn!(error = %why, "phase failed");
                let mut ev = EventRow::new("experiment", "phase_failed", why.clone());
                ev.run_id = Some(run_id);
                ev.phase_id = Some(phase_id);
                self.writer.event(ev).await;
                Err(PhaseFailure::Failed(why))
            }
        }
    }
}

fn cancelled() -> RunOutcome {
    RunOutcome {
        status: "cancelled".into(),
        error: Some("cancelled on request".into()),
    }
}

enum PhaseFailure {
    Cancelled,
    Failed(String),
}

#[derive(Debug, Default, Clone)]
struct ProcStats {
    cpu_sum: f64,
    cpu_n: u32,
    cpu_max: Option<f64>,
    rss_max_kb: u64,
}

impl ProcStats {
    fn cpu_avg(&self) -> Option<f64> {
        (self.cpu_n > 0).then(|| self.cpu_sum / self.cpu_n as f64)
    }
}

/// Sample each worker's CPU % and RSS once a second while the phase runs.
async fn sample_workers(
    progress: watch::Receiver<PhaseProgress>,
    writer: WriterHandle,
    tag: Tag,
    proc_root: PathBuf,
    stop: CancellationToken,
) -> BTreeMap<String, ProcStats> {
    let hz = crate::telemetry::vmstat::clock_ticks_per_sec();
    let mut prev: BTreeMap<u32, procstat::ProcSample> = BTreeMap::new();
    let mut stats: BTreeMap<String, ProcStats> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return stats,
            _ = tick.tick() => {}
        }
        let workers: Vec<(String, u32)> = progress
            .borrow()
            .workers
            .iter()
            .filter(|w| w.running)
            .filter_map(|w| w.pid.map(|p| (w.model.clone(), p)))
            .collect();
        let root = proc_root.clone();
        let pids: Vec<u32> = workers.iter().map(|w| w.1).collect();
        let samples = tokio::task::spawn_blocking(move || {
            pids.into_iter()
                .map(|pid| (pid, procstat::sample(pid as i32, &root).ok()))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for ((model, pid), (_, sample)) in workers.iter().zip(samples) {
            let Some(cur) = sample else { continue };
            let cpu = prev
                .get(pid)
                .and_then(|p| procstat::cpu_percent(p, &cur, hz));
            let entry = stats.entry(model.clone()).or_default();
            if let Some(c) = cpu {
                entry.cpu_sum += c;
                entry.cpu_n += 1;
                entry.cpu_max = Some(entry.cpu_max.map_or(c, |m: f64| m.max(c)));
            }
            entry.rss_max_kb = entry.rss_max_kb.max(cur.rss_kb);
            writer.sample(WriteOp::Proc(ProcRow {
                wall_ms: crate::store::now_ms(),
                tag,
                model: model.clone(),
                pid: *pid as i32,
                cpu_pct: cpu,
                rss_kb: Some(cur.rss_kb as i64),
            }));
            prev.insert(*pid, cur);
        }
    }
}

async fn forward_progress(
    mut rx: watch::Receiver<PhaseProgress>,
    tx: watch::Sender<Option<RunProgress>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = rx.changed() => if r.is_err() { return; },
        }
        let done: u64 = rx
            .borrow_and_update()
            .workers
            .iter()
            .map(|w| w.iterations)
            .sum();
        tx.send_modify(|p| {
            if let Some(p) = p {
                p.iterations = done;
            }
        });
    }
}
