//! Image decoding (PNG, JPEG) to 8-bit RGB, and OpenCV-exact bilinear resizing.
//!
//! Decoding follows what `cv2.imread(path)` hands Ultralytics, channel order aside: grey is
//! replicated, alpha is dropped (not composited), 16-bit samples keep their high byte (libpng's
//! `png_set_strip_16`, which OpenCV uses) and JPEG EXIF orientation is applied.
//! [`resize_bilinear`] reproduces `cv2.resize(..., interpolation=cv2.INTER_LINEAR)` for 8-bit
//! images bit for bit, fixed-point rounding included (OpenCV 4.x `resizeGeneric_` with
//! `HResizeLinear`/`VResizeLinear<uchar>`).

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader};

use super::RgbImage;

/// Images above this many pixels are refused rather than decoded (a 100 MP RGB image already
/// needs 300 MB).
pub const MAX_PIXELS: u64 = 100_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read image {path}: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a PNG or JPEG image ({detail})")]
    NotAnImage { path: String, detail: String },
    #[error("{path} is truncated: {detail}")]
    Truncated { path: String, detail: String },
    #[error("{path} has zero size ({width}x{height})")]
    ZeroSize {
        path: String,
        width: u32,
        height: u32,
    },
    #[error("{path} is {width}x{height}, above the limit of {MAX_PIXELS} pixels")]
    TooLarge {
        path: String,
        width: u32,
        height: u32,
    },
    #[error("cannot decode {path}: {detail}")]
    Corrupt { path: String, detail: String },
}

/// Reads and decodes one PNG or JPEG file to 8-bit RGB.
pub fn decode(path: &Path) -> Result<RgbImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Unreadable {
        path: path.display().to_string(),
        source,
    })?;
    decode_bytes(&bytes, &path.display().to_string())
}

/// Decodes PNG or JPEG bytes to 8-bit RGB; `name` is the file name used in errors.
pub fn decode_bytes(bytes: &[u8], name: &str) -> Result<RgbImage, ImageError> {
    let format = image::guess_format(bytes).map_err(|e| ImageError::NotAnImage {
        path: name.to_string(),
        detail: e.to_string(),
    })?;
    if !matches!(format, image::ImageFormat::Png | image::ImageFormat::Jpeg) {
        return Err(ImageError::NotAnImage {
            path: name.to_string(),
            detail: format!("{format:?} is not supported"),
        });
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    // RGBA with 16-bit samples is the widest layout the decoders produce.
    limits.max_alloc = Some(MAX_PIXELS * 8 + (64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| classify_error(name, e))?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSize {
            path: name.to_string(),
            width,
            height,
        });
    }
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(ImageError::TooLarge {
            path: name.to_string(),
            width,
            height,
        });
    }
    // A broken EXIF block is not worth losing the image over: keep the stored orientation.
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| classify_error(name, e))?;
    if let Some(orientation) = orientation {
        img.apply_orientation(orientation);
    }
    Ok(to_rgb8(img))
}

fn classify_error(name: &str, e: image::ImageError) -> ImageError {
    let path = name.to_string();
    let detail = e.to_string();
    let eof = match &e {
        image::ImageError::IoError(io) => io.kind() == std::io::ErrorKind::UnexpectedEof,
        _ => {
            let lower = detail.to_ascii_lowercase();
            ["eof", "end of", "truncated", "no more bytes", "exhausted"]
                .iter()
                .any(|needle| lower.contains(needle))
        }
    };
    if eof {
        ImageError::Truncated { path, detail }
    } else {
        ImageError::Corrupt { path, detail }
    }
}

/// 8-bit RGB as OpenCV's `IMREAD_COLOR` gives it (before its BGR swap).
fn to_rgb8(img: DynamicImage) -> RgbImage {
    let (width, height) = (img.width(), img.height());
    let data = match img {
        DynamicImage::ImageRgb8(buf) => buf.into_raw(),
        // The image crate rounds v/257; libpng's strip_16 keeps the high byte.
        DynamicImage::ImageRgb16(_)
        | DynamicImage::ImageRgba16(_)
        | DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA16(_) => {
            let rgb16 = img.into_rgb16();
            rgb16.as_raw().iter().map(|&v| (v >> 8) as u8).collect()
        }
        other => other.into_rgb8().into_raw(),
    };
    RgbImage {
        width,
        height,
        data,
    }
}

/// Fixed-point precision of OpenCV's 8-bit bilinear weights (`INTER_RESIZE_COEF_BITS`).
const COEF_BITS: u32 = 11;
const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;

/// Source index and fixed-point weights of one output column or row.
#[derive(Debug, Clone, Copy)]
struct Tap {
    /// First source pixel; for rows it may lie outside the image (clamped at use).
    start: i64,
    w0: i32,
    w1: i32,
}

/// OpenCV's coordinate mapping: half-pixel centres, `fx = (dx + 0.5) * scale - 0.5` computed
/// in f64 and truncated to f32, weights rounded to 11 bits. Columns past either edge are
/// clamped with their weight moved onto the edge pixel; rows keep their weights and clamp the
/// row index only, exactly as `resizeGeneric_Invoker` does.
fn taps(src_len: u32, dst_len: u32, clamp_weights: bool) -> Vec<Tap> {
    let scale = 1.0 / (f64::from(dst_len) / f64::from(src_len));
    (0..dst_len)
        .map(|d| {
            let f = ((f64::from(d) + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as i64;
            let mut frac = f - s as f32;
            if clamp_weights {
                if s < 0 {
                    s = 0;
                    frac = 0.0;
                }
                if s >= i64::from(src_len) - 1 {
                    s = i64::from(src_len) - 1;
                    frac = 0.0;
                }
            }
            Tap {
                start: s,
                w0: ((1.0 - frac) * COEF_SCALE).round_ties_even() as i32,
                w1: (frac * COEF_SCALE).round_ties_even() as i32,
            }
        })
        .collect()
}

/// One row of the horizontal pass: `S[sx] * w0 + S[sx + 1] * w1` per channel, in 11-bit fixed
/// point, the right neighbour clamped to the last column (its weight is then 0).
fn horizontal_row(src_row: &[u8], xtaps: &[Tap], out: &mut [i32]) {
    let last = src_row.len() / 3 - 1;
    for (tap, dst) in xtaps.iter().zip(out.chunks_exact_mut(3)) {
        // Column taps are clamped into the image by `taps`.
        let a = tap.start as usize * 3;
        let b = (tap.start as usize + 1).min(last) * 3;
        for c in 0..3 {
            dst[c] = i32::from(src_row[a + c]) * tap.w0 + i32::from(src_row[b + c]) * tap.w1;
        }
    }
}

/// OpenCV's `VResizeLinear<uchar>` rounding, reproduced exactly (its SIMD path agrees).
#[inline]
fn vertical_pixel(s0: i32, s1: i32, b0: i32, b1: i32) -> u8 {
    let v = (((b0 * (s0 >> 4)) >> 16) + ((b1 * (s1 >> 4)) >> 16) + 2) >> 2;
    v.clamp(0, 255) as u8
}

/// Resizes `src` to `width` x `height` and hands each output row (RGB, `width * 3` bytes) to
/// `emit(y, row)`. Two horizontal-pass rows are cached, so each source row is filtered once.
pub(crate) fn resize_rows(
    src: &RgbImage,
    width: u32,
    height: u32,
    mut emit: impl FnMut(usize, &[u8]),
) {
    let row_len = width as usize * 3;
    if width == 0 || height == 0 {
        return;
    }
    let src_stride = src.width as usize * 3;
    if src.width == 0 || src.height == 0 || src.data.len() < src_stride * src.height as usize {
        // Nothing to sample: black, as a zero-filled cv::Mat would be.
        let zeros = vec![0u8; row_len];
        (0..height as usize).for_each(|y| emit(y, &zeros));
        return;
    }
    if width == src.width && height == src.height {
        // cv::resize copies when the size does not change.
        for (y, row) in src.data.chunks_exact(src_stride).enumerate() {
            emit(y, row);
        }
        return;
    }
    let xtaps = taps(src.width, width, true);
    let ytaps = taps(src.height, height, false);
    let last_row = i64::from(src.height) - 1;
    let mut cached: [Option<usize>; 2] = [None, None];
    let mut rows = [vec![0i32; row_len], vec![0i32; row_len]];
    let mut out_row = vec![0u8; row_len];
    for (y, tap) in ytaps.iter().enumerate() {
        // OpenCV's `clip`: taps above or below the image read the edge row, weights unchanged.
        let r0 = tap.start.clamp(0, last_row) as usize;
        let r1 = (tap.start + 1).clamp(0, last_row) as usize;
        let s0 = match cached.iter().position(|&c| c == Some(r0)) {
            Some(s) => s,
            None => {
                let s = if cached[0] == Some(r1) { 1 } else { 0 };
                let start = r0 * src_stride;
                horizontal_row(&src.data[start..start + src_stride], &xtaps, &mut rows[s]);
                cached[s] = Some(r0);
                s
            }
        };
        let s1 = if r1 == r0 {
            s0
        } else {
            match cached.iter().position(|&c| c == Some(r1)) {
                Some(s) => s,
                None => {
                    let s = 1 - s0;
                    let start = r1 * src_stride;
                    horizontal_row(&src.data[start..start + src_stride], &xtaps, &mut rows[s]);
                    cached[s] = Some(r1);
                    s
                }
            }
        };
        let (b0, b1) = (tap.w0, tap.w1);
        for ((dst, &v0), &v1) in out_row.iter_mut().zip(&rows[s0]).zip(&rows[s1]) {
            *dst = vertical_pixel(v0, v1, b0, b1);
        }
        emit(y, &out_row);
    }
}

/// cv2.resize(..., INTER_LINEAR) semantics: half-pixel centres, no antialiasing, edge clamp.
///
/// Bit-exact with OpenCV 4.x for 8-bit images (its 11-bit fixed-point weights and rounding),
/// including the plain copy when the size does not change. A zero `width` or `height` gives an
/// empty image; an empty `src` gives a black one.
pub fn resize_bilinear(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    let mut data = Vec::with_capacity(width as usize * height as usize * 3);
    resize_rows(src, width, height, |_, row| data.extend_from_slice(row));
    RgbImage {
        width,
        height,
        data,
    }
}
