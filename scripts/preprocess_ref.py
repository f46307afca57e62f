#!/usr/bin/env python3
"""Reference model inputs built the way Ultralytics builds them, for tests/vision_preprocess_reference.rs.

    preprocess_ref.py letterbox IMAGE W H OUT          LetterBox((H, W), auto=False)
    preprocess_ref.py letterbox_auto IMAGE IMGSZ STRIDE OUT   LetterBox(auto=True, stride)
    preprocess_ref.py letterbox_val IMAGE IMGSZ OUT    YOLODataset.load_image + LetterBox(scaleup=False)
    preprocess_ref.py classify IMAGE W H OUT           classify_transforms (PIL + torchvision semantics)
    preprocess_ref.py decode IMAGE OUT                 cv2.imread, as RGB bytes
    preprocess_ref.py jpeg IMAGE QUALITY ORIENT OUT    re-encode IMAGE as JPEG with cv2.imencode and,
                                                       unless ORIENT is 0, an EXIF Orientation tag

OUT receives raw little-endian data: float32 NCHW (batch of one) for the tensors, uint8 HWC RGB
for `decode`. One JSON line on stdout describes it (shape; letterbox geometry as gain, pad_x,
pad_y, input_w, input_h, orig_w, orig_h).

The letterbox code is a line-by-line transcription of `LetterBox.__call__` in
ultralytics/data/augment.py (8.3) and of the predictor's `preprocess` (BGR->RGB, HWC->CHW,
`.float()`, `/= 255`); the classification code of `classify_transforms` for inference
(torchvision `Resize` on the PIL image, `CenterCrop`, `ToTensor`, `Normalize(0, 1)`), written
with PIL directly because torchvision is not installed: `Resize(int)` on a PIL image is
`img.resize((w, h), Image.BILINEAR)` with the short side set to `size` and the long side
`int(size * long / short)`; `CenterCrop` crops at `int(round((in - out) / 2.0))`.
Only cv2, numpy and (for classify) Pillow are needed.
"""

import json
import math
import struct
import sys

import cv2
import numpy as np


def imread(path: str) -> np.ndarray:
    """Ultralytics `utils.patches.imread`: cv2.imdecode of the file's bytes, IMREAD_COLOR (BGR)."""
    img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"cv2 cannot decode {path}")
    return img


def letterbox(img: np.ndarray, new_shape, auto: bool, stride: int = 32, scaleup: bool = True):
    """LetterBox(new_shape, auto, scale_fill=False, scaleup, center=True, stride).__call__."""
    shape = img.shape[:2]  # current shape [height, width]
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    # Scale ratio (new / old)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:  # only scale down, do not scale up (for better val mAP)
        r = min(r, 1.0)
    # Compute padding
    new_unpad = int(round(shape[1] * r)), int(round(shape[0] * r))
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]  # wh padding
    if auto:  # minimum rectangle
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)  # wh padding
    dw /= 2  # divide padding into 2 sides (center=True)
    dh /= 2
    if shape[::-1] != new_unpad:  # resize
        img = cv2.resize(img, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    geometry = {"gain": r, "pad_x": left, "pad_y": top, "input_w": img.shape[1], "input_h": img.shape[0]}
    return img, geometry


def load_image(img: np.ndarray, imgsz: int) -> np.ndarray:
    """BaseDataset.load_image(rect_mode=True) after imread: resize the long side to imgsz."""
    h0, w0 = img.shape[:2]  # orig hw
    r = imgsz / max(h0, w0)  # ratio
    if r != 1:  # if sizes are not equal
        w, h = (min(math.ceil(w0 * r), imgsz), min(math.ceil(h0 * r), imgsz))
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    return img


def to_tensor_bgr(img: np.ndarray) -> np.ndarray:
    """BasePredictor.preprocess: im[..., ::-1] (BGR to RGB), transpose to BCHW, float(), /= 255."""
    im = np.stack([img])
    im = im[..., ::-1].transpose((0, 3, 1, 2))
    im = np.ascontiguousarray(im)
    im = im.astype(np.float32)
    im /= np.float32(255)
    return im


def classify(path: str, w: int, h: int) -> np.ndarray:
    from PIL import Image

    # ClassificationPredictor.preprocess: Image.fromarray(cv2.cvtColor(im, cv2.COLOR_BGR2RGB)).
    pil = Image.fromarray(cv2.cvtColor(imread(path), cv2.COLOR_BGR2RGB))
    iw, ih = pil.size
    if w == h:
        # T.Resize(size): torchvision `_compute_resized_output_size` with a single int.
        short, long = (iw, ih) if iw <= ih else (ih, iw)
        new_short, new_long = w, int(w * long / short)
        new_w, new_h = (new_short, new_long) if iw <= ih else (new_long, new_short)
    else:
        # T.Resize((h, w)): exactly that size.
        new_w, new_h = w, h
    if (new_w, new_h) != (iw, ih):
        pil = pil.resize((new_w, new_h), Image.BILINEAR)
    # T.CenterCrop((h, w)): the resized image is never smaller than the crop here.
    top = int(round((new_h - h) / 2.0))
    left = int(round((new_w - w) / 2.0))
    pil = pil.crop((left, top, left + w, top + h))
    # T.ToTensor: HWC uint8 to CHW float / 255; Normalize(mean=0, std=1) changes nothing.
    arr = np.asarray(pil, dtype=np.uint8).transpose((2, 0, 1))[None]
    return np.ascontiguousarray(arr.astype(np.float32) / np.float32(255))


def exif_orientation_segment(orientation: int) -> bytes:
    """An APP1 Exif segment whose only tag is Orientation (0x0112, SHORT), big-endian TIFF."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def main(argv) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    mode, args = argv[0], argv[1:]
    if mode == "letterbox":
        image, w, h, out = args[0], int(args[1]), int(args[2]), args[3]
        img = imread(image)
        boxed, geo = letterbox(img, (h, w), auto=False)
        tensor = to_tensor_bgr(boxed)
    elif mode == "letterbox_auto":
        image, imgsz, stride, out = args[0], int(args[1]), int(args[2]), args[3]
        # check_imgsz: the size is rounded up to a multiple of the stride.
        imgsz = math.ceil(imgsz / stride) * stride
        img = imread(image)
        boxed, geo = letterbox(img, (imgsz, imgsz), auto=True, stride=stride)
        tensor = to_tensor_bgr(boxed)
    elif mode == "letterbox_val":
        image, imgsz, out = args[0], int(args[1]), args[2]
        img = imread(image)
        resized = load_image(img, imgsz)
        # get_image_and_label: ratio_pad = (resized_h / h0, resized_w / w0); scale_boxes uses [0].
        gain = resized.shape[0] / img.shape[0]
        boxed, geo = letterbox(resized, (imgsz, imgsz), auto=False, scaleup=False)
        geo["gain"] = gain
        # Format(bgr=0.0) flips BGR to RGB and the validator divides by 255 as the predictor does.
        tensor = to_tensor_bgr(boxed)
    elif mode == "classify":
        image, w, h, out = args[0], int(args[1]), int(args[2]), args[3]
        img = imread(image)
        geo = {}
        tensor = classify(image, w, h)
    elif mode == "decode":
        image, out = args
        img = cv2.cvtColor(imread(image), cv2.COLOR_BGR2RGB)
        np.ascontiguousarray(img).tofile(out)
        print(json.dumps({"shape": list(img.shape)}))
        return 0
    elif mode == "jpeg":
        image, quality, orientation, out = args[0], int(args[1]), int(args[2]), args[3]
        ok, buf = cv2.imencode(".jpg", imread(image), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise SystemExit(f"cv2 cannot encode {image} as JPEG")
        data = buf.tobytes()
        if orientation:
            data = data[:2] + exif_orientation_segment(orientation) + data[2:]
        with open(out, "wb") as f:
            f.write(data)
        print(json.dumps({"bytes": len(data)}))
        return 0
    else:
        print(f"unknown mode {mode!r}\n{__doc__}", file=sys.stderr)
        return 2
    geo.update({"orig_w": img.shape[1], "orig_h": img.shape[0], "shape": list(tensor.shape)})
    tensor.astype("<f4").tofile(out)
    print(json.dumps(geo))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
