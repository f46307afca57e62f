//! Supervises `tegrastats` as our own child and turns its stdout into timestamped readings.
//!
//! tegrastats is never run with `--start`/`--stop` (`--stop` kills *every* instance on the board,
//! other users' included); we spawn it with `--interval N`, read its stdout line by line, and
//! restart it with capped exponential back-off when it exits or stalls. A missing binary is a
//! state (`Unavailable`), not an error: the daemon keeps running without board telemetry.
//! Consumers are never waited on: readings and events go out with `try_send`, and a full channel
//! drops the item and counts it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::tegrastats::{parse_line, ParseError, TegraSample};

/// Longest line kept; the rest of a longer line is discarded and the reading flagged `truncated`.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Lines of the child's stderr logged per child (the rest is drained silently).
const MAX_STDERR_LINES: usize = 50;
/// How long an exited-looking child (stdout closed) gets to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// How long a killed child gets to be reaped before we give up waiting for it.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Timing knobs; the defaults are the production values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplerTiming {
    /// First restart delay; doubles per failed run.
    pub backoff_initial: Duration,
    /// Restart delay cap.
    pub backoff_max: Duration,
    /// A child that ran this long with output resets the back-off.
    pub healthy_after: Duration,
    /// No line for this many intervals = stalled.
    pub stall_intervals: u32,
    /// Extra time allowed for a fresh child's first line.
    pub startup_grace: Duration,
    /// How often an unavailable binary is looked for again.
    pub unavailable_recheck: Duration,
}

impl Default for SamplerTiming {
    fn default() -> Self {
        SamplerTiming {
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
            stall_intervals: 3,
            startup_grace: Duration::from_secs(5),
            unavailable_recheck: Duration::from_secs(60),
        }
    }
}

/// What to run (config keys `telemetry.tegrastats_path`, `telemetry.tegrastats_interval_ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TegraSamplerConfig {
    pub path: PathBuf,
    pub interval_ms: u64,
    pub timing: SamplerTiming,
}

impl TegraSamplerConfig {
    pub fn new(path: impl Into<PathBuf>, interval_ms: u64) -> Self {
        TegraSamplerConfig {
            path: path.into(),
            interval_ms: interval_ms.max(1),
            timing: SamplerTiming::default(),
        }
    }

    fn stall_after(&self) -> Duration {
        Duration::from_millis(self.interval_ms.max(1))
            .saturating_mul(self.timing.stall_intervals.max(1))
    }
}

/// One stdout line of tegrastats, stamped when we read it.
#[derive(Debug, Clone)]
pub struct TegraReading {
    /// Our CLOCK_MONOTONIC, in ns.
    pub mono_ns: u64,
    /// Wall clock, Unix ms.
    pub wall_ms: i64,
    /// The line without its `\n`/`\r\n`, at most [`MAX_LINE_BYTES`].
    pub raw: Vec<u8>,
    /// The line was longer than [`MAX_LINE_BYTES`] and was cut.
    pub truncated: bool,
    pub parsed: Result<TegraSample, ParseError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerEventKind {
    /// A child was spawned.
    Started,
    /// A child spawned after a failure produced its first line; `gap_ms` = time since the
    /// previous line.
    Restarted,
    /// No line for `stall_intervals` intervals; the child was killed.
    Stalled,
    /// The child exited (or closed stdout) by itself.
    Exited,
    /// The binary is missing or not executable.
    Unavailable,
    /// Spawning failed for another reason.
    SpawnFailed,
    /// A line over [`MAX_LINE_BYTES`] was cut.
    LineTruncated,
    /// The sampler stopped (cancelled, or nobody reads the readings any more).
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplerEvent {
    pub kind: SamplerEventKind,
    pub message: String,
    pub gap_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerState {
    Running,
    Restarting,
    Unavailable,
    Stopped,
}

impl fmt::Display for SamplerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SamplerState::Running => "running",
            SamplerState::Restarting => "restarting",
            SamplerState::Unavailable => "unavailable",
            SamplerState::Stopped => "stopped",
        })
    }
}

/// The running sampler: its task, its state, its drop counters and a way to reconfigure it.
pub struct TegraSamplerHandle {
    pub join: JoinHandle<()>,
    pub state: watch::Receiver<SamplerState>,
    counters: Arc<Counters>,
    config_tx: watch::Sender<TegraSamplerConfig>,
}

impl TegraSamplerHandle {
    /// Readings dropped because the readings channel was full.
    pub fn dropped_readings(&self) -> u64 {
        self.counters.readings.load(Ordering::Relaxed)
    }
    /// Events dropped because the events channel was full.
    pub fn dropped_events(&self) -> u64 {
        self.counters.events.load(Ordering::Relaxed)
    }
    /// The live readings drop counter, to hand to a status endpoint.
    pub fn dropped_readings_counter(&self) -> Arc<AtomicU64> {
        self.counters.readings.clone()
    }
    /// Current state.
    pub fn current_state(&self) -> SamplerState {
        *self.state.borrow()
    }
    /// Applies a new path/interval now: a running child is replaced, an unavailable path is
    /// checked again at once.
    pub fn reconfigure(&self, cfg: TegraSamplerConfig) {
        self.config_tx.send_replace(cfg);
    }
}

#[derive(Default)]
struct Counters {
    readings: Arc<AtomicU64>,
    events: AtomicU64,
}

/// Starts the sampler task. It runs until `cancel` fires (then the child is killed and reaped
/// and the state is `Stopped`) or the readings receiver is dropped.
pub fn spawn(
    cfg: TegraSamplerConfig,
    readings_tx: mpsc::Sender<TegraReading>,
    events_tx: mpsc::Sender<SamplerEvent>,
    cancel: CancellationToken,
) -> TegraSamplerHandle {
    let (state_tx, state_rx) = watch::channel(SamplerState::Restarting);
    let (config_tx, config_rx) = watch::channel(cfg);
    let counters = Arc::new(Counters::default());
    let sampler = Sampler {
        config_rx,
        readings_tx,
        events_tx,
        cancel,
        state_tx,
        counters: counters.clone(),
        last_line: None,
        started_at: Instant::now(),
        spawned_before: false,
    };
    TegraSamplerHandle {
        join: tokio::spawn(sampler.run()),
        state: state_rx,
        counters,
        config_tx,
    }
}

struct Sampler {
    config_rx: watch::Receiver<TegraSamplerConfig>,
    readings_tx: mpsc::Sender<TegraReading>,
    events_tx: mpsc::Sender<SamplerEvent>,
    cancel: CancellationToken,
    state_tx: watch::Sender<SamplerState>,
    counters: Arc<Counters>,
    /// When the last line of any child arrived (for the restart gap).
    last_line: Option<Instant>,
    started_at: Instant,
    /// A child was spawned before: the next first line is a restart.
    spawned_before: bool,
}

/// How one child's run ended.
enum RunEnd {
    Cancelled,
    ReaderGone,
    Reconfigured,
    Unavailable(String),
    Failed {
        kind: SamplerEventKind,
        message: String,
    },
}

impl Sampler {
    async fn run(mut self) {
        let mut backoff: Option<Duration> = None;
        // Reported once per distinct reason, not on every re-check.
        let mut unavailable_reason: Option<String> = None;
        loop {
            let cfg = self.config_rx.borrow_and_update().clone();
            let started = Instant::now();
            let (end, lines) = match check_executable(&cfg.path).await {
                Err(message) => (RunEnd::Unavailable(message), 0),
                Ok(()) => self.run_child(&cfg).await,
            };
            match end {
                RunEnd::Cancelled | RunEnd::ReaderGone => break,
                RunEnd::Reconfigured => {
                    backoff = None;
                    continue;
                }
                RunEnd::Unavailable(message) => {
                    let changed = self.set_state(SamplerState::Unavailable);
                    if changed || unavailable_reason.as_ref() != Some(&message) {
                        tracing::warn!("{message}");
                        unavailable_reason = Some(message.clone());
                        self.event(SamplerEventKind::Unavailable, message, None);
                    }
                    backoff = None;
                    if !self.wait(cfg.timing.unavailable_recheck).await {
                        break;
                    }
                    continue;
                }
                RunEnd::Failed { kind, message } => {
                    tracing::warn!("{message}");
                    self.event(kind, message, None);
                }
            }
            let t = &cfg.timing;
            if lines > 0 && started.elapsed() >= t.healthy_after {
                backoff = None;
            }
            let delay = backoff.unwrap_or(t.backoff_initial).min(t.backoff_max);
            backoff = Some(delay.saturating_mul(2).min(t.backoff_max));
            self.set_state(SamplerState::Restarting);
            if !self.wait(delay).await {
                break;
            }
        }
        self.set_state(SamplerState::Stopped);
        self.event(
            SamplerEventKind::Stopped,
            "tegrastats sampler stopped".to_owned(),
            None,
        );
    }

    /// Sleeps `d`, cut short by a reconfigure. False when cancelled or nobody reads any more.
    async fn wait(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = self.readings_tx.closed() => false,
            _ = tokio::time::sleep(d) => true,
            _ = config_changed(&mut self.config_rx) => true,
        }
    }

    async fn run_child(&mut self, cfg: &TegraSamplerConfig) -> (RunEnd, u64) {
        let path = cfg.path.display().to_string();
        let mut child = match command(cfg).spawn() {
            Ok(child) => child,
            Err(e) if is_unavailable(&e) => {
                return (
                    RunEnd::Unavailable(format!("tegrastats binary {path} cannot be run: {e}")),
                    0,
                )
            }
            Err(e) => {
                let message = format!("spawning tegrastats {path} failed: {e}");
                let kind = SamplerEventKind::SpawnFailed;
                return (RunEnd::Failed { kind, message }, 0);
            }
        };
        let pid = child.id().unwrap_or(0);
        let restarting = std::mem::replace(&mut self.spawned_before, true);
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(log_stderr(stderr, path.clone()));
        }
        let Some(stdout) = child.stdout.take() else {
            kill_and_reap(&mut child).await;
            let message = format!("tegrastats {path}: no stdout pipe");
            let kind = SamplerEventKind::SpawnFailed;
            return (RunEnd::Failed { kind, message }, 0);
        };
        self.set_state(SamplerState::Running);
        self.event(
            SamplerEventKind::Started,
            format!(
                "tegrastats {path} started with --interval {} (pid {pid})",
                cfg.interval_ms
            ),
            None,
        );

        let mut reader = LineReader::new(stdout, MAX_LINE_BYTES);
        let stall_after = cfg.stall_after();
        let mut lines = 0u64;
        loop {
            let deadline = if lines == 0 {
                stall_after + cfg.timing.startup_grace
            } else {
                stall_after
            };
            let next = tokio::select! {
                _ = self.cancel.cancelled() => {
                    kill_and_reap(&mut child).await;
                    return (RunEnd::Cancelled, lines);
                }
                _ = config_changed(&mut self.config_rx) => {
                    kill_and_reap(&mut child).await;
                    return (RunEnd::Reconfigured, lines);
                }
                _ = self.readings_tx.closed() => {
                    kill_and_reap(&mut child).await;
                    return (RunEnd::ReaderGone, lines);
                }
                r = tokio::time::timeout(deadline, reader.next_line()) => r,
            };
            match next {
                Err(_elapsed) => {
                    kill_and_reap(&mut child).await;
                    let message = format!(
                        "tegrastats {path} (pid {pid}) printed no line for {} ms ({} intervals of {} ms); killed",
                        deadline.as_millis(),
                        cfg.timing.stall_intervals,
                        cfg.interval_ms
                    );
                    let kind = SamplerEventKind::Stalled;
                    return (RunEnd::Failed { kind, message }, lines);
                }
                Ok(Err(e)) => {
                    kill_and_reap(&mut child).await;
                    let message = format!("reading tegrastats {path} (pid {pid}) stdout: {e}");
                    let kind = SamplerEventKind::Exited;
                    return (RunEnd::Failed { kind, message }, lines);
                }
                Ok(Ok(None)) => {
                    let status = wait_exit(&mut child).await;
                    let mut message =
                        format!("tegrastats {path} (pid {pid}) {status} after {lines} lines");
                    if reader.partial_len() > 0 {
                        message.push_str(&format!(
                            "; discarded an unterminated last line of {} bytes",
                            reader.partial_len()
                        ));
                    }
                    let kind = SamplerEventKind::Exited;
                    return (RunEnd::Failed { kind, message }, lines);
                }
                Ok(Ok(Some((raw, truncated)))) => {
                    let now = Instant::now();
                    if lines == 0 && restarting {
                        let since = self.last_line.unwrap_or(self.started_at);
                        let gap = now.saturating_duration_since(since).as_millis() as u64;
                        self.event(
                            SamplerEventKind::Restarted,
                            format!(
                                "tegrastats {path} restarted (pid {pid}); no data for {gap} ms"
                            ),
                            Some(gap),
                        );
                    }
                    lines += 1;
                    self.last_line = Some(now);
                    if truncated {
                        self.event(
                            SamplerEventKind::LineTruncated,
                            format!(
                                "tegrastats {path} printed a line over {MAX_LINE_BYTES} bytes; kept the first {MAX_LINE_BYTES}"
                            ),
                            None,
                        );
                    }
                    if !self.deliver(raw, truncated) {
                        kill_and_reap(&mut child).await;
                        return (RunEnd::ReaderGone, lines);
                    }
                }
            }
        }
    }

    /// False when nobody receives readings any more.
    fn deliver(&self, raw: Vec<u8>, truncated: bool) -> bool {
        let reading = TegraReading {
            mono_ns: monotonic_ns(),
            wall_ms: chrono::Utc::now().timestamp_millis(),
            parsed: parse_line(&raw),
            raw,
            truncated,
        };
        match self.readings_tx.try_send(reading) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.readings.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn event(&self, kind: SamplerEventKind, message: String, gap_ms: Option<u64>) {
        let ev = SamplerEvent {
            kind,
            message,
            gap_ms,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.events_tx.try_send(ev) {
            self.counters.events.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// True when the state changed.
    fn set_state(&self, s: SamplerState) -> bool {
        self.state_tx.send_if_modified(|cur| {
            let changed = *cur != s;
            *cur = s;
            changed
        })
    }
}

fn command(cfg: &TegraSamplerConfig) -> Command {
    let mut cmd = Command::new(&cfg.path);
    cmd.arg("--interval")
        .arg(cfg.interval_ms.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // systemd's notify socket and watchdog belong to the daemon alone.
    crate::notify::scrub_child_env(&mut cmd);
    cmd
}

/// Missing or non-executable binary: a lasting condition, not worth fast restarts.
fn is_unavailable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
    ) || e.raw_os_error() == Some(libc::ENOEXEC)
}

async fn check_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    match tokio::fs::metadata(path).await {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(format!("tegrastats binary {shown} does not exist"))
        }
        Err(e) => Err(format!("tegrastats binary {shown} cannot be read: {e}")),
        Ok(m) if !m.is_file() => Err(format!("tegrastats binary {shown} is not a file")),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            Err(format!("tegrastats binary {shown} is not executable"))
        }
        Ok(_) => Ok(()),
    }
}

/// Resolves when the config changes; never when the handle (sender) is gone.
async fn config_changed(rx: &mut watch::Receiver<TegraSamplerConfig>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn kill_and_reap(child: &mut Child) {
    // An error here means it already exited; wait() below reaps it either way.
    let _ = child.start_kill();
    if tokio::time::timeout(REAP_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        tracing::error!(
            pid = child.id(),
            "tegrastats child not reaped after SIGKILL"
        );
    }
}

/// After stdout closed: give the child a moment to exit by itself, then kill it.
async fn wait_exit(child: &mut Child) -> String {
    match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
        Ok(Ok(status)) => describe_exit(status),
        Ok(Err(e)) => format!("could not be waited for ({e})"),
        Err(_) => {
            kill_and_reap(child).await;
            "closed stdout and was killed".to_owned()
        }
    }
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => format!("ended ({status})"),
    }
}

async fn log_stderr<R: AsyncRead + Unpin>(stderr: R, path: String) {
    let mut reader = LineReader::new(stderr, 4096);
    let mut logged = 0;
    while let Ok(Some((line, _))) = reader.next_line().await {
        if logged < MAX_STDERR_LINES {
            logged += 1;
            tracing::warn!(path = %path, "tegrastats stderr: {}", String::from_utf8_lossy(&line));
        }
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// `\n`-terminated lines of at most `cap` bytes; the excess of a longer line is discarded, never
/// buffered. Cancel-safe: bytes are moved into `buf` before being consumed from the reader.
struct LineReader<R> {
    inner: BufReader<R>,
    buf: Vec<u8>,
    truncated: bool,
    cap: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(inner: R, cap: usize) -> Self {
        LineReader {
            inner: BufReader::with_capacity(16 * 1024, inner),
            buf: Vec::new(),
            truncated: false,
            cap,
        }
    }

    /// Bytes of an unterminated line seen so far (what EOF would discard).
    fn partial_len(&self) -> usize {
        self.buf.len()
    }

    /// `Ok(None)` at EOF (an unterminated tail stays in `partial_len`).
    async fn next_line(&mut self) -> io::Result<Option<(Vec<u8>, bool)>> {
        loop {
            let avail = self.inner.fill_buf().await?;
            if avail.is_empty() {
                return Ok(None);
            }
            let newline = avail.iter().position(|&b| b == b'\n');
            let chunk = &avail[..newline.unwrap_or(avail.len())];
            let room = self.cap.saturating_sub(self.buf.len());
            if chunk.len() > room {
                self.truncated = true;
            }
            self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let used = newline.map_or(avail.len(), |i| i + 1);
            self.inner.consume(used);
            if newline.is_some() {
                let mut line = std::mem::take(&mut self.buf);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                let truncated = std::mem::replace(&mut self.truncated, false);
                return Ok(Some((line, truncated)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_cut_not_buffered() {
        let mut input = vec![b'a'; 100];
        input.push(b'\n');
        input.extend_from_slice(b"short\r\ntail");
        let mut r = LineReader::new(&input[..], 10);
        assert_eq!(r.next_line().await.unwrap(), Some((vec![b'a'; 10], true)));
        assert_eq!(
            r.next_line().await.unwrap(),
            Some((b"short".to_vec(), false))
        );
        assert_eq!(r.next_line().await.unwrap(), None);
        assert_eq!(r.partial_len(), 4);
    }

    #[test]
    fn state_names() {
        let names: Vec<String> = [
            SamplerState::Running,
            SamplerState::Restarting,
            SamplerState::Unavailable,
            SamplerState::Stopped,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(names, ["running", "restarting", "unavailable", "stopped"]);
    }

    #[test]
    fn stall_is_three_intervals() {
        let cfg = TegraSamplerConfig::new("/usr/bin/tegrastats", 250);
        assert_eq!(cfg.stall_after(), Duration::from_millis(750));
    }
}
