//! Stopping a control daemon that never answers `quit` (F3): bounded by the configured timeout,
//! nothing left behind, and the runtime stays responsive throughout.

mod mps_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mps_support::*;
use mpslab::mps::{MpsManager, MpsState};

/// One runtime thread: if the manager blocked it, the ticker below would stall.
#[tokio::test(flavor = "current_thread")]
async fn stop_of_a_hung_daemon_is_bounded_and_never_blocks_the_runtime() {
    let lab = Lab::new();
    let settings = lab.settings(&[
        ("FAKE_MPS_HANG_ON", "quit"),
        ("FAKE_MPS_IGNORE_SIGTERM", "1"),
    ]);
    let quit_timeout = settings.quit_timeout;
    let (tx, _rx) = events();
    let mut mps = MpsManager::new(settings, tx);
    mps.start().await.unwrap();
    let worker = Sleeper::new();
    mps.call(&format!("fake_attach {}", worker.pid()))
        .await
        .unwrap();
    assert_eq!(count(&lab.pipe(), Kind::Daemon), 1);
    assert_eq!(count(&lab.pipe(), Kind::Server), 1);

    let ticks = Arc::new(AtomicU64::new(0));
    let max_gap_ms = Arc::new(AtomicU64::new(0));
    let ticker = {
        let (ticks, max_gap_ms) = (Arc::clone(&ticks), Arc::clone(&max_gap_ms));
        tokio::spawn(async move {
            let mut last = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let gap = last.elapsed().as_millis() as u64;
                max_gap_ms.fetch_max(gap, Ordering::Relaxed);
                ticks.fetch_add(1, Ordering::Relaxed);
                last = Instant::now();
            }
        })
    };

    let started = Instant::now();
    mps.stop().await.unwrap();
    let took = started.elapsed();
    ticker.abort();

    assert!(
        took <= quit_timeout + Duration::from_secs(2),
        "stop took {took:?}"
    );
    assert!(
        took >= quit_timeout,
        "the quit call was given its full timeout ({took:?})"
    );
    assert_eq!(mps.status().state, MpsState::Stopped);
    assert!(
        mps.status().reason.contains("forced"),
        "{}",
        mps.status().reason
    );
    assert!(
        mps_processes(&lab.pipe()).is_empty(),
        "left behind: {:?}",
        mps_processes(&lab.pipe())
    );
    // Serviced all along: at least one tick per 500 ms of stop, and no stall of a second or more.
    let ticks = ticks.load(Ordering::Relaxed);
    assert!(
        ticks as u128 >= took.as_millis() / 500,
        "only {ticks} ticks in {took:?}"
    );
    let gap = max_gap_ms.load(Ordering::Relaxed);
    assert!(gap < 1000, "the runtime stalled for {gap} ms during stop");
}

/// A UI call that hangs is killed at its timeout and reported, not awaited forever.
#[tokio::test(flavor = "current_thread")]
async fn hung_call_times_out_and_leaves_no_ui_process() {
    let lab = Lab::new();
    let mut settings = lab.settings(&[("FAKE_MPS_HANG_ON", "get_server_list")]);
    settings.call_timeout = Duration::from_secs(2);
    settings.start_deadline = Duration::from_secs(5);
    let (tx, _rx) = events();
    let mut mps = MpsManager::new(settings, tx);
    // start polls get_server_list, which now hangs: the start fails in bounded time.
    let started = Instant::now();
    let err = mps.start().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("get_server_list"), "{err}");
    assert_eq!(
        mps.status().state,
        MpsState::Failed,
        "a hung daemon is a failure, not missing MPS"
    );
    let ui_left = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let needle = format!("CUDA_MPS_PIPE_DIRECTORY={}", lab.pipe().display());
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            !stat.contains(") Z ")
                && env.split(|b| *b == 0).any(|v| v == needle.as_bytes())
                && String::from_utf8_lossy(&cmd).contains("nvidia-cuda-mps-control")
        })
        .count();
    assert_eq!(ui_left, 0, "hung UI processes were killed");
}
