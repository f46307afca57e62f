//! `mpslabctl`: the command-line client. The CLI definition lives here so that shell
//! completions and man pages are generated from the same source.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;

use crate::exit;

/// Control and query mpslabd, the Jetson concurrent-inference and CUDA MPS lab.
///
/// mpslabd runs experiments (each model alone, all together, MPS off and on, repeated) and
/// samples tegrastats and vmstat. This client talks to it over D-Bus (org.mpslab.Lab1 on the
/// system bus). Reading state is open to everyone; starting runs and controlling MPS needs root
/// or the `mpslab` group.
///
/// Examples:
///   mpslabctl status
///   mpslabctl run five-models --wait
///   mpslabctl report 12 --format html -o report.html
///   mpslabctl report 12 --db /tmp/board-a.db        (offline, no daemon needed)
///   tegrastats | mpslabctl parse-tegrastats
///
/// Exit codes: 0 success, 1 operation failed, 2 usage, 69 daemon unreachable, 77 access
/// denied, 78 configuration error.
#[derive(Parser, Debug)]
#[command(name = "mpslabctl", version, about, long_about, verbatim_doc_comment)]
pub struct Cli {
    /// Talk to a daemon on the session bus (development and tests).
    #[arg(long, global = true)]
    pub session_bus: bool,
    /// Print JSON instead of tables, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// Daemon version, MPS state, sampler states, the active run and the queue.
    Status,
    /// Control the CUDA MPS control daemon that mpslabd owns.
    Mps {
        #[command(subcommand)]
        action: MpsAction,
    },
    /// Queue a configured experiment and print its run id.
    Run {
        /// Experiment name from the configuration (`mpslabctl experiments` lists them).
        experiment: String,
        /// Wait for the run to finish, showing progress; exit 1 if it does not complete.
        #[arg(long)]
        wait: bool,
    },
    /// Cancel a queued or running run; its workers are stopped within seconds.
    Cancel { run_id: u64 },
    /// The newest runs.
    Runs {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// The configured experiments.
    Experiments,
    /// A run's report: the seed study's tables, statistics and recommendations.
    Report {
        run_id: u64,
        #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
        format: ReportFormat,
        /// Write to FILE instead of standard output.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// Read a copied database directly; no daemon needed.
        #[arg(long, value_name = "PATH")]
        db: Option<PathBuf>,
    },
    /// Compare two runs, also from two boards' database files (fleet comparison).
    Compare {
        run_a: u64,
        run_b: u64,
        /// Database holding RUN_A (default: ask the daemon).
        #[arg(long, value_name = "PATH")]
        db: Option<PathBuf>,
        /// Database holding RUN_B (default: the same as RUN_A's).
        #[arg(long, value_name = "PATH")]
        db_b: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
        format: ReportFormat,
    },
    /// Stored telemetry samples as JSON lines.
    Samples {
        /// tegrastats | vmstat | proc | events
        source: String,
        /// Only samples after this Unix time in ms.
        #[arg(long, default_value_t = 0)]
        since: i64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Ask the daemon to re-read its configuration (an invalid one is refused).
    Reload,
    /// Read tegrastats lines on stdin and print one JSON object per line.
    ParseTegrastats,
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages for mpslabctl and mpslabd into DIR.
    Man { dir: PathBuf },
}

#[derive(Subcommand, Debug, Clone, Copy)]
pub enum MpsAction {
    /// Start the control daemon with the configured defaults.
    Start,
    /// Stop it (`quit`, then signals if it hangs).
    Stop,
    /// Show its state and the reason for it.
    Status,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Md,
    Json,
    Html,
}

impl ReportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportFormat::Md => "md",
            ReportFormat::Json => "json",
            ReportFormat::Html => "html",
        }
    }
}

#[zbus::proxy(
    interface = "org.mpslab.Lab1.Manager",
    default_service = "org.mpslab.Lab1",
    default_path = "/org/mpslab/Lab1"
)]
pub trait Manager {
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn mps_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn mps_reason(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn active_run(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn queue_length(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn samplers(&self) -> zbus::Result<std::collections::HashMap<String, String>>;
    fn start_mps(&self) -> zbus::Result<()>;
    fn stop_mps(&self) -> zbus::Result<()>;
    fn run_experiment(&self, name: &str) -> zbus::Result<u64>;
    fn cancel_run(&self, id: u64) -> zbus::Result<()>;
    fn list_experiments(&self) -> zbus::Result<Vec<String>>;
    fn list_runs(&self, limit: u32) -> zbus::Result<Vec<(u64, String, String, i64, i64)>>;
    fn get_run_summary(&self, id: u64) -> zbus::Result<String>;
    fn get_report(&self, id: u64, format: &str) -> zbus::Result<String>;
    fn get_samples(&self, source: &str, since_unix_ms: i64, limit: u32) -> zbus::Result<String>;
    fn get_status(&self) -> zbus::Result<String>;
    fn get_run_data(&self, id: u64) -> zbus::Result<String>;
    fn reload_config(&self) -> zbus::Result<()>;
    #[zbus(signal)]
    fn run_started(&self, id: u64, experiment: String) -> zbus::Result<()>;
    #[zbus(signal)]
    fn run_progress(&self, id: u64, phase: u32, phases: u32) -> zbus::Result<()>;
    #[zbus(signal)]
    fn run_finished(&self, id: u64, status: String) -> zbus::Result<()>;
}

/// A failure with the exit code the contract gives it.
#[derive(Debug)]
pub struct CtlError {
    pub code: i32,
    pub message: String,
}

impl CtlError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        CtlError {
            code,
            message: message.into(),
        }
    }
}

impl From<std::io::Error> for CtlError {
    fn from(e: std::io::Error) -> Self {
        CtlError::new(exit::FAILED, e.to_string())
    }
}

/// Map a D-Bus failure to the contract's exit codes, with a one-line explanation.
pub fn classify(e: zbus::Error, bus: &str) -> CtlError {
    match &e {
        zbus::Error::MethodError(name, desc, _) => {
            let name = name.as_str();
            let desc = desc.clone().unwrap_or_default();
            match name {
                "org.freedesktop.DBus.Error.ServiceUnknown" | "org.freedesktop.DBus.Error.NameHasNoOwner" => {
                    CtlError::new(
                        exit::UNAVAILABLE,
                        format!("mpslabd is not running (nothing owns org.mpslab.Lab1 on the {bus} bus); start it with `systemctl start mpslabd`"),
                    )
                }
                "org.freedesktop.DBus.Error.AccessDenied" | "org.mpslab.Lab1.Error.AccessDenied" => {
                    CtlError::new(
                        exit::ACCESS_DENIED,
                        format!("access denied: {desc} (run as root or add yourself to group `mpslab`)"),
                    )
                }
                "org.freedesktop.DBus.Error.NoReply" | "org.freedesktop.DBus.Error.Timeout" => {
                    CtlError::new(exit::UNAVAILABLE, format!("mpslabd did not answer: {desc}"))
                }
                _ => {
                    let short = name.rsplit('.').next().unwrap_or(name);
                    CtlError::new(exit::FAILED, format!("{short}: {desc}"))
                }
            }
        }
        zbus::Error::InputOutput(_) | zbus::Error::Address(_) | zbus::Error::Handshake(_) => {
            CtlError::new(
                exit::UNAVAILABLE,
                format!("cannot reach the {bus} bus: {e}"),
            )
        }
        _ => CtlError::new(exit::FAILED, e.to_string()),
    }
}

struct Client {
    proxy: ManagerProxy<'static>,
    bus: &'static str,
}

impl Client {
    async fn connect(session: bool) -> Result<Client, CtlError> {
        let bus = if session { "session" } else { "system" };
        let conn = if session {
            zbus::Connection::session().await
        } else {
            zbus::Connection::system().await
        }
        .map_err(|e| {
            CtlError::new(
                exit::UNAVAILABLE,
                format!("cannot reach the {bus} bus: {e}"),
            )
        })?;
        let proxy = ManagerProxy::new(&conn)
            .await
            .map_err(|e| classify(e, bus))?;
        Ok(Client { proxy, bus })
    }

    fn err(&self, e: zbus::Error) -> CtlError {
        classify(e, self.bus)
    }
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn fmt_time(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| "-".into())
}

/// Run one command; `Ok(code)` is the exit code to use.
pub async fn run(cli: Cli) -> Result<i32, CtlError> {
    match cli.command {
        CtlCommand::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "mpslabctl", &mut std::io::stdout());
            Ok(exit::OK)
        }
        CtlCommand::Man { dir } => {
            write_man_pages(&dir)?;
            Ok(exit::OK)
        }
        CtlCommand::ParseTegrastats => parse_tegrastats_stdin(),
        CtlCommand::Report {
            run_id,
            format,
            output,
            db: Some(db),
        } => {
            let text = offline_report(&db, run_id, format)?;
            write_output(output.as_deref(), &text)?;
            Ok(exit::OK)
        }
        CtlCommand::Compare {
            run_a,
            run_b,
            db: Some(db),
            db_b,
            format,
        } => {
            let text = offline_compare(&db, run_a, db_b.as_deref().unwrap_or(&db), run_b, format)?;
            print!("{text}");
            Ok(exit::OK)
        }
        other => {
            let client = Client::connect(cli.session_bus).await?;
            online(&client, other, cli.json).await
        }
    }
}

async fn online(c: &Client, cmd: CtlCommand, json: bool) -> Result<i32, CtlError> {
    let p = &c.proxy;
    match cmd {
        CtlCommand::Status => {
            let status = p.get_status().await.map_err(|e| c.err(e))?;
            let v: serde_json::Value =
                serde_json::from_str(&status).unwrap_or(serde_json::Value::Null);
            if json {
                print_json(&v);
            } else {
                print_status(&v);
            }
            Ok(exit::OK)
        }
        CtlCommand::Mps { action } => {
            match action {
                MpsAction::Start => p.start_mps().await.map_err(|e| c.err(e))?,
                MpsAction::Stop => p.stop_mps().await.map_err(|e| c.err(e))?,
                MpsAction::Status => {}
            }
            let state = p.mps_state().await.map_err(|e| c.err(e))?;
            let reason = p.mps_reason().await.map_err(|e| c.err(e))?;
            if json {
                print_json(&serde_json::json!({"state": state, "reason": reason}));
            } else {
                println!(
                    "MPS: {state}{}",
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({reason})")
                    }
                );
            }
            Ok(exit::OK)
        }
        CtlCommand::Run { experiment, wait } => {
            // Subscribe before queueing, so no signal of a short run is missed.
            let (mut progress, mut finished) = if wait {
                (
                    Some(p.receive_run_progress().await.map_err(|e| c.err(e))?),
                    Some(p.receive_run_finished().await.map_err(|e| c.err(e))?),
                )
            } else {
                (None, None)
            };
            let id = p.run_experiment(&experiment).await.map_err(|e| c.err(e))?;
            if json && !wait {
                print_json(&serde_json::json!({"run_id": id}));
            } else if !json {
                println!("{id}");
            }
            if !wait {
                return Ok(exit::OK);
            }
            let (Some(progress), Some(finished)) = (progress.as_mut(), finished.as_mut()) else {
                return Ok(exit::OK);
            };
            let status = wait_for_run(c, id, progress, finished).await?;
            if json {
                print_json(&serde_json::json!({"run_id": id, "status": status}));
            } else {
                eprintln!("run {id} {status}");
            }
            Ok(if status == "completed" {
                exit::OK
            } else {
                exit::FAILED
            })
        }
        CtlCommand::Cancel { run_id } => {
            p.cancel_run(run_id).await.map_err(|e| c.err(e))?;
            if !json {
                println!("run {run_id} cancelled");
            }
            Ok(exit::OK)
        }
        CtlCommand::Runs { limit } => {
            let runs = p.list_runs(limit).await.map_err(|e| c.err(e))?;
            if json {
                let v: Vec<_> = runs
                    .iter()
                    .map(|(id, e, s, st, en)| {
                        serde_json::json!({"id": id, "experiment": e, "status": s, "started_unix_ms": st, "finished_unix_ms": en})
                    })
                    .collect();
                print_json(&serde_json::Value::Array(v));
            } else {
                println!(
                    "{:>6}  {:<24} {:<12} {:<19}  {:<19}",
                    "ID", "EXPERIMENT", "STATUS", "STARTED", "FINISHED"
                );
                for (id, e, s, st, en) in runs {
                    println!(
                        "{id:>6}  {e:<24} {s:<12} {:<19}  {:<19}",
                        fmt_time(st),
                        fmt_time(en)
                    );
                }
            }
            Ok(exit::OK)
        }
        CtlCommand::Experiments => {
            let list = p.list_experiments().await.map_err(|e| c.err(e))?;
            if json {
                print_json(&serde_json::json!(list));
            } else {
                for e in list {
                    println!("{e}");
                }
            }
            Ok(exit::OK)
        }
        CtlCommand::Report {
            run_id,
            format,
            output,
            db: None,
        } => {
            let text = p
                .get_report(run_id, format.as_str())
                .await
                .map_err(|e| c.err(e))?;
            write_output(output.as_deref(), &text)?;
            Ok(exit::OK)
        }
        CtlCommand::Compare {
            run_a,
            run_b,
            db: None,
            db_b,
            format,
        } => {
            let a = p.get_run_data(run_a).await.map_err(|e| c.err(e))?;
            let b = match db_b {
                Some(path) => run_data_json(&path, run_b)?,
                None => p.get_run_data(run_b).await.map_err(|e| c.err(e))?,
            };
            print!("{}", compare_json(&a, &b, format)?);
            Ok(exit::OK)
        }
        CtlCommand::Samples {
            source,
            since,
            limit,
        } => {
            let lines = p
                .get_samples(&source, since, limit)
                .await
                .map_err(|e| c.err(e))?;
            print!("{lines}");
            Ok(exit::OK)
        }
        CtlCommand::Reload => {
            p.reload_config().await.map_err(|e| c.err(e))?;
            if !json {
                println!("configuration reloaded");
            }
            Ok(exit::OK)
        }
        // Local commands were handled in `run`.
        other => Err(CtlError::new(
            exit::USAGE,
            format!("{other:?} runs without the daemon"),
        )),
    }
}

async fn wait_for_run(
    c: &Client,
    id: u64,
    progress: &mut RunProgressStream,
    finished: &mut RunFinishedStream,
) -> Result<String, CtlError> {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A run that finished before we subscribed is caught by polling its status.
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            Some(sig) = progress.next() => {
                if let Ok(a) = sig.args() {
                    if a.id == id {
                        let width = 30usize;
                        let done = if a.phases == 0 { 0 } else { (a.phase as usize * width) / a.phases as usize };
                        let bar = format!("[{}{}] phase {}/{}", "#".repeat(done), "-".repeat(width - done), a.phase, a.phases);
                        if tty { eprint!("\r{bar}"); } else { eprintln!("{bar}"); }
                    }
                }
            }
            Some(sig) = finished.next() => {
                if let Ok(a) = sig.args() {
                    if a.id == id {
                        if tty { eprintln!(); }
                        return Ok(a.status.clone());
                    }
                }
            }
            _ = poll.tick() => {
                let runs = c.proxy.list_runs(200).await.map_err(|e| c.err(e))?;
                if let Some((_, _, s, _, _)) = runs.iter().find(|r| r.0 == id) {
                    if !matches!(s.as_str(), "queued" | "running") {
                        if tty { eprintln!(); }
                        return Ok(s.clone());
                    }
                }
            }
        }
    }
}

fn print_status(v: &serde_json::Value) {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string();
    println!("mpslabd {}", s("version"));
    let reason = s("mps_reason");
    println!(
        "MPS:       {}{}",
        s("mps_state"),
        if reason.is_empty() || reason == "-" {
            String::new()
        } else {
            format!(" ({reason})")
        }
    );
    if let Some(samplers) = v.get("samplers").and_then(|x| x.as_object()) {
        let list: Vec<String> = samplers
            .iter()
            .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("?")))
            .collect();
        println!("Samplers:  {}", list.join(", "));
    }
    match v.get("active_run").and_then(|x| x.as_u64()) {
        Some(0) | None => println!("Run:       idle"),
        Some(id) => {
            let p = v.get("progress");
            let phase = p
                .and_then(|p| p.get("phase"))
                .and_then(|x| x.as_u64())
                .unwrap_or(0);
            let phases = p
                .and_then(|p| p.get("phases"))
                .and_then(|x| x.as_u64())
                .unwrap_or(0);
            println!("Run:       {id} (phase {phase}/{phases})");
        }
    }
    let queue: Vec<String> = v
        .get("queue")
        .and_then(|x| x.as_array())
        .map(|a| a.iter().map(|x| x.to_string()).collect())
        .unwrap_or_default();
    println!(
        "Queue:     {}",
        if queue.is_empty() {
            "empty".to_string()
        } else {
            queue.join(", ")
        }
    );
}

fn write_output(path: Option<&std::path::Path>, text: &str) -> Result<(), CtlError> {
    match path {
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            Ok(())
        }
        Some(p) => {
            // Atomic: a reader never sees half a report.
            let tmp = p.with_extension("tmp~");
            std::fs::write(&tmp, text)
                .map_err(|e| CtlError::new(exit::FAILED, format!("{}: {e}", tmp.display())))?;
            std::fs::rename(&tmp, p)
                .map_err(|e| CtlError::new(exit::FAILED, format!("{}: {e}", p.display())))?;
            eprintln!("report written to {}", p.display());
            Ok(())
        }
    }
}

fn write_man_pages(dir: &std::path::Path) -> Result<(), CtlError> {
    std::fs::create_dir_all(dir)?;
    let cmd = <Cli as clap::CommandFactory>::command();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut buf)?;
    std::fs::write(dir.join("mpslabctl.1"), buf)?;
    Ok(())
}

/// `parse-tegrastats`: one JSON object per input line; a line that is not tegrastats gives
/// `{"error": ..., "raw": ...}` and the stream goes on.
fn parse_tegrastats_stdin() -> Result<i32, CtlError> {
    use crate::telemetry::tegrastats;
    use std::io::{BufRead, BufWriter};
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bounded: a line longer than 1 MiB is cut there (tegrastats lines are ~300 bytes).
        let n = std::io::Read::take(&mut input, 1 << 20).read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        let raw = line.strip_suffix(b"\n").unwrap_or(&line);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let value = match tegrastats::parse_line(raw) {
            Ok(sample) => serde_json::to_value(&sample).unwrap_or(serde_json::Value::Null),
            Err(e) => tegrastats::error_json(raw, &e),
        };
        serde_json::to_writer(&mut out, &value)
            .map_err(|e| CtlError::new(exit::FAILED, e.to_string()))?;
        out.write_all(b"\n")?;
        if line.last() != Some(&b'\n') && n == 1 << 20 {
            // Skip the rest of an over-long line.
            let mut sink = Vec::new();
            input.read_until(b'\n', &mut sink)?;
        }
    }
    out.flush()?;
    Ok(exit::OK)
}

fn open_db(db: &std::path::Path) -> Result<rusqlite::Connection, CtlError> {
    if !db.exists() {
        return Err(CtlError::new(
            exit::FAILED,
            format!("{}: no such database", db.display()),
        ));
    }
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| CtlError::new(exit::FAILED, format!("{}: {e}", db.display())))
}

fn load_run(
    db: &std::path::Path,
    run: u64,
) -> Result<crate::experiment::analysis::RunData, CtlError> {
    let conn = open_db(db)?;
    crate::experiment::rundata::load(&conn, run as i64).map_err(|e| match e {
        crate::store::StoreError::RunNotFound(id) => {
            CtlError::new(exit::FAILED, format!("run {id} is not in {}", db.display()))
        }
        other => CtlError::new(exit::FAILED, format!("{}: {other}", db.display())),
    })
}

fn offline_report(db: &std::path::Path, run: u64, f: ReportFormat) -> Result<String, CtlError> {
    let data = load_run(db, run)?;
    Ok(crate::experiment::rundata::render_report(&data, f.as_str()))
}

fn offline_compare(
    a: &std::path::Path,
    ra: u64,
    b: &std::path::Path,
    rb: u64,
    f: ReportFormat,
) -> Result<String, CtlError> {
    let (da, db) = (load_run(a, ra)?, load_run(b, rb)?);
    Ok(render_comparison(&da, &db, f))
}

fn render_comparison(
    a: &crate::experiment::analysis::RunData,
    b: &crate::experiment::analysis::RunData,
    f: ReportFormat,
) -> String {
    use crate::experiment::{analysis, report};
    let c = analysis::compare(a, b);
    match f {
        ReportFormat::Json => report::render_compare_json(&c),
        _ => report::render_compare_markdown(&c),
    }
}

fn run_data_json(db: &std::path::Path, run: u64) -> Result<String, CtlError> {
    let data = load_run(db, run)?;
    serde_json::to_string(&data).map_err(|e| CtlError::new(exit::FAILED, e.to_string()))
}

fn compare_json(a: &str, b: &str, f: ReportFormat) -> Result<String, CtlError> {
    let parse = |s: &str| {
        serde_json::from_str::<crate::experiment::analysis::RunData>(s).map_err(|e| {
            CtlError::new(
                exit::FAILED,
                format!("malformed run data from the daemon: {e}"),
            )
        })
    };
    Ok(render_comparison(&parse(a)?, &parse(b)?, f))
}
