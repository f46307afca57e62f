//! Task metrics for validation experiments: top-1/top-5 for cls, precision, recall, F1,
//! mAP50 and mAP50-95 for boxes (detect, pose, seg, obb), masks (seg) and keypoints (pose).
//!
//! Two recipes, chosen per [`MetricOptions`]:
//!
//! * **Ultralytics** (`MetricOptions::ultralytics`): a transcription of Ultralytics
//!   `utils/metrics.py` (`ap_per_class`, `compute_ap`, `kpt_iou`) and
//!   `models/yolo/*/val.py` (`match_predictions` with `use_scipy=False`). Its quirks are kept on
//!   purpose, so numbers line up with `yolo val`: a perfect model scores mAP 0.995 (the
//!   101-point trapezoid ends at recall 1 with precision 0), and after keeping each prediction's
//!   best ground truth a ground truth goes to the prediction that comes first (highest score),
//!   not to the one with the highest IoU. Every prediction takes part (Ultralytics caps them
//!   per image in NMS, `max_det`). `tests/vision_metrics_reference.rs` checks mAP and P/R/F1
//!   against a numpy transcription of the Ultralytics functions.
//! * **COCO** (`MetricOptions::coco`): pycocotools `COCOeval` for area range "all", no crowd
//!   objects, `maxDets` 100 (the pycocotools default that `stats[0]`/`stats[1]` use: the 100
//!   highest-scoring predictions per image *and class* take part, the rest are ignored).
//!   Matching is greedy in score order, each prediction taking the best still-free ground truth
//!   of its class with IoU >= t; AP is the mean of the precision envelope at the 101 recall
//!   points 0:0.01:1 (`searchsorted` left, precision 0 past the highest recall). Precision is
//!   pycocotools' `tp / (tp + fp + 2.2e-16)`, so a perfect model scores 1 - 2e-16, not 1.0.
//!   `tests/vision_metrics_reference.rs` checks mAP50 and mAP50-95 against pycocotools.
//!
//! Common to both:
//! * IoU thresholds 0.50:0.05:0.95 (numpy `linspace`). Predictions are only compared with
//!   ground truth of the same class.
//! * mAP averages over the classes that have ground truth (Ultralytics: unique target classes;
//!   pycocotools: categories with no ground truth stay -1 and are left out); a class with ground
//!   truth and no predictions has AP 0. Predictions of classes without ground truth do not change
//!   mAP (they are false positives for precision).
//! * Predictions of one image are put in descending score order first (a stable sort; post-
//!   processing already returns them that way), and ranking across images is a stable sort by
//!   score too, so ties resolve by image order and never by chance. NaN scores rank last.
//! * Box IoU: Ultralytics matching uses Ultralytics `box_iou` (`inter / (union + 1e-7)`), COCO
//!   matching pycocotools' `bbIou` (`inter / union`, no +1 on widths); both in f64.
//! * obb: the box similarity is Ultralytics `probiou` of the rotated boxes (a box without an
//!   `rbox` is taken as axis-aligned), as Ultralytics' obb validator does.
//! * Ultralytics' formulas are evaluated in f64 (Ultralytics runs them in float32 torch), so an
//!   IoU within float32 rounding of a threshold may land on the other side; with the eps terms
//!   kept (`1e-7` in box and mask IoU) an IoU of exactly a threshold counts as below it.
//! * seg: mask IoU at the original image resolution (Ultralytics mode: `inter / (union + 1e-7)`,
//!   COCO: `inter / union`); ground-truth masks come from
//!   [`rasterize_polygon`]; a prediction without a mask has an empty one (IoU 0).
//! * pose: keypoint similarity is Ultralytics `kpt_iou` (see [`oks`]) with object area = GT box
//!   `w * h * 0.53`; sigmas are `MetricOptions::kpt_sigmas` when given with one sigma per
//!   keypoint, else [`OKS_SIGMA`] for 17 keypoints, else `1/K` each (Ultralytics
//!   `np.ones(nkpt) / nkpt`). COCO mode uses the same OKS formula (not pycocotools' `computeOks`).
//!
//! **Precision, recall and F1 are mpslab's own, not Ultralytics'** (Ultralytics reports them at
//! the confidence that maximises the mean F1 over classes, which moves from run to run). Here
//! they are micro-averaged over all classes at IoU 0.5, counting only predictions with
//! `score >= report_conf`: TP = such predictions matched at IoU 0.5 by the same matching as mAP,
//! `P = TP / (predictions counted)`, `R = TP / (ground-truth objects)`, `F1 = 2PR / (P + R)`,
//! each 0 when its denominator is 0. In COCO mode a prediction past `maxDets` counts as a false
//! positive. `TaskMetrics::detections` is the number of predictions with `score >= report_conf`.
//!
//! cls: `top1`/`top5` are the share of images with a class label whose label is the highest /
//! among the five highest probabilities (ties: lower class index first); `instances` is the
//! number of images with a class label (normally all images).
//!
//! Mismatched inputs (class labels for a detection task, box predictions for cls, …) never
//! panic: the image is counted and the mismatched side is treated as empty.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::postprocess::probiou;
use super::{BBox, Detection, GtObject, Keypoint, Labels, Mask, Prediction, RBox, Task, ValParams};

/// COCO keypoint sigmas (Ultralytics `OKS_SIGMA`: `[.26, .25, …] / 10`).
pub const OKS_SIGMA: [f32; 17] = [
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
    0.087, 0.087, 0.089, 0.089,
];

/// pycocotools' default `maxDets[-1]`, used by `stats[0]` and `stats[1]`.
const COCO_MAX_DETS: usize = 100;
const N_IOU: usize = 10;

/// How predictions are matched to ground truth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Matching {
    /// Ultralytics `match_predictions` (`use_scipy=False`).
    Ultralytics,
    /// pycocotools `evaluateImg` (greedy in score order, maxDets 100 per image and class).
    Coco,
}

/// How average precision is computed from a precision/recall curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Interpolation {
    /// Ultralytics `compute_ap`: sentinels, precision envelope, trapezoid over 101 points.
    Ultralytics,
    /// pycocotools `accumulate`: precision envelope sampled at recall 0:0.01:1, mean.
    Coco,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricOptions {
    pub matching: Matching,
    pub interpolation: Interpolation,
    /// Precision, recall, F1 and `detections` count predictions at or above this score.
    pub report_conf: f32,
    /// OKS sigmas, one per keypoint; `None`: [`OKS_SIGMA`] for 17 keypoints, else `1/K`.
    pub kpt_sigmas: Option<Vec<f32>>,
}

impl MetricOptions {
    /// Ultralytics matching and AP, as `yolo val` computes them.
    pub fn ultralytics(report_conf: f32) -> Self {
        MetricOptions {
            matching: Matching::Ultralytics,
            interpolation: Interpolation::Ultralytics,
            report_conf,
            kpt_sigmas: None,
        }
    }

    /// pycocotools `COCOeval` matching and AP; `report_conf` is the `ValParams` default.
    pub fn coco() -> Self {
        MetricOptions {
            matching: Matching::Coco,
            interpolation: Interpolation::Coco,
            report_conf: ValParams::default().report_conf,
            kpt_sigmas: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMetrics {
    pub images: u64,
    pub instances: u64,
    pub detections: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top5: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boxes: Option<DetMetrics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masks: Option<DetMetrics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keypoints: Option<DetMetrics>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DetMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub map50: f64,
    pub map50_95: f64,
}

/// One prediction as the AP computation needs it.
#[derive(Debug, Clone, Copy)]
struct PredRecord {
    score: f32,
    class: u32,
    /// Bit `t` set: true positive at IoU threshold `t`.
    tp: u16,
    /// False for predictions past COCO's maxDets: left out of AP.
    ranked: bool,
}

/// Per-prediction records and ground-truth counts of one metric kind (boxes, masks, keypoints).
#[derive(Debug, Clone, Default)]
struct KindStats {
    preds: Vec<PredRecord>,
    n_gt: BTreeMap<u32, u64>,
}

/// Accumulates one experiment's predictions image by image; [`finish`](Self::finish) computes
/// the metrics.
#[derive(Debug, Clone)]
pub struct MetricsAccumulator {
    task: Task,
    options: MetricOptions,
    thresholds: [f64; N_IOU],
    images: u64,
    instances: u64,
    detections: u64,
    top1_hits: u64,
    top5_hits: u64,
    boxes: KindStats,
    masks: KindStats,
    keypoints: KindStats,
}

impl MetricsAccumulator {
    /// `num_classes` is informative only: classes are taken from labels and predictions as
    /// they come, so an out-of-range class can neither panic nor allocate.
    pub fn new(task: Task, num_classes: usize, options: MetricOptions) -> Self {
        let _ = num_classes;
        MetricsAccumulator {
            task,
            options,
            thresholds: iou_thresholds(),
            images: 0,
            instances: 0,
            detections: 0,
            top1_hits: 0,
            top5_hits: 0,
            boxes: KindStats::default(),
            masks: KindStats::default(),
            keypoints: KindStats::default(),
        }
    }

    /// Adds one image. `image_w`/`image_h` are the original image size (seg rasterises the
    /// ground-truth polygons at that size).
    pub fn add(&mut self, image_w: u32, image_h: u32, labels: &Labels, prediction: &Prediction) {
        self.images += 1;
        match self.task {
            Task::Generic => {}
            Task::Cls => self.add_cls(labels, prediction),
            Task::Detect | Task::Pose | Task::Seg | Task::Obb => {
                let gts: &[GtObject] = match labels {
                    Labels::Objects(v) => v,
                    Labels::Class(_) => &[],
                };
                let preds: &[Detection] = match prediction {
                    Prediction::Objects(v) => v,
                    Prediction::Classes { .. } => &[],
                };
                self.add_objects(image_w, image_h, gts, preds);
            }
        }
    }

    fn add_cls(&mut self, labels: &Labels, prediction: &Prediction) {
        let Labels::Class(class) = *labels else {
            return;
        };
        self.instances += 1;
        let Prediction::Classes { probs } = prediction else {
            return;
        };
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| desc(probs[a], probs[b]));
        let class = class as usize;
        if order.first() == Some(&class) {
            self.top1_hits += 1;
        }
        if order.iter().take(5).any(|&i| i == class) {
            self.top5_hits += 1;
        }
    }

    fn add_objects(&mut self, image_w: u32, image_h: u32, gts: &[GtObject], preds: &[Detection]) {
        let mut order: Vec<&Detection> = preds.iter().collect();
        order.sort_by(|a, b| desc(a.score, b.score));
        let preds = order;
        let report_conf = self.options.report_conf;
        self.instances += gts.len() as u64;
        self.detections += preds.iter().filter(|d| d.score >= report_conf).count() as u64;
        let gt_cls: Vec<u32> = gts.iter().map(|g| g.class).collect();
        let ultra = self.options.matching == Matching::Ultralytics;
        let ctx = ImageCtx {
            matching: self.options.matching,
            thresholds: &self.thresholds,
            gt_cls: &gt_cls,
            preds: &preds,
        };
        match self.task {
            Task::Obb => {
                let gt_r: Vec<RBox> = gts
                    .iter()
                    .map(|g| g.rbox.unwrap_or(bbox_rbox(&g.bbox)))
                    .collect();
                let pr_r: Vec<RBox> = preds
                    .iter()
                    .map(|d| d.rbox.unwrap_or(bbox_rbox(&d.bbox)))
                    .collect();
                ctx.score(&mut self.boxes, |g, p| {
                    f64::from(probiou(&gt_r[g], &pr_r[p]))
                });
            }
            _ => ctx.score(&mut self.boxes, |g, p| {
                if ultra {
                    box_iou_ultralytics(&gts[g].bbox, &preds[p].bbox)
                } else {
                    box_iou_coco(&gts[g].bbox, &preds[p].bbox)
                }
            }),
        }
        match self.task {
            Task::Seg => {
                let gt_masks: Vec<MaskStat> = gts
                    .iter()
                    .map(|g| {
                        MaskStat::new(Cow::Owned(rasterize_polygon(&g.polygon, image_w, image_h)))
                    })
                    .collect();
                let empty = Mask {
                    width: image_w,
                    height: image_h,
                    data: Vec::new(),
                };
                let pr_masks: Vec<MaskStat> = preds
                    .iter()
                    .map(|d| {
                        MaskStat::new(d.mask.as_ref().map_or(Cow::Borrowed(&empty), Cow::Borrowed))
                    })
                    .collect();
                let eps = if ultra { 1e-7 } else { 0.0 }; // Ultralytics `mask_iou` eps
                ctx.score(&mut self.masks, |g, p| gt_masks[g].iou(&pr_masks[p], eps));
            }
            Task::Pose => {
                let sigmas: Vec<Vec<f32>> = gts
                    .iter()
                    .map(|g| kpt_sigmas(self.options.kpt_sigmas.as_deref(), g.keypoints.len()))
                    .collect();
                ctx.score(&mut self.keypoints, |g, p| {
                    let b = &gts[g].bbox;
                    let area = f64::from(b.x2 - b.x1) * f64::from(b.y2 - b.y1) * 0.53;
                    oks64(&preds[p].keypoints, &gts[g].keypoints, area, &sigmas[g])
                });
            }
            _ => {}
        }
    }

    /// The metrics of everything added so far.
    pub fn finish(&self) -> TaskMetrics {
        let mut m = TaskMetrics {
            images: self.images,
            instances: self.instances,
            detections: self.detections,
            top1: None,
            top5: None,
            boxes: None,
            masks: None,
            keypoints: None,
        };
        match self.task {
            Task::Generic => {}
            Task::Cls => {
                m.top1 = Some(ratio(self.top1_hits, self.instances));
                m.top5 = Some(ratio(self.top5_hits, self.instances));
            }
            Task::Detect | Task::Obb => m.boxes = Some(self.det_metrics(&self.boxes)),
            Task::Seg => {
                m.boxes = Some(self.det_metrics(&self.boxes));
                m.masks = Some(self.det_metrics(&self.masks));
            }
            Task::Pose => {
                m.boxes = Some(self.det_metrics(&self.boxes));
                m.keypoints = Some(self.det_metrics(&self.keypoints));
            }
        }
        m
    }

    fn det_metrics(&self, s: &KindStats) -> DetMetrics {
        let n_gt_total: u64 = s.n_gt.values().sum();
        let (mut tp, mut counted) = (0u64, 0u64);
        for r in s
            .preds
            .iter()
            .filter(|r| r.score >= self.options.report_conf)
        {
            counted += 1;
            tp += u64::from(r.tp & 1);
        }
        let precision = ratio(tp, counted);
        let recall = ratio(tp, n_gt_total);
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };

        let mut ranked: Vec<PredRecord> = s.preds.iter().filter(|r| r.ranked).copied().collect();
        ranked.sort_by(|a, b| desc(a.score, b.score));
        let interp = self.options.interpolation;
        let (mut sum50, mut sum_all, mut classes) = (0.0f64, 0.0f64, 0usize);
        for (&class, &n) in &s.n_gt {
            if n == 0 {
                continue;
            }
            classes += 1;
            let tps: Vec<u16> = ranked
                .iter()
                .filter(|r| r.class == class)
                .map(|r| r.tp)
                .collect();
            if tps.is_empty() {
                continue; // AP 0 (Ultralytics `n_p == 0`; pycocotools `nd == 0`)
            }
            for t in 0..N_IOU {
                let (rec, prec) = pr_curve(&tps, t, n, interp);
                let ap = compute_ap(&rec, &prec, interp);
                sum_all += ap;
                if t == 0 {
                    sum50 += ap;
                }
            }
        }
        let (map50, map50_95) = if classes == 0 {
            (0.0, 0.0)
        } else {
            (sum50 / classes as f64, sum_all / (classes * N_IOU) as f64)
        };
        DetMetrics {
            precision,
            recall,
            f1,
            map50,
            map50_95,
        }
    }
}

/// What one image's matching needs for one metric kind.
struct ImageCtx<'a> {
    matching: Matching,
    thresholds: &'a [f64; N_IOU],
    gt_cls: &'a [u32],
    /// In descending score order.
    preds: &'a [&'a Detection],
}

impl ImageCtx<'_> {
    /// Matches the image's predictions to its ground truth with similarity `sim(gt, pred)`
    /// (called for same-class pairs only) and records the outcome in `stats`.
    fn score(&self, stats: &mut KindStats, sim: impl Fn(usize, usize) -> f64) {
        let (ng, np) = (self.gt_cls.len(), self.preds.len());
        for &c in self.gt_cls {
            *stats.n_gt.entry(c).or_default() += 1;
        }
        let ranked: Vec<bool> = match self.matching {
            Matching::Ultralytics => vec![true; np],
            Matching::Coco => {
                let mut per_class: BTreeMap<u32, usize> = BTreeMap::new();
                self.preds
                    .iter()
                    .map(|d| {
                        let n = per_class.entry(d.class).or_default();
                        *n += 1;
                        *n <= COCO_MAX_DETS
                    })
                    .collect()
            }
        };
        // NaN marks pairs that may not match (other class, or past maxDets).
        let mut iou = vec![f64::NAN; ng * np];
        for (g, &gc) in self.gt_cls.iter().enumerate() {
            for (p, d) in self.preds.iter().enumerate() {
                if d.class == gc && ranked[p] {
                    iou[g * np + p] = sim(g, p);
                }
            }
        }
        let tp = match self.matching {
            Matching::Ultralytics => match_ultralytics(&iou, ng, np, self.thresholds),
            Matching::Coco => match_coco(&iou, ng, np, self.thresholds),
        };
        stats
            .preds
            .extend(self.preds.iter().enumerate().map(|(p, d)| PredRecord {
                score: d.score,
                class: d.class,
                tp: tp[p],
                ranked: ranked[p],
            }));
    }
}

/// Ultralytics `match_predictions` (`use_scipy=False`) on an `ng x np` IoU matrix, predictions in
/// score order. Per threshold: pairs with IoU >= t, sorted by IoU descending (numpy's argsort of
/// a short array is stable, then reversed: equal IoUs come in reverse row-major order), first
/// pair per prediction kept (`np.unique` on the prediction column, which also orders the result
/// by prediction index), then first pair per ground truth.
fn match_ultralytics(iou: &[f64], ng: usize, np: usize, thresholds: &[f64; N_IOU]) -> Vec<u16> {
    let mut tp = vec![0u16; np];
    let mut pairs: Vec<(usize, usize, f64)> = Vec::new();
    let mut best_gt: Vec<Option<usize>> = vec![None; np];
    let mut gt_taken = vec![false; ng];
    for (t, &thr) in thresholds.iter().enumerate() {
        pairs.clear();
        for g in 0..ng {
            for p in 0..np {
                let v = iou[g * np + p];
                if v >= thr {
                    pairs.push((g, p, v));
                }
            }
        }
        pairs.sort_by(|a, b| a.2.total_cmp(&b.2));
        pairs.reverse();
        best_gt.iter_mut().for_each(|b| *b = None);
        for &(g, p, _) in &pairs {
            if best_gt[p].is_none() {
                best_gt[p] = Some(g);
            }
        }
        gt_taken.iter_mut().for_each(|x| *x = false);
        for (p, b) in best_gt.iter().enumerate() {
            if let Some(g) = *b {
                if !gt_taken[g] {
                    gt_taken[g] = true;
                    tp[p] |= 1 << t;
                }
            }
        }
    }
    tp
}

/// pycocotools `evaluateImg` matching (no crowd, nothing ignored): each prediction in score
/// order takes the still-free ground truth with the highest IoU >= min(t, 1 - 1e-10); on equal
/// IoU the later ground truth wins, as pycocotools' `if ious[d, g] < iou: continue` does.
fn match_coco(iou: &[f64], ng: usize, np: usize, thresholds: &[f64; N_IOU]) -> Vec<u16> {
    let mut tp = vec![0u16; np];
    let mut taken = vec![false; ng];
    for (t, &thr) in thresholds.iter().enumerate() {
        taken.iter_mut().for_each(|x| *x = false);
        for (p, tp_p) in tp.iter_mut().enumerate() {
            let mut best = thr.min(1.0 - 1e-10);
            let mut m = None;
            for (g, taken_g) in taken.iter().enumerate() {
                let v = iou[g * np + p];
                if *taken_g || v.is_nan() || v < best {
                    continue;
                }
                best = v;
                m = Some(g);
            }
            if let Some(g) = m {
                taken[g] = true;
                *tp_p |= 1 << t;
            }
        }
    }
    tp
}

/// Cumulative recall and precision of one class at threshold index `t`, predictions in score
/// order, as Ultralytics `ap_per_class` or pycocotools `accumulate` computes them.
fn pr_curve(tps: &[u16], t: usize, n_gt: u64, interp: Interpolation) -> (Vec<f64>, Vec<f64>) {
    let n = n_gt as f64;
    let (mut tpc, mut fpc) = (0.0f64, 0.0f64);
    let mut rec = Vec::with_capacity(tps.len());
    let mut prec = Vec::with_capacity(tps.len());
    for &bits in tps {
        if bits & (1 << t) != 0 {
            tpc += 1.0;
        } else {
            fpc += 1.0;
        }
        match interp {
            Interpolation::Ultralytics => {
                rec.push(tpc / (n + 1e-16));
                prec.push(tpc / (tpc + fpc));
            }
            Interpolation::Coco => {
                rec.push(tpc / n);
                prec.push(tpc / (fpc + tpc + f64::EPSILON)); // np.spacing(1)
            }
        }
    }
    (rec, prec)
}

/// Average precision of one precision/recall curve (points in score order, recall
/// non-decreasing).
///
/// * `Ultralytics` (`compute_ap`): `mrec = [0, recall…, 1]`, `mpre = [1, precision…, 0]`,
///   precision envelope, `trapz(interp(linspace(0, 1, 101), mrec, mpre))`.
/// * `Coco` (`accumulate`): precision envelope; at each recall threshold 0:0.01:1 the precision
///   of the first point with recall >= it, 0 past the last point; the mean of the 101 values.
///
/// An empty curve gives 0 for `Coco` and, as in Ultralytics' formula, 0.5 for `Ultralytics`
/// (the metrics themselves give a class without predictions AP 0).
pub fn compute_ap(recall: &[f64], precision: &[f64], interp: Interpolation) -> f64 {
    let n = recall.len().min(precision.len());
    let (recall, precision) = (&recall[..n], &precision[..n]);
    match interp {
        Interpolation::Ultralytics => {
            let mut mrec = Vec::with_capacity(n + 2);
            mrec.push(0.0);
            mrec.extend_from_slice(recall);
            mrec.push(1.0);
            let mut mpre = Vec::with_capacity(n + 2);
            mpre.push(1.0);
            mpre.extend_from_slice(precision);
            mpre.push(0.0);
            for i in (0..mpre.len() - 1).rev() {
                mpre[i] = mpre[i].max(mpre[i + 1]);
            }
            let x = linspace01();
            let y: Vec<f64> = x.iter().map(|&v| np_interp(v, &mrec, &mpre)).collect();
            (0..x.len() - 1)
                .map(|i| (x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2.0)
                .sum()
        }
        Interpolation::Coco => {
            let mut pr = precision.to_vec();
            for i in (1..n).rev() {
                if pr[i] > pr[i - 1] {
                    pr[i - 1] = pr[i];
                }
            }
            let sum: f64 = linspace01()
                .iter()
                .map(|&r| {
                    let i = recall.partition_point(|&v| v < r);
                    pr.get(i).copied().unwrap_or(0.0)
                })
                .sum();
            sum / 101.0
        }
    }
}

/// numpy `linspace(0, 1, 101)` (also pycocotools' `recThrs`).
fn linspace01() -> [f64; 101] {
    let mut x = [0.0; 101];
    for (i, v) in x.iter_mut().enumerate() {
        *v = i as f64 * 0.01;
    }
    x[100] = 1.0;
    x
}

/// numpy/pycocotools `linspace(.5, .95, 10)`.
fn iou_thresholds() -> [f64; N_IOU] {
    let step = (0.95f64 - 0.5) / 9.0;
    let mut t = [0.0; N_IOU];
    for (i, v) in t.iter_mut().enumerate() {
        *v = i as f64 * step + 0.5;
    }
    t[N_IOU - 1] = 0.95;
    t
}

/// numpy `interp(x, xp, fp)` for one point (`xp` non-decreasing, not empty).
fn np_interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let n = xp.len();
    if x.is_nan() {
        return x;
    }
    if x < xp[0] {
        return fp[0];
    }
    if x > xp[n - 1] {
        return fp[n - 1];
    }
    // Last j with xp[j] <= x, as numpy's binary_search_with_guess finds it.
    let j = xp.partition_point(|&v| v <= x).max(1) - 1;
    if j == n - 1 || xp[j] == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    let r = slope * (x - xp[j]) + fp[j];
    if r.is_nan() {
        let r2 = slope * (x - xp[j + 1]) + fp[j + 1];
        if r2.is_nan() && fp[j] == fp[j + 1] {
            return fp[j];
        }
        return r2;
    }
    r
}

/// IoU of two boxes, `inter / union` (pycocotools `bbIou`; 0 when the union is empty).
pub fn box_iou(a: &BBox, b: &BBox) -> f32 {
    box_iou_coco(a, b) as f32
}

fn box_inter(a: &BBox, b: &BBox) -> f64 {
    let w = f64::from(a.x2.min(b.x2)) - f64::from(a.x1.max(b.x1));
    let h = f64::from(a.y2.min(b.y2)) - f64::from(a.y1.max(b.y1));
    if w <= 0.0 || h <= 0.0 {
        0.0
    } else {
        w * h
    }
}

fn box_area64(b: &BBox) -> f64 {
    (f64::from(b.x2) - f64::from(b.x1)) * (f64::from(b.y2) - f64::from(b.y1))
}

/// pycocotools `bbIou` (iscrowd 0).
fn box_iou_coco(a: &BBox, b: &BBox) -> f64 {
    let i = box_inter(a, b);
    if i <= 0.0 {
        return 0.0;
    }
    i / (box_area64(a) + box_area64(b) - i)
}

/// Ultralytics `box_iou` (eps 1e-7).
fn box_iou_ultralytics(a: &BBox, b: &BBox) -> f64 {
    let i = box_inter(a, b);
    i / (box_area64(a) + box_area64(b) - i + 1e-7)
}

fn bbox_rbox(b: &BBox) -> RBox {
    RBox {
        cx: (b.x1 + b.x2) / 2.0,
        cy: (b.y1 + b.y2) / 2.0,
        w: b.x2 - b.x1,
        h: b.y2 - b.y1,
        angle: 0.0,
    }
}

/// A mask with its pixel count and the bounds of its set pixels, for fast pairwise IoU.
/// Borrows predicted masks (full-resolution masks are large; no copies per image).
struct MaskStat<'a> {
    mask: Cow<'a, Mask>,
    area: u64,
    /// x0, y0, x1, y1 (exclusive) of the set pixels.
    bounds: (usize, usize, usize, usize),
}

impl<'a> MaskStat<'a> {
    /// A mask whose data does not hold `width * height` bytes counts as empty.
    fn new(mask: Cow<'a, Mask>) -> MaskStat<'a> {
        let (w, h) = (mask.width as usize, mask.height as usize);
        let mut area = 0u64;
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        if mask.data.len() == w * h && w > 0 {
            for (y, row) in mask.data.chunks_exact(w).enumerate() {
                let Some(first) = row.iter().position(|&v| v != 0) else {
                    continue;
                };
                let last = row.iter().rposition(|&v| v != 0).unwrap_or(first);
                area += row[first..=last].iter().filter(|&&v| v != 0).count() as u64;
                x0 = x0.min(first);
                x1 = x1.max(last + 1);
                y0 = y0.min(y);
                y1 = y + 1;
            }
        }
        MaskStat {
            mask,
            area,
            bounds: (x0, y0, x1, y1),
        }
    }

    /// `inter / (union + eps)`, 0 when either mask is empty.
    fn iou(&self, other: &MaskStat, eps: f64) -> f64 {
        if self.area == 0 || other.area == 0 {
            return 0.0;
        }
        let (a, b) = (&self.bounds, &other.bounds);
        let (x0, y0, x1, y1) = (a.0.max(b.0), a.1.max(b.1), a.2.min(b.2), a.3.min(b.3));
        let mut inter = 0u64;
        if x0 < x1 && y0 < y1 {
            let (wa, wb) = (self.mask.width as usize, other.mask.width as usize);
            for y in y0..y1 {
                let ra = &self.mask.data[y * wa + x0..y * wa + x1];
                let rb = &other.mask.data[y * wb + x0..y * wb + x1];
                inter += ra
                    .iter()
                    .zip(rb)
                    .filter(|(&p, &q)| p != 0 && q != 0)
                    .count() as u64;
            }
        }
        inter as f64 / ((self.area + other.area - inter) as f64 + eps)
    }
}

/// IoU of two binary masks (non-zero = set): `|A ∩ B| / |A ∪ B|`, 0 when both are empty.
/// Masks of different sizes are compared pixel by pixel where they overlap (top-left aligned);
/// a mask whose data is not `width * height` bytes counts as empty.
pub fn mask_iou(a: &Mask, b: &Mask) -> f32 {
    MaskStat::new(Cow::Borrowed(a)).iou(&MaskStat::new(Cow::Borrowed(b)), 0.0) as f32
}

/// Rasterises a polygon (pixels of the original image) into a `width x height` mask: a pixel
/// is set when its centre `(x + 0.5, y + 0.5)` lies inside the polygon by the **even-odd** rule
/// (scanline crossings; a centre exactly on a left or top edge is inside, on a right or bottom
/// edge outside, so two polygons sharing an edge never share a pixel). Fewer than 3 points give
/// an empty mask.
pub fn rasterize_polygon(points: &[[f32; 2]], width: u32, height: u32) -> Mask {
    let (w, h) = (width as usize, height as usize);
    let mut data = vec![0u8; w * h];
    let n = points.len();
    if n >= 3 && w > 0 {
        let mut xs: Vec<f64> = Vec::new();
        for (y, row) in data.chunks_exact_mut(w).enumerate() {
            let yc = y as f64 + 0.5;
            xs.clear();
            for i in 0..n {
                let [ax, ay] = points[i].map(f64::from);
                let [bx, by] = points[(i + 1) % n].map(f64::from);
                if (ay <= yc) != (by <= yc) {
                    xs.push(ax + (yc - ay) * (bx - ax) / (by - ay));
                }
            }
            xs.sort_by(f64::total_cmp);
            for pair in xs.chunks_exact(2) {
                // Centres x + 0.5 in [pair[0], pair[1]).
                let start = (pair[0] - 0.5).ceil().clamp(0.0, w as f64) as usize;
                let end = (pair[1] - 0.5).ceil().clamp(0.0, w as f64) as usize;
                if start < end {
                    row[start..end].fill(1);
                }
            }
        }
    }
    Mask {
        width,
        height,
        data,
    }
}

/// Object keypoint similarity as Ultralytics `kpt_iou`: with `d² = dx² + dy²` and
/// `e = d² / ((2σ)² · (area + 1e-7) · 2)`, `oks = Σ exp(-e)·[v > 0] / (Σ [v > 0] + 1e-7)` over
/// the ground-truth keypoints with visibility `v > 0`. `area` is the object scale as
/// Ultralytics passes it (ground-truth box `w * h * 0.53`). A ground-truth keypoint with no
/// predicted counterpart contributes 0; a missing sigma is taken as `1/K`.
pub fn oks(pred: &[Keypoint], gt: &[Keypoint], area: f32, sigmas: &[f32]) -> f32 {
    oks64(pred, gt, f64::from(area), sigmas) as f32
}

fn oks64(pred: &[Keypoint], gt: &[Keypoint], area: f64, sigmas: &[f32]) -> f64 {
    let eps = 1e-7;
    let default_sigma = 1.0 / gt.len().max(1) as f64;
    let (mut sum, mut visible) = (0.0f64, 0.0f64);
    for (k, g) in gt.iter().enumerate() {
        if g.v.is_nan() || g.v <= 0.0 {
            continue;
        }
        visible += 1.0;
        let Some(p) = pred.get(k) else { continue };
        let dx = f64::from(p.x) - f64::from(g.x);
        let dy = f64::from(p.y) - f64::from(g.y);
        let sigma = sigmas.get(k).map_or(default_sigma, |&s| f64::from(s));
        let e = (dx * dx + dy * dy) / ((2.0 * sigma).powi(2) * (area + eps) * 2.0);
        let v = (-e).exp();
        if v.is_finite() {
            sum += v;
        }
    }
    sum / (visible + eps)
}

/// Sigmas for `k` keypoints: the configured ones when there is one per keypoint, else
/// [`OKS_SIGMA`] for 17 keypoints, else `1/k` each (Ultralytics).
fn kpt_sigmas(configured: Option<&[f32]>, k: usize) -> Vec<f32> {
    match configured {
        Some(s) if s.len() == k => s.to_vec(),
        _ if k == OKS_SIGMA.len() => OKS_SIGMA.to_vec(),
        _ => vec![1.0 / k.max(1) as f32; k],
    }
}

/// Descending order of scores with NaN last; a stable sort keeps input order on ties.
fn desc(a: f32, b: f32) -> Ordering {
    let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    key(b).total_cmp(&key(a))
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bb(x1: f32, y1: f32, x2: f32, y2: f32) -> BBox {
        BBox { x1, y1, x2, y2 }
    }

    fn gt(class: u32, bbox: BBox) -> GtObject {
        GtObject {
            class,
            bbox,
            rbox: None,
            keypoints: Vec::new(),
            polygon: Vec::new(),
        }
    }

    fn det(class: u32, score: f32, bbox: BBox) -> Detection {
        Detection {
            class,
            score,
            bbox,
            rbox: None,
            keypoints: Vec::new(),
            mask: None,
        }
    }

    fn rb(cx: f32, cy: f32, w: f32, h: f32, angle: f32) -> RBox {
        RBox {
            cx,
            cy,
            w,
            h,
            angle,
        }
    }

    fn run(
        task: Task,
        opts: MetricOptions,
        images: &[(Vec<GtObject>, Vec<Detection>)],
    ) -> TaskMetrics {
        let mut acc = MetricsAccumulator::new(task, 3, opts);
        for (g, d) in images {
            acc.add(
                100,
                80,
                &Labels::Objects(g.clone()),
                &Prediction::Objects(d.clone()),
            );
        }
        acc.finish()
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// COCO's precision is `tp / (tp + fp + 2.2e-16)`, so a perfect AP is 1 - 2e-16.
    fn assert_perfect(m: Option<DetMetrics>) {
        let m = m.expect("metrics present");
        assert_eq!((m.precision, m.recall, m.f1), (1.0, 1.0, 1.0), "{m:?}");
        assert!(
            close(m.map50, 1.0, 1e-12) && close(m.map50_95, 1.0, 1e-12),
            "{m:?}"
        );
    }

    #[test]
    fn box_iou_of_known_boxes() {
        let a = bb(0.0, 0.0, 10.0, 10.0);
        // Overlap 5x5 = 25, union 100 + 100 - 25 = 175.
        assert!((box_iou(&a, &bb(5.0, 5.0, 15.0, 15.0)) - 25.0 / 175.0).abs() < 1e-7);
        assert_eq!(box_iou(&a, &a), 1.0);
        // Touching edges and disjoint boxes do not overlap.
        assert_eq!(box_iou(&a, &bb(10.0, 0.0, 20.0, 10.0)), 0.0);
        assert_eq!(box_iou(&a, &bb(50.0, 50.0, 60.0, 60.0)), 0.0);
        // Contained box: 4x4 inside 10x10.
        assert!((box_iou(&a, &bb(2.0, 2.0, 6.0, 6.0)) - 0.16).abs() < 1e-7);
        // Degenerate boxes never give NaN.
        let p = bb(3.0, 3.0, 3.0, 3.0);
        assert_eq!(box_iou(&p, &p), 0.0);
    }

    #[test]
    fn rotated_iou_identical_swapped_and_disjoint() {
        let r = rb(50.0, 40.0, 30.0, 10.0, 0.3);
        // 1 - sqrt(eps-ish): Ultralytics' probiou of identical boxes is 0.9995, not 1.
        assert!(close(f64::from(probiou(&r, &r)), 1.0, 1e-3));
        let swapped = rb(50.0, 40.0, 10.0, 30.0, 0.3 + std::f32::consts::FRAC_PI_2);
        assert!(close(f64::from(probiou(&r, &swapped)), 1.0, 1e-3));
        // Same box rotated by 90 degrees without swapping is a different box.
        let crossed = rb(50.0, 40.0, 30.0, 10.0, 0.3 + std::f32::consts::FRAC_PI_2);
        assert!(probiou(&r, &crossed) < 0.7);
        let far = rb(500.0, 400.0, 30.0, 10.0, 0.3);
        assert!(probiou(&r, &far) < 1e-3);
    }

    #[test]
    fn oks_hand_case() {
        // Area 53 (a 10x10 box * 0.53), sigma 0.5 so (2 sigma)^2 = 1.
        // Keypoint 0 is off by (3, 4): d^2 = 25, e = 25 / (1 * 53 * 2) = 0.235849,
        // exp(-e) = 0.789900. Keypoint 1 is exact: 1. Keypoint 2 is unlabelled (v = 0) and far
        // off: ignored. OKS = (0.789900 + 1) / 2 = 0.894950.
        let gt = [
            Keypoint {
                x: 10.0,
                y: 10.0,
                v: 2.0,
            },
            Keypoint {
                x: 20.0,
                y: 20.0,
                v: 1.0,
            },
            Keypoint {
                x: 0.0,
                y: 0.0,
                v: 0.0,
            },
        ];
        let pred = [
            Keypoint {
                x: 13.0,
                y: 14.0,
                v: 0.9,
            },
            Keypoint {
                x: 20.0,
                y: 20.0,
                v: 0.9,
            },
            Keypoint {
                x: 90.0,
                y: 90.0,
                v: 0.9,
            },
        ];
        let v = oks(&pred, &gt, 53.0, &[0.5, 0.5, 0.5]);
        assert!((v - 0.894950).abs() < 1e-5, "{v}");
        assert!((oks(&gt, &gt, 53.0, &[0.5; 3]) - 1.0).abs() < 1e-6);
        // No labelled keypoints: 0, not NaN.
        let none = [Keypoint {
            x: 1.0,
            y: 1.0,
            v: 0.0,
        }];
        assert_eq!(oks(&none, &none, 53.0, &[0.5]), 0.0);
        // A missing predicted keypoint counts as a miss.
        assert!((oks(&pred[..1], &gt, 53.0, &[0.5; 3]) - 0.789900 / 2.0).abs() < 1e-5);
    }

    #[test]
    fn compute_ap_hand_curves() {
        // 2 GT; predictions TP, FP, TP: recall [.5, .5, 1], precision [1, .5, 2/3].
        let (r, p) = ([0.5, 0.5, 1.0], [1.0, 0.5, 2.0 / 3.0]);
        // COCO: envelope [1, 2/3, 2/3]; recall points 0..=0.5 (51) take 1, 0.51..=1 (50) take 2/3:
        // (51 + 50 * 2/3) / 101 = 0.834983.
        let coco = compute_ap(&r, &p, Interpolation::Coco);
        assert!(
            close(coco, (51.0 + 50.0 * 2.0 / 3.0) / 101.0, 1e-12),
            "{coco}"
        );
        // Ultralytics: mrec [0, .5, .5, 1, 1], envelope [1, 1, 2/3, 2/3, 0]; interp is 1 below
        // 0.5, 2/3 from 0.5 to 0.99 and 0 at 1; trapezoid: 0.49 + (1 + 2/3)/2 * 0.01 + 0.49 * 2/3
        // + (2/3)/2 * 0.01 = 0.828333 (numpy gives 0.8283333333333331).
        let ultra = compute_ap(&r, &p, Interpolation::Ultralytics);
        assert!(close(ultra, 0.828_333_333_333_333, 1e-12), "{ultra}");
        // A perfect curve: COCO 1, Ultralytics 0.995 (the trapezoid's last step drops to 0).
        assert_eq!(compute_ap(&[1.0], &[1.0], Interpolation::Coco), 1.0);
        assert!(close(
            compute_ap(&[1.0], &[1.0], Interpolation::Ultralytics),
            0.995,
            1e-12
        ));
        assert_eq!(compute_ap(&[], &[], Interpolation::Coco), 0.0);
    }

    #[test]
    fn cls_top1_and_top5() {
        let mut acc = MetricsAccumulator::new(Task::Cls, 7, MetricOptions::ultralytics(0.25));
        let probs = vec![0.10, 0.40, 0.20, 0.03, 0.15, 0.02, 0.10 - 1e-3];
        // Ranking: 1, 2, 4, 0, 6, 3, 5.
        for (label, _) in [
            (1u32, "top1"),
            (0, "top5"),
            (6, "top5"),
            (3, "miss"),
            (5, "miss"),
        ] {
            acc.add(
                10,
                10,
                &Labels::Class(label),
                &Prediction::Classes {
                    probs: probs.clone(),
                },
            );
        }
        // A missing prediction counts as wrong; object labels are not scored.
        acc.add(10, 10, &Labels::Class(1), &Prediction::Objects(Vec::new()));
        acc.add(
            10,
            10,
            &Labels::Objects(Vec::new()),
            &Prediction::Classes { probs },
        );
        let m = acc.finish();
        assert_eq!((m.images, m.instances, m.detections), (7, 6, 0));
        assert!(close(m.top1.unwrap(), 1.0 / 6.0, 1e-12), "{m:?}");
        assert!(close(m.top5.unwrap(), 3.0 / 6.0, 1e-12), "{m:?}");
        assert!(m.boxes.is_none());
    }

    #[test]
    fn detect_perfect_predictions() {
        let images = vec![
            (
                vec![
                    gt(0, bb(10.0, 10.0, 30.0, 40.0)),
                    gt(1, bb(50.0, 20.0, 90.0, 70.0)),
                ],
                vec![
                    det(0, 0.9, bb(10.0, 10.0, 30.0, 40.0)),
                    det(1, 0.8, bb(50.0, 20.0, 90.0, 70.0)),
                ],
            ),
            (
                vec![gt(2, bb(0.0, 0.0, 5.0, 5.0))],
                vec![det(2, 0.7, bb(0.0, 0.0, 5.0, 5.0))],
            ),
        ];
        let m = run(Task::Detect, MetricOptions::coco(), &images);
        assert_eq!((m.images, m.instances, m.detections), (2, 3, 3));
        assert_perfect(m.boxes);
        // Ultralytics: the same model gets 0.995, as `yolo val` reports for a perfect model.
        let u = run(Task::Detect, MetricOptions::ultralytics(0.25), &images)
            .boxes
            .unwrap();
        assert_eq!((u.precision, u.recall, u.f1), (1.0, 1.0, 1.0));
        assert!(
            close(u.map50, 0.995, 1e-9) && close(u.map50_95, 0.995, 1e-9),
            "{u:?}"
        );
    }

    #[test]
    fn false_positive_above_true_positive() {
        // Sorted: FP (0.9), TP (0.8): recall [0, 1], precision [0, 0.5].
        // COCO: envelope 0.5 everywhere -> AP 0.5. Ultralytics: 0.5 on [0, 0.99], 0 at 1:
        // 0.99 * 0.5 + 0.01 * 0.25 = 0.4975.
        let images = vec![(
            vec![gt(0, bb(10.0, 10.0, 30.0, 40.0))],
            vec![
                det(0, 0.9, bb(60.0, 10.0, 80.0, 40.0)),
                det(0, 0.8, bb(10.0, 10.0, 30.0, 40.0)),
            ],
        )];
        let c = run(Task::Detect, MetricOptions::coco(), &images)
            .boxes
            .unwrap();
        assert!(
            close(c.map50, 0.5, 1e-12) && close(c.map50_95, 0.5, 1e-12),
            "{c:?}"
        );
        assert!(close(c.precision, 0.5, 1e-12) && close(c.recall, 1.0, 1e-12));
        assert!(close(c.f1, 2.0 / 3.0, 1e-12));
        let u = run(Task::Detect, MetricOptions::ultralytics(0.25), &images)
            .boxes
            .unwrap();
        assert!(
            close(u.map50, 0.4975, 1e-12) && close(u.map50_95, 0.4975, 1e-12),
            "{u:?}"
        );
    }

    #[test]
    fn iou_thresholds_split_map50_from_map50_95() {
        // IoU 0.8 exactly (16x20 box inside 20x20): TP at thresholds 0.50..0.80 (7 of 10).
        let images = vec![(
            vec![gt(0, bb(0.0, 0.0, 20.0, 20.0))],
            vec![det(0, 0.9, bb(0.0, 0.0, 16.0, 20.0))],
        )];
        let c = run(Task::Detect, MetricOptions::coco(), &images)
            .boxes
            .unwrap();
        assert!(
            close(c.map50, 1.0, 1e-12) && close(c.map50_95, 0.7, 1e-12),
            "{c:?}"
        );
    }

    #[test]
    fn report_conf_changes_precision_recall_not_map() {
        let images = vec![(
            vec![
                gt(0, bb(0.0, 0.0, 20.0, 20.0)),
                gt(0, bb(40.0, 40.0, 60.0, 60.0)),
            ],
            vec![
                det(0, 0.9, bb(0.0, 0.0, 20.0, 20.0)),
                det(0, 0.5, bb(70.0, 0.0, 90.0, 20.0)),
                det(0, 0.1, bb(40.0, 40.0, 60.0, 60.0)),
            ],
        )];
        let high = run(Task::Detect, MetricOptions::ultralytics(0.25), &images);
        let low = run(Task::Detect, MetricOptions::ultralytics(0.05), &images);
        assert_eq!((high.detections, low.detections), (2, 3));
        let (h, l) = (high.boxes.unwrap(), low.boxes.unwrap());
        assert!(
            close(h.precision, 0.5, 1e-12) && close(h.recall, 0.5, 1e-12),
            "{h:?}"
        );
        assert!(
            close(l.precision, 2.0 / 3.0, 1e-12) && close(l.recall, 1.0, 1e-12),
            "{l:?}"
        );
        assert_eq!((h.map50, h.map50_95), (l.map50, l.map50_95));
        assert!(h.map50 > 0.8 && h.map50 < 0.9, "{h:?}");
    }

    #[test]
    fn ultralytics_and_coco_matching_differ_as_documented() {
        // gt A (row 0), gt B (row 1); pred 0 (higher score) overlaps only B at 0.7, pred 1
        // overlaps B at 0.9 and A at 0.6. Ultralytics: both predictions' best GT is B, B goes
        // to pred 0 (first), pred 1 is a FP although A is free. COCO: pred 1 takes A.
        let nan = f64::NAN;
        let iou = [nan, 0.6, 0.7, 0.9];
        let t = iou_thresholds();
        let u = match_ultralytics(&iou, 2, 2, &t);
        let c = match_coco(&iou, 2, 2, &t);
        assert_eq!(u[0] & 1, 1);
        assert_eq!(u[1] & 1, 0);
        assert_eq!(c[0] & 1, 1);
        assert_eq!(c[1] & 1, 1);
        // At 0.65 (index 3) A is out of reach for both: only pred 0 on B.
        assert_eq!((u[0] >> 3 & 1, u[1] >> 3 & 1), (1, 0));
        assert_eq!((c[0] >> 3 & 1, c[1] >> 3 & 1), (1, 0));
    }

    #[test]
    fn other_class_never_matches_and_classes_without_gt_do_not_count() {
        let base = vec![(
            vec![gt(0, bb(0.0, 0.0, 20.0, 20.0))],
            vec![det(0, 0.9, bb(0.0, 0.0, 20.0, 20.0))],
        )];
        let mut extra = base.clone();
        // Same box, wrong class (class 2 has no GT): a FP that leaves mAP alone.
        extra[0].1.push(det(2, 0.95, bb(0.0, 0.0, 20.0, 20.0)));
        let a = run(Task::Detect, MetricOptions::coco(), &base)
            .boxes
            .unwrap();
        let b = run(Task::Detect, MetricOptions::coco(), &extra)
            .boxes
            .unwrap();
        assert!(
            close(a.map50, 1.0, 1e-12) && close(a.map50_95, 1.0, 1e-12),
            "{a:?}"
        );
        assert_eq!((b.map50, b.map50_95), (a.map50, a.map50_95));
        assert!(close(b.precision, 0.5, 1e-12));
        // Only a wrong-class prediction: class 0 has GT and no prediction, AP 0.
        let only_wrong = vec![(
            base[0].0.clone(),
            vec![det(1, 0.9, bb(0.0, 0.0, 20.0, 20.0))],
        )];
        let w = run(Task::Detect, MetricOptions::ultralytics(0.25), &only_wrong)
            .boxes
            .unwrap();
        assert_eq!((w.map50, w.precision, w.recall), (0.0, 0.0, 0.0));
    }

    #[test]
    fn coco_keeps_100_predictions_per_image_and_class() {
        // 100 high-scoring FPs push the TP to rank 101: pycocotools ignores it, Ultralytics not.
        let mut dets: Vec<Detection> = (0..100)
            .map(|i| det(0, 0.99 - i as f32 * 1e-3, bb(60.0, 60.0, 70.0, 70.0)))
            .collect();
        dets.push(det(0, 0.5, bb(0.0, 0.0, 20.0, 20.0)));
        let images = vec![(vec![gt(0, bb(0.0, 0.0, 20.0, 20.0))], dets)];
        let c = run(Task::Detect, MetricOptions::coco(), &images)
            .boxes
            .unwrap();
        assert_eq!(c.map50, 0.0);
        let u = run(Task::Detect, MetricOptions::ultralytics(0.25), &images)
            .boxes
            .unwrap();
        assert!(u.map50 > 0.0 && u.map50 < 0.02, "{u:?}");
    }

    #[test]
    fn mismatched_inputs_and_nan_do_not_panic() {
        let mut acc = MetricsAccumulator::new(Task::Detect, 3, MetricOptions::coco());
        acc.add(
            10,
            10,
            &Labels::Class(1),
            &Prediction::Classes { probs: vec![0.5] },
        );
        acc.add(
            10,
            10,
            &Labels::Objects(vec![gt(0, bb(0.0, 0.0, 5.0, 5.0))]),
            &Prediction::Objects(vec![
                det(0, f32::NAN, bb(0.0, 0.0, 5.0, 5.0)),
                det(0, 0.5, bb(f32::NAN, 0.0, 5.0, 5.0)),
            ]),
        );
        let m = acc.finish();
        assert_eq!((m.images, m.instances, m.detections), (2, 1, 1));
        let b = m.boxes.unwrap();
        assert!(
            b.map50.is_finite() && b.map50_95.is_finite() && b.f1.is_finite(),
            "{b:?}"
        );
        let g = MetricsAccumulator::new(Task::Generic, 0, MetricOptions::coco()).finish();
        assert_eq!(g.boxes, None);
    }

    #[test]
    fn rasterize_square_and_triangle() {
        // Square 2..6: pixel centres 2.5..5.5 in both axes -> 4x4 = 16 pixels.
        let m = rasterize_polygon(&[[2.0, 2.0], [6.0, 2.0], [6.0, 6.0], [2.0, 6.0]], 10, 8);
        assert_eq!((m.width, m.height, m.data.len()), (10, 8, 80));
        assert_eq!(m.data.iter().filter(|&&v| v == 1).count(), 16);
        for y in 0..8 {
            for x in 0..10 {
                let inside = (2..6).contains(&x) && (2..6).contains(&y);
                assert_eq!(m.data[y * 10 + x] == 1, inside, "pixel {x},{y}");
            }
        }
        // Right triangle (0,0), (10,0), (0,10): centres with x + y < 10 -> 10+9+...+1 minus the
        // diagonal ones with x+0.5 + y+0.5 >= 10, i.e. x + y <= 8: 9+8+...+1 = 45 pixels.
        let t = rasterize_polygon(&[[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], 12, 12);
        assert_eq!(t.data.iter().filter(|&&v| v == 1).count(), 45);
        // Clipped at the image border, and degenerate input gives an empty mask.
        let c = rasterize_polygon(
            &[[-5.0, -5.0], [3.0, -5.0], [3.0, 3.0], [-5.0, 3.0]],
            10,
            10,
        );
        assert_eq!(c.data.iter().filter(|&&v| v == 1).count(), 9);
        let e = rasterize_polygon(&[[0.0, 0.0], [5.0, 5.0]], 10, 10);
        assert!(e.data.iter().all(|&v| v == 0));
    }

    #[test]
    fn mask_iou_counts_pixels() {
        let a = rasterize_polygon(&[[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0]], 10, 10);
        let b = rasterize_polygon(&[[2.0, 0.0], [6.0, 0.0], [6.0, 4.0], [2.0, 4.0]], 10, 10);
        // 8 shared pixels, union 24.
        assert!((mask_iou(&a, &b) - 8.0 / 24.0).abs() < 1e-7);
        assert_eq!(mask_iou(&a, &a), 1.0);
        let empty = Mask {
            width: 10,
            height: 10,
            data: vec![0; 100],
        };
        assert_eq!(mask_iou(&empty, &empty), 0.0);
        let bad = Mask {
            width: 10,
            height: 10,
            data: vec![1; 3],
        };
        assert_eq!(mask_iou(&a, &bad), 0.0);
    }

    fn seg_image(with_masks: bool) -> Vec<(Vec<GtObject>, Vec<Detection>)> {
        let polys: [Vec<[f32; 2]>; 2] = [
            vec![[10.0, 10.0], [40.0, 10.0], [40.0, 30.0], [10.0, 30.0]],
            vec![[50.0, 20.0], [90.0, 20.0], [50.0, 70.0]],
        ];
        let mut gts = Vec::new();
        let mut dets = Vec::new();
        for (i, p) in polys.iter().enumerate() {
            let xs = p.iter().map(|q| q[0]);
            let ys = p.iter().map(|q| q[1]);
            let bbox = bb(
                xs.clone().fold(f32::INFINITY, f32::min),
                ys.clone().fold(f32::INFINITY, f32::min),
                xs.fold(f32::NEG_INFINITY, f32::max),
                ys.fold(f32::NEG_INFINITY, f32::max),
            );
            gts.push(GtObject {
                polygon: p.clone(),
                ..gt(i as u32, bbox)
            });
            let mut d = det(i as u32, 0.9, bbox);
            if with_masks {
                d.mask = Some(rasterize_polygon(p, 100, 80));
            }
            dets.push(d);
        }
        vec![(gts, dets)]
    }

    #[test]
    fn seg_perfect_masks_and_missing_masks() {
        let m = run(Task::Seg, MetricOptions::coco(), &seg_image(true));
        assert_perfect(m.boxes);
        assert_perfect(m.masks);
        assert!(m.keypoints.is_none());
        // Without predicted masks the boxes still score, the masks do not.
        let n = run(Task::Seg, MetricOptions::coco(), &seg_image(false));
        assert_perfect(n.boxes);
        let nm = n.masks.unwrap();
        assert_eq!((nm.map50, nm.map50_95, nm.recall), (0.0, 0.0, 0.0));
    }

    #[test]
    fn obb_matches_rotated_boxes_by_probiou() {
        use std::f32::consts::FRAC_PI_2;
        let r = rb(50.0, 40.0, 40.0, 10.0, 0.5);
        let g = GtObject {
            rbox: Some(r),
            ..gt(0, super::super::postprocess::rbox_hull(&r))
        };
        let same = Detection {
            rbox: Some(rb(50.0, 40.0, 10.0, 40.0, 0.5 + FRAC_PI_2)),
            ..det(0, 0.9, g.bbox)
        };
        let m = run(
            Task::Obb,
            MetricOptions::coco(),
            &[(vec![g.clone()], vec![same])],
        );
        assert_perfect(m.boxes);
        // Same hull, crossed orientation: the axis-aligned boxes agree, the rotated ones do not.
        let crossed = Detection {
            rbox: Some(rb(50.0, 40.0, 40.0, 10.0, 0.5 + FRAC_PI_2)),
            ..det(0, 0.9, g.bbox)
        };
        let m = run(
            Task::Obb,
            MetricOptions::coco(),
            &[(vec![g], vec![crossed])],
        );
        assert_eq!(m.boxes.unwrap().map50, 0.0);
    }

    #[test]
    fn pose_scores_boxes_and_keypoints() {
        let kp: Vec<Keypoint> = (0..17)
            .map(|i| Keypoint {
                x: 20.0 + i as f32 * 3.0,
                y: 30.0 + i as f32,
                v: 2.0,
            })
            .collect();
        let g = GtObject {
            keypoints: kp.clone(),
            ..gt(0, bb(10.0, 10.0, 90.0, 70.0))
        };
        let exact = Detection {
            keypoints: kp.clone(),
            ..det(0, 0.9, g.bbox)
        };
        let m = run(
            Task::Pose,
            MetricOptions::coco(),
            &[(vec![g.clone()], vec![exact])],
        );
        assert_perfect(m.boxes);
        assert_perfect(m.keypoints);
        // Keypoints 15 px off: OKS with COCO sigmas is far below 0.5; the box is still right.
        let off: Vec<Keypoint> = kp
            .iter()
            .map(|k| Keypoint {
                x: k.x + 15.0,
                ..*k
            })
            .collect();
        let moved = Detection {
            keypoints: off,
            ..det(0, 0.9, g.bbox)
        };
        let m = run(Task::Pose, MetricOptions::coco(), &[(vec![g], vec![moved])]);
        assert_perfect(m.boxes);
        assert_eq!(m.keypoints.unwrap().map50, 0.0);
    }

    #[test]
    fn equal_iou_goes_to_the_later_ground_truth_in_both_recipes() {
        // One prediction at IoU 0.6 with two GTs. numpy: pairs (0, 0), (1, 0) sorted ascending
        // (stable) then reversed -> GT 1 first. pycocotools: `if iou < best: continue` lets the
        // later GT replace an equal one. Either way GT 1 is taken, so GT 0 is free for pred 1.
        let iou = [0.6, 0.55, 0.6, f64::NAN];
        let t = iou_thresholds();
        for tp in [
            match_ultralytics(&iou, 2, 2, &t),
            match_coco(&iou, 2, 2, &t),
        ] {
            assert_eq!((tp[0] & 1, tp[1] & 1), (1, 1), "{tp:?}");
            // At 0.55 (index 1) pred 1 still reaches GT 0; at 0.6 (index 2) it does not.
            assert_eq!((tp[1] >> 1 & 1, tp[1] >> 2 & 1), (1, 0), "{tp:?}");
        }
    }

    #[test]
    fn keypoint_sigmas_follow_ultralytics() {
        assert_eq!(kpt_sigmas(None, 17), OKS_SIGMA.to_vec());
        assert_eq!(kpt_sigmas(None, 4), vec![0.25; 4]);
        assert_eq!(kpt_sigmas(Some(&[0.1, 0.2]), 2), vec![0.1, 0.2]);
        // A configured list of the wrong length is not used.
        assert_eq!(kpt_sigmas(Some(&[0.1, 0.2]), 4), vec![0.25; 4]);
    }

    #[test]
    fn thresholds_match_numpy_linspace() {
        let t = iou_thresholds();
        assert_eq!(t[0], 0.5);
        assert_eq!(t[8], 0.8999999999999999);
        assert_eq!(t[9], 0.95);
        assert_eq!(linspace01()[50], 0.5);
    }
}
