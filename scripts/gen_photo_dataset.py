#!/usr/bin/env python3
"""Writes a tiny detect dataset of real photos for NudeNet's YOLOv8n (320n.onnx), hand-labelled.

    gen_photo_dataset.py IMAGES_DIR OUTDIR [--malformed]

IMAGES_DIR holds astronaut.png and coffee.png (unpacked from the scikit-image wheel by
`make deps`). OUTDIR/faces/ is an Ultralytics detect dataset with NudeNet's 18 class names:
the astronaut's face is labelled FACE_FEMALE (class 1) by hand, the coffee cup is background
(empty label file). With --malformed, OUTDIR/faces-malformed/ adds one problem of each kind:
a photo without a label file, a truncated JPEG, and a label file whose class id is out of range
on one line and whose next line is short.
Standard library only.
"""

import argparse
import shutil
import sys
from pathlib import Path

NAMES = [
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED",
    "BELLY_COVERED", "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE",
    "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
]

# Eileen Collins' face in astronaut.png (512 x 512), boxed by eye from hairline to chin:
# x 172..280, y 62..186 pixels.
FACE = (172, 62, 280, 186)
SIZE = 512


def yolo_line(cls, box, size=SIZE):
    x1, y1, x2, y2 = box
    return "%d %.6f %.6f %.6f %.6f\n" % (
        cls, (x1 + x2) / 2 / size, (y1 + y2) / 2 / size, (x2 - x1) / size, (y2 - y1) / size)


def write_dataset(root: Path, files):
    """files: {stem: (source image or bytes, suffix, label text or None)}"""
    if root.exists():
        shutil.rmtree(root)
    (root / "images/val").mkdir(parents=True)
    (root / "labels/val").mkdir(parents=True)
    for stem, (source, suffix, label) in files.items():
        dst = root / "images/val" / (stem + suffix)
        if isinstance(source, bytes):
            dst.write_bytes(source)
        else:
            shutil.copyfile(source, dst)
        if label is not None:
            (root / "labels/val" / (stem + ".txt")).write_text(label)
    names = "".join("  %d: %s\n" % (i, n) for i, n in enumerate(NAMES))
    (root / "data.yaml").write_text(
        "# Written by scripts/gen_photo_dataset.py\npath: .\nval: images/val\nnames:\n" + names)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", type=Path)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--malformed", action="store_true")
    a = ap.parse_args(argv)
    astronaut, coffee = a.images / "astronaut.png", a.images / "coffee.png"
    for p in (astronaut, coffee):
        if not p.is_file():
            sys.exit("%s is missing: `make deps` unpacks it from the scikit-image wheel" % p)
    face = yolo_line(1, FACE)
    write_dataset(a.outdir / "faces", {
        "astronaut": (astronaut, ".png", face),
        "coffee": (coffee, ".png", ""),
    })
    if a.malformed:
        write_dataset(a.outdir / "faces-malformed", {
            "astronaut": (astronaut, ".png", face),
            "coffee": (coffee, ".png", None),                        # no label file
            "truncated": (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", ".jpg", ""),  # not an image
            # Two bad lines in one file: one image left out, two issues.
            "astronaut_bad_class": (astronaut, ".png", face + yolo_line(42, FACE) + "1 0.5 0.5\n"),
        })
    print(a.outdir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
