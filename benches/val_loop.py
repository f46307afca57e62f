#!/usr/bin/env python3
"""Baseline for benches/validation_vs_python.sh: a Python validation loop as Ultralytics runs it.

    val_loop.py --model M.onnx --images DIR [--threads 1] [--passes N]

Per image: cv2.imread (not timed, like mpslab-worker's decode), then preprocess (Ultralytics
LetterBox with cv2, BGR->RGB, /255, NCHW), inference (onnxruntime CPU, one thread), postprocess
(numpy transcription of Ultralytics' non_max_suppression with the val settings, conf 0.001,
iou 0.7, multi_label, and scale_boxes). Prints medians in ns as JSON.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from gen_yolo_models import non_max_suppression  # noqa: E402
from yolo_ref import letterbox, scale_boxes  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--passes", type=int, default=1)
    a = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    in_h, in_w = inp.shape[2], inp.shape[3]
    if not (isinstance(in_h, int) and isinstance(in_w, int)):
        in_h = in_w = 320
    files = sorted(p for p in a.images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in files]
    images = [i for i in images if i is not None]
    pre, infer, post = [], [], []
    # One warm-up image, as the worker warms up before the pass.
    warm = letterbox(images[0], in_w, in_h)
    session.run(None, {inp.name: np.ascontiguousarray(warm[..., ::-1].transpose(2, 0, 1))[None].astype(np.float32) / 255})
    for _ in range(a.passes):
        for bgr in images:
            t0 = time.perf_counter_ns()
            lb = letterbox(bgr, in_w, in_h)
            x = np.ascontiguousarray(lb[..., ::-1].transpose(2, 0, 1))[None].astype(np.float32) / 255
            t1 = time.perf_counter_ns()
            (pred,) = session.run(None, {inp.name: x})[:1]
            t2 = time.perf_counter_ns()
            nc = pred.shape[1] - 4
            dets = non_max_suppression(pred, 0.001, 0.7, True, 300, nc)
            if len(dets):
                scale_boxes(dets[:, :4], in_w, in_h, bgr.shape[1], bgr.shape[0])
            t3 = time.perf_counter_ns()
            pre.append(t1 - t0)
            infer.append(t2 - t1)
            post.append(t3 - t2)
    med = lambda v: int(statistics.median(v))  # noqa: E731
    print(json.dumps({"images": len(pre), "pre_ns": med(pre), "infer_ns": med(infer), "post_ns": med(post)}))


if __name__ == "__main__":
    main()
