//! The tegrastats supervisor against tests/fixtures/fake-tegrastats (a Python replay of corpus
//! lines with failure knobs). Knobs are set per test in a wrapper script, never in our own
//! environment, because tests run in parallel threads of one process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mpslab::telemetry::tegrastats_sampler::{
    spawn, SamplerEvent, SamplerEventKind, SamplerState, TegraReading, TegraSamplerConfig,
    TegraSamplerHandle,
};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

const LONG: Duration = Duration::from_secs(20);

fn fake() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-tegrastats")
}

/// A script in `dir` that runs the fake with the given knobs; `exec` keeps the pid, so the
/// pidfile names our direct child.
fn wrapper(dir: &Path, knobs: &[(&str, String)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let mut script = String::from("#!/bin/sh\n");
    for (k, v) in knobs {
        script.push_str(&format!("export {k}='{v}'\n"));
    }
    script.push_str(&format!("exec '{}' \"$@\"\n", fake().display()));
    let path = dir.join("tegrastats");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

struct Run {
    handle: TegraSamplerHandle,
    readings: mpsc::Receiver<TegraReading>,
    events: mpsc::Receiver<SamplerEvent>,
    cancel: CancellationToken,
}

fn start(cfg: TegraSamplerConfig) -> Run {
    let (rtx, readings) = mpsc::channel(1024);
    let (etx, events) = mpsc::channel(1024);
    let cancel = CancellationToken::new();
    let handle = spawn(cfg, rtx, etx, cancel.clone());
    Run {
        handle,
        readings,
        events,
        cancel,
    }
}

/// Interval 100 ms; stall detection relaxed to 20 intervals unless a test is about stalls, so a
/// loaded machine does not cause restarts the test did not ask for.
fn config(path: &Path) -> TegraSamplerConfig {
    let mut cfg = TegraSamplerConfig::new(path, 100);
    cfg.timing.stall_intervals = 20;
    cfg
}

async fn next_reading(run: &mut Run) -> TegraReading {
    timeout(LONG, run.readings.recv())
        .await
        .expect("no reading in time")
        .expect("readings channel closed")
}

async fn wait_event(run: &mut Run, kind: SamplerEventKind) -> SamplerEvent {
    let deadline = Instant::now() + LONG;
    loop {
        let ev = tokio::time::timeout_at(deadline, run.events.recv())
            .await
            .unwrap_or_else(|_| panic!("no {kind:?} event in time"))
            .expect("events channel closed");
        if ev.kind == kind {
            return ev;
        }
    }
}

async fn wait_state(run: &mut Run, want: SamplerState) {
    timeout(LONG, run.handle.state.wait_for(|s| *s == want))
        .await
        .unwrap_or_else(|_| panic!("state never became {want}"))
        .unwrap();
}

async fn read_pid(pidfile: &Path) -> i32 {
    let deadline = Instant::now() + LONG;
    loop {
        if let Ok(text) = std::fs::read_to_string(pidfile) {
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no pidfile {}",
            pidfile.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn proc_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

async fn stop(run: Run) {
    run.cancel.cancel();
    timeout(LONG, run.handle.join)
        .await
        .expect("sampler did not stop")
        .unwrap();
}

#[tokio::test]
async fn readings_flow_and_parse() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = start(config(&wrapper(dir.path(), &[])));
    let started = wait_event(&mut run, SamplerEventKind::Started).await;
    assert!(started.message.contains("--interval 100"), "{started:?}");
    let mut last_mono = 0;
    for _ in 0..5 {
        let r = next_reading(&mut run).await;
        let s = r.parsed.as_ref().expect("corpus line must parse");
        assert!(matches!(s.ram.total_mb, 7620 | 3602), "{:?}", s.ram);
        assert!(s.gpu.is_some() && !s.rails.is_empty());
        assert!(r.mono_ns > last_mono);
        last_mono = r.mono_ns;
        let now_ms = chrono::Utc::now().timestamp_millis();
        assert!((now_ms - r.wall_ms).abs() < 60_000);
        assert!(!r.truncated && !r.raw.ends_with(b"\n"));
    }
    assert_eq!(*run.handle.state.borrow(), SamplerState::Running);
    assert_eq!(run.handle.dropped_readings(), 0);
    stop(run).await;
}

#[tokio::test]
async fn killed_child_is_replaced_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let path = wrapper(
        dir.path(),
        &[("FAKE_TEGRASTATS_PIDFILE", pidfile.display().to_string())],
    );
    let mut run = start(config(&path));
    next_reading(&mut run).await;
    let old = read_pid(&pidfile).await;
    std::fs::remove_file(&pidfile).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed_ns = monotonic_ns();

    let exited = wait_event(&mut run, SamplerEventKind::Exited).await;
    assert!(exited.message.contains("signal 9"), "{exited:?}");
    let new = read_pid(&pidfile).await;
    assert_ne!(new, old);
    // Readings carry our CLOCK_MONOTONIC stamp: skip what the old child printed before dying and
    // time the first line of the new one, independent of how late this test thread runs.
    let first_new = loop {
        let r = next_reading(&mut run).await;
        if r.mono_ns > killed_ns {
            break r;
        }
    };
    assert!(first_new.parsed.is_ok());
    let after = Duration::from_nanos(first_new.mono_ns - killed_ns);
    assert!(
        after < Duration::from_secs(2),
        "first new line {after:?} after the kill"
    );
    let restarted = wait_event(&mut run, SamplerEventKind::Restarted).await;
    let gap = restarted.gap_ms.expect("restart gap");
    assert!((100..5_000).contains(&gap), "gap {gap} ms");
    assert!(!proc_exists(old), "killed child {old} was not reaped");
    stop(run).await;
}

#[tokio::test]
async fn child_exiting_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let path = wrapper(dir.path(), &[("FAKE_TEGRASTATS_EXIT_AFTER", "2".into())]);
    let mut run = start(config(&path));
    let exited = wait_event(&mut run, SamplerEventKind::Exited).await;
    assert!(exited.message.contains("status 3"), "{exited:?}");
    assert!(exited.message.contains(&path.display().to_string()));
    let restarted = wait_event(&mut run, SamplerEventKind::Restarted).await;
    assert!(restarted.gap_ms.is_some());
    // Two lines per child: five readings need at least three children.
    for _ in 0..5 {
        assert!(next_reading(&mut run).await.parsed.is_ok());
    }
    stop(run).await;
}

#[tokio::test]
async fn hung_child_is_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let path = wrapper(
        dir.path(),
        &[
            ("FAKE_TEGRASTATS_HANG_AFTER", "2".into()),
            ("FAKE_TEGRASTATS_PIDFILE", pidfile.display().to_string()),
        ],
    );
    let mut cfg = TegraSamplerConfig::new(&path, 100);
    cfg.timing.stall_intervals = 3;
    let mut run = start(cfg);
    next_reading(&mut run).await;
    let hung = read_pid(&pidfile).await;
    let stalled = wait_event(&mut run, SamplerEventKind::Stalled).await;
    assert!(
        stalled.message.contains("no line for 300 ms"),
        "{stalled:?}"
    );
    assert!(!proc_exists(hung), "stalled child {hung} still exists");
    wait_event(&mut run, SamplerEventKind::Restarted).await;
    stop(run).await;
}

#[tokio::test]
async fn garbage_lines_arrive_as_errors_without_stopping_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let path = wrapper(dir.path(), &[("FAKE_TEGRASTATS_GARBAGE_EVERY", "2".into())]);
    let mut run = start(config(&path));
    let (mut ok, mut bad) = (0, 0);
    for _ in 0..9 {
        let r = next_reading(&mut run).await;
        match &r.parsed {
            Ok(_) => ok += 1,
            Err(_) => {
                assert!(String::from_utf8_lossy(&r.raw).contains("garbage"));
                bad += 1;
            }
        }
    }
    assert!(ok >= 5 && bad >= 3, "ok {ok} bad {bad}");
    assert_eq!(*run.handle.state.borrow(), SamplerState::Running);
    while let Ok(ev) = run.events.try_recv() {
        assert_eq!(ev.kind, SamplerEventKind::Started, "{ev:?}");
    }
    stop(run).await;
}

#[tokio::test]
async fn unterminated_last_line_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let path = wrapper(dir.path(), &[("FAKE_TEGRASTATS_PARTIAL", "1".into())]);
    let mut run = start(config(&path));
    let exited = wait_event(&mut run, SamplerEventKind::Exited).await;
    assert!(exited.message.contains("unterminated"), "{exited:?}");
    wait_event(&mut run, SamplerEventKind::Exited).await;
    assert!(
        run.readings.try_recv().is_err(),
        "a half line was delivered"
    );
    stop(run).await;
}

#[tokio::test]
async fn missing_binary_is_unavailable_until_reconfigured() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-tegrastats");
    let mut run = start(config(&missing));
    wait_state(&mut run, SamplerState::Unavailable).await;
    let ev = wait_event(&mut run, SamplerEventKind::Unavailable).await;
    assert!(
        ev.message.contains(&missing.display().to_string()),
        "{ev:?}"
    );
    assert!(ev.message.contains("does not exist"), "{ev:?}");

    let plain = dir.path().join("not-executable");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    run.handle.reconfigure(config(&plain));
    let ev = wait_event(&mut run, SamplerEventKind::Unavailable).await;
    assert!(ev.message.contains("not executable"), "{ev:?}");
    assert_eq!(run.handle.current_state(), SamplerState::Unavailable);

    run.handle.reconfigure(config(&wrapper(dir.path(), &[])));
    wait_state(&mut run, SamplerState::Running).await;
    assert!(next_reading(&mut run).await.parsed.is_ok());
    stop(run).await;
}

#[tokio::test]
async fn cancel_stops_and_reaps_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let path = wrapper(
        dir.path(),
        &[("FAKE_TEGRASTATS_PIDFILE", pidfile.display().to_string())],
    );
    let mut run = start(config(&path));
    next_reading(&mut run).await;
    let pid = read_pid(&pidfile).await;
    assert!(proc_exists(pid));
    let mut state = run.handle.state.clone();
    let mut events = std::mem::replace(&mut run.events, mpsc::channel(1).1);
    stop(run).await;
    assert_eq!(*state.borrow_and_update(), SamplerState::Stopped);
    assert!(!proc_exists(pid), "child {pid} left behind after cancel");
    let mut kinds = Vec::new();
    while let Ok(ev) = events.try_recv() {
        kinds.push(ev.kind);
    }
    assert_eq!(kinds.last(), Some(&SamplerEventKind::Stopped), "{kinds:?}");
}

#[tokio::test]
async fn full_channel_drops_readings_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = TegraSamplerConfig::new(wrapper(dir.path(), &[]), 20);
    cfg.timing.stall_intervals = 100;
    let (rtx, mut readings) = mpsc::channel(1);
    let (etx, _events) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let handle = spawn(cfg, rtx, etx, cancel.clone());
    let deadline = Instant::now() + LONG;
    while handle.dropped_readings() < 3 {
        assert!(Instant::now() < deadline, "nothing dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(handle.current_state(), SamplerState::Running);
    // The one queued reading is still there, and new ones keep coming once there is room.
    assert!(readings.recv().await.unwrap().parsed.is_ok());
    assert!(timeout(LONG, readings.recv()).await.unwrap().is_some());
    cancel.cancel();
    timeout(LONG, handle.join).await.unwrap().unwrap();
}

#[tokio::test]
async fn dropping_the_readings_receiver_stops_the_sampler() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let path = wrapper(
        dir.path(),
        &[
            ("FAKE_TEGRASTATS_PIDFILE", pidfile.display().to_string()),
            // Silent child: the sampler must notice the closed channel without a line to send.
            ("FAKE_TEGRASTATS_HANG_AFTER", "1".into()),
        ],
    );
    let mut run = start(config(&path));
    next_reading(&mut run).await;
    let pid = read_pid(&pidfile).await;
    drop(run.readings);
    timeout(LONG, run.handle.join)
        .await
        .expect("sampler kept running without a reader")
        .unwrap();
    assert_eq!(*run.handle.state.borrow(), SamplerState::Stopped);
    assert!(!proc_exists(pid), "child {pid} left behind");
}
