//! Validation experiments: datasets in Ultralytics layout, Ultralytics-style pre- and
//! post-processing of YOLO v8/11 ONNX outputs, and task metrics.
//!
//! Everything here is pure logic except [`dataset`] (walks the dataset on disk) and
//! [`image::decode`] (reads one image file). Coordinates are pixels of the original image
//! unless a type says otherwise; YOLO label files are normalised and are scaled on load.

pub mod dataset;
pub mod image;
pub mod metrics;
pub mod postprocess;
pub mod preprocess;

use serde::{Deserialize, Serialize};

pub use crate::config::Task;

/// Axis-aligned box, corners in pixels (x1 <= x2, y1 <= y2).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BBox {
    pub fn area(&self) -> f32 {
        (self.x2 - self.x1).max(0.0) * (self.y2 - self.y1).max(0.0)
    }
}

/// Rotated box as Ultralytics' `xywhr`: centre, width, height, angle in radians.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RBox {
    pub cx: f32,
    pub cy: f32,
    pub w: f32,
    pub h: f32,
    pub angle: f32,
}

impl RBox {
    /// The four corners, in order around the box (Ultralytics `xywhr2xyxyxyxy`).
    pub fn corners(&self) -> [[f32; 2]; 4] {
        let (sin, cos) = self.angle.sin_cos();
        let (v1x, v1y) = (self.w / 2.0 * cos, self.w / 2.0 * sin);
        let (v2x, v2y) = (-self.h / 2.0 * sin, self.h / 2.0 * cos);
        [
            [self.cx + v1x + v2x, self.cy + v1y + v2y],
            [self.cx + v1x - v2x, self.cy + v1y - v2y],
            [self.cx - v1x - v2x, self.cy - v1y - v2y],
            [self.cx - v1x + v2x, self.cy - v1y + v2y],
        ]
    }
}

/// A keypoint: position in pixels and, for labels, visibility (0 = not labelled, 1 = occluded,
/// 2 = visible; 2-value keypoints count as visible), for predictions the keypoint confidence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Keypoint {
    pub x: f32,
    pub y: f32,
    pub v: f32,
}

/// Binary mask at the original image size, row-major, one byte per pixel (0 or 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// One predicted object after NMS, mapped back to the original image.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub class: u32,
    pub score: f32,
    /// For obb: the axis-aligned hull of `rbox`.
    pub bbox: BBox,
    /// obb only.
    pub rbox: Option<RBox>,
    /// pose only.
    pub keypoints: Vec<Keypoint>,
    /// seg only.
    pub mask: Option<Mask>,
}

/// What one image's model outputs become.
#[derive(Debug, Clone, PartialEq)]
pub enum Prediction {
    /// cls: one probability per class.
    Classes { probs: Vec<f32> },
    /// detect, pose, seg, obb.
    Objects(Vec<Detection>),
}

/// One labelled object, in pixels of the original image.
#[derive(Debug, Clone, PartialEq)]
pub struct GtObject {
    pub class: u32,
    /// For seg: the polygon's bounding box; for obb: the corners' hull.
    pub bbox: BBox,
    /// obb only (from the 4 corner points).
    pub rbox: Option<RBox>,
    /// pose only.
    pub keypoints: Vec<Keypoint>,
    /// seg only: the polygon, pixels.
    pub polygon: Vec<[f32; 2]>,
}

/// The labels of one image.
#[derive(Debug, Clone, PartialEq)]
pub enum Labels {
    Class(u32),
    Objects(Vec<GtObject>),
}

/// Post-processing thresholds, Ultralytics `val` defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ValParams {
    /// Candidates below this confidence are dropped before NMS (Ultralytics val: 0.001, so
    /// that mAP sees the whole precision/recall curve).
    pub conf: f32,
    /// NMS IoU threshold (Ultralytics val: 0.7).
    pub iou: f32,
    /// Detections kept per image after NMS (Ultralytics: 300).
    pub max_det: usize,
    /// Precision, recall and F1 are reported for detections at or above this confidence.
    pub report_conf: f32,
    /// Every class above `conf` becomes a candidate, not only the best one (Ultralytics val).
    pub multi_label: bool,
}

impl Default for ValParams {
    fn default() -> Self {
        ValParams {
            conf: 0.001,
            iou: 0.7,
            max_det: 300,
            report_conf: 0.25,
            multi_label: true,
        }
    }
}

/// A decoded 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// How an image was fitted into the model input (Ultralytics `LetterBox`):
/// `input = original * gain + (pad_x, pad_y)`; `pad_x`/`pad_y` are the left/top border in
/// whole pixels that `LetterBox` actually added, which is what Ultralytics' validator hands
/// `ops.scale_boxes` as `ratio_pad`. (Without `ratio_pad`, as in its predictor, `scale_boxes`
/// recomputes the border as `round((input - original * gain) / 2 - 0.1)`, which is one pixel
/// off whenever the scaled side's rounding moves the half-border across a rounding boundary,
/// e.g. a 321x65 (w x h) image in a 320x320 input: top border 127, recomputed 128.)
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub gain: f32,
    pub pad_x: f32,
    pub pad_y: f32,
    /// The model input's size (after stride padding, for dynamic inputs).
    pub input_w: u32,
    pub input_h: u32,
    pub orig_w: u32,
    pub orig_h: u32,
}

/// One output tensor of one inference, as f32.
#[derive(Debug, Clone, Copy)]
pub struct OutputView<'a> {
    pub name: &'a str,
    pub shape: &'a [i64],
    pub data: &'a [f32],
}

/// A problem with one dataset file; the file is skipped (or, for a missing label file, the
/// image counts as background, as Ultralytics does) and the run goes on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetIssue {
    pub file: String,
    /// 1-based line of a label file, when the problem is on one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub kind: IssueKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueKind {
    /// No label file for an image: the image is used as background.
    MissingLabel,
    /// A label file that cannot be used: the image is skipped.
    BadLabel,
    /// An image that cannot be read or decoded: skipped.
    BadImage,
}
