//! Configuration: `/etc/mpslab/mpslab.toml` plus `conf.d/*.toml` drop-ins over compiled-in defaults.
//!
//! Every error names the file, line, column and key at fault, so an operator on a headless
//! board can fix it from one log line. Loading is pure apart from reading the files and
//! checking that directories can be created.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/mpslab/mpslab.toml";
/// `sockaddr_un.sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

// ---- the validated configuration ------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub telemetry: TelemetryConfig,
    pub mps: MpsConfig,
    pub runtime: RuntimeConfig,
    pub export: ExportConfig,
    pub models: Vec<ModelConfig>,
    pub experiments: Vec<ExperimentConfig>,
    /// The files this configuration was read from, in the order they were applied.
    pub sources: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    /// Overrides the default `RUST_LOG`-style filter, e.g. `"info,mpslab::mps=debug"`.
    pub log_level: String,
    /// Access group allowed to call mutating D-Bus methods (root always may).
    pub control_group: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TelemetryConfig {
    pub tegrastats_path: PathBuf,
    pub tegrastats_interval_ms: u64,
    pub vmstat_interval_ms: u64,
    pub proc_root: PathBuf,
    pub retention_days: u32,
    pub max_db_mb: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MpsConfig {
    pub control_path: PathBuf,
    pub pipe_dir: PathBuf,
    pub log_dir: PathBuf,
    pub default_active_thread_percentage: Option<f64>,
    /// Passed to `set_default_device_pinned_mem_limit`, e.g. `"0=2G"`.
    pub pinned_mem_limit: Option<String>,
    pub call_timeout_ms: u64,
    pub start_timeout_ms: u64,
    pub quit_timeout_s: u64,
    pub server_uid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Cpu,
    Cuda,
    Tensorrt,
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::Tensorrt => "tensorrt",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuntimeConfig {
    pub onnxruntime_path: PathBuf,
    pub provider: Provider,
    /// ONNX Runtime intra-op threads per worker; 0 lets ONNX Runtime choose.
    pub intra_threads: u32,
    pub trt_fp16: bool,
    /// Where `mpslab-worker` lives; `None` means next to `mpslabd`, then `/usr/libexec/mpslab`.
    pub worker_path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportConfig {
    /// Prometheus node-exporter textfile, written atomically.
    pub textfile: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Cls,
    Detect,
    Pose,
    Seg,
    Obb,
    Generic,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Cls => "cls",
            Task::Detect => "detect",
            Task::Pose => "pose",
            Task::Seg => "seg",
            Task::Obb => "obb",
            Task::Generic => "generic",
        }
    }
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "cls" => Task::Cls,
            "detect" => Task::Detect,
            "pose" => Task::Pose,
            "seg" => Task::Seg,
            "obb" => Task::Obb,
            "generic" => Task::Generic,
            other => {
                return Err(format!(
                    "unknown task `{other}`; expected cls, detect, pose, seg, obb or generic"
                ))
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    pub name: String,
    pub path: PathBuf,
    pub task: Task,
    /// Values for dynamic input dimensions, e.g. `{ height = 640, width = 640 }`.
    pub dims: BTreeMap<String, i64>,
    /// Overrides `runtime.intra_threads` for this model.
    pub intra_threads: Option<u32>,
    /// Validation experiments: a data.yaml (detect, pose, seg, obb) or an image-folder root (cls).
    pub dataset: Option<PathBuf>,
    /// Which split of the dataset validation walks: `val`, `test` or `train`.
    pub split: String,
    /// Post-processing and metric thresholds for validation.
    pub val: crate::vision::ValParams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Alone,
    Together,
    Mixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOff {
    Off,
    On,
}

/// What an experiment measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExperimentKind {
    /// Synthetic inputs in a timed loop: latency distributions and output digests.
    #[default]
    Latency,
    /// One pass over each model's dataset: per-image pre/infer/post times and task metrics.
    Validation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// A failed phase is recorded and the run goes on with the next phase.
    Continue,
    /// A failed phase fails the whole run.
    Abort,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExperimentConfig {
    pub name: String,
    pub kind: ExperimentKind,
    pub models: Vec<String>,
    pub modes: Vec<Mode>,
    pub mps: Vec<OnOff>,
    pub iterations: Option<u64>,
    pub duration_s: Option<u64>,
    pub warmup: u64,
    pub repeats: u32,
    pub schedule: Option<String>,
    pub sampling: Vec<OnOff>,
    /// Models that run on MPS in `mixed` mode; the rest run without it.
    pub mixed_mps_models: Vec<String>,
    pub cooldown_s: u64,
    pub phase_timeout_s: u64,
    pub on_failure: FailurePolicy,
    /// Allowed absolute difference between output digests' values; 0 means bit-exact.
    pub output_tolerance: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            daemon: DaemonConfig {
                state_dir: PathBuf::from("/var/lib/mpslab"),
                log_level: "info".into(),
                control_group: "mpslab".into(),
            },
            telemetry: TelemetryConfig {
                tegrastats_path: PathBuf::from("/usr/bin/tegrastats"),
                tegrastats_interval_ms: 1000,
                vmstat_interval_ms: 1000,
                proc_root: PathBuf::from("/proc"),
                retention_days: 30,
                max_db_mb: 1024,
            },
            mps: MpsConfig {
                control_path: PathBuf::from("/usr/bin/nvidia-cuda-mps-control"),
                pipe_dir: PathBuf::from("/run/mpslab/mps"),
                log_dir: PathBuf::from("/var/log/mpslab/mps"),
                default_active_thread_percentage: None,
                pinned_mem_limit: None,
                call_timeout_ms: 5000,
                start_timeout_ms: 20000,
                quit_timeout_s: 10,
                server_uid: None,
            },
            runtime: RuntimeConfig {
                onnxruntime_path: PathBuf::from("/usr/lib/libonnxruntime.so"),
                provider: Provider::Cpu,
                intra_threads: 1,
                trt_fp16: true,
                worker_path: None,
            },
            export: ExportConfig { textfile: None },
            models: Vec::new(),
            experiments: Vec::new(),
            sources: Vec::new(),
        }
    }
}

impl Config {
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }

    pub fn experiment(&self, name: &str) -> Option<&ExperimentConfig> {
        self.experiments.iter().find(|e| e.name == name)
    }

    pub fn db_path(&self) -> PathBuf {
        self.daemon.state_dir.join("mpslab.db")
    }
}

// ---- errors ---------------------------------------------------------------------------------

/// One configuration problem, located precisely enough to fix without guessing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no position (e.g. an unreadable file).
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `telemetry.vmstat_interval_ms` or `experiment[five-models].models`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

// ---- the on-disk shape (every field optional, so drop-ins can override single keys) ----------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    daemon: Option<FileDaemon>,
    telemetry: Option<FileTelemetry>,
    mps: Option<FileMps>,
    runtime: Option<FileRuntime>,
    export: Option<FileExport>,
    #[serde(default)]
    model: Vec<FileModel>,
    #[serde(default)]
    experiment: Vec<FileExperiment>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDaemon {
    state_dir: Option<PathBuf>,
    log_level: Option<String>,
    control_group: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTelemetry {
    tegrastats_path: Option<PathBuf>,
    tegrastats_interval_ms: Option<i64>,
    vmstat_interval_ms: Option<i64>,
    proc_root: Option<PathBuf>,
    retention_days: Option<i64>,
    max_db_mb: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMps {
    control_path: Option<PathBuf>,
    pipe_dir: Option<PathBuf>,
    log_dir: Option<PathBuf>,
    default_active_thread_percentage: Option<f64>,
    pinned_mem_limit: Option<String>,
    call_timeout_ms: Option<i64>,
    start_timeout_ms: Option<i64>,
    quit_timeout_s: Option<i64>,
    server_uid: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRuntime {
    onnxruntime_path: Option<PathBuf>,
    provider: Option<Provider>,
    intra_threads: Option<i64>,
    trt_fp16: Option<bool>,
    worker_path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileExport {
    textfile: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModel {
    name: Option<String>,
    path: Option<PathBuf>,
    task: Option<Task>,
    dims: Option<BTreeMap<String, i64>>,
    intra_threads: Option<i64>,
    dataset: Option<PathBuf>,
    split: Option<String>,
    conf: Option<f64>,
    iou: Option<f64>,
    max_det: Option<i64>,
    report_conf: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileExperiment {
    name: Option<String>,
    kind: Option<ExperimentKind>,
    models: Option<Vec<String>>,
    modes: Option<Vec<Mode>>,
    mps: Option<Vec<OnOff>>,
    iterations: Option<i64>,
    duration_s: Option<i64>,
    warmup: Option<i64>,
    repeats: Option<i64>,
    schedule: Option<String>,
    sampling: Option<Vec<OnOff>>,
    mixed_mps_models: Option<Vec<String>>,
    cooldown_s: Option<i64>,
    phase_timeout_s: Option<i64>,
    on_failure: Option<FailurePolicy>,
    output_tolerance: Option<f64>,
}

// ---- positions ------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Origin {
    file: PathBuf,
    line: usize,
    column: usize,
}

/// Where each key was last set, by canonical path (`model[detect].path`).
#[derive(Debug, Default)]
struct Origins {
    keys: BTreeMap<String, Origin>,
}

impl Origins {
    fn error(&self, key: &str, message: impl Into<String>, fallback_file: &Path) -> ConfigError {
        let (file, line, column) = match self.lookup(key) {
            Some(o) => (o.file.clone(), o.line, o.column),
            None => (fallback_file.to_path_buf(), 0, 0),
        };
        ConfigError {
            file,
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// The key itself, or the nearest enclosing table that has a position.
    fn lookup(&self, key: &str) -> Option<&Origin> {
        let mut k = key;
        loop {
            if let Some(o) = self.keys.get(k) {
                return Some(o);
            }
            k = match k.rfind('.') {
                Some(i) => &k[..i],
                None => return None,
            };
        }
    }
}

/// Byte offset to 1-based (line, column), counting columns in characters.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = src[line_start..offset].chars().count() + 1;
    (line, column)
}

/// A key's canonical path element inside an array of tables: its `name` when it has one.
fn array_elem_label(table: &toml_edit::Table, index: usize) -> String {
    match table.get("name").and_then(|v| v.as_str()) {
        Some(n) => n.to_string(),
        None => format!("#{}", index + 1),
    }
}

struct KeySpan {
    path: String,
    key: std::ops::Range<usize>,
    value: Option<std::ops::Range<usize>>,
}

/// Every key in the document with its span, for locating errors and recording origins.
fn collect_keys(doc: &toml_edit::ImDocument<&str>) -> Vec<KeySpan> {
    fn walk_table(prefix: &str, table: &toml_edit::Table, out: &mut Vec<KeySpan>) {
        for (k, item) in table.iter() {
            let Some((key, _)) = table.get_key_value(k) else {
                continue;
            };
            let path = if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            };
            walk_item(&path, key.span(), item, out);
        }
    }
    fn walk_inline(prefix: &str, table: &toml_edit::InlineTable, out: &mut Vec<KeySpan>) {
        for (k, v) in table.iter() {
            let Some((key, _)) = table.get_key_value(k) else {
                continue;
            };
            let path = format!("{prefix}.{k}");
            if let Some(ks) = key.span() {
                out.push(KeySpan {
                    path: path.clone(),
                    key: ks,
                    value: v.span(),
                });
            }
            if let Some(t) = v.as_inline_table() {
                walk_inline(&path, t, out);
            }
        }
    }
    fn walk_item(
        path: &str,
        key_span: Option<std::ops::Range<usize>>,
        item: &toml_edit::Item,
        out: &mut Vec<KeySpan>,
    ) {
        match item {
            toml_edit::Item::Table(t) => {
                if let Some(ks) = key_span.or_else(|| t.span()) {
                    out.push(KeySpan {
                        path: path.to_string(),
                        key: ks,
                        value: t.span(),
                    });
                }
                walk_table(path, t, out);
            }
            toml_edit::Item::ArrayOfTables(arr) => {
                for (i, t) in arr.iter().enumerate() {
                    let elem = format!("{path}[{}]", array_elem_label(t, i));
                    if let Some(ts) = t.span() {
                        out.push(KeySpan {
                            path: elem.clone(),
                            key: ts.clone(),
                            value: Some(ts),
                        });
                    }
                    walk_table(&elem, t, out);
                }
            }
            toml_edit::Item::Value(v) => {
                if let Some(ks) = key_span {
                    out.push(KeySpan {
                        path: path.to_string(),
                        key: ks,
                        value: v.span(),
                    });
                }
                if let Some(t) = v.as_inline_table() {
                    walk_inline(path, t, out);
                }
            }
            toml_edit::Item::None => {}
        }
    }
    let mut out = Vec::new();
    walk_table("", doc.as_table(), &mut out);
    out
}

/// The innermost key whose key or value span contains `offset`.
fn key_at(keys: &[KeySpan], offset: usize) -> Option<&KeySpan> {
    let hits = |r: &std::ops::Range<usize>| r.contains(&offset) || r.start == offset;
    keys.iter()
        .filter_map(|k| {
            if hits(&k.key) {
                Some((k.key.len(), k))
            } else {
                k.value.as_ref().filter(|v| hits(v)).map(|v| (v.len(), k))
            }
        })
        .min_by_key(|(width, _)| *width)
        .map(|(_, k)| k)
}

// ---- loading --------------------------------------------------------------------------------

/// The files that make up a configuration: the main file, then `conf.d/*.toml` beside it in
/// lexical order (later files override earlier ones).
pub fn config_files(main: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = vec![main.to_path_buf()];
    let dropin_dir = main
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("conf.d");
    match std::fs::read_dir(&dropin_dir) {
        Ok(rd) => {
            let mut dropins: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .collect();
            dropins.sort();
            files.extend(dropins);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(ConfigError {
                file: dropin_dir,
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot list drop-in directory: {e}"),
            })
        }
    }
    Ok(files)
}

/// Load and validate the configuration. `path = None` means the default path, which may be
/// absent (compiled-in defaults apply); an explicit path must exist.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let main = path.unwrap_or(Path::new(DEFAULT_CONFIG_PATH));
    if path.is_none() && !main.exists() {
        let mut files = config_files(main)?;
        files.remove(0);
        return load_sources_from_files(&files);
    }
    let files = config_files(main)?;
    load_sources_from_files(&files)
}

fn load_sources_from_files(files: &[PathBuf]) -> Result<Config, ConfigError> {
    let mut sources = Vec::with_capacity(files.len());
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| ConfigError {
            file: f.clone(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read configuration file: {e}"),
        })?;
        sources.push((f.clone(), text));
    }
    load_sources(&sources)
}

/// Load from in-memory sources `(file name, text)`, applied in order. Used by tests and by
/// `load`; checks that directories can be created but creates nothing.
pub fn load_sources(sources: &[(PathBuf, String)]) -> Result<Config, ConfigError> {
    let mut cfg = Config::default();
    let mut origins = Origins::default();
    let mut model_files: Vec<(String, FileModel)> = Vec::new();
    let mut experiment_files: Vec<(String, FileExperiment)> = Vec::new();

    for (file, text) in sources {
        let parsed = parse_file(file, text, &mut origins)?;
        apply(&mut cfg, parsed.0, file, text)?;
        for (i, m) in parsed.1.into_iter().enumerate() {
            let name = m.name.clone().ok_or_else(|| {
                origins.error(&format!("model[#{}]", i + 1), "model has no `name`", file)
            })?;
            merge_named(&mut model_files, name, m, merge_model);
        }
        for (i, e) in parsed.2.into_iter().enumerate() {
            let name = e.name.clone().ok_or_else(|| {
                origins.error(
                    &format!("experiment[#{}]", i + 1),
                    "experiment has no `name`",
                    file,
                )
            })?;
            merge_named(&mut experiment_files, name, e, merge_experiment);
        }
        cfg.sources.push(file.clone());
    }
    let last_file = sources
        .last()
        .map(|s| s.0.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let ctx = Ctx {
        origins: &origins,
        fallback: &last_file,
    };

    for (name, m) in model_files {
        cfg.models.push(build_model(&ctx, &name, m)?);
    }
    for (name, e) in experiment_files {
        cfg.experiments.push(build_experiment(&ctx, &name, e)?);
    }
    validate(&ctx, &cfg)?;
    Ok(cfg)
}

struct Ctx<'a> {
    origins: &'a Origins,
    fallback: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.origins.error(key, message, self.fallback)
    }
}

type Parsed = (FileConfig, Vec<FileModel>, Vec<FileExperiment>);

fn parse_file(file: &Path, text: &str, origins: &mut Origins) -> Result<Parsed, ConfigError> {
    let doc = toml_edit::ImDocument::parse(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
        ConfigError {
            file: file.to_path_buf(),
            line,
            column,
            key: key_on_line(text, line),
            message: format!(
                "TOML syntax error: {}",
                e.message().trim().replace('\n', "; ")
            ),
        }
    })?;
    let keys = collect_keys(&doc);
    for k in &keys {
        let (line, column) = line_col(text, k.key.start);
        origins.keys.insert(
            k.path.clone(),
            Origin {
                file: file.to_path_buf(),
                line,
                column,
            },
        );
    }
    let mut parsed: FileConfig = toml::from_str(text).map_err(|e| {
        let span = e.span();
        let located = span.as_ref().and_then(|s| key_at(&keys, s.start));
        let (line, column) = span
            .as_ref()
            .map(|s| line_col(text, s.start))
            .unwrap_or((0, 0));
        let raw = e.message().trim().to_string();
        let (key, message) = describe_serde_error(&raw, located.map(|k| k.path.as_str()));
        ConfigError {
            file: file.to_path_buf(),
            line,
            column,
            key,
            message,
        }
    })?;
    let models = std::mem::take(&mut parsed.model);
    let experiments = std::mem::take(&mut parsed.experiment);
    Ok((parsed, models, experiments))
}

/// Best-effort key for a line that does not parse: the `[table]` above it plus the text before
/// `=` on the line itself.
fn key_on_line(text: &str, line: usize) -> String {
    let mut table = String::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if i + 1 == line {
            let name = t.split_once('=').map(|(k, _)| k.trim()).unwrap_or("");
            let name = if name.starts_with('[') { "" } else { name };
            return match (table.is_empty(), name.is_empty()) {
                (_, true) => table,
                (true, false) => name.to_string(),
                (false, false) => format!("{table}.{name}"),
            };
        }
        if let Some(h) = t.strip_prefix('[') {
            table = h
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
        }
    }
    table
}

/// Turn serde's wording into an operator's: name the key and suggest a spelling.
fn describe_serde_error(raw: &str, located: Option<&str>) -> (String, String) {
    if let Some(rest) = raw.strip_prefix("unknown field `") {
        let (field, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let expected: Vec<&str> = tail
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|s| !s.is_empty())
            .collect();
        let mut msg = format!("unknown key `{field}`");
        if let Some(best) = did_you_mean(field, &expected) {
            msg.push_str(&format!("; did you mean `{best}`?"));
        } else if !expected.is_empty() {
            msg.push_str(&format!("; expected one of: {}", expected.join(", ")));
        }
        let key = located
            .map(str::to_string)
            .unwrap_or_else(|| field.to_string());
        return (key, msg);
    }
    let key = located.unwrap_or_default().to_string();
    (key, raw.to_string())
}

fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), *c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn merge_named<T>(list: &mut Vec<(String, T)>, name: String, item: T, merge: fn(&mut T, T)) {
    match list.iter_mut().find(|(n, _)| *n == name) {
        Some((_, existing)) => merge(existing, item),
        None => list.push((name, item)),
    }
}

macro_rules! override_fields {
    ($dst:expr, $src:expr, $($f:ident),+) => {
        $( if $src.$f.is_some() { $dst.$f = $src.$f; } )+
    };
}

fn merge_model(dst: &mut FileModel, src: FileModel) {
    override_fields!(dst, src, path, task, dims, intra_threads);
}

fn merge_experiment(dst: &mut FileExperiment, src: FileExperiment) {
    override_fields!(
        dst,
        src,
        models,
        modes,
        mps,
        iterations,
        duration_s,
        warmup,
        repeats,
        schedule,
        sampling,
        mixed_mps_models,
        cooldown_s,
        phase_timeout_s,
        on_failure,
        output_tolerance
    );
}

/// A numeric key checked against its allowed range at the place it was written.
struct Ranged<'a> {
    file: &'a Path,
    text: &'a str,
    section: &'a str,
}

impl Ranged<'_> {
    fn check(&self, key: &str, v: i64, min: i64, max: i64, unit: &str) -> Result<u64, ConfigError> {
        if v < min || v > max {
            let path = format!("{}.{}", self.section, key);
            let (line, column) = find_key_line(self.text, self.section, key).unwrap_or((0, 0));
            return Err(ConfigError {
                file: self.file.to_path_buf(),
                line,
                column,
                key: path,
                message: format!("{v} is out of range; allowed {min}..={max} {unit}"),
            });
        }
        Ok(v as u64)
    }
}

/// Position of `key` inside `[section]` of one file (for plain tables only).
fn find_key_line(text: &str, section: &str, key: &str) -> Option<(usize, usize)> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let keys = collect_keys(&doc);
    let path = format!("{section}.{key}");
    keys.iter()
        .find(|k| k.path == path)
        .map(|k| line_col(text, k.key.start))
}

fn apply(cfg: &mut Config, f: FileConfig, file: &Path, text: &str) -> Result<(), ConfigError> {
    if let Some(d) = f.daemon {
        override_into(&mut cfg.daemon.state_dir, d.state_dir);
        override_into(&mut cfg.daemon.log_level, d.log_level);
        override_into(&mut cfg.daemon.control_group, d.control_group);
    }
    if let Some(t) = f.telemetry {
        let r = Ranged {
            file,
            text,
            section: "telemetry",
        };
        override_into(&mut cfg.telemetry.tegrastats_path, t.tegrastats_path);
        override_into(&mut cfg.telemetry.proc_root, t.proc_root);
        if let Some(v) = t.tegrastats_interval_ms {
            cfg.telemetry.tegrastats_interval_ms =
                r.check("tegrastats_interval_ms", v, 10, 60_000, "ms")?;
        }
        if let Some(v) = t.vmstat_interval_ms {
            cfg.telemetry.vmstat_interval_ms =
                r.check("vmstat_interval_ms", v, 100, 60_000, "ms")?;
        }
        if let Some(v) = t.retention_days {
            cfg.telemetry.retention_days = r.check("retention_days", v, 1, 3650, "days")? as u32;
        }
        if let Some(v) = t.max_db_mb {
            cfg.telemetry.max_db_mb = r.check("max_db_mb", v, 16, 1 << 20, "MB")?;
        }
    }
    if let Some(m) = f.mps {
        let r = Ranged {
            file,
            text,
            section: "mps",
        };
        override_into(&mut cfg.mps.control_path, m.control_path);
        override_into(&mut cfg.mps.pipe_dir, m.pipe_dir);
        override_into(&mut cfg.mps.log_dir, m.log_dir);
        if let Some(p) = m.default_active_thread_percentage {
            if !(p > 0.0 && p <= 100.0) {
                let (line, column) = find_key_line(text, "mps", "default_active_thread_percentage")
                    .unwrap_or((0, 0));
                return Err(ConfigError {
                    file: file.to_path_buf(),
                    line,
                    column,
                    key: "mps.default_active_thread_percentage".into(),
                    message: format!("{p} is out of range; allowed above 0 and up to 100 (%)"),
                });
            }
            cfg.mps.default_active_thread_percentage = Some(p);
        }
        if m.pinned_mem_limit.is_some() {
            cfg.mps.pinned_mem_limit = m.pinned_mem_limit;
        }
        if let Some(v) = m.call_timeout_ms {
            cfg.mps.call_timeout_ms = r.check("call_timeout_ms", v, 100, 120_000, "ms")?;
        }
        if let Some(v) = m.start_timeout_ms {
            cfg.mps.start_timeout_ms = r.check("start_timeout_ms", v, 500, 600_000, "ms")?;
        }
        if let Some(v) = m.quit_timeout_s {
            cfg.mps.quit_timeout_s = r.check("quit_timeout_s", v, 1, 600, "s")?;
        }
        if let Some(v) = m.server_uid {
            cfg.mps.server_uid = Some(r.check("server_uid", v, 0, u32::MAX as i64 - 1, "")? as u32);
        }
    }
    if let Some(rt) = f.runtime {
        let r = Ranged {
            file,
            text,
            section: "runtime",
        };
        override_into(&mut cfg.runtime.onnxruntime_path, rt.onnxruntime_path);
        override_into(&mut cfg.runtime.provider, rt.provider);
        override_into(&mut cfg.runtime.trt_fp16, rt.trt_fp16);
        if let Some(v) = rt.intra_threads {
            cfg.runtime.intra_threads = r.check("intra_threads", v, 0, 256, "threads")? as u32;
        }
        if rt.worker_path.is_some() {
            cfg.runtime.worker_path = rt.worker_path.map(|p| relative_to(file, p));
        }
    }
    if let Some(e) = f.export {
        if e.textfile.is_some() {
            cfg.export.textfile = e.textfile;
        }
    }
    Ok(())
}

fn override_into<T>(dst: &mut T, src: Option<T>) {
    if let Some(v) = src {
        *dst = v;
    }
}

/// Model paths may be written relative to the file that names them.
fn relative_to(file: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn build_model(ctx: &Ctx, name: &str, m: FileModel) -> Result<ModelConfig, ConfigError> {
    let base = format!("model[{name}]");
    if !valid_name(name) {
        return Err(ctx.err(
            &format!("{base}.name"),
            format!(
                "model name {name:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"
            ),
        ));
    }
    let path = m
        .path
        .ok_or_else(|| ctx.err(&base, format!("model `{name}` has no `path`")))?;
    let file = ctx
        .origins
        .lookup(&format!("{base}.path"))
        .map(|o| o.file.clone())
        .unwrap_or_else(|| ctx.fallback.to_path_buf());
    let intra_threads = match m.intra_threads {
        Some(v) if !(0..=256).contains(&v) => {
            return Err(ctx.err(
                &format!("{base}.intra_threads"),
                format!("{v} is out of range; allowed 0..=256 threads"),
            ))
        }
        Some(v) => Some(v as u32),
        None => None,
    };
    let dims = m.dims.unwrap_or_default();
    if let Some((k, v)) = dims.iter().find(|(_, v)| **v <= 0) {
        return Err(ctx.err(
            &format!("{base}.dims.{k}"),
            format!("dimension `{k}` must be positive, got {v}"),
        ));
    }
    let fraction = |key: &str, v: Option<f64>, default: f32, zero_ok: bool| {
        let v = v.unwrap_or(default as f64);
        if v.is_finite() && v <= 1.0 && (v > 0.0 || (zero_ok && v == 0.0)) {
            Ok(v as f32)
        } else {
            let range = if zero_ok { "0..=1" } else { "0 < value <= 1" };
            Err(ctx.err(
                &format!("{base}.{key}"),
                format!("{v} is out of range; allowed {range}"),
            ))
        }
    };
    let defaults = crate::vision::ValParams::default();
    let val = crate::vision::ValParams {
        conf: fraction("conf", m.conf, defaults.conf, true)?,
        iou: fraction("iou", m.iou, defaults.iou, false)?,
        report_conf: fraction("report_conf", m.report_conf, defaults.report_conf, true)?,
        max_det: match m.max_det {
            None => defaults.max_det,
            Some(v) if (1..=100_000).contains(&v) => v as usize,
            Some(v) => {
                return Err(ctx.err(
                    &format!("{base}.max_det"),
                    format!("{v} is out of range; allowed 1..=100000"),
                ))
            }
        },
        ..defaults
    };
    let split = m.split.unwrap_or_else(|| "val".into());
    if !["val", "test", "train"].contains(&split.as_str()) {
        return Err(ctx.err(
            &format!("{base}.split"),
            format!("unknown split `{split}`; expected val, test or train"),
        ));
    }
    let dataset = m.dataset.map(|d| {
        let file = ctx
            .origins
            .lookup(&format!("{base}.dataset"))
            .map(|o| o.file.clone())
            .unwrap_or_else(|| ctx.fallback.to_path_buf());
        relative_to(&file, d)
    });
    Ok(ModelConfig {
        name: name.to_string(),
        path: relative_to(&file, path),
        task: m.task.unwrap_or(Task::Generic),
        dims,
        intra_threads,
        dataset,
        split,
        val,
    })
}

fn build_experiment(
    ctx: &Ctx,
    name: &str,
    e: FileExperiment,
) -> Result<ExperimentConfig, ConfigError> {
    let base = format!("experiment[{name}]");
    let k = |key: &str| format!("{base}.{key}");
    if !valid_name(name) {
        return Err(ctx.err(
            &k("name"),
            format!("experiment name {name:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"),
        ));
    }
    let nonneg =
        |key: &str, v: Option<i64>, min: i64, max: i64| -> Result<Option<u64>, ConfigError> {
            match v {
                Some(v) if v < min || v > max => Err(ctx.err(
                    &k(key),
                    format!("{v} is out of range; allowed {min}..={max}"),
                )),
                Some(v) => Ok(Some(v as u64)),
                None => Ok(None),
            }
        };
    let kind = e.kind.unwrap_or_default();
    let iterations = nonneg("iterations", e.iterations, 1, 100_000_000)?;
    let duration_s = nonneg("duration_s", e.duration_s, 1, 86_400)?;
    if kind == ExperimentKind::Validation && duration_s.is_some() {
        return Err(ctx.err(
            &k("duration_s"),
            "a validation experiment walks each dataset once; use `iterations` to cap the images",
        ));
    }
    if iterations.is_some() && duration_s.is_some() {
        return Err(ctx.err(
            &k("duration_s"),
            "set either `iterations` or `duration_s`, not both",
        ));
    }
    let models = e
        .models
        .ok_or_else(|| ctx.err(&base, format!("experiment `{name}` has no `models`")))?;
    if models.is_empty() {
        return Err(ctx.err(&k("models"), "`models` must name at least one model"));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = models.iter().find(|m| !seen.insert(m.as_str())) {
        return Err(ctx.err(&k("models"), format!("model `{dup}` is listed twice")));
    }
    let modes = dedup(e.modes.unwrap_or_else(|| vec![Mode::Alone, Mode::Together]));
    let mps = dedup(e.mps.unwrap_or_else(|| vec![OnOff::Off, OnOff::On]));
    let sampling = dedup(e.sampling.unwrap_or_else(|| vec![OnOff::On]));
    for (key, empty) in [
        ("modes", modes.is_empty()),
        ("mps", mps.is_empty()),
        ("sampling", sampling.is_empty()),
    ] {
        if empty {
            return Err(ctx.err(&k(key), format!("`{key}` must not be empty")));
        }
    }
    let mixed_mps_models = e.mixed_mps_models.unwrap_or_default();
    if modes.contains(&Mode::Mixed) && mixed_mps_models.is_empty() {
        return Err(ctx.err(
            &k("modes"),
            "mode `mixed` needs `mixed_mps_models`, the models that run on MPS",
        ));
    }
    if let Some(m) = mixed_mps_models.iter().find(|m| !models.contains(m)) {
        return Err(ctx.err(
            &k("mixed_mps_models"),
            format!("`{m}` is not one of this experiment's models"),
        ));
    }
    if let Some(s) = &e.schedule {
        if let Err(err) = crate::experiment::schedule::Schedule::parse(s) {
            return Err(ctx.err(
                &k("schedule"),
                format!(
                    "{err}; expected 5 fields (minute hour day month weekday), e.g. \"0 3 * * *\""
                ),
            ));
        }
    }
    let tolerance = e.output_tolerance.unwrap_or(0.0);
    if !(tolerance >= 0.0 && tolerance.is_finite()) {
        return Err(ctx.err(&k("output_tolerance"), "must be a finite number >= 0"));
    }
    Ok(ExperimentConfig {
        name: name.to_string(),
        kind,
        models,
        modes,
        mps,
        iterations: match kind {
            // Validation: `iterations` caps the images; none means the whole split.
            ExperimentKind::Validation => iterations,
            ExperimentKind::Latency if duration_s.is_none() => Some(iterations.unwrap_or(500)),
            ExperimentKind::Latency => None,
        },
        duration_s,
        warmup: nonneg("warmup", e.warmup, 0, 1_000_000)?.unwrap_or(50),
        repeats: nonneg("repeats", e.repeats, 1, 100)?.unwrap_or(1) as u32,
        schedule: e.schedule,
        sampling,
        mixed_mps_models,
        cooldown_s: nonneg("cooldown_s", e.cooldown_s, 0, 3600)?.unwrap_or(2),
        phase_timeout_s: nonneg("phase_timeout_s", e.phase_timeout_s, 1, 86_400)?.unwrap_or(1800),
        on_failure: e.on_failure.unwrap_or(FailurePolicy::Continue),
        output_tolerance: tolerance,
    })
}

fn dedup<T: Ord + Copy>(mut v: Vec<T>) -> Vec<T> {
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|x| seen.insert(*x));
    v
}

/// Checks that span sections: references between models and experiments, paths.
fn validate(ctx: &Ctx, cfg: &Config) -> Result<(), ConfigError> {
    for e in &cfg.experiments {
        for m in &e.models {
            if cfg.model(m).is_none() {
                let known: Vec<&str> = cfg.models.iter().map(|m| m.name.as_str()).collect();
                let hint = match did_you_mean(m, &known) {
                    Some(s) => format!("; did you mean `{s}`?"),
                    None if known.is_empty() => "; no [[model]] is configured".to_string(),
                    None => format!("; configured models: {}", known.join(", ")),
                };
                return Err(ctx.err(
                    &format!("experiment[{}].models", e.name),
                    format!("unknown model `{m}`{hint}"),
                ));
            }
        }
        if e.kind == ExperimentKind::Validation {
            for model in e.models.iter().filter_map(|m| cfg.model(m)) {
                let base = format!("model[{}]", model.name);
                if model.task == Task::Generic {
                    return Err(ctx.err(
                        &format!("{base}.task"),
                        format!(
                            "validation experiment `{}` needs model `{}` to have a task: cls, detect, pose, seg or obb",
                            e.name, model.name
                        ),
                    ));
                }
                if model.dataset.is_none() {
                    return Err(ctx.err(
                        &base,
                        format!(
                            "validation experiment `{}` needs model `{}` to have a `dataset` (a data.yaml, or an image-folder root for cls)",
                            e.name, model.name
                        ),
                    ));
                }
            }
        }
    }
    let control = cfg.mps.pipe_dir.join("control");
    let len = control.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(ctx.err(
            "mps.pipe_dir",
            format!(
                "socket path {} is {len} bytes; a unix socket path must fit {MAX_SOCKET_PATH} bytes",
                control.display()
            ),
        ));
    }
    for (key, p) in [
        ("daemon.state_dir", &cfg.daemon.state_dir),
        ("mps.pipe_dir", &cfg.mps.pipe_dir),
        ("mps.log_dir", &cfg.mps.log_dir),
    ] {
        if !p.is_absolute() {
            return Err(ctx.err(key, format!("{} must be an absolute path", p.display())));
        }
        if let Err(why) = creatable_dir(p) {
            return Err(ctx.err(key, why));
        }
    }
    if let Some(t) = &cfg.export.textfile {
        if let Some(dir) = t.parent() {
            if let Err(why) = creatable_dir(dir) {
                return Err(ctx.err("export.textfile", why));
            }
        }
    }
    if !valid_name(&cfg.daemon.control_group) {
        return Err(ctx.err("daemon.control_group", "not a valid group name"));
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&cfg.daemon.log_level) {
        return Err(ctx.err("daemon.log_level", format!("invalid log filter: {e}")));
    }
    Ok(())
}

/// Whether `dir` exists as a directory or could be created: its nearest existing ancestor must
/// be a directory we may write into. Creates nothing.
pub fn creatable_dir(dir: &Path) -> Result<(), String> {
    let mut p = dir;
    loop {
        match std::fs::metadata(p) {
            Ok(md) if md.is_dir() => {
                if p == dir {
                    return Ok(());
                }
                return if writable(p) {
                    Ok(())
                } else {
                    Err(format!(
                        "cannot create {}: {} is not writable",
                        dir.display(),
                        p.display()
                    ))
                };
            }
            Ok(_) => {
                return Err(format!(
                    "cannot create {}: {} exists and is not a directory",
                    dir.display(),
                    p.display()
                ))
            }
            Err(_) => match p.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                _ => {
                    return Err(format!(
                        "cannot create {}: no existing parent",
                        dir.display()
                    ))
                }
            },
        }
    }
}

fn writable(p: &Path) -> bool {
    nix::unistd::access(
        p,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_one(text: &str) -> Result<Config, ConfigError> {
        load_sources(&[(PathBuf::from("/etc/mpslab/mpslab.toml"), text.to_string())])
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = load_one("").unwrap();
        assert_eq!(c.telemetry.tegrastats_interval_ms, 1000);
        assert_eq!(c.runtime.provider, Provider::Cpu);
        assert!(c.models.is_empty());
    }

    #[test]
    fn unknown_key_suggests_spelling() {
        let e = load_one("[telemetry]\ntegrastat_path = \"/x\"\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 1), "{e}");
        assert_eq!(e.key, "telemetry.tegrastat_path");
        assert!(e.message.contains("did you mean `tegrastats_path`"), "{e}");
    }

    #[test]
    fn wrong_type_names_key() {
        let e = load_one("[telemetry]\n\nvmstat_interval_ms = \"fast\"\n").unwrap_err();
        assert_eq!(e.key, "telemetry.vmstat_interval_ms", "{e}");
        assert_eq!(e.line, 3);
    }

    #[test]
    fn dropin_overrides_and_adds_models() {
        let main = "[[model]]\nname = \"a\"\npath = \"/m/a.onnx\"\n[telemetry]\nvmstat_interval_ms = 2000\n";
        let dropin = "[[model]]\nname = \"a\"\npath = \"/m/a2.onnx\"\n[[model]]\nname = \"b\"\npath = \"b.onnx\"\n[telemetry]\nvmstat_interval_ms = 500\n";
        let c = load_sources(&[
            (PathBuf::from("/etc/mpslab/mpslab.toml"), main.into()),
            (PathBuf::from("/etc/mpslab/conf.d/10-x.toml"), dropin.into()),
        ])
        .unwrap();
        assert_eq!(c.telemetry.vmstat_interval_ms, 500);
        assert_eq!(c.model("a").unwrap().path, PathBuf::from("/m/a2.onnx"));
        assert_eq!(
            c.model("b").unwrap().path,
            PathBuf::from("/etc/mpslab/conf.d/b.onnx")
        );
    }

    #[test]
    fn validation_keys_parse_with_ultralytics_defaults() {
        let c = load_sources(&[(
            PathBuf::from("/etc/mpslab/conf.d/20-acc.toml"),
            "[[model]]\nname = \"det\"\npath = \"/m/det.onnx\"\ntask = \"detect\"\n\
             dataset = \"coco8/data.yaml\"\niou = 0.6\nmax_det = 100\n\
             [[model]]\nname = \"cls\"\npath = \"/m/cls.onnx\"\ntask = \"cls\"\n\
             dataset = \"/data/imagenet10\"\nsplit = \"test\"\n\
             [[experiment]]\nname = \"acc\"\nkind = \"validation\"\nmodels = [\"det\", \"cls\"]\n\
             iterations = 50\n"
                .into(),
        )])
        .unwrap();
        let det = c.model("det").unwrap();
        // Relative to the file that names it, like model paths.
        assert_eq!(
            det.dataset.as_deref(),
            Some(Path::new("/etc/mpslab/conf.d/coco8/data.yaml"))
        );
        assert_eq!(det.split, "val");
        assert_eq!(
            (det.val.conf, det.val.iou, det.val.max_det),
            (0.001, 0.6, 100)
        );
        assert_eq!(det.val.report_conf, 0.25);
        assert_eq!(c.model("cls").unwrap().split, "test");
        let e = c.experiment("acc").unwrap();
        assert_eq!(e.kind, ExperimentKind::Validation);
        assert_eq!(e.iterations, Some(50), "caps the images");
        // Latency stays the default kind.
        let c = load_one("[[model]]\nname = \"a\"\npath = \"/m/a.onnx\"\n[[experiment]]\nname = \"e\"\nmodels = [\"a\"]\n").unwrap();
        assert_eq!(c.experiment("e").unwrap().kind, ExperimentKind::Latency);
    }

    #[test]
    fn validation_needs_a_task() {
        let e = load_one(
            "[[model]]\nname = \"g\"\npath = \"/m/g.onnx\"\ndataset = \"/d\"\n\
             [[experiment]]\nname = \"acc\"\nkind = \"validation\"\nmodels = [\"g\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "model[g].task", "{e}");
        assert!(e.message.contains("needs model `g` to have a task"), "{e}");
    }

    #[test]
    fn error_in_dropin_names_dropin() {
        let e = load_sources(&[
            (PathBuf::from("/etc/mpslab/mpslab.toml"), String::new()),
            (
                PathBuf::from("/etc/mpslab/conf.d/20-bad.toml"),
                "[mps]\nquit_timeout_s = 0\n".into(),
            ),
        ])
        .unwrap_err();
        assert_eq!(e.file, PathBuf::from("/etc/mpslab/conf.d/20-bad.toml"));
        assert_eq!((e.line, e.key.as_str()), (2, "mps.quit_timeout_s"));
    }

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
    }
}
