#!/usr/bin/env python3
"""Reference detections of a real Ultralytics YOLO detect export on one image (tests/vision_yolo.rs).

Usage: .cache/venv/bin/python scripts/yolo_ref.py MODEL IMAGE

Python ONNX Runtime (CPU) on Ultralytics' LetterBox (cv2.INTER_LINEAR resize, grey 114 border,
BGR -> RGB, /255, NCHW), then a numpy transcription of Ultralytics' non_max_suppression and
scale_boxes (scripts/gen_yolo_models.py) with the predict settings (conf 0.25, iou 0.7, best
class only) and the val settings (conf 0.001, iou 0.7, multi_label). A dynamic-shape export is
fed at its metadata `imgsz` (NudeNet 320n.onnx: 320x320). Prints JSON:
  {"input": [w, h], "orig": [w, h], "num_classes": nc,
   "runs": [{"conf", "iou", "multi_label", "max_det", "detections": [{"class", "score", "box"}]}]}
"""
import json
import sys
from pathlib import Path

import numpy as np

try:
    import cv2
except ImportError:
    sys.exit("yolo_ref.py: opencv-python-headless is missing from the venv: run `make deps`")
try:
    import onnxruntime as ort
except ImportError:
    sys.exit("yolo_ref.py: onnxruntime is missing from the venv: run `make deps`")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_yolo_models import non_max_suppression  # noqa: E402

RUNS = [
    dict(conf=0.25, iou=0.7, multi_label=False, max_det=300),
    dict(conf=0.001, iou=0.7, multi_label=True, max_det=300),
]


def letterbox(img, new_w, new_h):
    """Ultralytics LetterBox(auto=False, scaleup=True, center=True) on a BGR image."""
    h, w = img.shape[:2]
    r = min(new_h / h, new_w / w)
    unpad_w, unpad_h = round(w * r), round(h * r)
    dw, dh = (new_w - unpad_w) / 2, (new_h - unpad_h) / 2
    if (w, h) != (unpad_w, unpad_h):
        img = cv2.resize(img, (unpad_w, unpad_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))


def scale_boxes(boxes, in_w, in_h, orig_w, orig_h):
    gain = min(in_h / orig_h, in_w / orig_w)
    pad_x = round((in_w - orig_w * gain) / 2 - 0.1)
    pad_y = round((in_h - orig_h * gain) / 2 - 0.1)
    b = boxes.copy()
    b[:, [0, 2]] -= pad_x
    b[:, [1, 3]] -= pad_y
    b /= gain
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, orig_w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, orig_h)
    return b


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    model, image = sys.argv[1], sys.argv[2]
    bgr = cv2.imread(image, cv2.IMREAD_COLOR)
    if bgr is None:
        sys.exit(f"yolo_ref.py: cannot read {image}")
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    in_h, in_w = inp.shape[2], inp.shape[3]
    if not (isinstance(in_h, int) and isinstance(in_w, int)):
        # A dynamic export: Ultralytics reads the size it was exported for from the metadata.
        in_h, in_w = json.loads(session.get_modelmeta().custom_metadata_map.get("imgsz", "[320, 320]"))
    lb = letterbox(bgr, in_w, in_h)
    x = np.ascontiguousarray(lb[..., ::-1].transpose(2, 0, 1))[None].astype(np.float32) / 255
    (pred,) = session.run(None, {inp.name: x})[:1]
    nc = pred.shape[1] - 4
    orig_h, orig_w = bgr.shape[:2]
    runs = []
    for s in RUNS:
        dets = non_max_suppression(pred, s["conf"], s["iou"], s["multi_label"], s["max_det"], nc)
        boxes = scale_boxes(dets[:, :4], in_w, in_h, orig_w, orig_h) if len(dets) else dets[:, :4]
        runs.append({
            **s,
            "detections": [
                {"class": int(d[5]), "score": float(d[4]), "box": [float(v) for v in boxes[k]]}
                for k, d in enumerate(dets)
            ],
        })
    print(json.dumps({"input": [in_w, in_h], "orig": [orig_w, orig_h], "num_classes": nc, "runs": runs}))


if __name__ == "__main__":
    main()
