//! SQLite state: runs, phases, per-iteration results, telemetry samples and an event log.
//!
//! One writer thread owns the only writing connection and batches everything it receives into
//! transactions, so no sampler or worker ever waits on the disk: producers `try_send` and a
//! full channel (a stalled or full disk) drops samples with a counter instead of blocking.
//! Readers use their own connection (WAL lets them run beside the writer).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database {path} has schema version {found}, newer than this mpslab understands ({supported})")]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("the store writer has stopped")]
    WriterGone,
    #[error("{0}")]
    Query(#[from] rusqlite::Error),
    #[error("run {0} not found")]
    RunNotFound(i64),
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Schema migrations, applied in order; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE runs(
    id INTEGER PRIMARY KEY,
    experiment TEXT NOT NULL,
    status TEXT NOT NULL,
    trigger TEXT NOT NULL,
    queued_ms INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER,
    plan TEXT,
    error TEXT
);
CREATE TABLE phases(
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    mode TEXT NOT NULL,
    mps TEXT NOT NULL,
    sampling INTEGER NOT NULL,
    repeat INTEGER NOT NULL,
    models TEXT NOT NULL,
    status TEXT NOT NULL,
    started_ms INTEGER,
    ended_ms INTEGER,
    window_start_ns INTEGER,
    window_end_ns INTEGER,
    barrier_skew_ns INTEGER,
    error TEXT,
    UNIQUE(run_id, idx)
);
CREATE TABLE phase_models(
    phase_id INTEGER NOT NULL REFERENCES phases(id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    pid INTEGER,
    exit_status TEXT,
    digest TEXT,
    digest_values TEXT,
    cpu_pct_avg REAL,
    cpu_pct_max REAL,
    rss_kb_max INTEGER,
    error TEXT,
    stderr_tail TEXT,
    PRIMARY KEY(phase_id, model)
);
CREATE TABLE iterations(
    phase_id INTEGER NOT NULL REFERENCES phases(id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    idx INTEGER NOT NULL,
    start_ns INTEGER NOT NULL,
    dur_ns INTEGER NOT NULL,
    in_window INTEGER NOT NULL,
    PRIMARY KEY(phase_id, model, idx)
) WITHOUT ROWID;
CREATE TABLE tegrastats_samples(
    id INTEGER PRIMARY KEY,
    mono_ns INTEGER NOT NULL,
    wall_ms INTEGER NOT NULL,
    run_id INTEGER,
    phase_id INTEGER,
    raw BLOB NOT NULL,
    parsed TEXT,
    parse_error TEXT,
    gr3d_pct REAL,
    emc_pct REAL,
    ram_used_mb INTEGER,
    power_mw REAL
);
CREATE INDEX tegrastats_wall ON tegrastats_samples(wall_ms);
CREATE INDEX tegrastats_phase ON tegrastats_samples(phase_id);
CREATE TABLE vmstat_samples(
    id INTEGER PRIMARY KEY,
    mono_ns INTEGER NOT NULL,
    wall_ms INTEGER NOT NULL,
    run_id INTEGER,
    phase_id INTEGER,
    raw TEXT NOT NULL,
    row TEXT NOT NULL,
    us REAL, sy REAL, idle REAL, wa REAL,
    free_kb INTEGER
);
CREATE INDEX vmstat_wall ON vmstat_samples(wall_ms);
CREATE INDEX vmstat_phase ON vmstat_samples(phase_id);
CREATE TABLE proc_samples(
    id INTEGER PRIMARY KEY,
    wall_ms INTEGER NOT NULL,
    run_id INTEGER,
    phase_id INTEGER,
    model TEXT NOT NULL,
    pid INTEGER NOT NULL,
    cpu_pct REAL,
    rss_kb INTEGER
);
CREATE INDEX proc_phase ON proc_samples(phase_id);
CREATE TABLE events(
    id INTEGER PRIMARY KEY,
    wall_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    run_id INTEGER,
    phase_id INTEGER,
    model TEXT
);
CREATE INDEX events_wall ON events(wall_ms);
"#,
    r#"
-- Validation experiments: the pre/infer/post split of each image, and per model the metrics,
-- prediction digest and per-file dataset issues (JSON of protocol::ValidationSummary).
ALTER TABLE iterations ADD COLUMN pre_ns INTEGER;
ALTER TABLE iterations ADD COLUMN infer_ns INTEGER;
ALTER TABLE iterations ADD COLUMN post_ns INTEGER;
ALTER TABLE phase_models ADD COLUMN validation TEXT;
"#,
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// What opening the database found and did, for the log and the event table.
#[derive(Debug, Default)]
pub struct OpenReport {
    /// Where a corrupt database was moved.
    pub moved_aside: Option<PathBuf>,
    pub corruption: Option<String>,
    pub interrupted_runs: Vec<i64>,
    pub migrated_from: i64,
}

fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

fn configure(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    // FULL keeps every committed batch across a power cut; the writer batches, so the cost is one
    // fsync per batch, not per sample.
    conn.execute_batch(
        "PRAGMA auto_vacuum=INCREMENTAL; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
         PRAGMA foreign_keys=ON;",
    )
    .map_err(sqlite_err(path))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(sqlite_err(path))?;
    Ok(())
}

/// `Ok(None)` when the database is sound, `Ok(Some(why))` when it is corrupt.
fn check_integrity(path: &Path) -> Option<String> {
    let conn = match Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE) {
        Ok(c) => c,
        Err(e) => return Some(e.to_string()),
    };
    let result: Result<Vec<String>, rusqlite::Error> = (|| {
        let mut stmt = conn.prepare("PRAGMA quick_check")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    })();
    match result {
        Ok(lines) if lines.len() == 1 && lines[0] == "ok" => None,
        Ok(lines) => Some(lines.join("; ")),
        Err(e) => Some(e.to_string()),
    }
}

fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = chrono::Local::now().format("%Y%m%dT%H%M%S");
    let dest = path.with_extension(format!("db.corrupt-{stamp}"));
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        let to = PathBuf::from(format!("{}{suffix}", dest.display()));
        if from.exists() {
            std::fs::rename(&from, &to).map_err(|source| StoreError::Io { path: from, source })?;
        }
    }
    Ok(dest)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<i64, StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sqlite_err(path))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(sqlite_err(path))?;
        tx.execute_batch(sql).map_err(sqlite_err(path))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(sqlite_err(path))?;
        tx.commit().map_err(sqlite_err(path))?;
    }
    Ok(version)
}

/// Open (creating if needed) the database at `path`: check it, move a corrupt one aside, apply
/// migrations and mark runs a crash left open as `interrupted`. Blocking.
pub fn open(path: &Path) -> Result<(Connection, OpenReport), StoreError> {
    let mut report = OpenReport::default();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    if path.exists() {
        if let Some(why) = check_integrity(path) {
            let dest = move_aside(path)?;
            tracing::error!(
                db = %path.display(), moved_to = %dest.display(), reason = %why,
                "DATABASE CORRUPT: moved it aside and created a fresh one; the old file is kept for recovery"
            );
            report.moved_aside = Some(dest);
            report.corruption = Some(why);
        }
    }
    let mut conn = Connection::open(path).map_err(sqlite_err(path))?;
    configure(&conn, path)?;
    report.migrated_from = migrate(&mut conn, path)?;
    let now = now_ms();
    let tx = conn.transaction().map_err(sqlite_err(path))?;
    {
        let mut stmt = tx
            .prepare("SELECT id FROM runs WHERE status IN ('running','queued') ORDER BY id")
            .map_err(sqlite_err(path))?;
        let ids = stmt
            .query_map([], |r| r.get::<_, i64>(0))
            .map_err(sqlite_err(path))?;
        for id in ids {
            report.interrupted_runs.push(id.map_err(sqlite_err(path))?);
        }
    }
    for id in &report.interrupted_runs {
        tx.execute(
            "UPDATE runs SET status='interrupted', finished_ms=?2, \
             error=COALESCE(error, 'the daemon stopped before the run finished') WHERE id=?1",
            params![id, now],
        )
        .map_err(sqlite_err(path))?;
        tx.execute(
            "UPDATE phases SET status='interrupted', ended_ms=COALESCE(ended_ms, ?2) \
             WHERE run_id=?1 AND status IN ('running','pending')",
            params![id, now],
        )
        .map_err(sqlite_err(path))?;
        tx.execute(
            "INSERT INTO events(wall_ms, source, kind, message, run_id) VALUES(?1,'store','run_interrupted',?2,?3)",
            params![now, format!("run {id} was open when the daemon stopped; marked interrupted"), id],
        )
        .map_err(sqlite_err(path))?;
    }
    if let Some(why) = &report.corruption {
        let dest = report
            .moved_aside
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        tx.execute(
            "INSERT INTO events(wall_ms, source, kind, message) VALUES(?1,'store','database_corrupt',?2)",
            params![now, format!("corrupt database moved to {dest}: {why}")],
        )
        .map_err(sqlite_err(path))?;
    }
    tx.commit().map_err(sqlite_err(path))?;
    Ok((conn, report))
}

// ---- rows -----------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tag {
    pub run_id: Option<i64>,
    pub phase_id: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub wall_ms: i64,
    pub source: String,
    pub kind: String,
    pub message: String,
    pub run_id: Option<i64>,
    pub phase_id: Option<i64>,
    pub model: Option<String>,
}

impl EventRow {
    pub fn new(source: &str, kind: &str, message: impl Into<String>) -> Self {
        EventRow {
            wall_ms: now_ms(),
            source: source.into(),
            kind: kind.into(),
            message: message.into(),
            run_id: None,
            phase_id: None,
            model: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TegraRow {
    pub mono_ns: u64,
    pub wall_ms: i64,
    pub tag: Tag,
    pub raw: Vec<u8>,
    pub parsed_json: Option<String>,
    pub parse_error: Option<String>,
    pub gr3d_pct: Option<f64>,
    pub emc_pct: Option<f64>,
    pub ram_used_mb: Option<i64>,
    pub power_mw: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct VmstatRowRecord {
    pub mono_ns: u64,
    pub wall_ms: i64,
    pub tag: Tag,
    pub raw_json: String,
    pub row_json: String,
    pub us: f64,
    pub sy: f64,
    pub idle: f64,
    pub wa: f64,
    pub free_kb: i64,
}

#[derive(Debug, Clone)]
pub struct ProcRow {
    pub wall_ms: i64,
    pub tag: Tag,
    pub model: String,
    pub pid: i32,
    pub cpu_pct: Option<f64>,
    pub rss_kb: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct NewPhase {
    pub run_id: i64,
    pub idx: u32,
    pub mode: String,
    pub mps: String,
    pub sampling: bool,
    pub repeat: u32,
    pub models: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PhaseEnd {
    pub phase_id: i64,
    pub status: String,
    pub window_start_ns: Option<u64>,
    pub window_end_ns: Option<u64>,
    pub barrier_skew_ns: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PhaseModelRow {
    pub phase_id: i64,
    pub model: String,
    pub status: String,
    pub pid: Option<i32>,
    pub exit_status: Option<String>,
    pub digest: Option<String>,
    pub digest_values: Option<String>,
    pub cpu_pct_avg: Option<f64>,
    pub cpu_pct_max: Option<f64>,
    pub rss_kb_max: Option<i64>,
    pub error: Option<String>,
    pub stderr_tail: Option<String>,
    /// Validation: JSON of the worker's `ValidationSummary`.
    pub validation: Option<String>,
}

/// One measured iteration: index, start (CLOCK_MONOTONIC ns), duration (ns), inside the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IterationRow {
    pub idx: u64,
    pub start_ns: u64,
    pub dur_ns: u64,
    pub in_window: bool,
    /// Validation: (preprocess, inference, postprocess) ns.
    pub stages: Option<(u64, u64, u64)>,
}

type Reply<T> = oneshot::Sender<Result<T, String>>;

pub enum WriteOp {
    Event(EventRow),
    Tegra(TegraRow),
    Vmstat(VmstatRowRecord),
    Proc(ProcRow),
    CreateRun {
        experiment: String,
        trigger: String,
        plan_json: String,
        reply: Reply<i64>,
    },
    RunStatus {
        run_id: i64,
        status: String,
        error: Option<String>,
    },
    CreatePhase {
        phase: NewPhase,
        reply: Reply<i64>,
    },
    EndPhase(PhaseEnd),
    PhaseModel(PhaseModelRow),
    Iterations {
        phase_id: i64,
        model: String,
        rows: Vec<IterationRow>,
    },
    Retention {
        older_than_ms: i64,
        max_bytes: u64,
    },
    /// Replies once everything sent before it is committed.
    Flush(oneshot::Sender<()>),
}

impl WriteOp {
    /// Samples may be dropped under pressure; results and run state may not.
    fn is_sample(&self) -> bool {
        matches!(
            self,
            WriteOp::Tegra(_) | WriteOp::Vmstat(_) | WriteOp::Proc(_)
        )
    }
}

/// Counters the writer keeps, for status and the Prometheus textfile.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub committed_batches: AtomicU64,
    pub committed_ops: AtomicU64,
    /// Samples refused because the channel was full (disk slower than producers).
    pub dropped_full: AtomicU64,
    /// Samples lost because a commit failed (disk full, I/O error).
    pub dropped_failed: AtomicU64,
    pub failed_commits: AtomicU64,
}

/// Cheap, clonable handle producers use to reach the writer.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<WriteOp>,
    pub stats: Arc<WriterStats>,
}

pub const WRITER_QUEUE: usize = 4096;

impl WriterHandle {
    /// Queue a sample without waiting; when the queue is full it is dropped and counted.
    pub fn sample(&self, op: WriteOp) {
        if self.tx.try_send(op).is_err() {
            self.stats.dropped_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queue an operation that must not be lost (run state, results, events); waits for room.
    pub async fn send(&self, op: WriteOp) -> Result<(), StoreError> {
        self.tx.send(op).await.map_err(|_| StoreError::WriterGone)
    }

    pub async fn event(&self, ev: EventRow) {
        if self.send(WriteOp::Event(ev)).await.is_err() {
            tracing::warn!("event lost: store writer stopped");
        }
    }

    async fn request<T>(&self, make: impl FnOnce(Reply<T>) -> WriteOp) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(msg)) => Err(StoreError::Query(rusqlite::Error::InvalidParameterName(
                msg,
            ))),
            Err(_) => Err(StoreError::WriterGone),
        }
    }

    pub async fn create_run(
        &self,
        experiment: &str,
        trigger: &str,
        plan_json: String,
    ) -> Result<i64, StoreError> {
        let (experiment, trigger) = (experiment.to_string(), trigger.to_string());
        self.request(|reply| WriteOp::CreateRun {
            experiment,
            trigger,
            plan_json,
            reply,
        })
        .await
    }

    pub async fn create_phase(&self, phase: NewPhase) -> Result<i64, StoreError> {
        self.request(|reply| WriteOp::CreatePhase { phase, reply })
            .await
    }

    /// Wait until everything queued so far is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(WriteOp::Flush(tx)).await?;
        rx.await.map_err(|_| StoreError::WriterGone)
    }
}

/// Start the writer thread on `conn`. It exits when every handle is dropped, after committing
/// what is queued.
pub fn spawn_writer(conn: Connection) -> (WriterHandle, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(WRITER_QUEUE);
    let stats = Arc::new(WriterStats::default());
    let thread_stats = stats.clone();
    let join = std::thread::Builder::new()
        .name("mpslab-store".into())
        .spawn(move || writer_loop(conn, rx, thread_stats));
    match join {
        Ok(join) => (WriterHandle { tx, stats }, join),
        // Without a writer thread nothing can be stored; the process is unusable anyway, and this
        // only fails when the OS refuses threads.
        Err(e) => panic!("cannot start the store writer thread: {e}"),
    }
}

const MAX_BATCH: usize = 1024;

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<WriteOp>, stats: Arc<WriterStats>) {
    let mut failing_since: Option<(i64, String)> = None;
    let mut lost_while_failing: u64 = 0;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = Vec::with_capacity(64);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        if let Some((since, why)) = &failing_since {
            // Tell the event log about the outage once the disk takes writes again.
            batch.insert(
                0,
                WriteOp::Event(EventRow::new(
                    "store",
                    "writes_resumed",
                    format!(
                        "writes resumed; {lost_while_failing} samples lost since {since} ms: {why}"
                    ),
                )),
            );
        }
        match commit_batch(&mut conn, &mut batch) {
            Ok(n) => {
                if failing_since.take().is_some() {
                    tracing::warn!(lost = lost_while_failing, "store writes resumed");
                    lost_while_failing = 0;
                }
                stats.committed_batches.fetch_add(1, Ordering::Relaxed);
                stats.committed_ops.fetch_add(n as u64, Ordering::Relaxed);
                finish_batch(batch, Ok(()));
            }
            Err(e) => {
                stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                let msg = e.to_string();
                if failing_since.is_none() {
                    tracing::error!(error = %msg, "store commit failed; dropping samples until the disk recovers");
                    failing_since = Some((now_ms(), msg.clone()));
                } else {
                    // Drop the synthetic resume event we inserted above.
                    batch.remove(0);
                }
                let lost = batch.iter().filter(|op| op.is_sample()).count() as u64;
                lost_while_failing += lost;
                stats.dropped_failed.fetch_add(lost, Ordering::Relaxed);
                let retry = finish_batch(batch, Err(msg));
                // Results and run state are retried one by one once space returns; keep them
                // in order at the front of the next batch by committing them alone now.
                if !retry.is_empty() {
                    std::thread::sleep(Duration::from_millis(200));
                    let mut retry = retry;
                    if commit_batch(&mut conn, &mut retry).is_err() {
                        tracing::error!(ops = retry.len(), "store: results lost after retry");
                    }
                }
            }
        }
    }
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
}

/// Reply to request ops; on failure return the ops that must not be lost for one retry.
fn finish_batch(batch: Vec<WriteOp>, result: Result<(), String>) -> Vec<WriteOp> {
    let mut retry = Vec::new();
    for op in batch {
        match op {
            WriteOp::Flush(reply) => {
                let _ = reply.send(());
            }
            WriteOp::CreateRun { reply, .. } | WriteOp::CreatePhase { reply, .. } => {
                if let Err(e) = &result {
                    let _ = reply.send(Err(e.clone()));
                }
                // Successful replies were sent inside the transaction with the new id.
            }
            op if result.is_err()
                && !op.is_sample()
                && !matches!(op, WriteOp::Retention { .. }) =>
            {
                retry.push(op)
            }
            _ => {}
        }
    }
    retry
}

fn commit_batch(conn: &mut Connection, batch: &mut [WriteOp]) -> Result<usize, rusqlite::Error> {
    let tx = conn.transaction()?;
    // (index in batch, new row id) for ops whose caller waits for the id.
    let mut new_ids: Vec<(usize, i64)> = Vec::new();
    for (i, op) in batch.iter().enumerate() {
        match op {
            WriteOp::Event(e) => {
                tx.prepare_cached(
                    "INSERT INTO events(wall_ms, source, kind, message, run_id, phase_id, model) VALUES(?1,?2,?3,?4,?5,?6,?7)",
                )?
                .execute(params![e.wall_ms, e.source, e.kind, e.message, e.run_id, e.phase_id, e.model])?;
            }
            WriteOp::Tegra(t) => {
                tx.prepare_cached(
                    "INSERT INTO tegrastats_samples(mono_ns, wall_ms, run_id, phase_id, raw, parsed, parse_error, gr3d_pct, emc_pct, ram_used_mb, power_mw) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)",
                )?
                .execute(params![
                    t.mono_ns as i64, t.wall_ms, t.tag.run_id, t.tag.phase_id, t.raw, t.parsed_json,
                    t.parse_error, t.gr3d_pct, t.emc_pct, t.ram_used_mb, t.power_mw
                ])?;
            }
            WriteOp::Vmstat(v) => {
                tx.prepare_cached(
                    "INSERT INTO vmstat_samples(mono_ns, wall_ms, run_id, phase_id, raw, row, us, sy, idle, wa, free_kb) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)",
                )?
                .execute(params![
                    v.mono_ns as i64, v.wall_ms, v.tag.run_id, v.tag.phase_id, v.raw_json, v.row_json,
                    v.us, v.sy, v.idle, v.wa, v.free_kb
                ])?;
            }
            WriteOp::Proc(p) => {
                tx.prepare_cached(
                    "INSERT INTO proc_samples(wall_ms, run_id, phase_id, model, pid, cpu_pct, rss_kb) VALUES(?1,?2,?3,?4,?5,?6,?7)",
                )?
                .execute(params![p.wall_ms, p.tag.run_id, p.tag.phase_id, p.model, p.pid, p.cpu_pct, p.rss_kb])?;
            }
            WriteOp::CreateRun {
                experiment,
                trigger,
                plan_json,
                ..
            } => {
                tx.prepare_cached(
                    "INSERT INTO runs(experiment, status, trigger, queued_ms, plan) VALUES(?1,'queued',?2,?3,?4)",
                )?
                .execute(params![experiment, trigger, now_ms(), plan_json])?;
                new_ids.push((i, tx.last_insert_rowid()));
            }
            WriteOp::RunStatus {
                run_id,
                status,
                error,
            } => {
                let now = now_ms();
                let sql = match status.as_str() {
                    "running" => "UPDATE runs SET status=?2, started_ms=?3, error=COALESCE(?4, error) WHERE id=?1",
                    "queued" => "UPDATE runs SET status=?2, error=COALESCE(?4, error) WHERE id=?1 AND ?3 IS NOT NULL",
                    _ => "UPDATE runs SET status=?2, finished_ms=?3, error=COALESCE(?4, error) WHERE id=?1",
                };
                tx.prepare_cached(sql)?
                    .execute(params![run_id, status, now, error])?;
            }
            WriteOp::CreatePhase { phase, .. } => {
                let models = serde_json::to_string(&phase.models).unwrap_or_else(|_| "[]".into());
                tx.prepare_cached(
                    "INSERT INTO phases(run_id, idx, mode, mps, sampling, repeat, models, status, started_ms) VALUES(?1,?2,?3,?4,?5,?6,?7,'running',?8)",
                )?
                .execute(params![
                    phase.run_id, phase.idx, phase.mode, phase.mps, phase.sampling, phase.repeat, models, now_ms()
                ])?;
                new_ids.push((i, tx.last_insert_rowid()));
            }
            WriteOp::EndPhase(p) => {
                tx.prepare_cached(
                    "UPDATE phases SET status=?2, ended_ms=?3, window_start_ns=?4, window_end_ns=?5, barrier_skew_ns=?6, error=?7 WHERE id=?1",
                )?
                .execute(params![
                    p.phase_id,
                    p.status,
                    now_ms(),
                    p.window_start_ns.map(|v| v as i64),
                    p.window_end_ns.map(|v| v as i64),
                    p.barrier_skew_ns.map(|v| v as i64),
                    p.error
                ])?;
            }
            WriteOp::PhaseModel(m) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO phase_models(phase_id, model, status, pid, exit_status, digest, digest_values, cpu_pct_avg, cpu_pct_max, rss_kb_max, error, stderr_tail, validation) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)",
                )?
                .execute(params![
                    m.phase_id, m.model, m.status, m.pid, m.exit_status, m.digest, m.digest_values,
                    m.cpu_pct_avg, m.cpu_pct_max, m.rss_kb_max, m.error, m.stderr_tail, m.validation
                ])?;
            }
            WriteOp::Iterations {
                phase_id,
                model,
                rows,
            } => {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR REPLACE INTO iterations(phase_id, model, idx, start_ns, dur_ns, in_window, pre_ns, infer_ns, post_ns) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9)",
                )?;
                for r in rows {
                    stmt.execute(params![
                        phase_id,
                        model,
                        r.idx as i64,
                        r.start_ns as i64,
                        r.dur_ns as i64,
                        r.in_window,
                        r.stages.map(|s| s.0 as i64),
                        r.stages.map(|s| s.1 as i64),
                        r.stages.map(|s| s.2 as i64),
                    ])?;
                }
            }
            WriteOp::Retention {
                older_than_ms,
                max_bytes,
            } => apply_retention(&tx, *older_than_ms, *max_bytes)?,
            WriteOp::Flush(_) => {}
        }
    }
    tx.commit()?;
    // Hand out the new ids only after the commit made them real.
    for (i, id) in new_ids {
        if let WriteOp::CreateRun { reply, .. } | WriteOp::CreatePhase { reply, .. } = &mut batch[i]
        {
            let (unused, _) = oneshot::channel();
            let _ = std::mem::replace(reply, unused).send(Ok(id));
        }
    }
    Ok(batch.len())
}

const SAMPLE_TABLES: &[&str] = &["tegrastats_samples", "vmstat_samples", "proc_samples"];

fn apply_retention(
    tx: &rusqlite::Transaction,
    older_than_ms: i64,
    max_bytes: u64,
) -> Result<(), rusqlite::Error> {
    for table in SAMPLE_TABLES {
        tx.execute(
            &format!("DELETE FROM {table} WHERE wall_ms < ?1"),
            [older_than_ms],
        )?;
    }
    tx.execute("DELETE FROM events WHERE wall_ms < ?1", [older_than_ms])?;
    // Over the size cap: drop the oldest tenth of samples until under it. Runs and results are
    // never deleted by size, only samples.
    for _ in 0..20 {
        let size: i64 = tx.query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        )?;
        let free: i64 = tx.query_row(
            "SELECT freelist_count * page_size FROM pragma_freelist_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        )?;
        if ((size - free).max(0) as u64) <= max_bytes {
            break;
        }
        let mut deleted = 0;
        for table in SAMPLE_TABLES {
            deleted += tx.execute(
                &format!(
                    "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} ORDER BY id LIMIT MAX(1, (SELECT COUNT(*) FROM {table}) / 10))"
                ),
                [],
            )?;
        }
        if deleted == 0 {
            break;
        }
    }
    tx.execute_batch("PRAGMA incremental_vacuum;")?;
    Ok(())
}

// ---- reads ----------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    pub id: i64,
    pub experiment: String,
    pub status: String,
    pub trigger: String,
    pub queued_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub error: Option<String>,
}

/// Read side: its own connection, used from `spawn_blocking`.
#[derive(Clone)]
pub struct Reader {
    conn: Arc<Mutex<Connection>>,
    pub path: PathBuf,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite_err(path))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(sqlite_err(path))?;
        Ok(Reader {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
    }

    /// Run `f` with the connection on a blocking thread.
    pub async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&guard)
        })
        .await
        .map_err(|_| StoreError::WriterGone)?
    }
}

fn run_from_row(r: &rusqlite::Row) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        experiment: r.get(1)?,
        status: r.get(2)?,
        trigger: r.get(3)?,
        queued_ms: r.get(4)?,
        started_ms: r.get(5)?,
        finished_ms: r.get(6)?,
        error: r.get(7)?,
    })
}

const RUN_COLUMNS: &str =
    "id, experiment, status, trigger, queued_ms, started_ms, finished_ms, error";

pub fn list_runs(conn: &Connection, limit: u32) -> Result<Vec<RunRow>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map([limit], run_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn get_run(conn: &Connection, id: i64) -> Result<RunRow, StoreError> {
    conn.query_row(
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id=?1"),
        [id],
        run_from_row,
    )
    .optional()?
    .ok_or(StoreError::RunNotFound(id))
}

pub fn count(conn: &Connection, table: &str) -> Result<i64, StoreError> {
    Ok(conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?)
}

/// Telemetry or events newer than `since_ms`, oldest first, as JSON lines (for `GetSamples`).
/// `None` when `source` is not a known table.
pub fn samples_json(
    conn: &Connection,
    source: &str,
    since_ms: i64,
    limit: u32,
) -> Result<Option<String>, StoreError> {
    let sql = match source {
        "tegrastats" => "SELECT json_object('wall_ms', wall_ms, 'mono_ns', mono_ns, 'run_id', run_id, 'phase_id', phase_id, \
             'sample', json(parsed), 'error', parse_error, 'raw', CAST(raw AS TEXT)) \
             FROM tegrastats_samples WHERE wall_ms > ?1 ORDER BY id LIMIT ?2",
        "vmstat" => "SELECT json_object('wall_ms', wall_ms, 'mono_ns', mono_ns, 'run_id', run_id, 'phase_id', phase_id, \
             'row', json(row)) FROM vmstat_samples WHERE wall_ms > ?1 ORDER BY id LIMIT ?2",
        "proc" => "SELECT json_object('wall_ms', wall_ms, 'run_id', run_id, 'phase_id', phase_id, 'model', model, \
             'pid', pid, 'cpu_pct', cpu_pct, 'rss_kb', rss_kb) FROM proc_samples WHERE wall_ms > ?1 ORDER BY id LIMIT ?2",
        "events" => "SELECT json_object('wall_ms', wall_ms, 'source', source, 'kind', kind, 'message', message, \
             'run_id', run_id, 'phase_id', phase_id, 'model', model) FROM events WHERE wall_ms > ?1 ORDER BY id LIMIT ?2",
        _ => return Ok(None),
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params![since_ms, limit], |r| r.get::<_, String>(0))?;
    let mut out = String::new();
    for r in rows {
        out.push_str(&r?);
        out.push('\n');
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writer_commits_and_assigns_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let (conn, report) = open(&path).unwrap();
        assert!(report.moved_aside.is_none());
        let (w, join) = spawn_writer(conn);
        let run = w.create_run("x", "manual", "{}".into()).await.unwrap();
        let phase = w
            .create_phase(NewPhase {
                run_id: run,
                idx: 0,
                mode: "alone".into(),
                mps: "off".into(),
                sampling: true,
                repeat: 0,
                models: vec!["a".into()],
            })
            .await
            .unwrap();
        w.send(WriteOp::Iterations {
            phase_id: phase,
            model: "a".into(),
            rows: (0..10)
                .map(|i| IterationRow {
                    idx: i,
                    start_ns: i * 100,
                    dur_ns: 50,
                    in_window: true,
                    stages: None,
                })
                .collect(),
        })
        .await
        .unwrap();
        w.flush().await.unwrap();
        let reader = Reader::open(&path).unwrap();
        let n = reader.with(|c| count(c, "iterations")).await.unwrap();
        assert_eq!(n, 10);
        let run_row = reader.with(move |c| get_run(c, run)).await.unwrap();
        assert_eq!(run_row.status, "queued");
        drop(w);
        join.join().unwrap();
    }

    #[test]
    fn reopen_marks_running_runs_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        {
            let (conn, _) = open(&path).unwrap();
            conn.execute(
                "INSERT INTO runs(experiment, status, trigger, queued_ms) VALUES('e','running','manual',1)",
                [],
            )
            .unwrap();
        }
        let (conn, report) = open(&path).unwrap();
        assert_eq!(report.interrupted_runs, vec![1]);
        let status: String = conn
            .query_row("SELECT status FROM runs WHERE id=1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(status, "interrupted");
    }

    #[test]
    fn corrupt_database_is_moved_aside_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        std::fs::write(
            &path,
            b"this is not a database, but somebody's data".repeat(200),
        )
        .unwrap();
        let (_conn, report) = open(&path).unwrap();
        let moved = report.moved_aside.expect("moved aside");
        assert!(std::fs::read(&moved)
            .unwrap()
            .starts_with(b"this is not a database"));
        assert!(report.corruption.is_some());
    }
}
