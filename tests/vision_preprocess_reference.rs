//! Model inputs and decoded images checked against the Python stack Ultralytics runs:
//! scripts/preprocess_ref.py transcribes `LetterBox` and the predictor's tensor conversion with
//! OpenCV, and `classify_transforms` with Pillow; the images are two real photos
//! (`make deps`, mk/pre.mk, puts them and opencv-python-headless/Pillow in `.cache`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use mpslab::vision::image::{decode, decode_bytes, ImageError};
use mpslab::vision::preprocess::{classify, letterbox, letterbox_auto, letterbox_val};
use mpslab::vision::{Letterbox, RgbImage};

fn python() -> PathBuf {
    common::venv_python("mk/pre.mk installs opencv-python-headless and Pillow")
}

/// One of the real photos mk/pre.mk unpacks from the scikit-image wheel.
fn photo(name: &str) -> PathBuf {
    common::cached(
        &format!("images/{name}"),
        "mk/pre.mk unpacks the test photos",
    )
}

const PHOTOS: [&str; 2] = ["astronaut.png", "coffee.png"];

/// Runs scripts/preprocess_ref.py; returns its JSON line and the bytes it wrote to its OUT file.
fn reference(mode: &str, args: &[String]) -> (serde_json::Value, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.raw");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/preprocess_ref.py");
    let output = Command::new(python())
        .arg(&script)
        .arg(mode)
        .args(args)
        .arg(&out)
        .output()
        .expect("run scripts/preprocess_ref.py");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "preprocess_ref.py {mode} {args:?} failed ({}): {stderr}\n\
         (a missing cv2 or PIL module means: run `make deps`, mk/pre.mk)",
        output.status
    );
    let line = String::from_utf8(output.stdout).unwrap();
    let json: serde_json::Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("preprocess_ref.py printed {line:?}: {e}"));
    (json, std::fs::read(&out).unwrap())
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    assert_eq!(bytes.len() % 4, 0);
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Values that differ, and the largest difference.
fn differences(ours: &[f32], theirs: &[f32]) -> (usize, f32) {
    assert_eq!(ours.len(), theirs.len(), "tensor lengths differ");
    ours.iter()
        .zip(theirs)
        .filter(|(a, b)| a != b)
        .fold((0, 0f32), |(n, max), (a, b)| {
            (n + 1, max.max((a - b).abs()))
        })
}

/// The tensors must agree to one 8-bit step everywhere and exactly almost everywhere.
///
/// `cv2.resize(INTER_LINEAR)` on 8-bit images is fixed-point (11-bit weights, a rounding shift
/// after the vertical pass), so a float implementation would drift by one step on a few
/// percent of the pixels; ours reproduces the integer arithmetic, so any differing value is a
/// regression of that reproduction. One step (1/255) is the most a rounding difference can
/// cause; more than 1% differing values would mean the taps or weights are off, not rounding.
fn assert_close(what: &str, ours: &[f32], theirs: &[f32]) -> usize {
    let (n, max) = differences(ours, theirs);
    eprintln!(
        "{what}: {n} of {} values differ from the reference, max |diff| {max}",
        ours.len()
    );
    assert!(
        max <= 1.0 / 255.0 + 1e-6,
        "{what}: max |diff| {max} exceeds one 8-bit step (1/255)"
    );
    assert!(
        (n as f64) < 0.01 * ours.len() as f64,
        "{what}: {n} of {} values differ (more than 1%)",
        ours.len()
    );
    n
}

fn assert_geometry(what: &str, lb: &Letterbox, geo: &serde_json::Value, img: &RgbImage) {
    let num = |k: &str| {
        geo[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: no `{k}` in {geo}"))
    };
    assert_eq!(lb.gain, num("gain") as f32, "{what}: gain ({geo})");
    assert_eq!(lb.pad_x, num("pad_x") as f32, "{what}: pad_x ({geo})");
    assert_eq!(lb.pad_y, num("pad_y") as f32, "{what}: pad_y ({geo})");
    assert_eq!(
        (lb.input_w, lb.input_h),
        (num("input_w") as u32, num("input_h") as u32),
        "{what}: input size ({geo})"
    );
    assert_eq!(
        (lb.orig_w, lb.orig_h),
        (img.width, img.height),
        "{what}: original size"
    );
    assert_eq!(
        (num("orig_w") as u32, num("orig_h") as u32),
        (img.width, img.height),
        "{what}: cv2 and we decoded different sizes"
    );
}

#[test]
fn letterbox_matches_ultralytics_for_fixed_inputs() {
    let mut total = 0;
    let mut out = Vec::new();
    for name in PHOTOS {
        let path = photo(name);
        let img = decode(&path).unwrap();
        // Square up- and downscaling, and non-square inputs padded along either axis.
        for (w, h) in [(320, 320), (640, 640), (256, 320), (320, 256), (512, 512)] {
            let what = format!("{name} letterbox {w}x{h}");
            let lb = letterbox(&img, w, h, &mut out);
            let (geo, raw) = reference(
                "letterbox",
                &[path.display().to_string(), w.to_string(), h.to_string()],
            );
            assert_geometry(&what, &lb, &geo, &img);
            assert_eq!((lb.input_w, lb.input_h), (w, h), "{what}: fixed input size");
            total += assert_close(&what, &out, &f32s(&raw));
        }
    }
    eprintln!("letterbox, fixed inputs: {total} differing values in all");
}

#[test]
fn letterbox_matches_ultralytics_for_awkward_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    // Odd half-borders, a sliver, and tiny images blown up 40x (rows above the first and below
    // the last source row are clamped by cv2 without touching their weights).
    for (w, h) in [(321, 65), (65, 321), (999, 7), (7, 5), (3, 2)] {
        let data: Vec<u8> = (0..w * h)
            .flat_map(|i| {
                let (x, y) = (i % w, i / w);
                [
                    (x * 255 / w) as u8,
                    (y * 255 / h) as u8,
                    ((x * 31 + y * 17) % 256) as u8,
                ]
            })
            .collect();
        let path = dir.path().join(format!("{w}x{h}.png"));
        write_png(
            &path,
            w,
            h,
            png::ColorType::Rgb,
            png::BitDepth::Eight,
            &data,
        );
        let img = decode(&path).unwrap();
        for (iw, ih) in [(320, 320), (320, 256)] {
            let what = format!("{w}x{h} letterbox {iw}x{ih}");
            let lb = letterbox(&img, iw, ih, &mut out);
            let (geo, raw) = reference(
                "letterbox",
                &[path.display().to_string(), iw.to_string(), ih.to_string()],
            );
            assert_geometry(&what, &lb, &geo, &img);
            assert_close(&what, &out, &f32s(&raw));
        }
    }
    // The example in the `Letterbox` docs: the border actually added, not scale_boxes' guess.
    let img = decode(&dir.path().join("321x65.png")).unwrap();
    assert_eq!(letterbox(&img, 320, 320, &mut out).pad_y, 127.0);
}

#[test]
fn letterbox_auto_matches_ultralytics_stride_padding() {
    let mut out = Vec::new();
    for name in PHOTOS {
        let path = photo(name);
        let img = decode(&path).unwrap();
        // 300 is not a multiple of the stride: check_imgsz rounds it up to 320 first.
        for (imgsz, stride) in [(320, 32), (640, 32), (300, 32), (320, 64)] {
            let what = format!("{name} letterbox_auto imgsz {imgsz} stride {stride}");
            let lb = letterbox_auto(&img, imgsz, stride, &mut out);
            let (geo, raw) = reference(
                "letterbox_auto",
                &[
                    path.display().to_string(),
                    imgsz.to_string(),
                    stride.to_string(),
                ],
            );
            assert_geometry(&what, &lb, &geo, &img);
            assert_eq!(lb.input_w % stride, 0, "{what}: width not stride-aligned");
            assert_eq!(lb.input_h % stride, 0, "{what}: height not stride-aligned");
            assert_close(&what, &out, &f32s(&raw));
        }
    }
    // coffee.png is 600x400: at 320 the short side needs only stride padding, not a square.
    let coffee = decode(&photo("coffee.png")).unwrap();
    let lb = letterbox_auto(&coffee, 320, 32, &mut out);
    assert_eq!((lb.input_w, lb.input_h), (320, 224));
}

#[test]
fn letterbox_val_matches_the_ultralytics_validator() {
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    let mut inputs: Vec<PathBuf> = PHOTOS.iter().map(|n| photo(n)).collect();
    // A small image (upscaled by load_image) and one with an odd border.
    for (w, h) in [(37u32, 23u32), (321, 65)] {
        let data: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        let path = dir.path().join(format!("{w}x{h}.png"));
        write_png(
            &path,
            w,
            h,
            png::ColorType::Rgb,
            png::BitDepth::Eight,
            &data,
        );
        inputs.push(path);
    }
    for path in &inputs {
        let img = decode(path).unwrap();
        // 512 leaves astronaut.png unresized (load_image's r == 1).
        for imgsz in [320, 512, 640] {
            let what = format!("{} letterbox_val {imgsz}", path.display());
            let lb = letterbox_val(&img, imgsz, &mut out);
            let (geo, raw) = reference(
                "letterbox_val",
                &[path.display().to_string(), imgsz.to_string()],
            );
            assert_geometry(&what, &lb, &geo, &img);
            assert_eq!((lb.input_w, lb.input_h), (imgsz, imgsz), "{what}");
            assert_close(&what, &out, &f32s(&raw));
        }
    }
    // load_image rounds up where LetterBox rounds to nearest: 600x400 at 320 is resized to
    // 320x214 here and to 320x213 by the predictor, so gain and pixels differ.
    let coffee = decode(&photo("coffee.png")).unwrap();
    let val = letterbox_val(&coffee, 320, &mut out);
    let val_tensor = out.clone();
    let pred = letterbox(&coffee, 320, 320, &mut out);
    assert_eq!((val.pad_y, pred.pad_y), (53.0, 53.0));
    assert_eq!(val.gain, 214.0 / 400.0);
    assert_eq!(pred.gain, 320.0 / 600.0);
    let (n, _) = differences(&val_tensor, &out);
    assert!(
        n > 100_000,
        "only {n} values differ between the val and predictor paths"
    );
}

#[test]
fn classify_matches_pil_resize_and_center_crop() {
    let mut out = Vec::new();
    for name in PHOTOS {
        let path = photo(name);
        let img = decode(&path).unwrap();
        // Downscaling (antialiased), upscaling, a non-square input (plain stretch), and 400
        // (coffee.png's short side: only the horizontal pass runs).
        for (w, h) in [(224, 224), (640, 640), (224, 160), (400, 400)] {
            let what = format!("{name} classify {w}x{h}");
            classify(&img, w, h, &mut out);
            let (geo, raw) = reference(
                "classify",
                &[path.display().to_string(), w.to_string(), h.to_string()],
            );
            assert_eq!(geo["shape"], serde_json::json!([1, 3, h, w]), "{what}");
            // PIL's resampling is integer arithmetic too and is reproduced exactly.
            let (n, max) = differences(&out, &f32s(&raw));
            eprintln!("{what}: {n} values differ from PIL, max |diff| {max}");
            assert_eq!(n, 0, "{what}: {n} values differ from PIL (max {max})");
        }
    }
}

#[test]
fn png_decode_matches_cv2_imread() {
    for name in PHOTOS {
        let path = photo(name);
        let img = decode(&path).unwrap();
        let (geo, raw) = reference("decode", &[path.display().to_string()]);
        assert_eq!(
            geo["shape"],
            serde_json::json!([img.height, img.width, 3]),
            "{name}"
        );
        assert!(img.data == raw, "{name}: PNG pixels differ from cv2.imread");
    }
    let astronaut = decode(&photo("astronaut.png")).unwrap();
    assert_eq!((astronaut.width, astronaut.height), (512, 512));
    let coffee = decode(&photo("coffee.png")).unwrap();
    assert_eq!((coffee.width, coffee.height), (600, 400));
}

/// Encodes a photo as JPEG with cv2 (libjpeg-turbo, quality 90, 4:2:0 chroma subsampling),
/// with an EXIF Orientation tag unless `orientation` is 0.
fn cv2_jpeg(name: &str, orientation: u8, dir: &Path) -> PathBuf {
    let jpg = dir.join(format!(
        "{}-{orientation}.jpg",
        name.trim_end_matches(".png")
    ));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/preprocess_ref.py");
    let output = Command::new(python())
        .arg(&script)
        .args(["jpeg", &photo(name).display().to_string(), "90"])
        .arg(orientation.to_string())
        .arg(&jpg)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cannot encode {name} as JPEG: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    jpg
}

#[test]
fn jpeg_decode_is_close_to_cv2_imread() {
    let dir = tempfile::tempdir().unwrap();
    // 0: no EXIF; 6: rotate 90 degrees clockwise (portrait phone photo); 3: 180; 8: 270.
    for (name, orientation) in [
        ("astronaut.png", 0),
        ("coffee.png", 0),
        ("coffee.png", 6),
        ("coffee.png", 3),
        ("coffee.png", 8),
    ] {
        let jpg = cv2_jpeg(name, orientation, dir.path());
        let img = decode(&jpg).unwrap();
        let (geo, raw) = reference("decode", &[jpg.display().to_string()]);
        // cv2.imdecode applies the EXIF orientation, as the image crate does here.
        assert_eq!(
            geo["shape"],
            serde_json::json!([img.height, img.width, 3]),
            "{name} orientation {orientation}: size after orientation"
        );
        if orientation == 6 || orientation == 8 {
            assert_eq!((img.width, img.height), (400, 600), "{name} is rotated");
        }
        // libjpeg-turbo and the image crate's decoder (zune-jpeg) use different IDCTs and
        // chroma upsampling, so pixels differ by a few levels, never by a visible amount.
        let diffs: Vec<u32> = img
            .data
            .iter()
            .zip(&raw)
            .map(|(a, b)| u32::from(a.abs_diff(*b)))
            .collect();
        let mean = diffs.iter().sum::<u32>() as f64 / diffs.len() as f64;
        let max = diffs.iter().copied().max().unwrap();
        let exact = diffs.iter().filter(|&&d| d == 0).count() as f64 / diffs.len() as f64;
        eprintln!(
            "{name} as JPEG q90, orientation {orientation}: mean |diff| {mean:.4}, max {max}, \
             {:.2}% of values equal",
            exact * 100.0
        );
        // A wrong orientation or colour conversion gives a mean difference of tens of levels.
        assert!(mean < 1.0, "{name}: mean |diff| {mean} vs cv2");
        assert!(max <= 16, "{name}: max |diff| {max} vs cv2");
    }
}

/// A PNG written with the `png` crate.
fn write_png(
    path: &Path,
    w: u32,
    h: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(color);
    enc.set_depth(depth);
    let mut writer = enc.write_header().unwrap();
    writer.write_image_data(data).unwrap();
    writer.finish().unwrap();
}

#[test]
fn grey_rgba_and_16_bit_pngs_decode_to_rgb_like_cv2() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (7u32, 5u32);
    let n = (w * h) as usize;

    let grey: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
    let grey_path = dir.path().join("grey.png");
    write_png(
        &grey_path,
        w,
        h,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &grey,
    );

    let rgba: Vec<u8> = (0..n)
        .flat_map(|i| [i as u8, (2 * i) as u8, (3 * i) as u8, (i * 37 % 256) as u8])
        .collect();
    let rgba_path = dir.path().join("rgba.png");
    write_png(
        &rgba_path,
        w,
        h,
        png::ColorType::Rgba,
        png::BitDepth::Eight,
        &rgba,
    );

    // 16-bit samples whose low byte would round the high byte up under v / 257.
    let rgb16: Vec<u8> = (0..n * 3)
        .flat_map(|i| (((i as u16) << 8) | 0xF0).to_be_bytes())
        .collect();
    let rgb16_path = dir.path().join("rgb16.png");
    write_png(
        &rgb16_path,
        w,
        h,
        png::ColorType::Rgb,
        png::BitDepth::Sixteen,
        &rgb16,
    );

    let img = decode(&grey_path).unwrap();
    assert_eq!((img.width, img.height), (w, h));
    let want: Vec<u8> = grey.iter().flat_map(|&g| [g, g, g]).collect();
    assert_eq!(img.data, want, "grey is replicated into R, G and B");

    let img = decode(&rgba_path).unwrap();
    let want: Vec<u8> = rgba
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    assert_eq!(img.data, want, "alpha is dropped, not composited");

    let img = decode(&rgb16_path).unwrap();
    let want: Vec<u8> = (0..n * 3).map(|i| i as u8).collect();
    assert_eq!(img.data, want, "16-bit samples keep their high byte");

    for path in [&grey_path, &rgba_path, &rgb16_path] {
        let ours = decode(path).unwrap();
        let (_, raw) = reference("decode", &[path.display().to_string()]);
        assert!(
            ours.data == raw,
            "{}: differs from cv2.imread",
            path.display()
        );
    }
}

#[test]
fn corrupt_and_truncated_images_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.jpg");
    std::fs::write(&garbage, b"this is not an image at all").unwrap();
    let err = decode(&garbage).unwrap_err();
    assert!(matches!(err, ImageError::NotAnImage { .. }), "{err:?}");
    assert!(err.to_string().contains("garbage.jpg"), "{err}");

    // A real PNG cut in half: the header is fine, the pixel data ends early.
    let bytes = std::fs::read(photo("coffee.png")).unwrap();
    let cut = dir.path().join("cut.png");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = decode(&cut).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Truncated { .. } | ImageError::Corrupt { .. }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("cut.png"), "{err}");

    // A JPEG signature followed by noise.
    let mut noise = vec![0xFF, 0xD8, 0xFF, 0xE0];
    noise.extend((0..2000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    let err = decode_bytes(&noise, "noise.jpg").unwrap_err();
    assert!(err.to_string().contains("noise.jpg"), "{err}");

    let missing = dir.path().join("missing.png");
    let err = decode(&missing).unwrap_err();
    assert!(matches!(err, ImageError::Unreadable { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.png"), "{err}");
}
