//! Validation experiments through the real daemon: NudeNet's YOLOv8n (a real Ultralytics export)
//! walks a hand-labelled dataset of real photos alone and together, MPS off and on (fake
//! control daemon); the report carries the per-image pre/infer/post split, task metrics that
//! agree across conditions, and the malformed dataset's problems file by file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// `scripts/gen_photo_dataset.py` into a temp dir: `faces/` and `faces-malformed/`.
fn photo_datasets() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let py = venv_python("numpy for the dataset scripts");
    let o = Command::new(&py)
        .arg(repo().join("scripts/gen_photo_dataset.py"))
        .arg(cache().join("images"))
        .arg(dir.path())
        .arg("--malformed")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run `make deps`)", py.display()));
    assert!(o.status.success(), "{}", out_text(&o));
    dir
}

fn faces_model(name: &str, dataset: &Path) -> String {
    format!(
        r#"
[[model]]
name = "{name}"
path = "{m}"
task = "detect"
dims = {{ batch = 1, height = 320, width = 320 }}
dataset = "{d}"
"#,
        m = cache().join("models/320n.onnx").display(),
        d = dataset.display(),
    )
}

fn report(bus: &Bus, id: u64, format: &str) -> String {
    let o = ctl(bus, &["report", &id.to_string(), "--format", format]);
    assert!(o.status.success(), "report {format}: {}", out_text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn run_wait(bus: &Bus, exp: &str, d: &Daemon) -> u64 {
    let o = ctl(bus, &["run", exp, "--wait"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\n{}",
        out_text(&o),
        d.log_text()
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("run id on stdout")
}

#[test]
fn validation_alone_and_together_reports_stages_metrics_and_dataset_issues() {
    let data = photo_datasets();
    let mps = fake_mps();
    let bus = Bus::session();
    let cfg = TestConfig::new(&format!(
        "{}{}{}
[[experiment]]
name = \"val\"
kind = \"validation\"
models = [\"faces\", \"faces-bad\"]
modes = [\"alone\", \"together\"]
mps = [\"off\", \"on\"]
warmup = 1
repeats = 1
cooldown_s = 0
",
        real_models_toml(),
        faces_model("faces", &data.path().join("faces/data.yaml")),
        // The folder form: data.yaml inside it is found.
        faces_model("faces-bad", &data.path().join("faces-malformed")),
    ));
    cfg.use_mps(mps.path());
    let mut d = Daemon::spawn(&bus, &cfg, None, &[]);
    d.wait_ready(&bus);
    let id = run_wait(&bus, "val", &d);

    let json: serde_json::Value = serde_json::from_str(&report(&bus, id, "json")).unwrap();
    assert_eq!(json["status"], "completed", "{json:#}");
    let v = &json["validation"];
    // alone (MPS off, on) and together (MPS off, on): four conditions per model.
    let stages = v["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 8, "{v:#}");
    for s in stages {
        // Two scorable images per dataset; together, only those inside the common window.
        let n = s["n"].as_u64().unwrap();
        assert!((1..=2).contains(&n), "{s}");
        for stage in ["preprocess", "inference", "postprocess"] {
            assert!(s[stage]["mean_ms"].as_f64().unwrap() > 0.0, "{stage}: {s}");
        }
        // Letterboxing a 512 px photo is cheaper than running a YOLOv8n on it.
        assert!(
            s["inference"]["mean_ms"].as_f64() > s["postprocess"]["mean_ms"].as_f64(),
            "{s}"
        );
    }

    let metrics = v["metrics"].as_array().unwrap();
    assert_eq!(metrics.len(), 8, "one summary per model and phase");
    for m in metrics.iter().filter(|m| m["model"] == "faces") {
        assert_eq!(m["images"], 2);
        assert_eq!(m["dataset_images"], 2);
        let boxes = &m["metrics"]["boxes"];
        // The astronaut's face is found (FACE_FEMALE, IoU > 0.5 with the hand label).
        assert_eq!(boxes["recall"], 1.0, "{m}");
        assert!(boxes["map50"].as_f64().unwrap() > 0.99, "{m}");
        // The model's box is tighter than the hand label (IoU about 0.73): half of the ten
        // IoU thresholds 0.50..0.95 pass.
        let map = boxes["map50_95"].as_f64().unwrap();
        assert!((0.45..0.55).contains(&map), "{m}");
        // Nothing else reaches the report confidence (0.25) in either photo.
        assert_eq!(boxes["precision"], 1.0, "{m}");
        assert_eq!(m["metrics"]["detections"], 1, "{m}");
        assert_eq!(m["metrics"]["instances"], 1);
    }
    for m in metrics.iter().filter(|m| m["model"] == "faces-bad") {
        // astronaut.png and coffee.png (background) are scored; the truncated JPEG and the
        // image with an out-of-range class are not.
        assert_eq!(m["images"], 2, "{m}");
        assert_eq!(m["dataset_images"], 4, "{m}");
    }
    for g in v["agreement"].as_array().unwrap() {
        assert_eq!(g["phases"], 4, "{g}");
        assert_eq!(g["metrics_identical"], true, "{g}");
        assert_eq!(g["differences"].as_array().unwrap().len(), 0, "{g}");
    }

    let issues = v["issues"].as_array().unwrap();
    assert_eq!(issues.len(), 1, "only faces-bad has problems: {v:#}");
    assert_eq!(issues[0]["model"], "faces-bad");
    let files: Vec<(String, String)> = issues[0]["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["file"].as_str().unwrap().to_string(),
                i["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for expected in [
        ("images/val/truncated.jpg", "bad_image"),
        ("labels/val/astronaut_bad_class.txt", "bad_label"),
        ("labels/val/coffee.txt", "missing_label"),
    ] {
        assert!(
            files
                .iter()
                .any(|(f, k)| f == expected.0 && k == expected.1),
            "{expected:?} not in {files:?}"
        );
    }

    // Both bad lines of one file are reported; the image still counts once above.
    assert_eq!(
        files
            .iter()
            .filter(|(f, _)| f == "labels/val/astronaut_bad_class.txt")
            .count(),
        2,
        "{files:?}"
    );

    let md = report(&bus, id, "md");
    for needle in [
        "### 3.1 Task metrics",
        "identical in all phases (metrics and every prediction)",
        "### 3.2 Per-image time: preprocess, inference, postprocess",
        "### 3.3 Dataset issues",
        "| labels/val/astronaut_bad_class.txt | 2 | bad label | class 42",
        "| labels/val/astronaut_bad_class.txt | 3 | bad label |",
        "Task metrics: identical across all conditions for faces, faces-bad",
    ] {
        assert!(md.contains(needle), "`{needle}` missing from:\n{md}");
    }
    let html = report(&bus, id, "html");
    assert!(html.contains("3.2 Per-image time"), "html report");
    // The stacked stage chart is drawn (an SVG with its caption), not an error paragraph.
    assert!(
        html.contains("Per-image time: preprocess, inference, postprocess (mean)\n</text>"),
        "stage chart missing"
    );
    assert!(
        !html.contains("chart-error\">Chart 'Per-image"),
        "stage chart failed"
    );
    assert!(html.contains("truncated.jpg"), "html report");
    assert!(d.is_running());
}

#[test]
fn a_dataset_that_does_not_fit_the_model_is_refused_at_submission() {
    let data = photo_datasets();
    // Four class names where the model has 18 outputs: refused before any phase runs.
    let yaml = data.path().join("faces/four.yaml");
    std::fs::write(&yaml, "path: .\nval: images/val\nnames: [a, b, c, d]\n").unwrap();
    let missing: PathBuf = data.path().join("nowhere/data.yaml");
    let bus = Bus::session();
    let cfg = TestConfig::new(&format!(
        "{}{}{}
[[experiment]]
name = \"misfit\"
kind = \"validation\"
models = [\"misfit\"]
modes = [\"alone\"]
mps = [\"off\"]
cooldown_s = 0

[[experiment]]
name = \"missing\"
kind = \"validation\"
models = [\"missing\"]
modes = [\"alone\"]
mps = [\"off\"]
cooldown_s = 0
",
        real_models_toml(),
        faces_model("misfit", &yaml),
        faces_model("missing", &missing),
    ));
    let mut d = Daemon::spawn(&bus, &cfg, None, &[]);
    d.wait_ready(&bus);

    let o = ctl(&bus, &["run", "misfit"]);
    assert!(!o.status.success());
    let text = out_text(&o);
    assert!(text.contains("model `misfit`"), "{text}");
    assert!(
        text.contains("18") && text.contains('4'),
        "names both class counts: {text}"
    );

    let o = ctl(&bus, &["run", "missing"]);
    assert!(!o.status.success());
    let text = out_text(&o);
    assert!(text.contains("model `missing`"), "{text}");
    assert!(text.contains("nowhere"), "names the path: {text}");

    // Nothing was queued and the daemon is still serving.
    assert!(d.is_running());
    let status = status_json(&bus);
    assert!(status.is_object());
}

/// The five generated YOLO heads (`scripts/gen_yolo_models.py`, constant outputs planted at
/// known anchors) on datasets labelled with exactly those predictions
/// (`scripts/gen_planted_datasets.py`): every metric has a value known in advance, and it must
/// come out the same alone and together.
#[test]
fn planted_datasets_score_their_known_metrics_alone_and_together() {
    let dir = tempfile::tempdir().unwrap();
    let (models, data) = (dir.path().join("models"), dir.path().join("data"));
    let py = venv_python("onnx and numpy for the model and dataset scripts");
    for (script, args) in [
        ("gen_yolo_models.py", vec![&models]),
        ("gen_planted_datasets.py", vec![&models, &data]),
    ] {
        let o = Command::new(&py)
            .arg(repo().join("scripts").join(script))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (run `make deps`)", py.display()));
        assert!(o.status.success(), "{script}: {}", out_text(&o));
    }
    let tasks = ["cls", "detect", "pose", "seg", "obb"];
    let mut toml = real_models_toml();
    for t in tasks {
        toml += &format!(
            "\n[[model]]\nname = \"yolo-{t}\"\npath = \"{}\"\ntask = \"{t}\"\ndataset = \"{}\"\n",
            models.join(format!("{t}.onnx")).display(),
            data.join(t).display(),
        );
    }
    toml += "\n[[experiment]]\nname = \"planted\"\nkind = \"validation\"\n\
             models = [\"yolo-cls\", \"yolo-detect\", \"yolo-pose\", \"yolo-seg\", \"yolo-obb\"]\n\
             modes = [\"alone\", \"together\"]\nmps = [\"off\"]\nwarmup = 1\nrepeats = 1\ncooldown_s = 0\n";
    let bus = Bus::session();
    let cfg = TestConfig::new(&toml);
    let mut d = Daemon::spawn(&bus, &cfg, None, &[]);
    d.wait_ready(&bus);
    let id = run_wait(&bus, "planted", &d);
    let json: serde_json::Value = serde_json::from_str(&report(&bus, id, "json")).unwrap();
    let v = &json["validation"];

    for g in v["agreement"].as_array().unwrap() {
        assert_eq!(g["phases"], 2, "{g}");
        assert_eq!(g["metrics_identical"], true, "{g}");
        assert_eq!(g["predictions_identical"], true, "{g}");
    }
    // Every task's image went through all three timed stages, alone and together.
    assert_eq!(v["stages"].as_array().unwrap().len(), 10, "{v:#}");
    for s in v["stages"].as_array().unwrap() {
        assert_eq!(s["n"], 3, "{s}");
    }
    let metrics = |model: &str| -> serde_json::Value {
        let cells: Vec<&serde_json::Value> = v["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["model"] == model)
            .collect();
        assert_eq!(cells.len(), 2, "{model}");
        cells[0]["metrics"].clone()
    };
    let close = |x: &serde_json::Value, want: f64| (x.as_f64().unwrap() - want).abs() < 1e-9;
    // A perfect match under Ultralytics' 101-point interpolation scores 0.995.
    let perfect = |m: &serde_json::Value, kind: &str, precision: f64| {
        let b = &m[kind];
        assert!(close(&b["recall"], 1.0), "{kind}: {m}");
        assert!(close(&b["precision"], precision), "{kind}: {m}");
        assert!(close(&b["map50"], 0.995), "{kind}: {m}");
        assert!(close(&b["map50_95"], 0.995), "{kind}: {m}");
    };
    let cls = metrics("yolo-cls");
    assert_eq!(
        (cls["top1"].as_f64(), cls["top5"].as_f64()),
        (Some(1.0), Some(1.0))
    );
    // Multi-label NMS keeps two extra labels per image above 0.25: 5 TP of 7.
    let det = metrics("yolo-detect");
    perfect(&det, "boxes", 5.0 / 7.0);
    assert_eq!(
        (det["instances"].as_u64(), det["detections"].as_u64()),
        (Some(15), Some(21))
    );
    let pose = metrics("yolo-pose");
    perfect(&pose, "boxes", 1.0);
    perfect(&pose, "keypoints", 1.0);
    let seg = metrics("yolo-seg");
    perfect(&seg, "boxes", 1.0);
    // Labels are box outlines, predictions the prototypes' shapes: masks score lower.
    assert!(seg["masks"]["map50_95"].as_f64().unwrap() < 0.9, "{seg}");
    let obb = metrics("yolo-obb");
    perfect(&obb, "boxes", 4.0 / 5.0);
    assert!(d.is_running());
}

/// `iterations` caps the images of a validation pass, and `--predictions` writes one line per
/// scored image with the original image's pixel coordinates.
#[test]
fn worker_caps_images_and_writes_predictions() {
    let data = photo_datasets();
    let preds = data.path().join("pred.jsonl");
    let o = Command::new(env!("CARGO_BIN_EXE_mpslab-worker"))
        .arg("--ort-lib")
        .arg(cache().join("ort/libonnxruntime.so"))
        .arg("--model")
        .arg(cache().join("models/320n.onnx"))
        .args([
            "--dim",
            "batch=1",
            "--dim",
            "height=320",
            "--dim",
            "width=320",
        ])
        .args([
            "--threads",
            "1",
            "--warmup",
            "0",
            "--autostart",
            "--task",
            "detect",
        ])
        .arg("--dataset")
        .arg(data.path().join("faces"))
        .arg("--predictions")
        .arg(&preds)
        .args(["--iterations", "1"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out_text(&o));
    let msgs: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary = msgs.iter().find(|m| m["type"] == "validation").unwrap();
    assert_eq!(summary["images"], 1, "{summary}");
    assert_eq!(summary["dataset_images"], 2, "{summary}");
    let done = msgs.iter().find(|m| m["type"] == "done").unwrap();
    assert_eq!(done["reason"], "iterations", "{done}");

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&preds)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    let p = &lines[0];
    assert_eq!(p["image"], "images/val/astronaut.png");
    assert_eq!(
        (p["width"].as_u64(), p["height"].as_u64()),
        (Some(512), Some(512))
    );
    let face = &p["objects"][0];
    assert_eq!(face["class"], 1, "FACE_FEMALE first: {p}");
    let b: Vec<f64> = face["box"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    // In the original 512 px image, inside the hand label (172, 62)-(280, 186) give or take.
    assert!(
        b[0] > 160.0 && b[1] > 55.0 && b[2] < 290.0 && b[3] < 195.0,
        "{b:?}"
    );
    for stage in ["pre_ms", "infer_ms", "post_ms"] {
        assert!(p[stage].as_f64().unwrap() > 0.0, "{stage}: {p}");
    }
}
