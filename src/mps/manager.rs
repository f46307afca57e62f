//! The MPS lifecycle: probe, recover, start, watch, stop (research/mps.md section 5).

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::future::Future;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

use super::parse::{
    control_socket_len, first_line, mem_limits_match, parse_mem_limit_mib, parse_nofile_limits,
    parse_percentage, parse_pid_list, parse_pinned_spec, parse_server_exit, parse_tegra_release,
    percentages_match, tegra_release_supports_mps, SUN_PATH_MAX,
};
use super::procs::{self, identify, is_alive, terminate_all, MpsProcKind, ProcIdentity};
use super::{
    ui, worker_env, MpsClientMode, MpsError, MpsEvent, MpsSettings, MpsState, MpsStatus,
    MpsTransition,
};

const POLL: Duration = Duration::from_millis(100);
const TAIL_POLL: Duration = Duration::from_millis(250);
const TERM_GRACE: Duration = Duration::from_secs(1);
const STANDARD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const SERVER_BINARY: &str = "nvidia-cuda-mps-server";
/// Nodes the control daemon creates in its pipe directory; only these are ever removed.
const PIPE_NODES: [&str; 5] = [
    "control",
    "control_lock",
    "control_privileged",
    "log",
    "nvidia-cuda-mps-control.pid",
];
const SHM_WARN_BYTES: u64 = 64 << 20;
const NOFILE_WANTED: u64 = 16384;
const STDERR_KEEP: usize = 20;

/// How our control daemon ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonExit {
    pub pid: u32,
    /// `exit status 1`, `killed by SIGKILL`, ...
    pub status: String,
    /// Last line it wrote to stderr, if any.
    pub last_output: Option<String>,
}

impl DaemonExit {
    fn describe(&self) -> String {
        match &self.last_output {
            Some(line) => format!(
                "control daemon (pid {}) {}; last output: {line}",
                self.pid, self.status
            ),
            None => format!("control daemon (pid {}) {}", self.pid, self.status),
        }
    }
}

/// What a successful probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// First line of `nvidia-cuda-mps-control -v`.
    pub version: String,
    pub server_binary: PathBuf,
    /// Conditions that do not stop MPS but may hurt it (`/dev/shm` size, open-file limit).
    pub warnings: Vec<String>,
}

/// Our record of the daemon we started, so a restarted mpslabd can clean up after a crash.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OwnerRecord {
    pipe_dir: PathBuf,
    daemon: ProcIdentity,
    servers: Vec<ProcIdentity>,
}

struct Shared {
    status: Mutex<MpsStatus>,
    watch_tx: watch::Sender<MpsStatus>,
    events: mpsc::UnboundedSender<MpsEvent>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn state(&self) -> MpsState {
        lock(&self.status).state
    }

    fn set(&self, to: MpsState, reason: impl Into<String>) {
        self.set_if(None, to, reason.into());
    }

    /// Moves to `to` (only from one of `from`, when given) and publishes the change.
    fn set_if(&self, from: Option<&[MpsState]>, to: MpsState, reason: String) -> bool {
        let mut status = lock(&self.status);
        let previous = status.state;
        if from.is_some_and(|allowed| !allowed.contains(&previous)) {
            return false;
        }
        *status = MpsStatus {
            state: to,
            reason: reason.clone(),
        };
        self.watch_tx.send_replace(status.clone());
        if previous != to {
            tracing::info!(from = %previous, to = %to, reason = %reason, "MPS state");
            let _ = self.events.send(MpsEvent::Transition(MpsTransition {
                from: previous,
                to,
                reason,
            }));
        }
        true
    }
}

struct RunningDaemon {
    id: ProcIdentity,
    exit_rx: watch::Receiver<Option<DaemonExit>>,
    /// Owns the `tokio::process::Child`; aborting it drops the child, which kills it.
    waiter: JoinHandle<()>,
}

struct LogTail {
    stop_tx: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Owns one CUDA MPS control daemon. Meant to live inside one actor task.
pub struct MpsManager {
    settings: MpsSettings,
    shared: Arc<Shared>,
    daemon: Option<RunningDaemon>,
    servers: Vec<ProcIdentity>,
    tail: Option<LogTail>,
    server_exits: Arc<Mutex<Vec<String>>>,
    server_dir: Option<PathBuf>,
}

impl Drop for MpsManager {
    fn drop(&mut self) {
        // Dropping the child kills the daemon (kill_on_drop); leftover servers are found through
        // the owner record by the next `recover`.
        if let Some(d) = &self.daemon {
            d.waiter.abort();
        }
        if let Some(t) = &self.tail {
            t.task.abort();
        }
    }
}

impl MpsManager {
    /// A manager in state `unavailable` ("not probed yet"); call [`probe`](Self::probe) or
    /// [`recover`](Self::recover) first.
    pub fn new(settings: MpsSettings, events: mpsc::UnboundedSender<MpsEvent>) -> Self {
        let initial = MpsStatus {
            state: MpsState::Unavailable,
            reason: "not probed yet".into(),
        };
        let (watch_tx, _) = watch::channel(initial.clone());
        Self {
            settings,
            shared: Arc::new(Shared {
                status: Mutex::new(initial),
                watch_tx,
                events,
            }),
            daemon: None,
            servers: Vec::new(),
            tail: None,
            server_exits: Arc::new(Mutex::new(Vec::new())),
            server_dir: None,
        }
    }

    pub fn settings(&self) -> &MpsSettings {
        &self.settings
    }

    pub fn subscribe(&self) -> watch::Receiver<MpsStatus> {
        self.shared.watch_tx.subscribe()
    }

    pub fn status(&self) -> MpsStatus {
        lock(&self.shared.status).clone()
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|d| d.id.pid)
    }

    pub fn server_pids(&self) -> Vec<u32> {
        self.servers.iter().map(|s| s.pid).collect()
    }

    /// Resolves when the current control daemon exits (at once if it already has). The state
    /// has then already moved to `failed` unless the exit was part of `stop`. Never resolves
    /// when no daemon runs; create a fresh future after each `start`.
    pub fn died(&self) -> impl Future<Output = DaemonExit> + Send + 'static {
        let rx = self.daemon.as_ref().map(|d| d.exit_rx.clone());
        async move {
            if let Some(mut rx) = rx {
                let exit = match rx.wait_for(Option::is_some).await {
                    Ok(value) => value.clone(),
                    Err(_) => None,
                };
                if let Some(exit) = exit {
                    return exit;
                }
            }
            std::future::pending().await
        }
    }

    /// Environment for a worker: attached to our daemon when MPS runs, stripped of every
    /// `CUDA_MPS_*` variable otherwise.
    pub fn client_mode(&self, active_thread_percentage: Option<f64>) -> MpsClientMode {
        if self.shared.state() == MpsState::Running {
            MpsClientMode::On {
                pipe_dir: self.settings.pipe_dir.clone(),
                log_dir: self.settings.log_dir.clone(),
                active_thread_percentage,
                pinned_mem_limit: None,
            }
        } else {
            MpsClientMode::Off
        }
    }

    /// Sends one command to our daemon (hard timeout `call_timeout`) and returns its stdout.
    pub async fn call(&self, command: &str) -> Result<String, MpsError> {
        self.call_within(command, self.settings.call_timeout).await
    }

    /// PIDs of the clients attached to our servers (to verify that workers really attached).
    pub async fn client_pids(&self) -> Result<Vec<u32>, MpsError> {
        let mut clients = Vec::new();
        for server in self.list_servers().await? {
            let reply = self.call(&format!("get_client_list {server}")).await?;
            clients.extend(parse_pid_list(&reply).map_err(|line| MpsError::Command {
                cmd: format!("get_client_list {server}"),
                code: "0".into(),
                output: line,
            })?);
        }
        Ok(clients)
    }

    async fn list_servers(&self) -> Result<Vec<u32>, MpsError> {
        let reply = self.call("get_server_list").await?;
        parse_pid_list(&reply).map_err(|line| MpsError::Command {
            cmd: "get_server_list".into(),
            code: "0".into(),
            output: line,
        })
    }

    // ---- probe --------------------------------------------------------------------------------

    /// Checks that MPS can run here. Sets `stopped` (or keeps `failed`) when it can, and
    /// `unavailable` with the reason when it cannot.
    pub async fn probe(&mut self) -> Result<ProbeReport, MpsError> {
        let state = self.shared.state();
        if matches!(
            state,
            MpsState::Starting | MpsState::Running | MpsState::Stopping
        ) {
            return Err(MpsError::Busy {
                state,
                operation: "probe",
            });
        }
        match self.check().await {
            Ok(report) => {
                for warning in &report.warnings {
                    tracing::warn!("MPS: {warning}");
                }
                let mut reason =
                    format!("MPS available (control daemon version {})", report.version);
                if !report.warnings.is_empty() {
                    reason.push_str("; warnings: ");
                    reason.push_str(&report.warnings.join("; "));
                }
                self.server_dir = report.server_binary.parent().map(Path::to_path_buf);
                if state != MpsState::Failed {
                    self.shared.set(MpsState::Stopped, reason);
                }
                Ok(report)
            }
            Err(reason) => {
                self.shared.set(MpsState::Unavailable, reason.clone());
                Err(MpsError::Unavailable(reason))
            }
        }
    }

    async fn check(&self) -> Result<ProbeReport, String> {
        let s = &self.settings;
        let control = &s.control_path;
        match tokio::fs::metadata(control).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "{} not found (the NVIDIA driver's MPS tools are not installed)",
                    control.display()
                ))
            }
            Err(e) => return Err(format!("cannot inspect {}: {e}", control.display())),
            Ok(meta) if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 => {
                return Err(format!("{} is not an executable file", control.display()))
            }
            Ok(_) => {}
        }
        let server_binary = find_server_binary(control).await.ok_or_else(|| {
            format!(
                "{SERVER_BINARY} not found next to {} or in PATH",
                control.display()
            )
        })?;
        if let Ok(text) = tokio::fs::read_to_string(&s.tegra_release_path).await {
            if let Some(release) = parse_tegra_release(&text) {
                if !tegra_release_supports_mps(release) {
                    return Err(format!(
                        "L4T R{}.{} ({}) is older than JetPack 6.1 (R36.4), which brought MPS to Jetson",
                        release.0,
                        release.1,
                        s.tegra_release_path.display()
                    ));
                }
            }
        }
        let len = control_socket_len(&s.pipe_dir);
        if len > SUN_PATH_MAX {
            return Err(format!(
                "{}/control is {len} bytes, over the {SUN_PATH_MAX}-byte unix socket limit: choose a shorter [mps] pipe_dir",
                s.pipe_dir.display()
            ));
        }
        let (pipe, log, uid) = (s.pipe_dir.clone(), s.log_dir.clone(), s.server_uid);
        tokio::task::spawn_blocking(move || check_dirs(&[pipe, log], uid))
            .await
            .map_err(|e| format!("directory check failed: {e}"))??;
        let env = self.daemon_env_with(server_binary.parent());
        let out = ui::run_captured(control, &["-v"], &env, None, s.call_timeout, "-v")
            .await
            .map_err(|e| format!("cannot run {} -v: {e}", control.display()))?;
        let version = first_line(&out.stdout)
            .or_else(|| first_line(&out.stderr))
            .map(str::to_owned);
        let version = match (out.code, version) {
            (Some(0), Some(v)) => v,
            (code, _) => {
                return Err(format!(
                    "`{} -v` failed ({}): {}",
                    control.display(),
                    code.map_or_else(|| "killed".to_owned(), |c| format!("exit status {c}")),
                    out.combined()
                ))
            }
        };
        let mut warnings = Vec::new();
        match tokio::task::spawn_blocking(|| nix::sys::statvfs::statvfs("/dev/shm")).await {
            Ok(Ok(fs)) => {
                let bytes = fs.blocks().saturating_mul(fs.fragment_size());
                if bytes < SHM_WARN_BYTES {
                    warnings.push(format!(
                        "/dev/shm has only {} MiB; MPS servers need shared memory",
                        bytes >> 20
                    ));
                }
            }
            _ => {
                return Err(
                    "/dev/shm is missing; the MPS server keeps its shared memory there".into(),
                )
            }
        }
        if let Some((soft, hard)) = tokio::fs::read_to_string("/proc/self/limits")
            .await
            .ok()
            .as_deref()
            .and_then(parse_nofile_limits)
        {
            if let Some(limit) = soft
                .into_iter()
                .chain(hard)
                .min()
                .filter(|l| *l < NOFILE_WANTED)
            {
                warnings.push(format!(
                    "open-file limit is {limit} (< {NOFILE_WANTED}); MPS servers may fail to create SHM segments (set LimitNOFILE)"
                ));
            }
        }
        Ok(ProbeReport {
            version,
            server_binary,
            warnings,
        })
    }

    // ---- recover ------------------------------------------------------------------------------

    /// At daemon start: cleans up a control daemon (and its servers) that our previous run left
    /// behind, refuses a foreign daemon on our pipe directory, then probes.
    pub async fn recover(&mut self) -> Result<(), MpsError> {
        if self.daemon.is_some() {
            return Ok(());
        }
        if let Err(err) = self.clear_leftovers().await {
            self.shared.set(MpsState::Unavailable, err.to_string());
            return Err(err);
        }
        match self.probe().await {
            Ok(_) | Err(MpsError::Unavailable(_)) => Ok(()),
            Err(err) => Err(err),
        }
    }

    async fn clear_leftovers(&mut self) -> Result<(), MpsError> {
        if let Some(record) = self.read_owner_record().await {
            tracing::warn!(
                pid = record.daemon.pid,
                "cleaning up the MPS control daemon left by a previous mpslabd"
            );
            let alive = is_alive(record.daemon).await;
            if alive {
                let cmd = format!("quit -t {}", quit_seconds(self.settings.quit_timeout));
                if let Err(e) = self.call_within(&cmd, self.settings.quit_timeout).await {
                    tracing::warn!("graceful quit of the old control daemon failed: {e}");
                }
            }
            let mut victims: HashSet<ProcIdentity> = record.servers.iter().copied().collect();
            victims.insert(record.daemon);
            let group = Some((pid_i32(record.daemon.pid), record.daemon.start_time));
            victims.extend(
                procs::scan_mps(self.settings.pipe_dir.clone(), group)
                    .await
                    .into_iter()
                    .map(|f| f.id),
            );
            self.kill_all(victims.into_iter().collect()).await?;
            self.remove_owner_record().await;
        }
        self.refuse_foreign().await
    }

    /// A control daemon on our pipe directory that we did not start is never touched.
    async fn refuse_foreign(&self) -> Result<(), MpsError> {
        let pipe_dir = self.settings.pipe_dir.clone();
        let found = procs::scan_mps(pipe_dir.clone(), None).await;
        if let Some(f) = found.iter().find(|f| f.kind == MpsProcKind::ControlDaemon) {
            return Err(MpsError::Foreign {
                pid: f.id.pid,
                pipe_dir,
            });
        }
        if tokio::fs::symlink_metadata(pipe_dir.join("control"))
            .await
            .is_err()
        {
            return Ok(());
        }
        // Another user's daemon hides its environment; an answer on the socket still betrays it.
        match self
            .call_within("get_server_list", self.settings.call_timeout)
            .await
        {
            Ok(_) | Err(MpsError::Timeout { .. }) => {
                let pid = tokio::fs::read_to_string(pipe_dir.join("nvidia-cuda-mps-control.pid"))
                    .await
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(0);
                Err(MpsError::Foreign { pid, pipe_dir })
            }
            Err(_) => Ok(()), // stale socket of a dead daemon (F2)
        }
    }

    // ---- start --------------------------------------------------------------------------------

    /// Starts MPS: fresh private directories, `nvidia-cuda-mps-control -f` as our child,
    /// readiness, defaults applied and read back, one server forced up. `running` on success;
    /// `unavailable` when no server can start (F4); `failed` otherwise.
    pub async fn start(&mut self) -> Result<(), MpsError> {
        let state = self.shared.state();
        match state {
            MpsState::Running => return Ok(()),
            MpsState::Starting | MpsState::Stopping => {
                return Err(MpsError::Busy {
                    state,
                    operation: "start",
                })
            }
            _ => {}
        }
        if self.daemon.is_some() || !self.servers.is_empty() {
            self.teardown().await?;
        }
        if let Err(err) = self.clear_leftovers().await {
            self.shared.set(MpsState::Unavailable, err.to_string());
            return Err(err);
        }
        self.probe().await?;
        self.shared.set(
            MpsState::Starting,
            format!("starting {} -f", self.settings.control_path.display()),
        );
        match self.bring_up().await {
            Ok(server) => {
                let pid = self.daemon_pid().unwrap_or_default();
                self.shared.set_if(
                    Some(&[MpsState::Starting]),
                    MpsState::Running,
                    format!(
                        "control daemon pid {pid}, server pid {} for uid {}",
                        server.pid, self.settings.server_uid
                    ),
                );
                if self.shared.state() == MpsState::Running {
                    Ok(())
                } else {
                    Err(MpsError::StartFailed(self.status().reason))
                }
            }
            Err(err) => {
                self.shared
                    .set(MpsState::Stopping, format!("start failed: {err}"));
                let mut reason = err.to_string();
                if let Err(cleanup) = self.teardown().await {
                    reason.push_str(&format!("; cleanup: {cleanup}"));
                }
                let to = if matches!(err, MpsError::Unavailable(_)) {
                    MpsState::Unavailable
                } else {
                    MpsState::Failed
                };
                self.shared.set(to, reason);
                Err(err)
            }
        }
    }

    async fn bring_up(&mut self) -> Result<ProcIdentity, MpsError> {
        self.prepare_dirs().await?;
        self.spawn_daemon().await?;
        self.write_owner_record().await?;
        self.start_tail();
        self.wait_ready().await?;
        self.apply_defaults().await?;
        let server = self.start_server().await?;
        self.servers = vec![server];
        self.write_owner_record().await?;
        Ok(server)
    }

    async fn prepare_dirs(&self) -> Result<(), MpsError> {
        let s = &self.settings;
        let io = |context: String| move |source| MpsError::Io { context, source };
        tokio::fs::create_dir_all(&s.pipe_dir)
            .await
            .map_err(io(format!("cannot create {}", s.pipe_dir.display())))?;
        tokio::fs::set_permissions(&s.pipe_dir, std::fs::Permissions::from_mode(0o700))
            .await
            .map_err(io(format!("cannot chmod {}", s.pipe_dir.display())))?;
        for node in PIPE_NODES {
            remove_if_present(&s.pipe_dir.join(node)).await?;
        }
        tokio::fs::create_dir_all(&s.log_dir)
            .await
            .map_err(io(format!("cannot create {}", s.log_dir.display())))?;
        tokio::fs::set_permissions(&s.log_dir, std::fs::Permissions::from_mode(0o755))
            .await
            .map_err(io(format!("cannot chmod {}", s.log_dir.display())))?;
        for log in ["control.log", "server.log"] {
            remove_if_present(&s.log_dir.join(log)).await?;
        }
        if nix::unistd::geteuid().is_root() && s.server_uid != 0 {
            // Single-user mode: the daemon runs as the worker UID and must own its directories.
            let (uid, dirs) = (s.server_uid, [s.pipe_dir.clone(), s.log_dir.clone()]);
            tokio::task::spawn_blocking(move || {
                dirs.iter()
                    .try_for_each(|d| std::os::unix::fs::chown(d, Some(uid), None))
            })
            .await
            .map_err(|e| MpsError::Io {
                context: "chown task".into(),
                source: std::io::Error::other(e),
            })?
            .map_err(io(format!(
                "cannot chown MPS directories to uid {}",
                s.server_uid
            )))?;
        }
        Ok(())
    }

    async fn spawn_daemon(&mut self) -> Result<(), MpsError> {
        let control = self.settings.control_path.clone();
        let mut cmd = Command::new(&control);
        cmd.arg("-f")
            .env_clear()
            .envs(self.daemon_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if nix::unistd::geteuid().is_root() && self.settings.server_uid != 0 {
            let uid = self.settings.server_uid;
            cmd.uid(uid);
            if let Some(gid) = primary_gid(uid).await {
                cmd.gid(gid);
            }
        }
        let mut child = cmd.spawn().map_err(|source| MpsError::Io {
            context: format!("cannot start {} -f", control.display()),
            source,
        })?;
        let pid = child
            .id()
            .ok_or_else(|| MpsError::StartFailed("control daemon exited at once".into()))?;
        let Some(id) = identify(pid).await else {
            let status = child
                .wait()
                .await
                .map(describe_exit)
                .unwrap_or_else(|e| e.to_string());
            return Err(MpsError::StartFailed(format!(
                "control daemon (pid {pid}) {status} at once"
            )));
        };
        let stderr = child.stderr.take();
        let (exit_tx, exit_rx) = watch::channel(None);
        let shared = Arc::clone(&self.shared);
        let waiter = tokio::spawn(async move {
            let recent: Arc<Mutex<VecDeque<String>>> = Arc::default();
            let reader = {
                let recent = Arc::clone(&recent);
                async move {
                    let Some(stderr) = stderr else { return };
                    let mut lines = BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let mut recent = lock(&recent);
                        if recent.len() == STDERR_KEEP {
                            recent.pop_front();
                        }
                        recent.push_back(line);
                    }
                }
            };
            tokio::pin!(reader);
            let mut reader_done = false;
            let status = loop {
                tokio::select! {
                    status = child.wait() => break status,
                    () = &mut reader, if !reader_done => reader_done = true,
                }
            };
            if !reader_done {
                // Servers may hold the pipe open; take what is buffered, do not wait for EOF.
                let _ = timeout(Duration::from_millis(200), &mut reader).await;
            }
            let last_output = lock(&recent).back().cloned();
            let exit = DaemonExit {
                pid,
                status: status
                    .map(describe_exit)
                    .unwrap_or_else(|e| format!("could not be waited for: {e}")),
                last_output,
            };
            shared.set_if(
                Some(&[MpsState::Starting, MpsState::Running]),
                MpsState::Failed,
                format!("{} unexpectedly", exit.describe()),
            );
            let _ = exit_tx.send(Some(exit));
        });
        self.daemon = Some(RunningDaemon {
            id,
            exit_rx,
            waiter,
        });
        Ok(())
    }

    fn daemon_exit(&self) -> Option<DaemonExit> {
        self.daemon
            .as_ref()
            .and_then(|d| d.exit_rx.borrow().clone())
    }

    async fn wait_ready(&self) -> Result<(), MpsError> {
        const READY_CMD: &str = "get_default_active_thread_percentage";
        let deadline = Instant::now() + self.settings.start_deadline;
        let mut last = String::from("no attempt finished");
        loop {
            if let Some(exit) = self.daemon_exit() {
                return Err(MpsError::StartFailed(exit.describe()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(MpsError::StartFailed(format!(
                    "no answer to `{READY_CMD}` within {:?}; last error: {last}",
                    self.settings.start_deadline
                )));
            }
            match self
                .call_within(READY_CMD, self.settings.call_timeout.min(left))
                .await
            {
                Ok(reply) if parse_percentage(&reply).is_some() => return Ok(()),
                Ok(reply) => last = format!("unexpected reply {:?}", reply.trim()),
                Err(e) => last = e.to_string(),
            }
            sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// Defaults are lost on every quit and only reach servers started later (F12), so they are
    /// set before `start_server` and read back (tolerantly, F13).
    async fn apply_defaults(&self) -> Result<(), MpsError> {
        if let Some(pct) = self.settings.default_active_thread_percentage {
            let set = format!("set_default_active_thread_percentage {pct}");
            let reply = self.call(&set).await?;
            if parse_percentage(&reply).is_none() && first_line(&reply).is_some() {
                return Err(MpsError::StartFailed(format!(
                    "`{set}` was rejected: {}",
                    reply.trim()
                )));
            }
            let back = self.call("get_default_active_thread_percentage").await?;
            if !parse_percentage(&back).is_some_and(|got| percentages_match(pct, got)) {
                return Err(MpsError::StartFailed(format!(
                    "`{set}` did not take: get_default_active_thread_percentage reports {:?}",
                    back.trim()
                )));
            }
        }
        if let Some(spec) = &self.settings.pinned_mem_limit {
            let limits = parse_pinned_spec(spec)
                .map_err(|e| MpsError::StartFailed(format!("[mps] pinned_mem_limit: {e}")))?;
            for limit in limits {
                let set = format!(
                    "set_default_device_pinned_mem_limit {} {}",
                    limit.device, limit.value
                );
                let reply = self.call(&set).await?;
                if let Some(line) = first_line(&reply) {
                    return Err(MpsError::StartFailed(format!(
                        "`{set}` was rejected: {line}"
                    )));
                }
                let get = format!("get_default_device_pinned_mem_limit {}", limit.device);
                let back = self.call(&get).await?;
                let got = first_line(&back).and_then(parse_mem_limit_mib);
                if !got.is_some_and(|got| mem_limits_match(limit.mib, got)) {
                    return Err(MpsError::StartFailed(format!(
                        "`{set}` did not take: `{get}` reports {:?}",
                        back.trim()
                    )));
                }
            }
        }
        Ok(())
    }

    /// A running daemon does not prove MPS works: force a server up and wait until the same
    /// server PID is listed twice in a row and alive (a crash-looping server flickers, F4).
    async fn start_server(&self) -> Result<ProcIdentity, MpsError> {
        let uid = self.settings.server_uid;
        let cmd = format!("start_server -uid {uid}");
        let reply = self.call(&cmd).await?;
        if let Some(line) = first_line(&reply) {
            tracing::warn!("`{cmd}` answered: {line}");
        }
        let deadline = Instant::now() + self.settings.start_deadline;
        let mut previous: Option<u32> = None;
        // The daemon failing to answer is our failure; the daemon answering "no server" is
        // MPS being unusable on this machine (F4).
        let mut call_error: Option<String> = None;
        let mut odd_answer: Option<String> = None;
        loop {
            if let Some(exit) = self.daemon_exit() {
                return Err(MpsError::StartFailed(exit.describe()));
            }
            if Instant::now() >= deadline {
                let waited = self.settings.start_deadline;
                if let Some(err) = call_error {
                    return Err(MpsError::StartFailed(format!(
                        "polling `get_server_list` for {waited:?} after `{cmd}` failed: {err}"
                    )));
                }
                let exits = lock(&self.server_exits).clone();
                let mut reason = format!("no MPS server came up within {waited:?} after `{cmd}`");
                if let Some(line) = exits.last() {
                    reason.push_str(&format!(
                        "; control.log: {line} ({} server exits)",
                        exits.len()
                    ));
                } else if let Some(answer) = odd_answer {
                    reason.push_str(&format!("; get_server_list answered: {answer}"));
                }
                return Err(MpsError::Unavailable(reason));
            }
            match self
                .call("get_server_list")
                .await
                .map(|r| parse_pid_list(&r))
            {
                Ok(Ok(pids)) => {
                    call_error = None;
                    let current = pids.first().copied();
                    if let (Some(pid), true) = (current, current == previous) {
                        if let Some(id) = identify(pid).await {
                            return Ok(id);
                        }
                    }
                    previous = current;
                }
                Ok(Err(line)) => {
                    call_error = None;
                    odd_answer = Some(line);
                }
                Err(e) => call_error = Some(e.to_string()),
            }
            sleep(POLL * 2).await;
        }
    }

    fn start_tail(&mut self) {
        let path = self.settings.log_dir.join("control.log");
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let events = self.shared.events.clone();
        let exits = Arc::clone(&self.server_exits);
        lock(&exits).clear();
        let task = tokio::spawn(async move {
            let mut offset = 0u64;
            let mut partial = String::new();
            loop {
                let stopping = *stop_rx.borrow();
                for line in read_new_lines(&path, &mut offset, &mut partial).await {
                    if let Some((pid, status)) = parse_server_exit(&line) {
                        lock(&exits).push(super::parse::log_message(&line).to_owned());
                        let _ = events.send(MpsEvent::ServerExited { pid, status });
                    }
                    let _ = events.send(MpsEvent::ControlLog(line));
                }
                if stopping {
                    break;
                }
                tokio::select! {
                    () = sleep(TAIL_POLL) => {}
                    changed = stop_rx.changed() => if changed.is_err() { break },
                }
            }
        });
        self.tail = Some(LogTail { stop_tx, task });
    }

    async fn stop_tail(&mut self) {
        if let Some(tail) = self.tail.take() {
            let _ = tail.stop_tx.send(true);
            let mut task = tail.task;
            if timeout(Duration::from_secs(1), &mut task).await.is_err() {
                task.abort();
            }
        }
    }

    // ---- stop ---------------------------------------------------------------------------------

    /// Stops MPS: `quit -t N` under a hard timeout, then SIGTERM/SIGKILL of whatever is left of
    /// the daemon and its servers (by identity), then our pipe directory is removed. The
    /// orchestrator stops the workers first.
    pub async fn stop(&mut self) -> Result<(), MpsError> {
        let state = self.shared.state();
        if matches!(state, MpsState::Starting | MpsState::Stopping) {
            return Err(MpsError::Busy {
                state,
                operation: "stop",
            });
        }
        if self.daemon.is_none() && self.servers.is_empty() {
            if state == MpsState::Failed {
                self.shared.set(MpsState::Stopped, "stopped after failure");
            }
            return Ok(());
        }
        self.shared.set(
            MpsState::Stopping,
            format!("quit -t {}", quit_seconds(self.settings.quit_timeout)),
        );
        match self.teardown().await {
            Ok(note) => {
                self.shared.set(MpsState::Stopped, format!("stopped{note}"));
                Ok(())
            }
            Err(err) => {
                self.shared.set(MpsState::Failed, err.to_string());
                Err(err)
            }
        }
    }

    /// Ends our daemon and servers, however far they got. Returns a note on how it went.
    async fn teardown(&mut self) -> Result<String, MpsError> {
        let mut note = String::new();
        let daemon_alive = self
            .daemon
            .as_ref()
            .is_some_and(|d| d.exit_rx.borrow().is_none());
        if daemon_alive {
            let cmd = format!("quit -t {}", quit_seconds(self.settings.quit_timeout));
            match self.call_within(&cmd, self.settings.quit_timeout).await {
                Ok(_) => {
                    if let Some(d) = &self.daemon {
                        let mut rx = d.exit_rx.clone();
                        let _ = timeout(TERM_GRACE, rx.wait_for(Option::is_some)).await;
                    }
                }
                Err(e) => {
                    tracing::warn!("MPS: {e}; signalling the daemon");
                    note = format!(" (forced: {e})");
                }
            }
        }
        let mut victims: HashSet<ProcIdentity> = self.servers.iter().copied().collect();
        let group = self
            .daemon
            .as_ref()
            .map(|d| (pid_i32(d.id.pid), d.id.start_time));
        if let Some(d) = &self.daemon {
            victims.insert(d.id);
        }
        victims.extend(
            procs::scan_mps(self.settings.pipe_dir.clone(), group)
                .await
                .into_iter()
                .map(|f| f.id),
        );
        let result = self.kill_all(victims.into_iter().collect()).await;
        if let Some(d) = self.daemon.take() {
            let mut rx = d.exit_rx.clone();
            if timeout(Duration::from_secs(2), rx.wait_for(Option::is_some))
                .await
                .is_err()
            {
                d.waiter.abort();
            }
        }
        self.servers.clear();
        self.stop_tail().await;
        for node in PIPE_NODES {
            let _ = remove_if_present(&self.settings.pipe_dir.join(node)).await;
        }
        let _ = tokio::fs::remove_dir(&self.settings.pipe_dir).await;
        self.remove_owner_record().await;
        result.map(|()| note)
    }

    async fn kill_all(&self, victims: Vec<ProcIdentity>) -> Result<(), MpsError> {
        let mut alive = Vec::new();
        for id in victims {
            if is_alive(id).await {
                alive.push(id);
            }
        }
        if alive.is_empty() {
            return Ok(());
        }
        tracing::info!(pids = ?alive.iter().map(|i| i.pid).collect::<Vec<_>>(), "signalling MPS processes");
        let survivors = terminate_all(&alive, TERM_GRACE).await;
        if survivors.is_empty() {
            Ok(())
        } else {
            let pids: Vec<String> = survivors.iter().map(|s| s.pid.to_string()).collect();
            Err(MpsError::Unkillable(format!("pids {}", pids.join(", "))))
        }
    }

    // ---- helpers ------------------------------------------------------------------------------

    async fn call_within(&self, command: &str, limit: Duration) -> Result<String, MpsError> {
        let env = self.daemon_env();
        ui::call(
            &self.settings.control_path,
            &env,
            &self.settings.pipe_dir,
            command,
            limit,
        )
        .await
    }

    fn daemon_env(&self) -> Vec<(OsString, OsString)> {
        self.daemon_env_with(self.server_dir.as_deref())
    }

    /// Built from nothing: PATH that finds the server (the daemon execs it through PATH), our
    /// two directories, and the configured extras. Nothing inherited (F11).
    fn daemon_env_with(&self, server_dir: Option<&Path>) -> Vec<(OsString, OsString)> {
        let s = &self.settings;
        let mut path = OsString::new();
        for dir in server_dir
            .into_iter()
            .chain(s.control_path.parent())
            .filter(|d| !d.as_os_str().is_empty())
        {
            path.push(dir);
            path.push(":");
        }
        path.push(STANDARD_PATH);
        let extras = s
            .extra_env
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "PATH" | "CUDA_MPS_PIPE_DIRECTORY" | "CUDA_MPS_LOG_DIRECTORY"
                )
            })
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let mut env = worker_env(extras, &MpsClientMode::Off);
        // Explicitly configured MPS defaults (e.g. CUDA_MPS_ACTIVE_THREAD_PERCENTAGE) are allowed.
        env.extend(
            s.extra_env
                .iter()
                .filter(|(k, _)| {
                    k.starts_with("CUDA_MPS_")
                        && !matches!(
                            k.as_str(),
                            "CUDA_MPS_PIPE_DIRECTORY" | "CUDA_MPS_LOG_DIRECTORY"
                        )
                })
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        );
        env.push(("PATH".into(), path));
        env.push((
            "CUDA_MPS_PIPE_DIRECTORY".into(),
            s.pipe_dir.clone().into_os_string(),
        ));
        env.push((
            "CUDA_MPS_LOG_DIRECTORY".into(),
            s.log_dir.clone().into_os_string(),
        ));
        env
    }

    async fn read_owner_record(&self) -> Option<OwnerRecord> {
        let text = tokio::fs::read_to_string(&self.settings.pid_file)
            .await
            .ok()?;
        match serde_json::from_str::<OwnerRecord>(&text) {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::warn!(
                    "ignoring unreadable MPS owner record {}: {e}",
                    self.settings.pid_file.display()
                );
                None
            }
        }
    }

    async fn write_owner_record(&self) -> Result<(), MpsError> {
        let Some(d) = &self.daemon else { return Ok(()) };
        let record = OwnerRecord {
            pipe_dir: self.settings.pipe_dir.clone(),
            daemon: d.id,
            servers: self.servers.clone(),
        };
        let path = &self.settings.pid_file;
        let io = |source| MpsError::Io {
            context: format!("cannot write {}", path.display()),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.map_err(io)?;
        }
        let text = serde_json::to_string(&record).map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = path.with_extension("tmp");
        tokio::fs::write(&tmp, text).await.map_err(io)?;
        tokio::fs::rename(&tmp, path).await.map_err(io)
    }

    async fn remove_owner_record(&self) {
        let _ = remove_if_present(&self.settings.pid_file).await;
    }
}

fn pid_i32(pid: u32) -> i32 {
    i32::try_from(pid).unwrap_or(i32::MAX)
}

/// `-t` for `quit`: one second less than the budget, so the daemon's own forced shutdown can
/// finish before our hard timeout fires.
fn quit_seconds(budget: Duration) -> u64 {
    budget.as_secs().saturating_sub(1).max(1)
}

fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => match nix::sys::signal::Signal::try_from(sig) {
            Ok(signal) => format!("was killed by {signal}"),
            Err(_) => format!("was killed by signal {sig}"),
        },
        _ => "ended".to_owned(),
    }
}

async fn remove_if_present(path: &Path) -> Result<(), MpsError> {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(MpsError::Io {
            context: format!("cannot remove {}", path.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}

async fn is_executable(path: &Path) -> bool {
    tokio::fs::metadata(path)
        .await
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The real daemon execs the server through PATH; we look next to the control binary first
/// (where the driver installs both), then in our PATH and the standard directories.
async fn find_server_binary(control: &Path) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = control
        .parent()
        .map(Path::to_path_buf)
        .into_iter()
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.extend(std::env::split_paths(STANDARD_PATH));
    for dir in dirs.into_iter().filter(|d| !d.as_os_str().is_empty()) {
        let candidate = dir.join(SERVER_BINARY);
        if is_executable(&candidate).await {
            return Some(candidate);
        }
    }
    None
}

async fn primary_gid(uid: u32) -> Option<u32> {
    tokio::task::spawn_blocking(move || {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
    })
    .await
    .ok()?
    .ok()?
    .map(|u| u.gid.as_raw())
}

/// Every directory we will create must be creatable by us, and every existing ancestor must be
/// traversable by the server's UID (a 0700 parent makes servers crash-loop, F5).
fn check_dirs(dirs: &[PathBuf], server_uid: u32) -> Result<(), String> {
    use nix::unistd::{access, AccessFlags};
    for dir in dirs {
        let existing = dir
            .ancestors()
            .find(|a| a.exists())
            .unwrap_or(Path::new("/"));
        if existing == dir.as_path() && !dir.is_dir() {
            return Err(format!("{} exists and is not a directory", dir.display()));
        }
        if access(existing, AccessFlags::W_OK | AccessFlags::X_OK).is_err() {
            return Err(format!(
                "cannot create {}: {} is not writable",
                dir.display(),
                existing.display()
            ));
        }
        if server_uid == 0 {
            continue;
        }
        for ancestor in dir.ancestors().skip(1).filter(|a| a.exists()) {
            let Ok(meta) = std::fs::metadata(ancestor) else {
                continue;
            };
            let mode = meta.permissions().mode();
            let traversable = if meta.uid() == server_uid {
                mode & 0o100 != 0
            } else {
                mode & 0o001 != 0
            };
            if !traversable {
                return Err(format!(
                    "{} (mode {:o}, owner uid {}) cannot be traversed by MPS server uid {server_uid}",
                    ancestor.display(),
                    mode & 0o7777,
                    meta.uid()
                ));
            }
        }
    }
    Ok(())
}

/// Appends the complete lines written to `path` since `offset`; restarts when the file shrank.
async fn read_new_lines(path: &Path, offset: &mut u64, partial: &mut String) -> Vec<String> {
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return Vec::new();
    };
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    if len < *offset {
        *offset = 0;
        partial.clear();
    }
    if len == *offset || file.seek(std::io::SeekFrom::Start(*offset)).await.is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let Ok(n) = file.read_to_end(&mut buf).await else {
        return Vec::new();
    };
    *offset += n as u64;
    partial.push_str(&String::from_utf8_lossy(&buf));
    let mut lines: Vec<String> = partial.split('\n').map(str::to_owned).collect();
    *partial = lines.pop().unwrap_or_default();
    lines.retain(|l| !l.is_empty());
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quit_leaves_a_second_for_the_forced_shutdown() {
        assert_eq!(quit_seconds(Duration::from_secs(10)), 9);
        assert_eq!(quit_seconds(Duration::from_secs(1)), 1);
        assert_eq!(quit_seconds(Duration::from_millis(300)), 1);
    }

    #[test]
    fn untraversable_parent_is_reported() {
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let locked = root.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = check_dirs(&[locked.join("pipe")], 4242).unwrap_err();
        assert!(
            err.contains("cannot be traversed by MPS server uid 4242"),
            "{err}"
        );
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
        check_dirs(&[locked.join("pipe")], 4242).unwrap();
    }

    #[tokio::test]
    async fn log_tail_returns_only_complete_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.log");
        let (mut offset, mut partial) = (0, String::new());
        assert!(read_new_lines(&path, &mut offset, &mut partial)
            .await
            .is_empty());
        std::fs::write(&path, "a\nb\npart").unwrap();
        assert_eq!(
            read_new_lines(&path, &mut offset, &mut partial).await,
            ["a", "b"]
        );
        std::fs::write(&path, "a\nb\npartial\nc\n").unwrap();
        assert_eq!(
            read_new_lines(&path, &mut offset, &mut partial).await,
            ["partial", "c"]
        );
        std::fs::write(&path, "new\n").unwrap();
        assert_eq!(
            read_new_lines(&path, &mut offset, &mut partial).await,
            ["new"],
            "restarts after truncation"
        );
    }

    #[test]
    fn exits_are_described_for_people() {
        assert_eq!(
            describe_exit(ExitStatus::from_raw(1 << 8)),
            "exited with status 1"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(9)),
            "was killed by SIGKILL"
        );
    }
}
