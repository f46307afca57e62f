#!/usr/bin/env python3
"""Datasets labelled with exactly what the generated YOLO models predict, so every metric has a
known value: an end-to-end check of pre-processing, post-processing and metrics together.

    gen_planted_datasets.py MODELS_DIR OUTDIR [--images N]

MODELS_DIR is the output of scripts/gen_yolo_models.py (<task>.onnx and <task>.expected.json).
For each task, OUTDIR/<task>/ gets N plain 320x320 images (the models' input size, so the
letterbox is the identity) whose labels are the model's detections under Ultralytics' predict
settings (conf 0.25, best class only), read from <task>.expected.json, which was computed by a
numpy transcription of Ultralytics, not by mpslab:
  detect  boxes                      -> box P < 1 only through extra multi-label detections;
  pose    boxes and 17 keypoints     -> R = 1, box and keypoint mAP50-95 = 0.995;
  obb     the four rotated corners   -> R = 1, mAP50-95 = 0.995;
  seg     box outlines as polygons   -> box metrics as detect (masks differ from boxes);
  cls     every image in the folder of the top class -> top-1 = 1.
Standard library and numpy only; byte-identical output per run.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_datasets import write_png  # noqa: E402

SIZE = 320


def predict_case(models: Path, task: str) -> dict:
    doc = json.loads((models / f"{task}.expected.json").read_text())
    for case in doc["cases"]:
        if case["settings"] == "predict" and case["orig"] == [SIZE, SIZE]:
            return doc, case
    sys.exit(f"{models}/{task}.expected.json has no predict case for a {SIZE}x{SIZE} original")


def n(v: float) -> str:
    return f"{min(max(v / SIZE, 0.0), 1.0):.6f}"


def box_line(d) -> str:
    x1, y1, x2, y2 = d["box"]
    return f'{d["class"]} {n((x1 + x2) / 2)} {n((y1 + y2) / 2)} {n(x2 - x1)} {n(y2 - y1)}'


def corners(rbox):
    cx, cy, w, h, a = rbox
    c, s = math.cos(a), math.sin(a)
    return [(cx + dx * c - dy * s, cy + dx * s + dy * c)
            for dx, dy in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))]


def label_lines(task: str, dets) -> list:
    lines = []
    for d in dets:
        if task == "detect":
            lines.append(box_line(d))
        elif task == "pose":
            kpts = " ".join(f"{n(x)} {n(y)} 2" for x, y, _ in d["keypoints"])
            lines.append(f"{box_line(d)} {kpts}")
        elif task == "seg":
            x1, y1, x2, y2 = d["box"]
            pts = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
            lines.append(f'{d["class"]} ' + " ".join(f"{n(x)} {n(y)}" for x, y in pts))
        elif task == "obb":
            pts = corners(d["rbox"])
            if any(not (0 <= v <= SIZE) for p in pts for v in p):
                continue  # Ultralytics refuses out-of-image corners; so does the loader
            lines.append(f'{d["class"]} ' + " ".join(f"{n(x)} {n(y)}" for x, y in pts))
    return lines


def image(k: int) -> np.ndarray:
    img = np.full((SIZE, SIZE, 3), 100 + 20 * k, np.uint8)
    img[::16, :, :] = 60
    return img


def main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", type=Path)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--images", type=int, default=3)
    a = ap.parse_args(argv)
    for task in ("detect", "pose", "seg", "obb"):
        doc, case = predict_case(a.models, task)
        root = a.outdir / task
        (root / "images/val").mkdir(parents=True, exist_ok=True)
        (root / "labels/val").mkdir(parents=True, exist_ok=True)
        lines = label_lines(task, case["detections"])
        for k in range(a.images):
            write_png(root / "images/val" / f"img_{k}.png", image(k))
            (root / "labels/val" / f"img_{k}.txt").write_text("".join(l + "\n" for l in lines))
        names = "".join(f"  {i}: class{i}\n" for i in range(doc["num_classes"]))
        extra = "kpt_shape: [17, 3]\n" if task == "pose" else ""
        (root / "data.yaml").write_text(
            f"# Written by scripts/gen_planted_datasets.py\npath: .\nval: images/val\nnames:\n{names}{extra}")
        print(f"{task}: {root} ({a.images} images, {len(lines)} objects each)")
    doc, case = predict_case(a.models, "cls")
    top = int(np.argmax(case["probs"]))
    for c in range(doc["num_classes"]):
        folder = a.outdir / "cls" / "val" / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        if c == top:
            for k in range(a.images):
                write_png(folder / f"img_{k}.png", image(k))
    print(f"cls: {a.outdir / 'cls'} ({a.images} images, all class{top})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
