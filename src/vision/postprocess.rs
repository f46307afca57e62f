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
    /// pose: keypoints per object and values per keypoint (2 or 3), from data.yaml `kpt_shape`
    /// or, for a one-class model, inferred as Ultralytics' `[K, 3]` head.
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
    #[error(
        "pose needs kpt_shape from data.yaml to split output `{output}` {shape} (inferred only for one class and 3-value keypoints)"
    )]
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
        task: Task::as_str(task),
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
        task: Task::as_str(task),
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
            task: Task::as_str(task),
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
                    let Some((k, d)) = kpt_shape.or_else(|| infer_kpt_shape(rows, num_classes))
                    else {
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
                let detail = format!(
                    "{rows} rows leave no class scores after 4 box rows and {nm} mask coefficients"
                );
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

/// Without a dataset `kpt_shape`, an Ultralytics pose export is read as its default head: one
/// class (`person`, or the dataset's single class) and keypoints of 3 values (x, y, confidence),
/// `K = (rows - 5) / 3`, e.g. 56 rows = 17 COCO keypoints. Anything else stays ambiguous.
fn infer_kpt_shape(rows: usize, num_classes: Option<usize>) -> Option<(usize, usize)> {
    if !matches!(num_classes, None | Some(1)) {
        return None;
    }
    let values = rows.checked_sub(5)?;
    (values > 0 && values % 3 == 0).then_some((values / 3, 3))
}

/// Rows of a `[1, rows, N]` prediction output, which must be static.
fn pred_rows(task: Task, name: &str, shape: &[i64]) -> Result<usize, PostprocessError> {
    if shape.len() != 3 || !batch_ok(shape[0]) {
        return Err(shape_error(task, name, shape, "expected rank 3, batch 1"));
    }
    if shape[1] <= 0 {
        return Err(shape_error(
            task,
            name,
            shape,
            "the row count must be static",
        ));
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
                task: Task::as_str(task),
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
                task: Task::as_str(task),
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
    let probabilities =
        out.data.iter().all(|p| (0.0..=1.0).contains(p)) && (sum - 1.0).abs() < 0.01;
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

/// Axis-aligned hull of a rotated box.
pub fn rbox_hull(r: &RBox) -> BBox {
    let pts = r.corners();
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
///
/// The border is the letterbox's whole-pixel one, as the validator's `ratio_pad` gives it;
/// predict's `scale_coords` recomputes the unrounded half border, up to half an input pixel
/// different when the border is odd.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::f32::consts::{FRAC_PI_2, PI};

    /// Anchors of a 320x320 YOLOv8 head: 40² + 20² + 10².
    const N: usize = 2100;

    /// A channels-first `[1, rows, N]` prediction, zero everywhere.
    struct Pred {
        rows: usize,
        data: Vec<f32>,
    }

    impl Pred {
        fn new(rows: usize) -> Pred {
            Pred {
                rows,
                data: vec![0.0; rows * N],
            }
        }
        fn set(&mut self, row: usize, anchor: usize, v: f32) {
            self.data[row * N + anchor] = v;
        }
        /// Box (input pixels, centre and size) and one class score.
        fn anchor(&mut self, anchor: usize, xywh: [f32; 4], class: usize, score: f32) {
            for (row, v) in xywh.into_iter().enumerate() {
                self.set(row, anchor, v);
            }
            self.set(4 + class, anchor, score);
        }
        fn shape(&self) -> [i64; 3] {
            [1, self.rows as i64, N as i64]
        }
    }

    /// A 640x480 image letterboxed into 320x320: gain 0.5, 40 px grey bars top and bottom.
    fn lb_640x480() -> Letterbox {
        Letterbox {
            gain: 0.5,
            pad_x: 0.0,
            pad_y: 40.0,
            input_w: 320,
            input_h: 320,
            orig_w: 640,
            orig_h: 480,
        }
    }

    fn lb_identity() -> Letterbox {
        Letterbox {
            gain: 1.0,
            pad_x: 0.0,
            pad_y: 0.0,
            input_w: 320,
            input_h: 320,
            orig_w: 320,
            orig_h: 320,
        }
    }

    fn params(conf: f32, multi_label: bool) -> ValParams {
        ValParams {
            conf,
            multi_label,
            ..ValParams::default()
        }
    }

    fn objects(p: Prediction) -> Vec<Detection> {
        match p {
            Prediction::Objects(d) => d,
            other => panic!("expected objects, got {other:?}"),
        }
    }

    fn bbox(x1: f32, y1: f32, x2: f32, y2: f32) -> BBox {
        BBox { x1, y1, x2, y2 }
    }

    fn assert_box(got: BBox, want: BBox) {
        let d = [
            got.x1 - want.x1,
            got.y1 - want.y1,
            got.x2 - want.x2,
            got.y2 - want.y2,
        ];
        assert!(
            d.iter().all(|d| d.abs() < 1e-3),
            "box {got:?}, expected {want:?}"
        );
    }

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol
    }

    fn run(
        task: Task,
        nc: Option<usize>,
        kpt: Option<(usize, usize)>,
        outputs: &[(&str, &[i64], &[f32])],
        lb: &Letterbox,
        params: &ValParams,
    ) -> Prediction {
        let decl: Vec<(&str, &[i64])> = outputs.iter().map(|(n, s, _)| (*n, *s)).collect();
        let layout = layout(task, &decl, nc, kpt).expect("layout");
        let views: Vec<OutputView> = outputs
            .iter()
            .map(|(name, shape, data)| OutputView { name, shape, data })
            .collect();
        postprocess(&layout, &views, lb, params).expect("postprocess")
    }

    // ---- layout ----

    #[test]
    fn layout_reads_every_ultralytics_export_shape() {
        let l = layout(Task::Detect, &[("output0", &[1, 84, 8400])], None, None).unwrap();
        assert_eq!((l.num_classes, l.pred_output, l.kpt_shape), (80, 0, None));

        let l = layout(
            Task::Pose,
            &[("output0", &[1, 56, 8400])],
            Some(1),
            Some((17, 3)),
        )
        .unwrap();
        assert_eq!((l.num_classes, l.kpt_shape), (1, Some((17, 3))));
        // A dataset with 2-value keypoints splits the same rows differently.
        let l = layout(
            Task::Pose,
            &[("output0", &[1, 39, 8400])],
            Some(1),
            Some((17, 2)),
        )
        .unwrap();
        assert_eq!((l.num_classes, l.kpt_shape), (1, Some((17, 2))));

        let l = layout(Task::Obb, &[("output0", &[1, 20, 21504])], Some(15), None).unwrap();
        assert_eq!(l.num_classes, 15);

        let l = layout(Task::Cls, &[("output0", &[1, 1000])], None, None).unwrap();
        assert_eq!(l.num_classes, 1000);
        // Dynamic batch is one image.
        let l = layout(Task::Cls, &[("output0", &[-1, 5])], Some(5), None).unwrap();
        assert_eq!(l.num_classes, 5);
    }

    #[test]
    fn layout_finds_seg_prototypes_in_either_output_order() {
        let pred: &[i64] = &[1, 116, 8400];
        let proto: &[i64] = &[1, 32, 160, 160];
        let l = layout(
            Task::Seg,
            &[("output0", pred), ("output1", proto)],
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            (l.num_classes, l.pred_output, l.proto_output),
            (80, 0, Some(1))
        );
        let l = layout(
            Task::Seg,
            &[("output1", proto), ("output0", pred)],
            Some(80),
            None,
        )
        .unwrap();
        assert_eq!(
            (l.num_classes, l.pred_output, l.proto_output),
            (80, 1, Some(0))
        );
    }

    #[test]
    fn layout_infers_ultralytics_pose_head_only_when_unambiguous() {
        // yolov8n-pose: 56 rows = 4 box + 1 class + 17 x 3.
        for nc in [None, Some(1)] {
            let l = layout(Task::Pose, &[("output0", &[1, 56, 8400])], nc, None).unwrap();
            assert_eq!(
                (l.num_classes, l.kpt_shape),
                (1, Some((17, 3))),
                "nc {nc:?}"
            );
        }
        // Two classes: 4 + 2 + K*D cannot be split without the dataset.
        let e = layout(Task::Pose, &[("output0", &[1, 56, 8400])], Some(2), None).unwrap_err();
        assert!(matches!(e, PostprocessError::MissingKptShape { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("`output0`") && msg.contains("[1, 56, 8400]"),
            "{msg}"
        );
        // 4 + 1 + 50 values are not 3-value keypoints.
        let e = layout(Task::Pose, &[("output0", &[1, 55, 8400])], None, None).unwrap_err();
        assert!(matches!(e, PostprocessError::MissingKptShape { .. }), "{e}");
    }

    #[test]
    fn layout_errors_name_the_output_and_its_shape() {
        // (task, outputs, dataset classes, expected message part)
        type Case<'a> = (Task, Vec<(&'a str, &'a [i64])>, Option<usize>, &'a str);
        let cases: Vec<Case> = vec![
            (
                Task::Detect,
                vec![("boxes", &[1, 84])],
                None,
                "`boxes` is [1, 84]",
            ),
            (
                Task::Detect,
                vec![("boxes", &[1, 4, 8400])],
                None,
                "no class scores",
            ),
            (
                Task::Detect,
                vec![("boxes", &[1, -1, 8400])],
                None,
                "static",
            ),
            (
                Task::Detect,
                vec![("output0", &[1, 84, 8400])],
                Some(3),
                "holds 80 classes",
            ),
            (
                Task::Obb,
                vec![("output0", &[1, 5, 21504])],
                None,
                "no class scores",
            ),
            (
                Task::Cls,
                vec![("probs", &[1, 3, 224])],
                None,
                "`probs` is [1, 3, 224]",
            ),
            (
                Task::Cls,
                vec![("probs", &[2, 10])],
                None,
                "`probs` is [2, 10]",
            ),
            (
                Task::Seg,
                vec![("output0", &[1, 116, 8400])],
                None,
                "`output0` [1, 116, 8400]",
            ),
            (
                Task::Seg,
                vec![("output0", &[1, 36, 8400]), ("output1", &[1, 32, 80, 80])],
                None,
                "`output0` is [1, 36, 8400]",
            ),
            (
                Task::Detect,
                vec![("a", &[1, 84, 8400]), ("b", &[1, 84, 8400])],
                None,
                "2 outputs: `a` [1, 84, 8400], `b` [1, 84, 8400]",
            ),
        ];
        for (task, outputs, nc, want) in cases {
            let e = layout(task, &outputs, nc, None).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains(want),
                "{task:?} {outputs:?}: `{msg}` lacks `{want}`"
            );
        }
        let e = layout(Task::Generic, &[("y", &[1, 4])], None, None).unwrap_err();
        assert!(matches!(
            e,
            PostprocessError::UnsupportedTask { task: "generic" }
        ));
    }

    #[test]
    fn postprocess_rejects_outputs_that_do_not_match_the_layout() {
        let l = layout(Task::Detect, &[("output0", &[1, 7, 2100])], None, None).unwrap();
        let data = vec![0f32; 10];
        let shape = [1, 7, 2100];
        let view = OutputView {
            name: "output0",
            shape: &shape,
            data: &data,
        };
        let e = postprocess(&l, &[view], &lb_identity(), &ValParams::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("`output0` claims shape [1, 7, 2100] but holds 10 values"),
            "{e}"
        );
        let e = postprocess(&l, &[], &lb_identity(), &ValParams::default()).unwrap_err();
        assert!(
            matches!(
                e,
                PostprocessError::MissingOutput {
                    index: 0,
                    count: 0,
                    ..
                }
            ),
            "{e}"
        );
        let mut bad = lb_identity();
        bad.gain = 0.0;
        let p = Pred::new(7);
        let view = OutputView {
            name: "output0",
            shape: &shape,
            data: &p.data,
        };
        let e = postprocess(&l, &[view], &bad, &ValParams::default()).unwrap_err();
        assert!(matches!(e, PostprocessError::BadLetterbox(_)), "{e}");
    }

    // ---- detect ----

    /// Three classes, boxes in 320x320 input pixels.
    fn detect_pred() -> Pred {
        let mut p = Pred::new(4 + 3);
        // Two overlapping class-0 boxes (IoU 1440/1760 = 0.82 > 0.7): the lower one goes.
        p.anchor(10, [100.0, 100.0, 40.0, 40.0], 0, 0.9);
        p.anchor(11, [104.0, 100.0, 40.0, 40.0], 0, 0.8);
        // The same overlap with another class survives class-aware NMS.
        p.anchor(500, [104.0, 100.0, 40.0, 40.0], 1, 0.7);
        // Below conf 0.25.
        p.anchor(700, [50.0, 250.0, 20.0, 20.0], 2, 0.2);
        // Past the top-right corner of the image: clipped.
        p.anchor(2000, [310.0, 50.0, 40.0, 40.0], 2, 0.6);
        // Two classes above conf at one anchor (a second label only with multi_label).
        p.anchor(1500, [200.0, 200.0, 20.0, 20.0], 1, 0.5);
        p.set(4 + 2, 1500, 0.4);
        // Exactly at conf 0.25: not above it, so never a label there.
        p.set(4, 1500, 0.25);
        p
    }

    #[test]
    fn detect_thresholds_nms_and_maps_boxes_through_the_letterbox() {
        let p = detect_pred();
        let out = [("output0", &p.shape()[..], &p.data[..])];
        let dets = objects(run(
            Task::Detect,
            Some(3),
            None,
            &out,
            &lb_640x480(),
            &params(0.25, false),
        ));
        let got: Vec<(u32, f32)> = dets.iter().map(|d| (d.class, d.score)).collect();
        assert_eq!(got, vec![(0, 0.9), (1, 0.7), (2, 0.6), (1, 0.5)]);
        // input = orig * 0.5 + (0, 40): x / 0.5, (y - 40) / 0.5.
        assert_box(dets[0].bbox, bbox(160.0, 80.0, 240.0, 160.0));
        assert_box(dets[1].bbox, bbox(168.0, 80.0, 248.0, 160.0));
        // (290, 30, 330, 70) → (580, -20, 660, 60), clipped to the 640x480 image.
        assert_box(dets[2].bbox, bbox(580.0, 0.0, 640.0, 60.0));
        assert_box(dets[3].bbox, bbox(380.0, 300.0, 420.0, 340.0));
        assert!(dets
            .iter()
            .all(|d| d.rbox.is_none() && d.mask.is_none() && d.keypoints.is_empty()));
    }

    #[test]
    fn detect_multi_label_and_low_conf_add_candidates_max_det_caps() {
        let p = detect_pred();
        let out = [("output0", &p.shape()[..], &p.data[..])];
        let lb = lb_640x480();
        let dets = objects(run(
            Task::Detect,
            Some(3),
            None,
            &out,
            &lb,
            &params(0.25, true),
        ));
        let got: Vec<(u32, f32)> = dets.iter().map(|d| (d.class, d.score)).collect();
        assert_eq!(got, vec![(0, 0.9), (1, 0.7), (2, 0.6), (1, 0.5), (2, 0.4)]);
        assert_eq!(dets[3].bbox, dets[4].bbox);

        let dets = objects(run(
            Task::Detect,
            Some(3),
            None,
            &out,
            &lb,
            &params(0.001, true),
        ));
        let got: Vec<(u32, f32)> = dets.iter().map(|d| (d.class, d.score)).collect();
        assert_eq!(
            got,
            vec![
                (0, 0.9),
                (1, 0.7),
                (2, 0.6),
                (1, 0.5),
                (2, 0.4),
                (0, 0.25),
                (2, 0.2)
            ],
            "conf 0.001 adds the 0.25 label and the 0.2 box"
        );
        assert_box(dets[6].bbox, bbox(80.0, 400.0, 120.0, 440.0));

        let capped = ValParams {
            max_det: 2,
            ..params(0.001, true)
        };
        let dets = objects(run(Task::Detect, Some(3), None, &out, &lb, &capped));
        let got: Vec<(u32, f32)> = dets.iter().map(|d| (d.class, d.score)).collect();
        assert_eq!(got, vec![(0, 0.9), (1, 0.7)], "max_det keeps the best");
    }

    #[test]
    fn detect_on_an_empty_output_finds_nothing() {
        let p = Pred::new(4 + 3);
        let out = [("output0", &p.shape()[..], &p.data[..])];
        let dets = objects(run(
            Task::Detect,
            None,
            None,
            &out,
            &lb_identity(),
            &ValParams::default(),
        ));
        assert!(dets.is_empty(), "{dets:?}");
    }

    #[test]
    fn detect_conf_is_a_strict_lower_bound() {
        let mut p = Pred::new(4 + 3);
        p.anchor(77, [100.0, 100.0, 40.0, 40.0], 2, 0.25);
        let out = [("output0", &p.shape()[..], &p.data[..])];
        for multi_label in [false, true] {
            let at = objects(run(
                Task::Detect,
                None,
                None,
                &out,
                &lb_identity(),
                &params(0.25, multi_label),
            ));
            assert!(
                at.is_empty(),
                "score == conf is dropped (Ultralytics: conf > conf_thres): {at:?}"
            );
            let below = objects(run(
                Task::Detect,
                None,
                None,
                &out,
                &lb_identity(),
                &params(0.249, multi_label),
            ));
            assert_eq!(below.len(), 1);
        }
    }

    // ---- pose ----

    #[test]
    fn pose_scales_keypoints_and_passes_their_confidence() {
        let mut p = Pred::new(4 + 1 + 2 * 3);
        p.anchor(42, [100.0, 140.0, 60.0, 80.0], 0, 0.8);
        for (row, v) in [100.0, 140.0, 0.9, 330.0, 20.0, 0.1]
            .into_iter()
            .enumerate()
        {
            p.set(5 + row, 42, v);
        }
        let out = [("output0", &p.shape()[..], &p.data[..])];
        let dets = objects(run(
            Task::Pose,
            Some(1),
            Some((2, 3)),
            &out,
            &lb_640x480(),
            &params(0.25, true),
        ));
        assert_eq!(dets.len(), 1);
        assert_box(dets[0].bbox, bbox(140.0, 120.0, 260.0, 280.0));
        let k = &dets[0].keypoints;
        assert_eq!(k.len(), 2);
        assert!(
            close(k[0].x, 200.0, 1e-3) && close(k[0].y, 200.0, 1e-3) && k[0].v == 0.9,
            "{k:?}"
        );
        // (330, 20) → (660, -40), clipped to (640, 0).
        assert!(
            close(k[1].x, 640.0, 1e-3) && close(k[1].y, 0.0, 1e-3) && k[1].v == 0.1,
            "{k:?}"
        );

        // 2-value keypoints have no confidence: every keypoint counts as visible.
        let mut p = Pred::new(4 + 1 + 2);
        p.anchor(7, [100.0, 140.0, 60.0, 80.0], 0, 0.8);
        p.set(5, 7, 160.0);
        p.set(6, 7, 60.0);
        let out = [("output0", &p.shape()[..], &p.data[..])];
        let dets = objects(run(
            Task::Pose,
            Some(1),
            Some((1, 2)),
            &out,
            &lb_640x480(),
            &params(0.25, true),
        ));
        let k = dets[0].keypoints[0];
        assert!(
            close(k.x, 320.0, 1e-3) && close(k.y, 40.0, 1e-3) && k.v == 1.0,
            "{k:?}"
        );
    }

    // ---- seg ----

    /// `[1, 32, 80, 80]` prototypes for a 320x320 input: channel 0 is +10 on proto rows 20..40,
    /// columns 10..30 (input pixels x 40..120, y 80..160), channel 1 +10 on rows 40..60, columns
    /// 40..70 (x 160..280, y 160..240); both -10 elsewhere; other channels 0.
    fn protos() -> Vec<f32> {
        let (mh, mw) = (80, 80);
        let mut p = vec![0f32; 32 * mh * mw];
        for (ch, rows, cols) in [(0, 20..40, 10..30), (1, 40..60, 40..70)] {
            for r in 0..mh {
                for c in 0..mw {
                    let inside = rows.contains(&r) && cols.contains(&c);
                    p[ch * mh * mw + r * mw + c] = if inside { 10.0 } else { -10.0 };
                }
            }
        }
        p
    }

    /// Pixel count and bounding rectangle `[x1, y1, x2, y2)` of a mask's ones.
    fn mask_extent(m: &Mask) -> (usize, [usize; 4]) {
        let mut ext = [usize::MAX, usize::MAX, 0, 0];
        let mut count = 0;
        for (i, &v) in m.data.iter().enumerate() {
            if v == 1 {
                let (x, y) = (i % m.width as usize, i / m.width as usize);
                count += 1;
                ext = [
                    ext[0].min(x),
                    ext[1].min(y),
                    ext[2].max(x + 1),
                    ext[3].max(y + 1),
                ];
            } else {
                assert_eq!(v, 0, "masks hold 0 or 1");
            }
        }
        (count, ext)
    }

    fn seg_pred() -> Pred {
        let mut p = Pred::new(4 + 1 + 32);
        // Box 20..220 contains the channel-0 rectangle: the mask is that rectangle.
        p.anchor(100, [120.0, 120.0, 200.0, 200.0], 0, 0.9);
        p.set(5, 100, 1.0);
        // Box x 202..302, y 150..250 cuts the channel-1 rectangle (x 160..280) on the left.
        p.anchor(900, [252.0, 200.0, 100.0, 100.0], 0, 0.8);
        p.set(5 + 1, 900, 1.0);
        p
    }

    #[test]
    fn seg_masks_are_the_prototype_rectangles_cropped_to_the_box() {
        let p = seg_pred();
        let protos = protos();
        let proto_shape = [1i64, 32, 80, 80];
        let out = [
            ("output0", &p.shape()[..], &p.data[..]),
            ("output1", &proto_shape[..], &protos[..]),
        ];
        let dets = objects(run(
            Task::Seg,
            Some(1),
            None,
            &out,
            &lb_identity(),
            &params(0.25, true),
        ));
        assert_eq!(dets.len(), 2);
        let m0 = dets[0].mask.as_ref().expect("seg detections carry a mask");
        assert_eq!((m0.width, m0.height), (320, 320));
        // Bilinear x4 of a +10/-10 step crosses 0 exactly on the proto cell border; only the
        // four corner pixels fall below 0 (-10 * 0.375 + 2.5 * 0.625 = -2.19).
        assert_eq!(mask_extent(m0), (80 * 80 - 4, [40, 80, 120, 160]));
        // Ultralytics crops on the 80x80 grid (column c kept when c >= 202/4 = 50.5, so from
        // 51) before the x4 upsampling, so the cropped zero column 50 blends with column 51's +10
        // and the mask starts at x 202 (not at 51 * 4 = 204); that edge (0 next to +10) keeps its
        // corners, the right one (-10 next to +10) loses two.
        let m1 = dets[1].mask.as_ref().unwrap();
        assert_eq!(mask_extent(m1), (78 * 80 - 2, [202, 160, 280, 240]));

        // 640x480 original: the 320x240 letterbox content (rows 40..280) is scaled x2.
        let dets = objects(run(
            Task::Seg,
            Some(1),
            None,
            &out,
            &lb_640x480(),
            &params(0.25, true),
        ));
        let m0 = dets[0].mask.as_ref().unwrap();
        assert_eq!((m0.width, m0.height), (640, 480));
        // Each input pixel becomes 2x2.
        assert_eq!(mask_extent(m0), (160 * 160 - 4 * 4, [80, 80, 240, 240]));
        let m1 = dets[1].mask.as_ref().unwrap();
        assert_eq!(mask_extent(m1), (156 * 160 - 2 * 4, [404, 240, 560, 400]));
        assert_box(dets[1].bbox, bbox(404.0, 220.0, 604.0, 420.0));
    }

    #[test]
    fn seg_accepts_prototypes_first() {
        let p = seg_pred();
        let protos = protos();
        let proto_shape = [1i64, 32, 80, 80];
        let out = [
            ("output1", &proto_shape[..], &protos[..]),
            ("output0", &p.shape()[..], &p.data[..]),
        ];
        let dets = objects(run(
            Task::Seg,
            None,
            None,
            &out,
            &lb_identity(),
            &params(0.25, true),
        ));
        assert_eq!(mask_extent(dets[0].mask.as_ref().unwrap()).0, 80 * 80 - 4);
    }

    // ---- obb ----

    #[test]
    fn obb_probiou_nms_regularises_and_scales() {
        let nc = 2;
        let mut p = Pred::new(4 + nc + 1);
        let angle = 4 + nc;
        p.anchor(1, [100.0, 100.0, 60.0, 20.0], 0, 0.9);
        p.set(angle, 1, 0.3);
        // The same rectangle described with w/h swapped and a quarter turn more: suppressed.
        p.anchor(2, [101.0, 100.0, 20.0, 60.0], 0, 0.8);
        p.set(angle, 2, 0.3 + FRAC_PI_2);
        // Another class at the same place: kept.
        p.anchor(3, [100.0, 100.0, 60.0, 20.0], 1, 0.6);
        p.set(angle, 3, 0.3);
        // angle 2.0 is past pi/2: regularised to w/h swapped and 2.0 - pi/2.
        p.anchor(4, [200.0, 200.0, 30.0, 50.0], 0, 0.7);
        p.set(angle, 4, 2.0);
        let out = [("output0", &p.shape()[..], &p.data[..])];
        let dets = objects(run(
            Task::Obb,
            Some(nc),
            None,
            &out,
            &lb_640x480(),
            &params(0.25, true),
        ));
        let got: Vec<(u32, f32)> = dets.iter().map(|d| (d.class, d.score)).collect();
        assert_eq!(got, vec![(0, 0.9), (0, 0.7), (1, 0.6)]);

        let r = dets[0].rbox.expect("obb detections carry a rotated box");
        let want = RBox {
            cx: 200.0,
            cy: 120.0,
            w: 120.0,
            h: 40.0,
            angle: 0.3,
        };
        assert!(rbox_close(r, want), "{r:?}");
        // Hull: half extents 60 cos + 20 sin and 60 sin + 20 cos of 0.3 rad.
        let (hx, hy) = (
            60.0 * 0.3f32.cos() + 20.0 * 0.3f32.sin(),
            60.0 * 0.3f32.sin() + 20.0 * 0.3f32.cos(),
        );
        assert_box(
            dets[0].bbox,
            bbox(200.0 - hx, 120.0 - hy, 200.0 + hx, 120.0 + hy),
        );

        let r = dets[1].rbox.unwrap();
        let want = RBox {
            cx: 400.0,
            cy: 320.0,
            w: 100.0,
            h: 60.0,
            angle: 2.0 - FRAC_PI_2,
        };
        assert!(rbox_close(r, want), "{r:?}");
    }

    fn rbox_close(a: RBox, b: RBox) -> bool {
        close(a.cx, b.cx, 1e-3)
            && close(a.cy, b.cy, 1e-3)
            && close(a.w, b.w, 1e-3)
            && close(a.h, b.h, 1e-3)
            && close(a.angle, b.angle, 1e-5)
    }

    #[test]
    fn regularize_rbox_matches_ultralytics_by_hand() {
        let r = |w, h, angle| RBox {
            cx: 5.0,
            cy: 7.0,
            w,
            h,
            angle,
        };
        // Ultralytics >= 8.2 `regularize_rboxes`: swap = t % pi >= pi/2; t = t % (pi/2).
        let cases = [
            // (w, h, t) → (w, h, t)
            ((10.0, 4.0, 0.3), (10.0, 4.0, 0.3)),
            ((4.0, 10.0, 0.3), (4.0, 10.0, 0.3)),
            ((10.0, 4.0, 2.0), (4.0, 10.0, 2.0 - FRAC_PI_2)),
            ((10.0, 4.0, FRAC_PI_2), (4.0, 10.0, 0.0)),
            // Python's % takes the divisor's sign: -0.5 % pi = pi - 0.5 (>= pi/2, swap),
            // -0.5 % (pi/2) = pi/2 - 0.5.
            ((10.0, 4.0, -0.5), (4.0, 10.0, FRAC_PI_2 - 0.5)),
            ((10.0, 4.0, PI + 0.3), (10.0, 4.0, 0.3)),
        ];
        for ((w, h, t), (w2, h2, t2)) in cases {
            let got = regularize_rbox(r(w, h, t));
            assert!(rbox_close(got, r(w2, h2, t2)), "({w}, {h}, {t}) → {got:?}");
            assert!((0.0..FRAC_PI_2).contains(&got.angle));
            // The rectangle itself does not move: same corners, up to their order.
            let mut a = r(w, h, t)
                .corners()
                .map(|[x, y]| ((x * 1e3).round(), (y * 1e3).round()));
            let mut b = got
                .corners()
                .map(|[x, y]| ((x * 1e3).round(), (y * 1e3).round()));
            a.sort_by(|p, q| p.partial_cmp(q).unwrap());
            b.sort_by(|p, q| p.partial_cmp(q).unwrap());
            for (p, q) in a.iter().zip(&b) {
                assert!(
                    (p.0 - q.0).abs() <= 2.0 && (p.1 - q.1).abs() <= 2.0,
                    "{a:?} vs {b:?}"
                );
            }
        }
    }

    // ---- cls ----

    fn cls(values: &[f32]) -> Result<Prediction, PostprocessError> {
        let shape = [1, values.len() as i64];
        let l = layout(Task::Cls, &[("output0", &shape)], None, None).unwrap();
        let view = OutputView {
            name: "output0",
            shape: &shape,
            data: values,
        };
        postprocess(&l, &[view], &lb_identity(), &ValParams::default())
    }

    fn probs(values: &[f32]) -> Vec<f32> {
        match cls(values).unwrap() {
            Prediction::Classes { probs } => probs,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cls_passes_probabilities_and_softmaxes_logits() {
        // An Ultralytics cls export ends in softmax: kept bit for bit.
        assert_eq!(probs(&[0.1, 0.7, 0.2]), vec![0.1, 0.7, 0.2]);
        // Logits: exp(2), exp(1), exp(0.1) over their sum.
        let p = probs(&[2.0, 1.0, 0.1]);
        let want = [0.659_001_1, 0.242_432_3, 0.098_566_6];
        assert!(p.iter().zip(want).all(|(a, b)| close(*a, b, 1e-6)), "{p:?}");
        let p = probs(&[-1.0, -2.0, -3.0]);
        assert!(
            close(p.iter().sum::<f32>(), 1.0, 1e-6) && p[0] > p[1] && p[1] > p[2],
            "{p:?}"
        );
        // In [0, 1] but summing to 1.5: not a distribution, so logits.
        let p = probs(&[0.5, 0.5, 0.5]);
        assert!(p.iter().all(|v| close(*v, 1.0 / 3.0, 1e-6)), "{p:?}");
        // Large logits stay finite.
        let p = probs(&[1000.0, 0.0]);
        assert_eq!(p, vec![1.0, 0.0]);
        let e = cls(&[0.5, f32::NAN]).unwrap_err();
        assert!(
            e.to_string().contains("non-finite probability at class 1"),
            "{e}"
        );
    }

    // ---- nms and probiou ----

    #[test]
    fn nms_is_greedy_with_strict_threshold() {
        let boxes = [
            bbox(0.0, 0.0, 10.0, 10.0),
            bbox(1.0, 0.0, 11.0, 10.0), // IoU with #0: 90 / 110 = 0.818
            bbox(20.0, 20.0, 30.0, 30.0),
            bbox(2.0, 0.0, 12.0, 10.0), // IoU with #0: 80/120 = 0.667, with #1: 0.818
        ];
        let scores = [0.9, 0.8, 0.95, 0.7];
        assert_eq!(nms(&boxes, &scores, 0.7), vec![2, 0, 3]);
        assert_eq!(nms(&boxes, &scores, 0.85), vec![2, 0, 1, 3]);
        assert_eq!(nms(&boxes, &scores, 0.5), vec![2, 0]);
        // IoU equal to the threshold is kept (torchvision: suppress when IoU > threshold).
        let halves = [bbox(0.0, 0.0, 2.0, 1.0), bbox(1.0, 0.0, 3.0, 1.0)]; // IoU 1/3
        assert_eq!(nms(&halves, &[0.9, 0.8], 1.0 / 3.0), vec![0, 1]);
        assert!(nms(&[], &[], 0.5).is_empty());
    }

    fn square(cx: f32, side: f32, angle: f32) -> RBox {
        RBox {
            cx,
            cy: 0.0,
            w: side,
            h: side,
            angle,
        }
    }

    #[test]
    fn probiou_by_hand() {
        // Same-size axis-aligned boxes offset by dx: bd = dx² / (4 * 2w²/12), t2 = t3 = 0.
        // w = 12, dx = 4: bd = 1/6, 1 - sqrt(1 - exp(-1/6)) = 0.60819.
        let p = probiou(&square(0.0, 12.0, 0.0), &square(4.0, 12.0, 0.0));
        assert!(close(p, 0.608_19, 1e-4), "{p}");
        let p = probiou(&square(0.0, 12.0, 0.0), &square(8.0, 12.0, 0.0));
        assert!(close(p, 0.302_45, 1e-4), "{p}");
        // Identical boxes: bd clamps to eps, 1 - sqrt(2e-7).
        let a = RBox {
            cx: 50.0,
            cy: 60.0,
            w: 30.0,
            h: 10.0,
            angle: 0.4,
        };
        assert!(close(probiou(&a, &a), 1.0 - 2e-7f32.sqrt(), 1e-4));
        // The same rectangle with w/h swapped and a quarter turn: the same Gaussian.
        let b = RBox {
            w: 10.0,
            h: 30.0,
            angle: 0.4 + FRAC_PI_2,
            ..a
        };
        assert!(probiou(&a, &b) > 0.999);
        // A 90 degree turn of a long box without the swap hardly overlaps.
        let c = RBox {
            angle: 0.4 + FRAC_PI_2,
            ..a
        };
        assert!(probiou(&a, &c) < 0.5, "{}", probiou(&a, &c));
        // Far apart: 0.
        assert!(probiou(&a, &RBox { cx: 5000.0, ..a }) < 1e-6);
    }

    #[test]
    fn nms_rotated_suppresses_by_any_higher_box_as_fast_nms() {
        // probiou(A, B) = probiou(B, C) = 0.61, probiou(A, C) = 0.30 at threshold 0.5:
        // greedy NMS would keep C (its only suppressor B is gone), Ultralytics' fast_nms drops it.
        let boxes = [
            square(0.0, 12.0, 0.0),
            square(4.0, 12.0, 0.0),
            square(8.0, 12.0, 0.0),
        ];
        assert_eq!(nms_rotated(&boxes, &[0.9, 0.8, 0.7], 0.5), vec![0]);
        assert_eq!(nms_rotated(&boxes, &[0.9, 0.8, 0.7], 0.65), vec![0, 1, 2]);
        // Threshold 0.7 (the val default) keeps the overlapping squares, not a 90° duplicate.
        let boxes = [
            square(0.0, 12.0, 0.0),
            square(0.5, 12.0, FRAC_PI_2),
            square(40.0, 12.0, 0.0),
        ];
        assert_eq!(nms_rotated(&boxes, &[0.8, 0.9, 0.7], 0.7), vec![1, 2]);
        // The distance shortcut must not drop a real overlap between long thin boxes.
        let thin = |cx: f32| RBox {
            cx,
            cy: 0.0,
            w: 400.0,
            h: 2.0,
            angle: 0.0,
        };
        let p = probiou(&thin(0.0), &thin(30.0));
        assert!(p >= 0.7, "{p}");
        assert_eq!(
            nms_rotated(&[thin(0.0), thin(30.0)], &[0.9, 0.8], 0.7),
            vec![0]
        );
    }
}
