//! The node-exporter textfile: read back by an independent parser (the reference Python client,
//! via scripts/promcheck.py), loaded from a real store, replaced atomically under a concurrent
//! reader, and kept current by the daemon task.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mpslab::config::Config;
use mpslab::daemon::Status;
use mpslab::export::{self, LastRun, LatencyQuantiles, LatestTelemetry, TegraLatest, VmstatLatest};
use mpslab::store::{self, Reader};
use tokio_util::sync::CancellationToken;

fn python() -> PathBuf {
    common::cache().join("venv/bin/python")
}

/// Runs promcheck on `text`: `Ok(samples)` or `Err(problems)`.
fn promcheck(text: &str) -> Result<BTreeMap<String, serde_json::Value>, String> {
    let mut child = Command::new(python())
        .arg(common::repo().join("scripts/promcheck.py"))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (run `make deps`)", python().display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("No module named 'prometheus_client'"),
        "prometheus-client is not installed in the venv: run `make deps` (mk/export.mk)"
    );
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(stderr)
    }
}

fn status() -> Status {
    Status {
        version: "0.1.0".into(),
        mps_state: "stopped".into(),
        active_run: 0,
        queue: vec![4],
        samplers: BTreeMap::from([
            ("tegrastats".to_string(), "running".to_string()),
            ("vmstat".to_string(), "unavailable".to_string()),
        ]),
        dropped_samples: 3,
        ..Status::default()
    }
}

fn full_render(rails: usize) -> String {
    let latest = LatestTelemetry {
        tegrastats: Some(TegraLatest {
            wall_ms: 1_750_000_000_250,
            gr3d_pct: Some(87.0),
            emc_pct: Some(31.0),
            ram_used_mb: Some(5123),
            rails_mw: (0..rails)
                .map(|i| (format!("VDD_{i}"), 1000.0 + i as f64))
                .chain([(r#"odd "rail"\name"#.to_string(), 42.0)])
                .collect(),
        }),
        vmstat: Some(VmstatLatest {
            wall_ms: 1_750_000_000_500,
            us: Some(61.0),
            sy: Some(9.0),
            wa: Some(1.0),
            idle: Some(29.0),
            free_kb: Some(2_000_000),
        }),
    };
    let run = LastRun {
        run_id: 12,
        experiment: "five models\nsecond line".into(),
        finished_unix_ms: Some(1_749_999_000_000),
        latencies: vec![
            LatencyQuantiles {
                model: "yolo".into(),
                mode: "together".into(),
                mps: "on".into(),
                p50_s: 0.0125,
                p90_s: 0.014,
                p99_s: 0.03,
            },
            LatencyQuantiles {
                model: "yolo".into(),
                mode: "mixed".into(),
                mps: "on-for-yolo+cls".into(),
                p50_s: 0.02,
                p90_s: 0.025,
                p99_s: 0.04,
            },
        ],
        mps_effect: vec![("yolo".into(), 1.96)],
    };
    export::render(&status(), &latest, Some(&run))
}

#[test]
fn reference_parser_reads_every_metric_back() {
    let samples = promcheck(&full_render(3)).unwrap_or_else(|e| panic!("{e}"));
    let get = |k: &str| {
        samples
            .get(k)
            .unwrap_or_else(|| panic!("{k} not parsed; have {:?}", samples.keys()))
            .as_f64()
            .unwrap()
    };
    assert_eq!(get("mpslab_up"), 1.0);
    assert_eq!(get(r#"mpslab_info{version="0.1.0"}"#), 1.0);
    assert_eq!(get(r#"mpslab_mps_state{state="stopped"}"#), 1.0);
    assert_eq!(get(r#"mpslab_mps_state{state="running"}"#), 0.0);
    assert_eq!(
        get(r#"mpslab_sampler_up{sampler="vmstat",state="unavailable"}"#),
        0.0
    );
    assert_eq!(get("mpslab_dropped_samples_total"), 3.0);
    assert_eq!(get("mpslab_queue_length"), 1.0);
    assert_eq!(get("mpslab_gr3d_load_percent"), 87.0);
    assert_eq!(get(r#"mpslab_rail_power_milliwatts{rail="VDD_2"}"#), 1002.0);
    // Quote, backslash and newline in label values survive the round trip.
    assert_eq!(
        get(r#"mpslab_rail_power_milliwatts{rail="odd \"rail\"\\name"}"#),
        42.0
    );
    assert_eq!(
        get(r#"mpslab_last_run_info{experiment="five models\nsecond line"}"#),
        1.0
    );
    assert_eq!(get(r#"mpslab_cpu_percent{mode="wa"}"#), 1.0);
    assert_eq!(get("mpslab_memory_free_kilobytes"), 2_000_000.0);
    assert_eq!(
        get(r#"mpslab_telemetry_sample_timestamp_seconds{source="tegrastats"}"#),
        1_750_000_000.25
    );
    assert_eq!(
        get(
            r#"mpslab_last_run_latency_seconds{mode="mixed",model="yolo",mps="on-for-yolo+cls",quantile="0.99"}"#
        ),
        0.04
    );
    assert_eq!(
        get(
            r#"mpslab_last_run_latency_seconds{mode="together",model="yolo",mps="on",quantile="0.5"}"#
        ),
        0.0125
    );
    assert_eq!(
        get(r#"mpslab_last_run_mps_effect_ratio{model="yolo"}"#),
        1.96
    );
    assert_eq!(
        get("mpslab_last_run_finished_timestamp_seconds"),
        1_749_999_000.0
    );
}

#[test]
fn checker_rejects_what_prometheus_would() {
    // The checker is only worth something if it fails on real mistakes.
    let good = full_render(1);
    let no_help: String = good
        .lines()
        .filter(|l| !l.starts_with("# HELP mpslab_queue_length"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(promcheck(&no_help).unwrap_err().contains("no HELP"));
    let dup = format!("{good}mpslab_queue_length 2\n");
    assert!(promcheck(&dup).is_err());
    let bad_name = good.replace("mpslab_up", "mpslab-up");
    assert!(promcheck(&bad_name).is_err());
    let unescaped = good.replace(r#"odd \"rail\""#, r#"odd "rail""#);
    assert!(promcheck(&unescaped).is_err());
}

// ---- loading from a real store ----------------------------------------------------------------

fn exec(conn: &rusqlite::Connection, sql: &str) {
    conn.execute_batch(sql).unwrap();
}

/// Run 2 (completed, newest) has models a and b alone, together MPS off and together MPS on,
/// each with constant latencies, so every quantile is known exactly.
fn seed_store(path: &Path) {
    let (conn, _) = store::open(path).unwrap();
    exec(
        &conn,
        r#"
INSERT INTO runs(id, experiment, status, trigger, queued_ms, started_ms, finished_ms)
  VALUES (1, 'old', 'completed', 'manual', 1000, 1000, 2000),
         (2, 'pair', 'completed', 'manual', 3000, 3000, 9000),
         (3, 'broken', 'failed', 'manual', 10000, 10000, 11000);
INSERT INTO phases(id, run_id, idx, mode, mps, sampling, repeat, models, status, started_ms, ended_ms)
  VALUES (10, 2, 0, 'alone', 'off', 1, 0, '["a"]', 'completed', 3000, 4000),
         (11, 2, 1, 'alone', 'off', 1, 0, '["b"]', 'completed', 4000, 5000),
         (12, 2, 2, 'together', 'off', 1, 0, '["a","b"]', 'completed', 5000, 6000),
         (13, 2, 3, 'together', 'on', 1, 0, '["a","b"]', 'completed', 6000, 7000),
         (14, 1, 0, 'alone', 'off', 1, 0, '["z"]', 'completed', 1000, 2000);
INSERT INTO phase_models(phase_id, model, status) VALUES
  (10, 'a', 'ok'), (11, 'b', 'ok'), (12, 'a', 'ok'), (12, 'b', 'ok'),
  (13, 'a', 'ok'), (13, 'b', 'ok'), (14, 'z', 'ok');
"#,
    );
    let mut ins = conn
        .prepare(
            "INSERT INTO iterations(phase_id, model, idx, start_ns, dur_ns, in_window) VALUES (?1,?2,?3,?4,?5,1)",
        )
        .unwrap();
    let ms = 1_000_000i64;
    for (phase, model, dur) in [
        (10, "a", 10 * ms),
        (11, "b", 5 * ms),
        (12, "a", 30 * ms),
        (12, "b", 20 * ms),
        (13, "a", 20 * ms),
        (13, "b", 8 * ms),
        (14, "z", ms),
    ] {
        for i in 0..40i64 {
            ins.execute(rusqlite::params![phase, model, i, i * dur, dur])
                .unwrap();
        }
    }
    exec(
        &conn,
        r#"
INSERT INTO tegrastats_samples(id, mono_ns, wall_ms, raw, parsed, gr3d_pct, emc_pct, ram_used_mb)
  VALUES (1, 1, 5000, x'00', '{"rails": {"VDD_IN": {"cur_mw": 1}}}', 1, 1, 1),
         (2, 2, 6000, x'00', '{"rails": {"VDD_IN": {"cur_mw": 17946, "avg_mw": 1}, "VDD_SOC": {"cur_mw": 2500}}}', 63, 12, 4321),
         (3, 3, 7000, x'00', NULL, NULL, NULL, NULL);
UPDATE tegrastats_samples SET parse_error = 'garbage' WHERE id = 3;
INSERT INTO vmstat_samples(id, mono_ns, wall_ms, raw, row, us, sy, idle, wa, free_kb)
  VALUES (1, 1, 6500, '', '', 10, 2, 88, 0, 1000),
         (2, 2, 7500, '', '', 70, 20, 8, 2, 777);
"#,
    );
}

#[test]
fn loaders_read_the_newest_telemetry_and_the_newest_completed_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mpslab.db");
    seed_store(&db);
    let conn = rusqlite::Connection::open(&db).unwrap();

    let latest = export::load_latest(&conn).unwrap();
    let t = latest.tegrastats.as_ref().unwrap();
    // Row 3 did not parse; row 2 is the newest usable one.
    assert_eq!(t.wall_ms, 6000);
    assert_eq!(t.gr3d_pct, Some(63.0));
    assert_eq!(t.ram_used_mb, Some(4321));
    let rails: BTreeMap<_, _> = t.rails_mw.iter().cloned().collect();
    assert_eq!(rails["VDD_IN"], 17946.0);
    assert_eq!(rails["VDD_SOC"], 2500.0);
    let v = latest.vmstat.as_ref().unwrap();
    assert_eq!((v.us, v.free_kb, v.wall_ms), (Some(70.0), Some(777), 7500));

    let run = export::load_last_run(&conn).unwrap().unwrap();
    assert_eq!(run.run_id, 2, "run 3 failed, run 1 is older");
    assert_eq!(run.experiment, "pair");
    assert_eq!(run.finished_unix_ms, Some(9000));
    let q = |model: &str, mode: &str, mps: &str| {
        run.latencies
            .iter()
            .find(|l| l.model == model && l.mode == mode && l.mps == mps)
            .unwrap_or_else(|| panic!("{model} {mode} {mps} missing: {:?}", run.latencies))
    };
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(close(q("a", "alone", "off").p50_s, 0.010));
    assert!(close(q("a", "together", "off").p99_s, 0.030));
    assert!(close(q("b", "together", "on").p90_s, 0.008));
    assert_eq!(run.latencies.len(), 6);
    let effect: BTreeMap<_, _> = run.mps_effect.iter().cloned().collect();
    assert!(close(effect["a"], 1.5), "{effect:?}");
    assert!(close(effect["b"], 2.5), "{effect:?}");

    // And the whole thing still reads back through the reference parser.
    let text = export::render(&status(), &latest, Some(&run));
    let samples = promcheck(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        samples[r#"mpslab_last_run_mps_effect_ratio{model="b"}"#].as_f64(),
        Some(2.5)
    );
}

#[test]
fn empty_store_exports_daemon_state_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mpslab.db");
    let (conn, _) = store::open(&db).unwrap();
    let latest = export::load_latest(&conn).unwrap();
    assert_eq!(latest, LatestTelemetry::default());
    assert!(export::load_last_run(&conn).unwrap().is_none());
    let samples = promcheck(&export::render(&status(), &latest, None)).unwrap();
    assert!(samples.contains_key("mpslab_up"));
    assert!(!samples.keys().any(|k| k.starts_with("mpslab_last_run")));
}

// ---- atomic replacement -----------------------------------------------------------------------

#[test]
fn concurrent_reader_never_sees_a_partial_or_empty_file() {
    const MIN_WRITES: usize = 300;
    const MIN_READS: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mpslab.prom");
    // Versions of different lengths: a torn read cannot be mistaken for a whole one.
    let versions: Vec<String> = (0..50).map(full_render).collect();
    export::write_atomic(&path, &versions[0]).unwrap();
    let known: HashSet<String> = versions.iter().cloned().collect();

    let writes = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, writes, reads, stop) =
            (path.clone(), writes.clone(), reads.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed)
                && (i < MIN_WRITES || reads.load(Ordering::Relaxed) < MIN_READS)
            {
                export::write_atomic(&path, &versions[i % versions.len()]).unwrap();
                i += 1;
                writes.store(i, Ordering::Relaxed);
            }
        })
    };
    let mut n = 0;
    let mut distinct = HashSet::new();
    while n < MIN_READS || writes.load(Ordering::Relaxed) < MIN_WRITES {
        let text = std::fs::read_to_string(&path).unwrap();
        if !known.contains(&text) {
            stop.store(true, Ordering::Relaxed);
            panic!(
                "read {n}: a reader saw a file that was never written ({} bytes)",
                text.len()
            );
        }
        distinct.insert(text.len());
        n += 1;
        reads.store(n, Ordering::Relaxed);
    }
    writer.join().unwrap();
    // The reader really raced the writer: it saw several versions, not one.
    assert!(distinct.len() > 1, "reader only ever saw one version");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "mpslab.prom")
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

// ---- the daemon task --------------------------------------------------------------------------

async fn poll_file(path: &Path, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(t) = tokio::fs::read_to_string(path).await {
            if pred(&t) {
                return t;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {} never matched",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_follows_config_and_status_and_marks_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mpslab.db");
    seed_store(&db);
    let reader = Reader::open(&db).unwrap();
    let out = dir.path().join("prom");
    std::fs::create_dir(&out).unwrap();
    let path = out.join("mpslab.prom");

    let (cfg_tx, cfg_rx) = tokio::sync::watch::channel(Arc::new(Config::default()));
    let (st_tx, st_rx) = tokio::sync::watch::channel(status());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(export::run(cfg_rx, st_rx, reader, cancel.clone()));

    // Unset: status changes write nothing.
    st_tx.send_modify(|s| s.queue = vec![1, 2, 3]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);

    // Set by a reload: written at once, with the store's run and telemetry.
    let mut cfg = Config::default();
    cfg.export.textfile = Some(path.clone());
    cfg_tx.send(Arc::new(cfg)).unwrap();
    let text = poll_file(&path, "first write", |t| t.contains("mpslab_up 1")).await;
    assert!(text.contains("mpslab_queue_length 3\n"), "{text}");
    assert!(text.contains("mpslab_last_run_id 2\n"), "{text}");
    assert!(text.contains("mpslab_rail_power_milliwatts{rail=\"VDD_IN\"} 17946\n"));
    promcheck(&text).unwrap_or_else(|e| panic!("{e}"));

    // A status change reaches the file without waiting for the 15 s refresh.
    st_tx.send_modify(|s| {
        s.mps_state = "running".into();
        s.active_run = 5;
    });
    poll_file(&path, "status change", |t| {
        t.contains("mpslab_mps_state{state=\"running\"} 1\n")
            && t.contains("mpslab_active_run_id 5\n")
    })
    .await;

    // Moved by a reload: the new file is written and the old one removed, so node-exporter
    // does not keep serving it.
    let moved = out.join("moved.prom");
    let mut cfg = Config::default();
    cfg.export.textfile = Some(moved.clone());
    cfg_tx.send(Arc::new(cfg)).unwrap();
    poll_file(&moved, "moved", |t| t.contains("mpslab_active_run_id 5\n")).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while path.exists() {
        assert!(std::time::Instant::now() < deadline, "old file not removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let path = moved;

    // Shutdown leaves a file that says the daemon is down.
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("export task did not stop")
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("mpslab_up 0\n"), "{text}");
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("moved.prom")]);
}
