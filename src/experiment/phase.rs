//! The phase executor: starts one `mpslab-worker` per model, releases them together, keeps them
//! running until every one has enough iterations inside the common window, stops them and
//! collects records and output digests. "Alone" is the same with one worker.
//!
//! Together semantics: all workers load and warm up (`ready`), then all get `go` with one start
//! instant on CLOCK_MONOTONIC. The *window* is `[max of first measured starts, min of last
//! ends]`: only there are all models in their measured loop at once. Each worker keeps running
//! until it has at least `iterations` records inside the window (the slowest model decides the
//! phase length), then all are told to `stop`.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::protocol::{
    OutputDigest, ParentMsg, Record, Stage, StopReason, TensorInfo, ValidationSummary, WorkerMsg,
};
use super::worker::monotonic_ns;

/// Time between sending `go` and the common start instant: long enough for every worker to read
/// its `go` on a loaded machine, short enough not to matter.
const GO_MARGIN: Duration = Duration::from_millis(50);
/// SIGTERM → SIGKILL grace; with cancel's 5 s promise in mind.
const TERM_GRACE: Duration = Duration::from_millis(1500);
/// After SIGKILL: how long to wait for the kernel to deliver exit and pipe close.
const KILL_WAIT: Duration = Duration::from_millis(2000);
const STDERR_TAIL_BYTES: usize = 8 * 1024;
const ERROR_TAIL_CHARS: usize = 2000;
/// One worker process of a phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSpec {
    /// The model's configured name (used in messages and results).
    pub model: String,
    /// Path of `mpslab-worker`.
    pub worker_bin: PathBuf,
    /// Worker arguments (`--ort-lib`, `--model`, `--provider`, `--threads`, `--dim`, ...).
    /// `run_phase` adds `--warmup` and `--parent-pid` itself; do not pass them or a run length.
    pub args: Vec<OsString>,
    /// The worker's complete environment: the parent's environment is cleared first, so
    /// nothing (CUDA_MPS_* for an MPS-off phase, NOTIFY_SOCKET) leaks in by accident.
    pub env: Vec<(OsString, OsString)>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct PhaseSpec {
    pub workers: Vec<WorkerSpec>,
    /// Measured iterations each worker must have inside the together window.
    pub iterations: u64,
    /// Unmeasured iterations each worker runs before `ready`.
    pub warmup: u64,
    /// Spawn to every worker `ready` (loading and warm-up; TensorRT engine builds are slow).
    pub load_timeout: Duration,
    /// `go` to the last worker exiting.
    pub phase_timeout: Duration,
    /// A measuring worker silent for this long has stalled (it reports every 100 ms otherwise).
    pub stall_timeout: Duration,
    /// Progress and worker pids are published here when given.
    pub progress: Option<watch::Sender<PhaseProgress>>,
    /// Validation: each worker ends by itself after one pass over its dataset, so the phase
    /// ends when every worker has finished rather than when the window holds `iterations`.
    pub self_paced: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PhaseStage {
    #[default]
    Starting,
    /// Waiting for every worker's `ready`.
    Loading,
    /// `go` sent; counting window iterations.
    Measuring,
    /// `stop` sent (or failing); waiting for digests and exits.
    Stopping,
    Finished,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkerProgress {
    pub model: String,
    /// Set once spawned, kept after exit so samples can be attributed.
    pub pid: Option<u32>,
    /// False once the process has been reaped: stop sampling this pid.
    pub running: bool,
    pub iterations: u64,
    pub in_window: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PhaseProgress {
    pub stage: PhaseStage,
    pub workers: Vec<WorkerProgress>,
}

/// `[start_ns, end_ns]` on CLOCK_MONOTONIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Window {
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    pub fn contains(&self, r: &Record) -> bool {
        r.start_ns >= self.start_ns && r.end_ns() <= self.end_ns
    }
}

/// The window where every worker was in its measured loop: `[max first start, min last end]`.
/// `None` until every worker has a record, or if the runs do not overlap at all.
pub fn together_window<'a>(per_worker: impl IntoIterator<Item = &'a [Record]>) -> Option<Window> {
    let mut start = 0u64;
    let mut end = u64::MAX;
    let mut any = false;
    for records in per_worker {
        let (first, last) = (records.first()?, records.last()?);
        start = start.max(first.start_ns);
        end = end.min(last.end_ns());
        any = true;
    }
    (any && start < end).then_some(Window {
        start_ns: start,
        end_ns: end,
    })
}

/// Records of one worker (in loop order, so sorted by start and by end) inside `window`.
pub fn in_window(records: &[Record], window: Window) -> &[Record] {
    let from = records.partition_point(|r| r.start_ns < window.start_ns);
    let to = records.partition_point(|r| r.end_ns() <= window.end_ns);
    if from < to {
        &records[from..to]
    } else {
        &[]
    }
}

/// Spread of the workers' first measured starts: how sharply the barrier released them.
pub fn barrier_skew_ns<'a>(per_worker: impl IntoIterator<Item = &'a [Record]>) -> Option<u64> {
    let firsts: Vec<u64> = per_worker
        .into_iter()
        .map(|r| r.first().map(|r| r.start_ns))
        .collect::<Option<_>>()?;
    Some(firsts.iter().max()? - firsts.iter().min()?)
}

/// The worker's `ready` report.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerReady {
    pub provider: String,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    pub load_ms: f64,
}

#[derive(Debug, Clone, Default)]
pub struct WorkerOutcome {
    pub model: String,
    pub pid: Option<u32>,
    pub ready: Option<WorkerReady>,
    /// Every measured iteration, in order.
    pub records: Vec<Record>,
    /// The records inside the phase window.
    pub in_window: Vec<Record>,
    pub digests: Vec<OutputDigest>,
    /// Validation: the pre/infer/post split of every record, in order.
    pub stages: Vec<Stage>,
    /// Validation: metrics, prediction digest and per-file issues.
    pub validation: Option<ValidationSummary>,
    pub stop_reason: Option<StopReason>,
    pub exit_status: Option<ExitStatus>,
    /// The last few KiB the worker wrote to stderr.
    pub stderr_tail: String,
    /// Why this worker failed, when it did (its own `error` message or what the parent saw).
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhaseError {
    #[error("phase has no workers")]
    NoWorkers,
    #[error("cannot start worker {bin} for model {model}: {message}")]
    Spawn {
        model: String,
        bin: PathBuf,
        message: String,
    },
    #[error("worker for model {model} (pid {pid}) failed: {cause} ({status}){}", stderr_suffix(.stderr_tail))]
    WorkerFailed {
        model: String,
        pid: u32,
        cause: String,
        status: String,
        stderr_tail: String,
    },
    #[error("worker for model {model} was not ready within {timeout:?}")]
    LoadTimeout { model: String, timeout: Duration },
    #[error("worker for model {model} sent nothing for {timeout:?} (stalled)")]
    Stalled { model: String, timeout: Duration },
    #[error("phase did not finish within {timeout:?} (still waiting for {waiting_for})")]
    PhaseTimeout {
        timeout: Duration,
        waiting_for: String,
    },
    #[error("phase cancelled")]
    Cancelled,
}

fn stderr_suffix(tail: &str) -> String {
    let tail = tail.trim();
    if tail.is_empty() {
        String::new()
    } else {
        let skip = tail.chars().count().saturating_sub(ERROR_TAIL_CHARS);
        format!("; stderr: {}", tail.chars().skip(skip).collect::<String>())
    }
}

#[derive(Debug, Clone, Default)]
pub struct PhaseOutcome {
    pub workers: Vec<WorkerOutcome>,
    pub window: Option<Window>,
    pub barrier_skew_ns: Option<u64>,
    pub error: Option<PhaseError>,
}

impl PhaseOutcome {
    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }
}

enum Wake {
    Cancelled,
    Deadline,
    Tick,
    Event(Option<Event>),
}

enum Event {
    Msg(usize, WorkerMsg),
    BadLine(usize, String),
    Eof(usize),
    Exited(usize, std::io::Result<ExitStatus>),
}

/// A failure noticed while running; turned into a [`PhaseError`] once stderr is collected.
enum Failure {
    Spawn { index: usize, message: String },
    Worker { index: usize, cause: String },
    LoadTimeout { index: usize },
    Stalled { index: usize },
    PhaseTimeout { waiting_for: String },
    Cancelled,
}

#[derive(Default)]
struct Slot {
    out: WorkerOutcome,
    stdin: Option<ChildStdin>,
    stderr: Option<JoinHandle<String>>,
    done: bool,
    eof: bool,
    exited: bool,
    last_activity: Option<Instant>,
}

impl Slot {
    fn finished(&self) -> bool {
        self.eof && self.exited
    }
}

/// Aborting the tasks drops the `Child` handles, whose `kill_on_drop` then kills the workers:
/// dropping a `run_phase` future half-way leaves no process behind.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Runs one phase to completion, failure or cancellation. Never leaves a worker process behind.
pub async fn run_phase(spec: PhaseSpec, cancel: CancellationToken) -> PhaseOutcome {
    let progress = spec
        .progress
        .clone()
        .unwrap_or_else(|| watch::channel(PhaseProgress::default()).0);
    progress.send_replace(PhaseProgress {
        stage: PhaseStage::Starting,
        workers: spec
            .workers
            .iter()
            .map(|w| WorkerProgress {
                model: w.model.clone(),
                ..Default::default()
            })
            .collect(),
    });
    if spec.workers.is_empty() {
        progress.send_modify(|p| p.stage = PhaseStage::Finished);
        return PhaseOutcome {
            error: Some(PhaseError::NoWorkers),
            ..Default::default()
        };
    }
    let mut phase = Phase {
        slots: Vec::new(),
        tasks: Tasks(Vec::new()),
        progress,
        target: spec.iterations.max(1),
        self_paced: spec.self_paced,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let failure = phase.run(&spec, &cancel, tx, &mut rx).await;
    phase.finish(&spec, failure, &mut rx).await
}

struct Phase {
    slots: Vec<Slot>,
    tasks: Tasks,
    progress: watch::Sender<PhaseProgress>,
    target: u64,
    self_paced: bool,
}

impl Phase {
    fn spawn_all(
        &mut self,
        spec: &PhaseSpec,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Result<(), Failure> {
        for (index, w) in spec.workers.iter().enumerate() {
            let mut slot = Slot {
                out: WorkerOutcome {
                    model: w.model.clone(),
                    ..Default::default()
                },
                ..Default::default()
            };
            let mut cmd = Command::new(&w.worker_bin);
            cmd.args(&w.args)
                .arg("--warmup")
                .arg(spec.warmup.to_string())
                .arg("--parent-pid")
                .arg(std::process::id().to_string())
                .env_clear()
                .envs(
                    w.env
                        .iter()
                        // Even an explicit env never passes systemd's notify/watchdog on.
                        .filter(|(k, _)| !crate::notify::CHILD_ENV_DENYLIST.iter().any(|n| k == n))
                        .map(|(k, v)| (k, v)),
                )
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                // Own process group: signals go to the worker (and anything it forks), never
                // to the daemon's group.
                .process_group(0)
                .kill_on_drop(true);
            let spawned = cmd.spawn();
            let mut child = match spawned {
                Ok(c) => c,
                Err(e) => {
                    // Nothing to wait for from a process that never started.
                    slot.eof = true;
                    slot.exited = true;
                    self.slots.push(slot);
                    return Err(Failure::Spawn {
                        index,
                        message: e.to_string(),
                    });
                }
            };
            slot.out.pid = child.id();
            slot.stdin = child.stdin.take();
            if let Some(stdout) = child.stdout.take() {
                let tx = events.clone();
                self.tasks.0.push(tokio::spawn(async move {
                    let mut lines = BufReader::new(stdout).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if line.trim().is_empty() {
                            continue;
                        }
                        let ev = match WorkerMsg::decode(&line) {
                            Ok(msg) => Event::Msg(index, msg),
                            Err(_) => Event::BadLine(index, line),
                        };
                        let _ = tx.send(ev);
                    }
                    let _ = tx.send(Event::Eof(index));
                }));
            } else {
                slot.eof = true;
            }
            if let Some(mut stderr) = child.stderr.take() {
                slot.stderr = Some(tokio::spawn(async move {
                    let mut tail: VecDeque<u8> = VecDeque::with_capacity(STDERR_TAIL_BYTES);
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stderr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        tail.extend(&buf[..n]);
                        let excess = tail.len().saturating_sub(STDERR_TAIL_BYTES);
                        tail.drain(..excess);
                    }
                    String::from_utf8_lossy(tail.make_contiguous()).into_owned()
                }));
            }
            let tx = events.clone();
            self.tasks.0.push(tokio::spawn(async move {
                let status = child.wait().await;
                let _ = tx.send(Event::Exited(index, status));
            }));
            let pid = slot.out.pid;
            self.progress.send_modify(|p| {
                p.workers[index].pid = pid;
                p.workers[index].running = true;
            });
            self.slots.push(slot);
        }
        Ok(())
    }

    async fn send_all(&mut self, msg: ParentMsg) {
        let line = msg.encode();
        for slot in &mut self.slots {
            if let Some(stdin) = slot.stdin.as_mut() {
                // A worker that has gone away shows up as EOF/exit; nothing to do here.
                let sent = stdin.write_all(line.as_bytes()).await;
                if sent.is_ok() {
                    let _ = stdin.flush().await;
                }
            }
        }
    }

    fn window(&self) -> Option<Window> {
        together_window(self.slots.iter().map(|s| s.out.records.as_slice()))
    }

    fn publish_counts(&self, stage: PhaseStage) {
        let window = self.window();
        self.progress.send_modify(|p| {
            p.stage = stage;
            for (w, s) in p.workers.iter_mut().zip(&self.slots) {
                w.iterations = s.out.records.len() as u64;
                w.in_window = window.map_or(0, |win| in_window(&s.out.records, win).len() as u64);
            }
        });
    }

    fn enough_in_window(&self) -> bool {
        match self.window() {
            Some(win) => self
                .slots
                .iter()
                .all(|s| in_window(&s.out.records, win).len() as u64 >= self.target),
            None => false,
        }
    }

    /// Applies an event. Returns a failure if it shows one.
    fn apply(&mut self, ev: Event, stage: PhaseStage) -> Option<Failure> {
        let now = Instant::now();
        match ev {
            Event::Msg(i, msg) => {
                let slot = &mut self.slots[i];
                slot.last_activity = Some(now);
                match msg {
                    WorkerMsg::Ready {
                        provider,
                        inputs,
                        outputs,
                        load_ms,
                        ..
                    } => {
                        slot.out.ready = Some(WorkerReady {
                            provider,
                            inputs,
                            outputs,
                            load_ms,
                        })
                    }
                    WorkerMsg::Records { records, stages } => {
                        slot.out.records.extend(records);
                        slot.out.stages.extend(stages);
                    }
                    WorkerMsg::Validation(summary) => slot.out.validation = Some(*summary),
                    WorkerMsg::Digests { digests } => slot.out.digests = digests,
                    WorkerMsg::Done { reason, .. } => {
                        slot.done = true;
                        slot.out.stop_reason = Some(reason);
                    }
                    // Not a failure yet: the worker exits right after, and its own exit status
                    // belongs in the report. The failure comes with its exit, named by this message.
                    WorkerMsg::Error { message } => slot.out.error = Some(message),
                }
                None
            }
            Event::BadLine(i, line) => {
                let cause = format!(
                    "wrote a line that is not a protocol message: {:?}",
                    line.chars().take(200).collect::<String>()
                );
                Some(Failure::Worker { index: i, cause })
            }
            Event::Eof(i) => {
                self.slots[i].eof = true;
                self.check_finished(i, stage)
            }
            Event::Exited(i, status) => {
                let slot = &mut self.slots[i];
                slot.exited = true;
                slot.out.exit_status = status.ok();
                self.progress.send_modify(|p| p.workers[i].running = false);
                self.check_finished(i, stage)
            }
        }
    }

    fn check_finished(&self, i: usize, stage: PhaseStage) -> Option<Failure> {
        let slot = &self.slots[i];
        if !slot.finished() {
            return None;
        }
        let clean = slot.done && slot.out.exit_status.is_some_and(|s| s.success());
        // A self-paced worker that finished its pass cleanly is done, not failed.
        if clean && (stage == PhaseStage::Stopping || self.self_paced) {
            return None;
        }
        let cause = match stage {
            PhaseStage::Starting | PhaseStage::Loading => "exited while loading",
            PhaseStage::Measuring => "exited during the measured loop",
            PhaseStage::Stopping if slot.done => "exited with a failure status after finishing",
            _ => "exited before reporting its results",
        };
        Some(Failure::Worker {
            index: i,
            cause: cause.to_string(),
        })
    }

    async fn run(
        &mut self,
        spec: &PhaseSpec,
        cancel: &CancellationToken,
        tx: mpsc::UnboundedSender<Event>,
        rx: &mut mpsc::UnboundedReceiver<Event>,
    ) -> Option<Failure> {
        if let Err(f) = self.spawn_all(spec, &tx) {
            return Some(f);
        }
        // Only the reader and waiter tasks hold senders now: `None` means all are done.
        drop(tx);
        let mut stage = PhaseStage::Loading;
        self.progress.send_modify(|p| p.stage = stage);
        let mut deadline = Instant::now() + spec.load_timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            let wake = tokio::select! {
                biased;
                _ = cancel.cancelled() => Wake::Cancelled,
                _ = sleep_until(deadline) => Wake::Deadline,
                ev = rx.recv() => Wake::Event(ev),
                _ = tick.tick() => Wake::Tick,
            };
            let ev = match wake {
                Wake::Cancelled => return Some(Failure::Cancelled),
                Wake::Deadline => return Some(self.timeout_failure(stage)),
                Wake::Tick => match self.stalled(stage, spec.stall_timeout) {
                    Some(f) => return Some(f),
                    None => continue,
                },
                Wake::Event(Some(ev)) => ev,
                // Every reader and waiter is gone: every worker finished.
                Wake::Event(None) => return None,
            };
            let had_records = matches!(&ev, Event::Msg(_, WorkerMsg::Records { .. }));
            if let Some(f) = self.apply(ev, stage) {
                return Some(f);
            }
            match stage {
                PhaseStage::Loading if self.slots.iter().all(|s| s.out.ready.is_some()) => {
                    stage = PhaseStage::Measuring;
                    let start_at = monotonic_ns() + GO_MARGIN.as_nanos() as u64;
                    self.send_all(ParentMsg::Go {
                        start_at_ns: Some(start_at),
                    })
                    .await;
                    let now = Instant::now();
                    for s in &mut self.slots {
                        s.last_activity = Some(now + GO_MARGIN);
                    }
                    deadline = now + spec.phase_timeout;
                    self.progress.send_modify(|p| p.stage = stage);
                }
                PhaseStage::Measuring if self.self_paced => {
                    if had_records {
                        self.publish_counts(stage);
                    }
                    if self.slots.iter().all(Slot::finished) {
                        return None;
                    }
                }
                PhaseStage::Measuring if had_records => {
                    if self.enough_in_window() {
                        stage = PhaseStage::Stopping;
                        self.send_all(ParentMsg::Stop).await;
                    }
                    self.publish_counts(stage);
                }
                PhaseStage::Stopping if self.slots.iter().all(Slot::finished) => return None,
                _ => {}
            }
        }
    }

    fn stalled(&self, stage: PhaseStage, timeout: Duration) -> Option<Failure> {
        if !matches!(stage, PhaseStage::Measuring | PhaseStage::Stopping) {
            return None;
        }
        let now = Instant::now();
        self.slots
            .iter()
            .position(|s| {
                !s.finished()
                    && s.last_activity
                        .is_some_and(|t| now.saturating_duration_since(t) > timeout)
            })
            .map(|index| Failure::Stalled { index })
    }

    fn timeout_failure(&self, stage: PhaseStage) -> Failure {
        if stage == PhaseStage::Loading {
            let index = self
                .slots
                .iter()
                .position(|s| s.out.ready.is_none())
                .unwrap_or(0);
            return Failure::LoadTimeout { index };
        }
        let waiting: Vec<&str> = self
            .slots
            .iter()
            .filter(|s| !s.finished())
            .map(|s| s.out.model.as_str())
            .collect();
        Failure::PhaseTimeout {
            waiting_for: waiting.join(", "),
        }
    }

    /// Stops whatever still runs (SIGTERM to each process group, SIGKILL after a grace
    /// period), reaps everything, then builds the outcome.
    async fn finish(
        mut self,
        spec: &PhaseSpec,
        failure: Option<Failure>,
        rx: &mut mpsc::UnboundedReceiver<Event>,
    ) -> PhaseOutcome {
        self.progress
            .send_modify(|p| p.stage = PhaseStage::Stopping);
        if self.slots.iter().any(|s| !s.finished()) {
            // Closing stdin alone would also stop a healthy worker (it reads EOF as "parent
            // gone"); the signal covers one that is stuck loading or in a long inference.
            for s in &mut self.slots {
                s.stdin = None;
            }
            self.signal_all(Signal::SIGTERM);
            if !self.drain_until_finished(rx, TERM_GRACE).await {
                self.signal_all(Signal::SIGKILL);
                self.drain_until_finished(rx, KILL_WAIT).await;
            }
        }
        for s in &mut self.slots {
            if let Some(h) = s.stderr.take() {
                if let Ok(Ok(tail)) = tokio::time::timeout(Duration::from_secs(1), h).await {
                    s.out.stderr_tail = tail;
                }
            }
        }
        let error = failure.map(|f| self.to_error(f, spec));
        let window = self.window();
        let skew = barrier_skew_ns(self.slots.iter().map(|s| s.out.records.as_slice()));
        let workers: Vec<WorkerOutcome> = self
            .slots
            .drain(..)
            .map(|mut s| {
                if let Some(win) = window {
                    s.out.in_window = in_window(&s.out.records, win).to_vec();
                }
                s.out
            })
            .collect();
        self.progress.send_modify(|p| {
            p.stage = PhaseStage::Finished;
            for (p, w) in p.workers.iter_mut().zip(&workers) {
                p.running = false;
                p.iterations = w.records.len() as u64;
                p.in_window = w.in_window.len() as u64;
            }
        });
        PhaseOutcome {
            workers,
            window,
            barrier_skew_ns: skew,
            error,
        }
    }

    fn signal_all(&self, sig: Signal) {
        for s in &self.slots {
            if s.exited {
                continue;
            }
            if let Some(pid) = s.out.pid.and_then(|p| i32::try_from(p).ok()) {
                // ESRCH: it exited meanwhile, which is what we want.
                let _ = killpg(Pid::from_raw(pid), sig);
            }
        }
    }

    /// Keeps collecting events (late records, the error line of a crashing worker, exits)
    /// until every worker is reaped and its stdout closed, or `limit` passes.
    async fn drain_until_finished(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Event>,
        limit: Duration,
    ) -> bool {
        let deadline = Instant::now() + limit;
        while self.slots.iter().any(|s| !s.finished()) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                // Failures seen while stopping do not replace the one that caused the stop.
                Ok(Some(ev)) => drop(self.apply(ev, PhaseStage::Stopping)),
                Ok(None) => break,
                Err(_) => return false,
            }
        }
        true
    }

    fn to_error(&self, f: Failure, spec: &PhaseSpec) -> PhaseError {
        let model = |i: usize| {
            self.slots
                .get(i)
                .map(|s| s.out.model.clone())
                .unwrap_or_default()
        };
        match f {
            Failure::Spawn { index, message } => PhaseError::Spawn {
                model: model(index),
                bin: spec
                    .workers
                    .get(index)
                    .map(|w| w.worker_bin.clone())
                    .unwrap_or_default(),
                message,
            },
            Failure::Worker { index, cause } => {
                let s = &self.slots[index];
                // The worker's own message names the cause best (missing file, provider...).
                let cause = s.out.error.clone().unwrap_or(cause);
                PhaseError::WorkerFailed {
                    model: model(index),
                    pid: s.out.pid.unwrap_or(0),
                    cause,
                    status: s
                        .out
                        .exit_status
                        .map_or_else(|| "not reaped".to_string(), |st| st.to_string()),
                    stderr_tail: s.out.stderr_tail.clone(),
                }
            }
            Failure::LoadTimeout { index } => PhaseError::LoadTimeout {
                model: model(index),
                timeout: spec.load_timeout,
            },
            Failure::Stalled { index } => PhaseError::Stalled {
                model: model(index),
                timeout: spec.stall_timeout,
            },
            Failure::PhaseTimeout { waiting_for } => PhaseError::PhaseTimeout {
                timeout: spec.phase_timeout,
                waiting_for,
            },
            Failure::Cancelled => PhaseError::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: u64, period: u64, dur: u64, n: u64) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                index: i,
                start_ns: start + i * period,
                duration_ns: dur,
            })
            .collect()
    }

    #[test]
    fn window_is_latest_first_start_to_earliest_last_end() {
        let a = run(100, 10, 10, 50); // 100..600
        let b = run(130, 25, 25, 10); // 130..380
        let w = together_window([a.as_slice(), b.as_slice()]).unwrap();
        assert_eq!(
            w,
            Window {
                start_ns: 130,
                end_ns: 380
            }
        );
        // a's records fully inside [130, 380]: starts 130..=370.
        let inside = in_window(&a, w);
        assert_eq!(inside.first().unwrap().start_ns, 130);
        assert_eq!(inside.last().unwrap().end_ns(), 380);
        assert_eq!(inside.len(), 25);
        assert_eq!(in_window(&b, w).len(), 10);
        assert_eq!(barrier_skew_ns([a.as_slice(), b.as_slice()]), Some(30));
    }

    #[test]
    fn partial_records_at_the_edges_are_excluded() {
        let a = run(0, 10, 10, 10); // 0..100
        let b = run(5, 10, 10, 10); // 5..105
        let w = together_window([a.as_slice(), b.as_slice()]).unwrap();
        assert_eq!((w.start_ns, w.end_ns), (5, 100));
        // a's first record starts before the window, b's last ends after it.
        assert_eq!(in_window(&a, w).len(), 9);
        assert_eq!(in_window(&b, w).len(), 9);
    }

    #[test]
    fn no_window_without_records_or_overlap() {
        let a = run(0, 10, 10, 5);
        let empty: Vec<Record> = Vec::new();
        assert_eq!(together_window([a.as_slice(), empty.as_slice()]), None);
        assert_eq!(barrier_skew_ns([a.as_slice(), empty.as_slice()]), None);
        let later = run(1000, 10, 10, 5);
        assert_eq!(together_window([a.as_slice(), later.as_slice()]), None);
        let none: [&[Record]; 0] = [];
        assert_eq!(together_window(none), None);
    }

    #[test]
    fn alone_window_spans_the_single_run() {
        let a = run(7, 10, 10, 4);
        let w = together_window([a.as_slice()]).unwrap();
        assert_eq!((w.start_ns, w.end_ns), (7, 47));
        assert_eq!(in_window(&a, w).len(), 4);
        assert_eq!(barrier_skew_ns([a.as_slice()]), Some(0));
    }

    #[test]
    fn worker_failure_message_carries_cause_status_and_stderr() {
        let e = PhaseError::WorkerFailed {
            model: "cls".into(),
            pid: 12,
            cause: "model file /x.onnx does not exist".into(),
            status: "exit status: 1".into(),
            stderr_tail: "x".repeat(3000) + "END\n",
        };
        let text = e.to_string();
        assert!(text.starts_with("worker for model cls (pid 12) failed: model file /x.onnx"));
        assert!(text.contains("(exit status: 1)"));
        assert!(text.ends_with("END"), "{text}");
        assert!(text.len() < 2200);
    }
}
