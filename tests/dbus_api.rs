//! org.mpslab.Lab1 on a system-style bus with the shipped policy: what everyone may read, what
//! only root and the control group may change, and the daemon's own check behind the policy.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const NOBODY: &str = "65534";
/// Debian's `video` group stands in for `mpslab`, which need not exist on a test machine.
const GROUP: &str = "video";
const GID: &str = "44";

/// The shipped policy with the control group renamed, in a directory of its own.
fn policy_dir(permissive: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(repo().join("systemd/org.mpslab.Lab1.conf")).unwrap();
    let mut text = shipped.replace("group=\"mpslab\"", &format!("group=\"{GROUP}\""));
    if permissive {
        // A broken local override that lets anyone call anything: the daemon must still refuse.
        text = text.replace(
            "<policy context=\"default\">",
            "<policy context=\"default\">\n    <allow send_destination=\"org.mpslab.Lab1\"/>",
        );
    }
    std::fs::write(dir.path().join("org.mpslab.Lab1.conf"), text).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir
}

fn start(permissive: bool) -> (Bus, TestConfig, Daemon, tempfile::TempDir) {
    let pol = policy_dir(permissive);
    let bus = Bus::system(pol.path());
    let cfg = TestConfig::new("");
    // control_group lives in [daemon], which TestConfig already wrote.
    let text = std::fs::read_to_string(&cfg.path).unwrap().replacen(
        "[daemon]\n",
        &format!("[daemon]\ncontrol_group = \"{GROUP}\"\n"),
        1,
    );
    cfg.rewrite(&text);
    let mut d = Daemon::spawn_bin(env!("CARGO_BIN_EXE_mpslabd"), &bus, &cfg, None, &[], false);
    d.wait_ready(&bus);
    (bus, cfg, d, pol)
}

fn busctl_as(bus: &Bus, who: Option<&[&str]>, args: &[&str]) -> Output {
    let mut cmd = match who {
        Some(setpriv) => {
            let mut c = Command::new("setpriv");
            c.args(setpriv).arg("busctl");
            c
        }
        None => Command::new("busctl"),
    };
    cmd.arg(format!("--address={}", bus.address))
        .args(args)
        .output()
        .unwrap()
}

const AS_NOBODY: &[&str] = &["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"];
const AS_NOBODY_IN_GROUP: &[&str] = &["--reuid", NOBODY, "--regid", NOBODY, "--groups", GID];

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const PROPERTIES: &[&str] = &[
    "Version",
    "MpsState",
    "MpsReason",
    "ActiveRun",
    "QueueLength",
    "Samplers",
];

#[test]
fn everyone_reads_only_root_and_group_change() {
    let (bus, _cfg, _d, _pol) = start(false);
    for who in [None, Some(AS_NOBODY)] {
        for p in PROPERTIES {
            let o = busctl_as(
                &bus,
                who,
                &["get-property", BUS_NAME, OBJECT_PATH, INTERFACE, p],
            );
            assert!(o.status.success(), "{who:?} get {p}: {}", text(&o));
        }
        for (m, sig, args) in [
            ("ListExperiments", "", vec![]),
            ("ListRuns", "u", vec!["5"]),
            ("GetStatus", "", vec![]),
            ("GetSamples", "sxu", vec!["events", "0", "10"]),
        ] {
            let mut a = vec!["call", BUS_NAME, OBJECT_PATH, INTERFACE, m];
            if !sig.is_empty() {
                a.push(sig);
                a.extend(args.iter().copied());
            }
            let o = busctl_as(&bus, who, &a);
            assert!(o.status.success(), "{who:?} {m}: {}", text(&o));
        }
    }
    // An unprivileged caller is stopped by the bus policy before the daemon sees the call.
    for (m, sig, arg) in [("RunExperiment", "s", Some("x")), ("StopMps", "", None)] {
        let mut a = vec!["call", BUS_NAME, OBJECT_PATH, INTERFACE, m];
        if let Some(v) = arg {
            a.extend([sig, v]);
        }
        let o = busctl_as(&bus, Some(AS_NOBODY), &a);
        assert!(!o.status.success());
        assert!(text(&o).contains("Access denied"), "{m}: {}", text(&o));
        // The same user in the control group gets through both locks.
        let o = busctl_as(&bus, Some(AS_NOBODY_IN_GROUP), &a);
        if m == "RunExperiment" {
            // Past access control: the daemon itself answers that no such experiment exists.
            assert!(text(&o).contains("no experiment named `x`"), "{}", text(&o));
        } else {
            assert!(o.status.success(), "{m} as group member: {}", text(&o));
        }
    }
}

#[test]
fn the_daemon_refuses_what_a_broken_policy_lets_through() {
    let (bus, _cfg, _d, _pol) = start(true);
    let o = busctl_as(
        &bus,
        Some(AS_NOBODY),
        &["call", BUS_NAME, OBJECT_PATH, INTERFACE, "StopMps"],
    );
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("needs root or membership in group `video`"),
        "{t}"
    );
    // gdbus shows the typed error name.
    let o = Command::new("setpriv")
        .args(AS_NOBODY)
        .args([
            "gdbus",
            "call",
            "--address",
            &bus.address,
            "--dest",
            BUS_NAME,
            "--object-path",
            OBJECT_PATH,
            "--method",
        ])
        .arg(format!("{INTERFACE}.RunExperiment"))
        .arg("x")
        .output()
        .unwrap();
    assert!(
        text(&o).contains("org.mpslab.Lab1.Error.AccessDenied"),
        "{}",
        text(&o)
    );
}

#[test]
fn typed_errors_reach_gdbus() {
    let (bus, _cfg, _d, _pol) = start(false);
    let gdbus = |method: &str, args: &[&str]| {
        let o = Command::new("gdbus")
            .args([
                "call",
                "--address",
                &bus.address,
                "--dest",
                BUS_NAME,
                "--object-path",
                OBJECT_PATH,
                "--method",
            ])
            .arg(format!("{INTERFACE}.{method}"))
            .args(args)
            .output()
            .unwrap();
        text(&o)
    };
    assert!(gdbus("RunExperiment", &["nope"]).contains("org.mpslab.Lab1.Error.NotFound"));
    assert!(gdbus("CancelRun", &["42"]).contains("org.mpslab.Lab1.Error.NotFound"));
    assert!(gdbus("GetReport", &["1", "pdf"]).contains("org.mpslab.Lab1.Error.InvalidArgument"));
    assert!(gdbus("GetSamples", &["nonsense", "0", "1"])
        .contains("org.mpslab.Lab1.Error.InvalidArgument"));
    // MPS control points at nothing in the test configuration.
    assert!(gdbus("StartMps", &[]).contains("org.mpslab.Lab1.Error.MpsUnavailable"));
    let intro = gdbus_introspect(&bus);
    assert!(
        intro.contains("interface org.mpslab.Lab1.Manager"),
        "{intro}"
    );
}

fn gdbus_introspect(bus: &Bus) -> String {
    let o = Command::new("gdbus")
        .args([
            "introspect",
            "--address",
            &bus.address,
            "--dest",
            BUS_NAME,
            "--object-path",
            OBJECT_PATH,
        ])
        .output()
        .unwrap();
    text(&o)
}

/// The committed introspection XML is the live interface: API drift shows up as a diff.
#[test]
fn introspection_matches_the_committed_xml() {
    let (bus, _cfg, _d, _pol) = start(false);
    let o = bus.busctl(&["introspect", "--xml-interface", BUS_NAME, OBJECT_PATH]);
    assert!(o.status.success());
    let live = String::from_utf8_lossy(&o.stdout).to_string();
    let ours = extract_interface(&live, INTERFACE).expect("live XML has our interface");
    let committed_path = repo().join("systemd/org.mpslab.Lab1.xml");
    if std::env::var_os("MPSLAB_BLESS").is_some() {
        let doc = format!(
            "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<!-- org.mpslab.Lab1 at /org/mpslab/Lab1; generated from the live interface with MPSLAB_BLESS=1 cargo test --test dbus_api -->\n<node>\n{ours}\n</node>\n"
        );
        std::fs::write(&committed_path, doc).unwrap();
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap();
    let theirs = extract_interface(&committed, INTERFACE).expect("committed XML has our interface");
    assert_eq!(
        normalize(&ours),
        normalize(&theirs),
        "live interface differs from {}",
        committed_path.display()
    );
}

fn extract_interface(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<interface name=\"{name}\""))?;
    let end = xml[start..].find("</interface>")? + start + "</interface>".len();
    Some(xml[start..end].to_string())
}

fn normalize(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn ctl_exit_codes_follow_the_contract() {
    let (bus, _cfg, mut d, _pol) = start(false);
    let ctl = |who: Option<&[&str]>, args: &[&str]| {
        let mut c = match who {
            Some(p) => {
                let mut c = Command::new("setpriv");
                c.args(p).arg(env!("CARGO_BIN_EXE_mpslabctl"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_mpslabctl")),
        };
        c.args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .output()
            .unwrap()
    };
    let o = ctl(None, &["status"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("MPS:"), "{}", text(&o));
    let o = ctl(None, &["--json", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        ctl(Some(AS_NOBODY), &["mps", "stop"]).status.code(),
        Some(77)
    );
    assert_eq!(ctl(None, &["run", "nope"]).status.code(), Some(1));
    assert_eq!(ctl(None, &["frobnicate"]).status.code(), Some(2));

    d.signal(nix::sys::signal::Signal::SIGTERM);
    d.wait_exit(Duration::from_secs(10)).expect("daemon stops");
    for args in [
        &["status"][..],
        &["runs"],
        &["mps", "status"],
        &["run", "x"],
        &["report", "1"],
    ] {
        let o = ctl(None, args);
        assert_eq!(o.status.code(), Some(69), "{args:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains("mpslabd is not running"), "{err}");
    }
    drop(bus);
    let o = Command::new(env!("CARGO_BIN_EXE_mpslabctl"))
        .arg("status")
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/bus")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(69), "{}", text(&o));
}
