//! HTML layout of the report document: one file, inline CSS and inline SVG, no external resources.

use super::charts;
use super::{Block, ChartKind};
use crate::experiment::analysis::{Analysis, RunData};

pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1240px;\
color:#1b1f24;line-height:1.45;padding:0 12px}\
h1{font-size:1.6em;border-bottom:2px solid #2b6cb0;padding-bottom:4px}\
h2{font-size:1.3em;margin-top:1.8em;border-bottom:1px solid #d0d7de}\
h3{font-size:1.05em;margin-top:1.2em}\
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px;display:block;overflow-x:auto}\
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:right;white-space:nowrap}\
th{background:#eef2f7}td:first-child,th:first-child{text-align:left;font-weight:600}\
tr:nth-child(even) td{background:#f8fafc}\
figure{margin:12px 0}.charts{display:flex;flex-wrap:wrap;gap:12px}\
.chart-error{color:#b42318}";

fn chart_html(title: &str, result: Result<String, String>) -> String {
    match result {
        Ok(svg) => format!("<figure class=\"chart\">{svg}</figure>\n"),
        Err(e) => format!(
            "<p class=\"chart-error\">Chart '{}' could not be drawn: {}</p>\n",
            escape(title),
            escape(&e)
        ),
    }
}

pub(super) fn render(a: &Analysis, run: &RunData, doc: &[Block]) -> String {
    let mut body = String::new();
    for b in doc {
        match b {
            Block::Heading(level, text) => {
                body.push_str(&format!("<h{level}>{}</h{level}>\n", escape(text)));
            }
            Block::Paragraph(p) => body.push_str(&format!("<p>{}</p>\n", escape(p))),
            Block::Bullets(items) => {
                body.push_str("<ul>\n");
                for i in items {
                    body.push_str(&format!("<li>{}</li>\n", escape(i)));
                }
                body.push_str("</ul>\n");
            }
            Block::Table(t) => {
                body.push_str("<table>\n<thead><tr>");
                for h in &t.headers {
                    body.push_str(&format!("<th>{}</th>", escape(h)));
                }
                body.push_str("</tr></thead>\n<tbody>\n");
                for r in &t.rows {
                    body.push_str("<tr>");
                    for c in r {
                        body.push_str(&format!("<td>{}</td>", escape(c)));
                    }
                    body.push_str("</tr>\n");
                }
                body.push_str("</tbody>\n</table>\n");
            }
            Block::Chart(ChartKind::MeanBars) => {
                body.push_str(&chart_html(charts::MEAN_BARS_TITLE, charts::mean_bars(a)));
            }
            Block::Chart(ChartKind::Timeline) => {
                if run.phases.iter().any(|p| !p.timeline.is_empty()) {
                    body.push_str(&chart_html(
                        charts::TIMELINE_TITLE,
                        charts::timeline(a, run),
                    ));
                }
            }
            Block::Chart(ChartKind::Stages) => {
                body.push_str(&chart_html(charts::STAGES_TITLE, charts::stage_bars(a)));
            }
            Block::Chart(ChartKind::Distributions) => {
                body.push_str("<div class=\"charts\">\n");
                for model in &a.models {
                    let title = charts::distribution_title(model);
                    body.push_str(&chart_html(&title, charts::distribution(a, run, model)));
                }
                body.push_str("</div>\n");
            }
        }
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        escape(&format!(
            "mpslab report: run {} ({})",
            a.run_id, a.experiment
        ))
    )
}
