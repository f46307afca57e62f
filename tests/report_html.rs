//! The HTML report renders in headless Chromium and carries its charts and tables.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mpslab::experiment::analysis::{analyze, RunData};
use mpslab::experiment::report::render_html;

fn synthetic_run() -> RunData {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/reports/synthetic_run.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn report_html() -> String {
    let run = synthetic_run();
    render_html(&analyze(&run), &run)
}

#[test]
fn html_has_the_charts_and_tables_and_no_external_resources() {
    let html = report_html();
    // 3 models -> 3 distribution charts, plus the mean bars and the timeline.
    assert_eq!(html.matches("<svg").count(), 5, "svg elements");
    for title in [
        "Mean latency per model and condition (95 % CI)",
        "GPU load (GR3D) and power over the run",
        "Latency distribution: cls",
        "Latency distribution: detect",
        "Latency distribution: seg",
    ] {
        assert!(html.contains(title), "chart title {title:?} missing");
    }
    for heading in [
        "1. Alone vs together",
        "2.1 Latency",
        "2.3 Mixed MPS assignment",
        "3. Output consistency",
        "4.3 Power and energy",
        "5. Sampling overhead",
        "7. Conclusions",
    ] {
        assert!(html.contains(heading), "section {heading:?} missing");
    }
    assert!(html.matches("<table>").count() >= 9, "tables");
    assert!(html.contains("<td>VDD_IN</td>"));
    assert!(
        html.contains("worker exited with signal 9"),
        "the failed worker is reported"
    );
    // Self-contained: nothing fetched from anywhere.
    for needle in ["<script", "<link", "src=", "href=", "@import", "url("] {
        assert!(
            !html.contains(needle),
            "external resource marker {needle:?}"
        );
    }
}

fn chromium() -> PathBuf {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("chromium not installed: run `make deps` (mk/analysis.mk installs the Debian package)");
}

#[test]
fn html_renders_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    let png = dir.path().join("shot.png");
    let profile = tempfile::tempdir().unwrap();
    std::fs::write(&page, report_html()).unwrap();
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1280,2000")
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run chromium");
    // Generous limit for a loaded 2-core machine; a hung browser must fail the test, not hang it.
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("chromium did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(png.exists(), "no screenshot; chromium exited with {status}");

    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1280, 2000));
    let channels = info.color_type.samples();
    assert!(channels >= 3);
    let pixels = buf[..info.buffer_size()].chunks(channels);
    let mut non_white = 0usize;
    let mut colours = std::collections::HashSet::new();
    for px in pixels {
        let rgb = (px[0] >> 3, px[1] >> 3, px[2] >> 3);
        colours.insert(rgb);
        if px[0] < 240 || px[1] < 240 || px[2] < 240 {
            non_white += 1;
        }
    }
    let total = (info.width * info.height) as usize;
    // Text, tables and charts: a blank or error page has almost no ink and few colours.
    assert!(
        non_white > total / 50,
        "only {non_white} of {total} pixels are not white"
    );
    assert!(
        colours.len() > 40,
        "only {} distinct colours: charts did not render",
        colours.len()
    );
}
