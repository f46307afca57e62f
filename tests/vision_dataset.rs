//! Dataset loading in Ultralytics layout (src/vision/dataset.rs): the data.yaml forms Ultralytics
//! accepts, label-file problems reported per file and line, label geometry in pixels, and the
//! demo datasets of scripts/gen_datasets.py.

mod common;

use std::collections::BTreeMap;
use std::f32::consts::PI;
use std::path::{Path, PathBuf};
use std::process::Command;

use mpslab::vision::dataset::{
    img2label_path, min_area_rect, parse_labels, Dataset, DatasetError, RawLabels,
};
use mpslab::vision::{DatasetIssue, IssueKind, Labels, RBox, Task};
use sha2::{Digest, Sha256};

/// Writes `contents` to `root/rel`, creating folders.
fn put(root: &Path, rel: &str, contents: &str) -> PathBuf {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, contents).unwrap();
    p
}

/// Images are not decoded when a dataset is opened, so any non-empty bytes stand for one.
fn image(root: &Path, rel: &str) -> PathBuf {
    put(root, rel, "image bytes (not decoded at open time)")
}

const LINE: &str = "0 0.5 0.5 0.2 0.2\n";

/// A detect dataset in the usual layout: images/val/{a,b}.jpg with one label line each.
fn detect_tree(root: &Path) {
    for stem in ["a", "b"] {
        image(root, &format!("images/val/{stem}.jpg"));
        put(root, &format!("labels/val/{stem}.txt"), LINE);
    }
}

fn item_names(ds: &Dataset) -> Vec<String> {
    ds.items
        .iter()
        .map(|i| {
            i.image
                .strip_prefix(&ds.root)
                .unwrap()
                .display()
                .to_string()
        })
        .collect()
}

fn objects(labels: &RawLabels) -> usize {
    match labels {
        RawLabels::Objects(o) => o.len(),
        RawLabels::Class(_) => panic!("not an object dataset"),
    }
}

// ---- data.yaml ------------------------------------------------------------------------------

#[test]
fn yaml_path_missing_relative_and_absolute() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // No `path`: the yaml's own directory is the root (Ultralytics: the yaml's parent).
    detect_tree(&d.join("plain"));
    let yaml = put(d, "plain/data.yaml", "val: images/val\nnames: [a]\n");
    let ds = Dataset::open(&yaml, Task::Detect, "val").unwrap();
    assert_eq!(ds.root, d.join("plain"));
    assert_eq!(item_names(&ds), ["images/val/a.jpg", "images/val/b.jpg"]);
    assert!(ds.issues.is_empty(), "{:?}", ds.issues);
    assert!(ds.items.iter().all(|i| objects(&i.labels) == 1));

    // Relative `path`: against the yaml's directory.
    detect_tree(&d.join("data/rel"));
    let yaml = put(
        d,
        "cfg/data.yaml",
        "path: ../data/rel\nval: images/val\nnames: [a]\n",
    );
    let ds = Dataset::open(&yaml, Task::Detect, "val").unwrap();
    assert_eq!(ds.root, d.join("data/rel"));
    assert_eq!(ds.items.len(), 2);

    // Absolute `path`, yaml elsewhere.
    detect_tree(&d.join("abs"));
    let yaml = put(
        d,
        "elsewhere/data.yaml",
        &format!(
            "path: {}\nval: images/val\nnames: [a]\n",
            d.join("abs").display()
        ),
    );
    let ds = Dataset::open(&yaml, Task::Detect, "val").unwrap();
    assert_eq!(ds.root, d.join("abs"));
    assert_eq!(ds.items.len(), 2);
    assert!(ds.issues.is_empty(), "{:?}", ds.issues);
}

#[test]
fn val_as_image_list_file_and_as_list_of_folders() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    detect_tree(d);
    image(d, "images/extra/c.png");
    put(d, "labels/extra/c.txt", LINE);
    // Ultralytics' own lists (coco val2017.txt) use `./images/...` lines; absolute lines work
    // too, and lines that are not images are ignored.
    put(
        d,
        "val.txt",
        &format!(
            "./images/val/b.jpg\n\n{}\nimages/val/a.jpg\nnotes.md\n",
            d.join("images/extra/c.png").display()
        ),
    );
    let yaml = put(d, "data.yaml", "val: val.txt\nnames: [a]\n");
    let ds = Dataset::open(&yaml, Task::Detect, "val").unwrap();
    assert_eq!(
        item_names(&ds),
        ["images/extra/c.png", "images/val/a.jpg", "images/val/b.jpg"],
        "sorted by path, as Ultralytics sorts im_files"
    );
    assert!(ds.issues.is_empty(), "{:?}", ds.issues);

    let yaml = put(
        d,
        "two.yaml",
        "val: [images/val, images/extra]\nnames: [a]\n",
    );
    let ds = Dataset::open(&yaml, Task::Detect, "val").unwrap();
    assert_eq!(ds.items.len(), 3);

    // A list naming an image that is not there, or a folder: each is reported, the rest load.
    std::fs::create_dir_all(d.join("images/odd/folder.jpg")).unwrap();
    put(
        d,
        "broken.txt",
        "./images/val/a.jpg\n./images/val/gone.jpg\n./images/odd/folder.jpg\n",
    );
    let yaml = put(d, "broken.yaml", "val: broken.txt\nnames: [a]\n");
    let ds = Dataset::open(&yaml, Task::Detect, "val").unwrap();
    assert_eq!(item_names(&ds), ["images/val/a.jpg"]);
    assert_eq!(ds.issues.len(), 2, "{:#?}", ds.issues);
    assert!(ds.issues.iter().all(|i| i.kind == IssueKind::BadImage));
    assert_eq!(ds.issues[0].file, "images/odd/folder.jpg");
    assert!(ds.issues[0].message.contains("not a regular file"));
    assert_eq!(ds.issues[1].file, "images/val/gone.jpg");
    assert!(ds.issues[1].message.contains("cannot read"));
}

#[test]
fn names_as_list_map_or_nc() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    detect_tree(d);
    let open = |yaml: &str| Dataset::open(&put(d, "data.yaml", yaml), Task::Detect, "val");

    let ds = open("val: images/val\nnames: [cat, dog]\n").unwrap();
    assert_eq!(ds.names, ["cat", "dog"]);
    // The map form (Ultralytics' own yamls), keys in any order.
    let ds = open("val: images/val\nnames:\n  1: dog\n  0: cat\n").unwrap();
    assert_eq!(ds.names, ["cat", "dog"]);
    let ds = open("val: images/val\nnc: 2\n").unwrap();
    assert_eq!(ds.names, ["class_0", "class_1"]);
    let ds = open("val: images/val\nnc: 2\nnames: [cat, dog]\n").unwrap();
    assert_eq!(ds.names.len(), 2);

    let err = open("val: images/val\nnames:\n  0: cat\n  2: bird\n").unwrap_err();
    assert!(
        err.to_string().contains("class 1 is missing"),
        "a gap in the ids: {err}"
    );
    let err = open("val: images/val\nnc: 3\nnames: [cat, dog]\n").unwrap_err();
    assert!(
        matches!(&err, DatasetError::InvalidKey { key, .. } if key == "nc"),
        "{err}"
    );
    let err = open("val: images/val\n").unwrap_err();
    assert!(
        matches!(&err, DatasetError::MissingKey { key, .. } if key == "names"),
        "{err}"
    );
    let err = open("val: [images/val\nnames: [a]\n").unwrap_err();
    assert!(matches!(err, DatasetError::Yaml { .. }), "{err}");
    assert!(err.to_string().contains("data.yaml"), "{err}");
    // A syntax error points at its line.
    let err = open("val: images/val\nnames:\n  - a\n  - b\n nc: 2\n").unwrap_err();
    assert!(matches!(&err, DatasetError::Yaml { line: 5, .. }), "{err}");
}

#[test]
fn pose_kpt_shape() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    image(d, "images/val/p.jpg");
    let kpts: String = (0..17).map(|i| format!(" 0.{:02} 0.5 2", 10 + i)).collect();
    put(d, "labels/val/p.txt", &format!("0 0.5 0.5 0.4 0.6{kpts}\n"));
    let yaml = put(
        d,
        "data.yaml",
        "val: images/val\nnames: [person]\nkpt_shape: [17, 3]\n",
    );
    let ds = Dataset::open(&yaml, Task::Pose, "val").unwrap();
    assert_eq!(ds.kpt_shape, Some((17, 3)));
    assert!(ds.issues.is_empty(), "{:?}", ds.issues);
    let RawLabels::Objects(objs) = &ds.items[0].labels else {
        panic!()
    };
    assert_eq!(objs[0].keypoints.len(), 17);
    assert_eq!(objs[0].keypoints[3].x, 0.13);
    assert_eq!(objs[0].keypoints[3].v, 2.0);

    // The same line read with 2-value keypoints is the wrong length.
    put(
        d,
        "two.yaml",
        "val: images/val\nnames: [person]\nkpt_shape: [17, 2]\n",
    );
    let ds = Dataset::open(&d.join("two.yaml"), Task::Pose, "val").unwrap();
    assert!(ds.items.is_empty());
    assert!(
        ds.issues[0].message.contains("expected 39 values"),
        "{:?}",
        ds.issues
    );

    let yaml = put(d, "nokpt.yaml", "val: images/val\nnames: [person]\n");
    let err = Dataset::open(&yaml, Task::Pose, "val").unwrap_err();
    assert!(
        matches!(&err, DatasetError::MissingKey { key, .. } if key == "kpt_shape"),
        "{err}"
    );
    let yaml = put(
        d,
        "bad.yaml",
        "val: images/val\nnames: [p]\nkpt_shape: [17, 4]\n",
    );
    let err = Dataset::open(&yaml, Task::Pose, "val").unwrap_err();
    assert!(err.to_string().contains("kpt_shape"), "{err}");
}

#[test]
fn missing_split_is_an_error_naming_path_and_split() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    detect_tree(d);
    let yaml = put(d, "data.yaml", "val: images/nope\nnames: [a]\n");
    let err = Dataset::open(&yaml, Task::Detect, "val").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DatasetError::SplitMissing { .. }), "{err:?}");
    assert!(
        msg.contains("images/nope") && msg.contains("`val`"),
        "{msg}"
    );
    assert!(msg.contains("data.yaml"), "{msg}");

    // The split key itself is absent.
    let err = Dataset::open(&yaml, Task::Detect, "test").unwrap_err();
    assert!(
        matches!(&err, DatasetError::MissingKey { key, .. } if key == "test"),
        "{err}"
    );
    assert!(err.to_string().contains("data.yaml"), "{err}");

    let err = Dataset::open(&yaml, Task::Detect, "dev").unwrap_err();
    assert!(matches!(err, DatasetError::UnknownSplit { .. }), "{err}");

    // `validation:` stands for `val:` (Ultralytics renames it).
    let yaml = put(d, "v.yaml", "validation: images/val\nnames: [a]\n");
    assert_eq!(
        Dataset::open(&yaml, Task::Detect, "val")
            .unwrap()
            .items
            .len(),
        2
    );

    // An image folder without images.
    std::fs::create_dir_all(d.join("images/empty")).unwrap();
    let yaml = put(d, "e.yaml", "val: images/empty\nnames: [a]\n");
    let err = Dataset::open(&yaml, Task::Detect, "val").unwrap_err();
    assert!(matches!(err, DatasetError::NoImages { .. }), "{err}");
}

#[test]
fn img2label_paths_like_ultralytics() {
    let cases = [
        ("/d/images/val/x.jpg", "/d/labels/val/x.txt"),
        // Only the last `/images/` is replaced.
        ("/images/a/images/b.PNG", "/images/a/labels/b.txt"),
        ("/d/val/x.jpeg", "/d/val/x.txt"),
        ("/d/images/val/x.tar.jpg", "/d/labels/val/x.tar.txt"),
        ("/d/myimages/x.jpg", "/d/myimages/x.txt"),
    ];
    for (image, label) in cases {
        assert_eq!(
            img2label_path(Path::new(image)),
            Path::new(label),
            "{image}"
        );
    }
}

// ---- cls ------------------------------------------------------------------------------------

#[test]
fn cls_image_folders() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Created out of order: class ids follow the sorted folder names.
    for (class, files) in [("zebra", 2), ("ant", 1), ("moth", 3)] {
        for k in 0..files {
            image(d, &format!("val/{class}/{k}.jpg"));
        }
    }
    image(d, "val/moth/nested/deep.png");
    put(d, "val/moth/readme.txt", "not an image");
    image(d, "val/.cache/x.jpg");
    let ds = Dataset::open(d, Task::Cls, "val").unwrap();
    assert_eq!(ds.names, ["ant", "moth", "zebra"]);
    let classes: Vec<u32> = ds
        .items
        .iter()
        .map(|i| match i.labels {
            RawLabels::Class(c) => c,
            _ => panic!(),
        })
        .collect();
    assert_eq!(classes, [0, 1, 1, 1, 1, 2, 2]);
    assert!(ds.issues.is_empty());

    // Ultralytics falls back to val/ when there is no test/.
    assert_eq!(Dataset::open(d, Task::Cls, "test").unwrap().items.len(), 7);
    let err = Dataset::open(d, Task::Cls, "train").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DatasetError::ClsSplitMissing { .. }), "{err}");
    assert!(
        msg.contains(&d.display().to_string()) && msg.contains("`train`") && msg.contains("val/"),
        "{msg}"
    );

    // Class folders directly under the root.
    let flat = tempfile::tempdir().unwrap();
    image(flat.path(), "b/1.png");
    image(flat.path(), "a/1.png");
    let ds = Dataset::open(flat.path(), Task::Cls, "val").unwrap();
    assert_eq!(ds.names, ["a", "b"]);

    // An empty image file is reported at open time.
    image(d, "val/ant/1.jpg");
    put(d, "val/ant/empty.jpg", "");
    let ds = Dataset::open(d, Task::Cls, "val").unwrap();
    assert_eq!(ds.items.len(), 8);
    assert_eq!(ds.issues.len(), 1);
    assert_eq!(ds.issues[0].kind, IssueKind::BadImage);
    assert_eq!(ds.issues[0].file, "val/ant/empty.jpg");

    let err = Dataset::open(&d.join("val/ant/0.jpg"), Task::Cls, "val").unwrap_err();
    assert!(matches!(err, DatasetError::NotADirectory { .. }), "{err}");
}

// ---- malformed label files ------------------------------------------------------------------

fn issue<'a>(ds: &'a Dataset, file: &str) -> &'a DatasetIssue {
    ds.issues
        .iter()
        .find(|i| i.file == file)
        .unwrap_or_else(|| panic!("no issue for {file}: {:#?}", ds.issues))
}

#[test]
fn malformed_detect_files_are_reported_per_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(d, "data.yaml", "val: images/val\nnames: [a, b, c]\n");
    let files: &[(&str, Option<&str>)] = &[
        ("good", Some("0 0.5 0.5 0.2 0.2\n2 0.1 0.1 0.1 0.1\n")),
        ("nolabel", None),
        ("empty", Some("")),
        ("badclass", Some("0 0.5 0.5 0.2 0.2\n\n3 0.5 0.5 0.2 0.2\n")),
        ("negclass", Some("-1 0.5 0.5 0.2 0.2\n")),
        ("fourvals", Some("1 0.5 0.5 0.2\n")),
        ("sixvals", Some("1 0.5 0.5 0.2 0.2 0.3\n")),
        ("nan", Some("1 0.5 zero 0.2 0.2\n")),
        ("big", Some("1 0.5 0.5 1.02 0.2\n")),
        ("negative", Some("1 0.5 -0.02 0.2 0.2\n")),
        // Within Ultralytics' 1% tolerance.
        ("edge", Some("1 0.5 0.5 1.005 -0.005\n")),
        (
            "dup",
            Some("1 0.5 0.5 0.2 0.2\n0 0.3 0.3 0.1 0.1\n1 0.5 0.5 0.2 0.2\n"),
        ),
        // A polygon in a detect file becomes its bounding box (segments2boxes).
        ("polygon", Some("2 0.1 0.2 0.3 0.2 0.2 0.4\n")),
    ];
    for (stem, label) in files {
        image(d, &format!("images/val/{stem}.jpg"));
        if let Some(text) = label {
            put(d, &format!("labels/val/{stem}.txt"), text);
        }
    }
    put(d, "images/val/zero.jpg", "");
    put(d, "labels/val/zero.txt", LINE);

    let ds = Dataset::open(&d.join("data.yaml"), Task::Detect, "val").unwrap();
    let kept: BTreeMap<String, usize> = ds
        .items
        .iter()
        .map(|i| {
            let stem = i.image.file_stem().unwrap().to_string_lossy().into_owned();
            (stem, objects(&i.labels))
        })
        .collect();
    let want: BTreeMap<String, usize> = [
        ("good", 2),
        ("nolabel", 0),
        ("empty", 0),
        ("edge", 1),
        ("dup", 2),
        ("polygon", 1),
    ]
    .into_iter()
    .map(|(s, n)| (s.to_string(), n))
    .collect();
    assert_eq!(kept, want, "issues: {:#?}", ds.issues);

    let missing = issue(&ds, "labels/val/nolabel.txt");
    assert_eq!(missing.kind, IssueKind::MissingLabel);
    assert!(
        missing.message.contains("images/val/nolabel.jpg"),
        "{missing:?}"
    );
    assert!(missing.message.contains("background"), "{missing:?}");

    let bad = issue(&ds, "labels/val/badclass.txt");
    assert_eq!((bad.kind, bad.line), (IssueKind::BadLabel, Some(3)));
    assert!(
        bad.message.contains("class 3") && bad.message.contains("nc=3"),
        "{bad:?}"
    );
    assert_eq!(issue(&ds, "labels/val/negclass.txt").line, Some(1));
    let four = issue(&ds, "labels/val/fourvals.txt");
    assert_eq!((four.kind, four.line), (IssueKind::BadLabel, Some(1)));
    assert!(four.message.contains("expected 5 values"), "{four:?}");
    assert!(four.message.contains("got 4"), "{four:?}");
    assert!(issue(&ds, "labels/val/sixvals.txt")
        .message
        .contains("got 6"));
    let nan = issue(&ds, "labels/val/nan.txt");
    assert!(nan.message.contains("`zero` is not a number"), "{nan:?}");
    let big = issue(&ds, "labels/val/big.txt");
    assert!(
        big.message.contains("1.02") && big.message.contains("outside 0..1"),
        "{big:?}"
    );
    assert!(issue(&ds, "labels/val/negative.txt")
        .message
        .contains("-0.02"));
    let zero = issue(&ds, "images/val/zero.jpg");
    assert_eq!(zero.kind, IssueKind::BadImage);
    assert!(zero.message.contains("empty"), "{zero:?}");
    assert_eq!(ds.issues.len(), 9, "{:#?}", ds.issues);

    // Duplicates: dropped silently, first occurrences kept in file order.
    let dup = ds
        .items
        .iter()
        .find(|i| i.image.ends_with("dup.jpg"))
        .unwrap();
    let RawLabels::Objects(objs) = &dup.labels else {
        panic!()
    };
    assert_eq!(objs.iter().map(|o| o.class).collect::<Vec<_>>(), [1, 0]);
    let poly = ds
        .items
        .iter()
        .find(|i| i.image.ends_with("polygon.jpg"))
        .unwrap();
    let RawLabels::Objects(objs) = &poly.labels else {
        panic!()
    };
    let b = objs[0].bbox;
    assert_eq!((b.x1, b.y1, b.x2, b.y2), (0.1, 0.2, 0.3, 0.4));
}

#[test]
fn label_value_counts_per_task() {
    let kpt = Some((4, 3));
    let ok = |text: &str, task, kpt| parse_labels(text, task, 2, kpt).map(|o| o.len());
    let err = |text: &str, task, kpt| {
        let errors = parse_labels(text, task, 2, kpt).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors[0].clone()
    };
    // pose: 5 + K * dims.
    let pose_ok = "1 0.5 0.5 0.2 0.2 0.1 0.1 2 0.2 0.2 1 0.3 0.3 0 0 0 0";
    assert_eq!(ok(pose_ok, Task::Pose, kpt), Ok(1));
    let (line, msg) = err(&format!("{pose_ok}\n{pose_ok} 1"), Task::Pose, kpt);
    assert_eq!(line, 2);
    assert!(
        msg.contains("expected 17 values") && msg.contains("got 18"),
        "{msg}"
    );
    assert_eq!(
        ok(
            "0 0.5 0.5 0.2 0.2 0.1 0.1 0.2 0.2 0.3 0.3 0.4 0.4",
            Task::Pose,
            Some((4, 2))
        ),
        Ok(1)
    );
    // Keypoints out of range are rejected like boxes (Ultralytics checks the keypoints).
    let (_, msg) = err(
        "1 0.5 0.5 0.2 0.2 1.5 0.1 2 0.2 0.2 1 0.3 0.3 0 0 0 0",
        Task::Pose,
        kpt,
    );
    assert!(msg.contains("1.5"), "{msg}");

    // seg: an odd count of at least 7 (class and 3 or more points).
    assert_eq!(ok("0 0.1 0.1 0.5 0.1 0.3 0.4", Task::Seg, None), Ok(1));
    for bad in [
        "0 0.1 0.1 0.5 0.1",
        "0 0.1 0.1 0.5 0.1 0.3 0.4 0.2",
        "0 0.5 0.5 0.2 0.2",
    ] {
        let (_, msg) = err(bad, Task::Seg, None);
        assert!(msg.contains("odd count of 7 or more"), "{bad}: {msg}");
    }

    // obb: exactly 9.
    assert_eq!(
        ok("1 0.1 0.1 0.5 0.1 0.5 0.4 0.1 0.4", Task::Obb, None),
        Ok(1)
    );
    for bad in [
        "1 0.1 0.1 0.5 0.1 0.5 0.4",
        "1 0.1 0.1 0.5 0.1 0.5 0.4 0.1 0.4 0.3 0.3",
    ] {
        let (_, msg) = err(bad, Task::Obb, None);
        assert!(msg.contains("expected 9 values"), "{bad}: {msg}");
    }

    // Every bad line is reported, with its own number.
    let errors = parse_labels(
        "5 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n0 1 2\n",
        Task::Detect,
        2,
        None,
    )
    .unwrap_err();
    assert_eq!(errors.iter().map(|e| e.0).collect::<Vec<_>>(), [1, 3]);
    assert!(errors[0].1.contains("nc=2"), "{errors:?}");
    let (_, msg) = err("1.5 0.5 0.5 0.2 0.2", Task::Detect, None);
    assert!(msg.contains("not an integer"), "{msg}");
}

// ---- geometry -------------------------------------------------------------------------------

fn rotated_corners(cx: f32, cy: f32, w: f32, h: f32, angle: f32) -> Vec<[f32; 2]> {
    let (s, c) = angle.sin_cos();
    [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]
        .iter()
        .map(|(u, v)| {
            let (x, y) = (u * w, v * h);
            [cx + x * c - y * s, cy + x * s + y * c]
        })
        .collect()
}

fn assert_rbox(got: RBox, want: RBox) {
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-3;
    assert!(
        close(got.cx, want.cx)
            && close(got.cy, want.cy)
            && close(got.w, want.w)
            && close(got.h, want.h)
            && close(got.angle, want.angle),
        "got {got:?}, want {want:?}"
    );
}

#[test]
fn min_area_rect_uses_ultralytics_regularisation() {
    // Ultralytics `regularize_rboxes`: angle in [0, pi/2), `w` the side along the angle (not
    // necessarily the longer one).
    let rb = |cx, cy, w, h, angle| RBox {
        cx,
        cy,
        w,
        h,
        angle,
    };
    let a30 = PI / 6.0;
    let cases = [
        (
            rotated_corners(320.0, 240.0, 200.0, 80.0, a30),
            rb(320.0, 240.0, 200.0, 80.0, a30),
        ),
        // Long side at 120 degrees: the short side lies at 30 degrees and becomes `w`.
        (
            rotated_corners(320.0, 240.0, 200.0, 80.0, a30 + PI / 2.0),
            rb(320.0, 240.0, 80.0, 200.0, a30),
        ),
        // 210 degrees is the same rectangle as 30.
        (
            rotated_corners(50.0, 60.0, 30.0, 10.0, a30 + PI),
            rb(50.0, 60.0, 30.0, 10.0, a30),
        ),
        (
            rotated_corners(10.0, 20.0, 8.0, 4.0, 0.0),
            rb(10.0, 20.0, 8.0, 4.0, 0.0),
        ),
    ];
    for (corners, want) in cases {
        assert_rbox(min_area_rect(&corners), want);
        // The corner order does not matter.
        let mut rev = corners.clone();
        rev.reverse();
        rev.rotate_left(1);
        assert_rbox(min_area_rect(&rev), want);
    }
}

#[test]
fn to_pixels_scales_every_task() {
    let (w, h) = (640u32, 480u32);
    // A 30-degree rectangle in pixels, stored normalised: the anisotropic scaling distorts
    // the angle in normalised space, so the box must be refitted in pixels.
    let corners = rotated_corners(320.0, 240.0, 200.0, 80.0, PI / 6.0);
    let line: String = corners
        .iter()
        .map(|p| format!(" {} {}", p[0] / w as f32, p[1] / h as f32))
        .collect();
    let objs = parse_labels(&format!("1{line}"), Task::Obb, 2, None).unwrap();
    let Labels::Objects(px) = RawLabels::Objects(objs).to_pixels(w, h) else {
        panic!()
    };
    assert_rbox(
        px[0].rbox.unwrap(),
        RBox {
            cx: 320.0,
            cy: 240.0,
            w: 200.0,
            h: 80.0,
            angle: PI / 6.0,
        },
    );
    assert_eq!(px[0].polygon.len(), 4);
    for (got, want) in px[0].polygon.iter().zip(&corners) {
        assert!((got[0] - want[0]).abs() < 1e-3 && (got[1] - want[1]).abs() < 1e-3);
    }
    // The axis-aligned hull of the corners.
    let b = px[0].bbox;
    let half_w = 100.0 * (PI / 6.0).cos() + 40.0 * (PI / 6.0).sin();
    assert!(
        (b.x1 - (320.0 - half_w)).abs() < 1e-3 && (b.x2 - (320.0 + half_w)).abs() < 1e-3,
        "{b:?}"
    );

    // detect: cx cy w h to corners.
    let objs = parse_labels("0 0.5 0.25 0.5 0.5", Task::Detect, 1, None).unwrap();
    let Labels::Objects(px) = RawLabels::Objects(objs).to_pixels(w, h) else {
        panic!()
    };
    let b = px[0].bbox;
    assert_eq!((b.x1, b.y1, b.x2, b.y2), (160.0, 0.0, 480.0, 240.0));
    assert!(px[0].rbox.is_none() && px[0].keypoints.is_empty() && px[0].polygon.is_empty());

    // pose: keypoints scale, visibility does not.
    let objs = parse_labels(
        "0 0.5 0.5 0.5 0.5 0.25 0.5 1 0 0 0",
        Task::Pose,
        1,
        Some((2, 3)),
    )
    .unwrap();
    let Labels::Objects(px) = RawLabels::Objects(objs).to_pixels(w, h) else {
        panic!()
    };
    let k = &px[0].keypoints;
    assert_eq!((k[0].x, k[0].y, k[0].v), (160.0, 240.0, 1.0));
    assert_eq!((k[1].x, k[1].y, k[1].v), (0.0, 0.0, 0.0));

    // seg: the polygon and its extent.
    let objs = parse_labels("0 0.25 0.25 0.75 0.25 0.5 0.75", Task::Seg, 1, None).unwrap();
    let Labels::Objects(px) = RawLabels::Objects(objs).to_pixels(w, h) else {
        panic!()
    };
    assert_eq!(
        px[0].polygon,
        [[160.0, 120.0], [480.0, 120.0], [320.0, 360.0]]
    );
    let b = px[0].bbox;
    assert_eq!((b.x1, b.y1, b.x2, b.y2), (160.0, 120.0, 480.0, 360.0));

    assert_eq!(RawLabels::Class(4).to_pixels(w, h), Labels::Class(4));
}

// ---- scripts/gen_datasets.py ----------------------------------------------------------------

fn python() -> PathBuf {
    common::venv_python("numpy for scripts/gen_datasets.py")
}

fn gen_datasets(out: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gen_datasets.py");
    let output = Command::new(python())
        .arg(script)
        .arg(out)
        .arg("--malformed")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "gen_datasets.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// sha256 over every file's relative path and contents, in path order.
fn tree_hash(root: &Path) -> (usize, String) {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out)
            } else {
                out.push(p)
            }
        }
    }
    let mut files = Vec::new();
    walk(root, &mut files);
    files.sort();
    let mut h = Sha256::new();
    for f in &files {
        h.update(f.strip_prefix(root).unwrap().as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(std::fs::read(f).unwrap());
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    (files.len(), hex)
}

#[test]
fn generated_demo_datasets_open_cleanly_and_reproducibly() {
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    gen_datasets(one.path());
    gen_datasets(two.path());
    let (n, hash) = tree_hash(one.path());
    assert_eq!(
        (n, hash.clone()),
        tree_hash(two.path()),
        "two runs of gen_datasets.py differ"
    );
    eprintln!("gen_datasets.py --malformed: {n} files, sha256 {hash}");
    let d = one.path();

    let cases = [
        ("cls", Task::Cls, 18, 3),
        ("detect/data.yaml", Task::Detect, 8, 3),
        ("pose/data.yaml", Task::Pose, 6, 1),
        ("seg/data.yaml", Task::Seg, 6, 3),
        ("obb/data.yaml", Task::Obb, 6, 3),
    ];
    for (path, task, images, classes) in cases {
        let ds = Dataset::open(&d.join(path), task, "val").unwrap();
        assert!(ds.issues.is_empty(), "{path}: {:#?}", ds.issues);
        assert_eq!(ds.items.len(), images, "{path}");
        assert_eq!(ds.names.len(), classes, "{path}");
        for item in &ds.items {
            let img = mpslab::vision::image::decode(&item.image).unwrap();
            assert_eq!((img.width, img.height), (320, 240));
            if let Labels::Objects(objs) = item.labels.to_pixels(img.width, img.height) {
                assert!(!objs.is_empty(), "{}: no objects", item.image.display());
                for o in objs {
                    let b = o.bbox;
                    assert!(
                        b.x1 >= 0.0
                            && b.y1 >= 0.0
                            && b.x2 <= 320.0
                            && b.y2 <= 240.0
                            && b.area() > 50.0,
                        "{}: {b:?}",
                        item.image.display()
                    );
                    match task {
                        Task::Pose => assert_eq!(o.keypoints.len(), 17),
                        Task::Seg => assert!(o.polygon.len() >= 3),
                        Task::Obb => assert!(o.rbox.is_some()),
                        _ => {}
                    }
                }
            }
        }
    }
    let cls = Dataset::open(&d.join("cls"), Task::Cls, "val").unwrap();
    assert_eq!(cls.names, ["ellipse", "rectangle", "triangle"]);
    let pose = Dataset::open(&d.join("pose/data.yaml"), Task::Pose, "val").unwrap();
    assert_eq!(pose.kpt_shape, Some((17, 3)));

    // detect-malformed: exactly the planted problems.
    let ds = Dataset::open(&d.join("detect-malformed/data.yaml"), Task::Detect, "val").unwrap();
    let mut issues: Vec<(String, Option<usize>, IssueKind)> = ds
        .issues
        .iter()
        .map(|i| (i.file.clone(), i.line, i.kind))
        .collect();
    issues.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        issues,
        [
            (
                "labels/val/bad_class.txt".to_string(),
                Some(2),
                IssueKind::BadLabel
            ),
            (
                "labels/val/missing_label.txt".to_string(),
                None,
                IssueKind::MissingLabel
            ),
            (
                "labels/val/wrong_count.txt".to_string(),
                Some(1),
                IssueKind::BadLabel
            ),
        ],
        "{:#?}",
        ds.issues
    );
    assert!(issue(&ds, "labels/val/bad_class.txt")
        .message
        .contains("class 7"));
    assert!(issue(&ds, "labels/val/wrong_count.txt")
        .message
        .contains("got 4"));
    assert_eq!(
        item_names(&ds),
        [
            "images/val/background.png",
            "images/val/corrupt.jpg",
            "images/val/img_0.png",
            "images/val/img_1.png",
            "images/val/img_2.png",
            "images/val/img_3.png",
            "images/val/missing_label.png",
        ]
    );
    // The corrupt image is found when it is decoded (the worker reports it as bad_image).
    for item in &ds.items {
        let decoded = mpslab::vision::image::decode(&item.image);
        if item.image.ends_with("corrupt.jpg") {
            let err = decoded.unwrap_err();
            assert!(err.to_string().contains("corrupt.jpg"), "{err}");
        } else {
            decoded.unwrap();
        }
    }
}
