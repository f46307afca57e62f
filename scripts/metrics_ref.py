#!/usr/bin/env python3
"""Reference mAP from pycocotools for tests/vision_metrics_reference.rs.

Usage: metrics_ref.py INPUT.json  ->  prints {"bbox": {...}, "segm": {...}} on stdout.

INPUT.json (written by the Rust test):
  images:     [{"id", "width", "height"}]          ids from 1
  categories: [category ids]                        every class, with or without ground truth
  gt:         [{"image_id", "category_id", "bbox": [x, y, w, h], "rle": [counts]?}]
  dt:         [{"image_id", "category_id", "bbox": [x, y, w, h], "score", "rle": [counts]?}]
  report_conf: score at or above which predictions count for precision/recall/F1
"rle" is a COCO *uncompressed* RLE of the binary mask (column-major, first count = zeros);
when every object has one, "segm" is evaluated too. Everything is COCOeval's defaults: area
range "all", maxDets 100, iscrowd 0. stats[0] is mAP50-95, stats[1] mAP50.

"ultralytics" holds the same data scored by a numpy transcription of Ultralytics 8.3
(`DetectionValidator.match_predictions` with use_scipy=False, `ap_per_class`, `compute_ap`,
`box_iou`/`mask_iou` with eps 1e-7), in float64 where Ultralytics uses float32 torch, plus
mpslab's micro precision/recall/F1 at IoU 0.5 for predictions with score >= report_conf.
"""
import contextlib
import json
import sys

try:
    import numpy as np
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
except ImportError as e:  # the Rust test turns this into a failure that names `make deps`
    print(f"pycocotools/numpy not importable ({e}); `make deps` installs them", file=sys.stderr)
    sys.exit(3)


def evaluate(data, iou_type):
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}

    def segm(obj):
        h, w = sizes[obj["image_id"]]
        return mask_utils.frPyObjects({"counts": obj["rle"], "size": [h, w]}, h, w)

    anns = []
    for i, g in enumerate(data["gt"]):
        ann = {"id": i + 1, "image_id": g["image_id"], "category_id": g["category_id"],
               "iscrowd": 0, "bbox": g["bbox"]}
        if iou_type == "segm":
            ann["segmentation"] = segm(g)
            ann["area"] = float(mask_utils.area(ann["segmentation"]))
        else:
            ann["area"] = g["bbox"][2] * g["bbox"][3]
        anns.append(ann)
    gt = COCO()
    gt.dataset = {"info": {}, "images": data["images"], "annotations": anns,
                  "categories": [{"id": c, "name": str(c)} for c in data["categories"]]}
    dets = []
    for d in data["dt"]:
        det = {"image_id": d["image_id"], "category_id": d["category_id"], "score": d["score"]}
        if iou_type == "segm":
            det["segmentation"] = segm(d)  # no "bbox": loadRes then takes the mask branch
        else:
            det["bbox"] = d["bbox"]
        dets.append(det)
    with contextlib.redirect_stdout(sys.stderr):  # COCO/COCOeval chat on stdout
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map50_95": float(ev.stats[0]), "map50": float(ev.stats[1])}


# ---- Ultralytics, transcribed (ultralytics/utils/metrics.py, models/yolo/detect/val.py) ----

def ul_box_iou(box1, box2, eps=1e-7):
    (a1, a2), (b1, b2) = np.split(box1[:, None], 2, 2), np.split(box2[None], 2, 2)
    inter = (np.minimum(a2, b2) - np.maximum(a1, b1)).clip(0).prod(2)
    return inter / ((a2 - a1).prod(2) + (b2 - b1).prod(2) - inter + eps)


def ul_mask_iou(mask1, mask2, eps=1e-7):
    intersection = mask1 @ mask2.T
    union = (mask1.sum(1)[:, None] + mask2.sum(1)[None]) - intersection
    return intersection / (union + eps)


def ul_match_predictions(pred_classes, true_classes, iou, iouv):
    correct = np.zeros((pred_classes.shape[0], iouv.shape[0])).astype(bool)
    correct_class = true_classes[:, None] == pred_classes
    iou = iou * correct_class
    for i, threshold in enumerate(iouv.tolist()):
        matches = np.nonzero(iou >= threshold)
        matches = np.array(matches).T
        if matches.shape[0]:
            if matches.shape[0] > 1:
                matches = matches[iou[matches[:, 0], matches[:, 1]].argsort()[::-1]]
                matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
                matches = matches[np.unique(matches[:, 0], return_index=True)[1]]
            correct[matches[:, 1].astype(int), i] = True
    return correct


def ul_compute_ap(recall, precision):
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    return trapezoid(np.interp(x, mrec, mpre), x)


def ul_ap_per_class(tp, conf, pred_cls, target_cls, eps=1e-16):
    i = np.argsort(-conf)
    tp, conf, pred_cls = tp[i], conf[i], pred_cls[i]
    unique_classes, nt = np.unique(target_cls, return_counts=True)
    ap = np.zeros((unique_classes.shape[0], tp.shape[1]))
    for ci, c in enumerate(unique_classes):
        i = pred_cls == c
        n_l = nt[ci]
        n_p = i.sum()
        if n_p == 0 or n_l == 0:
            continue
        fpc = (1 - tp[i]).cumsum(0)
        tpc = tp[i].cumsum(0)
        recall = tpc / (n_l + eps)
        precision = tpc / (tpc + fpc)
        for j in range(tp.shape[1]):
            ap[ci, j] = ul_compute_ap(recall[:, j], precision[:, j])
    return ap


def ultralytics(data, iou_type):
    iouv = np.linspace(0.5, 0.95, 10)
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}

    def xyxy(objs):
        return np.array([[o["bbox"][0], o["bbox"][1], o["bbox"][0] + o["bbox"][2],
                          o["bbox"][1] + o["bbox"][3]] for o in objs], dtype=np.float64).reshape(-1, 4)

    def masks(objs, h, w):
        return np.array([mask_utils.decode(mask_utils.frPyObjects(
            {"counts": o["rle"], "size": [h, w]}, h, w)).reshape(-1) for o in objs],
            dtype=np.float64).reshape(len(objs), h * w)

    tps, confs, pred_cls, target_cls = [], [], [], []
    for im in data["images"]:
        gts = [g for g in data["gt"] if g["image_id"] == im["id"]]
        dts = [d for d in data["dt"] if d["image_id"] == im["id"]]
        dts = [dts[k] for k in np.argsort([-d["score"] for d in dts], kind="stable")]  # NMS order
        tcls = np.array([g["category_id"] for g in gts], dtype=np.int64)
        pcls = np.array([d["category_id"] for d in dts], dtype=np.int64)
        target_cls.append(tcls)
        if not dts:
            continue
        if iou_type == "segm":
            h, w = sizes[im["id"]]
            iou = ul_mask_iou(masks(gts, h, w), masks(dts, h, w))
        else:
            iou = ul_box_iou(xyxy(gts), xyxy(dts))
        tps.append(ul_match_predictions(pcls, tcls, iou, iouv) if gts else
                   np.zeros((len(dts), 10), dtype=bool))
        confs.append(np.array([d["score"] for d in dts], dtype=np.float64))
        pred_cls.append(pcls)
    tp, conf = np.concatenate(tps), np.concatenate(confs)
    ap = ul_ap_per_class(tp, conf, np.concatenate(pred_cls), np.concatenate(target_cls))
    counted = conf >= data["report_conf"]
    n_tp, n_p, n_gt = int(tp[counted, 0].sum()), int(counted.sum()), len(data["gt"])
    p = n_tp / n_p if n_p else 0.0
    r = n_tp / n_gt if n_gt else 0.0
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"map50": float(ap[:, 0].mean()), "map50_95": float(ap.mean()),
            "precision": p, "recall": r, "f1": f1}


def main():
    with open(sys.argv[1]) as f:
        data = json.load(f)
    out = {"bbox": evaluate(data, "bbox"), "ultralytics": {"bbox": ultralytics(data, "bbox")}}
    if data["gt"] and all("rle" in o for o in data["gt"] + data["dt"]):
        out["segm"] = evaluate(data, "segm")
        out["ultralytics"]["segm"] = ultralytics(data, "segm")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
