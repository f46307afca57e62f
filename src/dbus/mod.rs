//! D-Bus service `org.mpslab.Lab1`, object `/org/mpslab/Lab1`, interface
//! `org.mpslab.Lab1.Manager`.
//!
//! The interface owns no state: properties read the daemon's published snapshot, read-only
//! methods query the store, and mutating methods check the caller (taken from the message
//! header, never from an argument) and forward a command to the task that owns the state.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{fdo, interface, Connection};

use crate::config::Config;
use crate::daemon::{Command, Status};
use crate::error::LabError;
use crate::experiment::{analysis, rundata};
use crate::store::{self, Reader};

pub const BUS_NAME: &str = "org.mpslab.Lab1";
pub const OBJECT_PATH: &str = "/org/mpslab/Lab1";
pub const INTERFACE: &str = "org.mpslab.Lab1.Manager";

/// Named errors, as clients see them: `org.mpslab.Lab1.Error.Busy` and so on.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.mpslab.Lab1.Error")]
pub enum Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    NotFound(String),
    Busy(String),
    InvalidArgument(String),
    MpsUnavailable(String),
    AccessDenied(String),
    Failed(String),
}

impl From<LabError> for Error {
    fn from(e: LabError) -> Self {
        match e {
            LabError::NotFound(m) => Error::NotFound(m),
            LabError::Busy(m) => Error::Busy(m),
            LabError::InvalidArgument(m) => Error::InvalidArgument(m),
            LabError::MpsUnavailable(m) => Error::MpsUnavailable(m),
            LabError::AccessDenied(m) => Error::AccessDenied(m),
            LabError::Failed(m) => Error::Failed(m),
        }
    }
}

impl From<store::StoreError> for Error {
    fn from(e: store::StoreError) -> Self {
        match e {
            store::StoreError::RunNotFound(id) => Error::NotFound(format!("run {id} not found")),
            other => Error::Failed(other.to_string()),
        }
    }
}

impl From<fdo::Error> for Error {
    fn from(e: fdo::Error) -> Self {
        Error::ZBus(zbus::Error::from(e))
    }
}

pub struct Manager {
    pub commands: mpsc::Sender<Command>,
    pub status: watch::Receiver<Status>,
    pub config: watch::Receiver<Arc<Config>>,
    pub reader: Reader,
}

impl Manager {
    /// Root may always control the daemon; otherwise the caller needs the configured group.
    async fn authorize(
        &self,
        conn: &Connection,
        hdr: &Header<'_>,
        action: &str,
    ) -> Result<(), Error> {
        let sender = hdr
            .sender()
            .ok_or_else(|| Error::AccessDenied(format!("{action}: message has no sender")))?;
        let dbus = fdo::DBusProxy::new(conn).await.map_err(Error::ZBus)?;
        let creds = dbus
            .get_connection_credentials(sender.clone().into())
            .await?;
        let uid = creds.unix_user_id().ok_or_else(|| {
            Error::AccessDenied(format!("{action}: the bus did not report the caller's uid"))
        })?;
        if uid == 0 {
            return Ok(());
        }
        let group = self.config.borrow().daemon.control_group.clone();
        let gid = group_gid(&group).await;
        let in_group = match (gid, creds.unix_group_ids()) {
            (Some(gid), Some(groups)) => groups.contains(&gid),
            _ => false,
        };
        if in_group {
            Ok(())
        } else {
            Err(Error::AccessDenied(format!(
                "{action} needs root or membership in group `{group}` (caller uid {uid})"
            )))
        }
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, LabError>>) -> Command,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Failed("the daemon is shutting down".into()))?;
        rx.await
            .map_err(|_| Error::Failed("the daemon is shutting down".into()))?
            .map_err(Error::from)
    }
}

/// Resolve a group name on a blocking thread (NSS may read files or talk to a directory).
async fn group_gid(name: &str) -> Option<u32> {
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        nix::unistd::Group::from_name(&name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    })
    .await
    .ok()
    .flatten()
}

#[interface(name = "org.mpslab.Lab1.Manager")]
impl Manager {
    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        crate::VERSION.to_string()
    }

    #[zbus(property)]
    fn mps_state(&self) -> String {
        self.status.borrow().mps_state.clone()
    }

    #[zbus(property)]
    fn mps_reason(&self) -> String {
        self.status.borrow().mps_reason.clone()
    }

    #[zbus(property)]
    fn active_run(&self) -> u64 {
        self.status.borrow().active_run
    }

    #[zbus(property)]
    fn queue_length(&self) -> u32 {
        self.status.borrow().queue.len() as u32
    }

    #[zbus(property)]
    fn samplers(&self) -> std::collections::HashMap<String, String> {
        self.status.borrow().samplers.clone().into_iter().collect()
    }

    /// Names of the configured experiments.
    fn list_experiments(&self) -> Vec<String> {
        self.config
            .borrow()
            .experiments
            .iter()
            .map(|e| e.name.clone())
            .collect()
    }

    /// The newest runs first: (id, experiment, status, started Unix ms, finished Unix ms);
    /// 0 where a time is not known yet.
    async fn list_runs(&self, limit: u32) -> Result<Vec<(u64, String, String, i64, i64)>, Error> {
        let limit = if limit == 0 { 20 } else { limit.min(10_000) };
        let runs = self
            .reader
            .with(move |c| store::list_runs(c, limit))
            .await?;
        Ok(runs
            .into_iter()
            .map(|r| {
                (
                    r.id as u64,
                    r.experiment,
                    r.status,
                    r.started_ms.unwrap_or(0),
                    r.finished_ms.unwrap_or(0),
                )
            })
            .collect())
    }

    /// Stored samples newer than `since_unix_ms` as JSON lines; `source` is one of
    /// tegrastats, vmstat, proc, events. `limit` 0 means 1000.
    async fn get_samples(
        &self,
        source: String,
        since_unix_ms: i64,
        limit: u32,
    ) -> Result<String, Error> {
        let limit = if limit == 0 { 1000 } else { limit.min(100_000) };
        let src = source.clone();
        match self
            .reader
            .with(move |c| store::samples_json(c, &src, since_unix_ms, limit))
            .await?
        {
            Some(lines) => Ok(lines),
            None => Err(Error::InvalidArgument(format!(
                "unknown source `{source}`; expected tegrastats, vmstat, proc or events"
            ))),
        }
    }

    /// Everything `mpslabctl status` shows, as one JSON object.
    fn get_status(&self) -> String {
        serde_json::to_string(&*self.status.borrow()).unwrap_or_else(|_| "{}".into())
    }

    /// Start the MPS control daemon with the configured defaults.
    async fn start_mps(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<(), Error> {
        self.authorize(conn, &hdr, "StartMps").await?;
        self.call(Command::StartMps).await
    }

    /// Stop the MPS control daemon (`quit`, then signals if it hangs).
    async fn stop_mps(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<(), Error> {
        self.authorize(conn, &hdr, "StopMps").await?;
        self.call(Command::StopMps).await
    }

    /// Validate and queue a configured experiment; returns the run id.
    async fn run_experiment(
        &self,
        name: String,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<u64, Error> {
        self.authorize(conn, &hdr, "RunExperiment").await?;
        let trigger = format!(
            "dbus:{}",
            hdr.sender().map(|s| s.to_string()).unwrap_or_default()
        );
        self.call(|reply| Command::Run {
            name,
            trigger,
            reply,
        })
        .await
    }

    /// Cancel a queued or running run.
    async fn cancel_run(
        &self,
        id: u64,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<(), Error> {
        self.authorize(conn, &hdr, "CancelRun").await?;
        self.call(|reply| Command::Cancel { id, reply }).await
    }

    /// A run's record, its phases and its analysis, as JSON.
    async fn get_run_summary(&self, id: u64) -> Result<String, Error> {
        self.reader
            .with(move |c| {
                let run = store::get_run(c, id as i64)?;
                let data = rundata::load(c, id as i64)?;
                let phases: Vec<serde_json::Value> = data
                    .phases
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "index": p.index, "mode": p.mode, "mps": p.mps, "sampling": p.sampling,
                            "repeat": p.repeat, "start_unix_ms": p.start_unix_ms, "end_unix_ms": p.end_unix_ms,
                            "models": p.models.iter().map(|m| serde_json::json!({
                                "model": m.model, "status": m.status, "error": m.error,
                                "iterations": m.latencies_ns.len(), "output_digest": m.output_digest,
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                let analysis = analysis::analyze(&data);
                Ok(serde_json::json!({
                    "run": run,
                    "phases": phases,
                    "analysis": serde_json::to_value(&analysis).unwrap_or_default(),
                })
                .to_string())
            })
            .await
            .map_err(Error::from)
    }

    /// The stored run in the analysis input format (JSON), for `mpslabctl compare`.
    async fn get_run_data(&self, id: u64) -> Result<String, Error> {
        self.reader
            .with(move |c| {
                Ok(serde_json::to_string(&rundata::load(c, id as i64)?).unwrap_or_default())
            })
            .await
            .map_err(Error::from)
    }

    /// A run's report: `format` is md, json or html.
    async fn get_report(&self, id: u64, format: String) -> Result<String, Error> {
        if !matches!(format.as_str(), "md" | "json" | "html") {
            return Err(Error::InvalidArgument(format!(
                "unknown report format `{format}`; expected md, json or html"
            )));
        }
        self.reader
            .with(move |c| {
                let data = rundata::load(c, id as i64)?;
                Ok(rundata::render_report(&data, &format))
            })
            .await
            .map_err(Error::from)
    }

    /// Re-read the configuration files; an invalid configuration is refused and the running
    /// one kept.
    async fn reload_config(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<(), Error> {
        self.authorize(conn, &hdr, "ReloadConfig").await?;
        self.call(Command::Reload).await
    }

    #[zbus(signal)]
    pub async fn run_started(
        emitter: &SignalEmitter<'_>,
        id: u64,
        experiment: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn run_progress(
        emitter: &SignalEmitter<'_>,
        id: u64,
        phase: u32,
        phases: u32,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn run_finished(
        emitter: &SignalEmitter<'_>,
        id: u64,
        status: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal, name = "MpsStateChanged")]
    pub async fn mps_state_changed_signal(
        emitter: &SignalEmitter<'_>,
        state: &str,
        reason: &str,
    ) -> zbus::Result<()>;
}

/// The emitter for this service's signals (`RunStarted`, `RunProgress`, `RunFinished`, ...).
pub fn emitter(conn: &Connection) -> zbus::Result<SignalEmitter<'static>> {
    SignalEmitter::new(conn, OBJECT_PATH)
}

/// Emit `PropertiesChanged` for whatever differs between two snapshots.
pub async fn emit_changes(conn: &Connection, old: &Status, new: &Status) -> zbus::Result<()> {
    let iface_ref = conn
        .object_server()
        .interface::<_, Manager>(OBJECT_PATH)
        .await?;
    let iface = iface_ref.get().await;
    let emitter = iface_ref.signal_emitter();
    if old.mps_state != new.mps_state || old.mps_reason != new.mps_reason {
        iface.mps_state_changed(emitter).await?;
        iface.mps_reason_changed(emitter).await?;
        Manager::mps_state_changed_signal(emitter, &new.mps_state, &new.mps_reason).await?;
    }
    if old.active_run != new.active_run {
        iface.active_run_changed(emitter).await?;
    }
    if old.queue.len() != new.queue.len() {
        iface.queue_length_changed(emitter).await?;
    }
    if old.samplers != new.samplers {
        iface.samplers_changed(emitter).await?;
    }
    Ok(())
}
