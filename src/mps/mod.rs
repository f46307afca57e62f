//! CUDA MPS control daemon lifecycle (research/mps.md section 5).
//!
//! [`MpsManager`] probes for MPS, starts `nvidia-cuda-mps-control -f` as a direct child, applies
//! and verifies the defaults, forces a server up, watches the daemon, and tears everything down
//! by process identity. Every front-end call has a hard timeout. [`worker_env`] is the one place
//! where worker environments for MPS on and off are built.

mod env;
mod manager;
pub mod parse;
pub mod procs;
pub mod ui;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use env::{is_managed_var, worker_env, MpsClientMode};
pub use manager::{DaemonExit, MpsManager, ProbeReport};

/// How mpslabd runs MPS. The config owner maps `[mps]` onto this.
#[derive(Debug, Clone, PartialEq)]
pub struct MpsSettings {
    /// `nvidia-cuda-mps-control`; `nvidia-cuda-mps-server` is looked up next to it, then in PATH.
    pub control_path: PathBuf,
    /// Private `CUDA_MPS_PIPE_DIRECTORY`; `<pipe_dir>/control` must fit in 107 bytes.
    pub pipe_dir: PathBuf,
    /// Private `CUDA_MPS_LOG_DIRECTORY` (control.log, server.log).
    pub log_dir: PathBuf,
    /// Our record of the daemon we started (PID + start time), used to recover after a crash.
    pub pid_file: PathBuf,
    /// Hard limit for one front-end call.
    pub call_timeout: Duration,
    /// How long the daemon may take to answer, and then to bring a server up.
    pub start_deadline: Duration,
    /// Budget for `quit -t N` before the daemon and servers are signalled.
    pub quit_timeout: Duration,
    /// Applied with `set_default_active_thread_percentage` after every start and read back.
    pub default_active_thread_percentage: Option<f64>,
    /// `<device>=<N>M|G[,...]`, applied with `set_default_device_pinned_mem_limit` and read back.
    pub pinned_mem_limit: Option<String>,
    /// UID whose server is started (`start_server -uid`); all workers must run as this UID.
    pub server_uid: u32,
    /// Extra variables for the daemon and front-end calls (e.g. `CUDA_VISIBLE_DEVICES` with a
    /// UUID on a dGPU). `CUDA_MPS_PIPE_DIRECTORY`, `CUDA_MPS_LOG_DIRECTORY`, `NOTIFY_SOCKET` and
    /// `WATCHDOG_*` given here are ignored.
    pub extra_env: Vec<(String, String)>,
    /// L4T release file; MPS needs JetPack 6.1 (R36.4) or later when it exists.
    pub tegra_release_path: PathBuf,
}

impl Default for MpsSettings {
    fn default() -> Self {
        Self {
            control_path: "/usr/bin/nvidia-cuda-mps-control".into(),
            pipe_dir: "/run/mpslab/mps".into(),
            log_dir: "/var/log/mpslab/mps".into(),
            pid_file: "/run/mpslab/mps-owner.json".into(),
            call_timeout: Duration::from_secs(5),
            start_deadline: Duration::from_secs(20),
            quit_timeout: Duration::from_secs(10),
            default_active_thread_percentage: None,
            pinned_mem_limit: None,
            server_uid: nix::unistd::geteuid().as_raw(),
            extra_env: Vec::new(),
            tegra_release_path: "/etc/nv_tegra_release".into(),
        }
    }
}

/// Lifecycle state; `Display` gives the word shown to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MpsState {
    Unavailable,
    Stopped,
    Starting,
    Running,
    Stopping,
    Failed,
}

impl fmt::Display for MpsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unavailable => "unavailable",
            Self::Stopped => "stopped",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Failed => "failed",
        })
    }
}

/// Current state and why it is so.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MpsStatus {
    pub state: MpsState,
    pub reason: String,
}

/// One state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpsTransition {
    pub from: MpsState,
    pub to: MpsState,
    pub reason: String,
}

/// What the manager publishes on its event channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MpsEvent {
    Transition(MpsTransition),
    /// A new line of our daemon's control.log.
    ControlLog(String),
    /// control.log reported `Server <pid> exited with status <status>`.
    ServerExited {
        pid: u32,
        status: i32,
    },
}

/// Errors, shaped so the D-Bus layer can map them.
#[derive(Debug, thiserror::Error)]
pub enum MpsError {
    #[error("MPS unavailable: {0}")]
    Unavailable(String),
    #[error("`{cmd}` sent to nvidia-cuda-mps-control got no answer within {after:?}")]
    Timeout { cmd: String, after: Duration },
    #[error(
        "a control daemon not started by mpslab (pid {pid}) is using pipe directory {pipe_dir}"
    )]
    Foreign { pid: u32, pipe_dir: PathBuf },
    #[error("no MPS control daemon answers on {pipe_dir} (command `{cmd}`)")]
    NoDaemon { cmd: String, pipe_dir: PathBuf },
    #[error("`{cmd}` failed (exit status {code}): {output}")]
    Command {
        cmd: String,
        code: String,
        output: String,
    },
    #[error("MPS control daemon did not start: {0}")]
    StartFailed(String),
    #[error("MPS is {state}: cannot {operation} now")]
    Busy {
        state: MpsState,
        operation: &'static str,
    },
    #[error("MPS processes survived SIGKILL: {0}")]
    Unkillable(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_display_as_the_documented_words() {
        let words: Vec<String> = [
            MpsState::Unavailable,
            MpsState::Stopped,
            MpsState::Starting,
            MpsState::Running,
            MpsState::Stopping,
            MpsState::Failed,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            words,
            [
                "unavailable",
                "stopped",
                "starting",
                "running",
                "stopping",
                "failed"
            ]
        );
    }

    #[test]
    fn errors_name_the_command_at_fault() {
        let err = MpsError::Timeout {
            cmd: "quit -t 5".into(),
            after: Duration::from_secs(7),
        };
        assert!(err.to_string().contains("quit -t 5"));
        let err = MpsError::Foreign {
            pid: 42,
            pipe_dir: "/run/x".into(),
        };
        assert!(err.to_string().contains("42") && err.to_string().contains("/run/x"));
    }
}
