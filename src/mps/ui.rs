//! One front-end call: `echo CMD | nvidia-cuda-mps-control`, with a hard timeout.

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::MpsError;

/// What the real binary prints when no daemon listens on the pipe directory (also F9).
pub const NO_DAEMON_TEXT: &str = "Cannot find MPS control daemon process";

/// Raw result of a finished UI process.
#[derive(Debug, Clone)]
pub struct UiOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl UiOutput {
    /// stdout and stderr together: which stream carries an error message differs by driver.
    pub fn combined(&self) -> String {
        let mut text = self.stdout.trim().to_owned();
        if !self.stderr.trim().is_empty() {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(self.stderr.trim());
        }
        text
    }
}

/// Runs `program args` with exactly `env`, feeds `stdin_line`, and collects its output. The
/// process runs in its own process group; on timeout the whole group is SIGKILLed and reaped.
pub async fn run_captured(
    program: &Path,
    args: &[&str],
    env: &[(OsString, OsString)],
    stdin_line: Option<&str>,
    timeout: Duration,
    what: &str,
) -> Result<UiOutput, MpsError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if stdin_line.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| MpsError::Io {
        context: format!("cannot run {} for `{what}`", program.display()),
        source,
    })?;
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    let stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let exchange = async {
        if let (Some(mut pipe), Some(line)) = (stdin, stdin_line) {
            // A UI that finds no daemon exits without reading stdin: a broken pipe is expected.
            let _ = pipe.write_all(format!("{line}\n").as_bytes()).await;
            let _ = pipe.shutdown().await;
        }
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let read_out = async {
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_end(&mut err).await;
            }
        };
        let ((), (), status) = tokio::join!(read_out, read_err, child.wait());
        (out, err, status)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok((out, err, status)) => {
            let status = status.map_err(|source| MpsError::Io {
                context: format!("waiting for {} (`{what}`)", program.display()),
                source,
            })?;
            Ok(UiOutput {
                code: status.code(),
                stdout: String::from_utf8_lossy(&out).into_owned(),
                stderr: String::from_utf8_lossy(&err).into_owned(),
            })
        }
        Err(_) => {
            // The child is not reaped yet, so its PID (= process group id) cannot have been reused.
            if let Some(pgid) = pgid {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            Err(MpsError::Timeout {
                cmd: what.to_owned(),
                after: timeout,
            })
        }
    }
}

/// Sends one command to the control daemon on `pipe_dir` and returns its stdout.
pub async fn call(
    control: &Path,
    env: &[(OsString, OsString)],
    pipe_dir: &Path,
    command: &str,
    timeout: Duration,
) -> Result<String, MpsError> {
    let out = run_captured(control, &[], env, Some(command), timeout, command).await?;
    if out.combined().contains(NO_DAEMON_TEXT) {
        return Err(MpsError::NoDaemon {
            cmd: command.to_owned(),
            pipe_dir: pipe_dir.to_owned(),
        });
    }
    match out.code {
        Some(0) => Ok(out.stdout),
        code => Err(MpsError::Command {
            cmd: command.to_owned(),
            code: code.map_or_else(|| "killed by a signal".to_owned(), |c| c.to_string()),
            output: out.combined(),
        }),
    }
}
