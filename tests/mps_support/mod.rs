//! Shared helpers for the MPS integration tests: a short temp "lab" directory holding the fake
//! binaries under their real names, settings pointing at it, and an independent /proc scan.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mpslab::mps::{MpsEvent, MpsSettings};
use tokio::sync::mpsc;

pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-nvidia-cuda-mps-control")
}

pub struct Lab {
    pub root: tempfile::TempDir,
}

impl Lab {
    /// `/tmp/mpsXXXXXX` with `bin/nvidia-cuda-mps-{control,server}` linked to the fake.
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("mps")
            .tempdir_in("/tmp")
            .unwrap();
        let bin = root.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(fixture(), bin.join("nvidia-cuda-mps-control")).unwrap();
        std::os::unix::fs::symlink(fixture(), bin.join("nvidia-cuda-mps-server")).unwrap();
        Self { root }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }
    pub fn control(&self) -> PathBuf {
        self.path().join("bin/nvidia-cuda-mps-control")
    }
    pub fn pipe(&self) -> PathBuf {
        self.path().join("p")
    }
    pub fn log(&self) -> PathBuf {
        self.path().join("l")
    }
    pub fn state_file(&self) -> PathBuf {
        self.path().join("fake-state.json")
    }

    pub fn settings(&self, knobs: &[(&str, &str)]) -> MpsSettings {
        let mut extra_env: Vec<(String, String)> = knobs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        extra_env.push((
            "FAKE_MPS_STATE_FILE".into(),
            self.state_file().display().to_string(),
        ));
        MpsSettings {
            control_path: self.control(),
            pipe_dir: self.pipe(),
            log_dir: self.log(),
            pid_file: self.path().join("owner.json"),
            call_timeout: Duration::from_secs(10),
            start_deadline: Duration::from_secs(20),
            quit_timeout: Duration::from_secs(3),
            default_active_thread_percentage: None,
            pinned_mem_limit: None,
            server_uid: nix::unistd::geteuid().as_raw(),
            extra_env,
            tegra_release_path: self.path().join("nv_tegra_release"),
        }
    }

    /// Runs the fake directly, the way a shell user would (`echo CMD | nvidia-cuda-mps-control`).
    pub fn run(&self, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(self.control());
        cmd.args(args)
            .env_remove("NOTIFY_SOCKET")
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", self.path().join("bin").display()),
            )
            .env("CUDA_MPS_PIPE_DIRECTORY", self.pipe())
            .env("CUDA_MPS_LOG_DIRECTORY", self.log())
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn ui(&self, stdin: &str) -> Output {
        self.run(&[], stdin, &[])
    }

    pub fn control_log(&self) -> String {
        std::fs::read_to_string(self.log().join("control.log")).unwrap_or_default()
    }

    pub fn fake_state(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.state_file()).unwrap()).unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A failed test must not leave daemons behind for the next one.
        for p in mps_processes(&self.pipe()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.pid as i32),
                nix::sys::signal::SIGKILL,
            );
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn combined(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Daemon,
    Server,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub pid: u32,
    pub kind: Kind,
}

/// Live (non-zombie) fake daemons and servers whose environment names `pipe` (written
/// independently of the code under test).
pub fn mps_processes(pipe: &Path) -> Vec<Found> {
    let needle = format!("CUDA_MPS_PIPE_DIRECTORY={}", pipe.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("?");
        if state == "Z" || state == "X" || state == "?" {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if !environ.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
            continue;
        }
        let kind = if args
            .iter()
            .take(2)
            .any(|a| a.ends_with("nvidia-cuda-mps-server"))
        {
            Kind::Server
        } else if args
            .iter()
            .take(2)
            .any(|a| a.ends_with("nvidia-cuda-mps-control"))
            && args.iter().any(|a| a == "-d" || a == "-f")
        {
            Kind::Daemon
        } else {
            continue;
        };
        found.push(Found { pid, kind });
    }
    found
}

pub fn count(pipe: &Path, kind: Kind) -> usize {
    mps_processes(pipe)
        .iter()
        .filter(|p| p.kind == kind)
        .count()
}

/// Polls `cond` until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub async fn eventually_async(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn events() -> (
    mpsc::UnboundedSender<MpsEvent>,
    mpsc::UnboundedReceiver<MpsEvent>,
) {
    mpsc::unbounded_channel()
}

/// Everything published so far.
pub fn drain(rx: &mut mpsc::UnboundedReceiver<MpsEvent>) -> Vec<MpsEvent> {
    let mut all = Vec::new();
    while let Ok(e) = rx.try_recv() {
        all.push(e);
    }
    all
}

/// Transition targets in order, as words.
pub fn path_of(events: &[MpsEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            MpsEvent::Transition(t) => Some(t.to.to_string()),
            _ => None,
        })
        .collect()
}

/// A process that a test can register as an MPS client; killed and reaped on drop.
pub struct Sleeper(pub std::process::Child);

impl Sleeper {
    pub fn new() -> Self {
        Self(Command::new("sleep").arg("300").spawn().unwrap())
    }
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
