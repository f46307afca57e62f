//! How long a report takes for a large run: 5 models, 100 000 iterations per model per phase,
//! alone + together with MPS on + together with MPS off (1.5 million latencies).
//! `cargo bench --bench report`; the acceptance target is under 1 s for analyze + Markdown + JSON.

use criterion::{criterion_group, criterion_main, Criterion};
use mpslab::experiment::analysis::stats::Xoshiro256;
use mpslab::experiment::analysis::{analyze, Mode, ModelPhaseData, MpsSetting, PhaseData, RunData};
use mpslab::experiment::report::{render_html, render_json, render_markdown};
use std::hint::black_box;
use std::time::Duration;

const ITERATIONS: usize = 100_000;
const MODELS: [(&str, f64); 5] = [
    ("cls", 8.4),
    ("detect", 27.0),
    ("pose", 27.2),
    ("seg", 33.1),
    ("obb", 26.1),
];

fn big_run() -> RunData {
    let mut rng = Xoshiro256::seed_from_u64(1);
    let mut lat = |mean_ms: f64| -> Vec<u64> {
        (0..ITERATIONS)
            .map(|_| (mean_ms * (1.0 + 0.1 * rng.standard_normal().abs()) * 1e6) as u64)
            .collect()
    };
    let entry = |model: &str, latencies_ns| ModelPhaseData {
        model: model.into(),
        latencies_ns,
        output_digest: Some(format!("d-{model}")),
        max_abs_diff: None,
        status: "ok".into(),
        error: None,
        stages_ns: Vec::new(),
        validation: None,
    };
    let mut phases = Vec::new();
    let mut push = |mode, mps, models: Vec<ModelPhaseData>| {
        let index = phases.len() as u32;
        phases.push(PhaseData {
            index,
            mode,
            mps,
            sampling: true,
            repeat: 0,
            start_unix_ms: i64::from(index) * 4_000_000,
            end_unix_ms: i64::from(index) * 4_000_000 + 3_500_000,
            models,
            telemetry: None,
            timeline: vec![],
        });
    };
    for (m, mean) in MODELS {
        push(Mode::Alone, MpsSetting::Off, vec![entry(m, lat(mean))]);
    }
    for (mps, f) in [(MpsSetting::On, 1.1), (MpsSetting::Off, 1.8)] {
        let models = MODELS
            .iter()
            .map(|(m, mean)| entry(m, lat(mean * f)))
            .collect();
        push(Mode::Together, mps, models);
    }
    RunData {
        run_id: 1,
        experiment: "big".into(),
        started_unix_ms: 0,
        finished_unix_ms: None,
        status: "succeeded".into(),
        phases,
    }
}

fn bench(c: &mut Criterion) {
    let run = big_run();
    let mut g = c.benchmark_group("report_100k_iterations");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("analyze+markdown+json", |b| {
        b.iter(|| {
            let a = analyze(black_box(&run));
            black_box((render_markdown(&a), render_json(&a)))
        })
    });
    let a = analyze(&run);
    g.bench_function("html", |b| {
        b.iter(|| black_box(render_html(black_box(&a), black_box(&run))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
