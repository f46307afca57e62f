//! Installs the amd64 package that `make deb` built, as a user would (`dpkg -i`), and checks what
//! the package promises: files, conffiles, the `mpslab` group, the enabled unit, a daemon that
//! serves the installed D-Bus policy, conffile handling on reinstall and upgrade, and that
//! `dpkg -r` then `dpkg -P` leave nothing behind. Runs only as root on an amd64 dpkg system
//! without mpslab installed; whatever happens, the package and group are removed again.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Bus, Daemon, TestConfig, BUS_NAME, INTERFACE, OBJECT_PATH};

const CONFFILE: &str = "/etc/mpslab/mpslab.toml";
const POLICY_DIR: &str = "/usr/share/dbus-1/system.d";
const WANTS_LINK: &str = "/etc/systemd/system/multi-user.target.wants/mpslabd.service";

/// Files the package must install (compressed docs and man pages as dh_compress leaves them).
const PACKAGE_FILES: &[&str] = &[
    "/usr/bin/mpslabd",
    "/usr/bin/mpslabctl",
    "/usr/libexec/mpslab/mpslab-worker",
    "/lib/systemd/system/mpslabd.service",
    CONFFILE,
    "/etc/mpslab/conf.d/README",
    "/usr/share/dbus-1/system.d/org.mpslab.Lab1.conf",
    "/usr/share/dbus-1/interfaces/org.mpslab.Lab1.xml",
    "/usr/lib/sysusers.d/mpslab.conf",
    "/usr/share/mpslab/hw-check-mps.sh",
    "/usr/share/man/man8/mpslabd.8.gz",
    "/usr/share/man/man1/mpslabctl.1.gz",
    "/usr/share/bash-completion/completions/mpslabctl",
    "/usr/share/zsh/vendor-completions/_mpslabctl",
    "/usr/share/fish/vendor_completions.d/mpslabctl.fish",
    // Uncompressed: the unit's Documentation= names it.
    "/usr/share/doc/mpslab/README.md",
    "/usr/share/doc/mpslab/copyright",
    "/usr/share/doc/mpslab/changelog.gz",
];

fn target_dir() -> PathBuf {
    // target/debug/deps/deb_install-HASH
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dpkg ARGS`, waiting while another dpkg or apt on this shared machine holds the lock.
fn dpkg_output(args: &[&str]) -> Output {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let out = run(Command::new("dpkg").args(args));
        let locked = String::from_utf8_lossy(&out.stderr).contains("locked by another process");
        if !locked || std::time::Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn dpkg(args: &[&str]) -> String {
    let out = dpkg_output(args);
    assert!(
        out.status.success(),
        "dpkg {args:?} failed with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dpkg-query` status of mpslab, e.g. "install ok installed"; `None` when dpkg never knew it.
fn package_status() -> Option<String> {
    let out = run(Command::new("dpkg-query").args(["-W", "-f=${Status}", "mpslab"]));
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn group_exists(name: &str) -> bool {
    run(Command::new("getent").args(["group", name]))
        .status
        .success()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Puts the machine back however the test ends: purge, then what the purge keeps on purpose
/// (the group) and what only this test created.
struct Restore {
    remove_group: bool,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if package_status().is_some() {
            let out = dpkg_output(&["--purge", "mpslab"]);
            if !out.status.success() {
                eprintln!(
                    "deb_install cleanup: dpkg --purge mpslab failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        // Both were absent before the test (checked), so anything here is the test's.
        let _ = std::fs::remove_dir_all("/var/lib/mpslab");
        let _ = std::fs::remove_dir_all("/var/log/mpslab");
        if self.remove_group && group_exists("mpslab") {
            let _ = run(Command::new("groupdel").arg("mpslab"));
        }
    }
}

/// The package with its version bumped and the shipped conffile changed, as an upgrade that
/// touches the configuration would be.
fn build_upgrade(deb: &Path, dir: &Path) -> PathBuf {
    let root = dir.join("root");
    run_ok(Command::new("dpkg-deb").args(["-R", deb.to_str().unwrap(), root.to_str().unwrap()]));
    let control = root.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .unwrap()
        .to_string();
    std::fs::write(
        &control,
        text.replace(
            &format!("Version: {version}\n"),
            &format!("Version: {version}+conftest1\n"),
        ),
    )
    .unwrap();
    let shipped = root.join("etc/mpslab/mpslab.toml");
    let mut conf = std::fs::read_to_string(&shipped).unwrap();
    conf.push_str("# shipped by the upgrade\n");
    std::fs::write(&shipped, conf).unwrap();
    let out = dir.join("mpslab_upgrade.deb");
    run_ok(Command::new("dpkg-deb").args([
        "--root-owner-group",
        "-b",
        root.to_str().unwrap(),
        out.to_str().unwrap(),
    ]));
    out
}

#[test]
fn package_installs_runs_keeps_conffile_and_purges_clean() {
    if !is_root() {
        eprintln!("SKIP deb_install: dpkg -i needs root");
        return;
    }
    let arch = run_ok(Command::new("dpkg").arg("--print-architecture"));
    if arch.trim() != "amd64" {
        eprintln!(
            "SKIP deb_install: this dpkg is {}, the test installs the amd64 package",
            arch.trim()
        );
        return;
    }
    if let Some(status) = package_status().filter(|s| !s.contains("not-installed")) {
        eprintln!("SKIP deb_install: mpslab is already on this machine ({status}); the test would remove it");
        return;
    }
    for dir in ["/var/lib/mpslab", "/var/log/mpslab", "/etc/mpslab"] {
        if Path::new(dir).exists() {
            eprintln!(
                "SKIP deb_install: {dir} exists without the package; the purge would delete it"
            );
            return;
        }
    }
    let deb = target_dir().join(format!(
        "deb/mpslab_{}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(
        deb.is_file(),
        "{} is missing: run `make deb` (make test builds it through deb-test-prereqs)",
        deb.display()
    );
    let deb_s = deb.to_str().unwrap();
    let _restore = Restore {
        remove_group: !group_exists("mpslab"),
    };

    // ---- install ----
    dpkg(&["-i", deb_s]);
    assert_eq!(package_status().as_deref(), Some("install ok installed"));
    for f in PACKAGE_FILES {
        assert!(Path::new(f).is_file(), "{f} not installed");
    }
    let conffiles = run_ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "mpslab"]));
    assert!(conffiles.contains(CONFFILE), "conffiles: {conffiles}");
    assert!(
        conffiles.contains("/etc/mpslab/conf.d/README"),
        "conffiles: {conffiles}"
    );
    assert!(
        group_exists("mpslab"),
        "postinst did not create the group mpslab (sysusers)"
    );
    // dh_installsystemd's postinst enabled the unit (systemd need not be running for that).
    let wants = std::fs::read_link(WANTS_LINK).expect("mpslabd.service not enabled");
    assert!(
        wants.ends_with("mpslabd.service"),
        "{WANTS_LINK} -> {}",
        wants.display()
    );
    // What purge must take away: every file, and every directory that is mpslab's alone.
    let owned: Vec<String> = dpkg(&["-L", "mpslab"])
        .lines()
        .filter(|l| match std::fs::symlink_metadata(l) {
            Ok(m) => m.is_file() || (m.is_dir() && l.contains("mpslab")),
            Err(_) => false,
        })
        .map(str::to_string)
        .collect();
    assert!(owned.len() > PACKAGE_FILES.len(), "dpkg -L: {owned:?}");

    // The installed configuration is valid as shipped.
    let check = run_ok(Command::new("/usr/bin/mpslabd").arg("--check-config"));
    assert!(
        check.contains(CONFFILE),
        "--check-config did not read {CONFFILE}: {check}"
    );

    // ---- the installed daemon on a system-style bus with the installed policy ----
    {
        let bus = Bus::system(Path::new(POLICY_DIR));
        let cfg = TestConfig::new("");
        // The shipped file as it is: state in /var/lib/mpslab, like the service.
        cfg.rewrite(&std::fs::read_to_string(CONFFILE).unwrap());
        let mut daemon = Daemon::spawn_bin("/usr/bin/mpslabd", &bus, &cfg, None, &[], false);
        daemon.wait_ready(&bus);
        let out = bus.busctl(&["get-property", BUS_NAME, OBJECT_PATH, INTERFACE, "Version"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("s \"{}\"", env!("CARGO_PKG_VERSION")),
            "busctl get-property Version: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The policy's group rule works because the package created the group: the bus lets a
        // member through to the daemon and refuses a non-member itself (dbus-daemon ignores
        // rules for unknown groups).
        let gid = run_ok(Command::new("getent").args(["group", "mpslab"]));
        let gid = gid.split(':').nth(2).unwrap().to_string();
        let cancel = |groups: &str| {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--reuid=65534", "--regid=65534"]);
            if groups.is_empty() {
                cmd.arg("--clear-groups");
            } else {
                cmd.arg(format!("--groups={groups}"));
            }
            cmd.args(["busctl", &format!("--address={}", bus.address), "call"])
                .args([
                    BUS_NAME,
                    OBJECT_PATH,
                    INTERFACE,
                    "CancelRun",
                    "t",
                    "987654321",
                ]);
            let out = run(&mut cmd);
            String::from_utf8_lossy(&out.stderr).into_owned()
        };
        // busctl prints "Access denied" for the bus's refusal; a member reaches the daemon,
        // which answers that there is no such run.
        let outsider = cancel("");
        assert!(
            outsider.contains("Access denied"),
            "a non-member of mpslab was not refused: {outsider}"
        );
        let member = cancel(&gid);
        assert!(
            !member.contains("Access denied") && member.contains("987654321"),
            "a member of mpslab did not reach the daemon: {member}"
        );
        daemon.signal(nix::sys::signal::Signal::SIGTERM);
        let status = daemon.wait_exit(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "mpslabd did not stop cleanly ({status:?}):\n{}",
            daemon.log_text()
        );
    }
    assert!(
        Path::new("/var/lib/mpslab/mpslab.db").is_file(),
        "the daemon did not create its database under /var/lib/mpslab"
    );

    // ---- conffile changes survive a reinstall and an upgrade ----
    let mut local = std::fs::read_to_string(CONFFILE).unwrap();
    local.push_str("\n[telemetry]\ntegrastats_interval_ms = 500\n");
    std::fs::write(CONFFILE, &local).unwrap();
    // Same version, same shipped file: dpkg keeps the local change without asking.
    dpkg(&["-i", deb_s]);
    assert_eq!(std::fs::read_to_string(CONFFILE).unwrap(), local);
    assert!(!Path::new("/etc/mpslab/mpslab.toml.dpkg-dist").exists());

    // An upgrade that changes the shipped file too. With no terminal, dpkg's prompt reads end
    // of file and the upgrade stops unconfigured (the local file untouched); unattended
    // upgrades must choose, and --force-confold keeps the local file.
    let tmp = tempfile::tempdir().unwrap();
    let upgrade = build_upgrade(&deb, tmp.path());
    let upgrade_s = upgrade.to_str().unwrap();
    let prompt = dpkg_output(&["-i", upgrade_s]);
    assert!(
        !prompt.status.success()
            && String::from_utf8_lossy(&prompt.stderr)
                .contains("end of file on stdin at conffile prompt"),
        "dpkg without a terminal: {prompt:?}"
    );
    assert_eq!(std::fs::read_to_string(CONFFILE).unwrap(), local);
    dpkg(&["-i", "--force-confold", upgrade_s]);
    assert_eq!(package_status().as_deref(), Some("install ok installed"));
    assert_eq!(
        run_ok(Command::new("dpkg-query").args(["-W", "-f=${Version}", "mpslab"])),
        format!("{}+conftest1", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(std::fs::read_to_string(CONFFILE).unwrap(), local);
    let dist = std::fs::read_to_string("/etc/mpslab/mpslab.toml.dpkg-dist")
        .expect("dpkg did not leave the new shipped file as mpslab.toml.dpkg-dist");
    assert!(dist.ends_with("# shipped by the upgrade\n"));

    // ---- remove keeps configuration and state; purge removes everything ----
    dpkg(&["-r", "mpslab"]);
    assert!(!Path::new("/usr/bin/mpslabd").exists());
    assert!(Path::new(CONFFILE).exists(), "dpkg -r must keep conffiles");
    assert!(
        Path::new("/var/lib/mpslab").exists(),
        "dpkg -r must keep state"
    );
    dpkg(&["-P", "mpslab"]);
    assert_eq!(
        package_status(),
        None,
        "dpkg still knows mpslab after purge"
    );
    for p in &owned {
        assert!(!Path::new(p).exists(), "{p} left behind after purge");
    }
    for gone in [
        "/etc/mpslab",
        "/var/lib/mpslab",
        "/var/log/mpslab",
        WANTS_LINK,
        "/var/lib/systemd/deb-systemd-helper-enabled/mpslabd.service.dsh-also",
    ] {
        assert!(
            !Path::new(gone).exists() && !Path::new(gone).is_symlink(),
            "{gone} left behind after purge"
        );
    }
}
