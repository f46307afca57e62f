//! Process identity and termination by `(pid, start time)`, read from `/proc`.
//!
//! `pkill -x nvidia-cuda-mps-control` never matches (comm is cut to 15 characters) and a bare
//! PID can be reused, so every signal we send is preceded by an identity check (F19).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::time::{sleep, Instant};

use super::parse::{parse_proc_stat, ProcStat};

/// A process as it was when we saw it: PID plus kernel start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcIdentity {
    pub pid: u32,
    pub start_time: u64,
}

/// Which MPS program a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MpsProcKind {
    ControlDaemon,
    Server,
}

async fn read_stat(pid: u32) -> Option<ProcStat> {
    let text = tokio::fs::read_to_string(format!("/proc/{pid}/stat"))
        .await
        .ok()?;
    parse_proc_stat(&text)
}

/// Identity of a running (non-zombie) process.
pub async fn identify(pid: u32) -> Option<ProcIdentity> {
    let stat = read_stat(pid).await?;
    (!matches!(stat.state, 'Z' | 'X')).then_some(ProcIdentity {
        pid,
        start_time: stat.start_time,
    })
}

/// Whether the process still runs and is the one we recorded (a zombie counts as gone).
pub async fn is_alive(id: ProcIdentity) -> bool {
    identify(id.pid).await == Some(id)
}

/// Sends `signal` if the PID still belongs to `id`.
pub async fn signal_if_same(id: ProcIdentity, signal: Signal) -> bool {
    if !is_alive(id).await {
        return false;
    }
    let Ok(pid) = i32::try_from(id.pid) else {
        return false;
    };
    kill(Pid::from_raw(pid), signal).is_ok()
}

/// SIGTERM, then SIGKILL after `grace`; returns the processes still alive afterwards.
pub async fn terminate_all(ids: &[ProcIdentity], grace: Duration) -> Vec<ProcIdentity> {
    for id in ids {
        signal_if_same(*id, Signal::SIGTERM).await;
    }
    if wait_gone(ids, grace).await.is_empty() {
        return Vec::new();
    }
    for id in ids {
        signal_if_same(*id, Signal::SIGKILL).await;
    }
    wait_gone(ids, Duration::from_secs(2)).await
}

/// Polls until every process is gone or `limit` passes; returns the survivors.
pub async fn wait_gone(ids: &[ProcIdentity], limit: Duration) -> Vec<ProcIdentity> {
    let deadline = Instant::now() + limit;
    loop {
        let mut alive = Vec::new();
        for id in ids {
            if is_alive(*id).await {
                alive.push(*id);
            }
        }
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        sleep(Duration::from_millis(25)).await;
    }
}

/// Classifies a command line: the program (argv[0], or argv[1] behind an interpreter) must be
/// an MPS binary, and a control process only counts as a daemon with `-d` or `-f`.
pub fn classify_cmdline(cmdline: &[u8]) -> Option<MpsProcKind> {
    let args: Vec<&[u8]> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .collect();
    let program = args.iter().take(2).position(|a| {
        let name = Path::new(OsStr::from_bytes(a))
            .file_name()
            .map(OsStr::as_bytes)
            .unwrap_or_default();
        name.ends_with(b"nvidia-cuda-mps-server") || name.ends_with(b"nvidia-cuda-mps-control")
    })?;
    let name = args[program];
    if name.ends_with(b"nvidia-cuda-mps-server") {
        return Some(MpsProcKind::Server);
    }
    let flags = &args[program + 1..];
    flags
        .iter()
        .any(|a| *a == b"-d" || *a == b"-f")
        .then_some(MpsProcKind::ControlDaemon)
}

/// Whether a NUL-separated environment block holds `CUDA_MPS_PIPE_DIRECTORY=<pipe_dir>`.
pub fn environ_has_pipe_dir(environ: &[u8], pipe_dir: &Path) -> bool {
    let mut wanted = b"CUDA_MPS_PIPE_DIRECTORY=".to_vec();
    wanted.extend_from_slice(pipe_dir.as_os_str().as_bytes());
    let trimmed = wanted.strip_suffix(b"/").map(<[u8]>::to_vec);
    environ
        .split(|b| *b == 0)
        .any(|v| v == wanted.as_slice() || Some(v) == trimmed.as_deref())
}

/// A live MPS process found in `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundProc {
    pub id: ProcIdentity,
    pub kind: MpsProcKind,
    pub pgrp: i32,
}

/// MPS daemons and servers whose environment points at `pipe_dir`, plus every process of the
/// process group `pgrp` started no earlier than `group_born` (the servers of our `-f` child).
/// Processes of other users whose environment we cannot read are not reported.
pub async fn scan_mps(pipe_dir: PathBuf, group: Option<(i32, u64)>) -> Vec<FoundProc> {
    tokio::task::spawn_blocking(move || scan_mps_blocking(&pipe_dir, group))
        .await
        .unwrap_or_default()
}

fn scan_mps_blocking(pipe_dir: &Path, group: Option<(i32, u64)>) -> Vec<FoundProc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let base = entry.path();
        let Some(stat) = std::fs::read_to_string(base.join("stat"))
            .ok()
            .and_then(|s| parse_proc_stat(&s))
        else {
            continue;
        };
        if matches!(stat.state, 'Z' | 'X') {
            continue;
        }
        let id = ProcIdentity {
            pid,
            start_time: stat.start_time,
        };
        let cmdline = std::fs::read(base.join("cmdline")).unwrap_or_default();
        let kind = classify_cmdline(&cmdline);
        let in_group =
            group.is_some_and(|(pgrp, born)| stat.pgrp == pgrp && stat.start_time >= born);
        let ours = kind.is_some()
            && std::fs::read(base.join("environ"))
                .is_ok_and(|env| environ_has_pipe_dir(&env, pipe_dir));
        if ours || in_group {
            found.push(FoundProc {
                id,
                kind: kind.unwrap_or(MpsProcKind::Server),
                pgrp: stat.pgrp,
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdlines_are_classified_by_program_and_flags() {
        assert_eq!(
            classify_cmdline(b"/usr/bin/nvidia-cuda-mps-control\0-d\0"),
            Some(MpsProcKind::ControlDaemon)
        );
        assert_eq!(
            classify_cmdline(b"nvidia-cuda-mps-control\0-f\0"),
            Some(MpsProcKind::ControlDaemon)
        );
        assert_eq!(
            classify_cmdline(b"/usr/sbin/nvidia-cuda-mps-server\0"),
            Some(MpsProcKind::Server)
        );
        assert_eq!(
            classify_cmdline(b"python3\0/tmp/mpsx/bin/nvidia-cuda-mps-server\0"),
            Some(MpsProcKind::Server)
        );
        assert_eq!(
            classify_cmdline(b"nvidia-cuda-mps-control\0"),
            None,
            "a UI call is not a daemon"
        );
        assert_eq!(
            classify_cmdline(b"bash\0-c\0nvidia-cuda-mps-control -d\0"),
            None
        );
        assert_eq!(classify_cmdline(b""), None);
    }

    #[test]
    fn pipe_dir_must_match_exactly() {
        let env = b"PATH=/bin\0CUDA_MPS_PIPE_DIRECTORY=/run/mpslab/mps\0";
        assert!(environ_has_pipe_dir(env, Path::new("/run/mpslab/mps")));
        assert!(!environ_has_pipe_dir(env, Path::new("/run/mpslab")));
        assert!(!environ_has_pipe_dir(
            b"CUDA_MPS_PIPE_DIRECTORY=/run/mpslab/mps2\0",
            Path::new("/run/mpslab/mps")
        ));
    }

    #[tokio::test]
    async fn identity_tracks_a_real_child_until_it_is_reaped() {
        let mut child = tokio::process::Command::new("sleep")
            .arg("30")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let id = identify(pid).await.unwrap();
        assert!(is_alive(id).await);
        assert!(
            !is_alive(ProcIdentity {
                pid,
                start_time: id.start_time + 1
            })
            .await,
            "start time is checked"
        );
        assert!(terminate_all(&[id], Duration::from_secs(5))
            .await
            .is_empty());
        child.wait().await.unwrap();
        assert!(!is_alive(id).await);
    }
}
