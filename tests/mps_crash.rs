//! mpslabd is SIGKILLed while MPS runs: its `-f` daemon and server are orphaned. The next
//! mpslabd must clean them up and end with exactly one control daemon of its own.
//!
//! Runs without the libtest harness: the same executable, started with `--owner`, plays the
//! mpslabd that gets killed.

mod mps_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use mps_support::*;
use mpslab::mps::{MpsManager, MpsState};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        println!("owner_crash_is_recovered: test");
        return;
    }
    if let Some(pos) = args.iter().position(|a| a == "--owner") {
        owner(Path::new(&args[pos + 1]));
        return;
    }
    owner_crash_is_recovered();
    println!("test owner_crash_is_recovered ... ok");
}

/// The doomed owner: starts MPS, reports the PIDs, then waits to be killed.
fn owner(lab_root: &Path) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let lab = LabRef(lab_root.to_path_buf());
        let (tx, _rx) = events();
        let mut mps = MpsManager::new(lab.settings(), tx);
        mps.recover().await.unwrap();
        mps.start().await.unwrap();
        println!(
            "READY {} {}",
            mps.daemon_pid().unwrap(),
            mps.server_pids()[0]
        );
        std::future::pending::<()>().await;
    });
}

/// Settings built from a lab path that the parent created (the child must not delete it).
struct LabRef(std::path::PathBuf);

impl LabRef {
    fn settings(&self) -> mpslab::mps::MpsSettings {
        let mut s = mpslab::mps::MpsSettings {
            control_path: self.0.join("bin/nvidia-cuda-mps-control"),
            pipe_dir: self.0.join("p"),
            log_dir: self.0.join("l"),
            pid_file: self.0.join("owner.json"),
            ..Default::default()
        };
        s.quit_timeout = Duration::from_secs(3);
        s.start_deadline = Duration::from_secs(20);
        s.tegra_release_path = self.0.join("nv_tegra_release");
        s
    }
}

fn owner_crash_is_recovered() {
    let lab = Lab::new();
    let mut owner = Command::new(std::env::current_exe().unwrap())
        .arg("--owner")
        .arg(lab.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(owner.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pids: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "owner said {line:?}");
    owner.kill().unwrap(); // SIGKILL: no destructor, no kill_on_drop
    owner.wait().unwrap();

    // The crash really orphaned both processes.
    let before = mps_processes(&lab.pipe());
    assert!(
        before
            .iter()
            .any(|p| p.pid == pids[0] && p.kind == Kind::Daemon),
        "{before:?}"
    );
    assert!(
        before
            .iter()
            .any(|p| p.pid == pids[1] && p.kind == Kind::Server),
        "{before:?}"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (tx, _rx) = events();
        let mut mps = MpsManager::new(LabRef(lab.path().to_path_buf()).settings(), tx);
        mps.recover().await.unwrap();
        assert_eq!(
            mps.status().state,
            MpsState::Stopped,
            "{}",
            mps.status().reason
        );
        assert!(
            mps_processes(&lab.pipe()).is_empty(),
            "recover cleaned the orphans"
        );
        mps.start().await.unwrap();
        let daemons: Vec<_> = mps_processes(&lab.pipe())
            .into_iter()
            .filter(|p| p.kind == Kind::Daemon)
            .collect();
        assert_eq!(daemons.len(), 1, "{daemons:?}");
        assert_eq!(Some(daemons[0].pid), mps.daemon_pid());
        assert_ne!(daemons[0].pid, pids[0]);
        assert_eq!(count(&lab.pipe(), Kind::Server), 1);

        // Dropping the manager without stop (an orderly crash) kills our child at least;
        // the next recover finds the server through the owner record.
        drop(mps);
        let (tx, _rx) = events();
        let mut next = MpsManager::new(LabRef(lab.path().to_path_buf()).settings(), tx);
        next.recover().await.unwrap();
        assert!(
            mps_processes(&lab.pipe()).is_empty(),
            "{:?}",
            mps_processes(&lab.pipe())
        );
        assert_eq!(next.status().state, MpsState::Stopped);
    });
}
