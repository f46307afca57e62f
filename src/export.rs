//! Fleet export: the daemon's state, the newest telemetry and the last completed run's results
//! as a Prometheus node-exporter textfile (`[export] textfile = "/var/lib/node_exporter/mpslab.prom"`).
//!
//! The file is replaced atomically (temp file in the same directory, fsync, rename), rewritten
//! shortly after the daemon's status changes and at least every 15 s, and carries
//! `mpslab_up 0` after a clean shutdown. Stale files are visible through node-exporter's own
//! `node_textfile_mtime_seconds`.
//!
//! | Metric | Type | Labels | Meaning |
//! |---|---|---|---|
//! | `mpslab_up` | gauge | | 1 while mpslabd runs, 0 after it stopped cleanly |
//! | `mpslab_info` | gauge | `version` | always 1; the daemon's version |
//! | `mpslab_mps_state` | gauge | `state` | 1 for the current MPS state, 0 for the others (`unavailable`, `stopped`, `starting`, `running`, `stopping`, `failed`) |
//! | `mpslab_sampler_up` | gauge | `sampler`, `state` | 1 when the sampler is `running`, else 0; `state` is its current state |
//! | `mpslab_dropped_samples_total` | counter | | telemetry samples lost since the daemon started |
//! | `mpslab_active_run_id` | gauge | | id of the run in progress, 0 when idle |
//! | `mpslab_active_run_phase` | gauge | | 1-based phase of the run in progress (only while one runs) |
//! | `mpslab_active_run_phases` | gauge | | phases of the run in progress (only while one runs) |
//! | `mpslab_queue_length` | gauge | | runs waiting to start |
//! | `mpslab_gr3d_load_percent` | gauge | | GPU (GR3D) load of the newest tegrastats sample |
//! | `mpslab_emc_load_percent` | gauge | | memory controller (EMC) load of the newest tegrastats sample |
//! | `mpslab_ram_used_megabytes` | gauge | | RAM in use, newest tegrastats sample |
//! | `mpslab_rail_power_milliwatts` | gauge | `rail` | instantaneous power per rail, newest tegrastats sample |
//! | `mpslab_cpu_percent` | gauge | `mode` (`us`, `sy`, `wa`, `id`) | CPU time split, newest vmstat sample |
//! | `mpslab_memory_free_kilobytes` | gauge | | free memory, newest vmstat sample |
//! | `mpslab_telemetry_sample_timestamp_seconds` | gauge | `source` (`tegrastats`, `vmstat`) | Unix time of the newest stored sample |
//! | `mpslab_last_run_id` | gauge | | id of the newest completed run |
//! | `mpslab_last_run_info` | gauge | `experiment` | always 1; the experiment of the newest completed run |
//! | `mpslab_last_run_finished_timestamp_seconds` | gauge | | Unix time it finished |
//! | `mpslab_last_run_latency_seconds` | gauge | `model`, `mode` (`alone`, `together`, `mixed`), `mps` (`off`, `on`, `on-for-A+B`), `quantile` (`0.5`, `0.9`, `0.99`) | per-model inference latency quantiles per condition (the run's primary sampling setting) |
//! | `mpslab_last_run_mps_effect_ratio` | gauge | `model` | together-latency with MPS off / with MPS on (above 1: MPS made the model faster) |

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::daemon::Status;
use crate::experiment::analysis::{self, Analysis, Mode, MpsSetting};
use crate::experiment::rundata;
use crate::store::{Reader, StoreError};

/// Longest time between two rewrites, so the file's mtime shows the daemon is alive.
pub const REFRESH: Duration = Duration::from_secs(15);
/// Status changes closer together than this are written once.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// The MPS states `mpslab_mps_state` is one-hot over.
pub const MPS_STATES: [&str; 6] = [
    "unavailable",
    "stopped",
    "starting",
    "running",
    "stopping",
    "failed",
];

/// The newest stored tegrastats sample that parsed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TegraLatest {
    pub wall_ms: i64,
    pub gr3d_pct: Option<f64>,
    pub emc_pct: Option<f64>,
    pub ram_used_mb: Option<i64>,
    /// Instantaneous power per rail, mW, in the order tegrastats printed them.
    pub rails_mw: Vec<(String, f64)>,
}

/// The newest stored vmstat sample.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VmstatLatest {
    pub wall_ms: i64,
    pub us: Option<f64>,
    pub sy: Option<f64>,
    pub wa: Option<f64>,
    pub idle: Option<f64>,
    pub free_kb: Option<i64>,
}

/// The newest telemetry in the store; a source that has never produced a sample is `None`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LatestTelemetry {
    pub tegrastats: Option<TegraLatest>,
    pub vmstat: Option<VmstatLatest>,
}

/// Latency quantiles of one model under one condition, seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyQuantiles {
    pub model: String,
    pub mode: String,
    pub mps: String,
    pub p50_s: f64,
    pub p90_s: f64,
    pub p99_s: f64,
}

/// What the textfile says about the newest completed run.
#[derive(Debug, Clone, PartialEq)]
pub struct LastRun {
    pub run_id: u64,
    pub experiment: String,
    pub finished_unix_ms: Option<i64>,
    pub latencies: Vec<LatencyQuantiles>,
    /// `(model, MPS-off mean / MPS-on mean)` of the together phases.
    pub mps_effect: Vec<(String, f64)>,
}

fn mode_label(m: Mode) -> &'static str {
    match m {
        Mode::Alone => "alone",
        Mode::Together => "together",
        Mode::Mixed => "mixed",
    }
}

fn mps_label(m: &MpsSetting) -> String {
    match m {
        MpsSetting::Off => "off".to_string(),
        MpsSetting::On => "on".to_string(),
        MpsSetting::Mixed { on_models } => format!("on-for-{}", on_models.join("+")),
    }
}

impl LastRun {
    /// The exported subset of an analysis: cells of the run's primary sampling setting (so each
    /// model, mode and MPS setting appears once) and the seed-style MPS table.
    pub fn from_analysis(a: &Analysis) -> LastRun {
        let mut latencies = Vec::new();
        for cell in &a.cells {
            let Some(cond) = a.condition(&cell.condition) else {
                continue;
            };
            if cond.sampling != a.primary_sampling || cell.stats.n == 0 {
                continue;
            }
            latencies.push(LatencyQuantiles {
                model: cell.model.clone(),
                mode: mode_label(cond.mode).to_string(),
                mps: mps_label(&cond.mps),
                p50_s: cell.stats.p50_ms / 1000.0,
                p90_s: cell.stats.p90_ms / 1000.0,
                p99_s: cell.stats.p99_ms / 1000.0,
            });
        }
        let mps_effect = a
            .mps_table
            .iter()
            .filter(|r| r.mps_on_mean_ms > 0.0)
            .map(|r| (r.model.clone(), r.mps_off_mean_ms / r.mps_on_mean_ms))
            .filter(|(_, ratio)| ratio.is_finite())
            .collect();
        LastRun {
            run_id: a.run_id,
            experiment: a.experiment.clone(),
            finished_unix_ms: a.finished_unix_ms,
            latencies,
            mps_effect,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering (pure)
// ---------------------------------------------------------------------------------------------

/// Escapes a label value: backslash, double quote and newline.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes HELP text: backslash and newline.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as the exposition format spells it (`NaN`, `+Inf`, `-Inf`).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        // `{}` on f64 is the shortest text that round-trips, and never uses an exponent
        // Prometheus cannot read.
        format!("{v}")
    }
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<(String, String)>,
    seen: BTreeSet<String>,
}

/// Collects families in order; a family without samples is left out, and a repeated label set
/// keeps its first value, so the output never holds a duplicate series.
#[derive(Default)]
struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    fn family(&mut self, name: &'static str, kind: &'static str, help: &'static str) -> usize {
        self.families.push(Family {
            name,
            help,
            kind,
            samples: Vec::new(),
            seen: BTreeSet::new(),
        });
        self.families.len() - 1
    }

    fn sample(&mut self, family: usize, labels: &[(&str, &str)], value: f64) {
        let f = &mut self.families[family];
        let labels = if labels.is_empty() {
            String::new()
        } else {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        };
        if f.seen.insert(labels.clone()) {
            f.samples.push((labels, format_value(value)));
        }
    }

    fn single(&mut self, name: &'static str, kind: &'static str, help: &'static str, v: f64) {
        let f = self.family(name, kind, help);
        self.sample(f, &[], v);
    }

    fn finish(self) -> String {
        let mut out = String::new();
        for f in self.families.iter().filter(|f| !f.samples.is_empty()) {
            let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(f.help));
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
            for (labels, value) in &f.samples {
                let _ = writeln!(out, "{}{labels} {value}", f.name);
            }
        }
        out
    }
}

/// The textfile for a running daemon.
pub fn render(status: &Status, latest: &LatestTelemetry, last_run: Option<&LastRun>) -> String {
    render_with(true, status, latest, last_run)
}

/// The textfile; `up` is false for the file left behind after a clean shutdown.
pub fn render_with(
    up: bool,
    status: &Status,
    latest: &LatestTelemetry,
    last_run: Option<&LastRun>,
) -> String {
    let mut e = Exposition::default();
    e.single(
        "mpslab_up",
        "gauge",
        "1 while mpslabd runs, 0 after it stopped cleanly.",
        if up { 1.0 } else { 0.0 },
    );
    let info = e.family("mpslab_info", "gauge", "The daemon's version; always 1.");
    e.sample(info, &[("version", &status.version)], 1.0);

    let mps = e.family(
        "mpslab_mps_state",
        "gauge",
        "1 for the current CUDA MPS state, 0 for the others.",
    );
    for s in MPS_STATES {
        e.sample(
            mps,
            &[("state", s)],
            f64::from(u8::from(status.mps_state == s)),
        );
    }
    if !status.mps_state.is_empty() && !MPS_STATES.contains(&status.mps_state.as_str()) {
        // A state this exporter does not know still shows up rather than vanishing.
        e.sample(mps, &[("state", &status.mps_state)], 1.0);
    }

    let samplers = e.family(
        "mpslab_sampler_up",
        "gauge",
        "1 when the telemetry sampler is running, else 0; state is its current state.",
    );
    for (name, state) in &status.samplers {
        e.sample(
            samplers,
            &[("sampler", name), ("state", state)],
            f64::from(u8::from(state == "running")),
        );
    }
    e.single(
        "mpslab_dropped_samples_total",
        "counter",
        "Telemetry samples lost since the daemon started (disk too slow or full).",
        status.dropped_samples as f64,
    );
    e.single(
        "mpslab_active_run_id",
        "gauge",
        "Id of the run in progress, 0 when idle.",
        status.active_run as f64,
    );
    if let Some(p) = status.progress.as_ref().filter(|_| status.active_run != 0) {
        e.single(
            "mpslab_active_run_phase",
            "gauge",
            "1-based index of the phase the active run is in.",
            f64::from(p.phase),
        );
        e.single(
            "mpslab_active_run_phases",
            "gauge",
            "Number of phases of the active run.",
            f64::from(p.phases),
        );
    }
    e.single(
        "mpslab_queue_length",
        "gauge",
        "Runs waiting to start.",
        status.queue.len() as f64,
    );

    render_telemetry(&mut e, latest);
    if let Some(r) = last_run {
        render_last_run(&mut e, r);
    }
    e.finish()
}

fn render_telemetry(e: &mut Exposition, latest: &LatestTelemetry) {
    let gr3d = e.family(
        "mpslab_gr3d_load_percent",
        "gauge",
        "GPU (GR3D) load in the newest tegrastats sample.",
    );
    let emc = e.family(
        "mpslab_emc_load_percent",
        "gauge",
        "Memory controller (EMC) load in the newest tegrastats sample.",
    );
    let ram = e.family(
        "mpslab_ram_used_megabytes",
        "gauge",
        "RAM in use in the newest tegrastats sample.",
    );
    let rails = e.family(
        "mpslab_rail_power_milliwatts",
        "gauge",
        "Instantaneous power per rail in the newest tegrastats sample.",
    );
    let cpu = e.family(
        "mpslab_cpu_percent",
        "gauge",
        "CPU time split (vmstat us, sy, wa, id) in the newest vmstat sample.",
    );
    let free = e.family(
        "mpslab_memory_free_kilobytes",
        "gauge",
        "Free memory in the newest vmstat sample.",
    );
    let ts = e.family(
        "mpslab_telemetry_sample_timestamp_seconds",
        "gauge",
        "Unix time of the newest stored sample per telemetry source.",
    );
    if let Some(t) = &latest.tegrastats {
        if let Some(v) = t.gr3d_pct {
            e.sample(gr3d, &[], v);
        }
        if let Some(v) = t.emc_pct {
            e.sample(emc, &[], v);
        }
        if let Some(v) = t.ram_used_mb {
            e.sample(ram, &[], v as f64);
        }
        for (rail, mw) in &t.rails_mw {
            e.sample(rails, &[("rail", rail)], *mw);
        }
        e.sample(ts, &[("source", "tegrastats")], t.wall_ms as f64 / 1000.0);
    }
    if let Some(v) = &latest.vmstat {
        for (mode, value) in [("us", v.us), ("sy", v.sy), ("wa", v.wa), ("id", v.idle)] {
            if let Some(x) = value {
                e.sample(cpu, &[("mode", mode)], x);
            }
        }
        if let Some(kb) = v.free_kb {
            e.sample(free, &[], kb as f64);
        }
        e.sample(ts, &[("source", "vmstat")], v.wall_ms as f64 / 1000.0);
    }
}

fn render_last_run(e: &mut Exposition, r: &LastRun) {
    e.single(
        "mpslab_last_run_id",
        "gauge",
        "Id of the newest completed run.",
        r.run_id as f64,
    );
    let info = e.family(
        "mpslab_last_run_info",
        "gauge",
        "The experiment of the newest completed run; always 1.",
    );
    e.sample(info, &[("experiment", &r.experiment)], 1.0);
    if let Some(ms) = r.finished_unix_ms {
        e.single(
            "mpslab_last_run_finished_timestamp_seconds",
            "gauge",
            "Unix time the newest completed run finished.",
            ms as f64 / 1000.0,
        );
    }
    let lat = e.family(
        "mpslab_last_run_latency_seconds",
        "gauge",
        "Per-model inference latency quantiles per condition in the newest completed run.",
    );
    for l in &r.latencies {
        for (q, v) in [("0.5", l.p50_s), ("0.9", l.p90_s), ("0.99", l.p99_s)] {
            e.sample(
                lat,
                &[
                    ("model", &l.model),
                    ("mode", &l.mode),
                    ("mps", &l.mps),
                    ("quantile", q),
                ],
                v,
            );
        }
    }
    let eff = e.family(
        "mpslab_last_run_mps_effect_ratio",
        "gauge",
        "Together latency with MPS off divided by with MPS on (above 1: MPS made it faster).",
    );
    for (model, ratio) in &r.mps_effect {
        e.sample(eff, &[("model", model)], *ratio);
    }
}

// ---------------------------------------------------------------------------------------------
// Loading (SQLite)
// ---------------------------------------------------------------------------------------------

fn rails_of(parsed: &str) -> Vec<(String, f64)> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(parsed) else {
        return Vec::new();
    };
    let Some(rails) = v.get("rails").and_then(|r| r.as_object()) else {
        return Vec::new();
    };
    rails
        .iter()
        .filter_map(|(name, r)| Some((name.clone(), r.get("cur_mw")?.as_f64()?)))
        .collect()
}

/// The newest parsed tegrastats sample and the newest vmstat sample.
pub fn load_latest(conn: &Connection) -> Result<LatestTelemetry, StoreError> {
    let tegrastats = conn
        .query_row(
            "SELECT wall_ms, gr3d_pct, emc_pct, ram_used_mb, parsed FROM tegrastats_samples \
             WHERE parsed IS NOT NULL ORDER BY id DESC LIMIT 1",
            [],
            |r| {
                let parsed: String = r.get(4)?;
                Ok(TegraLatest {
                    wall_ms: r.get(0)?,
                    gr3d_pct: r.get(1)?,
                    emc_pct: r.get(2)?,
                    ram_used_mb: r.get(3)?,
                    rails_mw: rails_of(&parsed),
                })
            },
        )
        .optional()?;
    let vmstat = conn
        .query_row(
            "SELECT wall_ms, us, sy, wa, idle, free_kb FROM vmstat_samples ORDER BY id DESC LIMIT 1",
            [],
            |r| {
                Ok(VmstatLatest {
                    wall_ms: r.get(0)?,
                    us: r.get(1)?,
                    sy: r.get(2)?,
                    wa: r.get(3)?,
                    idle: r.get(4)?,
                    free_kb: r.get(5)?,
                })
            },
        )
        .optional()?;
    Ok(LatestTelemetry { tegrastats, vmstat })
}

/// Id of the most recently finished `completed` run.
pub fn newest_completed_run(conn: &Connection) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id FROM runs WHERE status='completed' \
             ORDER BY COALESCE(finished_ms, 0) DESC, id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?)
}

/// The newest completed run, analysed.
pub fn load_last_run(conn: &Connection) -> Result<Option<LastRun>, StoreError> {
    let Some(id) = newest_completed_run(conn)? else {
        return Ok(None);
    };
    let data = rundata::load(conn, id)?;
    Ok(Some(LastRun::from_analysis(&analysis::analyze(&data))))
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// Replaces `path` with `text` so that a reader sees the old file or the new one, never a part:
/// a temp file in the same directory (a rename is atomic only within one filesystem) is
/// written, fsynced and renamed over `path`, then the directory is fsynced. The temp name ends
/// in `.tmp`, which node-exporter (reading `*.prom`) ignores.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        // Readable by node-exporter, which usually runs as another user.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    // The rename itself survives a crash only once the directory is on disk.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The daemon task
// ---------------------------------------------------------------------------------------------

/// Cache of the last run's export, keyed by run id: a big run's analysis is not free, and it
/// only changes when another run completes.
#[derive(Default)]
struct LastRunCache {
    run_id: Option<i64>,
    export: Option<LastRun>,
}

#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("export task panicked")]
    Join,
}

async fn refresh_last_run(reader: &Reader, cache: &mut LastRunCache) -> Result<(), ExportError> {
    let newest = reader.with(newest_completed_run).await?;
    if newest == cache.run_id {
        return Ok(());
    }
    let export = match newest {
        None => None,
        Some(id) => {
            // Load with the shared reader, analyse off it, so D-Bus readers are not held up.
            let data = reader.with(move |c| rundata::load(c, id)).await?;
            let a = tokio::task::spawn_blocking(move || {
                LastRun::from_analysis(&analysis::analyze(&data))
            })
            .await
            .map_err(|_| ExportError::Join)?;
            Some(a)
        }
    };
    cache.run_id = newest;
    cache.export = export;
    Ok(())
}

async fn write_once(
    path: &Path,
    up: bool,
    status: &Status,
    reader: &Reader,
    cache: &mut LastRunCache,
) -> Result<(), ExportError> {
    refresh_last_run(reader, cache).await?;
    let latest = reader.with(load_latest).await?;
    let text = render_with(up, status, &latest, cache.export.as_ref());
    let target = path.to_path_buf();
    tokio::task::spawn_blocking(move || write_atomic(&target, &text))
        .await
        .map_err(|_| ExportError::Join)?
        .map_err(|source| ExportError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Keeps `export.textfile` current until `cancel`, then leaves it saying `mpslab_up 0`.
/// Does nothing while the setting is unset; a reload that sets, moves or unsets it takes effect
/// at once (the file written before is removed).
/// Errors are logged (once per distinct error) and retried at the next refresh.
pub async fn run(
    mut config: watch::Receiver<Arc<Config>>,
    mut status: watch::Receiver<Status>,
    reader: Reader,
    cancel: CancellationToken,
) {
    let mut cache = LastRunCache::default();
    let mut last_error: Option<String> = None;
    let mut config_open = true;
    let mut status_open = true;
    // The file this task last wrote: a reload that moves or unsets the setting removes it, so
    // node-exporter does not serve its frozen values forever.
    let mut written: Option<PathBuf> = None;
    loop {
        let path = config.borrow_and_update().export.textfile.clone();
        if let Some(old) = written.take_if(|old| Some(&*old) != path.as_ref()) {
            match tokio::fs::remove_file(&old).await {
                Ok(()) => tracing::info!("export: removed {} (setting changed)", old.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("export: cannot remove old {}: {e}", old.display()),
            }
        }
        let Some(path) = path else {
            if !config_open {
                // The setting can no longer change: nothing will ever be exported.
                cancel.cancelled().await;
                return;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = config.changed() => config_open = r.is_ok(),
            }
            continue;
        };

        let snapshot = status.borrow_and_update().clone();
        let outcome = write_once(&path, true, &snapshot, &reader, &mut cache).await;
        report(&path, outcome, &mut last_error);
        written = Some(path.clone());

        tokio::select! {
            _ = cancel.cancelled() => {
                let snapshot = status.borrow().clone();
                let outcome = write_once(&path, false, &snapshot, &reader, &mut cache).await;
                report(&path, outcome, &mut last_error);
                return;
            }
            r = config.changed(), if config_open => config_open = r.is_ok(),
            r = status.changed(), if status_open => {
                status_open = r.is_ok();
                // Coalesce a burst of changes (progress ticks) into one write.
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(DEBOUNCE) => {}
                }
            }
            _ = tokio::time::sleep(REFRESH) => {}
        }
    }
}

fn report(path: &Path, outcome: Result<(), ExportError>, last_error: &mut Option<String>) {
    match outcome {
        Ok(()) => {
            if last_error.take().is_some() {
                tracing::info!("export: writing {} works again", path.display());
            }
        }
        Err(e) => {
            let msg = format!("export textfile {}: {e}", path.display());
            if last_error.as_deref() != Some(msg.as_str()) {
                tracing::warn!("{msg}");
                *last_error = Some(msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn status() -> Status {
        Status {
            version: "0.1.0".into(),
            mps_state: "running".into(),
            mps_reason: String::new(),
            active_run: 7,
            queue: vec![8, 9],
            samplers: BTreeMap::from([
                ("tegrastats".to_string(), "restarting".to_string()),
                ("vmstat".to_string(), "running".to_string()),
            ]),
            config_sources: Vec::new(),
            progress: None,
            dropped_samples: 12,
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn daemon_state_series_by_value() {
        let text = render(&status(), &LatestTelemetry::default(), None);
        let l = lines(&text);
        for want in [
            "mpslab_up 1",
            "mpslab_info{version=\"0.1.0\"} 1",
            "mpslab_mps_state{state=\"running\"} 1",
            "mpslab_mps_state{state=\"stopped\"} 0",
            "mpslab_mps_state{state=\"failed\"} 0",
            "mpslab_sampler_up{sampler=\"tegrastats\",state=\"restarting\"} 0",
            "mpslab_sampler_up{sampler=\"vmstat\",state=\"running\"} 1",
            "mpslab_dropped_samples_total 12",
            "mpslab_active_run_id 7",
            "mpslab_queue_length 2",
        ] {
            assert!(l.contains(&want), "missing {want:?} in\n{text}");
        }
        assert_eq!(
            l.iter()
                .filter(|s| s.starts_with("mpslab_mps_state{"))
                .count(),
            6
        );
        assert!(text.contains("# TYPE mpslab_dropped_samples_total counter\n"));
        // No telemetry and no run: those families are absent, not empty.
        assert!(!text.contains("mpslab_gr3d_load_percent"));
        assert!(!text.contains("mpslab_last_run"));
        assert!(
            render_with(false, &status(), &LatestTelemetry::default(), None)
                .lines()
                .any(|l| l == "mpslab_up 0")
        );
    }

    #[test]
    fn telemetry_and_last_run_by_value() {
        let latest = LatestTelemetry {
            tegrastats: Some(TegraLatest {
                wall_ms: 1_700_000_000_500,
                gr3d_pct: Some(99.0),
                emc_pct: Some(12.5),
                ram_used_mb: Some(3210),
                rails_mw: vec![
                    ("VDD_IN".into(), 17946.0),
                    ("VDD_CPU_GPU_CV".into(), 4000.0),
                ],
            }),
            vmstat: Some(VmstatLatest {
                wall_ms: 1_700_000_001_000,
                us: Some(40.0),
                sy: Some(5.0),
                wa: Some(0.0),
                idle: Some(55.0),
                free_kb: Some(123456),
            }),
        };
        let run = LastRun {
            run_id: 3,
            experiment: "five-models".into(),
            finished_unix_ms: Some(1_700_000_002_000),
            latencies: vec![LatencyQuantiles {
                model: "yolo".into(),
                mode: "together".into(),
                mps: "on".into(),
                p50_s: 0.012,
                p90_s: 0.015,
                p99_s: 0.02,
            }],
            mps_effect: vec![("yolo".into(), 1.96)],
        };
        let text = render(&status(), &latest, Some(&run));
        let l = lines(&text);
        for want in [
            "mpslab_gr3d_load_percent 99",
            "mpslab_emc_load_percent 12.5",
            "mpslab_ram_used_megabytes 3210",
            "mpslab_rail_power_milliwatts{rail=\"VDD_IN\"} 17946",
            "mpslab_rail_power_milliwatts{rail=\"VDD_CPU_GPU_CV\"} 4000",
            "mpslab_cpu_percent{mode=\"us\"} 40",
            "mpslab_cpu_percent{mode=\"id\"} 55",
            "mpslab_memory_free_kilobytes 123456",
            "mpslab_telemetry_sample_timestamp_seconds{source=\"tegrastats\"} 1700000000.5",
            "mpslab_telemetry_sample_timestamp_seconds{source=\"vmstat\"} 1700000001",
            "mpslab_last_run_id 3",
            "mpslab_last_run_info{experiment=\"five-models\"} 1",
            "mpslab_last_run_finished_timestamp_seconds 1700000002",
            "mpslab_last_run_latency_seconds{model=\"yolo\",mode=\"together\",mps=\"on\",quantile=\"0.5\"} 0.012",
            "mpslab_last_run_latency_seconds{model=\"yolo\",mode=\"together\",mps=\"on\",quantile=\"0.99\"} 0.02",
            "mpslab_last_run_mps_effect_ratio{model=\"yolo\"} 1.96",
        ] {
            assert!(l.contains(&want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn every_family_has_help_and_type_once_and_no_series_repeats() {
        let mut st = status();
        // An unknown state name, and a rail reported twice, must not duplicate a series.
        st.mps_state = "weird".into();
        let latest = LatestTelemetry {
            tegrastats: Some(TegraLatest {
                rails_mw: vec![("VDD_IN".into(), 1.0), ("VDD_IN".into(), 2.0)],
                ..TegraLatest::default()
            }),
            vmstat: None,
        };
        let text = render(&st, &latest, None);
        let mut helps = BTreeSet::new();
        let mut types = BTreeSet::new();
        let mut series = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                assert!(helps.insert(rest.split(' ').next().unwrap().to_string()));
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                assert!(types.insert(rest.split(' ').next().unwrap().to_string()));
            } else {
                let (s, _) = line.rsplit_once(' ').unwrap();
                let name = s.split('{').next().unwrap();
                assert!(helps.contains(name) && types.contains(name), "{line}");
                assert!(series.insert(s.to_string()), "duplicate series {s}");
            }
        }
        assert_eq!(helps, types);
        assert!(text.contains("mpslab_rail_power_milliwatts{rail=\"VDD_IN\"} 1\n"));
        assert!(text.contains("mpslab_mps_state{state=\"weird\"} 1\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        let mut st = status();
        st.version = "1.0 \"beta\"\\\n".into();
        let text = render(&st, &LatestTelemetry::default(), None);
        assert!(
            text.contains("mpslab_info{version=\"1.0 \\\"beta\\\"\\\\\\n\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn special_values_use_exposition_spelling() {
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(1e21), "1000000000000000000000");
    }

    #[test]
    fn rails_come_from_parsed_json() {
        let parsed = r#"{"rails": {"VDD_IN": {"cur_mw": 17946, "avg_mw": 15710}, "VDD_SOC": {"avg_mw": 1}}}"#;
        assert_eq!(rails_of(parsed), vec![("VDD_IN".to_string(), 17946.0)]);
        assert!(rails_of("not json").is_empty());
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mpslab.prom");
        write_atomic(&p, "a 1\n").unwrap();
        write_atomic(&p, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a 2\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("mpslab.prom")]);
        let missing = dir.path().join("no-such-dir").join("x.prom");
        assert!(write_atomic(&missing, "a 1\n").is_err());
    }
}
