//! `mpslabd`'s lifecycle: open the store, own the bus name, run the state-owning loop, and shut
//! down in order on SIGTERM/SIGINT (cancel, reap children, flush the store, release the name).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use std::collections::VecDeque;

use tokio::sync::Mutex;

use crate::config::{self, Config, ConfigError, ExperimentConfig};
use crate::dbus;
use crate::error::LabError;
use crate::experiment::orchestrator::{self, RunOutcome, RunProgress, RunSignal, Runner};
use crate::experiment::plan::{self, Plan};
use crate::experiment::schedule;
use crate::mps::{MpsError, MpsEvent, MpsManager, MpsSettings, MpsState};
use crate::notify;
use crate::store::{self, EventRow, Reader, WriteOp, WriterHandle};
use crate::telemetry::{self, hub::Hub};

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub config_path: Option<PathBuf>,
    pub session_bus: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Store(#[from] store::StoreError),
    #[error("D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Reply<T> = oneshot::Sender<Result<T, LabError>>;

/// What D-Bus (or a schedule) asks of the state-owning loop.
pub enum Command {
    Reload(Reply<()>),
    StartMps(Reply<()>),
    StopMps(Reply<()>),
    Run {
        name: String,
        trigger: String,
        reply: Reply<u64>,
    },
    Cancel {
        id: u64,
        reply: Reply<()>,
    },
}

/// The daemon's published state: D-Bus properties and `mpslabctl status` read this.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Status {
    pub version: String,
    pub mps_state: String,
    pub mps_reason: String,
    pub active_run: u64,
    pub queue: Vec<u64>,
    pub samplers: BTreeMap<String, String>,
    pub config_sources: Vec<String>,
    pub progress: Option<RunProgress>,
    /// Samples dropped since start because the disk could not keep up or was full.
    pub dropped_samples: u64,
}

impl Status {
    /// One line for systemd's `STATUS=`.
    pub fn summary(&self) -> String {
        let run = match &self.progress {
            Some(p) if self.active_run != 0 => {
                format!("run {} phase {}/{}", self.active_run, p.phase, p.phases)
            }
            _ if self.active_run != 0 => format!("run {} active", self.active_run),
            _ => "idle".to_string(),
        };
        format!("{run}; MPS {}; {} queued", self.mps_state, self.queue.len())
    }
}

struct Queued {
    id: i64,
    experiment: ExperimentConfig,
    plan: Plan,
}

struct Active {
    id: i64,
    experiment: String,
    cancel: CancellationToken,
}

/// Internal messages from tasks the loop started.
enum Internal {
    Validated {
        experiment: Box<ExperimentConfig>,
        plan: Box<Plan>,
        trigger: String,
        reply: Reply<u64>,
    },
    RunDone {
        id: i64,
        outcome: RunOutcome,
    },
}

struct State {
    config: watch::Sender<Arc<Config>>,
    status: watch::Sender<Status>,
    writer: WriterHandle,
    config_path: Option<PathBuf>,
    mps: Arc<Mutex<MpsManager>>,
    hub: Hub,
    runner: Arc<Runner>,
    queue: VecDeque<Queued>,
    active: Option<Active>,
    internal: mpsc::Sender<Internal>,
    bus: zbus::Connection,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

/// Where `mpslab-worker` is: configured, beside this binary (build tree), or installed.
pub fn worker_path(cfg: &Config) -> PathBuf {
    if let Some(p) = &cfg.runtime.worker_path {
        return p.clone();
    }
    if let Some(beside) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("mpslab-worker")))
    {
        if beside.exists() {
            return beside;
        }
    }
    PathBuf::from("/usr/libexec/mpslab/mpslab-worker")
}

pub fn mps_settings(cfg: &Config) -> MpsSettings {
    let pid_dir = cfg
        .mps
        .pipe_dir
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| cfg.daemon.state_dir.clone());
    MpsSettings {
        control_path: cfg.mps.control_path.clone(),
        pipe_dir: cfg.mps.pipe_dir.clone(),
        log_dir: cfg.mps.log_dir.clone(),
        pid_file: pid_dir.join("mps-owner.json"),
        call_timeout: Duration::from_millis(cfg.mps.call_timeout_ms),
        start_deadline: Duration::from_millis(cfg.mps.start_timeout_ms),
        quit_timeout: Duration::from_secs(cfg.mps.quit_timeout_s),
        default_active_thread_percentage: cfg.mps.default_active_thread_percentage,
        pinned_mem_limit: cfg.mps.pinned_mem_limit.clone(),
        server_uid: cfg
            .mps
            .server_uid
            .unwrap_or_else(|| nix::unistd::geteuid().as_raw()),
        ..MpsSettings::default()
    }
}

fn mps_error(e: MpsError) -> LabError {
    match e {
        MpsError::Unavailable(r) => LabError::MpsUnavailable(r),
        MpsError::Busy { .. } => LabError::Busy(e.to_string()),
        MpsError::Foreign { .. } => LabError::Busy(e.to_string()),
        other => LabError::Failed(other.to_string()),
    }
}

/// Check a run request against the current configuration before it is queued: the experiment
/// exists, every model file exists and loads in a worker, the runtime library is there, and
/// MPS is usable when the plan needs it. Runs off the state-owning loop.
async fn validate(
    cfg: Arc<Config>,
    name: String,
    mps: Arc<Mutex<MpsManager>>,
    worker: PathBuf,
) -> Result<(ExperimentConfig, Plan), LabError> {
    let exp = cfg.experiment(&name).cloned().ok_or_else(|| {
        let known: Vec<&str> = cfg.experiments.iter().map(|e| e.name.as_str()).collect();
        LabError::NotFound(format!(
            "no experiment named `{name}`; configured: {}",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ))
    })?;
    let p = plan::plan(&exp);
    if !cfg.runtime.onnxruntime_path.exists() {
        return Err(LabError::InvalidArgument(format!(
            "ONNX Runtime library {} (runtime.onnxruntime_path) does not exist",
            cfg.runtime.onnxruntime_path.display()
        )));
    }
    if !worker.exists() {
        return Err(LabError::Failed(format!(
            "worker binary {} does not exist",
            worker.display()
        )));
    }
    for m in &exp.models {
        let model = cfg
            .model(m)
            .ok_or_else(|| LabError::InvalidArgument(format!("model `{m}` is not configured")))?;
        match tokio::fs::metadata(&model.path).await {
            Ok(md) if md.is_file() && md.len() > 0 => {}
            Ok(_) => {
                return Err(LabError::InvalidArgument(format!(
                    "model `{m}`: {} is empty or not a file",
                    model.path.display()
                )))
            }
            Err(e) => {
                return Err(LabError::InvalidArgument(format!(
                    "model `{m}`: cannot read {}: {e}",
                    model.path.display()
                )))
            }
        }
    }
    // Load each model once, as the phases will: a truncated file, a missing input dimension or
    // a provider that cannot load is refused now, naming the model, not an hour into the run.
    for m in &exp.models {
        let Some(model) = cfg.model(m) else { continue };
        let mut cmd = tokio::process::Command::new(&worker);
        cmd.args(orchestrator::worker_args(&cfg, model));
        if exp.kind == crate::config::ExperimentKind::Validation {
            // Opens the dataset and checks the outputs fit the task, on one image.
            cmd.args(orchestrator::validation_args(model, None));
        }
        cmd.args([
            "--iterations",
            "1",
            "--warmup",
            "0",
            "--digest-inputs",
            "0",
            "--autostart",
        ])
        .env_clear()
        .envs(crate::mps::worker_env(
            std::env::vars_os(),
            &crate::mps::MpsClientMode::Off,
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
        let out = match tokio::time::timeout(Duration::from_secs(300), cmd.output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                return Err(LabError::Failed(format!(
                    "model `{m}`: cannot start the worker: {e}"
                )))
            }
            Err(_) => {
                return Err(LabError::InvalidArgument(format!(
                    "model `{m}` did not load within 300 s"
                )))
            }
        };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("worker failed")
                .trim();
            return Err(LabError::InvalidArgument(format!(
                "model `{m}` ({}) cannot run: {why}",
                model.path.display()
            )));
        }
    }
    if p.needs_mps() {
        let mut mps = mps.lock().await;
        if mps.status().state == MpsState::Unavailable {
            // Conditions may have changed since start: probe again before refusing.
            if let Err(e) = mps.probe().await {
                return Err(LabError::MpsUnavailable(format!(
                    "experiment `{name}` needs MPS, which is unavailable: {e}"
                )));
            }
        }
    }
    Ok((exp, p))
}

impl State {
    async fn reload(&mut self) -> Result<(), LabError> {
        notify::reloading();
        let path = self.config_path.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load(path.as_deref()))
            .await
            .map_err(|e| LabError::Failed(format!("reload task failed: {e}")))?;
        let result = match loaded {
            Ok(new) => {
                let sources = new
                    .sources
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>();
                let summary = format!("configuration reloaded from {}", sources.join(", "));
                tracing::info!("{summary}");
                self.hub.config.send_replace(new.telemetry.clone());
                self.config.send_replace(Arc::new(new));
                self.status.send_modify(|s| s.config_sources = sources);
                self.writer
                    .event(EventRow::new("daemon", "config_reloaded", summary))
                    .await;
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused; keeping the running configuration");
                self.writer
                    .event(EventRow::new(
                        "daemon",
                        "config_rejected",
                        format!("reload refused, old configuration kept: {e}"),
                    ))
                    .await;
                Err(LabError::InvalidArgument(format!(
                    "reload refused, old configuration kept: {e}"
                )))
            }
        };
        notify::ready(&self.status.borrow().summary());
        result
    }

    fn publish_queue(&self) {
        let queue: Vec<u64> = self.queue.iter().map(|q| q.id as u64).collect();
        let active = self.active.as_ref().map(|a| a.id as u64).unwrap_or(0);
        self.status.send_modify(|s| {
            s.queue = queue;
            s.active_run = active;
        });
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Reload(reply) => {
                let r = self.reload().await;
                let _ = reply.send(r);
            }
            Command::StartMps(reply) | Command::StopMps(reply) if self.active.is_some() => {
                let id = self.active.as_ref().map(|a| a.id).unwrap_or(0);
                let _ = reply.send(Err(LabError::Busy(format!(
                    "run {id} is active and owns MPS; cancel it first"
                ))));
            }
            Command::StartMps(reply) => {
                let mps = self.mps.clone();
                self.tracker.spawn(async move {
                    let mut m = mps.lock().await;
                    let r = match m.probe().await {
                        Ok(_) => m.start().await.map_err(mps_error),
                        Err(e) => Err(mps_error(e)),
                    };
                    let _ = reply.send(r);
                });
            }
            Command::StopMps(reply) => {
                let mps = self.mps.clone();
                self.tracker.spawn(async move {
                    let r = mps.lock().await.stop().await.map_err(mps_error);
                    let _ = reply.send(r);
                });
            }
            Command::Run {
                name,
                trigger,
                reply,
            } => {
                let cfg = self.config.borrow().clone();
                let (mps, worker, internal) =
                    (self.mps.clone(), worker_path(&cfg), self.internal.clone());
                if self.active.is_some() && trigger == "schedule" {
                    let waiting = self
                        .queue
                        .iter()
                        .map(|q| q.experiment.name.as_str())
                        .chain(self.active.as_ref().map(|a| a.experiment.as_str()));
                    if !schedule::should_enqueue(&name, waiting) {
                        tracing::info!(experiment = %name, "schedule fired while the experiment is queued or running; not queued again");
                        let _ = reply.send(Err(LabError::Busy(format!(
                            "`{name}` is already queued or running"
                        ))));
                        return;
                    }
                }
                self.tracker.spawn(async move {
                    match validate(cfg, name, mps, worker).await {
                        Ok((experiment, plan)) => {
                            let _ = internal
                                .send(Internal::Validated {
                                    experiment: Box::new(experiment),
                                    plan: Box::new(plan),
                                    trigger,
                                    reply,
                                })
                                .await;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "run refused");
                            let _ = reply.send(Err(e));
                        }
                    }
                });
            }
            Command::Cancel { id, reply } => {
                let id = id as i64;
                let r = if let Some(a) = self.active.as_ref().filter(|a| a.id == id) {
                    tracing::info!(run_id = id, "cancelling the active run");
                    a.cancel.cancel();
                    Ok(())
                } else if let Some(pos) = self.queue.iter().position(|q| q.id == id) {
                    self.queue.remove(pos);
                    let _ = self
                        .writer
                        .send(WriteOp::RunStatus {
                            run_id: id,
                            status: "cancelled".into(),
                            error: Some("cancelled before it started".into()),
                        })
                        .await;
                    self.emit_finished(id, "cancelled").await;
                    self.publish_queue();
                    Ok(())
                } else {
                    Err(LabError::NotFound(format!(
                        "run {id} is neither queued nor running"
                    )))
                };
                let _ = reply.send(r);
            }
        }
    }

    async fn internal(&mut self, msg: Internal) {
        match msg {
            Internal::Validated {
                experiment,
                plan,
                trigger,
                reply,
            } => {
                let plan_json = serde_json::to_string(&plan).unwrap_or_else(|_| "{}".into());
                match self
                    .writer
                    .create_run(&experiment.name, &trigger, plan_json)
                    .await
                {
                    Ok(id) => {
                        tracing::info!(run_id = id, experiment = %experiment.name, phases = plan.phases.len(), %trigger, "run queued");
                        self.queue.push_back(Queued {
                            id,
                            experiment: *experiment,
                            plan: *plan,
                        });
                        let _ = reply.send(Ok(id as u64));
                        self.publish_queue();
                        self.start_next().await;
                    }
                    Err(e) => {
                        let _ = reply
                            .send(Err(LabError::Failed(format!("cannot record the run: {e}"))));
                    }
                }
            }
            Internal::RunDone { id, outcome } => {
                tracing::info!(run_id = id, status = %outcome.status, error = ?outcome.error, "run finished");
                let _ = self
                    .writer
                    .send(WriteOp::RunStatus {
                        run_id: id,
                        status: outcome.status.clone(),
                        error: outcome.error.clone(),
                    })
                    .await;
                let mut ev = EventRow::new(
                    "experiment",
                    "run_finished",
                    format!(
                        "run {id} {}{}",
                        outcome.status,
                        outcome
                            .error
                            .as_ref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    ),
                );
                ev.run_id = Some(id);
                self.writer.event(ev).await;
                let _ = self.writer.flush().await;
                self.active = None;
                self.emit_finished(id, &outcome.status).await;
                self.publish_queue();
                self.start_next().await;
            }
        }
    }

    async fn start_next(&mut self) {
        if self.active.is_some() || self.cancel.is_cancelled() {
            return;
        }
        let Some(q) = self.queue.pop_front() else {
            return;
        };
        let cancel = self.cancel.child_token();
        self.active = Some(Active {
            id: q.id,
            experiment: q.experiment.name.clone(),
            cancel: cancel.clone(),
        });
        self.publish_queue();
        let _ = self
            .writer
            .send(WriteOp::RunStatus {
                run_id: q.id,
                status: "running".into(),
                error: None,
            })
            .await;
        if let Ok(e) = dbus::emitter(&self.bus) {
            let _ = dbus::Manager::run_started(&e, q.id as u64, &q.experiment.name).await;
        }
        let runner = self.runner.clone();
        let cfg = self.config.borrow().clone();
        let internal = self.internal.clone();
        self.tracker.spawn(async move {
            let span = tracing::info_span!("run", run_id = q.id, experiment = %q.experiment.name);
            let outcome = tracing::Instrument::instrument(
                runner.execute(cfg, q.id, &q.experiment, &q.plan, cancel),
                span,
            )
            .await;
            let _ = internal.send(Internal::RunDone { id: q.id, outcome }).await;
        });
    }

    async fn emit_finished(&self, id: i64, status: &str) {
        if let Ok(e) = dbus::emitter(&self.bus) {
            let _ = dbus::Manager::run_finished(&e, id as u64, status).await;
        }
    }
}

/// Create a directory the daemon needs, naming it when that fails.
fn ensure_dir(path: &std::path::Path) -> Result<(), DaemonError> {
    std::fs::create_dir_all(path).map_err(|source| DaemonError::Dir {
        path: path.to_path_buf(),
        source,
    })
}

/// Run the daemon until SIGTERM/SIGINT. `config` was loaded (and validated) by the caller.
pub async fn run(opts: Options, config: Config) -> Result<(), DaemonError> {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();

    ensure_dir(&config.daemon.state_dir)?;
    let db_path = config.db_path();
    let open_path = db_path.clone();
    let (conn, report) = tokio::task::spawn_blocking(move || store::open(&open_path))
        .await
        .map_err(|e| DaemonError::Io(std::io::Error::other(e)))??;
    let (writer, writer_thread) = store::spawn_writer(conn);
    let reader = Reader::open(&db_path)?;
    if !report.interrupted_runs.is_empty() {
        tracing::warn!(runs = ?report.interrupted_runs, "runs left open by a previous daemon were marked interrupted");
    }

    let sources: Vec<String> = config
        .sources
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let (status_tx, status_rx) = watch::channel(Status {
        version: crate::VERSION.to_string(),
        mps_state: "stopped".into(),
        config_sources: sources,
        ..Status::default()
    });
    let config = Arc::new(config);
    let (config_tx, config_rx) = watch::channel(config.clone());
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(64);
    let (internal_tx, mut internal_rx) = mpsc::channel::<Internal>(64);

    // Signal handlers first, so a SIGTERM that arrives during start-up is not lost.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;

    // MPS: adopt or clean what a crashed predecessor left, then probe.
    let (mps_events_tx, mut mps_events_rx) = mpsc::unbounded_channel();
    let settings = mps_settings(&config);
    // Our pid file exists only while a control daemon we started runs: after a crash it means
    // MPS was up, and operators expect it up again (one fresh daemon, never an orphan).
    let was_running = settings.pid_file.exists();
    let mut mps_manager = MpsManager::new(settings, mps_events_tx);
    if let Err(e) = mps_manager.recover().await {
        tracing::warn!(error = %e, "MPS recovery at start");
    }
    match mps_manager.probe().await {
        Ok(_) if was_running => {
            tracing::warn!(
                "MPS was running when mpslabd last stopped; starting a fresh control daemon"
            );
            if let Err(e) = mps_manager.start().await {
                tracing::error!(error = %e, "restarting MPS after recovery failed");
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "MPS is not usable; experiments that need it will be refused")
        }
    }
    let mut mps_status = mps_manager.subscribe();
    let mps = Arc::new(Mutex::new(mps_manager));

    let hub = telemetry::hub::spawn(
        config.telemetry.clone(),
        writer.clone(),
        &tracker,
        cancel.clone(),
    );
    let (progress_tx, mut progress_rx) = watch::channel(None);
    let (signals_tx, mut signals_rx) = mpsc::unbounded_channel();
    let runner = Arc::new(Runner {
        writer: writer.clone(),
        mps: mps.clone(),
        telemetry_tag: hub.tag.clone(),
        telemetry_enabled: hub.enabled.clone(),
        progress: progress_tx,
        signals: signals_tx,
        worker_bin: worker_path(&config),
    });

    let manager = dbus::Manager {
        commands: cmd_tx.clone(),
        status: status_rx.clone(),
        config: config_rx.clone(),
        reader: reader.clone(),
    };
    let builder = if opts.session_bus {
        zbus::connection::Builder::session()?
    } else {
        zbus::connection::Builder::system()?
    };
    // The name is requested after the object is served, or early calls could be lost. zbus
    // defaults to replacing an existing owner and allowing replacement; a second mpslabd must
    // fail instead of silently taking the name from the running one.
    let bus = builder
        .serve_at(dbus::OBJECT_PATH, manager)?
        .name(dbus::BUS_NAME)?
        .allow_name_replacements(false)
        .replace_existing_names(false)
        .build()
        .await?;

    tracker.spawn(publish_changes(
        bus.clone(),
        status_rx.clone(),
        cancel.clone(),
    ));
    tracker.spawn(schedules(config_rx.clone(), cmd_tx.clone(), cancel.clone()));
    tracker.spawn(retention(config_rx.clone(), writer.clone(), cancel.clone()));
    tracker.spawn(crate::export::run(
        config_rx.clone(),
        status_rx.clone(),
        reader.clone(),
        cancel.clone(),
    ));

    writer
        .event(EventRow::new(
            "daemon",
            "started",
            format!(
                "mpslabd {} started; database {}",
                crate::VERSION,
                db_path.display()
            ),
        ))
        .await;
    if let Some(why) = &report.corruption {
        tracing::error!(reason = %why, "the database was corrupt and has been replaced; see the event log");
    }

    let mut state = State {
        config: config_tx,
        status: status_tx,
        writer: writer.clone(),
        config_path: opts.config_path.clone(),
        mps: mps.clone(),
        hub,
        runner,
        queue: VecDeque::new(),
        active: None,
        internal: internal_tx,
        bus: bus.clone(),
        tracker: tracker.clone(),
        cancel: cancel.clone(),
    };
    {
        let m = mps_status.borrow_and_update().clone();
        state.status.send_modify(|s| {
            s.mps_state = m.state.to_string();
            s.mps_reason = m.reason.clone();
        });
    }
    let mut sampler_states = state.hub.states.clone();
    notify::ready(&state.status.borrow().summary());
    tracing::info!(bus = dbus::BUS_NAME, db = %db_path.display(), "mpslabd ready");

    let watchdog_every = notify::watchdog_interval();
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    let mut last_status = state.status.borrow().summary();
    // Counters that change without an event (dropped samples) are published once a second.
    let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading configuration");
                let _ = state.reload().await;
            }
            Some(cmd) = cmd_rx.recv() => state.handle(cmd).await,
            Some(msg) = internal_rx.recv() => state.internal(msg).await,
            Ok(()) = mps_status.changed() => {
                let m = mps_status.borrow_and_update().clone();
                state.status.send_modify(|s| {
                    s.mps_state = m.state.to_string();
                    s.mps_reason = m.reason.clone();
                });
            }
            Some(ev) = mps_events_rx.recv() => {
                let (kind, message) = match ev {
                    MpsEvent::Transition(t) => ("state", format!("{} -> {}: {}", t.from, t.to, t.reason)),
                    MpsEvent::ControlLog(line) => ("control_log", line),
                    MpsEvent::ServerExited { pid, status } => ("server_exited", format!("MPS server {pid} exited with status {status}")),
                };
                let mut row = EventRow::new("mps", kind, message);
                row.run_id = state.active.as_ref().map(|a| a.id);
                state.writer.event(row).await;
            }
            Ok(()) = sampler_states.changed() => {
                let m = sampler_states.borrow_and_update().clone();
                state.status.send_modify(|s| s.samplers = m);
            }
            Ok(()) = progress_rx.changed() => {
                let p = progress_rx.borrow_and_update().clone();
                state.status.send_modify(|s| s.progress = p);
            }
            Some(sig) = signals_rx.recv() => {
                let RunSignal::Phase { run_id, phase, phases } = sig;
                if let Ok(e) = dbus::emitter(&bus) {
                    let _ = dbus::Manager::run_progress(&e, run_id, phase, phases).await;
                }
            }
            _ = housekeeping.tick() => {}
            // The loop pings the watchdog itself, so a wedged loop is noticed by systemd.
            _ = watchdog.tick(), if watchdog_every.is_some() => notify::watchdog(),
        }
        let dropped = writer
            .stats
            .dropped_full
            .load(std::sync::atomic::Ordering::Relaxed)
            + writer
                .stats
                .dropped_failed
                .load(std::sync::atomic::Ordering::Relaxed)
            + state.hub.dropped.load(std::sync::atomic::Ordering::Relaxed);
        if dropped != state.status.borrow().dropped_samples {
            state.status.send_modify(|s| s.dropped_samples = dropped);
        }
        let now = state.status.borrow().summary();
        if now != last_status {
            notify::status(&now);
            last_status = now;
        }
    }

    // Ordered shutdown: tell systemd, stop runs (workers reaped), stop MPS, stop samplers,
    // flush the store, release the name.
    notify::stopping();
    if let Some(a) = &state.active {
        tracing::info!(run_id = a.id, "cancelling the active run for shutdown");
    }
    cancel.cancel();
    let active_id = state.active.as_ref().map(|a| a.id);
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(6), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 6 s");
    }
    while let Ok(msg) = internal_rx.try_recv() {
        if let Internal::RunDone { id, outcome } = msg {
            let _ = writer
                .send(WriteOp::RunStatus {
                    run_id: id,
                    status: if outcome.status == "cancelled" {
                        "interrupted".into()
                    } else {
                        outcome.status
                    },
                    error: Some(outcome.error.unwrap_or_else(|| "the daemon stopped".into())),
                })
                .await;
        }
    }
    if let Some(id) = active_id {
        // Marked here (not by the next start) so a clean stop leaves nothing open.
        let _ = writer
            .send(WriteOp::RunStatus {
                run_id: id,
                status: "interrupted".into(),
                error: Some("the daemon was stopped during the run".into()),
            })
            .await;
    }
    for q in &state.queue {
        let _ = writer
            .send(WriteOp::RunStatus {
                run_id: q.id,
                status: "interrupted".into(),
                error: Some("the daemon was stopped before the run started".into()),
            })
            .await;
    }
    {
        let mut m = mps.lock().await;
        if matches!(
            m.status().state,
            MpsState::Running | MpsState::Starting | MpsState::Failed
        ) {
            if let Err(e) = tokio::time::timeout(Duration::from_secs(3), m.stop())
                .await
                .unwrap_or(Ok(()))
            {
                tracing::warn!(error = %e, "stopping MPS at shutdown");
            }
        }
    }
    state
        .writer
        .event(EventRow::new(
            "daemon",
            "stopped",
            "mpslabd stopped cleanly",
        ))
        .await;
    if let Err(e) = writer.flush().await {
        tracing::warn!(error = %e, "final store flush failed");
    }
    drop(state);
    drop(writer);
    drop(cmd_tx);
    drop(bus);
    // The writer thread ends once every handle is gone; it checkpoints the WAL on the way out.
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    tracing::info!("mpslabd stopped");
    Ok(())
}

/// Fire each experiment's cron schedule (local time); restarts when the configuration changes.
async fn schedules(
    mut config: watch::Receiver<Arc<Config>>,
    commands: mpsc::Sender<Command>,
    cancel: CancellationToken,
) {
    loop {
        let cfg = config.borrow_and_update().clone();
        let parsed: Vec<(String, schedule::Schedule)> = cfg
            .experiments
            .iter()
            .filter_map(|e| {
                let s = e.schedule.as_deref()?;
                schedule::Schedule::parse(s)
                    .ok()
                    .map(|p| (e.name.clone(), p))
            })
            .collect();
        let now = chrono::Local::now();
        let next = parsed
            .iter()
            .filter_map(|(name, s)| s.next_after(&now).map(|t| (t, name.clone())))
            .min_by_key(|(t, _)| *t);
        let sleep = match &next {
            Some((t, _)) => (*t - now).to_std().unwrap_or(Duration::ZERO),
            None => Duration::from_secs(24 * 3600),
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = config.changed() => { if r.is_err() { return; } continue; }
            _ = tokio::time::sleep(sleep) => {}
        }
        if let Some((_, name)) = next {
            tracing::info!(experiment = %name, "schedule fired");
            let (tx, rx) = oneshot::channel();
            if commands
                .send(Command::Run {
                    name: name.clone(),
                    trigger: "schedule".into(),
                    reply: tx,
                })
                .await
                .is_err()
            {
                return;
            }
            if let Ok(Err(e)) = rx.await {
                tracing::warn!(experiment = %name, error = %e, "scheduled run not queued");
            }
            // Never fire twice for the same minute.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
}

/// Apply retention hourly: samples older than `retention_days`, and the size cap.
async fn retention(
    config: watch::Receiver<Arc<Config>>,
    writer: WriterHandle,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (days, max_mb) = {
            let c = config.borrow();
            (c.telemetry.retention_days as i64, c.telemetry.max_db_mb)
        };
        let op = WriteOp::Retention {
            older_than_ms: store::now_ms() - days * 86_400_000,
            max_bytes: max_mb * 1024 * 1024,
        };
        if writer.send(op).await.is_err() {
            return;
        }
    }
}

async fn publish_changes(
    bus: zbus::Connection,
    mut rx: watch::Receiver<Status>,
    cancel: CancellationToken,
) {
    let mut last = rx.borrow().clone();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = rx.changed() => {
                if changed.is_err() { return; }
                let now = rx.borrow_and_update().clone();
                if let Err(e) = dbus::emit_changes(&bus, &last, &now).await {
                    tracing::warn!(error = %e, "cannot emit PropertiesChanged");
                }
                last = now;
            }
        }
    }
}
