//! The report page (`runner report --html`): every section present, every image it points at
//! a PNG that decodes, and the page rendered by headless Chromium where it is installed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Section headings every page over a trained, scored and evaluated run shows.
const SECTIONS: [&str; 6] = [
    "id=\"results\"",
    "Training curves",
    "Confusion matrix",
    "Per class",
    "id=\"scores-0\"",
    "Lowest-scored training images of each class",
];

/// The `src` attributes of the page's images.
fn image_sources(html: &str) -> Vec<String> {
    html.split("<img src=\"")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].to_string())
        .collect()
}

/// Writes the page of the runs under `runs` into `out` and checks it; `finished` is the name
/// of a run that trained, scored and evaluated.
pub fn check_report_page(runs: &Path, out: &Path, finished: &str) {
    let report = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["report", "--html"])
        .arg(out)
        .arg(runs)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&report.stdout);
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let page = out.join("index.html");
    assert!(
        stdout.contains(&format!("report page: {}", page.display())),
        "{stdout}"
    );
    let html = std::fs::read_to_string(&page).unwrap();
    for section in SECTIONS {
        assert!(html.contains(section), "no {section} in the page");
    }
    assert!(html.contains(&format!("Run {finished}")));
    // Curves, histogram, confusion matrix and thumbnails: all relative, all PNGs that decode.
    let sources = image_sources(&html);
    for name in ["loss.png", "lr.png", "confusion.png", "score_histogram.png"] {
        assert!(
            sources.iter().any(|s| s.ends_with(name)),
            "no {name}: {sources:?}"
        );
    }
    let thumbnails = sources
        .iter()
        .filter(|s| s.contains("scores-0/") && !s.ends_with("score_histogram.png"))
        .count();
    assert!(thumbnails >= 8, "{thumbnails} thumbnails");
    for src in &sources {
        assert!(Path::new(src).is_relative(), "{src}");
        let image = image::open(out.join(src)).unwrap_or_else(|e| panic!("{src}: {e}"));
        assert!(image.width() > 0);
    }
    // Each thumbnail is captioned with its file path and page text.
    let caption = html.split("<figcaption>").nth(1).unwrap();
    assert!(
        caption.contains("score ") && caption.contains(".jpg"),
        "{caption}"
    );
    if let Some(chromium) = chromium() {
        check_in_chromium(&chromium, &page);
    }
}

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Headless Chromium renders the page from disk: its DOM has every section, and the
/// screenshot is a picture, not a blank page.
fn check_in_chromium(chromium: &Path, page: &Path) {
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let headless = |extra: &[&str]| {
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap()
    };
    let dom = headless(&["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    for section in SECTIONS {
        assert!(dom.contains(section), "Chromium's DOM has no {section}");
    }
    let shot = page.with_file_name("screenshot.png");
    let arg = format!("--screenshot={}", shot.display());
    let out = headless(&[&arg, "--window-size=1280,2400"]);
    assert!(shot.exists(), "{}", String::from_utf8_lossy(&out.stderr));
    let image = image::open(&shot).unwrap().to_rgb8();
    assert_eq!(image.dimensions(), (1280, 2400));
    let colours: std::collections::HashSet<[u8; 3]> = image.pixels().map(|p| p.0).collect();
    assert!(
        colours.len() > 1000,
        "{} colours: a blank page?",
        colours.len()
    );
}
