//! `mpslab-worker` as a process: refusals name their cause, the stdin/stdout protocol works, and
//! signals/EOF end it cleanly. Needs `.cache` (ONNX Runtime library and real models).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mpslab::experiment::protocol::{ParentMsg, StopReason, WorkerMsg};
use mpslab::experiment::worker::monotonic_ns;

fn cache() -> PathBuf {
    std::env::var_os("MPSLAB_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache"))
}

fn ort_lib() -> PathBuf {
    cache().join("ort/libonnxruntime.so")
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn cls_model() -> PathBuf {
    cache().join("models/ch_ppocr_mobile_v2.0_cls_infer.onnx")
}

const CLS_DIMS: [&str; 6] = ["--dim", "x[0]=1", "--dim", "x[2]=48", "--dim", "x[3]=192"];

fn worker() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mpslab-worker"));
    c.arg("--ort-lib").arg(ort_lib()).args(["--threads", "1"]);
    c
}

struct Finished {
    code: Option<i32>,
    stdout: Vec<WorkerMsg>,
    stderr: String,
}

/// Runs a standalone (`--autostart`) worker to completion.
fn run_standalone(cmd: &mut Command) -> Finished {
    let out = cmd
        .arg("--autostart")
        .stdin(Stdio::null())
        .output()
        .expect("spawn worker");
    let stdout = String::from_utf8(out.stdout).expect("utf-8 protocol");
    Finished {
        code: out.status.code(),
        stdout: stdout
            .lines()
            .map(|l| WorkerMsg::decode(l).expect("every stdout line is a protocol message"))
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn assert_refused(f: &Finished, needles: &[&str]) {
    assert_eq!(f.code, Some(1), "stderr: {}", f.stderr);
    for n in needles {
        assert!(f.stderr.contains(n), "stderr lacks {n:?}: {}", f.stderr);
    }
    match f.stdout.as_slice() {
        [WorkerMsg::Error { message }] => {
            for n in needles {
                assert!(message.contains(n), "protocol error lacks {n:?}: {message}");
            }
        }
        other => panic!("expected exactly one error message, got {other:?}"),
    }
}

#[test]
fn help_teaches_the_protocol_and_run_length() {
    let out = Command::new(env!("CARGO_BIN_EXE_mpslab-worker"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--ort-lib",
        "--provider",
        "--dim",
        "--iterations",
        "--duration-s",
        "PROTOCOL",
        "stop",
        "EXAMPLES",
        "tensorrt",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

#[test]
fn missing_ort_library_is_refused_naming_the_path() {
    let f = run_standalone(
        Command::new(env!("CARGO_BIN_EXE_mpslab-worker"))
            .args(["--ort-lib", "/nonexistent/libonnxruntime.so.1"])
            .arg("--model")
            .arg(cls_model()),
    );
    assert_refused(&f, &["/nonexistent/libonnxruntime.so.1"]);
}

#[test]
fn missing_model_is_refused_naming_the_file() {
    let f = run_standalone(worker().args(["--model", "/nonexistent/model.onnx"]));
    assert_refused(&f, &["/nonexistent/model.onnx", "does not exist"]);
}

#[test]
fn truncated_model_is_refused_naming_file_and_cause() {
    let f = run_standalone(worker().arg("--model").arg(fixture("truncated.onnx")));
    assert_refused(&f, &["truncated.onnx", "Protobuf parsing failed"]);
}

#[test]
fn cuda_on_cpu_only_runtime_is_an_error_not_a_cpu_run() {
    let f = run_standalone(
        worker()
            .arg("--model")
            .arg(cls_model())
            .args(CLS_DIMS)
            .args(["--provider", "cuda", "--iterations", "3"]),
    );
    assert_refused(
        &f,
        &[
            "`cuda`",
            "CUDA execution provider is not enabled in this build",
        ],
    );
}

#[test]
fn tensorrt_on_cpu_only_runtime_is_an_error() {
    let f = run_standalone(
        worker()
            .arg("--model")
            .arg(cls_model())
            .args(CLS_DIMS)
            .args(["--provider", "tensorrt", "--trt-fp16", "--iterations", "3"]),
    );
    assert_refused(
        &f,
        &["`tensorrt`", "TensorRT execution provider is not enabled"],
    );
}

#[test]
fn unresolved_dynamic_dimension_names_input_and_fix() {
    let f = run_standalone(worker().arg("--model").arg(fixture("dyn_conv.onnx")).args([
        "--dim",
        "batch=1",
        "--dim",
        "height=32",
    ]));
    assert_refused(&f, &["input `images` axis 3 (`width`)", "--dim width=N"]);
}

#[test]
fn a_dim_that_matches_nothing_is_refused() {
    let f = run_standalone(
        worker()
            .arg("--model")
            .arg(fixture("tiny_add.onnx"))
            .args(["--dim", "heigth=32"]),
    );
    assert_refused(&f, &["--dim heigth=32"]);
}

#[test]
fn int64_and_int32_inputs_run_with_symbolic_dims() {
    let f = run_standalone(
        worker()
            .arg("--model")
            .arg(fixture("int_inputs.onnx"))
            .args([
                "--dim",
                "seq=6",
                "--iterations",
                "5",
                "--digest-inputs",
                "2",
            ]),
    );
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    let WorkerMsg::Ready { inputs, .. } = &f.stdout[0] else {
        panic!("first message is not ready: {:?}", f.stdout[0])
    };
    let types: Vec<(&str, &str, Option<&Vec<i64>>)> = inputs
        .iter()
        .map(|i| (i.name.as_str(), i.dtype.as_str(), i.shape.as_ref()))
        .collect();
    assert_eq!(
        types,
        vec![
            ("ids", "int64", Some(&vec![1, 6])),
            ("mask", "int32", Some(&vec![1, 6]))
        ]
    );
    let records: usize = f
        .stdout
        .iter()
        .map(|m| match m {
            WorkerMsg::Records { records, .. } => records.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(records, 5);
    let digests = f
        .stdout
        .iter()
        .find_map(|m| match m {
            WorkerMsg::Digests { digests } => Some(digests.clone()),
            _ => None,
        })
        .expect("digests");
    assert_eq!(digests.len(), 2);
    assert_eq!(digests[0].outputs[0].shape, vec![1, 6, 4]);
    assert_ne!(digests[0].sha256, digests[1].sha256, "fixed inputs differ");
    assert!(matches!(
        f.stdout.last(),
        Some(WorkerMsg::Done {
            iterations: 5,
            reason: StopReason::Iterations
        })
    ));
}

struct Live {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Live {
    fn start(extra: &[&str]) -> Live {
        let mut child = worker()
            .arg("--model")
            .arg(cls_model())
            .args(CLS_DIMS)
            .args(["--warmup", "2", "--flush-ms", "20"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Live { child, lines }
    }

    fn next(&mut self) -> WorkerMsg {
        let line = self.lines.next().expect("worker closed stdout").unwrap();
        WorkerMsg::decode(&line).unwrap()
    }

    fn send(&mut self, msg: ParentMsg) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(msg.encode().as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Reads until `done`, returning (records seen, digests seen, reason).
    fn until_done(&mut self, mut records: Vec<u64>) -> (Vec<u64>, usize, StopReason) {
        let mut digests = 0;
        loop {
            match self.next() {
                WorkerMsg::Records { records: r, .. } => records.extend(r.iter().map(|r| r.index)),
                WorkerMsg::Digests { digests: d } => digests = d.len(),
                WorkerMsg::Done { iterations, reason } => {
                    assert_eq!(iterations as usize, records.len());
                    return (records, digests, reason);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[test]
fn protocol_ready_go_at_deadline_records_stop_digests_done() {
    let mut w = Live::start(&["--digest-inputs", "3"]);
    let WorkerMsg::Ready {
        pid,
        provider,
        outputs,
        warmup,
        ..
    } = w.next()
    else {
        panic!("expected ready")
    };
    assert_eq!(pid, w.child.id());
    assert_eq!(provider, "cpu");
    assert_eq!(warmup, 2);
    assert_eq!(outputs[0].declared_shape, vec![-1, 2]);

    let start_at = monotonic_ns() + 30_000_000;
    w.send(ParentMsg::Go {
        start_at_ns: Some(start_at),
    });
    let mut indices = Vec::new();
    let mut first_start = None;
    while indices.len() < 20 {
        match w.next() {
            WorkerMsg::Records { records, .. } => {
                first_start.get_or_insert(records[0].start_ns);
                for r in &records {
                    assert!(r.duration_ns > 0);
                }
                indices.extend(records.iter().map(|r| r.index));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let first_start = first_start.unwrap();
    assert!(first_start >= start_at, "started before the go deadline");
    assert!(
        first_start - start_at < 20_000_000,
        "started {} ms late",
        (first_start - start_at) / 1_000_000
    );
    w.send(ParentMsg::Stop);
    let (indices, digests, reason) = w.until_done(indices);
    assert_eq!(reason, StopReason::Stopped);
    assert_eq!(digests, 3);
    assert_eq!(indices, (0..indices.len() as u64).collect::<Vec<_>>());
    assert!(w.child.wait().unwrap().success());
}

#[test]
fn sigterm_ends_the_loop_cleanly() {
    let mut w = Live::start(&[]);
    assert!(matches!(w.next(), WorkerMsg::Ready { .. }));
    w.send(ParentMsg::Go { start_at_ns: None });
    let WorkerMsg::Records { records, .. } = w.next() else {
        panic!("expected records")
    };
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (_, digests, reason) = w.until_done(records.iter().map(|r| r.index).collect());
    assert_eq!(reason, StopReason::Signal);
    assert_eq!(digests, 0, "a terminated worker skips the digest runs");
    assert!(w.child.wait().unwrap().success());
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn closing_stdin_means_the_parent_is_gone() {
    let mut w = Live::start(&[]);
    assert!(matches!(w.next(), WorkerMsg::Ready { .. }));
    w.send(ParentMsg::Go { start_at_ns: None });
    let WorkerMsg::Records { records, .. } = w.next() else {
        panic!("expected records")
    };
    drop(w.child.stdin.take());
    let (_, _, reason) = w.until_done(records.iter().map(|r| r.index).collect());
    assert_eq!(reason, StopReason::ParentGone);
    assert!(w.child.wait().unwrap().success());
}

#[test]
fn sigterm_while_waiting_for_go_exits_at_once() {
    let mut w = Live::start(&[]);
    assert!(matches!(w.next(), WorkerMsg::Ready { .. }));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = w.child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
}

#[test]
fn duration_limit_stops_the_loop() {
    let t = Instant::now();
    let f = run_standalone(worker().arg("--model").arg(fixture("tiny_add.onnx")).args([
        "--duration-s",
        "0.3",
        "--digest-inputs",
        "1",
    ]));
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    assert!(matches!(
        f.stdout.last(),
        Some(WorkerMsg::Done {
            reason: StopReason::Duration,
            ..
        })
    ));
    let starts: Vec<u64> = f
        .stdout
        .iter()
        .flat_map(|m| match m {
            WorkerMsg::Records { records, .. } => records.iter().map(|r| r.start_ns).collect(),
            _ => Vec::new(),
        })
        .collect();
    let span = starts.last().unwrap() - starts.first().unwrap();
    assert!((200_000_000..400_000_000).contains(&span), "span {span} ns");
    assert!(t.elapsed() < Duration::from_secs(30));
}
