//! The inference worker: one model per process, driven by the phase executor over the protocol in
//! [`super::protocol`]. `src/bin/mpslab-worker.rs` only parses arguments and calls [`main`].
//!
//! One process per model keeps the measurement honest: every model gets its own ONNX Runtime
//! environment, thread pool and (on Jetson) CUDA context, exactly as independent applications
//! sharing a GPU would, which is the situation CUDA MPS exists for.

use std::ffi::c_int;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use sha2::{Digest, Sha256};

use super::protocol::{
    OutputDigest, OutputSummary, ParentMsg, Record, Stage, StopReason, TensorInfo, WorkerMsg,
};
use super::validation::{ValidationError, Validator};
use crate::config::Task;

const AFTER_HELP: &str = "\
PROTOCOL
  stdin  <- parent: one JSON object per line: {\"type\":\"go\",\"start_at_ns\":N} then {\"type\":\"stop\"}
  stdout -> parent: ready (after load + warm-up, with input/output metadata), records (batched
            [index, start_ns, duration_ns] in CLOCK_MONOTONIC ns), digests (sha256 + first values of
            every output for --digest-inputs fixed inputs), done. Anything a library prints to stdout
            is redirected to stderr so it cannot corrupt the protocol.
  stderr -> human-readable errors. Exit status 0 on success, 1 on any error, 2 on bad arguments.

RUN LENGTH
  --iterations N, or --duration-s S, or neither: run until the parent sends stop (or closes stdin).
  SIGTERM/SIGINT end the loop cleanly (records flushed, `done` sent, no digests).

EXAMPLES
  Measure 200 iterations standalone, one thread, reading nothing from stdin:
    mpslab-worker --ort-lib .cache/ort/libonnxruntime.so --model cls.onnx --threads 1 \\
        --iterations 200 --autostart < /dev/null
  A detector with dynamic height/width on TensorRT with an fp16 engine cache:
    mpslab-worker --ort-lib /usr/lib/libonnxruntime.so --model yolo.onnx --provider tensorrt \\
        --trt-fp16 --trt-engine-cache /var/lib/mpslab/trt --dim batch=1 --dim height=640 --dim width=640
  A dynamic dimension without a symbol name is addressed as INPUT[AXIS]=VALUE, e.g. --dim 'x[0]=1'.";

/// Which ONNX Runtime execution provider runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Provider {
    /// ONNX Runtime's CPU provider.
    Cpu,
    /// CUDA; an error if the library or the CUDA libraries cannot provide it.
    Cuda,
    /// TensorRT with CUDA for the nodes TensorRT does not take; an error if either cannot load.
    Tensorrt,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::Tensorrt => "tensorrt",
        }
    }
}

/// Runs one ONNX model in a timed loop for the mpslab phase executor.
#[derive(Debug, Clone, Parser)]
#[command(name = "mpslab-worker", version, after_help = AFTER_HELP)]
pub struct WorkerArgs {
    /// ONNX Runtime shared library to dlopen (>= 1.17), e.g. /usr/lib/libonnxruntime.so.
    #[arg(long, value_name = "PATH")]
    pub ort_lib: PathBuf,
    /// The .onnx model to run.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Execution provider. A provider that cannot load is an error, never a silent CPU run.
    #[arg(long, value_enum, default_value_t = Provider::Cpu)]
    pub provider: Provider,
    /// GPU index for cuda/tensorrt.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub device_id: i32,
    /// TensorRT: build fp16 engines.
    #[arg(long)]
    pub trt_fp16: bool,
    /// TensorRT: directory for the engine and timing cache (engine builds take minutes on Jetson).
    #[arg(long, value_name = "DIR")]
    pub trt_engine_cache: Option<PathBuf>,
    /// Intra-op threads; 0 lets ONNX Runtime choose (one per core).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
    /// Value of a dynamic input dimension: SYMBOL=VALUE (e.g. height=640) or INPUT[AXIS]=VALUE.
    #[arg(long = "dim", value_name = "NAME=VALUE", value_parser = parse_dim)]
    pub dims: Vec<DimArg>,
    /// Seed of the deterministic input tensors.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Integer inputs are drawn from [0, INT_HIGH).
    #[arg(long, default_value_t = 256, value_name = "INT_HIGH")]
    pub int_high: u32,
    /// Unmeasured iterations before `ready`.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub warmup: u64,
    /// Stop after N measured iterations.
    #[arg(long, value_name = "N", conflicts_with = "duration_s")]
    pub iterations: Option<u64>,
    /// Stop after S seconds of measured loop.
    #[arg(long, value_name = "S")]
    pub duration_s: Option<f64>,
    /// Number of fixed inputs whose outputs are digested after the loop.
    #[arg(long, default_value_t = 2, value_name = "K")]
    pub digest_inputs: u32,
    /// Leading values of each output kept in the digest for max-abs-diff comparisons.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub digest_head: usize,
    /// Send records in batches of N iterations ...
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub batch_records: usize,
    /// ... or at least every MS milliseconds, whichever comes first.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    pub flush_ms: u64,
    /// Start immediately after `ready` instead of waiting for `go`; stdin is not read.
    #[arg(long)]
    pub autostart: bool,
    /// Exit at once if this is no longer the parent (closes the fork/prctl race).
    #[arg(long, value_name = "PID")]
    pub parent_pid: Option<u32>,
    /// Validation: walk this dataset (a data.yaml, or an image-folder root for cls) once instead
    /// of timing synthetic inputs; --iterations then caps the images.
    #[arg(
        long,
        value_name = "PATH",
        requires = "task",
        conflicts_with = "duration_s",
        help_heading = "Validation"
    )]
    pub dataset: Option<PathBuf>,
    /// Validation: the model's task, which decides pre- and post-processing and the metrics.
    #[arg(long, value_name = "TASK", value_parser = parse_task, help_heading = "Validation")]
    pub task: Option<Task>,
    /// Validation: dataset split to walk (val, test or train).
    #[arg(
        long,
        default_value = "val",
        value_name = "SPLIT",
        help_heading = "Validation"
    )]
    pub split: String,
    /// Validation: candidates below this confidence are dropped before NMS.
    #[arg(
        long,
        default_value_t = 0.001,
        value_name = "P",
        help_heading = "Validation"
    )]
    pub conf: f32,
    /// Validation: NMS IoU threshold.
    #[arg(
        long,
        default_value_t = 0.7,
        value_name = "IOU",
        help_heading = "Validation"
    )]
    pub iou: f32,
    /// Validation: detections kept per image.
    #[arg(
        long,
        default_value_t = 300,
        value_name = "N",
        help_heading = "Validation"
    )]
    pub max_det: usize,
    /// Validation: precision, recall and F1 count detections at or above this confidence.
    #[arg(
        long,
        default_value_t = 0.25,
        value_name = "P",
        help_heading = "Validation"
    )]
    pub report_conf: f32,
    /// Validation: also write every image's prediction as one JSON line to this file
    /// (pixel coordinates of the original image; written outside the timed stages).
    #[arg(
        long,
        value_name = "PATH",
        requires = "dataset",
        help_heading = "Validation"
    )]
    pub predictions: Option<PathBuf>,
}

fn parse_task(s: &str) -> Result<Task, String> {
    s.parse()
}

/// A `--dim` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DimArg {
    /// `SYMBOL=VALUE`: every dynamic dimension with that symbol.
    Symbol { name: String, value: i64 },
    /// `INPUT[AXIS]=VALUE`: one axis of one input.
    Axis {
        input: String,
        axis: usize,
        value: i64,
    },
}

/// Parses `SYMBOL=VALUE` or `INPUT[AXIS]=VALUE`.
pub fn parse_dim(s: &str) -> Result<DimArg, String> {
    let (name, value) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))?;
    let value: i64 = value
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` in `{s}` is not an integer"))?;
    if value < 1 {
        return Err(format!(
            "dimension `{name}` must be at least 1, got {value}"
        ));
    }
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("`{s}` has no dimension name"));
    }
    if let Some(rest) = name.strip_suffix(']') {
        if let Some((input, axis)) = rest.rsplit_once('[') {
            let axis = axis
                .parse()
                .map_err(|_| format!("axis `{axis}` in `{s}` is not a number"))?;
            return Ok(DimArg::Axis {
                input: input.to_string(),
                axis,
                value,
            });
        }
    }
    Ok(DimArg::Symbol {
        name: name.to_string(),
        value,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    LoadLibrary { path: PathBuf, message: String },
    #[error("model file {path} does not exist")]
    ModelMissing { path: PathBuf },
    #[error("cannot load model {path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error("execution provider `{provider}` cannot be used: {message}")]
    Provider { provider: String, message: String },
    #[error("ONNX Runtime session option {option}: {message}")]
    SessionOption {
        option: &'static str,
        message: String,
    },
    #[error("input `{input}` axis {axis}{} is dynamic and no --dim gives its size (use --dim {hint})", symbol.as_ref().map(|s| format!(" (`{s}`)")).unwrap_or_default())]
    UnresolvedDim {
        input: String,
        axis: usize,
        symbol: Option<String>,
        hint: String,
    },
    #[error("--dim {arg} names no dynamic dimension of this model")]
    UnusedDim { arg: String },
    #[error("input `{input}` has type {dtype}; the worker feeds float32, int64 and int32 inputs")]
    UnsupportedInput { input: String, dtype: String },
    #[error("output `{output}` has type {dtype}, which the digest cannot read")]
    UnsupportedOutput { output: String, dtype: String },
    #[error("input `{input}`: {message}")]
    Input { input: String, message: String },
    #[error("inference failed on {model} ({stage}): {message}")]
    Run {
        model: PathBuf,
        stage: &'static str,
        message: String,
    },
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error("control pipe: {0}")]
    Control(String),
    #[error("protocol output: {0}")]
    Output(#[from] std::io::Error),
}

/// The binary's entry point: runs the worker and returns the process exit status.
pub fn main(args: WorkerArgs) -> i32 {
    let mut out = match ProtocolOut::take_stdout() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("mpslab-worker: cannot set up the protocol on stdout: {e}");
            return 1;
        }
    };
    die_with_parent(args.parent_pid);
    install_signal_handlers();
    match run(&args, &mut out) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mpslab-worker: error: {e}");
            // Best effort: the parent also gets the cause on the protocol, not only in stderr.
            let _ = out.send(&WorkerMsg::Error {
                message: e.to_string(),
            });
            1
        }
    }
}

/// The protocol stream. Stdout is duplicated to a private fd and fd 1 is pointed at stderr, so
/// a library that prints to stdout (ONNX Runtime, CUDA) lands in stderr instead of the protocol.
struct ProtocolOut {
    writer: BufWriter<File>,
}

impl ProtocolOut {
    fn take_stdout() -> std::io::Result<Self> {
        let stdout = std::io::stdout();
        let _lock = stdout.lock();
        // SAFETY: plain fd duplication; the new fd is owned by the File created from it.
        let proto_fd = unsafe { libc::fcntl(stdout.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
        if proto_fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fds 1 and 2 are valid for the life of the process.
        if unsafe { libc::dup2(2, 1) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: proto_fd was just created and nothing else owns it.
        let file = unsafe { File::from_raw_fd(proto_fd) };
        Ok(ProtocolOut {
            writer: BufWriter::with_capacity(64 * 1024, file),
        })
    }

    fn send(&mut self, msg: &WorkerMsg) -> std::io::Result<()> {
        self.writer.write_all(msg.encode().as_bytes())?;
        self.writer.flush()
    }
}

/// PR_SET_PDEATHSIG so an orphaned worker does not keep a GPU busy, then the race check: if the
/// parent died before prctl, we were already reparented and the signal will never come.
fn die_with_parent(parent_pid: Option<u32>) {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    let ppid = std::os::unix::process::parent_id();
    let orphaned = match parent_pid {
        Some(expected) => ppid != expected,
        None => ppid == 1,
    };
    if orphaned {
        eprintln!("mpslab-worker: parent process is gone (parent pid is now {ppid}); exiting");
        std::process::exit(1);
    }
}

const NO_STOP: u8 = 0;
static STOP: AtomicU8 = AtomicU8::new(NO_STOP);
static IN_LOOP: AtomicBool = AtomicBool::new(false);

fn stop_code(reason: StopReason) -> u8 {
    match reason {
        StopReason::Stopped => 1,
        StopReason::Signal => 2,
        StopReason::ParentGone => 3,
        StopReason::Iterations => 4,
        StopReason::Duration => 5,
        StopReason::Dataset => 6,
    }
}

fn stop_reason(code: u8) -> Option<StopReason> {
    Some(match code {
        1 => StopReason::Stopped,
        2 => StopReason::Signal,
        3 => StopReason::ParentGone,
        4 => StopReason::Iterations,
        5 => StopReason::Duration,
        6 => StopReason::Dataset,
        _ => return None,
    })
}

fn request_stop(reason: StopReason) {
    // The first reason wins.
    let _ = STOP.compare_exchange(
        NO_STOP,
        stop_code(reason),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
}

extern "C" fn on_terminate(_sig: c_int) {
    if IN_LOOP.load(Ordering::SeqCst) {
        request_stop(StopReason::Signal);
    } else {
        // Loading or waiting: nothing to flush. _exit is async-signal-safe.
        // SAFETY: terminates the process without running non-reentrant code.
        unsafe { libc::_exit(128 + libc::SIGTERM) };
    }
}

fn install_signal_handlers() {
    let handler: extern "C" fn(c_int) = on_terminate;
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only touches atomics and calls _exit, both async-signal-safe.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock every worker and the parent share.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until `deadline_ns` (CLOCK_MONOTONIC), then spins the last stretch: the release of
/// several workers at one instant is only as sharp as the scheduler's wake-up jitter otherwise.
fn wait_until(deadline_ns: u64) {
    const SPIN_NS: u64 = 300_000;
    let now = monotonic_ns();
    if deadline_ns > now + SPIN_NS {
        let wake = deadline_ns - SPIN_NS;
        let ts = libc::timespec {
            tv_sec: (wake / 1_000_000_000) as libc::time_t,
            tv_nsec: (wake % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: absolute sleep on a valid timespec; EINTR just ends the sleep early.
        unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
    }
    while monotonic_ns() < deadline_ns {
        std::hint::spin_loop();
    }
}

/// splitmix64: tiny, seedable, identical on every platform (no dependency on a rand crate's
/// version-to-version stream stability).
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seed of input `input_index` for fill number `fill` (0 = the measured input, k+1 = digest input k).
pub fn input_seed(seed: u64, input_index: usize, fill: u32) -> u64 {
    let mut s = seed ^ ((input_index as u64) << 40) ^ ((fill as u64) << 20);
    splitmix64(&mut s)
}

/// Uniform values in [0, 1) with 24 bits of resolution, so every value is exact in f32.
pub fn fill_f32(seed: u64, out: &mut [f32]) {
    let mut s = seed;
    for v in out {
        *v = (splitmix64(&mut s) >> 40) as f32 / (1u64 << 24) as f32;
    }
}

/// Uniform integers in [0, high).
pub fn fill_int<T: TryFrom<u64>>(seed: u64, high: u32, out: &mut [T]) {
    let mut s = seed;
    let high = u64::from(high.max(1));
    for v in out {
        if let Ok(x) = T::try_from(splitmix64(&mut s) % high) {
            *v = x;
        }
    }
}

/// Resolves the declared shape of one input against the `--dim` arguments. Returns the concrete
/// shape and marks which `dims` were used.
pub fn resolve_shape(
    input: &str,
    declared: &[i64],
    symbols: &[String],
    dims: &[DimArg],
    used: &mut [bool],
) -> Result<Vec<i64>, WorkerError> {
    let mut shape = Vec::with_capacity(declared.len());
    for (axis, &d) in declared.iter().enumerate() {
        if d >= 0 {
            shape.push(d);
            continue;
        }
        // Paddle exports name unknown dims "?", which addresses nothing.
        let symbol = symbols
            .get(axis)
            .filter(|s| !s.is_empty() && s.as_str() != "?")
            .cloned();
        let found = dims.iter().enumerate().find_map(|(i, arg)| {
            let hit = match arg {
                DimArg::Axis {
                    input: name,
                    axis: a,
                    value,
                } => (name == input && *a == axis).then_some(*value),
                DimArg::Symbol { name, value } => {
                    (symbol.as_deref() == Some(name.as_str())).then_some(*value)
                }
            };
            hit.map(|v| (i, v))
        });
        match found {
            Some((i, v)) => {
                used[i] = true;
                shape.push(v);
            }
            None => {
                let hint = match &symbol {
                    Some(s) => format!("{s}=N"),
                    None => format!("'{input}[{axis}]=N'"),
                };
                return Err(WorkerError::UnresolvedDim {
                    input: input.to_string(),
                    axis,
                    symbol,
                    hint,
                });
            }
        }
    }
    Ok(shape)
}

fn dim_arg_text(d: &DimArg) -> String {
    match d {
        DimArg::Symbol { name, value } => format!("{name}={value}"),
        DimArg::Axis { input, axis, value } => format!("{input}[{axis}]={value}"),
    }
}

/// One input tensor, allocated once and refilled in place.
enum InputTensor {
    F32(Tensor<f32>),
    I64(Tensor<i64>),
    I32(Tensor<i32>),
}

impl InputTensor {
    fn fill(&mut self, seed: u64, int_high: u32) {
        match self {
            InputTensor::F32(t) => fill_f32(seed, t.extract_tensor_mut().1),
            InputTensor::I64(t) => fill_int(seed, int_high, t.extract_tensor_mut().1),
            InputTensor::I32(t) => fill_int(seed, int_high, t.extract_tensor_mut().1),
        }
    }

    fn view(&self) -> SessionInputValue<'_> {
        match self {
            InputTensor::F32(t) => t.into(),
            InputTensor::I64(t) => t.into(),
            InputTensor::I32(t) => t.into(),
        }
    }
}

fn dtype_name(ty: TensorElementType) -> String {
    match ty {
        TensorElementType::Float32 => "float32".into(),
        TensorElementType::Float64 => "float64".into(),
        TensorElementType::Float16 => "float16".into(),
        TensorElementType::Int64 => "int64".into(),
        TensorElementType::Int32 => "int32".into(),
        TensorElementType::Int8 => "int8".into(),
        TensorElementType::Uint8 => "uint8".into(),
        TensorElementType::Bool => "bool".into(),
        other => other.to_string(),
    }
}

fn tensor_meta(dtype: &ValueType) -> (String, Vec<i64>, Vec<String>) {
    match dtype {
        ValueType::Tensor {
            ty,
            shape,
            dimension_symbols,
        } => (
            dtype_name(*ty),
            shape.to_vec(),
            dimension_symbols.iter().map(|s| s.to_string()).collect(),
        ),
        other => (format!("{other:?}"), Vec::new(), Vec::new()),
    }
}

struct Loaded {
    session: Session,
    inputs: Vec<InputTensor>,
    input_info: Vec<TensorInfo>,
    output_info: Vec<TensorInfo>,
    // Keeps ONNX Runtime's environment alive as long as the session.
    _env: ort::environment::Environment,
}

fn load(args: &WorkerArgs) -> Result<Loaded, WorkerError> {
    let lib_err = |message: String| WorkerError::LoadLibrary {
        path: args.ort_lib.clone(),
        message,
    };
    if !args.ort_lib.exists() {
        return Err(lib_err("no such file".into()));
    }
    let env = ort::init_from(&args.ort_lib)
        .map_err(|e| lib_err(e.to_string()))?
        .with_name("mpslab-worker")
        .build()
        .map_err(|e| lib_err(e.to_string()))?;

    if !args.model.exists() {
        return Err(WorkerError::ModelMissing {
            path: args.model.clone(),
        });
    }
    let opt = |option: &'static str| {
        move |e: ort::Error<ort::session::builder::SessionBuilder>| WorkerError::SessionOption {
            option,
            message: e.to_string(),
        }
    };
    let mut builder = Session::builder(&env)
        .map_err(|e| WorkerError::SessionOption {
            option: "create",
            message: e.to_string(),
        })?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(opt("optimization level"))?
        .with_intra_threads(args.threads)
        .map_err(opt("intra-op threads"))?;
    let providers = execution_providers(args);
    if !providers.is_empty() {
        builder =
            builder
                .with_execution_providers(providers)
                .map_err(|e| WorkerError::Provider {
                    provider: args.provider.as_str().into(),
                    message: e.to_string(),
                })?;
    }
    let session = builder
        .commit_from_file(&args.model)
        .map_err(|e| WorkerError::Model {
            path: args.model.clone(),
            message: e.to_string(),
        })?;

    let mut used = vec![false; args.dims.len()];
    let mut inputs = Vec::new();
    let mut input_info = Vec::new();
    for (i, outlet) in session.inputs().iter().enumerate() {
        let name = outlet.name().to_string();
        let ValueType::Tensor { ty, .. } = outlet.dtype() else {
            return Err(WorkerError::UnsupportedInput {
                input: name,
                dtype: format!("{:?}", outlet.dtype()),
            });
        };
        let (dtype, declared, symbols) = tensor_meta(outlet.dtype());
        let shape = resolve_shape(&name, &declared, &symbols, &args.dims, &mut used)?;
        let len = shape.iter().product::<i64>() as usize;
        let input_err = |e: ort::Error| WorkerError::Input {
            input: name.clone(),
            message: e.to_string(),
        };
        let mut tensor = match ty {
            TensorElementType::Float32 => InputTensor::F32(
                Tensor::from_array((shape.clone(), vec![0f32; len])).map_err(input_err)?,
            ),
            TensorElementType::Int64 => InputTensor::I64(
                Tensor::from_array((shape.clone(), vec![0i64; len])).map_err(input_err)?,
            ),
            TensorElementType::Int32 => InputTensor::I32(
                Tensor::from_array((shape.clone(), vec![0i32; len])).map_err(input_err)?,
            ),
            _ => return Err(WorkerError::UnsupportedInput { input: name, dtype }),
        };
        tensor.fill(input_seed(args.seed, i, 0), args.int_high);
        inputs.push(tensor);
        input_info.push(TensorInfo {
            name,
            dtype,
            declared_shape: declared,
            shape: Some(shape),
        });
    }
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(WorkerError::UnusedDim {
            arg: dim_arg_text(&args.dims[i]),
        });
    }
    let output_info = session
        .outputs()
        .iter()
        .map(|o| {
            let (dtype, declared, _) = tensor_meta(o.dtype());
            TensorInfo {
                name: o.name().to_string(),
                dtype,
                declared_shape: declared,
                shape: None,
            }
        })
        .collect();
    Ok(Loaded {
        session,
        inputs,
        input_info,
        output_info,
        _env: env,
    })
}

fn execution_providers(args: &WorkerArgs) -> Vec<ort::ep::ExecutionProviderDispatch> {
    let cuda = || {
        ort::ep::CUDA::default()
            .with_device_id(args.device_id)
            .build()
            .error_on_failure()
    };
    match args.provider {
        Provider::Cpu => Vec::new(),
        Provider::Cuda => vec![cuda()],
        Provider::Tensorrt => {
            let mut trt = ort::ep::TensorRT::default()
                .with_device_id(args.device_id)
                .with_fp16(args.trt_fp16);
            if let Some(dir) = &args.trt_engine_cache {
                let dir = dir.display().to_string();
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(&dir)
                    .with_timing_cache(true)
                    .with_timing_cache_path(&dir);
            }
            vec![trt.build().error_on_failure(), cuda()]
        }
    }
}

fn run_once(session: &mut Session, views: &[SessionInputValue<'_>]) -> Result<(), ort::Error> {
    session.run(views).map(drop)
}

fn run(args: &WorkerArgs, out: &mut ProtocolOut) -> Result<(), WorkerError> {
    let load_start = Instant::now();
    let Loaded {
        mut session,
        mut inputs,
        input_info,
        output_info,
        _env,
    } = load(args)?;
    // Before warm-up: a dataset or model that does not fit the task fails the load, fast.
    let mut validator = match (&args.dataset, args.task) {
        (Some(dataset), Some(task)) => Some(Validator::new(
            args.model.clone(),
            task,
            dataset,
            &args.split,
            crate::vision::ValParams {
                conf: args.conf,
                iou: args.iou,
                max_det: args.max_det,
                report_conf: args.report_conf,
                ..Default::default()
            },
            &input_info,
            &output_info,
        )?),
        _ => None,
    };
    if let (Some(v), Some(path)) = (validator.as_mut(), &args.predictions) {
        v.write_predictions(path)?;
    }
    let run_err = |stage: &'static str| {
        let model = args.model.clone();
        move |e: ort::Error| WorkerError::Run {
            model: model.clone(),
            stage,
            message: e.to_string(),
        }
    };
    {
        let views: Vec<_> = inputs.iter().map(InputTensor::view).collect();
        for _ in 0..args.warmup {
            run_once(&mut session, &views).map_err(run_err("warm-up"))?;
        }
    }
    let go_rx = if args.autostart {
        None
    } else {
        Some(spawn_control_reader())
    };
    out.send(&WorkerMsg::Ready {
        pid: std::process::id(),
        model: args.model.display().to_string(),
        provider: args.provider.as_str().into(),
        inputs: input_info,
        outputs: output_info,
        load_ms: load_start.elapsed().as_secs_f64() * 1e3,
        warmup: args.warmup,
    })?;

    if let Some(rx) = go_rx {
        let go = rx.recv();
        // From here on SIGTERM stops the loop instead of exiting: records must be flushed.
        IN_LOOP.store(true, Ordering::SeqCst);
        match go {
            Ok(Some(deadline)) => wait_until(deadline),
            Ok(None) => {}
            Err(_) => {
                return Err(WorkerError::Control(
                    "the parent closed stdin before sending go".into(),
                ))
            }
        }
    }
    IN_LOOP.store(true, Ordering::SeqCst);
    let iterations = match validator.as_mut() {
        Some(v) => validation_loop(args, v, &mut session, &mut inputs, out)?,
        None => measured_loop(args, &mut session, &inputs, out)?,
    };
    IN_LOOP.store(false, Ordering::SeqCst);
    let reason = stop_reason(STOP.load(Ordering::SeqCst)).unwrap_or(StopReason::Iterations);
    let validating = validator.is_some();
    if let Some(v) = validator {
        out.send(&WorkerMsg::Validation(Box::new(v.finish())))?;
    }
    // A validation run's outputs are its predictions, digested in the summary above.
    if !validating && !matches!(reason, StopReason::Signal | StopReason::ParentGone) {
        let digests = digest_outputs(args, &mut session, &mut inputs)?;
        out.send(&WorkerMsg::Digests { digests })?;
    }
    out.send(&WorkerMsg::Done { iterations, reason })?;
    Ok(())
}

/// Reads the parent's messages on a thread: the first `go` is handed to the main thread, `stop`
/// and end-of-file set the stop flag the measured loop polls.
fn spawn_control_reader() -> mpsc::Receiver<Option<u64>> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut tx = Some(tx);
        for line in BufReader::new(stdin.lock()).lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            match ParentMsg::decode(&line) {
                Ok(ParentMsg::Go { start_at_ns }) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(start_at_ns);
                    }
                }
                Ok(ParentMsg::Stop) => request_stop(StopReason::Stopped),
                Err(e) => eprintln!("mpslab-worker: ignoring control message: {e}"),
            }
        }
        request_stop(StopReason::ParentGone);
        // Dropping tx (if go never came) wakes the main thread with an error.
    });
    rx
}

fn measured_loop(
    args: &WorkerArgs,
    session: &mut Session,
    inputs: &[InputTensor],
    out: &mut ProtocolOut,
) -> Result<u64, WorkerError> {
    let views: Vec<_> = inputs.iter().map(InputTensor::view).collect();
    let batch_len = args.batch_records.max(1);
    let flush_ns = args.flush_ms.saturating_mul(1_000_000);
    let deadline_ns = args
        .duration_s
        .map(|s| monotonic_ns().saturating_add((s.max(0.0) * 1e9) as u64));
    let mut batch = Vec::with_capacity(batch_len);
    let mut last_flush = monotonic_ns();
    let mut index = 0u64;
    loop {
        if stop_before(args, index) {
            break;
        }
        let start = monotonic_ns();
        if deadline_ns.is_some_and(|d| start >= d) {
            request_stop(StopReason::Duration);
            break;
        }
        run_once(session, &views).map_err(|e| WorkerError::Run {
            model: args.model.clone(),
            stage: "measured loop",
            message: e.to_string(),
        })?;
        let end = monotonic_ns();
        batch.push(Record {
            index,
            start_ns: start,
            duration_ns: end - start,
        });
        index += 1;
        if batch.len() >= batch_len || end - last_flush >= flush_ns {
            send_records(out, &mut batch, batch_len)?;
            last_flush = end;
        }
    }
    if !batch.is_empty() {
        send_records(out, &mut batch, batch_len)?;
    }
    Ok(index)
}

/// One pass over the dataset (or the first `--iterations` usable images), records and stages
/// flushed like the measured loop's.
fn validation_loop(
    args: &WorkerArgs,
    validator: &mut Validator,
    session: &mut Session,
    inputs: &mut [InputTensor],
    out: &mut ProtocolOut,
) -> Result<u64, WorkerError> {
    let Some(InputTensor::F32(input)) = inputs.first_mut() else {
        return Err(WorkerError::UnsupportedInput {
            input: "0".into(),
            dtype: "non-float32".into(),
        });
    };
    let batch_len = args.batch_records.max(1);
    let flush_ns = args.flush_ms.saturating_mul(1_000_000);
    let mut batch = Vec::with_capacity(batch_len);
    let mut stages = Vec::with_capacity(batch_len);
    let mut last_flush = monotonic_ns();
    let mut index = 0u64;
    loop {
        if stop_before(args, index) {
            break;
        }
        let Some(done) = validator.next(session, input, index, monotonic_ns)? else {
            request_stop(StopReason::Dataset);
            break;
        };
        batch.push(done.record);
        stages.push(done.stage);
        index += 1;
        let end = done.record.end_ns();
        if batch.len() >= batch_len || end - last_flush >= flush_ns {
            send_batch(out, &mut batch, &mut stages, batch_len)?;
            last_flush = end;
        }
    }
    if !batch.is_empty() {
        send_batch(out, &mut batch, &mut stages, batch_len)?;
    }
    Ok(index)
}

/// Whether the measured or validation loop ends before iteration `index`: a stop was asked
/// for, or `--iterations` is reached (which becomes the stop reason).
fn stop_before(args: &WorkerArgs, index: u64) -> bool {
    if STOP.load(Ordering::Relaxed) != NO_STOP {
        return true;
    }
    if args.iterations.is_some_and(|n| index >= n) {
        request_stop(StopReason::Iterations);
        return true;
    }
    false
}

fn send_records(
    out: &mut ProtocolOut,
    batch: &mut Vec<Record>,
    batch_len: usize,
) -> Result<(), WorkerError> {
    send_batch(out, batch, &mut Vec::new(), batch_len)
}

fn send_batch(
    out: &mut ProtocolOut,
    batch: &mut Vec<Record>,
    stages: &mut Vec<Stage>,
    batch_len: usize,
) -> Result<(), WorkerError> {
    let records = std::mem::replace(batch, Vec::with_capacity(batch_len));
    let stages = std::mem::take(stages);
    match out.send(&WorkerMsg::Records { records, stages }) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            // The parent is gone: nobody to report to.
            request_stop(StopReason::ParentGone);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

trait DigestElement: ort::value::PrimitiveTensorElementType + Copy + std::fmt::Debug {
    fn le_bytes(self, out: &mut Vec<u8>);
    fn as_f64(self) -> f64;
}

macro_rules! digest_element {
    ($($t:ty),*) => {$(
        impl DigestElement for $t {
            fn le_bytes(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn as_f64(self) -> f64 {
                self as f64
            }
        }
    )*};
}
digest_element!(f32, f64, i64, i32, i16, i8, u8, u16, u32, u64);

impl DigestElement for bool {
    fn le_bytes(self, out: &mut Vec<u8>) {
        out.push(self as u8);
    }
    fn as_f64(self) -> f64 {
        f64::from(u8::from(self))
    }
}

fn summarise<T: DigestElement>(
    value: &DynValue,
    head: usize,
    bytes: &mut Vec<u8>,
) -> Result<(Vec<i64>, Vec<f64>), ort::Error> {
    let (shape, data) = value.try_extract_tensor::<T>()?;
    bytes.clear();
    bytes.reserve(std::mem::size_of_val(data));
    for &x in data {
        x.le_bytes(bytes);
    }
    Ok((
        shape.to_vec(),
        data.iter().take(head).map(|x| x.as_f64()).collect(),
    ))
}

fn digest_outputs(
    args: &WorkerArgs,
    session: &mut Session,
    inputs: &mut [InputTensor],
) -> Result<Vec<OutputDigest>, WorkerError> {
    let names: Vec<String> = session
        .outputs()
        .iter()
        .map(|o| o.name().to_string())
        .collect();
    let mut digests = Vec::new();
    let mut bytes = Vec::new();
    for k in 0..args.digest_inputs {
        for (i, t) in inputs.iter_mut().enumerate() {
            t.fill(input_seed(args.seed, i, k + 1), args.int_high);
        }
        let views: Vec<_> = inputs.iter().map(InputTensor::view).collect();
        let outputs = session.run(&views[..]).map_err(|e| WorkerError::Run {
            model: args.model.clone(),
            stage: "digest",
            message: e.to_string(),
        })?;
        let mut all = Sha256::new();
        let mut summaries = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let value = &outputs[i];
            let ty = match value.dtype() {
                ValueType::Tensor { ty, .. } => *ty,
                other => {
                    return Err(WorkerError::UnsupportedOutput {
                        output: name.clone(),
                        dtype: format!("{other:?}"),
                    })
                }
            };
            let h = args.digest_head;
            let b = &mut bytes;
            let summary = match ty {
                TensorElementType::Float32 => summarise::<f32>(value, h, b),
                TensorElementType::Float64 => summarise::<f64>(value, h, b),
                TensorElementType::Int64 => summarise::<i64>(value, h, b),
                TensorElementType::Int32 => summarise::<i32>(value, h, b),
                TensorElementType::Int16 => summarise::<i16>(value, h, b),
                TensorElementType::Int8 => summarise::<i8>(value, h, b),
                TensorElementType::Uint8 => summarise::<u8>(value, h, b),
                TensorElementType::Uint16 => summarise::<u16>(value, h, b),
                TensorElementType::Uint32 => summarise::<u32>(value, h, b),
                TensorElementType::Uint64 => summarise::<u64>(value, h, b),
                TensorElementType::Bool => summarise::<bool>(value, h, b),
                other => {
                    return Err(WorkerError::UnsupportedOutput {
                        output: name.clone(),
                        dtype: dtype_name(other),
                    })
                }
            };
            let (shape, head) = summary.map_err(|e| WorkerError::Run {
                model: args.model.clone(),
                stage: "reading outputs",
                message: format!("output `{name}`: {e}"),
            })?;
            all.update(&bytes);
            summaries.push(OutputSummary {
                name: name.clone(),
                dtype: dtype_name(ty),
                shape,
                sha256: hex(&Sha256::digest(&bytes)),
                head,
            });
        }
        digests.push(OutputDigest {
            input: k,
            sha256: hex(&all.finalize()),
            outputs: summaries,
        });
    }
    Ok(digests)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dim_arguments_parse_both_forms_and_reject_nonsense() {
        assert_eq!(
            parse_dim("height=640").unwrap(),
            DimArg::Symbol {
                name: "height".into(),
                value: 640
            }
        );
        assert_eq!(
            parse_dim("x[0]=2").unwrap(),
            DimArg::Axis {
                input: "x".into(),
                axis: 0,
                value: 2
            }
        );
        assert!(parse_dim("height").unwrap_err().contains("NAME=VALUE"));
        assert!(parse_dim("height=abc").unwrap_err().contains("abc"));
        assert!(parse_dim("height=0").unwrap_err().contains("at least 1"));
        assert!(parse_dim("x[a]=1").unwrap_err().contains("axis"));
    }

    #[test]
    fn shapes_resolve_by_symbol_or_axis_and_name_what_is_missing() {
        let dims = vec![parse_dim("h=32").unwrap(), parse_dim("x[0]=1").unwrap()];
        let mut used = vec![false; 2];
        let syms = vec!["".to_string(), "".into(), "h".into(), "w".into()];
        let err = resolve_shape("x", &[-1, 3, -1, -1], &syms, &dims, &mut used).unwrap_err();
        assert!(err.to_string().contains("input `x` axis 3 (`w`)"), "{err}");
        assert!(err.to_string().contains("--dim w=N"), "{err}");

        let dims = vec![
            parse_dim("h=32").unwrap(),
            parse_dim("x[0]=1").unwrap(),
            parse_dim("w=64").unwrap(),
        ];
        let mut used = vec![false; 3];
        let shape = resolve_shape("x", &[-1, 3, -1, -1], &syms, &dims, &mut used).unwrap();
        assert_eq!(shape, vec![1, 3, 32, 64]);
        assert_eq!(used, vec![true, true, true]);

        let mut used = vec![false; 0];
        let err = resolve_shape("ids", &[-1], &[String::new()], &[], &mut used).unwrap_err();
        assert!(err.to_string().contains("--dim 'ids[0]=N'"), "{err}");
    }

    #[test]
    fn filled_inputs_are_deterministic_and_in_range() {
        let mut a = vec![0f32; 1000];
        let mut b = vec![0f32; 1000];
        fill_f32(input_seed(7, 0, 0), &mut a);
        fill_f32(input_seed(7, 0, 0), &mut b);
        assert_eq!(a, b);
        assert!(a.iter().all(|v| (0.0..1.0).contains(v)));
        fill_f32(input_seed(7, 0, 1), &mut b);
        assert_ne!(a, b, "digest inputs must differ from the measured input");
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");

        let mut ints = vec![0i64; 1000];
        fill_int(3, 5, &mut ints);
        assert!(ints.iter().all(|v| (0..5).contains(v)));
        assert!((0..5).all(|k| ints.contains(&k)));
        let mut small = vec![0i32; 10];
        fill_int(3, 5, &mut small);
        assert_eq!(
            small.iter().map(|&v| v as i64).collect::<Vec<_>>(),
            ints[..10]
        );
    }

    #[test]
    fn monotonic_clock_advances_and_wait_until_waits() {
        let t0 = monotonic_ns();
        wait_until(t0 + 2_000_000);
        let t1 = monotonic_ns();
        assert!(t1 >= t0 + 2_000_000);
    }

    #[test]
    fn hex_is_lowercase_two_digits() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
