//! mpslabctl as an operator uses it: generated help artefacts, run --wait on failure, and
//! fleet comparison from two database files.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn completions_and_man_pages_come_from_the_cli_definition() {
    for shell in ["bash", "zsh", "fish"] {
        let o = Command::new(env!("CARGO_BIN_EXE_mpslabctl"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(o.status.success());
        let text = String::from_utf8_lossy(&o.stdout);
        for sub in ["status", "report", "parse-tegrastats", "cancel"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_mpslabctl"))
        .arg("man")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out_text(&o));
    let page = std::fs::read_to_string(dir.path().join("mpslabctl.1")).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH mpslabctl"),
        "{}",
        &page[..200.min(page.len())]
    );
    assert!(page.contains("parse\\-tegrastats") || page.contains("parse-tegrastats"));
}

fn experiment(name: &str, extra: &str) -> String {
    format!(
        "[[experiment]]\nname = \"{name}\"\nmodels = [\"cls\"]\nmodes = [\"alone\"]\nmps = [\"off\"]\nwarmup = 1\nrepeats = 1\ncooldown_s = 0\n{extra}\n"
    )
}

#[test]
fn run_wait_exits_1_when_the_run_fails() {
    let bus = Bus::session();
    let cfg = TestConfig::new(
        &(real_models_toml()
            + &experiment("doomed", "iterations = 100000000\nphase_timeout_s = 2\n")),
    );
    let mut d = Daemon::spawn(&bus, &cfg, None, &[]);
    d.wait_ready(&bus);
    let o = ctl(&bus, &["run", "doomed", "--wait"]);
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("failed"),
        "{}",
        out_text(&o)
    );
    assert!(d.is_running());
}

#[test]
fn compare_two_boards_from_their_database_files() {
    let bus = Bus::session();
    let cfg = TestConfig::new(&(real_models_toml() + &experiment("quick", "iterations = 40\n")));
    let mut d = Daemon::spawn(&bus, &cfg, None, &[]);
    d.wait_ready(&bus);
    for _ in 0..2 {
        let o = ctl(&bus, &["run", "quick", "--wait"]);
        assert_eq!(o.status.code(), Some(0), "{}", out_text(&o));
    }
    d.signal(nix::sys::signal::Signal::SIGTERM);
    d.wait_exit(Duration::from_secs(10)).unwrap();
    // "Board B" is a copy of the database, as an operator would scp it.
    let b = cfg.dir.path().join("board-b.db");
    std::fs::copy(cfg.db(), &b).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_mpslabctl"))
        .args(["compare", "1", "2", "--format", "json", "--db"])
        .arg(cfg.db())
        .arg("--db-b")
        .arg(&b)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out_text(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", out_text(&o)));
    assert!(v.to_string().contains("cls"), "{v}");
    let o = Command::new(env!("CARGO_BIN_EXE_mpslabctl"))
        .args(["report", "9", "--db"])
        .arg(&b)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(out_text(&o).contains("run 9 is not in"), "{}", out_text(&o));
}
