//! Cost of one vmstat sample: parse + derive on a fixture snapshot, a live /proc read, and for
//! scale one run of the `vmstat` binary (what the daemon avoids by reading /proc itself).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use mpslab::telemetry::vmstat::{derive_row, parse_counters, read_counters};

fn fixture(state: &str, file: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/proc/research_example");
    std::fs::read_to_string(dir.join(state).join(file)).expect("fixture present")
}

fn bench(c: &mut Criterion) {
    let root = Path::new("/proc");
    let (stat, meminfo, vmstat) = (
        fixture("a", "stat"),
        fixture("a", "meminfo"),
        fixture("a", "vmstat"),
    );
    let prev = parse_counters(root, &stat, &meminfo, &vmstat).expect("fixture parses");
    let live_texts = (
        std::fs::read_to_string("/proc/stat").expect("/proc/stat"),
        std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo"),
        std::fs::read_to_string("/proc/vmstat").expect("/proc/vmstat"),
    );

    let mut g = c.benchmark_group("vmstat_sample");
    g.bench_function("parse_derive_fixture", |b| {
        b.iter(|| {
            let cur = parse_counters(
                root,
                black_box(&stat),
                black_box(&meminfo),
                black_box(&vmstat),
            )
            .expect("parses");
            derive_row(Some(&prev), &cur, Duration::from_secs(1), 100, 4)
        })
    });
    // Real files are longer (/proc/vmstat has ~180 lines, /proc/stat one line per CPU).
    g.bench_function("parse_derive_live_texts", |b| {
        b.iter(|| {
            let cur =
                parse_counters(root, &live_texts.0, &live_texts.1, &live_texts.2).expect("parses");
            derive_row(Some(&prev), &cur, Duration::from_secs(1), 100, 4)
        })
    });
    g.bench_function("read_counters_live_proc", |b| {
        b.iter(|| read_counters(root).expect("reads"))
    });
    g.sample_size(10);
    g.bench_function("spawn_vmstat_binary", |b| {
        b.iter(|| Command::new("vmstat").output().expect("vmstat runs"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
