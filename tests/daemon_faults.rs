//! The daemon under faults: a full disk under the store, and a crash while MPS runs.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// A size-limited tmpfs, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::Builder::new()
            .prefix("mpslab-full")
            .tempdir()
            .unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            Some(Tmpfs { dir })
        } else {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
            None
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn fake_tegrastats_config(cfg: &TestConfig, state_dir: &std::path::Path, interval_ms: u32) {
    let fake = repo().join("tests/fixtures/fake-tegrastats");
    let text = std::fs::read_to_string(&cfg.path)
        .unwrap()
        .replace(
            &format!("{}/no-tegrastats", cfg.dir.path().display()),
            &fake.display().to_string(),
        )
        .replace(
            "[telemetry]\n",
            &format!(
                "[telemetry]\ntegrastats_interval_ms = {interval_ms}\nvmstat_interval_ms = 100\n"
            ),
        )
        .replace(
            &cfg.state_dir().display().to_string(),
            &state_dir.display().to_string(),
        );
    cfg.rewrite(&text);
}

fn count(db: &std::path::Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn a_full_disk_drops_samples_and_writing_resumes_when_space_returns() {
    let Some(fs) = Tmpfs::mount("3m") else { return };
    let state = fs.dir.path().join("state");
    let bus = Bus::session();
    let cfg = TestConfig::new("");
    fake_tegrastats_config(&cfg, &state, 20);
    let mut d = Daemon::spawn(&bus, &cfg, None, &[]);
    d.wait_ready(&bus);
    let db = state.join("mpslab.db");
    poll(Duration::from_secs(10), || {
        (count(&db, "SELECT COUNT(*) FROM tegrastats_samples") > 10).then_some(())
    })
    .expect("samples stored");

    // Fill the filesystem to the last byte.
    let filler = fs.dir.path().join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .output();
    let dropped = poll(Duration::from_secs(30), || {
        let v = status_json(&bus);
        let n = v["dropped_samples"].as_u64().unwrap_or(0);
        (n > 0).then_some(n)
    })
    .unwrap_or_else(|| panic!("no drops counted:\n{}", d.log_text()));
    assert!(dropped > 0);
    assert!(
        d.is_running(),
        "the daemon died on a full disk:\n{}",
        d.log_text()
    );
    assert!(
        d.log_text().contains("store commit failed"),
        "{}",
        d.log_text()
    );

    // Space returns: writing resumes and the outage is in the event log.
    std::fs::remove_file(&filler).unwrap();
    let before = count(&db, "SELECT COUNT(*) FROM tegrastats_samples");
    poll(Duration::from_secs(30), || {
        (count(&db, "SELECT COUNT(*) FROM tegrastats_samples") > before + 10).then_some(())
    })
    .unwrap_or_else(|| panic!("writes did not resume:\n{}", d.log_text()));
    let resumed = count(
        &db,
        "SELECT COUNT(*) FROM events WHERE kind='writes_resumed'",
    );
    assert!(resumed >= 1, "the event log records the outage");
    d.signal(Signal::SIGTERM);
    assert_eq!(
        d.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn sigkill_while_mps_runs_leaves_exactly_one_control_daemon_after_restart() {
    let mps = fake_mps();
    let bus = Bus::session();
    let cfg = TestConfig::new("");
    cfg.use_mps(mps.path());
    let daemons = || {
        pids_matching(&format!(
            "{}/bin/nvidia-cuda-mps-control -f",
            mps.path().display()
        ))
    };
    let servers = || {
        pids_matching(&format!(
            "{}/bin/nvidia-cuda-mps-server",
            mps.path().display()
        ))
    };

    let mut d = Daemon::spawn(&bus, &cfg, None, &[]);
    d.wait_ready(&bus);
    let o = ctl(&bus, &["mps", "start"]);
    assert!(o.status.success(), "{}\n{}", out_text(&o), d.log_text());
    assert!(out_text(&o).contains("MPS: running"), "{}", out_text(&o));
    assert_eq!(daemons().len(), 1);

    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5)).expect("killed");
    let orphan = daemons();
    assert_eq!(
        orphan.len(),
        1,
        "the control daemon outlived mpslabd (as on a real crash)"
    );

    let mut again = Daemon::spawn(&bus, &cfg, None, &[]);
    again.wait_ready(&bus);
    let state = poll(Duration::from_secs(30), || {
        let v = status_json(&bus);
        (v["mps_state"] == "running").then_some(v)
    })
    .unwrap_or_else(|| panic!("MPS not running again:\n{}", again.log_text()));
    assert_eq!(state["mps_state"], "running");
    let now = daemons();
    assert_eq!(now.len(), 1, "exactly one control daemon: {now:?}");
    assert!(
        !now.contains(&orphan[0]),
        "the orphan was cleaned up, not kept beside a new one"
    );
    assert!(servers().len() <= 1);

    // A clean stop takes MPS down with it.
    again.signal(Signal::SIGTERM);
    assert_eq!(
        again
            .wait_exit(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
    poll(Duration::from_secs(5), || {
        (daemons().is_empty() && servers().is_empty()).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "MPS left behind after stop: {:?} {:?}",
            daemons(),
            servers()
        )
    });
}
