//! The real `mpslabd` on a private bus: readiness, watchdog, reload and shutdown as systemd
//! sees them.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

#[test]
fn ready_after_name_owned_and_clean_exit_on_sigterm() {
    let bus = Bus::session();
    let cfg = TestConfig::new("");
    let notify = NotifySocket::new();
    let mut d = Daemon::spawn(&bus, &cfg, Some(&notify), &[]);
    let ready = notify
        .wait_for("READY=1", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no READY=1:\n{}", d.log_text()));
    // READY must never precede the name: at this moment a client can already reach us.
    assert!(
        bus.has_owner(BUS_NAME),
        "READY=1 before {BUS_NAME} was owned"
    );
    assert!(
        ready.contains("STATUS="),
        "READY carries a status line: {ready}"
    );
    let out = bus.busctl(&["get-property", BUS_NAME, OBJECT_PATH, INTERFACE, "Version"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("s \"{}\"", env!("CARGO_PKG_VERSION"))
    );

    d.signal(Signal::SIGTERM);
    let t0 = Instant::now();
    assert!(
        notify
            .wait_for("STOPPING=1", Duration::from_secs(10))
            .is_some(),
        "no STOPPING=1:\n{}",
        d.log_text()
    );
    let status = d
        .wait_exit(Duration::from_secs(10).saturating_sub(t0.elapsed()))
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{}", d.log_text()));
    assert_eq!(status.code(), Some(0), "{}", d.log_text());
    assert!(!bus.has_owner(BUS_NAME));
    // The store was flushed and closed: the shutdown event is on disk.
    let conn = rusqlite::Connection::open(cfg.db()).unwrap();
    let stopped: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM events WHERE source='daemon' AND kind='stopped'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stopped, 1);
}

#[test]
fn sigint_also_shuts_down_cleanly() {
    let bus = Bus::session();
    let cfg = TestConfig::new("");
    let mut d = Daemon::spawn(&bus, &cfg, None, &[]);
    d.wait_ready(&bus);
    d.signal(Signal::SIGINT);
    let status = d.wait_exit(Duration::from_secs(10)).expect("exited");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn watchdog_is_pinged_when_systemd_asks() {
    let bus = Bus::session();
    let cfg = TestConfig::new("");
    let notify = NotifySocket::new();
    let d = Daemon::spawn(&bus, &cfg, Some(&notify), &[("WATCHDOG_USEC", "400000")]);
    notify
        .wait_for("READY=1", Duration::from_secs(30))
        .expect("READY");
    for _ in 0..2 {
        assert!(
            notify
                .wait_for("WATCHDOG=1", Duration::from_secs(5))
                .is_some(),
            "no watchdog ping:\n{}",
            d.log_text()
        );
    }
}

#[test]
fn sighup_with_broken_config_keeps_running_on_the_old_one() {
    let bus = Bus::session();
    let cfg = TestConfig::new(
        "[[model]]\nname = \"m\"\npath = \"/m.onnx\"\n[[experiment]]\nname = \"first\"\nmodels = [\"m\"]\n",
    );
    let mut d = Daemon::spawn(&bus, &cfg, None, &[]);
    d.wait_ready(&bus);
    let good = std::fs::read_to_string(&cfg.path).unwrap();
    cfg.rewrite(&(good.clone() + "\n[runtime]\nintra_threads = -1\n"));
    d.signal(Signal::SIGHUP);
    let logged = poll(Duration::from_secs(10), || {
        let log = d.log_text();
        log.contains("reload refused").then_some(log)
    })
    .unwrap_or_else(|| panic!("no refusal logged:\n{}", d.log_text()));
    assert!(
        logged.contains("runtime.intra_threads"),
        "the log says why: {logged}"
    );
    assert!(d.is_running(), "daemon died on a bad reload");
    let list = |bus: &Bus| {
        String::from_utf8_lossy(
            &bus.busctl(&["call", BUS_NAME, OBJECT_PATH, INTERFACE, "ListExperiments"])
                .stdout,
        )
        .trim()
        .to_string()
    };
    assert_eq!(
        list(&bus),
        "as 1 \"first\"",
        "old configuration still in force"
    );

    // The same through D-Bus: a typed error, and the daemon keeps the old configuration.
    let out = bus.busctl(&["call", BUS_NAME, OBJECT_PATH, INTERFACE, "ReloadConfig"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("runtime.intra_threads"), "{err}");

    // A valid change is picked up.
    cfg.rewrite(&good.replace("name = \"first\"", "name = \"second\""));
    d.signal(Signal::SIGHUP);
    assert!(
        poll(Duration::from_secs(10), || (list(&bus)
            == "as 1 \"second\"")
            .then_some(()))
        .is_some(),
        "valid reload not applied:\n{}",
        d.log_text()
    );
}

#[test]
fn invalid_config_at_start_exits_78() {
    let bus = Bus::session();
    let cfg = TestConfig::new("[runtime]\nprovider = \"gpu\"\n");
    let mut d = Daemon::spawn(&bus, &cfg, None, &[]);
    let status = d.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(78));
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("runtime.provider"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains(&format!("{}:", cfg.path.display()))
            && line.contains("unknown variant `gpu`"),
        "{log}"
    );
}

#[test]
fn second_instance_fails_while_the_name_is_owned() {
    let bus = Bus::session();
    let cfg = TestConfig::new("");
    let mut first = Daemon::spawn(&bus, &cfg, None, &[]);
    first.wait_ready(&bus);
    let cfg2 = TestConfig::new("");
    let mut second = Daemon::spawn(&bus, &cfg2, None, &[]);
    let status = second
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("second instance still running:\n{}", second.log_text()));
    assert_eq!(status.code(), Some(1), "{}", second.log_text());
    assert!(first.is_running());
}

#[test]
fn the_daemon_keeps_the_prometheus_textfile_current() {
    let bus = Bus::session();
    let dir = tempfile::tempdir().unwrap();
    let prom = dir.path().join("mpslab.prom");
    let cfg = TestConfig::new(&format!("[export]\ntextfile = \"{}\"\n", prom.display()));
    let mut d = Daemon::spawn(&bus, &cfg, None, &[]);
    d.wait_ready(&bus);
    // The file follows the status: MPS unavailable (no binary) and the samplers' states.
    let current = |t: &String| {
        t.contains("mpslab_up 1")
            && t.contains("mpslab_mps_state{state=\"unavailable\"} 1")
            && t.contains("mpslab_sampler_up{sampler=\"tegrastats\",state=\"unavailable\"} 0")
    };
    poll(Duration::from_secs(20), || {
        std::fs::read_to_string(&prom).ok().filter(current)
    })
    .unwrap_or_else(|| {
        panic!(
            "textfile not current: {:?}\n{}",
            std::fs::read_to_string(&prom),
            d.log_text()
        )
    });
    d.signal(Signal::SIGTERM);
    assert_eq!(
        d.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()),
        Some(0)
    );
    let last = std::fs::read_to_string(&prom).unwrap();
    assert!(
        last.contains("mpslab_up 0"),
        "a stopped daemon says so: {last}"
    );
}
