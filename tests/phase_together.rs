//! The phase executor with real models: together windows, the start barrier, digests and the
//! worker environment. Needs `.cache` (ONNX Runtime library and real models).

use mpslab::experiment::phase::{run_phase, PhaseOutcome, PhaseProgress, PhaseStage};
use mpslab::experiment::protocol::Record;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod phase_support;

use phase_support::{cls, orientation, spec};

fn overlap(a: &Record, b: &Record) -> bool {
    a.start_ns < b.end_ns() && b.start_ns < a.end_ns()
}

fn assert_ok(outcome: &PhaseOutcome) {
    if let Some(e) = &outcome.error {
        panic!("phase failed: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_run_together_inside_one_window() {
    let outcome = run_phase(
        spec(vec![cls(), orientation()], 80),
        CancellationToken::new(),
    )
    .await;
    assert_ok(&outcome);
    let window = outcome.window.expect("a together window");
    let [a, b] = &outcome.workers[..] else {
        panic!("two workers")
    };
    for w in [a, b] {
        assert!(
            w.in_window.len() >= 80,
            "{}: {} in window",
            w.model,
            w.in_window.len()
        );
        assert!(w.in_window.iter().all(|r| window.contains(r)));
        assert!(w.records.len() >= w.in_window.len());
        assert!(w.exit_status.unwrap().success());
        assert_eq!(w.ready.as_ref().unwrap().provider, "cpu");
    }
    // The fast classifier was inside an iteration while the slow orientation model ran its
    // iterations. Not all of them: on a loaded machine a worker may be descheduled exactly
    // between two iterations; run one after the other, none would overlap.
    let overlapping = b
        .in_window
        .iter()
        .filter(|rb| a.in_window.iter().any(|ra| overlap(ra, rb)))
        .count();
    assert!(
        overlapping * 2 >= b.in_window.len(),
        "only {overlapping} of {} orientation iterations overlap a cls iteration",
        b.in_window.len()
    );
    assert!(a.in_window.len() > b.in_window.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_are_identical_across_phases_and_models_differ() {
    let first = run_phase(
        spec(vec![cls(), orientation()], 20),
        CancellationToken::new(),
    )
    .await;
    let second = run_phase(
        spec(vec![orientation(), cls()], 20),
        CancellationToken::new(),
    )
    .await;
    assert_ok(&first);
    assert_ok(&second);
    let by_model = |o: &PhaseOutcome, m: &str| {
        o.workers
            .iter()
            .find(|w| w.model == m)
            .unwrap()
            .digests
            .clone()
    };
    for m in ["cls", "orientation"] {
        let (d1, d2) = (by_model(&first, m), by_model(&second, m));
        assert_eq!(d1.len(), 2, "{m}: default two digest inputs");
        assert_eq!(d1, d2, "{m}: outputs changed between phases");
        assert!(!d1[0].outputs[0].head.is_empty());
    }
    assert_ne!(
        by_model(&first, "cls")[0].sha256,
        by_model(&first, "orientation")[0].sha256
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alone_is_one_worker_and_progress_is_published() {
    let (tx, mut rx) = watch::channel(PhaseProgress::default());
    let mut s = spec(vec![cls()], 50);
    s.progress = Some(tx);
    let phase = tokio::spawn(run_phase(s, CancellationToken::new()));
    let mut saw_pid_while_measuring = false;
    let mut max_seen = 0;
    while rx.changed().await.is_ok() {
        let p = rx.borrow_and_update().clone();
        if p.stage == PhaseStage::Measuring {
            saw_pid_while_measuring |= p.workers[0].pid.is_some() && p.workers[0].running;
            max_seen = max_seen.max(p.workers[0].iterations);
        }
        if p.stage == PhaseStage::Finished {
            assert!(!p.workers[0].running);
            assert!(p.workers[0].in_window >= 50);
            break;
        }
    }
    let outcome = phase.await.unwrap();
    assert_ok(&outcome);
    assert!(saw_pid_while_measuring);
    assert!(
        max_seen > 0,
        "iteration counts were published while measuring"
    );
    let w = &outcome.workers[0];
    assert_eq!(
        w.in_window.len(),
        w.records.len(),
        "alone: the window is the whole run"
    );
    assert_eq!(outcome.barrier_skew_ns, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_get_only_the_explicit_environment() {
    // The daemon's own environment may carry MPS settings; an MPS-off phase must not leak them.
    std::env::set_var("CUDA_MPS_PIPE_DIRECTORY", "/tmp/leaked-mps-pipe");
    std::env::set_var("NOTIFY_SOCKET", "/run/systemd/notify");
    let (tx, mut rx) = watch::channel(PhaseProgress::default());
    let mut s = spec(vec![cls(), orientation()], 1_000_000);
    s.progress = Some(tx);
    let cancel = CancellationToken::new();
    let phase = tokio::spawn(run_phase(s, cancel.clone()));
    let pids = loop {
        rx.changed().await.expect("phase ended before measuring");
        let p = rx.borrow_and_update().clone();
        if p.stage == PhaseStage::Measuring {
            break p.workers.iter().map(|w| w.pid.unwrap()).collect::<Vec<_>>();
        }
    };
    for pid in pids {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let vars: Vec<String> = environ
            .split(|&b| b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        assert!(
            vars.contains(&"MPSLAB_PHASE_TEST=explicit".to_string()),
            "{vars:?}"
        );
        assert!(vars.iter().all(|v| !v.starts_with("CUDA_MPS_")), "{vars:?}");
        assert!(
            vars.iter().all(|v| !v.starts_with("NOTIFY_SOCKET")),
            "{vars:?}"
        );
        assert_eq!(vars.len(), 2, "only the explicit env: {vars:?}");
    }
    cancel.cancel();
    let outcome = phase.await.unwrap();
    assert!(outcome.error.is_some());
}
