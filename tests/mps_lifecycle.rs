//! MpsManager against the fake: the lifecycle of research/mps.md section 5 and the manager's
//! side of the section 4.8 matrix.

mod mps_support;

use std::ffi::OsString;
use std::time::Duration;

use mps_support::*;
use mpslab::mps::{worker_env, MpsClientMode, MpsError, MpsEvent, MpsManager, MpsState};

const LONG: Duration = Duration::from_secs(30);

/// Matrix 1 and 11: start applies defaults and reads them back in the daemon's formats ("25.0",
/// "1G" for 1044M), forces a server up, and stop leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_applies_defaults_and_stop_cleans_up() {
    let lab = Lab::new();
    let mut settings = lab.settings(&[]);
    settings.default_active_thread_percentage = Some(25.0);
    settings.pinned_mem_limit = Some("0=1044M".into());
    let (tx, mut rx) = events();
    let mut mps = MpsManager::new(settings, tx);
    let status = mps.subscribe();
    assert_eq!(
        mps.status().state,
        MpsState::Unavailable,
        "nothing is assumed before a probe"
    );
    let report = mps.probe().await.unwrap();
    assert_eq!(report.version, "13000");
    assert_eq!(
        report.server_binary,
        lab.path().join("bin/nvidia-cuda-mps-server")
    );
    mps.start().await.unwrap();
    assert_eq!(status.borrow().state, MpsState::Running);
    assert_eq!(mps.status().state.to_string(), "running");

    let state = lab.fake_state();
    assert_eq!(state["default_atp"], 25.0);
    assert_eq!(state["default_mem"]["0"], 1044);
    let servers = mps_processes(&lab.pipe());
    let daemon = servers
        .iter()
        .find(|p| p.kind == Kind::Daemon)
        .expect("a control daemon runs");
    assert_eq!(
        Some(daemon.pid),
        mps.daemon_pid(),
        "the daemon is our -f child"
    );
    let server = servers
        .iter()
        .find(|p| p.kind == Kind::Server)
        .expect("a server runs");
    assert_eq!(mps.server_pids(), vec![server.pid]);
    assert_eq!(
        state["servers"][0]["atp"], 25.0,
        "the server got the default"
    );
    assert!(
        lab.path().join("owner.json").exists(),
        "owner record written"
    );

    // Workers really attach: the client list shows them.
    let worker = Sleeper::new();
    assert_eq!(
        mps.call(&format!("fake_attach {}", worker.pid()))
            .await
            .unwrap()
            .trim(),
        "attached"
    );
    assert_eq!(mps.client_pids().await.unwrap(), vec![worker.pid()]);
    mps.call(&format!("fake_detach {}", worker.pid()))
        .await
        .unwrap();

    // control.log is tailed into events.
    let mut logged = Vec::new();
    let tailed = eventually_async(LONG, || {
        logged.extend(drain(&mut rx).into_iter().filter_map(|e| match e {
            MpsEvent::ControlLog(line) => Some(line),
            _ => None,
        }));
        logged
            .iter()
            .any(|l| l.contains(&format!("NEW SERVER {}: Ready", server.pid)))
    })
    .await;
    assert!(tailed, "control.log lines arrive as events: {logged:?}");

    mps.stop().await.unwrap();
    assert_eq!(mps.status().state, MpsState::Stopped);
    assert!(
        mps_processes(&lab.pipe()).is_empty(),
        "daemon and server are gone"
    );
    assert!(
        !lab.pipe().exists(),
        "the private pipe directory is removed"
    );
    assert!(!lab.path().join("owner.json").exists());
    let path = path_of(&drain(&mut rx));
    assert_eq!(path, ["stopping", "stopped"], "transitions after start");
}

/// Every transition is published with its reason, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_are_published() {
    let lab = Lab::new();
    let (tx, mut rx) = events();
    let mut mps = MpsManager::new(lab.settings(&[]), tx);
    mps.start().await.unwrap();
    mps.stop().await.unwrap();
    let all = drain(&mut rx);
    assert_eq!(
        path_of(&all),
        ["stopped", "starting", "running", "stopping", "stopped"]
    );
    let running = all
        .iter()
        .find_map(|e| match e {
            MpsEvent::Transition(t) if t.to == MpsState::Running => Some(t.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(running.from, MpsState::Starting);
    assert!(running.reason.contains("server pid"), "{}", running.reason);
}

/// Missing control binary: unavailable, with the path in the reason; start refuses.
#[tokio::test]
async fn missing_binary_is_unavailable() {
    let lab = Lab::new();
    let mut settings = lab.settings(&[]);
    settings.control_path = lab.path().join("bin/no-such-mps-control");
    let (tx, _rx) = events();
    let mut mps = MpsManager::new(settings, tx);
    mps.recover().await.unwrap();
    let status = mps.status();
    assert_eq!(status.state, MpsState::Unavailable);
    assert!(
        status.reason.contains("no-such-mps-control") && status.reason.contains("not found"),
        "{}",
        status.reason
    );
    let err = mps.start().await.unwrap_err();
    assert!(matches!(err, MpsError::Unavailable(_)), "{err}");
    assert_eq!(mps.status().state, MpsState::Unavailable);
}

/// A control binary without nvidia-cuda-mps-server anywhere is unavailable too (F4 up front).
#[tokio::test]
async fn missing_server_binary_is_unavailable() {
    let lab = Lab::new();
    let lonely = lab.path().join("lonely");
    std::fs::create_dir(&lonely).unwrap();
    std::os::unix::fs::symlink(fixture(), lonely.join("nvidia-cuda-mps-control")).unwrap();
    let mut settings = lab.settings(&[]);
    settings.control_path = lonely.join("nvidia-cuda-mps-control");
    let (tx, _rx) = events();
    let mut mps = MpsManager::new(settings, tx);
    let err = mps.probe().await.unwrap_err();
    assert!(
        err.to_string().contains("nvidia-cuda-mps-server not found"),
        "{err}"
    );
}

/// Matrix 5: a pipe path over 107 bytes is caught by the probe, not discovered by a hang.
#[tokio::test]
async fn overlong_pipe_dir_is_unavailable() {
    let lab = Lab::new();
    let mut settings = lab.settings(&[]);
    settings.pipe_dir = lab.path().join("p".repeat(100));
    let (tx, _rx) = events();
    let mut mps = MpsManager::new(settings, tx);
    let err = mps.start().await.unwrap_err();
    assert!(err.to_string().contains("107"), "{err}");
    assert_eq!(mps.status().state, MpsState::Unavailable);
    assert!(mps_processes(&lab.pipe()).is_empty());
}

/// JetPack 6.0 (L4T R36.3) has no MPS on Orin.
#[tokio::test]
async fn old_jetpack_is_unavailable() {
    let lab = Lab::new();
    let settings = lab.settings(&[]);
    std::fs::write(
        &settings.tegra_release_path,
        "# R36 (release), REVISION: 3.0, GCID: 1, BOARD: generic\n",
    )
    .unwrap();
    let (tx, _rx) = events();
    let mut mps = MpsManager::new(settings, tx);
    let err = mps.probe().await.unwrap_err();
    assert!(err.to_string().contains("R36.3"), "{err}");
}

/// Matrix 7: servers that exit with status 1 over and over: MPS is unavailable, nothing stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_that_never_starts_makes_mps_unavailable() {
    let lab = Lab::new();
    let mut settings = lab.settings(&[("FAKE_MPS_SERVER_FAIL", "99")]);
    settings.start_deadline = Duration::from_secs(5);
    let (tx, mut rx) = events();
    let mut mps = MpsManager::new(settings, tx);
    let err = mps.start().await.unwrap_err();
    assert!(matches!(err, MpsError::Unavailable(_)), "{err}");
    let status = mps.status();
    assert_eq!(status.state, MpsState::Unavailable);
    assert!(
        status.reason.contains("exited with status 1"),
        "{}",
        status.reason
    );
    assert!(mps_processes(&lab.pipe()).is_empty());
    let exits = drain(&mut rx)
        .iter()
        .filter(|e| matches!(e, MpsEvent::ServerExited { status: 1, .. }))
        .count();
    assert!(exits >= 1, "server exits are reported as events");
}

/// A server that fails once and then starts is fine (the daemon retries, we wait it out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_server_failure_still_starts() {
    let lab = Lab::new();
    let (tx, _rx) = events();
    let mut mps = MpsManager::new(lab.settings(&[("FAKE_MPS_SERVER_FAIL", "2")]), tx);
    mps.start().await.unwrap();
    assert_eq!(count(&lab.pipe(), Kind::Server), 1);
    mps.stop().await.unwrap();
    assert!(mps_processes(&lab.pipe()).is_empty());
}

/// A daemon that answers late is waited for; one that never answers fails the start in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_polled_within_the_deadline() {
    let lab = Lab::new();
    let (tx, _rx) = events();
    let mut mps = MpsManager::new(lab.settings(&[("FAKE_MPS_START_DELAY_MS", "1500")]), tx);
    mps.start().await.unwrap();
    mps.stop().await.unwrap();

    let lab = Lab::new();
    let mut settings =
        lab.settings(&[("FAKE_MPS_HANG_ON", "get_default_active_thread_percentage")]);
    settings.call_timeout = Duration::from_secs(1);
    settings.start_deadline = Duration::from_secs(3);
    let (tx, _rx) = events();
    let mut mps = MpsManager::new(settings, tx);
    let started = std::time::Instant::now();
    let err = mps.start().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("get_default_active_thread_percentage"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(mps.status().state, MpsState::Failed);
    assert!(mps_processes(&lab.pipe()).is_empty());
}

/// A default that does not take is a failed start, not a silent difference (F12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_default_fails_the_start() {
    let lab = Lab::new();
    let mut settings = lab.settings(&[]);
    settings.default_active_thread_percentage = Some(150.0);
    let (tx, _rx) = events();
    let mut mps = MpsManager::new(settings, tx);
    let err = mps.start().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("set_default_active_thread_percentage 150"),
        "{err}"
    );
    assert_eq!(mps.status().state, MpsState::Failed);
    assert!(mps_processes(&lab.pipe()).is_empty());
}

/// Matrix 8: the daemon dies mid-run: noticed without polling, state failed with the reason;
/// stop then clears the orphaned server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_death_is_noticed_at_once() {
    let lab = Lab::new();
    let (tx, mut rx) = events();
    let mut mps = MpsManager::new(lab.settings(&[("FAKE_MPS_DIE_AFTER_MS", "2500")]), tx);
    mps.start().await.unwrap();
    let exit = tokio::time::timeout(LONG, mps.died())
        .await
        .expect("died() resolves");
    assert!(exit.status.contains("SIGKILL"), "{exit:?}");
    let status = mps.status();
    assert_eq!(status.state, MpsState::Failed);
    assert!(
        status.reason.contains("SIGKILL") && status.reason.contains("unexpectedly"),
        "{}",
        status.reason
    );
    assert_eq!(
        path_of(&drain(&mut rx)).last().map(String::as_str),
        Some("failed")
    );
    assert_eq!(
        count(&lab.pipe(), Kind::Server),
        1,
        "the server outlived its daemon"
    );
    mps.stop().await.unwrap();
    assert_eq!(mps.status().state, MpsState::Stopped);
    assert!(mps_processes(&lab.pipe()).is_empty());
    // And MPS can be started again afterwards.
    mps.start().await.unwrap();
    assert_eq!(count(&lab.pipe(), Kind::Daemon), 1);
    mps.stop().await.unwrap();
}

/// Matrix 2: a control daemon we did not start, on our pipe dir, is refused and left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_daemon_is_refused_and_untouched() {
    let lab = Lab::new();
    let out = lab.run(&["-d"], "", &[]);
    assert!(out.status.success());
    assert!(eventually(LONG, || lab
        .ui("get_server_list")
        .status
        .success()));
    let (tx, _rx) = events();
    let mut mps = MpsManager::new(lab.settings(&[]), tx);
    let err = mps.start().await.unwrap_err();
    let MpsError::Foreign { pid, .. } = err else {
        panic!("expected Foreign, got {err}")
    };
    assert_eq!(
        mps_processes(&lab.pipe())
            .iter()
            .find(|p| p.kind == Kind::Daemon)
            .map(|p| p.pid),
        Some(pid)
    );
    assert_eq!(mps.status().state, MpsState::Unavailable);
    assert!(mps.status().reason.contains(&pid.to_string()));
    assert_eq!(
        stdout(&lab.ui("get_default_active_thread_percentage")),
        "100.0\n",
        "foreign daemon unharmed"
    );
    assert_eq!(lab.ui("quit").status.code(), Some(0));
}

/// Matrix 3 and 12: a stale pipe dir (daemon SIGKILLed) does not block a start, whichever
/// stream the binary prints its errors on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pipe_dir_is_reclaimed_on_either_error_stream() {
    for stream in ["stdout", "stderr"] {
        let lab = Lab::new();
        assert!(lab.run(&["-d"], "", &[]).status.success());
        assert!(eventually(LONG, || lab
            .ui("get_server_list")
            .status
            .success()));
        let pid: i32 = std::fs::read_to_string(lab.pipe().join("nvidia-cuda-mps-control.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
        assert!(eventually(LONG, || count(&lab.pipe(), Kind::Daemon) == 0));
        let (tx, _rx) = events();
        let mut mps = MpsManager::new(lab.settings(&[("FAKE_MPS_ERR_STREAM", stream)]), tx);
        let err = mps.call("get_server_list").await.unwrap_err();
        assert!(matches!(err, MpsError::NoDaemon { .. }), "{stream}: {err}");
        mps.start()
            .await
            .unwrap_or_else(|e| panic!("{stream}: {e}"));
        assert_eq!(count(&lab.pipe(), Kind::Daemon), 1);
        mps.stop().await.unwrap();
    }
}

/// Matrix 6: a wedged client does not stop `stop`: `quit -t` forces the server down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_with_a_wedged_client_finishes() {
    let lab = Lab::new();
    let (tx, _rx) = events();
    let mut mps = MpsManager::new(lab.settings(&[]), tx);
    mps.start().await.unwrap();
    let worker = Sleeper::new();
    mps.call(&format!("fake_attach {}", worker.pid()))
        .await
        .unwrap();
    mps.call(&format!("fake_wedge_client {}", worker.pid()))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    mps.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3 + 2),
        "stop took {:?}",
        started.elapsed()
    );
    assert!(mps_processes(&lab.pipe()).is_empty());
}

/// Matrix 14: the worker environment for MPS off has no CUDA_MPS_* at all; for MPS on it points
/// at our daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_environment_follows_the_state() {
    let lab = Lab::new();
    let base: Vec<(OsString, OsString)> = vec![
        ("CUDA_MPS_PIPE_DIRECTORY".into(), "/tmp/nvidia-mps".into()),
        ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".into(), "50".into()),
        ("NOTIFY_SOCKET".into(), "/run/systemd/notify".into()),
        ("HOME".into(), "/root".into()),
    ];
    let (tx, _rx) = events();
    let mut mps = MpsManager::new(lab.settings(&[]), tx);
    let off = worker_env(base.clone(), &mps.client_mode(Some(50.0)));
    assert_eq!(off, vec![("HOME".into(), "/root".into())]);
    mps.start().await.unwrap();
    let mode = mps.client_mode(Some(50.0));
    assert!(matches!(mode, MpsClientMode::On { .. }));
    let on = worker_env(base, &mode);
    let pipe: Vec<_> = on
        .iter()
        .filter(|(k, _)| k == "CUDA_MPS_PIPE_DIRECTORY")
        .collect();
    assert_eq!(
        pipe,
        vec![&(
            "CUDA_MPS_PIPE_DIRECTORY".into(),
            lab.pipe().into_os_string()
        )]
    );
    assert!(on
        .iter()
        .any(|(k, v)| k == "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" && v == "50"));
    assert!(!on.iter().any(|(k, _)| k == "NOTIFY_SOCKET"));
    // The daemon itself got no inherited CUDA_MPS_* and no systemd variables.
    let pid = mps.daemon_pid().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    for var in environ.split(|b| *b == 0).map(String::from_utf8_lossy) {
        assert!(
            !var.starts_with("NOTIFY_SOCKET") && !var.starts_with("WATCHDOG_"),
            "{var}"
        );
        if var.starts_with("CUDA_MPS_") {
            assert!(
                var.starts_with("CUDA_MPS_PIPE_DIRECTORY=")
                    || var.starts_with("CUDA_MPS_LOG_DIRECTORY="),
                "{var}"
            );
        }
    }
    mps.stop().await.unwrap();
    assert_eq!(mps.client_mode(None), MpsClientMode::Off);
}
