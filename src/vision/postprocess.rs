//! Post-processing of Ultralytics YOLO v8/11 ONNX outputs, as Ultralytics does it.
//!
//! References (ultralytics `main`, 8.3.x): `utils/nms.py` (`non_max_suppression`,
//! `TorchNMS.fast_nms` used for rotated boxes), `utils/ops.py` (`scale_boxes`, `scale_coords`,
//! `crop_mask`, `process_mask`, `scale_masks`, `regularize_rboxes`, `xywhr2xyxyxyxy`),
//! `utils/metrics.py` (`batch_probiou`) and `models/yolo/*/predict.py`.
//!
//! Output layouts (batch 1, channels first as exported):
//! - cls: `[1, nc]` probabilities (softmax applied here when the export left logits);
//! - detect: `[1, 4+nc, N]`, rows `cx, cy, w, h, score_0..score_nc`;
//! - pose: `[1, 4+nc+K*D, N]`, keypoints in input pixels, `D = 3` adds a sigmoided confidence;
//! - seg: `[1, 4+nc+nm, N]` and prototypes `[1, nm, mh, mw]` (nm = 32);
//! - obb: `[1, 4+nc+1, N]`, the last row the angle in radians.

use super::{BBox, Detection, Keypoint, Letterbox, Mask, OutputView, Prediction, RBox, ValParams};
use crate::config::Task;

/// Class offset for class-aware NMS (Ultralytics `max_wh`).
pub const MAX_WH: f32 = 7680.0;
/// Most candidates that go into NMS, highest scores first (Ultralytics `max_nms`).
pub const MAX_NMS: usize = 30000;
/// Prototype count of the Ultralytics segmentation head, used when the export leaves it dynamic.
pub const DEFAULT_NUM_MASKS: usize = 32;

const PROBIOU_EPS: f32 = 1e-7;

/// Where a model's outputs are and how to split their rows; worked out once at model load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLayout {
    pub task: Task,
    pub num_classes: usize,
    /// pose: keypoints per object and values per keypoint (2 or 3), from data.yaml `kpt_shape`.
    pub kpt_shape: Option<(usize, usize)>,
    /// seg: index of the prototype output.
    pub proto_output: Option<usize>,
    /// Index of the prediction output (cls: the probabilities).
    pub pred_output: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PostprocessError {
    #[error("task `{task}` has no Ultralytics post-processing")]
    UnsupportedTask { task: &'static str },
    #[error("{task} expects {expected}; the model has {found}")]
    OutputCount {
        task: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("{task} expects {expected}; output `{output}` is {shape}{detail}")]
    OutputShape {
        task: &'static str,
        expected: &'static str,
        output: String,
        shape: String,
        detail: String,
    },
    #[error(
        "output `{output}` {shape} holds {model} classes but the dataset has {dataset} (names in data.yaml)"
    )]
    ClassCount {
        output: String,
        shape: String,
        model: usize,
        dataset: usize,
    },
    #[error("pose needs kpt_shape from data.yaml to split output `{output}` {shape}")]
    MissingKptShape { output: String, shape: String },
    #[error("kpt_shape [{k}, {d}] is not usable: keypoints need 2 or 3 values and K > 0")]
    BadKptShape { k: usize, d: usize },
    #[error("{task} needs output #{index} but inference returned {count} outputs")]
    MissingOutput {
        task: &'static str,
        index: usize,
        count: usize,
    },
    #[error("output `{output}` claims shape {shape} but holds {len} values")]
    DataLength {
        output: String,
        shape: String,
        len: usize,
    },
    #[error("output `{output}` holds a non-finite probability at class {class}")]
    NonFiniteProbability { output: String, class: usize },
    #[error("letterbox is unusable: {0}")]
    BadLetterbox(String),
}

fn task_name(task: Task) -> &'static str {
    match task {
        Task::Cls => "cls",
        Task::Detect => "detect",
        Task::Pose => "pose",
        Task::Seg => "seg",
        Task::Obb => "obb",
        Task::Generic => "generic",
    }
}

fn expected_text(task: Task) -> &'static str {
    match task {
        Task::Cls => "one output [1, nc]",
        Task::Detect => "one output [1, 4+nc, N]",
        Task::Pose => "one output [1, 4+nc+K*D, N]",
        Task::Seg => "outputs [1, 4+nc+32, N] and prototypes [1, 32, H/4, W/4]",
        Task::Obb => "one output [1, 4+nc+1, N]",
        Task::Generic => "nothing",
    }
}

fn shape_text(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

fn outputs_text(outputs: &[(&str, &[i64])]) -> String {
    if outputs.is_empty() {
        return "no outputs".into();
    }
    let list: Vec<String> = outputs
        .iter()
        .map(|(n, s)| format!("`{n}` {}", shape_text(s)))
        .collect();
    format!("{} outputs: {}", outputs.len(), list.join(", "))
}

fn shape_error(task: Task, name: &str, shape: &[i64], detail: &str) -> PostprocessError {
    PostprocessError::OutputShape {
        task: task_name(task),
        expected: expected_text(task),
        output: name.to_string(),
        shape: shape_text(shape),
        detail: if detail.is_empty() {
            String::new()
        } else {
            format!(" ({detail})")
        },
    }
}

/// A batch dimension that may hold one image: 1 or dynamic.
fn batch_ok(d: i64) -> bool {
    d == 1 || d < 0
}

/// At model load: from the declared output shapes (-1 = dynamic) and the task, work out the
/// layout. `num_classes` from the dataset must match the model; `None` infers it.
pub fn layout(
    task: Task,
    outputs: &[(&str, &[i64])],
    num_classes: Option<usize>,
    kpt_shape: Option<(usize, usize)>,
) -> Result<ModelLayout, PostprocessError> {
    let count_err = || PostprocessError::OutputCount {
        task: task_name(task),
        expected: expected_text(task),
        found: outputs_text(outputs),
    };
    let check_nc = |name: &str, shape: &[i64], model: usize| -> Result<usize, PostprocessError> {
        match num_classes {
            Some(dataset) if dataset != model => Err(PostprocessError::ClassCount {
                output: name.to_string(),
                shape: shape_text(shape),
                model,
                dataset,
            }),
            _ => Ok(model),
        }
    };
    match task {
        Task::Generic => Err(PostprocessError::UnsupportedTask {
            task: task_name(task),
        }),
        Task::Cls => {
            let [(name, shape)] = outputs else {
                return Err(count_err());
            };
            if shape.len() != 2 || !batch_ok(shape[0]) {
                return Err(shape_error(task, name, shape, "expected rank 2, batch 1"));
            }
            let nc = match (shape[1], num_classes) {
                (d, _) if d > 0 => d as usize,
                (_, Some(n)) => n,
                _ => {
                    return Err(shape_error(
                        task,
                        name,
                        shape,
                        "class count is dynamic and the dataset gives none",
                    ))
                }
            };
            Ok(ModelLayout {
                task,
                num_classes: check_nc(name, shape, nc)?,
                kpt_shape: None,
                proto_output: None,
                pred_output: 0,
            })
        }
        Task::Detect | Task::Pose | Task::Obb => {
            let [(name, shape)] = outputs else {
                return Err(count_err());
            };
            let rows = pred_rows(task, name, shape)?;
            let (fixed, kpt) = match task {
                Task::Detect => (4, None),
                Task::Obb => (5, None),
                _ => {
                    let Some((k, d)) = kpt_shape else {
                        return Err(PostprocessError::MissingKptShape {
                            output: name.to_string(),
                            shape: shape_text(shape),
                        });
                    };
                    if k == 0 || !(d == 2 || d == 3) {
                        return Err(PostprocessError::BadKptShape { k, d });
                    }
                    (4 + k * d, Some((k, d)))
                }
            };
            if rows <= fixed {
                let detail = match kpt {
                    Some((k, d)) => format!(
                        "{rows} rows leave no class scores after 4 box rows and {k}x{d} keypoint values"
                    ),
                    None => format!("{rows} rows leave no class scores"),
                };
                return Err(shape_error(task, name, shape, &detail));
            }
            Ok(ModelLayout {
                task,
                num_classes: check_nc(name, shape, rows - fixed)?,
                kpt_shape: kpt,
                proto_output: None,
                pred_output: 0,
            })
        }
        Task::Seg => {
            if outputs.len() != 2 {
                return Err(count_err());
            }
            let pred = outputs.iter().position(|(_, s)| s.len() == 3);
            let proto = outputs.iter().position(|(_, s)| s.len() == 4);
            let (Some(pred), Some(proto)) = (pred, proto) else {
                return Err(count_err());
            };
            let (pname, pshape) = outputs[proto];
            if !batch_ok(pshape[0]) {
                return Err(shape_error(task, pname, pshape, "batch must be 1"));
            }
            let nm = if pshape[1] > 0 {
                pshape[1] as usize
            } else {
                DEFAULT_NUM_MASKS
            };
            let (name, shape) = outputs[pred];
            let rows = pred_rows(task, name, shape)?;
            if rows <= 4 + nm {
                let detail =
                    format!("{rows} rows leave no class scores after 4 box rows and {nm} mask coefficients");
                return Err(shape_error(task, name, shape, &detail));
            }
            Ok(ModelLayout {
                task,
                num_classes: check_nc(name, shape, rows - 4 - nm)?,
                kpt_shape: None,
                proto_output: Some(proto),
                pred_output: pred,
            })
        }
    }
}

/// Rows of a `[1, rows, N]` prediction output, which must be static.
fn pred_rows(task: Task, name: &str, shape: &[i64]) -> Result<usize, PostprocessError> {
    if shape.len() != 3 || !batch_ok(shape[0]) {
        return Err(shape_error(task, name, shape, "expected rank 3, batch 1"));
    }
    if shape[1] <= 0 {
        return Err(shape_error(task, name, shape, "the row count must be static"));
    }
    Ok(shape[1] as usize)
}

/// One image's outputs (batch 1) → prediction in original-image pixels.
pub fn postprocess(
    layout: &ModelLayout,
    outputs: &[OutputView],
    letterbox: &Letterbox,
    params: &ValParams,
) -> Result<Prediction, PostprocessError> {
    let task = layout.task;
    let get = |index: usize| {
        outputs
            .get(index)
            .ok_or(PostprocessError::MissingOutput {
                task: task_name(task),
                index,
                count: outputs.len(),
            })
            .and_then(checked_view)
    };
    if task == Task::Cls {
        return classes(layout, get(layout.pred_output)?);
    }
    check_letterbox(letterbox)?;
    let pred = get(layout.pred_output)?;
    let nc = layout.num_classes;
    let extra = match task {
        Task::Detect => 0,
        Task::Obb => 1,
        Task::Pose => layout.kpt_shape.map(|(k, d)| k * d).unwrap_or(0),
        Task::Seg => {
            let index = layout.proto_output.unwrap_or(1);
            let proto = get(index)?;
            if proto.shape.len() != 4 || proto.shape[0] != 1 || proto.shape[1] <= 0 {
                return Err(shape_error(task, proto.name, proto.shape, "prototypes"));
            }
            proto.shape[1] as usize
        }
        Task::Cls | Task::Generic => {
            return Err(PostprocessError::UnsupportedTask {
                task: task_name(task),
            })
        }
    };
    let rows = 4 + nc + extra;
    if pred.shape.len() != 3 || pred.shape[0] != 1 || pred.shape[1] != rows as i64 {
        let detail = format!("this model's layout needs {rows} rows");
        return Err(shape_error(task, pred.name, pred.shape, &detail));
    }
    let table = Table {
        data: pred.data,
        n: pred.shape[2] as usize,
    };
    let rotated = task == Task::Obb;
    let kept = select(&table, nc, rotated, params);
    let dets = match task {
        Task::Detect => kept
            .iter()
            .map(|c| plain(c, scale_box(c.xyxy(), letterbox)))
            .collect(),
        Task::Obb => kept
            .iter()
            .map(|c| {
                let angle = table.at(4 + nc, c.anchor);
                let r = regularize_rbox(RBox {
                    cx: c.b[0],
                    cy: c.b[1],
                    w: c.b[2],
                    h: c.b[3],
                    angle,
                });
                let r = scale_rbox(r, letterbox);
                Detection {
                    rbox: Some(r),
                    ..plain(c, rbox_hull(&r))
                }
            })
            .collect(),
        Task::Pose => {
            let (k, d) = layout.kpt_shape.unwrap_or((0, 3));
            kept.iter()
                .map(|c| {
                    let keypoints = (0..k)
                        .map(|i| {
                            let row = 4 + nc + i * d;
                            let (x, y) = scale_point(
                                table.at(row, c.anchor),
                                table.at(row + 1, c.anchor),
                                letterbox,
                            );
                            let v = if d == 3 {
                                table.at(row + 2, c.anchor)
                            } else {
                                1.0
                            };
                            Keypoint { x, y, v }
                        })
                        .collect();
                    Detection {
                        keypoints,
                        ..plain(c, scale_box(c.xyxy(), letterbox))
                    }
                })
                .collect()
        }
        _ => {
            let proto = get(layout.proto_output.unwrap_or(1))?;
            let protos = Protos::new(proto.shape, proto.data);
            let sampler = MaskSampler::new(&protos, letterbox);
            let mut coeffs = vec![0f32; extra];
            kept.iter()
                .map(|c| {
                    for (m, v) in coeffs.iter_mut().enumerate() {
                        *v = table.at(4 + nc + m, c.anchor);
                    }
                    let mask = sampler.mask(&protos, &coeffs, c.xyxy(), letterbox);
                    Detection {
                        mask: Some(mask),
                        ..plain(c, scale_box(c.xyxy(), letterbox))
                    }
                })
                .collect()
        }
    };
    Ok(Prediction::Objects(dets))
}

fn checked_view<'a>(v: &OutputView<'a>) -> Result<OutputView<'a>, PostprocessError> {
    let mut len: usize = 1;
    for &d in v.shape {
        len = usize::try_from(d)
            .ok()
            .and_then(|d| len.checked_mul(d))
            .unwrap_or(usize::MAX);
    }
    if len != v.data.len() {
        return Err(PostprocessError::DataLength {
            output: v.name.to_string(),
            shape: shape_text(v.shape),
            len: v.data.len(),
        });
    }
    Ok(*v)
}

fn check_letterbox(lb: &Letterbox) -> Result<(), PostprocessError> {
    let finite = lb.gain.is_finite() && lb.pad_x.is_finite() && lb.pad_y.is_finite();
    if !finite || lb.gain <= 0.0 {
        return Err(PostprocessError::BadLetterbox(format!(
            "gain {} and padding ({}, {}) must be finite, gain positive",
            lb.gain, lb.pad_x, lb.pad_y
        )));
    }
    if lb.orig_w == 0 || lb.orig_h == 0 || lb.input_w == 0 || lb.input_h == 0 {
        return Err(PostprocessError::BadLetterbox(format!(
            "image {}x{} and input {}x{} must not be empty",
            lb.orig_w, lb.orig_h, lb.input_w, lb.input_h
        )));
    }
    Ok(())
}

fn classes(layout: &ModelLayout, out: OutputView) -> Result<Prediction, PostprocessError> {
    let nc = layout.num_classes;
    if out.shape.len() != 2 || out.shape[0] != 1 || out.shape[1] != nc as i64 {
        let detail = format!("this model's layout has {nc} classes");
        return Err(shape_error(Task::Cls, out.name, out.shape, &detail));
    }
    if let Some(class) = out.data.iter().position(|p| !p.is_finite()) {
        return Err(PostprocessError::NonFiniteProbability {
            output: out.name.to_string(),
            class,
        });
    }
    let sum: f32 = out.data.iter().sum();
    let probabilities = out.data.iter().all(|p| (0.0..=1.0).contains(p)) && (sum - 1.0).abs() < 0.01;
    let probs = if probabilities {
        out.data.to_vec()
    } else {
        softmax(out.data)
    };
    Ok(Prediction::Classes { probs })
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// A `[rows, n]` channels-first prediction, read in place (the logical transpose).
struct Table<'a> {
    data: &'a [f32],
    n: usize,
}

impl Table<'_> {
    fn at(&self, row: usize, anchor: usize) -> f32 {
        self.data[row * self.n + anchor]
    }
}

/// A candidate box: `b` is xyxy for axis-aligned tasks, xywh for obb.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    anchor: usize,
    class: usize,
    score: f32,
    b: [f32; 4],
}

impl Candidate {
    fn xyxy(&self) -> BBox {
        BBox {
            x1: self.b[0],
            y1: self.b[1],
            x2: self.b[2],
            y2: self.b[3],
        }
    }
}

fn plain(c: &Candidate, bbox: BBox) -> Detection {
    Detection {
        class: c.class as u32,
        score: c.score,
        bbox,
        rbox: None,
        keypoints: Vec::new(),
        mask: None,
    }
}

/// Ultralytics `non_max_suppression` for one image: confidence filter, best class or every
/// class above `conf`, at most [`MAX_NMS`] candidates, class-aware NMS, at most `max_det`.
fn select(table: &Table, nc: usize, rotated: bool, params: &ValParams) -> Vec<Candidate> {
    let conf = params.conf;
    // Ultralytics: `multi_label &= nc > 1`.
    let multi_label = params.multi_label && nc > 1;
    // NaN scores are skipped: they never beat the threshold.
    let score = |class: usize, anchor: usize| {
        let s = table.at(4 + class, anchor);
        if s.is_nan() {
            f32::NEG_INFINITY
        } else {
            s
        }
    };
    let mut cands = Vec::new();
    for anchor in 0..table.n {
        let (mut best, mut best_class) = (f32::NEG_INFINITY, 0);
        for class in 0..nc {
            let s = score(class, anchor);
            if s > best {
                best = s;
                best_class = class;
            }
        }
        if best <= conf {
            continue;
        }
        let (x, y, w, h) = (
            table.at(0, anchor),
            table.at(1, anchor),
            table.at(2, anchor),
            table.at(3, anchor),
        );
        if !(x.is_finite() && y.is_finite() && w.is_finite() && h.is_finite()) {
            continue;
        }
        if rotated && !table.at(4 + nc, anchor).is_finite() {
            continue;
        }
        let b = if rotated {
            [x, y, w, h]
        } else {
            [x - w / 2.0, y - h / 2.0, x + w / 2.0, y + h / 2.0]
        };
        if multi_label {
            for class in 0..nc {
                let s = score(class, anchor);
                if s > conf {
                    cands.push(Candidate {
                        anchor,
                        class,
                        score: s,
                        b,
                    });
                }
            }
        } else {
            cands.push(Candidate {
                anchor,
                class: best_class,
                score: best,
                b,
            });
        }
    }
    if cands.len() > MAX_NMS {
        cands.sort_by(|a, b| b.score.total_cmp(&a.score));
        cands.truncate(MAX_NMS);
    }
    let scores: Vec<f32> = cands.iter().map(|c| c.score).collect();
    let keep = if rotated {
        let boxes: Vec<RBox> = cands
            .iter()
            .map(|c| {
                let off = c.class as f32 * MAX_WH;
                RBox {
                    cx: c.b[0] + off,
                    cy: c.b[1] + off,
                    w: c.b[2],
                    h: c.b[3],
                    angle: table.at(4 + nc, c.anchor),
                }
            })
            .collect();
        nms_rotated(&boxes, &scores, params.iou)
    } else {
        let boxes: Vec<BBox> = cands
            .iter()
            .map(|c| {
                let off = c.class as f32 * MAX_WH;
                BBox {
                    x1: c.b[0] + off,
                    y1: c.b[1] + off,
                    x2: c.b[2] + off,
                    y2: c.b[3] + off,
                }
            })
            .collect();
        nms(&boxes, &scores, params.iou)
    };
    keep.into_iter()
        .take(params.max_det)
        .map(|i| cands[i])
        .collect()
}

/// Indices by descending score; ties keep input order, NaN scores last.
fn order_by_score(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    let key = |i: usize| {
        if scores[i].is_nan() {
            f32::NEG_INFINITY
        } else {
            scores[i]
        }
    };
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
    order
}

/// Greedy NMS with torchvision semantics: by descending score, keep a box and suppress every
/// later box whose IoU with it is above `iou_threshold`. Returns kept indices, best first.
pub fn nms(boxes: &[BBox], scores: &[f32], iou_threshold: f32) -> Vec<usize> {
    let n = boxes.len().min(scores.len());
    let order = order_by_score(&scores[..n]);
    let areas: Vec<f32> = boxes[..n]
        .iter()
        .map(|b| (b.x2 - b.x1) * (b.y2 - b.y1))
        .collect();
    let mut suppressed = vec![false; n];
    let mut keep = Vec::new();
    for (pos, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let a = &boxes[i];
        for &j in &order[pos + 1..] {
            if suppressed[j] {
                continue;
            }
            let b = &boxes[j];
            let w = (a.x2.min(b.x2) - a.x1.max(b.x1)).max(0.0);
            let h = (a.y2.min(b.y2) - a.y1.max(b.y1)).max(0.0);
            let inter = w * h;
            if inter > 0.0 && inter / (areas[i] + areas[j] - inter) > iou_threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// Rotated NMS as Ultralytics does it (`TorchNMS.fast_nms` with `batch_probiou`, called from
/// `non_max_suppression(rotated=True)`; the older `ops.nms_rotated` is the same rule): sort by
/// score, and keep a box unless some higher-scored box, kept or not, has a probabilistic IoU
/// `>= iou_threshold` with it. Returns kept indices, best first.
pub fn nms_rotated(boxes: &[RBox], scores: &[f32], iou_threshold: f32) -> Vec<usize> {
    let n = boxes.len().min(scores.len());
    let order = order_by_score(&scores[..n]);
    let covs: Vec<Cov> = boxes[..n].iter().map(Cov::of).collect();
    // Above this Bhattacharyya distance the probabilistic IoU is below the threshold.
    let bd_limit = {
        let one_minus = (1.0 - iou_threshold as f64).max(0.0);
        let e = 1.0 - one_minus * one_minus + PROBIOU_EPS as f64;
        if e > 0.0 {
            -e.ln() * 1.01 + 1e-3
        } else {
            f64::INFINITY
        }
    };
    let mut keep = Vec::new();
    for (pos, &j) in order.iter().enumerate() {
        let bj = &boxes[j];
        let suppressed = order[..pos].iter().any(|&i| {
            let bi = &boxes[i];
            // t1 + t2 = d' (S1+S2)^-1 d / 4 >= |d|^2 / (4 trace(S1+S2)); t3 >= 0.
            let (dx, dy) = ((bi.cx - bj.cx) as f64, (bi.cy - bj.cy) as f64);
            let trace = (covs[i].a + covs[i].b + covs[j].a + covs[j].b) as f64;
            if trace > 0.0 && (dx * dx + dy * dy) / (4.0 * trace) > bd_limit {
                return false;
            }
            probiou_cov(bi, &covs[i], bj, &covs[j]) >= iou_threshold
        });
        if !suppressed {
            keep.push(j);
        }
    }
    keep
}

/// Covariance of a rotated box's Gaussian (Ultralytics `_get_covariance_matrix`).
struct Cov {
    a: f32,
    b: f32,
    c: f32,
}

impl Cov {
    fn of(r: &RBox) -> Cov {
        let (a, b) = (r.w * r.w / 12.0, r.h * r.h / 12.0);
        let (sin, cos) = r.angle.sin_cos();
        let (cos2, sin2) = (cos * cos, sin * sin);
        Cov {
            a: a * cos2 + b * sin2,
            b: a * sin2 + b * cos2,
            c: (a - b) * cos * sin,
        }
    }
}

/// Probabilistic IoU of two rotated boxes (Ultralytics `batch_probiou` for one pair):
/// 1 - Hellinger distance of their Gaussians.
pub fn probiou(a: &RBox, b: &RBox) -> f32 {
    probiou_cov(a, &Cov::of(a), b, &Cov::of(b))
}

fn probiou_cov(r1: &RBox, c1: &Cov, r2: &RBox, c2: &Cov) -> f32 {
    let eps = PROBIOU_EPS;
    let (a, b, c) = (c1.a + c2.a, c1.b + c2.b, c1.c + c2.c);
    let den = a * b - c * c + eps;
    let t1 = ((a * (r1.cy - r2.cy).powi(2) + b * (r1.cx - r2.cx).powi(2)) / den) * 0.25;
    let t2 = ((c * (r2.cx - r1.cx) * (r1.cy - r2.cy)) / den) * 0.5;
    let det1 = (c1.a * c1.b - c1.c * c1.c).max(0.0);
    let det2 = (c2.a * c2.b - c2.c * c2.c).max(0.0);
    let t3 = ((a * b - c * c) / (4.0 * (det1 * det2).sqrt() + eps) + eps).ln() * 0.5;
    let bd = (t1 + t2 + t3).clamp(eps, 100.0);
    let hd = (1.0 - (-bd).exp() + eps).sqrt();
    1.0 - hd
}

/// Ultralytics `regularize_rboxes`: angle into [0, pi/2), swapping width and height when the
/// angle (mod pi) is at or past pi/2.
pub fn regularize_rbox(r: RBox) -> RBox {
    use std::f32::consts::{FRAC_PI_2, PI};
    let swap = r.angle.rem_euclid(PI) >= FRAC_PI_2;
    let (w, h) = if swap { (r.h, r.w) } else { (r.w, r.h) };
    RBox {
        w,
        h,
        angle: r.angle.rem_euclid(FRAC_PI_2),
        ..r
    }
}

/// Corners of a rotated box (Ultralytics `xywhr2xyxyxyxy`).
pub fn rbox_corners(r: &RBox) -> [[f32; 2]; 4] {
    let (sin, cos) = r.angle.sin_cos();
    let (v1x, v1y) = (r.w / 2.0 * cos, r.w / 2.0 * sin);
    let (v2x, v2y) = (-r.h / 2.0 * sin, r.h / 2.0 * cos);
    [
        [r.cx + v1x + v2x, r.cy + v1y + v2y],
        [r.cx + v1x - v2x, r.cy + v1y - v2y],
        [r.cx - v1x - v2x, r.cy - v1y - v2y],
        [r.cx - v1x + v2x, r.cy - v1y + v2y],
    ]
}

/// Axis-aligned hull of a rotated box.
pub fn rbox_hull(r: &RBox) -> BBox {
    let pts = rbox_corners(r);
    let mut hull = BBox {
        x1: f32::INFINITY,
        y1: f32::INFINITY,
        x2: f32::NEG_INFINITY,
        y2: f32::NEG_INFINITY,
    };
    for [x, y] in pts {
        hull.x1 = hull.x1.min(x);
        hull.y1 = hull.y1.min(y);
        hull.x2 = hull.x2.max(x);
        hull.y2 = hull.y2.max(y);
    }
    hull
}

/// Ultralytics `scale_boxes`: input pixels → original pixels, clipped to the image.
pub fn scale_box(b: BBox, lb: &Letterbox) -> BBox {
    let (x1, y1) = scale_point(b.x1, b.y1, lb);
    let (x2, y2) = scale_point(b.x2, b.y2, lb);
    BBox { x1, y1, x2, y2 }
}

/// Ultralytics `scale_coords` for one point: input pixels → original pixels, clipped.
pub fn scale_point(x: f32, y: f32, lb: &Letterbox) -> (f32, f32) {
    (
        ((x - lb.pad_x) / lb.gain).clamp(0.0, lb.orig_w as f32),
        ((y - lb.pad_y) / lb.gain).clamp(0.0, lb.orig_h as f32),
    )
}

/// Ultralytics `scale_boxes(xywh=True)` on a rotated box: centre and size rescaled, not
/// clipped (as Ultralytics leaves obb boxes).
pub fn scale_rbox(r: RBox, lb: &Letterbox) -> RBox {
    RBox {
        cx: (r.cx - lb.pad_x) / lb.gain,
        cy: (r.cy - lb.pad_y) / lb.gain,
        w: r.w / lb.gain,
        h: r.h / lb.gain,
        angle: r.angle,
    }
}

/// Prototypes `[nm, mh, mw]` of one image.
struct Protos<'a> {
    data: &'a [f32],
    nm: usize,
    mh: usize,
    mw: usize,
}

impl<'a> Protos<'a> {
    /// `shape` was checked to be `[1, nm, mh, mw]` with matching data length.
    fn new(shape: &[i64], data: &'a [f32]) -> Protos<'a> {
        Protos {
            data,
            nm: shape[1] as usize,
            mh: shape[2].max(0) as usize,
            mw: shape[3].max(0) as usize,
        }
    }
}

/// Source pixels and weights of one output pixel of a bilinear resize (PyTorch
/// `F.interpolate(mode="bilinear", align_corners=False)`).
#[derive(Debug, Clone, Copy)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

fn taps(input: usize, output: usize) -> Vec<Tap> {
    if input == 0 {
        return Vec::new();
    }
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            let w1 = src - i0 as f32;
            Tap {
                i0,
                i1,
                w0: 1.0 - w1,
                w1,
            }
        })
        .collect()
}

/// Outputs whose taps touch sources in `[lo, hi)`; taps are monotonic, so they are a range.
fn touched(taps: &[Tap], lo: usize, hi: usize) -> std::ops::Range<usize> {
    let start = taps.partition_point(|t| t.i1 < lo);
    let end = taps.partition_point(|t| t.i0 < hi);
    start..end.max(start)
}

/// Interpolation tables shared by every mask of one image.
struct MaskSampler {
    /// Proto grid → model input.
    up_x: Vec<Tap>,
    up_y: Vec<Tap>,
    /// Letterbox content (input pixels, offset by `left`/`top`) → original image.
    down_x: Vec<Tap>,
    down_y: Vec<Tap>,
    left: usize,
    top: usize,
}

impl MaskSampler {
    fn new(p: &Protos, lb: &Letterbox) -> MaskSampler {
        let (iw, ih) = (lb.input_w as usize, lb.input_h as usize);
        // The letterbox content is `round(orig * gain)` pixels from the left/top border, as
        // Ultralytics `LetterBox` pads; `scale_masks` cuts exactly that region out.
        let left = (lb.pad_x.round().max(0.0) as usize).min(iw);
        let top = (lb.pad_y.round().max(0.0) as usize).min(ih);
        let cw = ((lb.orig_w as f32 * lb.gain).round() as usize).clamp(1, iw - left.min(iw - 1));
        let ch = ((lb.orig_h as f32 * lb.gain).round() as usize).clamp(1, ih - top.min(ih - 1));
        MaskSampler {
            up_x: taps(p.mw, iw),
            up_y: taps(p.mh, ih),
            down_x: taps(cw, lb.orig_w as usize),
            down_y: taps(ch, lb.orig_h as usize),
            left: left.min(iw - cw),
            top: top.min(ih - ch),
        }
    }

    /// Ultralytics `process_mask(upsample=True)` then `scale_masks` to the original image:
    /// mask logits `coeffs · protos`, cropped to the box on the proto grid (`crop_mask`, the
    /// `r >= x1 & r < x2` rule), bilinear to the input, `> 0`, cut the letterbox content out,
    /// bilinear to the original size, `> 0.5`. Only the region the box can reach is computed.
    fn mask(&self, p: &Protos, coeffs: &[f32], b: BBox, lb: &Letterbox) -> Mask {
        let (ow, oh) = (lb.orig_w as usize, lb.orig_h as usize);
        let mut out = Mask {
            width: lb.orig_w,
            height: lb.orig_h,
            data: vec![0u8; ow * oh],
        };
        let (iw, ih) = (self.up_x.len(), self.up_y.len());
        if p.mw == 0 || p.mh == 0 || iw == 0 || ih == 0 {
            return out;
        }
        // crop_mask on the proto grid: column c kept when x1 <= c < x2 (box scaled to the grid).
        let grid = |v: f32, ratio: f32, n: usize| -> usize {
            let g = (v * ratio).ceil();
            if g.is_nan() || g <= 0.0 {
                0
            } else {
                (g as usize).min(n)
            }
        };
        let (rx, ry) = (p.mw as f32 / iw as f32, p.mh as f32 / ih as f32);
        let (c0, c1) = (grid(b.x1, rx, p.mw), grid(b.x2, rx, p.mw));
        let (r0, r1) = (grid(b.y1, ry, p.mh), grid(b.y2, ry, p.mh));
        if c0 >= c1 || r0 >= r1 {
            return out;
        }
        let (gw, gh) = (c1 - c0, r1 - r0);
        let plane = p.mh * p.mw;
        let mut logits = vec![0f32; gw * gh];
        for (k, &coef) in coeffs.iter().enumerate().take(p.nm) {
            let proto = &p.data[k * plane..(k + 1) * plane];
            for r in 0..gh {
                let src = &proto[(r0 + r) * p.mw + c0..(r0 + r) * p.mw + c1];
                for (dst, &v) in logits[r * gw..(r + 1) * gw].iter_mut().zip(src) {
                    *dst += coef * v;
                }
            }
        }
        // Logit at a proto cell, zero outside the crop.
        let cell = |r: usize, c: usize| -> f32 {
            if (r0..r1).contains(&r) && (c0..c1).contains(&c) {
                logits[(r - r0) * gw + (c - c0)]
            } else {
                0.0
            }
        };
        // Binary mask at input size, on the input pixels the crop can reach.
        let xs = touched(&self.up_x, c0, c1);
        let ys = touched(&self.up_y, r0, r1);
        let bw = xs.len();
        let mut binary = vec![0f32; bw * ys.len()];
        for (row, y) in ys.clone().enumerate() {
            let ty = self.up_y[y];
            for (col, x) in xs.clone().enumerate() {
                let tx = self.up_x[x];
                let top = tx.w0 * cell(ty.i0, tx.i0) + tx.w1 * cell(ty.i0, tx.i1);
                let bottom = tx.w0 * cell(ty.i1, tx.i0) + tx.w1 * cell(ty.i1, tx.i1);
                if ty.w0 * top + ty.w1 * bottom > 0.0 {
                    binary[row * bw + col] = 1.0;
                }
            }
        }
        // scale_masks: the letterbox content region, bilinear to the original image.
        let at = |y: usize, x: usize| -> f32 {
            let (y, x) = (y + self.top, x + self.left);
            if ys.contains(&y) && xs.contains(&x) {
                binary[(y - ys.start) * bw + (x - xs.start)]
            } else {
                0.0
            }
        };
        let lo = |start: usize, off: usize| start.saturating_sub(off);
        let ox = touched(&self.down_x, lo(xs.start, self.left), lo(xs.end, self.left));
        let oy = touched(&self.down_y, lo(ys.start, self.top), lo(ys.end, self.top));
        for y in oy {
            let ty = self.down_y[y];
            for x in ox.clone() {
                let tx = self.down_x[x];
                let top = tx.w0 * at(ty.i0, tx.i0) + tx.w1 * at(ty.i0, tx.i1);
                let bottom = tx.w0 * at(ty.i1, tx.i0) + tx.w1 * at(ty.i1, tx.i1);
                if ty.w0 * top + ty.w1 * bottom > 0.5 {
                    out.data[y * ow + x] = 1;
                }
            }
        }
        out
    }
}
