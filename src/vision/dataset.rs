//! Validation datasets in Ultralytics layout.
//!
//! - cls: one folder per class (ImageFolder), under `val/` (or `validation/`, then `test/`) or
//!   directly under the given directory; class ids are the sorted folder names' indices.
//! - detect, pose, seg, obb: a `data.yaml` (`path`, `val`/`test`/`train`, `names`, `nc`,
//!   `kpt_shape`) naming image folders or `.txt` image lists; YOLO label files are found with
//!   Ultralytics' `img2label_paths` (last `/images/` becomes `/labels/`, extension `.txt`).
//!
//! Whole-dataset problems are a [`DatasetError`]; problems with single files are
//! [`DatasetIssue`]s and the file is skipped (a missing label file keeps its image as background,
//! as Ultralytics does). Images are not decoded here: the worker reports undecodable ones, this
//! module only reports images that are missing or empty.
//!
//! Deliberate differences from Ultralytics, all towards clearer reports:
//! - relative `path` in data.yaml resolves against the yaml's directory (there is no global
//!   `datasets_dir`), and relative lines of a `.txt` image list against the list's directory;
//! - seg lines need a polygon (at least 3 points); pose lines are checked for the box as well as
//!   the keypoints being in range;
//! - duplicate label rows are dropped silently and the first occurrence's order is kept
//!   (Ultralytics drops them with a log warning, sorting the rows);
//! - hidden files and folders (leading `.`) are skipped, as Python's glob does.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use super::{BBox, DatasetIssue, GtObject, IssueKind, Keypoint, Labels, RBox, Task};

/// Image extensions Ultralytics accepts (`IMG_FORMATS`), compared case-insensitively.
pub const IMAGE_EXTENSIONS: [&str; 10] = [
    "bmp", "jpg", "jpeg", "png", "tif", "tiff", "webp", "dng", "mpo", "pfm",
];

/// Normalised coordinates may overshoot [0, 1] by this much (Ultralytics `verify_image_label`
/// allows 1%: `points.max() <= 1.01`, `lb.min() >= -0.01`), so datasets it accepts load here too.
pub const COORD_TOLERANCE: f32 = 0.01;

/// Why a dataset cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}:{line}:{column}: invalid YAML: {message}", path.display())]
    Yaml {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: expected a YAML mapping of keys (path, val, names, ...)", path.display())]
    NotAMapping { path: PathBuf },
    #[error("{}: key `{key}` is missing ({why})", path.display())]
    MissingKey {
        path: PathBuf,
        key: String,
        why: &'static str,
    },
    #[error("{}: key `{key}` {reason}", path.display())]
    InvalidKey {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{}: `{key}` names {}, which does not exist", path.display(), missing.display())]
    SplitMissing {
        path: PathBuf,
        key: String,
        missing: PathBuf,
    },
    #[error("{}: no images ({}) found for split `{split}`", path.display(), IMAGE_EXTENSIONS.join(", "))]
    NoImages { path: PathBuf, split: String },
    #[error("{}: no class folders (a cls dataset has one folder per class under val/, test/ or the directory itself)", root.display())]
    NoClassFolders { root: PathBuf },
    #[error("{}: has split folders ({found}) but none for split `{split}`", root.display())]
    ClsSplitMissing {
        root: PathBuf,
        split: String,
        found: String,
    },
    #[error("{}: a cls dataset is a directory of class folders", path.display())]
    NotADirectory { path: PathBuf },
    #[error("unknown split `{split}` (expected val, test or train)")]
    UnknownSplit { split: String },
    #[error("task `generic` has no dataset layout (use cls, detect, pose, seg or obb)")]
    UnsupportedTask,
}

/// A dataset split ready for validation: the images to run and their labels, plus the files
/// that were skipped or are used as background.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The dataset root; issue paths are relative to it.
    pub root: PathBuf,
    pub task: Task,
    pub names: Vec<String>,
    /// pose only: keypoints per object and values per keypoint (2 or 3).
    pub kpt_shape: Option<(usize, usize)>,
    /// Sorted by image path (cls: by class, then path), deterministic.
    pub items: Vec<Item>,
    pub issues: Vec<DatasetIssue>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub image: PathBuf,
    pub labels: RawLabels,
}

/// Labels as stored: normalised 0..1 coordinates; `to_pixels` scales them once the image size is known.
///
/// obb objects keep their 4 corners in `polygon` (normalised) and carry an `rbox` fitted in
/// normalised space; [`RawLabels::to_pixels`] refits the rbox to the corners in pixels, as
/// Ultralytics does (`xyxyxyxy2xywhr` runs on pixel coordinates), and keeps the pixel corners.
#[derive(Debug, Clone, PartialEq)]
pub enum RawLabels {
    Class(u32),
    Objects(Vec<GtObject>),
}

impl RawLabels {
    pub fn to_pixels(&self, width: u32, height: u32) -> Labels {
        let (sx, sy) = (width as f32, height as f32);
        match self {
            RawLabels::Class(c) => Labels::Class(*c),
            RawLabels::Objects(objects) => Labels::Objects(
                objects
                    .iter()
                    .map(|o| {
                        let polygon: Vec<[f32; 2]> =
                            o.polygon.iter().map(|p| [p[0] * sx, p[1] * sy]).collect();
                        let rbox = o.rbox.map(|r| {
                            let corners = if polygon.len() == 4 {
                                polygon.clone()
                            } else {
                                r.corners().iter().map(|p| [p[0] * sx, p[1] * sy]).collect()
                            };
                            min_area_rect(&corners)
                        });
                        GtObject {
                            class: o.class,
                            bbox: BBox {
                                x1: o.bbox.x1 * sx,
                                y1: o.bbox.y1 * sy,
                                x2: o.bbox.x2 * sx,
                                y2: o.bbox.y2 * sy,
                            },
                            rbox,
                            keypoints: o
                                .keypoints
                                .iter()
                                .map(|k| Keypoint {
                                    x: k.x * sx,
                                    y: k.y * sy,
                                    v: k.v,
                                })
                                .collect(),
                            polygon,
                        }
                    })
                    .collect(),
            ),
        }
    }
}

impl Dataset {
    /// `path`: for cls a directory (root with `val/`, `test/` or class folders directly, Ultralytics order: val then test), for the other tasks a data.yaml. `split`: "val" (default) or "test" or "train".
    pub fn open(path: &Path, task: Task, split: &str) -> Result<Dataset, DatasetError> {
        if !matches!(split, "val" | "test" | "train") {
            return Err(DatasetError::UnknownSplit {
                split: split.to_string(),
            });
        }
        match task {
            Task::Cls => open_cls(path, split),
            Task::Generic => Err(DatasetError::UnsupportedTask),
            Task::Detect | Task::Pose | Task::Seg | Task::Obb => open_yaml(path, task, split),
        }
    }
}

// ---- data.yaml ------------------------------------------------------------------------------

/// The parts of a data.yaml this crate uses, unresolved.
#[derive(Debug, Clone, PartialEq)]
struct DataYaml {
    path: Option<String>,
    split_key: String,
    split: Vec<String>,
    names: Vec<String>,
    kpt_shape: Option<(usize, usize)>,
}

/// Pure: reads the keys of a data.yaml's text; `yaml_path` only names the file in errors.
fn parse_data_yaml(
    text: &str,
    yaml_path: &Path,
    task: Task,
    split: &str,
) -> Result<DataYaml, DatasetError> {
    let path = || yaml_path.to_path_buf();
    let invalid = |key: &str, reason: String| DatasetError::InvalidKey {
        path: path(),
        key: key.to_string(),
        reason,
    };
    let docs = YamlLoader::load_from_str(text).map_err(|e| DatasetError::Yaml {
        path: path(),
        line: e.marker().line(),
        column: e.marker().col() + 1,
        message: e.to_string(),
    })?;
    let doc = docs.first().map_or(Value::Null, to_value);
    if !doc.is_object() {
        return Err(DatasetError::NotAMapping { path: path() });
    }

    let root = match doc.get("path") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(invalid("path", format!("must be a string, not {other:?}"))),
    };

    // Ultralytics renames `validation` to `val`.
    let split_key = if split == "val" && doc.get("val").is_none() && doc.get("validation").is_some()
    {
        "validation"
    } else {
        split
    };
    let split_paths = match doc.get(split_key) {
        None | Some(Value::Null) => {
            return Err(DatasetError::MissingKey {
                path: path(),
                key: split.to_string(),
                why: "it names the images of the split to validate",
            })
        }
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(seq)) => seq
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(invalid(
                    split_key,
                    format!("must list paths as strings, not {other:?}"),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(invalid(
                split_key,
                format!("must be a path or a list of paths, not {other:?}"),
            ))
        }
    };

    let nc = match doc.get("nc") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| invalid("nc", format!("must be a class count, not {v:?}")))?
                as usize,
        ),
    };
    let names = match doc.get("names") {
        None | Some(Value::Null) => match nc {
            // Ultralytics names the classes itself when only `nc` is given.
            Some(n) => (0..n).map(|i| format!("class_{i}")).collect(),
            None => {
                return Err(DatasetError::MissingKey {
                    path: path(),
                    key: "names".to_string(),
                    why: "a list or {id: name} map of the class names",
                })
            }
        },
        Some(Value::Array(seq)) => seq
            .iter()
            .map(|v| {
                scalar_string(v)
                    .ok_or_else(|| invalid("names", format!("has a non-text entry {v:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Object(map)) => {
            let mut pairs = Vec::with_capacity(map.len());
            for (k, v) in map {
                let id = k.trim().parse::<u64>().ok().ok_or_else(|| {
                    invalid("names", format!("has a key {k:?} that is not a class id"))
                })?;
                let name = scalar_string(v).ok_or_else(|| {
                    invalid("names", format!("has a non-text name {v:?} for class {id}"))
                })?;
                pairs.push((id, name));
            }
            pairs.sort_by_key(|(id, _)| *id);
            for (i, (id, _)) in pairs.iter().enumerate() {
                if *id != i as u64 {
                    return Err(invalid(
                        "names",
                        format!(
                            "must map the class ids 0..{} to names, but class {i} is {}",
                            pairs.len().saturating_sub(1),
                            if *id > i as u64 {
                                "missing"
                            } else {
                                "given twice"
                            }
                        ),
                    ));
                }
            }
            pairs.into_iter().map(|(_, name)| name).collect()
        }
        Some(other) => {
            return Err(invalid(
                "names",
                format!("must be a list or an {{id: name}} map, not {other:?}"),
            ))
        }
    };
    if let Some(n) = nc {
        if n != names.len() {
            return Err(invalid(
                "nc",
                format!("is {n} but `names` has {} entries", names.len()),
            ));
        }
    }
    if names.is_empty() {
        return Err(invalid("names", "is empty".to_string()));
    }

    let kpt_shape = if task == Task::Pose {
        let v = doc
            .get("kpt_shape")
            .ok_or_else(|| DatasetError::MissingKey {
                path: path(),
                key: "kpt_shape".to_string(),
                why: "pose datasets need kpt_shape: [keypoints, 2 or 3]",
            })?;
        let dims: Option<Vec<u64>> = v
            .as_array()
            .map(|s| s.iter().filter_map(Value::as_u64).collect());
        match dims.as_deref() {
            Some(&[k, d]) if k >= 1 && (d == 2 || d == 3) => Some((k as usize, d as usize)),
            _ => {
                return Err(invalid(
                    "kpt_shape",
                    format!("must be [keypoints, 2 or 3], not {v:?}"),
                ))
            }
        }
    } else {
        None
    };

    Ok(DataYaml {
        path: root,
        split_key: split_key.to_string(),
        split: split_paths,
        names,
        kpt_shape,
    })
}

/// data.yaml as JSON values: a pure-Rust YAML parser (no libyaml translation compiled in) and
/// the value type the rest of the crate already uses. Mapping keys become their text, so
/// `names: {0: a}` reads as `{"0": "a"}`; floats that JSON cannot hold become text.
fn to_value(y: &Yaml) -> Value {
    match y {
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => r
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(r.clone()), Value::Number),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(to_value).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match to_value(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, to_value(v))
                })
                .collect(),
        ),
        Yaml::Alias(_) | Yaml::Null | Yaml::BadValue => Value::Null,
    }
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn open_yaml(yaml_path: &Path, task: Task, split: &str) -> Result<Dataset, DatasetError> {
    let yaml_path = normalize(yaml_path);
    let text = fs::read_to_string(&yaml_path).map_err(|source| DatasetError::Read {
        path: yaml_path.clone(),
        source,
    })?;
    let data = parse_data_yaml(&text, &yaml_path, task, split)?;
    let yaml_dir = yaml_path.parent().unwrap_or(Path::new("/"));
    let root = normalize(&yaml_dir.join(data.path.as_deref().unwrap_or(".")));

    let mut images = Vec::new();
    for entry in &data.split {
        let mut target = normalize(&root.join(entry));
        // Ultralytics retries `../x` as `x` when the former does not exist.
        if !target.exists() {
            if let Some(rest) = entry.strip_prefix("../") {
                target = normalize(&root.join(rest));
            }
        }
        let meta = fs::metadata(&target).map_err(|_| DatasetError::SplitMissing {
            path: yaml_path.clone(),
            key: data.split_key.clone(),
            missing: target.clone(),
        })?;
        if meta.is_dir() {
            walk_images(&target, &mut images, &mut HashSet::new())?;
        } else {
            let list = fs::read_to_string(&target).map_err(|source| DatasetError::Read {
                path: target.clone(),
                source,
            })?;
            let base = target.parent().unwrap_or(Path::new("/"));
            images.extend(
                list.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|l| normalize(&base.join(l)))
                    .filter(|p| has_image_extension(p)),
            );
        }
    }
    if images.is_empty() {
        return Err(DatasetError::NoImages {
            path: yaml_path,
            split: split.to_string(),
        });
    }
    // Ultralytics sorts path strings; byte order of the OsStr is the same order.
    images.sort_by(|a, b| a.as_os_str().cmp(b.as_os_str()));

    let mut items = Vec::with_capacity(images.len());
    let mut issues = Vec::new();
    for image in images {
        if let Some(issue) = check_image(&root, &image) {
            issues.push(issue);
            continue;
        }
        let label_path = img2label_path(&image);
        let label_file = relative(&root, &label_path);
        match fs::read(&label_path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                issues.push(DatasetIssue {
                    file: label_file,
                    line: None,
                    kind: IssueKind::MissingLabel,
                    message: format!(
                        "no label file for {}; the image counts as background",
                        relative(&root, &image)
                    ),
                });
                items.push(Item {
                    image,
                    labels: RawLabels::Objects(Vec::new()),
                });
            }
            Err(e) => issues.push(DatasetIssue {
                file: label_file,
                line: None,
                kind: IssueKind::BadLabel,
                message: format!("cannot read: {e}; image skipped"),
            }),
            Ok(bytes) => match String::from_utf8(bytes) {
                Err(_) => issues.push(DatasetIssue {
                    file: label_file,
                    line: None,
                    kind: IssueKind::BadLabel,
                    message: "not UTF-8 text; image skipped".to_string(),
                }),
                Ok(text) => match parse_labels(&text, task, data.names.len(), data.kpt_shape) {
                    Ok(objects) => items.push(Item {
                        image,
                        labels: RawLabels::Objects(objects),
                    }),
                    Err(errors) => {
                        issues.extend(errors.into_iter().map(|(line, msg)| DatasetIssue {
                            file: label_file.clone(),
                            line: Some(line),
                            kind: IssueKind::BadLabel,
                            message: format!("{msg}; image skipped"),
                        }))
                    }
                },
            },
        }
    }

    Ok(Dataset {
        root,
        task,
        names: data.names,
        kpt_shape: data.kpt_shape,
        items,
        issues,
    })
}

// ---- cls ------------------------------------------------------------------------------------

fn open_cls(path: &Path, split: &str) -> Result<Dataset, DatasetError> {
    let root = normalize(path);
    if !root.is_dir() {
        return Err(DatasetError::NotADirectory { path: root });
    }
    let is_dir = |name: &str| root.join(name).is_dir();
    let candidates: &[&str] = match split {
        "val" => &["val", "validation", "test"],
        "test" => &["test", "val", "validation"],
        _ => &["train"],
    };
    let split_names = ["train", "val", "validation", "test"];
    let split_dir = match candidates.iter().find(|c| is_dir(c)) {
        Some(dir) => root.join(dir),
        None if split_names.iter().any(|s| is_dir(s)) => {
            return Err(DatasetError::ClsSplitMissing {
                root: root.clone(),
                split: split.to_string(),
                found: split_names
                    .iter()
                    .filter(|s| is_dir(s))
                    .map(|s| format!("{s}/"))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
        // No split folders: the directory itself holds the class folders.
        None => root.clone(),
    };

    let mut classes: Vec<(String, PathBuf)> = read_dir_sorted(&split_dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            (!name.starts_with('.')).then_some((name, p))
        })
        .collect();
    classes.sort_by(|a, b| a.0.cmp(&b.0));
    if classes.is_empty() {
        return Err(DatasetError::NoClassFolders { root: split_dir });
    }

    let mut items = Vec::new();
    let mut issues = Vec::new();
    let mut found_any = false;
    for (class, (_, dir)) in classes.iter().enumerate() {
        let mut images = Vec::new();
        walk_images(dir, &mut images, &mut HashSet::new())?;
        images.sort_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
        for image in images {
            found_any = true;
            match check_image(&root, &image) {
                Some(issue) => issues.push(issue),
                None => items.push(Item {
                    image,
                    labels: RawLabels::Class(class as u32),
                }),
            }
        }
    }
    if !found_any {
        return Err(DatasetError::NoImages {
            path: split_dir,
            split: split.to_string(),
        });
    }
    Ok(Dataset {
        root,
        task: Task::Cls,
        names: classes.into_iter().map(|(name, _)| name).collect(),
        kpt_shape: None,
        items,
        issues,
    })
}

// ---- files ----------------------------------------------------------------------------------

/// Ultralytics `img2label_paths`: the last `/images/` component becomes `/labels/` and the
/// extension becomes `.txt`.
pub fn img2label_path(image: &Path) -> PathBuf {
    let bytes = image.as_os_str().as_bytes();
    let (sa, sb) = (b"/images/", b"/labels/");
    let mut out = match bytes.windows(sa.len()).rposition(|w| w == sa) {
        Some(i) => [&bytes[..i], &sb[..], &bytes[i + sa.len()..]].concat(),
        None => bytes.to_vec(),
    };
    if let Some(dot) = out.iter().rposition(|&b| b == b'.') {
        out.truncate(dot);
    }
    out.extend_from_slice(b".txt");
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let read_err = |source| DatasetError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = fs::read_dir(dir)
        .map_err(read_err)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    out.sort_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
    Ok(out)
}

/// Every image under `dir`, recursively, following symlinks (each real directory once), skipping
/// hidden entries.
fn walk_images(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    visited: &mut HashSet<PathBuf>,
) -> Result<(), DatasetError> {
    if let Ok(real) = fs::canonicalize(dir) {
        if !visited.insert(real) {
            return Ok(());
        }
    }
    for path in read_dir_sorted(dir)? {
        if path
            .file_name()
            .is_some_and(|n| n.as_bytes().starts_with(b"."))
        {
            continue;
        }
        if path.is_dir() {
            walk_images(&path, out, visited)?;
        } else if has_image_extension(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Images that are missing or empty are reported here; undecodable ones by the worker.
fn check_image(root: &Path, image: &Path) -> Option<DatasetIssue> {
    let message = match fs::metadata(image) {
        Err(e) => format!("cannot read: {e}; image skipped"),
        Ok(m) if !m.is_file() => "not a regular file; image skipped".to_string(),
        Ok(m) if m.len() == 0 => "empty file (0 bytes); image skipped".to_string(),
        Ok(_) => return None,
    };
    Some(DatasetIssue {
        file: relative(root, image),
        line: None,
        kind: IssueKind::BadImage,
        message,
    })
}

/// `path` relative to the dataset root, as issues and reports name files.
pub(crate) fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Absolute, with `.` and `..` removed lexically (as Python's `resolve()` would for real paths).
fn normalize(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

// ---- label lines ----------------------------------------------------------------------------

/// Parses one YOLO label file's text (pure, no I/O) for the task; returns objects (normalised) or issues with line numbers.
///
/// Blank lines are skipped; exact duplicate objects are dropped. Line numbers are 1-based.
/// Every bad line is reported, and any bad line rejects the whole file (as Ultralytics does).
pub fn parse_labels(
    text: &str,
    task: Task,
    num_classes: usize,
    kpt_shape: Option<(usize, usize)>,
) -> Result<Vec<GtObject>, Vec<(usize, String)>> {
    let mut objects: Vec<GtObject> = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        if tokens.is_empty() {
            continue;
        }
        match parse_line(&tokens, task, num_classes, kpt_shape) {
            Ok(object) => {
                if !objects.contains(&object) {
                    objects.push(object);
                }
            }
            Err(msg) => errors.push((i + 1, msg)),
        }
    }
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors)
    }
}

fn parse_line(
    tokens: &[&str],
    task: Task,
    num_classes: usize,
    kpt_shape: Option<(usize, usize)>,
) -> Result<GtObject, String> {
    let n = tokens.len();
    let class = parse_class(tokens[0], num_classes)?;
    let values = tokens[1..]
        .iter()
        .map(|t| match t.parse::<f32>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(format!("`{t}` is not a number")),
        })
        .collect::<Result<Vec<f32>, String>>()?;
    let in_range = |v: f32| (-COORD_TOLERANCE..=1.0 + COORD_TOLERANCE).contains(&v);
    let check_range = |vals: &[f32]| match vals.iter().find(|v| !in_range(**v)) {
        Some(v) => Err(format!(
            "coordinate {v} is outside 0..1 (labels are normalised to the image size)"
        )),
        None => Ok(()),
    };
    let object = |bbox, rbox, keypoints, polygon| GtObject {
        class,
        bbox,
        rbox,
        keypoints,
        polygon,
    };
    let polygon_of =
        |vals: &[f32]| -> Vec<[f32; 2]> { vals.chunks_exact(2).map(|p| [p[0], p[1]]).collect() };
    match task {
        Task::Detect => {
            check_range(&values)?;
            if values.len() == 4 {
                Ok(object(xywh_to_bbox(&values), None, Vec::new(), Vec::new()))
            } else if values.len() >= 6 && values.len() % 2 == 0 {
                // A polygon in a detect file: Ultralytics `segments2boxes`.
                Ok(object(
                    extent(&polygon_of(&values)),
                    None,
                    Vec::new(),
                    Vec::new(),
                ))
            } else {
                Err(format!(
                    "expected 5 values (class cx cy w h) or a class and at least 3 x y points, got {n}"
                ))
            }
        }
        Task::Seg => {
            if values.len() < 6 || values.len() % 2 != 0 {
                return Err(format!(
                    "expected a class and at least 3 x y points (an odd count of 7 or more values), got {n}"
                ));
            }
            check_range(&values)?;
            let polygon = polygon_of(&values);
            Ok(object(extent(&polygon), None, Vec::new(), polygon))
        }
        Task::Obb => {
            if values.len() != 8 {
                return Err(format!(
                    "expected 9 values (class x1 y1 x2 y2 x3 y3 x4 y4), got {n}"
                ));
            }
            check_range(&values)?;
            let corners = polygon_of(&values);
            let rbox = min_area_rect(&corners);
            Ok(object(extent(&corners), Some(rbox), Vec::new(), corners))
        }
        Task::Pose => {
            let (k, d) =
                kpt_shape.ok_or_else(|| "pose labels need the dataset's kpt_shape".to_string())?;
            if values.len() != 4 + k * d {
                return Err(format!(
                    "expected {} values (class cx cy w h and {k} keypoints x {d}), got {n}",
                    5 + k * d
                ));
            }
            check_range(&values[..4])?;
            let mut keypoints = Vec::with_capacity(k);
            for kp in values[4..].chunks_exact(d) {
                check_range(&kp[..2])?;
                let v = if d == 3 { kp[2] } else { 2.0 };
                if v < -COORD_TOLERANCE {
                    return Err(format!("keypoint visibility {v} is negative"));
                }
                keypoints.push(Keypoint {
                    x: kp[0],
                    y: kp[1],
                    v,
                });
            }
            Ok(object(
                xywh_to_bbox(&values[..4]),
                None,
                keypoints,
                Vec::new(),
            ))
        }
        Task::Cls | Task::Generic => Err(format!(
            "task {} has no YOLO label lines",
            Task::as_str(task)
        )),
    }
}

fn parse_class(token: &str, num_classes: usize) -> Result<u32, String> {
    let v: f64 = token
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| format!("class `{token}` is not a number"))?;
    if v.fract() != 0.0 {
        return Err(format!("class `{token}` is not an integer"));
    }
    if v < 0.0 || v >= num_classes as f64 {
        return Err(format!(
            "class {v} is out of range: the dataset has nc={num_classes} classes (0..={})",
            num_classes.saturating_sub(1)
        ));
    }
    Ok(v as u32)
}

fn xywh_to_bbox(v: &[f32]) -> BBox {
    let (cx, cy, w, h) = (v[0], v[1], v[2], v[3]);
    BBox {
        x1: cx - w / 2.0,
        y1: cy - h / 2.0,
        x2: cx + w / 2.0,
        y2: cy + h / 2.0,
    }
}

fn extent(points: &[[f32; 2]]) -> BBox {
    let mut b = BBox {
        x1: f32::INFINITY,
        y1: f32::INFINITY,
        x2: f32::NEG_INFINITY,
        y2: f32::NEG_INFINITY,
    };
    for p in points {
        b.x1 = b.x1.min(p[0]);
        b.y1 = b.y1.min(p[1]);
        b.x2 = b.x2.max(p[0]);
        b.y2 = b.y2.max(p[1]);
    }
    b
}

/// The minimal-area rectangle around `points` (what Ultralytics' `xyxyxyxy2xywhr` gets from
/// `cv2.minAreaRect`): one of its sides lies on a hull edge, and every hull edge joins two of
/// the points, so trying each pair's direction finds it. Regularised as Ultralytics
/// `regularize_rboxes`: angle in [0, pi/2), `w` along the angle. cv2 reports (0, 90] degrees
/// without regularising ground truth; both describe the same rectangle (probiou is unchanged).
pub fn min_area_rect(points: &[[f32; 2]]) -> RBox {
    let pts: Vec<[f64; 2]> = points.iter().map(|p| [p[0] as f64, p[1] as f64]).collect();
    let mut best: Option<(f64, RBox64)> = None;
    for (i, a) in pts.iter().enumerate() {
        for b in &pts[i + 1..] {
            let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
            if dx == 0.0 && dy == 0.0 {
                continue;
            }
            let theta = dy.atan2(dx);
            let (s, c) = theta.sin_cos();
            let (mut umin, mut umax, mut vmin, mut vmax) = (
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::INFINITY,
                f64::NEG_INFINITY,
            );
            for p in &pts {
                let u = p[0] * c + p[1] * s;
                let v = -p[0] * s + p[1] * c;
                umin = umin.min(u);
                umax = umax.max(u);
                vmin = vmin.min(v);
                vmax = vmax.max(v);
            }
            let area = (umax - umin) * (vmax - vmin);
            if best.as_ref().is_none_or(|(a, _)| area < *a - 1e-12) {
                let (uc, vc) = ((umin + umax) / 2.0, (vmin + vmax) / 2.0);
                best = Some((
                    area,
                    RBox64 {
                        cx: uc * c - vc * s,
                        cy: uc * s + vc * c,
                        w: umax - umin,
                        h: vmax - vmin,
                        angle: theta,
                    },
                ));
            }
        }
    }
    let r = match best {
        Some((_, r)) => r,
        None => {
            let p = pts.first().copied().unwrap_or([0.0, 0.0]);
            RBox64 {
                cx: p[0],
                cy: p[1],
                w: 0.0,
                h: 0.0,
                angle: 0.0,
            }
        }
    };
    regularize(r)
}

struct RBox64 {
    cx: f64,
    cy: f64,
    w: f64,
    h: f64,
    angle: f64,
}

fn regularize(r: RBox64) -> RBox {
    use std::f64::consts::{FRAC_PI_2, PI};
    let t = r.angle.rem_euclid(PI);
    let (mut w, mut h, mut angle) = if t >= FRAC_PI_2 {
        (r.h, r.w, t - FRAC_PI_2)
    } else {
        (r.w, r.h, t)
    };
    // Rounding to f32 must not land on pi/2 itself.
    if angle as f32 >= std::f32::consts::FRAC_PI_2 {
        std::mem::swap(&mut w, &mut h);
        angle = 0.0;
    }
    RBox {
        cx: r.cx as f32,
        cy: r.cy as f32,
        w: w as f32,
        h: h as f32,
        angle: angle as f32,
    }
}
