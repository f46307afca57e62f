//! Runs the samplers and routes what they read into the store, tagged with the run and phase
//! that is active at that moment. Phases with `sampling = off` stop the samplers entirely
//! (the tegrastats child too), so the overhead measurement compares against no sampling at all.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::TelemetryConfig;
use crate::store::{EventRow, Tag, TegraRow, VmstatRowRecord, WriteOp, WriterHandle};
use crate::telemetry::tegrastats::TegraSample;
use crate::telemetry::tegrastats_sampler::{
    self, SamplerEventKind, TegraReading, TegraSamplerConfig,
};
use crate::telemetry::vmstat::{self, VmstatReading};

/// Rails that measure the whole board's input power, in the order tegrastats names them across
/// L4T releases; the first present is the "total" power of a sample.
pub const INPUT_RAILS: &[&str] = &["VDD_IN", "POM_5V_IN", "VIN_SYS_5V0", "VDD_IN_TOTAL"];

/// Total input power of a sample in mW, when the board reports one.
pub fn input_power_mw(s: &TegraSample) -> Option<f64> {
    let rails: BTreeMap<&str, u64> = s.rails_mw().collect();
    INPUT_RAILS
        .iter()
        .find_map(|name| rails.get(name).map(|v| *v as f64))
}

/// The store row for one tegrastats reading.
pub fn tegra_row(r: &TegraReading, tag: Tag) -> TegraRow {
    let (parsed_json, parse_error, gr3d, emc, ram, power) = match &r.parsed {
        Ok(s) => (
            serde_json::to_string(s).ok(),
            None,
            s.gr3d_load_pct(),
            s.emc_load_pct(),
            serde_json::to_value(s)
                .ok()
                .and_then(|v| v.pointer("/ram/used_mb").and_then(|x| x.as_i64())),
            input_power_mw(s),
        ),
        Err(e) => (None, Some(e.to_string()), None, None, None, None),
    };
    TegraRow {
        mono_ns: r.mono_ns,
        wall_ms: r.wall_ms,
        tag,
        raw: r.raw.clone(),
        parsed_json,
        parse_error,
        gr3d_pct: gr3d,
        emc_pct: emc,
        ram_used_mb: ram,
        power_mw: power,
    }
}

pub fn vmstat_row(r: &VmstatReading, tag: Tag) -> VmstatRowRecord {
    VmstatRowRecord {
        mono_ns: r.mono_ns,
        wall_ms: r.wall_ms,
        tag,
        raw_json: serde_json::to_string(&r.raw).unwrap_or_else(|_| "{}".into()),
        row_json: serde_json::to_string(&r.row).unwrap_or_else(|_| "{}".into()),
        us: r.row.us as f64,
        sy: r.row.sy as f64,
        idle: r.row.id as f64,
        wa: r.row.wa as f64,
        free_kb: r.row.free as i64,
    }
}

/// Sampler states by name ("tegrastats", "vmstat"), as D-Bus `Samplers` shows them.
pub type SamplerStates = BTreeMap<String, String>;

/// Handles the daemon keeps to steer telemetry.
pub struct Hub {
    /// The run/phase that new samples belong to.
    pub tag: watch::Sender<Tag>,
    /// Whether sampling runs (false during `sampling = off` phases).
    pub enabled: watch::Sender<bool>,
    /// Configuration changes (reload) restart the samplers with new paths and intervals.
    pub config: watch::Sender<TelemetryConfig>,
    pub states: watch::Receiver<SamplerStates>,
    /// Samples lost because the samplers' channels were full.
    pub dropped: Arc<AtomicU64>,
}

/// Start telemetry: supervises both samplers until `cancel`, restarting them when enabled or
/// reconfigured.
pub fn spawn(
    cfg: TelemetryConfig,
    writer: WriterHandle,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Hub {
    let (tag_tx, tag_rx) = watch::channel(Tag::default());
    let (enabled_tx, enabled_rx) = watch::channel(true);
    let (config_tx, config_rx) = watch::channel(cfg);
    let (states_tx, states_rx) = watch::channel(SamplerStates::new());
    let dropped = Arc::new(AtomicU64::new(0));
    tracker.spawn(supervise(
        writer,
        tag_rx,
        enabled_rx,
        config_rx,
        states_tx,
        dropped.clone(),
        cancel,
    ));
    Hub {
        tag: tag_tx,
        enabled: enabled_tx,
        config: config_tx,
        states: states_rx,
        dropped,
    }
}

async fn supervise(
    writer: WriterHandle,
    tag: watch::Receiver<Tag>,
    mut enabled: watch::Receiver<bool>,
    mut config: watch::Receiver<TelemetryConfig>,
    states: watch::Sender<SamplerStates>,
    dropped: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    loop {
        let on = *enabled.borrow_and_update();
        let cfg = config.borrow_and_update().clone();
        let round = cancel.child_token();
        let tasks = TaskTracker::new();
        if on {
            start_round(&cfg, &writer, &tag, &states, &dropped, &tasks, &round);
        } else {
            states.send_modify(|s| {
                s.insert("tegrastats".into(), "stopped".into());
                s.insert("vmstat".into(), "stopped".into());
            });
        }
        tasks.close();
        tokio::select! {
            _ = cancel.cancelled() => {}
            r = enabled.changed() => { if r.is_err() { cancel.cancel(); } }
            r = config.changed() => { if r.is_err() { cancel.cancel(); } }
        }
        round.cancel();
        // The tegrastats child is killed and reaped before a new one may start.
        if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("telemetry tasks did not stop within 5 s");
        }
        if cancel.is_cancelled() {
            states.send_modify(|s| {
                s.insert("tegrastats".into(), "stopped".into());
                s.insert("vmstat".into(), "stopped".into());
            });
            return;
        }
    }
}

fn start_round(
    cfg: &TelemetryConfig,
    writer: &WriterHandle,
    tag: &watch::Receiver<Tag>,
    states: &watch::Sender<SamplerStates>,
    dropped: &Arc<AtomicU64>,
    tasks: &TaskTracker,
    round: &CancellationToken,
) {
    // tegrastats
    let (reading_tx, mut reading_rx) = mpsc::channel::<TegraReading>(256);
    let (event_tx, mut event_rx) = mpsc::channel(64);
    let handle = tegrastats_sampler::spawn(
        TegraSamplerConfig::new(cfg.tegrastats_path.clone(), cfg.tegrastats_interval_ms),
        reading_tx,
        event_tx,
        round.clone(),
    );
    let mut tegra_state = handle.state.clone();
    let tegra_dropped = handle.dropped_readings_counter();
    tasks.spawn(async move {
        // Keep the handle alive for as long as the sampler runs.
        let _ = handle.join.await;
    });
    {
        let (writer, tag, dropped) = (writer.clone(), tag.clone(), dropped.clone());
        tasks.spawn(async move {
            while let Some(r) = reading_rx.recv().await {
                writer.sample(WriteOp::Tegra(tegra_row(&r, *tag.borrow())));
            }
            dropped.fetch_add(tegra_dropped.load(Ordering::Relaxed), Ordering::Relaxed);
        });
    }
    {
        let (writer, tag) = (writer.clone(), tag.clone());
        tasks.spawn(async move {
            while let Some(ev) = event_rx.recv().await {
                let kind = format!("{:?}", ev.kind).to_lowercase();
                let mut message = ev.message.clone();
                if let Some(gap) = ev.gap_ms {
                    message.push_str(&format!(" (gap {gap} ms)"));
                }
                match ev.kind {
                    SamplerEventKind::Started | SamplerEventKind::Stopped => {
                        tracing::info!(sampler = "tegrastats", "{message}")
                    }
                    _ => tracing::warn!(sampler = "tegrastats", "{message}"),
                }
                let t = *tag.borrow();
                let mut row = EventRow::new("tegrastats", &kind, message);
                row.run_id = t.run_id;
                row.phase_id = t.phase_id;
                writer.event(row).await;
            }
        });
    }
    {
        let states = states.clone();
        let round = round.clone();
        tasks.spawn(async move {
            loop {
                let s = tegra_state.borrow_and_update().to_string();
                states.send_modify(|m| {
                    m.insert("tegrastats".into(), s);
                });
                tokio::select! {
                    _ = round.cancelled() => return,
                    r = tegra_state.changed() => if r.is_err() { return; },
                }
            }
        });
    }

    // vmstat
    let (vm_tx, mut vm_rx) = mpsc::channel::<VmstatReading>(64);
    let proc_root: PathBuf = cfg.proc_root.clone();
    let interval = Duration::from_millis(cfg.vmstat_interval_ms);
    tasks.spawn(vmstat::run_sampler(
        proc_root,
        interval,
        vm_tx,
        round.clone(),
        dropped.clone(),
    ));
    states.send_modify(|m| {
        m.insert("vmstat".into(), "running".into());
    });
    {
        let (writer, tag) = (writer.clone(), tag.clone());
        tasks.spawn(async move {
            while let Some(r) = vm_rx.recv().await {
                writer.sample(WriteOp::Vmstat(vmstat_row(&r, *tag.borrow())));
            }
        });
    }
}
