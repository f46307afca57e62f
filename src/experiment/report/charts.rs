//! SVG charts drawn with `plotters` (SVG backend only), returned as strings for inline HTML.

use plotters::prelude::*;

use crate::experiment::analysis::{phase_condition, stats, Analysis, ConditionInfo, RunData};

pub const MEAN_BARS_TITLE: &str = "Mean latency per model and condition (95 % CI)";
pub const TIMELINE_TITLE: &str = "GPU load (GR3D) and power over the run";
pub const STAGES_TITLE: &str = "Per-image time: preprocess, inference, postprocess (mean)";

pub fn distribution_title(model: &str) -> String {
    format!("Latency distribution: {model}")
}

/// Colour-blind friendly, distinct on white (Okabe–Ito plus two greys/blues).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(120, 94, 240),
    RGBColor(100, 100, 100),
];

fn color_of(a: &Analysis, condition_key: &str) -> RGBColor {
    let i = a
        .conditions
        .iter()
        .position(|c| c.key == condition_key)
        .unwrap_or(0);
    PALETTE[i % PALETTE.len()]
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Axis label for category axes drawn on an f64 coordinate: a name at each integer position.
fn name_at(names: &[String], x: f64) -> String {
    let i = x.round();
    if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
        names[i as usize].clone()
    } else {
        String::new()
    }
}

/// Grouped bars of each model's mean latency per condition, with the 95 % CI as error bars.
pub fn mean_bars(a: &Analysis) -> Result<String, String> {
    let conds: Vec<&ConditionInfo> = a
        .conditions
        .iter()
        .filter(|c| c.sampling == a.primary_sampling)
        .collect();
    let n = a.models.len().max(1);
    let k = conds.len().max(1);
    let ymax = a
        .cells
        .iter()
        .map(|c| c.stats.mean_ci_ms[1])
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.25;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1180, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(MEAN_BARS_TITLE, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..ymax)
            .map_err(err)?;
        let models = a.models.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| name_at(&models, *x))
            .y_desc("mean latency (ms)")
            .draw()
            .map_err(err)?;
        let group = 0.8;
        let w = group / k as f64;
        for (j, cond) in conds.iter().enumerate() {
            let color = color_of(a, &cond.key);
            let bars: Vec<(f64, f64, [f64; 2])> = a
                .models
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    a.cell(m, &cond.key).map(|c| {
                        (
                            i as f64 - group / 2.0 + w * j as f64,
                            c.stats.mean_ms,
                            c.stats.mean_ci_ms,
                        )
                    })
                })
                .collect();
            chart
                .draw_series(bars.iter().map(|&(x0, mean, _)| {
                    Rectangle::new(
                        [(x0 + w * 0.08, 0.0), (x0 + w * 0.92, mean)],
                        color.filled(),
                    )
                }))
                .map_err(err)?
                .label(cond.label.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled())
                });
            chart
                .draw_series(bars.iter().map(|&(x0, mean, ci)| {
                    ErrorBar::new_vertical(
                        x0 + w / 2.0,
                        ci[0],
                        mean,
                        ci[1],
                        BLACK.stroke_width(1),
                        8,
                    )
                }))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Validation runs: one stacked bar per model and condition, preprocess + inference +
/// postprocess means, so a slower inference under concurrency stands out from fixed CPU stages.
pub fn stage_bars(a: &Analysis) -> Result<String, String> {
    let Some(v) = &a.validation else {
        return Err("not a validation run".into());
    };
    let rows: Vec<(String, [f64; 3])> = v
        .stages
        .iter()
        .map(|c| {
            let label = a
                .condition(&c.condition)
                .map(|i| i.label.clone())
                .unwrap_or_else(|| c.condition.clone());
            (
                format!("{}: {label}", c.model),
                [
                    c.preprocess.mean_ms,
                    c.inference.mean_ms,
                    c.postprocess.mean_ms,
                ],
            )
        })
        .collect();
    let n = rows.len().max(1);
    let xmax = rows
        .iter()
        .map(|(_, s)| s.iter().sum::<f64>())
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.3;
    let names: Vec<String> = rows.iter().map(|(l, _)| l.clone()).collect();
    let mut svg = String::new();
    {
        let height = 90 + 30 * n as u32;
        let root = SVGBackend::with_string(&mut svg, (1180, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(STAGES_TITLE, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(320)
            .build_cartesian_2d(0f64..xmax, -0.5f64..(n as f64 - 0.5))
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|y| name_at(&names, *y))
            .x_desc("ms per image")
            .draw()
            .map_err(err)?;
        for (k, stage) in ["preprocess", "inference", "postprocess"]
            .iter()
            .enumerate()
        {
            let color = PALETTE[k];
            chart
                .draw_series(rows.iter().enumerate().map(|(i, (_, s))| {
                    let x0: f64 = s[..k].iter().sum();
                    let y = i as f64;
                    Rectangle::new([(x0, y - 0.35), (x0 + s[k], y + 0.35)], color.filled())
                }))
                .map_err(err)?
                .label(*stage)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

struct BoxStats {
    p1: f64,
    p25: f64,
    p50: f64,
    p75: f64,
    p99: f64,
    mean: f64,
}

/// Box plot of one model's latencies per condition: box p25–p75, line at the median,
/// whiskers p1–p99 (latency tails matter more than Tukey fences here), dot at the mean.
pub fn distribution(a: &Analysis, run: &RunData, model: &str) -> Result<String, String> {
    let mut boxes: Vec<(String, RGBColor, BoxStats)> = Vec::new();
    for cond in &a.conditions {
        let samples: Vec<f64> = run
            .phases
            .iter()
            .filter(|p| phase_condition(p).key() == cond.key)
            .flat_map(|p| p.models.iter().filter(|m| m.model == model))
            .flat_map(|m| m.latencies_ns.iter().map(|&ns| ns as f64 / 1e6))
            .collect();
        if samples.is_empty() {
            continue;
        }
        let s = stats::sorted(&samples);
        let p = |q| stats::percentile_sorted(&s, q);
        boxes.push((
            cond.label.clone(),
            color_of(a, &cond.key),
            BoxStats {
                p1: p(1.0),
                p25: p(25.0),
                p50: p(50.0),
                p75: p(75.0),
                p99: p(99.0),
                mean: stats::mean(&samples),
            },
        ));
    }
    if boxes.is_empty() {
        return Err(format!("no latency samples for model {model}"));
    }
    let lo = boxes.iter().map(|b| b.2.p1).fold(f64::INFINITY, f64::min);
    let hi = boxes
        .iter()
        .map(|b| b.2.p99)
        .fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.01).max(1e-3);
    // Conditions run down the y axis (first at the top) so their long labels stay readable.
    let k = boxes.len();
    let names: Vec<String> = boxes.iter().rev().map(|b| b.0.clone()).collect();
    let title = distribution_title(model);
    let mut svg = String::new();
    {
        let height = 120 + 46 * k as u32;
        let root = SVGBackend::with_string(&mut svg, (580, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(50)
            .y_label_area_size(190)
            .build_cartesian_2d((lo - pad)..(hi + pad), -0.5f64..(k as f64 - 0.5))
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(k)
            .y_label_formatter(&|y| name_at(&names, *y))
            .y_label_style(("sans-serif", 12))
            .x_desc("latency (ms); box p25-p75, line median, whiskers p1-p99, dot mean")
            .draw()
            .map_err(err)?;
        for (i, (_, color, b)) in boxes.iter().enumerate() {
            let y = (k - 1 - i) as f64;
            let half = 0.3;
            chart
                .draw_series([
                    Rectangle::new(
                        [(b.p25, y - half), (b.p75, y + half)],
                        color.mix(0.35).filled(),
                    ),
                    Rectangle::new(
                        [(b.p25, y - half), (b.p75, y + half)],
                        color.stroke_width(2),
                    ),
                ])
                .map_err(err)?;
            chart
                .draw_series([
                    PathElement::new(
                        vec![(b.p50, y - half), (b.p50, y + half)],
                        BLACK.stroke_width(2),
                    ),
                    PathElement::new(vec![(b.p75, y), (b.p99, y)], color.stroke_width(1)),
                    PathElement::new(vec![(b.p25, y), (b.p1, y)], color.stroke_width(1)),
                    PathElement::new(
                        vec![(b.p99, y - half / 2.0), (b.p99, y + half / 2.0)],
                        color.stroke_width(1),
                    ),
                    PathElement::new(
                        vec![(b.p1, y - half / 2.0), (b.p1, y + half / 2.0)],
                        color.stroke_width(1),
                    ),
                ])
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Circle::new((b.mean, y), 3, BLACK.filled())))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// GR3D load and total power over time, with each phase shaded in its condition's colour.
pub fn timeline(a: &Analysis, run: &RunData) -> Result<String, String> {
    let mut points: Vec<_> = run
        .phases
        .iter()
        .flat_map(|p| p.timeline.iter().copied())
        .collect();
    points.sort_by_key(|p| p.wall_ms);
    let t0 = run
        .phases
        .iter()
        .map(|p| p.start_unix_ms)
        .chain(points.first().map(|p| p.wall_ms))
        .min()
        .unwrap_or(run.started_unix_ms);
    let t_end = run
        .phases
        .iter()
        .map(|p| p.end_unix_ms)
        .chain(points.last().map(|p| p.wall_ms))
        .max()
        .unwrap_or(t0);
    let secs = |ms: i64| (ms - t0) as f64 / 1000.0;
    let tmax = secs(t_end).max(1.0);
    // One line per phase: a gap between phases (no sampling) must not be drawn as data.
    let per_phase = |f: &dyn Fn(&crate::experiment::analysis::TimelinePoint) -> Option<f64>| {
        run.phases
            .iter()
            .map(|p| {
                let mut pts: Vec<(f64, f64)> = p
                    .timeline
                    .iter()
                    .filter_map(|t| f(t).map(|v| (secs(t.wall_ms), v)))
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                pts
            })
            .filter(|pts| !pts.is_empty())
            .collect::<Vec<_>>()
    };
    let gr3d = per_phase(&|t| t.gr3d_pct);
    let power = per_phase(&|t| t.power_mw.map(|w| w / 1000.0));
    // Headroom above the data for the legend.
    let pmax = power
        .iter()
        .flatten()
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(0.1)
        * 1.6;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1180, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(TIMELINE_TITLE, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .right_y_label_area_size(60)
            .build_cartesian_2d(0f64..tmax, 0f64..160f64)
            .map_err(err)?
            .set_secondary_coord(0f64..tmax, 0f64..pmax);
        chart
            .configure_mesh()
            .x_desc("time since the first phase started (s)")
            .y_desc("GR3D load (%)")
            .y_label_formatter(&|v| {
                if *v <= 100.0 {
                    format!("{v:.0}")
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(err)?;
        chart
            .configure_secondary_axes()
            .y_desc("power (W)")
            .draw()
            .map_err(err)?;
        for p in &run.phases {
            let color = color_of(a, &phase_condition(p).key());
            let (s, e) = (secs(p.start_unix_ms), secs(p.end_unix_ms));
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(s, 0.0), (e, 160.0)],
                    color.mix(0.16).filled(),
                )))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("#{}", p.index),
                    (s + tmax * 0.003, 158.0),
                    ("sans-serif", 11),
                )))
                .map_err(err)?;
        }
        for cond in &a.conditions {
            let color = color_of(a, &cond.key);
            chart
                .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
                .map_err(err)?
                .label(format!("phase: {}", cond.label))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.mix(0.3).filled())
                });
        }
        for (i, line) in gr3d.into_iter().enumerate() {
            let anno = chart
                .draw_series(LineSeries::new(line, RED.stroke_width(2)))
                .map_err(err)?;
            if i == 0 {
                anno.label("GR3D load (%)").legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 14, y)], RED.stroke_width(2))
                });
            }
        }
        for (i, line) in power.into_iter().enumerate() {
            let anno = chart
                .draw_secondary_series(LineSeries::new(line, BLUE.stroke_width(2)))
                .map_err(err)?;
            if i == 0 {
                anno.label("power (W)").legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 14, y)], BLUE.stroke_width(2))
                });
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}
