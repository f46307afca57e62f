//! The worker's validation pass: walk the dataset, time preprocess / inference / postprocess
//! per image, accumulate task metrics and a digest of every prediction.
//!
//! Decoding the image file is not timed (as in Ultralytics, where the dataloader reads images
//! outside the speed report), so slow storage does not pass for slow inference.

use std::path::PathBuf;

use ort::session::Session;
use ort::value::Tensor;
use sha2::{Digest, Sha256};

use super::protocol::{Record, Stage, TensorInfo, ValidationSummary};
use crate::config::Task;
use crate::vision::dataset::{relative, Dataset};
use crate::vision::metrics::{MetricOptions, MetricsAccumulator};
use crate::vision::postprocess::{self, ModelLayout};
use crate::vision::{
    image, preprocess, DatasetIssue, IssueKind, Letterbox, OutputView, Prediction, ValParams,
};

/// Ultralytics' stride for letterboxing dynamic-shape inputs.
const STRIDE: u32 = 32;

#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error("dataset {path}: {message}")]
    Dataset { path: PathBuf, message: String },
    #[error("model {model} cannot be validated as `{task}`: {message}")]
    Model {
        model: PathBuf,
        task: &'static str,
        message: String,
    },
    #[error("cannot write predictions to {path}: {message}")]
    Predictions { path: PathBuf, message: String },
    #[error("{stage} failed on {image}: {message}")]
    Image {
        stage: &'static str,
        image: String,
        message: String,
    },
}

/// How the image input is fed.
#[derive(Debug, Clone, Copy)]
enum InputGeometry {
    /// Fixed `[1, 3, h, w]`: letterbox (or centre-crop for cls) to exactly that size.
    Fixed { w: u32, h: u32 },
    /// Dynamic height/width: letterbox the long side to `imgsz`, pad the short one to the stride.
    Dynamic { imgsz: u32 },
}

/// One timed image, ready to be sent.
pub struct ImageResult {
    pub record: Record,
    pub stage: Stage,
}

pub struct Validator {
    task: Task,
    dataset: Dataset,
    layout: ModelLayout,
    params: ValParams,
    geometry: InputGeometry,
    accumulator: MetricsAccumulator,
    hasher: Sha256,
    issues: Vec<DatasetIssue>,
    images: u64,
    next_item: usize,
    buf: Vec<f32>,
    output_names: Vec<String>,
    model: PathBuf,
    predictions: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
}

impl Validator {
    /// Opens the dataset and checks that the model's input and outputs fit the task.
    pub fn new(
        model: PathBuf,
        task: Task,
        dataset_path: &std::path::Path,
        split: &str,
        params: ValParams,
        inputs: &[TensorInfo],
        outputs: &[TensorInfo],
    ) -> Result<Self, ValidationError> {
        let model_err = |message: String| ValidationError::Model {
            model: model.clone(),
            task: task.as_str(),
            message,
        };
        if task == Task::Generic {
            return Err(model_err(
                "validation needs a task: cls, detect, pose, seg or obb".into(),
            ));
        }
        // A YOLO dataset may be named by its folder when data.yaml sits in it.
        let yaml = dataset_path.join("data.yaml");
        let dataset_path = if task != Task::Cls && dataset_path.is_dir() && yaml.is_file() {
            yaml.as_path()
        } else {
            dataset_path
        };
        let dataset =
            Dataset::open(dataset_path, task, split).map_err(|e| ValidationError::Dataset {
                path: dataset_path.to_path_buf(),
                message: e.to_string(),
            })?;
        let geometry = image_input(inputs).map_err(model_err)?;
        let shapes: Vec<(&str, &[i64])> = outputs
            .iter()
            .map(|o| (o.name.as_str(), o.declared_shape.as_slice()))
            .collect();
        let layout =
            postprocess::layout(task, &shapes, Some(dataset.names.len()), dataset.kpt_shape)
                .map_err(|e| model_err(e.to_string()))?;
        let accumulator = MetricsAccumulator::new(
            task,
            dataset.names.len(),
            MetricOptions::ultralytics(params.report_conf),
        );
        let issues = dataset.issues.clone();
        Ok(Validator {
            task,
            dataset,
            layout,
            params,
            geometry,
            accumulator,
            hasher: Sha256::new(),
            issues,
            images: 0,
            next_item: 0,
            buf: Vec::new(),
            output_names: outputs.iter().map(|o| o.name.clone()).collect(),
            model,
            predictions: None,
        })
    }

    /// Also writes every prediction as one JSON line to `path`, for inspection or for
    /// checking against another implementation; written outside the timed stages.
    pub fn write_predictions(&mut self, path: &std::path::Path) -> Result<(), ValidationError> {
        let file = std::fs::File::create(path).map_err(|e| ValidationError::Predictions {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        self.predictions = Some((path.to_path_buf(), std::io::BufWriter::new(file)));
        Ok(())
    }

    fn dump(
        &mut self,
        image: String,
        width: u32,
        height: u32,
        stage: &Stage,
        prediction: &Prediction,
    ) -> Result<(), ValidationError> {
        use std::io::Write;
        let Some((path, out)) = &mut self.predictions else {
            return Ok(());
        };
        let line = prediction_json(image, width, height, stage, prediction);
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| ValidationError::Predictions {
                path: path.clone(),
                message: e.to_string(),
            })
    }

    pub fn dataset_images(&self) -> usize {
        self.dataset.items.len()
    }

    /// Runs the next usable image. `None` once the dataset is exhausted; an unreadable image
    /// becomes an issue and the next one is tried.
    pub fn next(
        &mut self,
        session: &mut Session,
        input: &mut Tensor<f32>,
        index: u64,
        now_ns: impl Fn() -> u64,
    ) -> Result<Option<ImageResult>, ValidationError> {
        loop {
            let Some(item) = self.dataset.items.get(self.next_item) else {
                return Ok(None);
            };
            self.next_item += 1;
            let img = match image::decode(&item.image) {
                Ok(img) => img,
                Err(e) => {
                    self.issues.push(DatasetIssue {
                        file: relative(&self.dataset.root, &item.image),
                        line: None,
                        kind: IssueKind::BadImage,
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let labels = item.labels.to_pixels(img.width, img.height);
            let name = || relative(&self.dataset.root, &item.image);
            let image_err = |stage: &'static str, message: String| ValidationError::Image {
                stage,
                image: name(),
                message,
            };

            let t0 = now_ns();
            let (letterbox, dynamic_input) = match (self.task, self.geometry) {
                (Task::Cls, InputGeometry::Fixed { w, h }) => {
                    preprocess::classify(&img, w, h, &mut self.buf);
                    (identity_box(&img, w, h), None)
                }
                (Task::Cls, InputGeometry::Dynamic { imgsz }) => {
                    preprocess::classify(&img, imgsz, imgsz, &mut self.buf);
                    let t = Tensor::from_array((
                        [1usize, 3, imgsz as usize, imgsz as usize],
                        std::mem::take(&mut self.buf),
                    ))
                    .map_err(|e| image_err("preprocess", e.to_string()))?;
                    (identity_box(&img, imgsz, imgsz), Some(t))
                }
                // Square inputs get exactly what `yolo val` feeds a fixed-shape export, so
                // metrics compare with Ultralytics' numbers; other shapes the predictor's path.
                (_, InputGeometry::Fixed { w, h }) if w == h => {
                    (preprocess::letterbox_val(&img, w, &mut self.buf), None)
                }
                (_, InputGeometry::Fixed { w, h }) => {
                    (preprocess::letterbox(&img, w, h, &mut self.buf), None)
                }
                (_, InputGeometry::Dynamic { imgsz }) => {
                    let lb = preprocess::letterbox_auto(&img, imgsz, STRIDE, &mut self.buf);
                    let t = Tensor::from_array((
                        [1usize, 3, lb.input_h as usize, lb.input_w as usize],
                        std::mem::take(&mut self.buf),
                    ))
                    .map_err(|e| image_err("preprocess", e.to_string()))?;
                    (lb, Some(t))
                }
            };
            if dynamic_input.is_none() {
                let (_, data) = input.extract_tensor_mut();
                if data.len() != self.buf.len() {
                    return Err(image_err(
                        "preprocess",
                        format!(
                            "preprocessed {} values for an input of {}",
                            self.buf.len(),
                            data.len()
                        ),
                    ));
                }
                data.copy_from_slice(&self.buf);
            }
            let t1 = now_ns();
            let run = match &dynamic_input {
                Some(t) => session.run(ort::inputs![t]),
                None => session.run(ort::inputs![&*input]),
            };
            let outputs = run.map_err(|e| image_err("inference", e.to_string()))?;
            let t2 = now_ns();
            let mut shapes = Vec::with_capacity(self.output_names.len());
            let mut datas = Vec::with_capacity(self.output_names.len());
            for (i, name) in self.output_names.iter().enumerate() {
                let (shape, data) = outputs[i]
                    .try_extract_tensor::<f32>()
                    .map_err(|e| image_err("reading outputs", format!("output `{name}`: {e}")))?;
                shapes.push(shape.to_vec());
                datas.push(data);
            }
            let views: Vec<OutputView> = self
                .output_names
                .iter()
                .zip(&shapes)
                .zip(&datas)
                .map(|((name, shape), data)| OutputView { name, shape, data })
                .collect();
            let prediction =
                postprocess::postprocess(&self.layout, &views, &letterbox, &self.params)
                    .map_err(|e| image_err("postprocess", e.to_string()))?;
            let t3 = now_ns();
            drop(views);
            drop(datas);
            drop(outputs);
            if let Some(t) = dynamic_input {
                // Give the buffer back so the next image reuses its allocation.
                if let Ok((_, data)) = t.try_extract_tensor::<f32>() {
                    self.buf = data.to_vec();
                }
            }

            self.accumulator
                .add(img.width, img.height, &labels, &prediction);
            hash_prediction(&mut self.hasher, &prediction);
            self.images += 1;
            let stage = Stage {
                index,
                pre_ns: t1 - t0,
                infer_ns: t2 - t1,
                post_ns: t3 - t2,
            };
            let image_name = relative(&self.dataset.root, &item.image);
            self.dump(image_name, img.width, img.height, &stage, &prediction)?;
            return Ok(Some(ImageResult {
                record: Record {
                    index,
                    start_ns: t0,
                    duration_ns: t3 - t0,
                },
                stage,
            }));
        }
    }

    pub fn finish(self) -> ValidationSummary {
        ValidationSummary {
            // Images left out when the dataset was opened count once, however many of
            // their label lines are bad.
            dataset_images: self.dataset.items.len() as u64
                + self
                    .dataset
                    .issues
                    .iter()
                    .filter(|i| i.kind != IssueKind::MissingLabel)
                    .map(|i| i.file.as_str())
                    .collect::<std::collections::BTreeSet<_>>()
                    .len() as u64,
            images: self.images,
            metrics: self.accumulator.finish(),
            predictions_sha256: hex(&self.hasher.finalize()),
            issues: self.issues,
        }
    }

    pub fn model(&self) -> &std::path::Path {
        &self.model
    }
}

/// The model's image input: one float32 input `[N, 3, H, W]`.
fn image_input(inputs: &[TensorInfo]) -> Result<InputGeometry, String> {
    let [input] = inputs else {
        return Err(format!(
            "a YOLO model has one image input; this one has {}",
            inputs.len()
        ));
    };
    if input.dtype != "float32" {
        return Err(format!(
            "input `{}` is {}; the image input must be float32",
            input.name, input.dtype
        ));
    }
    let declared = &input.declared_shape;
    let resolved = input.shape.as_deref().unwrap_or(declared);
    if declared.len() != 4 || (declared[1] != 3 && declared[1] != -1) {
        return Err(format!(
            "input `{}` is {:?}; expected [1, 3, height, width]",
            input.name, declared
        ));
    }
    if resolved[0] != 1 {
        return Err(format!(
            "input `{}` has batch {}; validation feeds one image at a time (set its dim to 1)",
            input.name, resolved[0]
        ));
    }
    let (h, w) = (resolved[2], resolved[3]);
    if declared[2] < 0 || declared[3] < 0 {
        Ok(InputGeometry::Dynamic {
            imgsz: h.max(w).max(STRIDE as i64) as u32,
        })
    } else {
        Ok(InputGeometry::Fixed {
            w: w as u32,
            h: h as u32,
        })
    }
}

fn identity_box(img: &crate::vision::RgbImage, w: u32, h: u32) -> Letterbox {
    Letterbox {
        gain: 1.0,
        pad_x: 0.0,
        pad_y: 0.0,
        input_w: w,
        input_h: h,
        orig_w: img.width,
        orig_h: img.height,
    }
}

/// Feeds a canonical byte form of the prediction to the digest: equal digests across phases
/// mean every class, score, coordinate and mask pixel came out bit-identical.
fn hash_prediction(h: &mut Sha256, p: &Prediction) {
    match p {
        Prediction::Classes { probs } => {
            h.update(b"C");
            h.update((probs.len() as u64).to_le_bytes());
            for x in probs {
                h.update(x.to_bits().to_le_bytes());
            }
        }
        Prediction::Objects(dets) => {
            h.update(b"O");
            h.update((dets.len() as u64).to_le_bytes());
            for d in dets {
                h.update(d.class.to_le_bytes());
                for x in [d.score, d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2] {
                    h.update(x.to_bits().to_le_bytes());
                }
                if let Some(r) = &d.rbox {
                    for x in [r.cx, r.cy, r.w, r.h, r.angle] {
                        h.update(x.to_bits().to_le_bytes());
                    }
                }
                for k in &d.keypoints {
                    for x in [k.x, k.y, k.v] {
                        h.update(x.to_bits().to_le_bytes());
                    }
                }
                if let Some(m) = &d.mask {
                    h.update(m.width.to_le_bytes());
                    h.update(m.height.to_le_bytes());
                    h.update(&m.data);
                }
            }
        }
    }
}

/// One line of `--predictions`: pixel coordinates of the original image; masks as their pixel
/// count (the full bitmap would dwarf everything else).
fn prediction_json(
    image: String,
    width: u32,
    height: u32,
    stage: &Stage,
    prediction: &Prediction,
) -> serde_json::Value {
    let ms = |ns: u64| ns as f64 / 1e6;
    let mut line = serde_json::json!({
        "image": image,
        "width": width,
        "height": height,
        "pre_ms": ms(stage.pre_ns),
        "infer_ms": ms(stage.infer_ns),
        "post_ms": ms(stage.post_ns),
    });
    match prediction {
        Prediction::Classes { probs } => {
            let mut order: Vec<usize> = (0..probs.len()).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            line["top5"] = order
                .iter()
                .take(5)
                .map(|&c| serde_json::json!([c, probs[c]]))
                .collect();
        }
        Prediction::Objects(dets) => {
            line["objects"] = dets
                .iter()
                .map(|d| {
                    let b = &d.bbox;
                    let mut o = serde_json::json!({
                        "class": d.class,
                        "score": d.score,
                        "box": [b.x1, b.y1, b.x2, b.y2],
                    });
                    if let Some(r) = &d.rbox {
                        o["rbox"] = serde_json::json!([r.cx, r.cy, r.w, r.h, r.angle]);
                    }
                    if !d.keypoints.is_empty() {
                        o["keypoints"] = d
                            .keypoints
                            .iter()
                            .map(|k| serde_json::json!([k.x, k.y, k.v]))
                            .collect();
                    }
                    if let Some(m) = &d.mask {
                        o["mask_area"] = m.data.iter().filter(|&&p| p != 0).count().into();
                    }
                    o
                })
                .collect();
        }
    }
    line
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::{BBox, Detection};

    fn info(shape: &[i64], resolved: &[i64]) -> TensorInfo {
        TensorInfo {
            name: "images".into(),
            dtype: "float32".into(),
            declared_shape: shape.to_vec(),
            shape: Some(resolved.to_vec()),
        }
    }

    #[test]
    fn image_input_accepts_fixed_and_dynamic_yolo_inputs() {
        assert!(matches!(
            image_input(&[info(&[1, 3, 320, 256], &[1, 3, 320, 256])]),
            Ok(InputGeometry::Fixed { w: 256, h: 320 })
        ));
        assert!(matches!(
            image_input(&[info(&[-1, 3, -1, -1], &[1, 3, 640, 480])]),
            Ok(InputGeometry::Dynamic { imgsz: 640 })
        ));
    }

    #[test]
    fn image_input_names_what_does_not_fit() {
        let e = image_input(&[info(&[1, 1, 28, 28], &[1, 1, 28, 28])]).unwrap_err();
        assert!(e.contains("expected [1, 3, height, width]"), "{e}");
        let e = image_input(&[info(&[4, 3, 64, 64], &[4, 3, 64, 64])]).unwrap_err();
        assert!(e.contains("batch 4"), "{e}");
        let mut i = info(&[1, 3, 64, 64], &[1, 3, 64, 64]);
        i.dtype = "uint8".into();
        assert!(image_input(&[i]).unwrap_err().contains("float32"));
        assert!(image_input(&[]).unwrap_err().contains("has 0"));
    }

    #[test]
    fn prediction_digest_sees_a_one_ulp_change() {
        let det = |score: f32| {
            Prediction::Objects(vec![Detection {
                class: 1,
                score,
                bbox: BBox {
                    x1: 1.0,
                    y1: 2.0,
                    x2: 3.0,
                    y2: 4.0,
                },
                rbox: None,
                keypoints: Vec::new(),
                mask: None,
            }])
        };
        let digest = |p: &Prediction| {
            let mut h = Sha256::new();
            hash_prediction(&mut h, p);
            hex(&h.finalize())
        };
        assert_eq!(digest(&det(0.5)), digest(&det(0.5)));
        assert_ne!(
            digest(&det(0.5)),
            digest(&det(f32::from_bits(0.5f32.to_bits() + 1)))
        );
        assert_ne!(
            digest(&Prediction::Objects(Vec::new())),
            digest(&Prediction::Classes { probs: Vec::new() })
        );
    }
}
