//! The shipped unit is valid for systemd, locked down, and uses only what JetPack 6's
//! systemd 249 understands.

mod common;

use std::process::Command;

fn unit_text() -> String {
    std::fs::read_to_string(common::repo().join("systemd/mpslabd.service")).unwrap()
}

#[test]
fn systemd_analyze_verify_is_clean() {
    // verify checks that ExecStart exists; point it at the binary under test (the only change)
    // and skip the man page lookup, which needs the installed package.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("mpslabd.service");
    std::fs::write(
        &unit,
        unit_text().replace("/usr/bin/mpslabd", env!("CARGO_BIN_EXE_mpslabd")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (package systemd) must be installed: make deps");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "verify: {stderr}"
    );
}

#[test]
fn security_exposure_is_at_most_3_5() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(common::repo().join("systemd/mpslabd.service"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for mpslabd.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in: {text}"));
    assert!(score <= 3.5, "exposure {score} > 3.5:\n{text}");
}

#[test]
fn unit_has_the_contracted_shape() {
    let text = unit_text();
    for line in [
        "Type=notify",
        "BusName=org.mpslab.Lab1",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "StateDirectory=mpslab",
        "RuntimeDirectory=mpslab",
        "ConfigurationDirectory=mpslab",
        "LimitNOFILE=16384",
        "KillMode=control-group",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}");
    }
    assert!(text.lines().any(|l| l.starts_with("LogsDirectory=mpslab")));
    // GPU device nodes must stay reachable on a Jetson.
    for forbidden in [
        "PrivateDevices=",
        "DevicePolicy=",
        "MemoryDenyWriteExecute=",
    ] {
        assert!(
            !text.lines().any(|l| l.starts_with(forbidden)),
            "{forbidden} breaks CUDA"
        );
    }
    // Directives newer than systemd 249 are silently ignored there (or warned about): keep them out.
    for newer in [
        "RestrictFileSystems=",
        "OpenFile=",
        "ExitType=",
        "ProtectHostname=private",
        "MemoryKSM=",
        "PrivateIPC=",
        "SetLoginEnvironment=",
    ] {
        assert!(!text.contains(newer), "{newer} is newer than systemd 249");
    }
}
