#!/usr/bin/env python3
"""Writes tiny ONNX models with the exact Ultralytics YOLO v8/11 export I/O and planted outputs,
and the detections Ultralytics' post-processing makes of them (tests/vision_yolo.rs).

Usage: .cache/venv/bin/python scripts/gen_yolo_models.py OUT_DIR

Every model takes `images` float32 [1, 3, 320, 320] and returns constants planted here (a few
anchors with known boxes, scores, keypoints, angles, mask coefficients; every other score 0):
  cls.onnx     output0 [1, 3]                 probabilities (the export ends in softmax)
  detect.onnx  output0 [1, 4+3, 2100]
  pose.onnx    output0 [1, 4+1+17*3, 2100]
  seg.onnx     output0 [1, 4+3+32, 2100], output1 [1, 32, 80, 80] (prototypes)
  obb.onnx     output0 [1, 4+3+1, 2100]
Each output is `constant + 0 * ReduceMean(images)`, so ONNX Runtime cannot fold the graph into a
constant, and the values stay bit-exact for any finite image.

OUT_DIR/<task>.expected.json holds, for a 320x320 original (identity letterbox), a 640x480
original (gain 0.5, 40 px bars top and bottom) and a 300x211 one (gain 16/15, bars of 47 and 48
px; boxes and keypoints scaled with the validator's ratio_pad), and for Ultralytics' val (conf 0.001, iou 0.7,
multi_label) and predict (conf 0.25, iou 0.7, best class only) settings, the detections of a
numpy transcription of Ultralytics 8.3 `utils/nms.py` non_max_suppression (torchvision greedy NMS;
TorchNMS.fast_nms with batch_probiou for obb) and `utils/ops.py` (xywh2xyxy, scale_boxes,
scale_coords, regularize_rboxes, crop_mask, process_mask(upsample=True), scale_masks). It is
written from Ultralytics' code, not from the Rust implementation it checks.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR = 8
IMGSZ = 320
N = 40 * 40 + 20 * 20 + 10 * 10  # 2100 anchors of a 320x320 input, strides 8/16/32
NM = 32
MH = MW = IMGSZ // 4
# (w, h): identity; gain 0.5 with 40 px bars; gain 16/15 with an odd 95 px border (47 top, 48
# bottom), where mask content cuts and rounding of the border matter.
ORIGINALS = [(320, 320), (640, 480), (300, 211)]
SETTINGS = {
    "val": dict(conf=0.001, iou=0.7, multi_label=True, max_det=300),
    "predict": dict(conf=0.25, iou=0.7, multi_label=False, max_det=300),
}
F32 = np.float32


# ---------------------------------------------------------------- the models


def model(name, outputs):
    """outputs: [(name, float32 array)] -> ONNX graph returning each constant + 0 * mean(images)."""
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean4"], axes=[0, 1, 2, 3], keepdims=1),
        helper.make_node("Mul", ["mean4", "zero"], ["zero4"]),
    ]
    inits = [numpy_helper.from_array(np.zeros((), F32), "zero")]
    infos = []
    for out, value in outputs:
        rank = value.ndim
        shape = numpy_helper.from_array(np.ones(rank, np.int64), f"{out}_rank")
        nodes.append(helper.make_node("Reshape", ["zero4", f"{out}_rank"], [f"{out}_zero"]))
        nodes.append(helper.make_node("Add", [f"{out}_const", f"{out}_zero"], [out]))
        inits += [shape, numpy_helper.from_array(value.astype(F32), f"{out}_const")]
        infos.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, list(value.shape)))
    g = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, IMGSZ, IMGSZ])],
        infos,
        initializer=inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mpslab")
    m.ir_version = IR
    onnx.checker.check_model(m, full_check=True)
    return m


class Pred:
    """A channels-first [1, rows, N] head output, zero everywhere."""

    def __init__(self, nc, extra):
        self.nc = nc
        self.a = np.zeros((1, 4 + nc + extra, N), F32)

    def anchor(self, i, xywh, scores, extra=()):
        self.a[0, :4, i] = xywh
        for c, s in scores.items():
            self.a[0, 4 + c, i] = s
        for k, v in enumerate(extra):
            self.a[0, 4 + self.nc + k, i] = v


def plant_detect():
    p = Pred(3, 0)
    p.anchor(10, [100, 100, 40, 40], {0: 0.9})
    p.anchor(11, [104, 100, 40, 40], {0: 0.8})  # IoU 0.82 with #10: suppressed
    p.anchor(1650, [104, 100, 40, 40], {1: 0.7})  # same box, other class: kept
    p.anchor(900, [200, 200, 20, 20], {1: 0.5, 2: 0.4})  # two labels under multi_label
    p.anchor(1200, [50, 250, 20, 20], {2: 0.2})  # val only
    p.anchor(2099, [310, 50, 40, 40], {2: 0.6})  # past the top-right corner: clipped
    p.anchor(3, [160, 160, 300, 300], {0: 0.0005})  # below every conf
    p.anchor(2050, [150, 280, 100, 30], {0: 0.3, 1: 0.35})
    return p.a


def plant_pose():
    rng = np.random.default_rng(1)
    p = Pred(1, 17 * 3)

    def person(cx, cy, w, h):
        xs = rng.uniform(cx - w / 2, cx + w / 2, 17)
        ys = rng.uniform(cy - h / 2, cy + h / 2, 17)
        vs = rng.uniform(0, 1, 17)
        return np.stack([xs, ys, vs], 1).reshape(-1).astype(F32)

    p.anchor(20, [120, 150, 80, 200], {0: 0.92}, person(120, 150, 80, 200))
    p.anchor(21, [122, 152, 80, 200], {0: 0.85}, person(122, 152, 80, 200))  # suppressed
    # Keypoints past the image edges are clipped.
    p.anchor(1700, [290, 60, 80, 120], {0: 0.6}, person(300, 40, 80, 120))
    p.anchor(2001, [60, 260, 40, 60], {0: 0.1}, person(60, 260, 40, 60))  # val only
    return p.a


def plant_seg():
    yy, xx = np.mgrid[0:MH, 0:MW].astype(F32)
    protos = np.zeros((1, NM, MH, MW), F32)
    protos[0, 0] = np.where((yy >= 20) & (yy < 40) & (xx >= 10) & (xx < 30), 10, -10)
    protos[0, 1] = 8 - np.hypot(xx - 50, yy - 50)  # disc of radius 8 cells around (50, 50)
    protos[0, 2] = (xx - 45) / 4  # a ramp: positive right of column 45
    rng = np.random.default_rng(2)
    protos[0, 3:] = rng.normal(0, 0.05, (NM - 3, MH, MW))
    p = Pred(3, NM)

    def coeffs(**kw):
        c = np.zeros(NM, F32)
        for k, v in kw.items():
            c[int(k[1:])] = v
        return c

    p.anchor(100, [120, 120, 200, 200], {0: 0.9}, coeffs(c0=1.0))  # the whole rectangle
    p.anchor(101, [118, 120, 200, 200], {0: 0.5}, coeffs(c0=1.0))  # duplicate: suppressed
    p.anchor(1610, [210, 200, 60, 60], {1: 0.8}, coeffs(c1=1.0, c3=0.5))  # disc, cut by the box
    p.anchor(1999, [250, 90, 100, 60], {2: 0.7}, coeffs(c2=1.0, c4=-0.3))  # ramp inside the box
    p.anchor(2080, [40, 280, 40, 40], {2: 0.05}, coeffs())  # val only; logits 0: empty mask
    return p.a, protos


def plant_obb():
    p = Pred(3, 1)
    p.anchor(5, [100, 100, 60, 20], {0: 0.9}, [0.3])
    p.anchor(6, [101, 100, 20, 60], {0: 0.8}, [0.3 + math.pi / 2])  # same rectangle: suppressed
    p.anchor(1605, [100, 100, 60, 20], {1: 0.6}, [0.3])  # other class: kept
    p.anchor(800, [200, 200, 30, 50], {0: 0.7}, [2.0])  # regularised: w/h swap, 2 - pi/2
    p.anchor(2010, [250, 250, 40, 16], {2: 0.45, 0: 0.3}, [-0.5])  # negative angle
    p.anchor(1300, [300, 20, 60, 30], {1: 0.2}, [0.1])  # val only; past the edge, not clipped
    return p.a


# Three classes, like the generated cls dataset (scripts/gen_datasets.py), so the demo can
# validate this model on it.
CLS_PROBS = np.array([[0.25, 0.6, 0.15]], F32)


# ---------------------------------------------------------------- Ultralytics, in numpy


def xywh2xyxy(x):
    y = np.empty_like(x)
    xy, wh = x[..., :2], x[..., 2:] / 2
    y[..., :2] = xy - wh
    y[..., 2:] = xy + wh
    return y


def box_iou(a, b):
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def torchvision_nms(boxes, scores, iou_thres):
    """Greedy: best first, drop every later box with IoU > iou_thres."""
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(scores), bool)
    keep = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1:]
        suppressed[rest[box_iou(boxes[i:i + 1], boxes[rest])[0] > iou_thres]] = True
    return np.array(keep, np.int64)


def covariance(b):
    a, bb, c = b[:, 2] ** 2 / 12, b[:, 3] ** 2 / 12, b[:, 4]
    cos, sin = np.cos(c), np.sin(c)
    return a * cos**2 + bb * sin**2, a * sin**2 + bb * cos**2, (a - bb) * cos * sin


def batch_probiou(obb1, obb2, eps=1e-7):
    x1, y1 = obb1[:, 0:1], obb1[:, 1:2]
    x2, y2 = obb2[None, :, 0], obb2[None, :, 1]
    a1, b1, c1 = (v[:, None] for v in covariance(obb1))
    a2, b2, c2 = (v[None, :] for v in covariance(obb2))
    den = (a1 + a2) * (b1 + b2) - (c1 + c2) ** 2 + eps
    t1 = (((a1 + a2) * (y1 - y2) ** 2 + (b1 + b2) * (x1 - x2) ** 2) / den) * 0.25
    t2 = (((c1 + c2) * (x2 - x1) * (y1 - y2)) / den) * 0.5
    t3 = np.log(
        ((a1 + a2) * (b1 + b2) - (c1 + c2) ** 2)
        / (4 * np.sqrt(np.clip(a1 * b1 - c1**2, 0, None) * np.clip(a2 * b2 - c2**2, 0, None)) + eps)
        + eps
    ) * 0.5
    bd = np.clip(t1 + t2 + t3, eps, 100.0)
    hd = np.sqrt(1.0 - np.exp(-bd) + eps)
    return 1 - hd


def fast_nms(boxes, scores, iou_thres):
    """TorchNMS.fast_nms: drop a box when any higher-scored box has probiou >= iou_thres."""
    order = np.argsort(-scores, kind="stable")
    b = boxes[order]
    ious = np.triu(batch_probiou(b, b), 1)
    return order[np.nonzero((ious >= iou_thres).sum(0) <= 0)[0]]


def non_max_suppression(prediction, conf, iou, multi_label, max_det, nc, rotated=False,
                        max_nms=30000, max_wh=7680):
    """One image of ultralytics.utils.nms.non_max_suppression; rows: box, conf, cls, extra."""
    x = prediction[0].T.copy()  # [N, rows]
    extra = x.shape[1] - 4 - nc
    multi_label &= nc > 1
    x = x[x[:, 4:4 + nc].max(1) > conf]
    if not rotated:
        x[:, :4] = xywh2xyxy(x[:, :4])
    box, cls, mask = x[:, :4], x[:, 4:4 + nc], x[:, 4 + nc:]
    if multi_label:
        i, j = np.nonzero(cls > conf)
        x = np.concatenate([box[i], x[i, 4 + j, None], j[:, None].astype(F32), mask[i]], 1)
    else:
        j = cls.argmax(1)
        c = cls.max(1)
        x = np.concatenate([box, c[:, None], j[:, None].astype(F32), mask], 1)[c > conf]
    if not len(x):
        return x
    if len(x) > max_nms:
        x = x[np.argsort(-x[:, 4], kind="stable")[:max_nms]]
    c = x[:, 5:6] * max_wh
    scores = x[:, 4]
    if rotated:
        boxes = np.concatenate([x[:, :2] + c, x[:, 2:4], x[:, -1:]], 1)
        keep = fast_nms(boxes, scores, iou)
    else:
        keep = torchvision_nms(x[:, :4] + c, scores, iou)
    assert extra == x.shape[1] - 6
    return x[keep[:max_det]]


def ratio_pad(orig_w, orig_h):
    """The validator's ratio_pad: LetterBox's gain and its (left, top) border in whole pixels.
    (Predict recomputes it; scale_boxes rounds to the same border, scale_coords for keypoints
    keeps the unrounded half border, up to 0.5 input px off when the border is odd.)"""
    gain = min(IMGSZ / orig_h, IMGSZ / orig_w)
    unpad_w, unpad_h = round(orig_w * gain), round(orig_h * gain)
    dw, dh = (IMGSZ - unpad_w) / 2, (IMGSZ - unpad_h) / 2
    return gain, round(dw - 0.1), round(dh - 0.1)


def scale_boxes(boxes, orig_w, orig_h, xywh=False):
    gain, pad_x, pad_y = ratio_pad(orig_w, orig_h)
    b = boxes.copy()
    b[:, 0] -= pad_x
    b[:, 1] -= pad_y
    if not xywh:
        b[:, 2] -= pad_x
        b[:, 3] -= pad_y
    b[:, :4] /= gain
    if xywh:
        return b
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, orig_w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, orig_h)
    return b


def scale_coords(coords, orig_w, orig_h):
    gain, *pad = ratio_pad(orig_w, orig_h)
    c = coords.copy()
    c[..., 0] = ((c[..., 0] - pad[0]) / gain).clip(0, orig_w)
    c[..., 1] = ((c[..., 1] - pad[1]) / gain).clip(0, orig_h)
    return c


def regularize_rboxes(r):
    x, y, w, h, t = r.T
    swap = t % math.pi >= math.pi / 2
    return np.stack([x, y, np.where(swap, h, w), np.where(swap, w, h), t % (math.pi / 2)], 1)


def interpolate_bilinear(m, out_h, out_w):
    """F.interpolate(mode="bilinear", align_corners=False) of [n, h, w], float32."""
    n, h, w = m.shape

    def axis(inp, out):
        scale = F32(inp / out)
        src = np.maximum(scale * (np.arange(out, dtype=F32) + F32(0.5)) - F32(0.5), F32(0))
        i0 = np.minimum(src.astype(np.int64), inp - 1)
        i1 = np.minimum(i0 + 1, inp - 1)
        w1 = src - i0.astype(F32)
        return i0, i1, F32(1) - w1, w1

    y0, y1, wy0, wy1 = axis(h, out_h)
    x0, x1, wx0, wx1 = axis(w, out_w)
    top = m[:, y0][:, :, x0] * wx0 + m[:, y0][:, :, x1] * wx1
    bottom = m[:, y1][:, :, x0] * wx0 + m[:, y1][:, :, x1] * wx1
    return top * wy0[:, None] + bottom * wy1[:, None]


def crop_mask(masks, boxes):
    _, h, w = masks.shape
    x1, y1, x2, y2 = (boxes[:, k, None, None] for k in range(4))
    r = np.arange(w, dtype=F32)[None, None, :]
    c = np.arange(h, dtype=F32)[None, :, None]
    return masks * ((r >= x1) * (r < x2) * (c >= y1) * (c < y2))


def process_mask(protos, masks_in, bboxes, shape):
    """process_mask(upsample=True): coefficients @ protos, crop on the proto grid, up to the
    input, > 0 (sigmoid > 0.5)."""
    c, mh, mw = protos.shape
    ih, iw = shape
    masks = (masks_in @ protos.reshape(c, -1)).reshape(-1, mh, mw)
    db = bboxes.copy()
    db[:, [0, 2]] *= F32(mw / iw)
    db[:, [1, 3]] *= F32(mh / ih)
    masks = crop_mask(masks, db)
    masks = interpolate_bilinear(masks, ih, iw)
    return (masks > 0).astype(F32)


def scale_masks(masks, orig_w, orig_h):
    """scale_masks: cut the letterbox content out, bilinear to the original size (then > 0.5)."""
    mh, mw = masks.shape[1:]
    gain = min(mh / orig_h, mw / orig_w)
    pad_w, pad_h = (mw - orig_w * gain) / 2, (mh - orig_h * gain) / 2
    top, left = round(pad_h - 0.1), round(pad_w - 0.1)
    bottom, right = mh - round(pad_h + 0.1), mw - round(pad_w + 0.1)
    return interpolate_bilinear(masks[:, top:bottom, left:right], orig_h, orig_w) > 0.5


def expected(task, out0, protos, nc, orig_w, orig_h, s):
    if task == "cls":
        return {"probs": [float(v) for v in out0[0]]}
    dets = non_max_suppression(out0, s["conf"], s["iou"], s["multi_label"], s["max_det"], nc,
                               rotated=task == "obb")
    result = []
    if task == "obb":
        r = regularize_rboxes(np.concatenate([dets[:, :4], dets[:, -1:]], 1))
        r[:, :4] = scale_boxes(r[:, :4], orig_w, orig_h, xywh=True)
    else:
        boxes = scale_boxes(dets[:, :4], orig_w, orig_h)
    if task == "seg" and len(dets):
        masks = scale_masks(process_mask(protos[0], dets[:, 6:], dets[:, :4], (IMGSZ, IMGSZ)),
                            orig_w, orig_h)
    for k, d in enumerate(dets):
        det = {"class": int(d[5]), "score": float(d[4])}
        if task == "obb":
            det["rbox"] = [float(v) for v in r[k]]
        else:
            det["box"] = [float(v) for v in boxes[k]]
        if task == "pose":
            kpts = scale_coords(d[6:].reshape(17, 3), orig_w, orig_h)
            det["keypoints"] = [[float(v) for v in kp] for kp in kpts]
        if task == "seg":
            det["mask_pixels"] = int(masks[k].sum())
        result.append(det)
    return {"detections": result}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    seg_pred, seg_protos = plant_seg()
    tasks = {
        "cls": (3, [("output0", CLS_PROBS)]),
        "detect": (3, [("output0", plant_detect())]),
        "pose": (1, [("output0", plant_pose())]),
        "seg": (3, [("output0", seg_pred), ("output1", seg_protos)]),
        "obb": (3, [("output0", plant_obb())]),
    }
    for task, (nc, outputs) in tasks.items():
        onnx.save(model(f"yolo_{task}", outputs), out / f"{task}.onnx")
        protos = outputs[1][1] if len(outputs) > 1 else None
        cases = []
        for w, h in ORIGINALS:
            for name, s in SETTINGS.items():
                case = {"orig": [w, h], "settings": name, **s}
                case.update(expected(task, outputs[0][1], protos, nc, w, h, s))
                cases.append(case)
        doc = {"task": task, "num_classes": nc, "cases": cases}
        (out / f"{task}.expected.json").write_text(json.dumps(doc, indent=1))
        print(out / f"{task}.onnx", sum(len(c.get("detections", [])) for c in cases), "detections")


if __name__ == "__main__":
    main()
