//! Parser throughput over the whole tegrastats corpus (every line of every file, fragments
//! included), reported by criterion as lines/s. `cargo bench --bench tegrastats`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
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

criterion_group!(benches, bench);
criterion_main!(benches);
