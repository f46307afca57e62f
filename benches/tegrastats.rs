//! Parser throughput over the whole tegrastats corpus (every line of every file, fragments
//! included), reported by criterion as lines/s. `cargo bench --bench tegrastats`.

use criterion::{black_box, Criterion, Throughput};
use mpslab::telemetry::tegrastats::parse_line;
use std::path::Path;

fn corpus_lines() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tegrastats");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read(f)
                .expect("corpus file")
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let lines = corpus_lines();
    let mut group = c.benchmark_group("tegrastats");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("parse_line", |b| {
        b.iter(|| {
            for l in &lines {
                let _ = black_box(parse_line(black_box(l)));
            }
        })
    });
    group.bench_function("parse_line+json", |b| {
        b.iter(|| {
            for l in &lines {
                if let Ok(s) = parse_line(black_box(l)) {
                    black_box(serde_json::to_vec(&s).ok());
                }
            }
        })
    });
    group.finish();
}

fn main() {
    // `make test` runs every target with libtest flags (`--test-threads=2`) that criterion's
    // argument parser rejects. `cargo bench` passes `--bench`; anything else is a test run, where
    // one pass over the corpus checks the bench still measures successful parses.
    if !std::env::args().any(|a| a == "--bench") {
        let lines = corpus_lines();
        let parsed = lines.iter().filter(|l| parse_line(l).is_ok()).count();
        assert!(
            parsed >= 80,
            "only {parsed} of {} corpus lines parse",
            lines.len()
        );
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
