//! Our COCO-mode mAP against pycocotools' `COCOeval` on a synthetic, deterministic data set.
//!
//! The test builds ~40 images with boxes and rectangle/triangle polygons in 3 classes,
//! predictions that are jittered copies (some with the wrong class, some duplicated, some
//! missing) plus false positives (also of a 4th class with no ground truth), scores them with
//! `MetricsAccumulator` and with `scripts/metrics_ref.py` (pycocotools, bbox and segm), and
//! requires the same mAP50 and mAP50-95 to 1e-6. Ultralytics mode is held to the same 1e-6
//! against a numpy transcription of Ultralytics' `match_predictions` and `ap_per_class` in the
//! same script (pycocotools is not Ultralytics: on this set Ultralytics' mAP50 is ~0.08 higher,
//! because `compute_ap` draws the curve on from the last point down to precision 0 at recall 1,
//! while COCO counts precision 0 past the last recall), and precision/recall/F1 must match the
//! script's count exactly.
//!
//! Coordinates are multiples of 1/4 pixel, so both sides compute identical IoUs; ground-truth
//! masks are our rasterised polygons, handed to pycocotools as RLE (this checks the metric, not
//! the rasteriser, which has unit tests).

mod common;

use std::path::PathBuf;
use std::process::Command;

use mpslab::config::Task;
use mpslab::vision::metrics::{rasterize_polygon, MetricOptions, MetricsAccumulator, TaskMetrics};
use mpslab::vision::{BBox, Detection, GtObject, Labels, Mask, Prediction};
use serde_json::{json, Value};

const REPORT_CONF: f32 = 0.25;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
}

fn quarter(v: f64) -> f32 {
    ((v * 4.0).round() / 4.0) as f32
}

fn bounds(poly: &[[f32; 2]]) -> BBox {
    let mut b = BBox {
        x1: f32::INFINITY,
        y1: f32::INFINITY,
        x2: f32::NEG_INFINITY,
        y2: f32::NEG_INFINITY,
    };
    for &[x, y] in poly {
        b.x1 = b.x1.min(x);
        b.y1 = b.y1.min(y);
        b.x2 = b.x2.max(x);
        b.y2 = b.y2.max(y);
    }
    b
}

/// COCO uncompressed RLE: column-major run lengths, starting with a run of zeros.
fn rle(m: &Mask) -> Vec<u64> {
    let (w, h) = (m.width as usize, m.height as usize);
    let mut counts = Vec::new();
    let (mut cur, mut run) = (0u8, 0u64);
    for x in 0..w {
        for y in 0..h {
            let v = u8::from(m.data[y * w + x] != 0);
            if v != cur {
                counts.push(run);
                cur = v;
                run = 0;
            }
            run += 1;
        }
    }
    counts.push(run);
    counts
}

fn xywh(b: &BBox) -> Value {
    json!([
        b.x1 as f64,
        b.y1 as f64,
        (b.x2 - b.x1) as f64,
        (b.y2 - b.y1) as f64
    ])
}

struct Image {
    w: u32,
    h: u32,
    gts: Vec<GtObject>,
    dets: Vec<Detection>,
}

/// A rectangle or a right triangle (random corner) inside the image.
fn shape(rng: &mut XorShift, w: u32, h: u32) -> Vec<[f32; 2]> {
    let (w, h) = (w as f64, h as f64);
    let bw = rng.range(8.0, 44.0).min(w - 2.0);
    let bh = rng.range(8.0, 40.0).min(h - 2.0);
    let x1 = rng.range(0.0, w - bw);
    let y1 = rng.range(0.0, h - bh);
    let (x2, y2) = (x1 + bw, y1 + bh);
    let corners = [[x1, y1], [x2, y1], [x2, y2], [x1, y2]];
    let pts: Vec<[f64; 2]> = if rng.below(2) == 0 {
        corners.to_vec()
    } else {
        let skip = rng.below(4) as usize;
        (0..4).filter(|&i| i != skip).map(|i| corners[i]).collect()
    };
    pts.iter().map(|p| [quarter(p[0]), quarter(p[1])]).collect()
}

fn jitter(rng: &mut XorShift, poly: &[[f32; 2]], amount: f64, w: u32, h: u32) -> Vec<[f32; 2]> {
    let b = bounds(poly);
    let (sx, sy) = (
        f64::from(b.x2 - b.x1) * amount,
        f64::from(b.y2 - b.y1) * amount,
    );
    poly.iter()
        .map(|&[x, y]| {
            let nx = (f64::from(x) + rng.range(-sx, sx)).clamp(0.0, f64::from(w));
            let ny = (f64::from(y) + rng.range(-sy, sy)).clamp(0.0, f64::from(h));
            [quarter(nx), quarter(ny)]
        })
        .collect()
}

fn det_from(poly: &[[f32; 2]], class: u32, score: f32, w: u32, h: u32) -> Detection {
    Detection {
        class,
        score,
        bbox: bounds(poly),
        rbox: None,
        keypoints: Vec::new(),
        mask: Some(rasterize_polygon(poly, w, h)),
    }
}

fn dataset() -> Vec<Image> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    (0..40)
        .map(|i| {
            let w = 96 + 8 * rng.below(8) as u32;
            let h = 80 + 8 * rng.below(6) as u32;
            let n_gt = if i % 13 == 5 { 0 } else { rng.below(7) };
            let mut gts = Vec::new();
            let mut dets = Vec::new();
            for _ in 0..n_gt {
                let class = rng.below(3) as u32;
                let poly = shape(&mut rng, w, h);
                gts.push(GtObject {
                    class,
                    bbox: bounds(&poly),
                    rbox: None,
                    keypoints: Vec::new(),
                    polygon: poly.clone(),
                });
                if rng.unit() < 0.15 {
                    continue; // missed
                }
                let pclass = if rng.unit() < 0.07 {
                    (class + 1 + rng.below(2) as u32) % 3
                } else {
                    class
                };
                let score = rng.range(0.2, 1.0) as f32;
                let amount = rng.range(0.02, 0.25);
                dets.push(det_from(
                    &jitter(&mut rng, &poly, amount, w, h),
                    pclass,
                    score,
                    w,
                    h,
                ));
                if rng.unit() < 0.15 {
                    let dup = jitter(&mut rng, &poly, 0.3, w, h);
                    dets.push(det_from(
                        &dup,
                        pclass,
                        score * rng.range(0.3, 0.95) as f32,
                        w,
                        h,
                    ));
                }
            }
            for _ in 0..rng.below(3) {
                let poly = shape(&mut rng, w, h);
                let class = rng.below(4) as u32; // class 3 has no ground truth
                dets.push(det_from(&poly, class, rng.range(0.0, 0.6) as f32, w, h));
            }
            // Not in score order: the accumulator sorts, pycocotools too.
            for k in (1..dets.len()).rev() {
                let j = rng.below(k as u64 + 1) as usize;
                dets.swap(k, j);
            }
            Image { w, h, gts, dets }
        })
        .collect()
}

fn to_coco_json(images: &[Image]) -> Value {
    let mut ims = Vec::new();
    let mut gt = Vec::new();
    let mut dt = Vec::new();
    for (i, im) in images.iter().enumerate() {
        let id = i + 1;
        ims.push(json!({"id": id, "width": im.w, "height": im.h}));
        for g in &im.gts {
            let m = rasterize_polygon(&g.polygon, im.w, im.h);
            gt.push(json!({"image_id": id, "category_id": g.class + 1, "bbox": xywh(&g.bbox), "rle": rle(&m)}));
        }
        for d in &im.dets {
            let m = d
                .mask
                .as_ref()
                .expect("every synthetic prediction has a mask");
            dt.push(json!({
                "image_id": id, "category_id": d.class + 1, "bbox": xywh(&d.bbox),
                "score": f64::from(d.score), "rle": rle(m),
            }));
        }
    }
    json!({"images": ims, "categories": [1, 2, 3, 4], "gt": gt, "dt": dt, "report_conf": REPORT_CONF})
}

fn score(images: &[Image], task: Task, options: MetricOptions) -> TaskMetrics {
    let mut acc = MetricsAccumulator::new(task, 4, options);
    for im in images {
        acc.add(
            im.w,
            im.h,
            &Labels::Objects(im.gts.clone()),
            &Prediction::Objects(im.dets.clone()),
        );
    }
    acc.finish()
}

fn python() -> PathBuf {
    common::venv_python("the venv with pycocotools")
}

fn pycocotools(data: &Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("coco.json");
    std::fs::write(&input, serde_json::to_vec(data).unwrap()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/metrics_ref.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(&input)
        .output()
        .expect("run metrics_ref.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() != Some(3),
        "pycocotools is not importable: `make deps` installs it (mk/metrics.mk)\n{stderr}"
    );
    assert!(
        out.status.success(),
        "metrics_ref.py failed: {}\n{stderr}",
        out.status
    );
    serde_json::from_slice(&out.stdout).expect("metrics_ref.py prints JSON")
}

#[test]
fn coco_mode_matches_pycocotools_bbox_and_segm() {
    let images = dataset();
    let n_gt: usize = images.iter().map(|i| i.gts.len()).sum();
    let n_dt: usize = images.iter().map(|i| i.dets.len()).sum();
    assert!(
        n_gt > 80 && n_dt > 80,
        "synthetic set too small: {n_gt} gt, {n_dt} dets"
    );

    let reference = pycocotools(&to_coco_json(&images));
    let coco = score(&images, Task::Seg, MetricOptions::coco());
    let ultra = score(&images, Task::Seg, MetricOptions::ultralytics(REPORT_CONF));
    let detect = score(&images, Task::Detect, MetricOptions::coco());
    assert_eq!(
        detect.boxes, coco.boxes,
        "detect and seg must score boxes alike"
    );
    assert_eq!(coco.instances, n_gt as u64);

    let mut max_diff = 0.0f64;
    let mut check = |what: String, ours: f64, theirs: f64| {
        let d = (ours - theirs).abs();
        max_diff = max_diff.max(d);
        assert!(d <= 1e-6, "{what}: ours {ours} vs reference {theirs}");
    };
    for (kind, ours, ultra) in [
        ("bbox", coco.boxes.unwrap(), ultra.boxes.unwrap()),
        ("segm", coco.masks.unwrap(), ultra.masks.unwrap()),
    ] {
        let theirs = &reference[kind];
        let ul = &reference["ultralytics"][kind];
        let get = |v: &Value, k: &str| {
            v[k].as_f64()
                .unwrap_or_else(|| panic!("{k} missing in {v}"))
        };
        let (ref50, ref5095) = (get(theirs, "map50"), get(theirs, "map50_95"));
        println!(
            "{kind}: pycocotools mAP50 {ref50:.9} mAP50-95 {ref5095:.9} | ours coco {:.9} {:.9} \
             | ultralytics.py {:.9} {:.9} | ours ultralytics {:.9} {:.9} | P {:.4} R {:.4} F1 {:.4}",
            ours.map50,
            ours.map50_95,
            get(ul, "map50"),
            get(ul, "map50_95"),
            ultra.map50,
            ultra.map50_95,
            ultra.precision,
            ultra.recall,
            ultra.f1
        );
        // A set where everything or nothing matches would not test much.
        assert!(
            ref50 > 0.3 && ref50 < 0.97 && ref5095 > 0.1 && ref5095 < ref50,
            "{kind}: {theirs}"
        );
        check(format!("{kind} coco mAP50"), ours.map50, ref50);
        check(format!("{kind} coco mAP50-95"), ours.map50_95, ref5095);
        check(
            format!("{kind} ultralytics mAP50"),
            ultra.map50,
            get(ul, "map50"),
        );
        check(
            format!("{kind} ultralytics mAP50-95"),
            ultra.map50_95,
            get(ul, "map50_95"),
        );
        for (name, v) in [
            ("precision", ultra.precision),
            ("recall", ultra.recall),
            ("f1", ultra.f1),
        ] {
            assert!(
                (v - get(ul, name)).abs() < 1e-12,
                "{kind} {name}: ours {v} vs {}",
                ul[name]
            );
        }
        // The COCO recipe gives the same P/R/F1 on this set only if matching at 0.5 agrees;
        // it need not, but the mAP recipes must stay in the same neighbourhood.
        assert!(
            (ultra.map50 - ref50).abs() < 0.15,
            "{kind}: ultralytics {} vs coco {ref50}",
            ultra.map50
        );
    }
    println!("max |ours - reference| = {max_diff:e}");
}
