//! Model-input tensors exactly as Ultralytics builds them for ONNX models.
//!
//! Detection-style tasks use `LetterBox` (resize keeping the aspect ratio with
//! `cv2.INTER_LINEAR`, pad with grey 114) then `/255` and HWC to CHW; classification uses
//! `classify_transforms` (torchvision `Resize` on a PIL image, which is PIL's antialiased
//! bilinear, then `CenterCrop` and `ToTensor`). Inputs are RGB already, so there is no BGR swap.
//! All functions write NCHW f32 (batch of one) into a caller-owned buffer that is reused.
//!
//! [`letterbox`] and [`letterbox_auto`] are the predictor's path (`model.predict`);
//! [`letterbox_val`] is what `yolo val` feeds a fixed-shape model, whose dataset resizes with
//! different rounding. Metrics meant to match `yolo val` need the latter.

use super::image::resize_rows;
use super::{Letterbox, RgbImage};

/// Ultralytics' letterbox border colour.
const PAD_VALUE: u8 = 114;

/// `u8 as f32 / 255.0` for every byte: the same division `im /= 255` performs in f32.
fn unit_lut() -> [f32; 256] {
    let mut lut = [0f32; 256];
    for (v, slot) in lut.iter_mut().enumerate() {
        *slot = v as f32 / 255.0;
    }
    lut
}

/// Where the resized image lands inside the padded input.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Geometry {
    gain: f64,
    unpad_w: u32,
    unpad_h: u32,
    left: u32,
    top: u32,
    out_w: u32,
    out_h: u32,
}

/// `LetterBox.__call__` arithmetic (Python `round` is round-half-to-even).
fn geometry(w: u32, h: u32, new_w: u32, new_h: u32, stride: Option<u32>) -> Geometry {
    if w == 0 || h == 0 {
        // Nothing to place: the whole input is border.
        return Geometry {
            gain: 1.0,
            unpad_w: 0,
            unpad_h: 0,
            left: 0,
            top: 0,
            out_w: new_w,
            out_h: new_h,
        };
    }
    let r = (f64::from(new_h) / f64::from(h)).min(f64::from(new_w) / f64::from(w));
    let unpad_w = (f64::from(w) * r).round_ties_even() as u32;
    let unpad_h = (f64::from(h) * r).round_ties_even() as u32;
    let mut dw = new_w.saturating_sub(unpad_w);
    let mut dh = new_h.saturating_sub(unpad_h);
    if let Some(stride) = stride {
        dw %= stride;
        dh %= stride;
    }
    let (dw, dh) = (f64::from(dw) / 2.0, f64::from(dh) / 2.0);
    let top = (dh - 0.1).round_ties_even() as u32;
    let bottom = (dh + 0.1).round_ties_even() as u32;
    let left = (dw - 0.1).round_ties_even() as u32;
    let right = (dw + 0.1).round_ties_even() as u32;
    Geometry {
        gain: r,
        unpad_w,
        unpad_h,
        left,
        top,
        out_w: unpad_w + left + right,
        out_h: unpad_h + top + bottom,
    }
}

fn fill_letterbox(img: &RgbImage, g: Geometry, out: &mut Vec<f32>) -> Letterbox {
    let (ow, oh) = (g.out_w as usize, g.out_h as usize);
    let plane = ow * oh;
    let lut = unit_lut();
    out.clear();
    out.resize(3 * plane, lut[PAD_VALUE as usize]);
    let (left, top) = (g.left as usize, g.top as usize);
    let unpad_w = g.unpad_w as usize;
    resize_rows(img, g.unpad_w, g.unpad_h, |y, row| {
        let start = (top + y) * ow + left;
        let (r, rest) = out.split_at_mut(plane);
        let (gp, b) = rest.split_at_mut(plane);
        let dst_r = &mut r[start..start + unpad_w];
        let dst_g = &mut gp[start..start + unpad_w];
        let dst_b = &mut b[start..start + unpad_w];
        for (x, px) in row.chunks_exact(3).enumerate() {
            dst_r[x] = lut[px[0] as usize];
            dst_g[x] = lut[px[1] as usize];
            dst_b[x] = lut[px[2] as usize];
        }
    });
    Letterbox {
        gain: g.gain as f32,
        pad_x: g.left as f32,
        pad_y: g.top as f32,
        input_w: g.out_w,
        input_h: g.out_h,
        orig_w: img.width,
        orig_h: img.height,
    }
}

/// Ultralytics LetterBox(new_shape=(h, w), auto=false, scaleup=true, center=true) for a fixed-shape input: resize keeping aspect ratio, pad with 114, RGB, /255, NCHW, written into `out` (cleared, len 3*h*w).
///
/// The resize is `cv2.resize(INTER_LINEAR)`, bit for bit ([`super::image::resize_bilinear`]),
/// and is skipped when the size does not change. An empty image gives an all-border input with
/// gain 1.
pub fn letterbox(img: &RgbImage, input_w: u32, input_h: u32, out: &mut Vec<f32>) -> Letterbox {
    let g = geometry(img.width, img.height, input_w, input_h, None);
    fill_letterbox(img, g, out)
}

/// For dynamic-shape inputs: LetterBox(auto=true, stride): the long side becomes `imgsz`, the short side is padded only up to a multiple of `stride` ("stride padding").
///
/// `imgsz` is first rounded up to a multiple of `stride`, as Ultralytics' `check_imgsz` does,
/// so both output sides are multiples of `stride`. A `stride` of 0 is taken as 1.
pub fn letterbox_auto(img: &RgbImage, imgsz: u32, stride: u32, out: &mut Vec<f32>) -> Letterbox {
    let stride = stride.max(1);
    let imgsz = imgsz.div_ceil(stride) * stride;
    let g = if img.width == 0 || img.height == 0 {
        geometry(img.width, img.height, imgsz, imgsz, None)
    } else {
        geometry(img.width, img.height, imgsz, imgsz, Some(stride))
    };
    fill_letterbox(img, g, out)
}

/// What `yolo val` feeds a fixed-shape model (`imgsz` square): `YOLODataset.load_image` scales
/// the long side to `imgsz` with `math.ceil` sizes (`cv2.resize`, INTER_LINEAR), then
/// `LetterBox((imgsz, imgsz), scaleup=False)` only pads, since the image already fits.
///
/// This differs from [`letterbox`] (the predictor's path) in the rounding of the resized size:
/// `ceil` here, `round` there, so a 600x400 image at 320 becomes 320x214 here and 320x213 there.
/// `gain` is the validator's `ratio_pad` gain, `resized_h / orig_h`, which Ultralytics'
/// `scale_boxes` applies to both axes; the pads are the border actually added.
/// Ultralytics' validator uses this path for non-PyTorch models (it forces `rect=False`).
pub fn letterbox_val(img: &RgbImage, imgsz: u32, out: &mut Vec<f32>) -> Letterbox {
    let (w0, h0) = (img.width, img.height);
    if w0 == 0 || h0 == 0 {
        return fill_letterbox(img, geometry(w0, h0, imgsz, imgsz, None), out);
    }
    let r = f64::from(imgsz) / f64::from(w0.max(h0));
    let (w, h) = if r != 1.0 {
        let side = |v: u32| ((f64::from(v) * r).ceil() as u32).min(imgsz);
        (side(w0), side(h0))
    } else {
        (w0, h0)
    };
    // The long side is now exactly `imgsz`, so LetterBox's ratio is 1: no second resize, only
    // the border; `fill_letterbox` does the single resize from the original.
    let mut g = geometry(w, h, imgsz, imgsz, None);
    debug_assert_eq!((g.unpad_w, g.unpad_h), (w, h));
    g.gain = f64::from(h) / f64::from(h0);
    fill_letterbox(img, g, out)
}

/// PIL's resampling weights for one axis (`precompute_coeffs` with the bilinear filter,
/// `normalize_coeffs_8bpc`): first source pixel and 22-bit fixed-point weights per output.
struct PilAxis {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

const PIL_PRECISION_BITS: u32 = 32 - 8 - 2;

fn pil_axis(in_size: u32, out_size: u32) -> PilAxis {
    let scale = f64::from(in_size) / f64::from(out_size);
    // Downscaling widens the triangle (antialiasing); upscaling keeps support 1.
    let filterscale = scale.max(1.0);
    let support = filterscale;
    let ss = 1.0 / filterscale;
    let mut first = Vec::with_capacity(out_size as usize);
    let mut weights = Vec::with_capacity(out_size as usize);
    for xx in 0..out_size {
        let center = (f64::from(xx) + 0.5) * scale;
        // C's (int) truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
        let taps: Vec<f64> = (xmin..xmax)
            .map(|x| {
                let t = ((x as f64 - center + 0.5) * ss).abs();
                if t < 1.0 {
                    1.0 - t
                } else {
                    0.0
                }
            })
            .collect();
        let total: f64 = taps.iter().sum();
        let fixed = taps
            .iter()
            .map(|&w| {
                let w = if total != 0.0 { w / total } else { w };
                (0.5 + w * f64::from(1u32 << PIL_PRECISION_BITS)) as i32
            })
            .collect();
        first.push(xmin.max(0) as usize);
        weights.push(fixed);
    }
    PilAxis { first, weights }
}

/// PIL's `clip8`: round (the accumulator starts at one half) and saturate.
#[inline]
fn pil_clip8(acc: i64) -> u8 {
    (acc >> PIL_PRECISION_BITS).clamp(0, 255) as u8
}

/// Ultralytics classify_transforms(size) for inference: resize the shortest side to `size` (bilinear), centre-crop size x size, /255, NCHW (mean 0, std 1).
///
/// For a square input this is torchvision `Resize(size)` (short side to `size`, long side
/// `int(size * long / short)`) then `CenterCrop(size)`; for a non-square input Ultralytics
/// passes `(h, w)` to `Resize`, which stretches to exactly that size. The resize is PIL's
/// `BILINEAR` (what torchvision uses on the PIL image Ultralytics builds): antialiased when
/// shrinking, horizontal then vertical pass, each rounded to 8 bits. Only the cropped window is
/// computed. An empty image gives a black input.
pub fn classify(img: &RgbImage, input_w: u32, input_h: u32, out: &mut Vec<f32>) {
    let (ow, oh) = (input_w as usize, input_h as usize);
    let plane = ow * oh;
    out.clear();
    out.resize(3 * plane, 0.0);
    let (w, h) = (img.width, img.height);
    let stride = w as usize * 3;
    if plane == 0 || w == 0 || h == 0 || img.data.len() < stride * h as usize {
        return;
    }
    let (new_w, new_h) = if input_w == input_h {
        let size = f64::from(input_w);
        let (short, long) = (w.min(h), w.max(h));
        let new_long = (size * f64::from(long) / f64::from(short)) as u32;
        if w <= h {
            (input_w, new_long)
        } else {
            (new_long, input_w)
        }
    } else {
        (input_w, input_h)
    };
    // torchvision CenterCrop: int(round((size_in - size_out) / 2.0)).
    let crop_left = (f64::from(new_w.saturating_sub(input_w)) / 2.0).round_ties_even() as usize;
    let crop_top = (f64::from(new_h.saturating_sub(input_h)) / 2.0).round_ties_even() as usize;
    let lut = unit_lut();

    let xs = (new_w != w).then(|| pil_axis(w, new_w));
    let ys = (new_h != h).then(|| pil_axis(h, new_h));
    // Source rows the cropped output rows read.
    let (row_lo, row_hi) = match &ys {
        Some(ys) => {
            let lo = ys.first[crop_top];
            let last = crop_top + oh - 1;
            (lo, ys.first[last] + ys.weights[last].len())
        }
        None => (crop_top, crop_top + oh),
    };
    // Horizontal pass over those rows, cropped columns only, rounded to u8 as PIL stores it.
    let mut temp = vec![0u8; (row_hi - row_lo) * ow * 3];
    for (sy, dst) in (row_lo..row_hi).zip(temp.chunks_exact_mut(ow * 3)) {
        let src = &img.data[sy * stride..(sy + 1) * stride];
        match &xs {
            Some(xs) => {
                for (x, px) in dst.chunks_exact_mut(3).enumerate() {
                    let xx = crop_left + x;
                    let x0 = xs.first[xx];
                    let mut acc = [1i64 << (PIL_PRECISION_BITS - 1); 3];
                    for (i, &k) in xs.weights[xx].iter().enumerate() {
                        let s = (x0 + i) * 3;
                        for c in 0..3 {
                            acc[c] += i64::from(src[s + c]) * i64::from(k);
                        }
                    }
                    for c in 0..3 {
                        px[c] = pil_clip8(acc[c]);
                    }
                }
            }
            None => dst.copy_from_slice(&src[crop_left * 3..(crop_left + ow) * 3]),
        }
    }
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for y in 0..oh {
        let yy = crop_top + y;
        for x in 0..ow {
            let px = match &ys {
                Some(ys) => {
                    let y0 = ys.first[yy] - row_lo;
                    let mut acc = [1i64 << (PIL_PRECISION_BITS - 1); 3];
                    for (i, &k) in ys.weights[yy].iter().enumerate() {
                        let s = ((y0 + i) * ow + x) * 3;
                        for c in 0..3 {
                            acc[c] += i64::from(temp[s + c]) * i64::from(k);
                        }
                    }
                    [pil_clip8(acc[0]), pil_clip8(acc[1]), pil_clip8(acc[2])]
                }
                None => {
                    let s = ((yy - row_lo) * ow + x) * 3;
                    [temp[s], temp[s + 1], temp[s + 2]]
                }
            };
            let i = y * ow + x;
            r[i] = lut[px[0] as usize];
            g[i] = lut[px[1] as usize];
            b[i] = lut[px[2] as usize];
        }
    }
}
