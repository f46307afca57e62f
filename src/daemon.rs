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

use crate::config::{self, Config, ConfigError};
use crate::dbus;
use crate::error::LabError;
use crate::notify;
use crate::store::{self, EventRow, Reader, WriterHandle};

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
}

impl Status {
    /// One line for systemd's `STATUS=`.
    pub fn summary(&self) -> String {
        let run = if self.active_run == 0 {
            "idle".to_string()
        } else {
            format!("run {} active", self.active_run)
        };
        format!("{run}; MPS {}; {} queued", self.mps_state, self.queue.len())
    }
}

struct State {
    config: watch::Sender<Arc<Config>>,
    status: watch::Sender<Status>,
    writer: WriterHandle,
    config_path: Option<PathBuf>,
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

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Reload(reply) => {
                let r = self.reload().await;
                let _ = reply.send(r);
            }
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
        mps_state: "unavailable".into(),
        mps_reason: "MPS management is not started".into(),
        samplers: BTreeMap::new(),
        config_sources: sources,
        ..Status::default()
    });
    let config = Arc::new(config);
    let (config_tx, config_rx) = watch::channel(config.clone());
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(64);

    // Signal handlers first, so a SIGTERM that arrives during start-up is not lost.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;

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
    notify::ready(&status_rx.borrow().summary());
    tracing::info!(bus = dbus::BUS_NAME, db = %db_path.display(), "mpslabd ready");

    let mut state = State {
        config: config_tx,
        status: status_tx,
        writer: writer.clone(),
        config_path: opts.config_path.clone(),
    };

    let watchdog_every = notify::watchdog_interval();
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    let mut last_status = state.status.borrow().summary();
    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading configuration");
                let _ = state.reload().await;
            }
            Some(cmd) = cmd_rx.recv() => state.handle(cmd).await,
            // The loop pings the watchdog itself, so a wedged loop is noticed by systemd.
            _ = watchdog.tick(), if watchdog_every.is_some() => notify::watchdog(),
        }
        let now = state.status.borrow().summary();
        if now != last_status {
            notify::status(&now);
            last_status = now;
        }
    }

    // Ordered shutdown: tell systemd, stop producers, reap children, flush, release the name.
    notify::stopping();
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(7), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 7 s");
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
