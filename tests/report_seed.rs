//! The seed study's numbers in, the seed study's conclusions out (tests/fixtures/seed/).

use mpslab::experiment::analysis::{analyze, MixStrategy, MpsAdvice, RunData};
use mpslab::experiment::report::render_markdown;

fn seed_run() -> RunData {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/seed/seed_run.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Cells of the Markdown table whose header row contains `header`, keyed by first column.
fn table_rows(md: &str, header: &str) -> Vec<Vec<String>> {
    let mut lines = md
        .lines()
        .skip_while(|l| !(l.starts_with('|') && l.contains(header)));
    lines.next().expect("table header present");
    lines
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

fn leading_number(cell: &str) -> f64 {
    let end = cell
        .char_indices()
        .skip(1)
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map_or(cell.len(), |(i, _)| i);
    cell[..end]
        .parse()
        .unwrap_or_else(|_| panic!("no number in {cell:?}"))
}

#[test]
fn markdown_reproduces_the_seed_mps_effect_column() {
    let md = render_markdown(&analyze(&seed_run()));
    let rows = table_rows(&md, "MPS effect");
    // Seed section 2.1, "MPS effect" = off / on - 1.
    let expected = [
        ("cls", -19.0, "slower"),
        ("detect", 96.0, "faster"),
        ("pose", 63.0, "faster"),
        ("seg", 92.0, "faster"),
        ("obb", 25.0, "faster"),
    ];
    assert_eq!(rows.len(), expected.len(), "{md}");
    for (model, effect, word) in expected {
        let row = rows
            .iter()
            .find(|r| r[0] == model)
            .unwrap_or_else(|| panic!("{model} row in\n{md}"));
        let got = leading_number(&row[4]);
        assert!(
            (got - effect).abs() <= 1.0,
            "{model}: MPS effect {got} vs seed {effect} ({})",
            row[4]
        );
        assert!(row[4].contains(word), "{model}: {}", row[4]);
    }
}

#[test]
fn markdown_reproduces_the_seed_alone_relative_columns() {
    let md = render_markdown(&analyze(&seed_run()));
    let rows = table_rows(&md, "MPS effect");
    // Seed section 2.1 "vs alone" columns. The seed prints +10 % for cls with MPS on, but its own
    // means give 8.285 / 8.386 - 1 = -1.2 %; we check the value its means imply.
    let expected = [
        ("cls", -1.2, -20.0),
        ("detect", 12.0, 120.0),
        ("pose", -14.0, 41.0),
        ("seg", -6.0, 82.0),
        ("obb", -14.0, 8.0),
    ];
    for (model, on, off) in expected {
        let row = rows.iter().find(|r| r[0] == model).unwrap();
        assert!(
            (leading_number(&row[5]) - on).abs() <= 1.0,
            "{model} vs alone (on): {}",
            row[5]
        );
        assert!(
            (leading_number(&row[6]) - off).abs() <= 1.0,
            "{model} vs alone (off): {}",
            row[6]
        );
    }
}

#[test]
fn recommendations_match_the_seed() {
    let a = analyze(&seed_run());
    let advice = |m: &str| {
        a.recommendations
            .per_model
            .iter()
            .find(|r| r.model == m)
            .unwrap()
            .mps
    };
    for m in ["detect", "seg", "pose", "obb"] {
        assert_eq!(advice(m), MpsAdvice::On, "{m}");
    }
    assert_eq!(advice("cls"), MpsAdvice::Off);
    let mix = a.recommendations.mix.as_ref().expect("mix advice");
    let MixStrategy::Mixed { on_models } = &mix.strategy else {
        panic!("expected a mixed strategy, got {mix:?}")
    };
    let mut on = on_models.clone();
    on.sort();
    assert_eq!(on, ["detect", "obb", "pose", "seg"]);
    assert!(!mix.measured, "the seed never ran a mixed phase");

    let md = render_markdown(&a);
    let conclusions = md
        .split("## 7. Conclusions")
        .nth(1)
        .expect("conclusions section");
    assert!(conclusions.contains("- detect: use MPS."), "{conclusions}");
    assert!(
        conclusions.contains("- cls: run without MPS."),
        "{conclusions}"
    );
    assert!(
        conclusions.contains("mixed strategy: MPS for detect, pose, seg, obb; without MPS: cls"),
        "{conclusions}"
    );
    assert!(
        conclusions
            .contains("outputs were identical in every phase for cls, detect, pose, seg, obb"),
        "{conclusions}"
    );
}

#[test]
fn gpu_and_cpu_tables_carry_the_seed_telemetry() {
    let md = render_markdown(&analyze(&seed_run()));
    let gpu = table_rows(&md, "Metric");
    let row = |name: &str| {
        gpu.iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("{name}"))
            .clone()
    };
    // Columns follow the conditions: alone (no telemetry), together MPS off, together MPS on.
    assert_eq!(row("GR3D average (all samples)")[1..], ["29.69%", "14.39%"]);
    assert_eq!(
        row("GR3D average (non-zero samples)")[1..],
        ["84.49%", "61.15%"]
    );
    assert_eq!(row("GR3D maximum")[1..], ["98%", "99%"]);
    assert_eq!(row("Non-zero samples")[1..], ["65 of 185", "48 of 204"]);
    assert!(
        md.contains("| CPU system (sy) | 1-16% (mean 8.5%) | 1-12% (mean 6.5%) |"),
        "{md}"
    );
    assert!(
        md.contains("| Free memory | 49.0-53.0 GB | 49.0-52.0 GB |"),
        "{md}"
    );
}

#[test]
fn together_slows_every_model_without_mps_like_the_seed() {
    let a = analyze(&seed_run());
    let off = a.comparisons.iter().filter(|c| {
        c.candidate == "together/mps-off/sampling-on" && c.baseline == "alone/mps-off/sampling-on"
    });
    let worst = off
        .max_by(|x, y| x.change_pct.value.total_cmp(&y.change_pct.value))
        .unwrap();
    assert_eq!(worst.model, "detect");
    assert!((worst.change_pct.value - 119.6).abs() < 1.0, "{worst:?}");
}
