//! Every malformed configuration in tests/fixtures/config/bad gives exactly one message naming
//! file, line, column and key, and `mpslabd --check-config` exits 78 without panicking.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config/bad");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

/// The first line of each fixture: `# expect: LINE:COL KEY`.
fn expectation(path: &Path) -> (usize, usize, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let first = text.lines().next().unwrap();
    let spec = first
        .strip_prefix("# expect: ")
        .expect("fixture starts with # expect:");
    let (pos, key) = spec.split_once(' ').unwrap_or((spec, ""));
    let (l, c) = pos.split_once(':').unwrap();
    (
        l.parse().unwrap(),
        c.parse().unwrap(),
        key.trim().to_string(),
    )
}

#[test]
fn at_least_twelve_fixtures() {
    assert!(fixtures().len() >= 12, "{} fixtures", fixtures().len());
}

#[test]
fn each_bad_config_is_located_precisely() {
    for f in fixtures() {
        let (line, col, key) = expectation(&f);
        let err =
            mpslab::config::load(Some(&f)).expect_err(&format!("{} should fail", f.display()));
        assert_eq!(err.file, f, "{err}");
        assert_eq!(
            (err.line, err.column),
            (line, col),
            "{}: {err}",
            f.display()
        );
        assert_eq!(err.key, key, "{}: {err}", f.display());
        assert!(!err.message.is_empty());
    }
}

#[test]
fn check_config_exits_78_with_one_line() {
    for f in fixtures() {
        let (line, col, key) = expectation(&f);
        let out = Command::new(env!("CARGO_BIN_EXE_mpslabd"))
            .arg("--check-config")
            .arg("--config")
            .arg(&f)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{}", f.display());
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(
            stderr.lines().count(),
            1,
            "one line for {}: {stderr}",
            f.display()
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        let located = format!("{}:{line}:{col}: key `{key}`", f.display());
        assert!(stderr.contains(&located), "{stderr} lacks {located}");
    }
}

#[test]
fn reference_config_loads_cleanly() {
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/mpslab/mpslab.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_mpslabd"))
        .arg("--check-config")
        .arg("--config")
        .arg(&reference)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With every key commented out it must equal the compiled-in defaults.
    let mut cfg = mpslab::config::load(Some(&reference)).unwrap();
    cfg.sources.clear();
    assert_eq!(cfg, mpslab::config::Config::default());
}

#[test]
fn reference_config_documents_every_key() {
    // Uncommenting the reference file's key lines must give a valid config: the file teaches
    // every key with a value that is accepted.
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/mpslab/mpslab.toml");
    let text = std::fs::read_to_string(reference).unwrap();
    let uncommented: String = text
        .lines()
        .map(|l| {
            let l = l.strip_prefix("##").map(|_| "").unwrap_or(l);
            match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '[') => {
                    rest
                }
                _ => l,
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    // Paths that must exist or be creatable are redirected into the temp dir.
    let fixed = uncommented
        .replace(
            "/var/lib/mpslab",
            &dir.path().join("state").display().to_string(),
        )
        .replace(
            "/var/lib/prometheus/node-exporter",
            &dir.path().join("prom").display().to_string(),
        )
        .replace(
            "/var/log/mpslab/mps",
            &dir.path().join("log").display().to_string(),
        )
        .replace(
            "/run/mpslab/mps",
            &dir.path().join("pipe").display().to_string(),
        );
    // The example experiment names five models; the example file defines one of them.
    let others: String = ["cls", "pose", "seg", "obb"]
        .iter()
        .map(|m| format!("\n[[model]]\nname = \"{m}\"\npath = \"/m/{m}.onnx\"\n"))
        .collect();
    let fixed = fixed + &others;
    let path = dir.path().join("mpslab.toml");
    std::fs::write(&path, &fixed).unwrap();
    let cfg = mpslab::config::load(Some(&path)).unwrap_or_else(|e| panic!("{e}\n{fixed}"));
    assert_eq!(cfg.models.len(), 5);
    let e = &cfg.experiments[0];
    assert_eq!(
        (e.name.as_str(), e.repeats, e.iterations),
        ("five-models", 2, Some(500))
    );
    assert_eq!(cfg.model("detect").unwrap().dims.get("height"), Some(&640));
    assert!(cfg.export.textfile.is_some());
}
