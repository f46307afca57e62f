//! Messages between the phase executor (parent) and one `mpslab-worker` (child).
//!
//! Transport: the worker's stdin carries [`ParentMsg`]s, its stdout carries [`WorkerMsg`]s, one
//! JSON object per line (`\n`-terminated); stderr stays free for human-readable errors.
//!
//! Why line-delimited JSON rather than a binary format: the volume is tiny once iteration records
//! are batched (one line per 64 iterations or 100 ms, a record is three integers written as a
//! JSON array), the messages are readable with `strace`/`cat` when debugging a stuck phase, serde
//! is already a dependency, and a line framing makes a torn or foreign write show up as a
//! decode error naming the line instead of silently desynchronising a length-prefixed stream.
//!
//! Sequence: worker `ready` (after load and warm-up) → parent `go` → worker `records`… → parent
//! `stop` (or the worker's own iteration/duration limit) → worker `digests` → worker `done`.
//! A worker that fails sends `error` (best effort) and exits non-zero.

use serde::{Deserialize, Serialize};

/// One measured iteration. Times are `CLOCK_MONOTONIC` nanoseconds, comparable across the
/// processes of one boot, which is what makes the together window computable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(u64, u64, u64)", into = "(u64, u64, u64)")]
pub struct Record {
    /// 0-based index of the measured iteration (warm-up iterations are not counted).
    pub index: u64,
    pub start_ns: u64,
    pub duration_ns: u64,
}

impl Record {
    pub fn end_ns(&self) -> u64 {
        self.start_ns.saturating_add(self.duration_ns)
    }
}

impl From<(u64, u64, u64)> for Record {
    fn from((index, start_ns, duration_ns): (u64, u64, u64)) -> Self {
        Record {
            index,
            start_ns,
            duration_ns,
        }
    }
}

impl From<Record> for (u64, u64, u64) {
    fn from(r: Record) -> Self {
        (r.index, r.start_ns, r.duration_ns)
    }
}

/// Where the time of one validation image went: preprocess (letterbox, normalise, tensor),
/// inference (`session.run`) and postprocess (decode, NMS, masks, mapping back), like
/// Ultralytics' speed report. The matching [`Record`] spans all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(u64, u64, u64, u64)", into = "(u64, u64, u64, u64)")]
pub struct Stage {
    pub index: u64,
    pub pre_ns: u64,
    pub infer_ns: u64,
    pub post_ns: u64,
}

impl From<(u64, u64, u64, u64)> for Stage {
    fn from((index, pre_ns, infer_ns, post_ns): (u64, u64, u64, u64)) -> Self {
        Stage {
            index,
            pre_ns,
            infer_ns,
            post_ns,
        }
    }
}

impl From<Stage> for (u64, u64, u64, u64) {
    fn from(s: Stage) -> Self {
        (s.index, s.pre_ns, s.infer_ns, s.post_ns)
    }
}

/// What a validation worker found over its dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationSummary {
    /// Images in the dataset split, before any was skipped.
    pub dataset_images: u64,
    /// Images that went through the model and into the metrics.
    pub images: u64,
    pub metrics: crate::vision::metrics::TaskMetrics,
    /// sha256 over every image's predictions (classes, scores, boxes, keypoints, masks) in
    /// dataset order: equal digests mean bit-identical predictions.
    pub predictions_sha256: String,
    /// Files that were skipped or used as background, one entry each.
    pub issues: Vec<crate::vision::DatasetIssue>,
}

/// A model input or output as the model declares it (`-1` = dynamic), and for inputs the
/// concrete shape the worker feeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    pub name: String,
    /// ONNX element type name, e.g. `float32`, `int64`.
    pub dtype: String,
    pub declared_shape: Vec<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<i64>>,
}

/// Digest of one output for one fixed input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSummary {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<i64>,
    /// sha256 (hex) of the output's raw little-endian bytes.
    pub sha256: String,
    /// The first few values, converted to f64, for a max-abs-diff comparison across runs whose
    /// outputs are not bit-identical (GPU, fp16).
    pub head: Vec<f64>,
}

/// Outputs of the model for the fixed input number `input`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputDigest {
    /// Which fixed input (0..K); the same K on two runs means the same input bytes.
    pub input: u32,
    /// sha256 (hex) over all outputs' raw bytes, in output order.
    pub sha256: String,
    pub outputs: Vec<OutputSummary>,
}

/// Why the measured loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The parent sent `stop`.
    Stopped,
    /// `--iterations` reached.
    Iterations,
    /// `--duration-s` elapsed.
    Duration,
    /// A validation worker walked its whole dataset.
    Dataset,
    /// SIGTERM (or SIGINT).
    Signal,
    /// The parent closed the control pipe.
    ParentGone,
}

/// Worker → parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMsg {
    Ready {
        pid: u32,
        model: String,
        provider: String,
        inputs: Vec<TensorInfo>,
        outputs: Vec<TensorInfo>,
        load_ms: f64,
        warmup: u64,
    },
    Records {
        records: Vec<Record>,
        /// Validation only: the stage split of the same iterations.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        stages: Vec<Stage>,
    },
    /// Validation only, after the last records.
    Validation(Box<ValidationSummary>),
    Digests {
        digests: Vec<OutputDigest>,
    },
    Done {
        iterations: u64,
        reason: StopReason,
    },
    Error {
        message: String,
    },
}

/// Parent → worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ParentMsg {
    /// Start the measured loop; with `start_at_ns` (CLOCK_MONOTONIC) the first iteration starts
    /// at that instant, which is how several workers are released together.
    Go {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_at_ns: Option<u64>,
    },
    /// Finish the current iteration, flush records, send digests and `done`.
    Stop,
}

#[derive(Debug, thiserror::Error)]
#[error("protocol line is not a valid message ({source}): {line:?}")]
pub struct DecodeError {
    pub line: String,
    #[source]
    pub source: serde_json::Error,
}

fn encode<T: Serialize>(msg: &T) -> String {
    // Serialising these plain structs cannot fail (no maps with non-string keys, no custom
    // serialisers that error); fall back to an error line rather than panicking regardless.
    let mut line = serde_json::to_string(msg)
        .unwrap_or_else(|e| format!(r#"{{"type":"error","message":"encode failed: {e}"}}"#));
    line.push('\n');
    line
}

fn decode<T: for<'de> Deserialize<'de>>(line: &str) -> Result<T, DecodeError> {
    let trimmed = line.trim_end_matches(['\n', '\r']);
    serde_json::from_str(trimmed).map_err(|source| DecodeError {
        line: trimmed.chars().take(200).collect(),
        source,
    })
}

impl WorkerMsg {
    /// One `\n`-terminated line.
    pub fn encode(&self) -> String {
        encode(self)
    }
    pub fn decode(line: &str) -> Result<Self, DecodeError> {
        decode(line)
    }
}

impl ParentMsg {
    /// One `\n`-terminated line.
    pub fn encode(&self) -> String {
        encode(self)
    }
    pub fn decode(line: &str) -> Result<Self, DecodeError> {
        decode(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_compact_arrays_and_round_trip() {
        let msg = WorkerMsg::Records {
            records: vec![
                Record {
                    index: 0,
                    start_ns: 10,
                    duration_ns: 5,
                },
                Record {
                    index: 1,
                    start_ns: 15,
                    duration_ns: u64::MAX,
                },
            ],
            stages: Vec::new(),
        };
        let line = msg.encode();
        assert_eq!(
            line,
            format!(
                "{{\"type\":\"records\",\"records\":[[0,10,5],[1,15,{}]]}}\n",
                u64::MAX
            )
        );
        assert_eq!(WorkerMsg::decode(&line).unwrap(), msg);
    }

    #[test]
    fn every_worker_message_round_trips_as_one_line() {
        let msgs = vec![
            WorkerMsg::Ready {
                pid: 42,
                model: "m.onnx".into(),
                provider: "cpu".into(),
                inputs: vec![TensorInfo {
                    name: "x".into(),
                    dtype: "float32".into(),
                    declared_shape: vec![-1, 3, 48, 192],
                    shape: Some(vec![1, 3, 48, 192]),
                }],
                outputs: vec![TensorInfo {
                    name: "y\nwith newline".into(),
                    dtype: "float32".into(),
                    declared_shape: vec![-1, 2],
                    shape: None,
                }],
                load_ms: 12.5,
                warmup: 3,
            },
            WorkerMsg::Digests {
                digests: vec![OutputDigest {
                    input: 1,
                    sha256: "ab".into(),
                    outputs: vec![OutputSummary {
                        name: "y".into(),
                        dtype: "float32".into(),
                        shape: vec![1, 2],
                        sha256: "cd".into(),
                        head: vec![0.25, -1.5],
                    }],
                }],
            },
            WorkerMsg::Done {
                iterations: 7,
                reason: StopReason::ParentGone,
            },
            WorkerMsg::Records {
                records: vec![Record {
                    index: 3,
                    start_ns: 100,
                    duration_ns: 60,
                }],
                stages: vec![Stage {
                    index: 3,
                    pre_ns: 10,
                    infer_ns: 40,
                    post_ns: 10,
                }],
            },
            WorkerMsg::Validation(Box::new(ValidationSummary {
                dataset_images: 3,
                images: 2,
                metrics: crate::vision::metrics::TaskMetrics {
                    images: 2,
                    instances: 0,
                    detections: 0,
                    top1: Some(0.5),
                    top5: Some(1.0),
                    boxes: None,
                    masks: None,
                    keypoints: None,
                },
                predictions_sha256: "ef".into(),
                issues: vec![crate::vision::DatasetIssue {
                    file: "images/val/x.jpg".into(),
                    line: None,
                    kind: crate::vision::IssueKind::BadImage,
                    message: "not an image".into(),
                }],
            })),
            WorkerMsg::Error {
                message: "model \"a\" missing".into(),
            },
        ];
        for msg in msgs {
            let line = msg.encode();
            assert!(line.ends_with('\n'));
            assert_eq!(line.matches('\n').count(), 1, "embedded newline in {line}");
            assert_eq!(WorkerMsg::decode(&line).unwrap(), msg);
        }
    }

    #[test]
    fn parent_messages_have_stable_wire_form() {
        assert_eq!(
            ParentMsg::Go {
                start_at_ns: Some(5)
            }
            .encode(),
            "{\"type\":\"go\",\"start_at_ns\":5}\n"
        );
        assert_eq!(
            ParentMsg::Go { start_at_ns: None }.encode(),
            "{\"type\":\"go\"}\n"
        );
        assert_eq!(ParentMsg::Stop.encode(), "{\"type\":\"stop\"}\n");
        assert_eq!(
            ParentMsg::decode("{\"type\":\"go\"}\r\n").unwrap(),
            ParentMsg::Go { start_at_ns: None }
        );
    }

    #[test]
    fn garbage_is_a_decode_error_quoting_the_line() {
        let err = WorkerMsg::decode("Warning: something printed to stdout\n").unwrap_err();
        assert!(err.to_string().contains("Warning: something"), "{err}");
        let err = ParentMsg::decode("{\"type\":\"launch\"}").unwrap_err();
        assert!(err.to_string().contains("launch"), "{err}");
    }

    #[test]
    fn record_end_saturates() {
        let r = Record {
            index: 0,
            start_ns: u64::MAX - 1,
            duration_ns: 5,
        };
        assert_eq!(r.end_ns(), u64::MAX);
    }
}
