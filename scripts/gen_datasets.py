#!/usr/bin/env python3
"""Writes small deterministic demo datasets in Ultralytics layout, with exact labels.

    gen_datasets.py OUTDIR [--malformed]

OUTDIR/cls/val/<class>/*.png                     3 classes x 6 images (image-folder layout)
OUTDIR/{detect,pose,seg,obb}/data.yaml           YOLO txt labels under labels/val, images under images/val
OUTDIR/detect-malformed/ (with --malformed)      one missing label file, one corrupt .jpg, one class id out
                                                 of range, one line with the wrong number of values

Only numpy and the standard library: PNGs are written with zlib. Shapes are drawn from the same
geometry the labels are written from, so the labels are exact. Output is byte-identical per run.
"""

import argparse
import math
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

W, H = 320, 240
SEED = 20240501

COLORS = [(220, 60, 50), (50, 170, 70), (60, 90, 210), (230, 190, 40)]


def write_png(path: Path, img: np.ndarray) -> None:
    """8-bit RGB PNG, filter 'Up' on every row (compresses the smooth background well)."""
    h, w, _ = img.shape
    rows = img.astype(np.uint8).reshape(h, w * 3)
    up = rows.astype(np.int16)
    up[1:] -= rows[:-1].astype(np.int16)
    filtered = np.empty((h, w * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = 2
    filtered[:, 1:] = (up % 256).astype(np.uint8)
    filtered[0, 0] = 0
    filtered[0, 1:] = rows[0]

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    data = zlib.compress(filtered.tobytes(), 9)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def background(rng: np.random.Generator) -> np.ndarray:
    """A grey gradient with low-amplitude noise in 4x4 blocks (noisy, yet small as PNG)."""
    base = rng.integers(90, 150)
    gx = np.linspace(0, rng.integers(-30, 30), W)[None, :]
    gy = np.linspace(0, rng.integers(-30, 30), H)[:, None]
    noise = rng.integers(-6, 7, size=(H // 4, W // 4))
    noise = np.kron(noise, np.ones((4, 4)))
    grey = np.clip(base + gx + gy + noise, 0, 255)
    return np.repeat(grey[:, :, None], 3, axis=2).astype(np.float64)


def pixel_centres():
    ys, xs = np.mgrid[0:H, 0:W]
    return xs + 0.5, ys + 0.5


def fill(img: np.ndarray, mask: np.ndarray, color) -> None:
    img[mask] = color


def polygon_mask(points) -> np.ndarray:
    """Even-odd rule at pixel centres."""
    px, py = pixel_centres()
    inside = np.zeros((H, W), dtype=bool)
    n = len(points)
    for i in range(n):
        x1, y1 = points[i]
        x2, y2 = points[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = (py >= min(y1, y2)) & (py < max(y1, y2))
        xint = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (px < xint)
    return inside


def ellipse_polygon(cx, cy, rx, ry, n=24):
    return [(cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n)) for k in range(n)]


def rotated_rect(cx, cy, w, h, angle):
    c, s = math.cos(angle), math.sin(angle)
    corners = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners]


def segment_mask(p, q, thickness) -> np.ndarray:
    px, py = pixel_centres()
    (x1, y1), (x2, y2) = p, q
    dx, dy = x2 - x1, y2 - y1
    t = np.clip(((px - x1) * dx + (py - y1) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
    return (px - x1 - t * dx) ** 2 + (py - y1 - t * dy) ** 2 <= (thickness / 2) ** 2


def extent(points):
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def fmt(v: float) -> str:
    return f"{v:.6f}"


def box_line(cls: int, points) -> str:
    x1, y1, x2, y2 = extent(points)
    cx, cy, bw, bh = (x1 + x2) / 2 / W, (y1 + y2) / 2 / H, (x2 - x1) / W, (y2 - y1) / H
    return " ".join([str(cls)] + [fmt(v) for v in (cx, cy, bw, bh)])


def poly_line(cls: int, points) -> str:
    return " ".join([str(cls)] + [fmt(v) for x, y in points for v in (x / W, y / H)])


def shape_points(rng, kind: str):
    """One shape of the given kind, kept away from the image border."""
    cx = rng.uniform(60, W - 60)
    cy = rng.uniform(50, H - 50)
    if kind == "rectangle":
        w, h = rng.uniform(30, 80), rng.uniform(25, 60)
        return [(cx - w / 2, cy - h / 2), (cx + w / 2, cy - h / 2), (cx + w / 2, cy + h / 2), (cx - w / 2, cy + h / 2)]
    if kind == "ellipse":
        return ellipse_polygon(cx, cy, rng.uniform(15, 40), rng.uniform(15, 35))
    if kind == "triangle":
        r = rng.uniform(20, 40)
        a0 = rng.uniform(0, 2 * math.pi)
        return [(cx + r * math.cos(a0 + k * 2 * math.pi / 3), cy + r * math.sin(a0 + k * 2 * math.pi / 3)) for k in range(3)]
    raise ValueError(kind)


def overlaps(box, boxes, margin=6) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < b[2] + margin and b[0] < x2 + margin and y1 < b[3] + margin and b[1] < y2 + margin for b in boxes)


def place_shapes(rng, kinds, count):
    """`count` non-overlapping shapes, each (class index, polygon)."""
    placed, boxes = [], []
    while len(placed) < count:
        cls = int(rng.integers(len(kinds)))
        pts = shape_points(rng, kinds[cls])
        if overlaps(extent(pts), boxes):
            continue
        placed.append((cls, pts))
        boxes.append(extent(pts))
    return placed


def write_yaml(root: Path, names, extra: str = "") -> None:
    lines = ["# Generated by scripts/gen_datasets.py", "path: .", "val: images/val", "names:"]
    lines += [f"  {i}: {n}" for i, n in enumerate(names)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("\n".join(lines) + "\n" + extra)


def write_labels(root: Path, stem: str, lines) -> None:
    path = root / "labels" / "val" / f"{stem}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


SHAPES = ["rectangle", "ellipse", "triangle"]


def gen_cls(out: Path, rng) -> str:
    names = sorted(SHAPES)
    for ci, name in enumerate(names):
        for k in range(6):
            img = background(rng)
            pts = shape_points(rng, name)
            fill(img, polygon_mask(pts), COLORS[int(rng.integers(len(COLORS)))])
            write_png(out / "cls" / "val" / name / f"{name}_{k}.png", img)
    return f"cls: {out / 'cls'} (3 classes x 6 images, val/<class>/*.png)"


def gen_detect(out: Path, rng, name="detect", n_images=8) -> str:
    root = out / name
    write_yaml(root, SHAPES)
    for k in range(n_images):
        img = background(rng)
        lines = []
        for cls, pts in place_shapes(rng, SHAPES, int(rng.integers(1, 5))):
            fill(img, polygon_mask(pts), COLORS[cls])
            lines.append(box_line(cls, pts))
        write_png(root / "images" / "val" / f"img_{k}.png", img)
        write_labels(root, f"img_{k}", lines)
    return f"detect: {root} ({n_images} images, 3 classes)"


def gen_seg(out: Path, rng) -> str:
    root = out / "seg"
    write_yaml(root, SHAPES)
    for k in range(6):
        img = background(rng)
        lines = []
        for cls, pts in place_shapes(rng, SHAPES, int(rng.integers(1, 4))):
            fill(img, polygon_mask(pts), COLORS[cls])
            lines.append(poly_line(cls, pts))
        write_png(root / "images" / "val" / f"img_{k}.png", img)
        write_labels(root, f"img_{k}", lines)
    return f"seg: {root} (6 images, 3 classes, polygons)"


OBB_NAMES = ["square", "rectangle", "bar"]
OBB_ASPECT = [1.0, 1.8, 4.0]


def gen_obb(out: Path, rng) -> str:
    root = out / "obb"
    write_yaml(root, OBB_NAMES)
    for k in range(6):
        img = background(rng)
        lines, boxes = [], []
        target = int(rng.integers(1, 4))
        while len(lines) < target:
            cls = int(rng.integers(3))
            h = rng.uniform(18, 32)
            pts = rotated_rect(rng.uniform(70, W - 70), rng.uniform(60, H - 60), h * OBB_ASPECT[cls], h, rng.uniform(0, math.pi))
            # A long bar near the top or bottom can reach past the image (a 128x32 bar at 80 degrees
            # spans 132 px vertically); its corners would be out-of-range labels.
            x1, y1, x2, y2 = extent(pts)
            if x1 < 0 or y1 < 0 or x2 > W or y2 > H or overlaps((x1, y1, x2, y2), boxes):
                continue
            boxes.append(extent(pts))
            fill(img, polygon_mask(pts), COLORS[cls])
            lines.append(poly_line(cls, pts))
        write_png(root / "images" / "val" / f"img_{k}.png", img)
        write_labels(root, f"img_{k}", lines)
    return f"obb: {root} (6 images, 3 classes, 4 corner points)"


# COCO keypoint order: nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles (left, right).
SKELETON = [(5, 7), (7, 9), (6, 8), (8, 10), (5, 6), (5, 11), (6, 12), (11, 12), (11, 13), (13, 15), (12, 14), (14, 16)]
FLIP_IDX = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


def person_keypoints(cx, top, s):
    """17 COCO keypoints of a standing figure, `s` pixels per unit."""
    unit = [(0, 0.5), (-0.15, 0.35), (0.15, 0.35), (-0.3, 0.45), (0.3, 0.45), (-0.6, 1.3), (0.6, 1.3), (-0.8, 2.3),
            (0.8, 2.3), (-0.9, 3.2), (0.9, 3.2), (-0.4, 3.4), (0.4, 3.4), (-0.45, 4.6), (0.45, 4.6), (-0.5, 5.8),
            (0.5, 5.8)]
    return [(cx + x * s, top + y * s) for x, y in unit]


def gen_pose(out: Path, rng) -> str:
    root = out / "pose"
    write_yaml(root, ["person"], "kpt_shape: [17, 3]\nflip_idx: [" + ", ".join(map(str, FLIP_IDX)) + "]\n")
    for k in range(6):
        img = background(rng)
        lines, boxes = [], []
        target = int(rng.integers(1, 3))
        while len(lines) < target:
            s = rng.uniform(20, 32)
            kpts = person_keypoints(rng.uniform(40, W - 40), rng.uniform(10, H - 6.5 * s), s)
            x1, y1, x2, y2 = extent(kpts)
            box = (x1 - 0.3 * s, y1 - 0.6 * s, x2 + 0.3 * s, y2 + 0.3 * s)
            if box[0] < 0 or box[2] > W or box[1] < 0 or box[3] > H or overlaps(box, boxes):
                continue
            boxes.append(box)
            color = COLORS[int(rng.integers(len(COLORS)))]
            fill(img, polygon_mask(ellipse_polygon(kpts[0][0], kpts[0][1], 0.45 * s, 0.55 * s)), color)
            for a, b in SKELETON:
                fill(img, segment_mask(kpts[a], kpts[b], max(3.0, 0.25 * s)), color)
            hidden = set(rng.choice(17, size=int(rng.integers(0, 3)), replace=False).tolist())
            values = []
            for i, (x, y) in enumerate(kpts):
                values += [0.0, 0.0, 0.0] if i in hidden else [x / W, y / H, 2.0]
            bx = [(box[0] + box[2]) / 2 / W, (box[1] + box[3]) / 2 / H, (box[2] - box[0]) / W, (box[3] - box[1]) / H]
            lines.append(" ".join(["0"] + [fmt(v) for v in bx + values]))
        write_png(root / "images" / "val" / f"img_{k}.png", img)
        write_labels(root, f"img_{k}", lines)
    return f"pose: {root} (6 images, 1 class, kpt_shape [17, 3])"


def gen_malformed(out: Path, rng) -> str:
    root = out / "detect-malformed"
    gen_detect(out, rng, name="detect-malformed", n_images=4)

    def image_with_labels(stem):
        img = background(rng)
        shapes = place_shapes(rng, SHAPES, 2)
        for cls, pts in shapes:
            fill(img, polygon_mask(pts), COLORS[cls])
        write_png(root / "images" / "val" / f"{stem}.png", img)
        return [box_line(cls, pts) for cls, pts in shapes]

    image_with_labels("missing_label")  # no label file: background, reported as missing_label
    write_labels(root, "bad_class", [image_with_labels("bad_class")[0], "7 0.5 0.5 0.2 0.2"])
    write_labels(root, "wrong_count", ["1 0.5 0.5 0.2"])
    image_with_labels("wrong_count")
    image_with_labels("background")
    write_labels(root, "background", [])  # empty label file: background, no issue
    # A JPEG signature (SOI, APP0) followed by noise: recognised as JPEG, fails to decode.
    noise = rng.integers(0, 256, size=2048, dtype=np.uint8).tobytes()
    (root / "images" / "val" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + noise)
    write_labels(root, "corrupt", ["0 0.5 0.5 0.2 0.2"])
    return (
        f"detect-malformed: {root} (9 images: img_0..3 and background good, missing_label, corrupt.jpg, "
        "bad_class (line 2: class 7), wrong_count (line 1: 4 values))"
    )


def main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--malformed", action="store_true", help="also write detect-malformed/")
    args = ap.parse_args(argv)
    out = args.outdir
    out.mkdir(parents=True, exist_ok=True)
    # One generator per dataset so that each is reproducible on its own.
    gens = [gen_cls, gen_detect, gen_pose, gen_seg, gen_obb] + ([gen_malformed] if args.malformed else [])
    for i, gen in enumerate(gens):
        print(gen(out, np.random.default_rng(SEED + i)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
