//! The arm64 (Jetson) release binaries from `make deb-arm64`, run under qemu-user: they start,
//! validate configuration, parse recorded tegrastats lines exactly as the host build does, and the
//! daemon serves D-Bus. Skips, saying why, only when the arm64 build or qemu-aarch64 is missing.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{Bus, Daemon, TestConfig, BUS_NAME, INTERFACE, OBJECT_PATH};

const QEMU: &str = "qemu-aarch64";
const SYSROOT: &str = "/usr/aarch64-linux-gnu";
const EM_AARCH64: u16 = 183;

fn arm64_dir() -> PathBuf {
    // target/debug/deps/arm64_qemu-HASH -> target/aarch64-unknown-linux-gnu/release
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .unwrap()
        .join("aarch64-unknown-linux-gnu/release")
}

/// The arm64 binaries and a working qemu, or the reason to skip.
fn setup() -> Result<PathBuf, String> {
    let dir = arm64_dir();
    for b in ["mpslabd", "mpslabctl"] {
        if !dir.join(b).is_file() {
            return Err(format!(
                "{} is missing (make deb-arm64 builds it)",
                dir.join(b).display()
            ));
        }
    }
    match Command::new(QEMU).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Err(format!("{QEMU} is not installed (apt package qemu-user)")),
    }
    if !Path::new(SYSROOT)
        .join("lib/ld-linux-aarch64.so.1")
        .exists()
    {
        return Err(format!(
            "{SYSROOT} has no arm64 loader (apt package libc6-arm64-cross)"
        ));
    }
    Ok(dir)
}

macro_rules! arm64_or_skip {
    () => {
        match setup() {
            Ok(d) => d,
            Err(why) => {
                eprintln!("SKIP arm64_qemu: {why}");
                return;
            }
        }
    };
}

fn qemu(bin: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(QEMU)
        .args(["-L", SYSROOT])
        .arg(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    out
}

fn elf_machine(path: &Path) -> u16 {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is not ELF", path.display());
    u16::from_le_bytes([bytes[18], bytes[19]])
}

#[test]
fn binaries_are_arm64_and_report_their_version() {
    let dir = arm64_or_skip!();
    for b in ["mpslabd", "mpslabctl", "mpslab-worker"] {
        let bin = dir.join(b);
        assert_eq!(
            elf_machine(&bin),
            EM_AARCH64,
            "{} is not aarch64",
            bin.display()
        );
        let out = qemu(&bin, &["--version"], b"");
        assert!(out.status.success(), "{b} --version: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{b} {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn check_config_accepts_good_and_rejects_bad_with_78() {
    let dir = arm64_or_skip!();
    let daemon = dir.join("mpslabd");
    let good = TestConfig::new("");
    let cfg = good.path.to_str().unwrap();
    let out = qemu(&daemon, &["--check-config", "--config", cfg], b"");
    assert!(out.status.success(), "good config refused: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));

    let bad = TestConfig::new("[runtime]\nprovder = \"cpu\"\n");
    let out = qemu(
        &daemon,
        &["--check-config", "--config", bad.path.to_str().unwrap()],
        b"",
    );
    assert_eq!(out.status.code(), Some(78), "bad config: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("provder"),
        "the error does not name the key: {out:?}"
    );
}

/// Recorded tegrastats lines from real boards (comments and blank lines dropped).
fn corpus() -> Vec<u8> {
    let repo_dir = common::repo().join("tests/fixtures/tegrastats");
    let dir = if repo_dir.is_dir() {
        repo_dir
    } else {
        PathBuf::from("/work/shared/tegrastats/corpus")
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    let mut lines = Vec::new();
    for f in files {
        for l in std::fs::read_to_string(&f).unwrap().lines() {
            if !l.trim().is_empty() && !l.starts_with('#') {
                lines.extend_from_slice(l.as_bytes());
                lines.push(b'\n');
            }
        }
    }
    assert!(
        !lines.is_empty(),
        "no tegrastats lines in {}",
        dir.display()
    );
    lines
}

#[test]
fn parse_tegrastats_matches_the_host_build() {
    let dir = arm64_or_skip!();
    let input = corpus();
    let arm = qemu(&dir.join("mpslabctl"), &["parse-tegrastats"], &input);
    assert!(arm.status.success(), "arm64 parse-tegrastats: {arm:?}");

    let mut host = Command::new(env!("CARGO_BIN_EXE_mpslabctl"))
        .arg("parse-tegrastats")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = host.stdin.take().unwrap();
    let data = input.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let host = host.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(host.status.success());

    let arm_out = String::from_utf8(arm.stdout).unwrap();
    let n_in = input.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(
        arm_out.lines().count(),
        n_in,
        "one JSON object per input line"
    );
    let parsed_ok = arm_out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("ram").is_some_and(|r| !r.is_null()))
        .count();
    assert!(
        parsed_ok > n_in / 2,
        "only {parsed_ok}/{n_in} lines parsed with RAM on arm64"
    );
    assert_eq!(
        arm_out,
        String::from_utf8(host.stdout).unwrap(),
        "arm64 and host parsers disagree"
    );
}

#[test]
fn daemon_serves_dbus_under_qemu() {
    let dir = arm64_or_skip!();
    // Daemon::spawn_bin runs a program; this one starts the arm64 daemon under qemu.
    let wrap_dir = tempfile::tempdir().unwrap();
    let wrapper = wrap_dir.path().join("mpslabd-arm64");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {QEMU} -L {SYSROOT} {} \"$@\"\n",
            dir.join("mpslabd").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let bus = Bus::session();
    let cfg = TestConfig::new("");
    let mut daemon = Daemon::spawn_bin(wrapper.to_str().unwrap(), &bus, &cfg, None, &[], true);
    daemon.wait_ready(&bus);
    let out = bus.busctl(&["get-property", BUS_NAME, OBJECT_PATH, INTERFACE, "Version"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("s \"{}\"", env!("CARGO_PKG_VERSION")),
        "{out:?}\n{}",
        daemon.log_text()
    );
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let status = daemon.wait_exit(std::time::Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "arm64 mpslabd did not stop cleanly ({status:?}):\n{}",
        daemon.log_text()
    );
}
