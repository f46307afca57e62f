//! Ultralytics YOLO exports through ONNX Runtime, our letterbox and our post-processing, against
//! Ultralytics' post-processing transcribed to numpy (scripts/gen_yolo_models.py,
//! scripts/yolo_ref.py). Needs `.cache` from `make deps` (ONNX Runtime library, the Python venv
//! with onnx, onnxruntime and opencv, NudeNet 320n.onnx, astronaut.png); a missing piece fails
//! the test and names `make deps`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use mpslab::config::Task;
use mpslab::vision::postprocess::{self, ModelLayout};
use mpslab::vision::{
    image, preprocess, BBox, Detection, Letterbox, OutputView, Prediction, RgbImage, ValParams,
};
use ort::environment::Environment;
use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, ValueType};
use serde_json::Value;

/// A file from `.cache`; its absence fails the test with the command that provides it.
fn needed(rel: &str) -> PathBuf {
    common::cached(rel, "or point MPSLAB_TEST_CACHE at a populated cache")
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Runs a script with the venv's Python; returns stdout.
fn python(args: &[&Path]) -> String {
    let py = needed("venv/bin/python");
    let out = Command::new(&py)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", py.display()));
    assert!(
        out.status.success(),
        "{} {:?} failed ({}); if a module is missing, run `make deps`:\n{}",
        py.display(),
        args,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

fn env() -> &'static Environment {
    static ENV: OnceLock<Environment> = OnceLock::new();
    ENV.get_or_init(|| {
        let lib = needed("ort/libonnxruntime.so");
        ort::init_from(&lib)
            .unwrap_or_else(|e| panic!("load {}: {e}", lib.display()))
            .with_name("vision_yolo")
            .build()
            .expect("ONNX Runtime environment")
    })
}

struct Model {
    session: Session,
    /// Declared output names and shapes (-1 = dynamic), in session order.
    outputs: Vec<(String, Vec<i64>)>,
}

impl Model {
    fn load(path: &Path) -> Model {
        let session = Session::builder(env())
            .expect("session builder")
            .with_intra_threads(1)
            .expect("threads")
            .commit_from_file(path)
            .unwrap_or_else(|e| panic!("load {}: {e}", path.display()));
        let outputs = session
            .outputs()
            .iter()
            .map(|o| match o.dtype() {
                ValueType::Tensor { shape, .. } => (o.name().to_string(), shape.to_vec()),
                other => panic!("output {} is {other:?}", o.name()),
            })
            .collect();
        Model { session, outputs }
    }

    fn layout(&self, task: Task, nc: Option<usize>) -> ModelLayout {
        let decl: Vec<(&str, &[i64])> = self
            .outputs
            .iter()
            .map(|(n, s)| (n.as_str(), s.as_slice()))
            .collect();
        postprocess::layout(task, &decl, nc, None).expect("layout")
    }

    /// One inference on an NCHW input; every output as (name, shape, values).
    fn infer(&mut self, input: Vec<f32>, w: u32, h: u32) -> Vec<(String, Vec<i64>, Vec<f32>)> {
        let tensor = Tensor::from_array((vec![1i64, 3, i64::from(h), i64::from(w)], input))
            .expect("input tensor");
        let inputs = [SessionInputValue::from(&tensor)];
        let outs = self.session.run(&inputs[..]).expect("inference");
        self.outputs
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let (shape, data) = outs[i].try_extract_tensor::<f32>().expect("f32 output");
                (name.clone(), shape.to_vec(), data.to_vec())
            })
            .collect()
    }
}

fn predict(
    layout: &ModelLayout,
    outs: &[(String, Vec<i64>, Vec<f32>)],
    lb: &Letterbox,
    params: &ValParams,
) -> Prediction {
    let views: Vec<OutputView> = outs
        .iter()
        .map(|(name, shape, data)| OutputView { name, shape, data })
        .collect();
    postprocess::postprocess(layout, &views, lb, params).expect("postprocess")
}

/// A synthetic photo: smooth colour gradients, so the letterbox resize has work to do.
fn synthetic(w: u32, h: u32) -> RgbImage {
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            data.extend_from_slice(&[
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                ((x + y) % 256) as u8,
            ]);
        }
    }
    RgbImage {
        width: w,
        height: h,
        data,
    }
}

fn params_of(case: &Value) -> ValParams {
    ValParams {
        conf: case["conf"].as_f64().unwrap() as f32,
        iou: case["iou"].as_f64().unwrap() as f32,
        multi_label: case["multi_label"].as_bool().unwrap(),
        max_det: case["max_det"].as_u64().unwrap() as usize,
        ..ValParams::default()
    }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn box_values(b: &BBox) -> [f32; 4] {
    [b.x1, b.y1, b.x2, b.y2]
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Compares our detections with the reference's, in order; returns the largest coordinate
/// difference.
fn compare(what: &str, ours: &[Detection], want: &[Value], task: Task) -> f32 {
    let summary =
        |d: &[Detection]| -> Vec<(u32, f32)> { d.iter().map(|d| (d.class, d.score)).collect() };
    let want_summary: Vec<(u64, f64)> = want
        .iter()
        .map(|d| (d["class"].as_u64().unwrap(), d["score"].as_f64().unwrap()))
        .collect();
    assert_eq!(
        ours.len(),
        want.len(),
        "{what}: {} detections, Ultralytics makes {}:\nours {:?}\nwant {:?}",
        ours.len(),
        want.len(),
        summary(ours),
        want_summary
    );
    let mut worst = 0f32;
    for (k, (d, w)) in ours.iter().zip(want).enumerate() {
        let ctx = format!("{what} detection #{k}: ours {d:?}\nwant {w}");
        assert_eq!(u64::from(d.class), w["class"].as_u64().unwrap(), "{ctx}");
        assert!(
            (d.score - w["score"].as_f64().unwrap() as f32).abs() <= 1e-6,
            "{ctx}"
        );
        if task == Task::Obb {
            let r = d.rbox.expect("obb rbox");
            let want_r = floats(&w["rbox"]);
            let diff = max_diff(&[r.cx, r.cy, r.w, r.h], &want_r[..4]);
            assert!(diff <= 1e-3, "{ctx}");
            assert!((r.angle - want_r[4]).abs() <= 1e-5, "{ctx}");
            worst = worst.max(diff);
        } else {
            let diff = max_diff(&box_values(&d.bbox), &floats(&w["box"]));
            assert!(diff <= 1e-3, "{ctx}");
            worst = worst.max(diff);
        }
        if task == Task::Pose {
            let want_k = w["keypoints"].as_array().unwrap();
            assert_eq!(d.keypoints.len(), want_k.len(), "{ctx}");
            for (kp, wk) in d.keypoints.iter().zip(want_k) {
                let wk = floats(wk);
                let diff = max_diff(&[kp.x, kp.y], &wk[..2]);
                assert!(
                    diff <= 1e-3 && (kp.v - wk[2]).abs() <= 1e-6,
                    "{ctx}\nkeypoint {kp:?} vs {wk:?}"
                );
                worst = worst.max(diff);
            }
        }
        if task == Task::Seg {
            let mask = d.mask.as_ref().expect("seg mask");
            assert_eq!(
                mask.data.len(),
                (mask.width * mask.height) as usize,
                "{ctx}"
            );
            let got = mask.data.iter().filter(|&&v| v == 1).count() as f64;
            let want_px = w["mask_pixels"].as_f64().unwrap();
            println!("{what} #{k}: mask {got} pixels, Ultralytics {want_px}");
            assert!(
                (got - want_px).abs() <= 0.01 * want_px,
                "{ctx}\nmask has {got} pixels, Ultralytics {want_px}"
            );
        }
    }
    worst
}

/// Runs scripts/gen_yolo_models.py into a fresh temporary directory.
fn generated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    python(&[&script("gen_yolo_models.py"), dir.path()]);
    dir
}

/// Every planted model on a 320x320, a 640x480 and a 300x211 image, val and predict settings.
fn check_generated(task: Task, name: &str) {
    let tmp = generated();
    let dir = tmp.path();
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{name}.expected.json"))).expect("expected json"),
    )
    .expect("json");
    let nc = expected["num_classes"].as_u64().unwrap() as usize;
    let mut model = Model::load(&dir.join(format!("{name}.onnx")));
    // Pose gives no kpt_shape: the Ultralytics [17, 3] head is inferred from 56 rows.
    let layout = model.layout(task, Some(nc));
    assert_eq!(layout.num_classes, nc);
    let mut input = Vec::new();
    let cases = expected["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    let mut worst = 0f32;
    for case in cases {
        let orig = floats(&case["orig"]);
        let img = synthetic(orig[0] as u32, orig[1] as u32);
        let lb = preprocess::letterbox(&img, 320, 320, &mut input);
        match img.width {
            640 => assert_eq!((lb.gain, lb.pad_x, lb.pad_y), (0.5, 0.0, 40.0), "{lb:?}"),
            // 211 * 16/15 = 225 rows: a 95 px border, 47 on top.
            300 => assert_eq!((lb.pad_x, lb.pad_y), (0.0, 47.0), "{lb:?}"),
            _ => assert_eq!((lb.gain, lb.pad_x, lb.pad_y), (1.0, 0.0, 0.0), "{lb:?}"),
        }
        let outs = model.infer(input.clone(), lb.input_w, lb.input_h);
        let params = params_of(case);
        let what = format!("{name} {}x{} {}", img.width, img.height, case["settings"]);
        match predict(&layout, &outs, &lb, &params) {
            Prediction::Classes { probs } => {
                assert_eq!(task, Task::Cls);
                assert_eq!(probs, floats(&case["probs"]), "{what}");
            }
            Prediction::Objects(dets) => {
                let want = case["detections"].as_array().unwrap();
                assert!(!want.is_empty(), "{what}: the fixture plants detections");
                worst = worst.max(compare(&what, &dets, want, task));
            }
        }
    }
    println!("{name}: all 6 cases equal Ultralytics; max coordinate difference {worst:.2e} px");
}

#[test]
fn generated_cls_model_matches_ultralytics() {
    check_generated(Task::Cls, "cls");
}

#[test]
fn generated_detect_model_matches_ultralytics() {
    check_generated(Task::Detect, "detect");
}

#[test]
fn generated_pose_model_matches_ultralytics() {
    check_generated(Task::Pose, "pose");
}

#[test]
fn generated_seg_model_matches_ultralytics() {
    check_generated(Task::Seg, "seg");
}

#[test]
fn generated_obb_model_matches_ultralytics() {
    check_generated(Task::Obb, "obb");
}

fn iou(a: &BBox, b: &BBox) -> f32 {
    let w = (a.x2.min(b.x2) - a.x1.max(b.x1)).max(0.0);
    let h = (a.y2.min(b.y2) - a.y1.max(b.y1)).max(0.0);
    let inter = w * h;
    inter / (a.area() + b.area() - inter)
}

/// NudeNet's YOLOv8n (18 classes, class 1 FACE_FEMALE) on Eileen Collins' NASA portrait.
#[test]
fn nudenet_320n_finds_the_astronauts_face_like_ultralytics() {
    let model_path = needed("models/320n.onnx");
    let image_path = needed("images/astronaut.png");
    let reference: Value =
        serde_json::from_str(&python(&[&script("yolo_ref.py"), &model_path, &image_path]))
            .expect("yolo_ref.py JSON");

    let img = image::decode(&image_path).expect("decode astronaut.png");
    assert_eq!((img.width, img.height), (512, 512));
    let mut model = Model::load(&model_path);
    // The export is dynamic ([batch, 3, height, width]); it was exported for 320x320.
    let mut input = Vec::new();
    let lb = preprocess::letterbox(&img, 320, 320, &mut input);
    assert_eq!(reference["input"], serde_json::json!([320, 320]));
    let layout = model.layout(Task::Detect, None);
    assert_eq!(layout.num_classes, 18);
    let outs = model.infer(input, lb.input_w, lb.input_h);
    assert_eq!(outs[0].1, vec![1, 22, 2100]);

    // Her face by eye, forehead below the fringe to chin, ear to ear, in 512x512 pixels.
    let face = BBox {
        x1: 178.0,
        y1: 70.0,
        x2: 270.0,
        y2: 182.0,
    };
    for run in reference["runs"].as_array().unwrap() {
        let params = params_of(run);
        let Prediction::Objects(dets) = predict(&layout, &outs, &lb, &params) else {
            panic!("detect gives objects");
        };
        println!(
            "conf {} multi_label {}: {} detections",
            params.conf,
            params.multi_label,
            dets.len()
        );
        for d in dets.iter().take(10) {
            let b = d.bbox;
            println!(
                "  class {:2} score {:.4} box [{:.1}, {:.1}, {:.1}, {:.1}]",
                d.class, d.score, b.x1, b.y1, b.x2, b.y2
            );
        }
        let faces: Vec<&Detection> = dets
            .iter()
            .filter(|d| d.class == 1 && d.score > 0.5)
            .collect();
        assert_eq!(faces.len(), 1, "one FACE_FEMALE above 0.5: {dets:?}");
        let overlap = iou(&faces[0].bbox, &face);
        assert!(
            overlap > 0.5,
            "FACE_FEMALE {:?} has IoU {overlap} with the face {face:?}",
            faces[0]
        );
        println!("  FACE_FEMALE IoU with the hand-drawn face box: {overlap:.3}");

        let want = run["detections"].as_array().unwrap();
        assert_eq!(
            dets.len(),
            want.len(),
            "conf {}: {} detections, the Python reference {}",
            params.conf,
            dets.len(),
            want.len()
        );
        let (mut box_diff, mut score_diff) = (0f32, 0f32);
        for (k, (d, w)) in dets.iter().zip(want).enumerate() {
            let ctx = format!(
                "conf {} detection #{k}: ours {d:?}\nreference {w}",
                params.conf
            );
            assert_eq!(u64::from(d.class), w["class"].as_u64().unwrap(), "{ctx}");
            let bd = max_diff(&box_values(&d.bbox), &floats(&w["box"]));
            let sd = (d.score - w["score"].as_f64().unwrap() as f32).abs();
            assert!(bd <= 0.5 && sd <= 1e-4, "{ctx}");
            box_diff = box_diff.max(bd);
            score_diff = score_diff.max(sd);
        }
        println!("  vs Python reference: max box difference {box_diff:.2e} px, max score difference {score_diff:.2e}");
    }
}
