//! `runner report RUNS --html DIR`: one static page over runs, to look at rather than read.
//! In: run folders (through [`RunFolder`]: the resolved recipe, `metrics.jsonl`, the stage
//! folders of the last finished run: the store, the score stage's `scores.tsv`,
//! `summary.json` and histogram, the eval stage's metrics and confusion matrix). Out:
//! `DIR/index.html` (no server, no script: it opens from disk) and its PNGs under `DIR/img/`:
//! the results table (as `runner report` prints it: the last and the best epoch, each
//! validation set); per run its training curves (loss per head and task, lr, accuracy when
//! evaluated during training), the confusion matrix and a per-class table; per score stage
//! (runs of a sweep share one) the score histogram with the discard cut and the noise AUC, and
//! each class's lowest-scored images with their score, rank, truth (when known), file path
//! and page text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use super::{display_cells, group_rows, Grouped, ReportError, ReportOptions, RunSummary};
use crate::plot::{self, Series};
use crate::sample::Split;
use crate::score::{self, ScoreSummary, ScoreTable};
use crate::stage::{RunFolder, StageKind};
use crate::store::{SampleMeta, Store};
use crate::table::{percent, Align};

/// The page's file name in `DIR`.
pub const INDEX_FILE: &str = "index.html";
/// Lowest-scored images shown per class, and classes shown per score stage.
const LOWEST_SHOWN: usize = 8;
const CLASSES_SHOWN: usize = 50;
/// Side of an image's thumbnail, in pixels (about 20 kB a PNG).
const THUMBNAIL: u32 = 112;
/// Page text shown under a thumbnail, in characters (the whole text is its tooltip).
const TEXT_SHOWN: usize = 240;

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;\
padding:0 1em;color:#222}h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;\
margin-top:2em}nav a{margin-right:1em}table{border-collapse:collapse;margin:.5em 0}\
td,th{border:1px solid #ddd;padding:2px 8px}th{background:#f3f3f3}td.r{text-align:right;\
font-variant-numeric:tabular-nums}img{max-width:100%}.sheet{display:flex;flex-wrap:wrap;\
gap:8px}figure{margin:0;width:180px;font-size:12px}figure img{display:block;margin:auto}\
figcaption code{word-break:break-all;color:#555}.noisy{color:#b00}.clean{color:#070}\
.note{color:#666}";

/// Writes the page for `runs` (as [`super::find_runs`] found them) into `dir`; returns the
/// page's path. Sections a run cannot fill (not trained, not scored) say so.
pub fn write_html(
    runs: &[RunSummary],
    options: &ReportOptions,
    dir: &Path,
) -> Result<PathBuf, ReportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| ReportError::Io { path, cause }
    };
    let images = dir.join("img");
    fs::create_dir_all(&images).map_err(io(&images))?;
    let mut page = Page::default();
    page.results(runs, options);

    // Runs of a sweep share their score stage: its section is written once.
    let mut score_sections: BTreeMap<PathBuf, (String, Vec<String>)> = BTreeMap::new();
    for (i, run) in runs.iter().enumerate() {
        let anchor = format!("run-{i}");
        let stage_dirs = stage_dirs(&run.dir)?;
        let score_dir = stage_dirs.get(&StageKind::Score).cloned();
        let score_anchor = score_dir.as_ref().map(|d| {
            let next = format!("scores-{}", score_sections.len());
            let entry = score_sections
                .entry(d.clone())
                .or_insert_with(|| (next, Vec::new()));
            entry.1.push(run.recipe.name.clone());
            entry.0.clone()
        });
        let run_images = images.join(&anchor);
        fs::create_dir_all(&run_images).map_err(io(&run_images))?;
        page.run(
            run,
            &anchor,
            &run_images,
            &stage_dirs,
            score_anchor.as_deref(),
        )?;
    }
    for (score_dir, (anchor, names)) in &score_sections {
        let stage_images = images.join(anchor);
        fs::create_dir_all(&stage_images).map_err(io(&stage_images))?;
        let ingest = runs
            .iter()
            .find(|r| names.contains(&r.recipe.name))
            .and_then(|r| stage_dirs(&r.dir).ok()?.remove(&StageKind::Ingest));
        let truth = runs
            .iter()
            .find(|r| names.contains(&r.recipe.name))
            .and_then(|r| r.recipe.clean.truth.clone());
        page.scores(
            score_dir,
            ingest.as_deref(),
            truth,
            anchor,
            names,
            &stage_images,
        )?;
    }
    let path = dir.join(INDEX_FILE);
    fs::write(&path, page.finish(dir)).map_err(io(&path))?;
    Ok(path)
}

/// The stage folders of a run's last finished pass; none when it never finished one.
fn stage_dirs(run: &Path) -> Result<BTreeMap<StageKind, PathBuf>, ReportError> {
    let folder = RunFolder::new(run);
    if !folder.file(RunFolder::STAGES).exists() {
        return Ok(BTreeMap::new());
    }
    Ok(folder.stage_dirs()?)
}

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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

/// An HTML table: a header row and rows of cells (escaped here).
fn table(columns: &[(String, Align)], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table><tr>");
    for (name, _) in columns {
        let _ = write!(out, "<th>{}</th>", escape(name));
    }
    out.push_str("</tr>\n");
    for row in rows {
        out.push_str("<tr>");
        for ((_, align), cell) in columns.iter().zip(row) {
            let class = if *align == Align::Right {
                " class=\"r\""
            } else {
                ""
            };
            let _ = write!(out, "<td{class}>{}</td>", escape(cell));
        }
        out.push_str("</tr>\n");
    }
    out + "</table>\n"
}

/// The page as it is built: the navigation links and the sections' HTML.
#[derive(Default)]
struct Page {
    nav: Vec<(String, String)>,
    body: String,
}

impl Page {
    fn section(&mut self, anchor: &str, title: &str) {
        self.nav.push((anchor.to_string(), title.to_string()));
        let _ = writeln!(
            self.body,
            "<section id=\"{anchor}\"><h2>{}</h2>",
            escape(title)
        );
    }

    /// An image of the page, by its path; `src` is made relative to the page when written.
    fn image(&mut self, path: &Path, alt: &str) {
        let _ = writeln!(
            self.body,
            "<img src=\"{}\" alt=\"{}\">",
            escape(&path.to_string_lossy()),
            escape(alt)
        );
    }

    fn note(&mut self, text: &str) {
        let _ = writeln!(self.body, "<p class=\"note\">{}</p>", escape(text));
    }

    fn results(&mut self, runs: &[RunSummary], options: &ReportOptions) {
        let Grouped {
            rows,
            keys,
            columns,
            grouped,
            footer,
        } = group_rows(runs, options);
        let (columns, cells) = display_cells(&rows, &keys, &columns, grouped);
        self.section("results", "Results");
        self.body.push_str(&table(&columns, &cells));
        self.note(footer.trim());
        self.body.push_str("</section>\n");
    }

    fn run(
        &mut self,
        run: &RunSummary,
        anchor: &str,
        images: &Path,
        stage_dirs: &BTreeMap<StageKind, PathBuf>,
        score_anchor: Option<&str>,
    ) -> Result<(), ReportError> {
        self.section(anchor, &format!("Run {}", run.recipe.name));
        self.note(&format!("{} · {}", run.dir.display(), run.state));
        self.body.push_str("<h3>Training curves</h3>\n");
        let metrics = RunFolder::new(&run.dir).file(RunFolder::TRAIN_METRICS);
        match fs::read_to_string(&metrics) {
            Ok(text) => {
                for (name, chart) in curves(&text) {
                    let path = images.join(format!("{name}.png"));
                    plot::lines(
                        &path,
                        &chart.title,
                        ("step", chart.y),
                        &chart.series,
                        chart.log_y,
                    )?;
                    self.image(&path, &chart.title);
                }
            }
            Err(_) => self.note("not trained"),
        }
        if let Some(score_anchor) = score_anchor {
            let _ = writeln!(
                self.body,
                "<p>Scores, cleaning and the lowest-scored images: <a href=\"#{score_anchor}\">below</a>.</p>"
            );
        }
        self.body.push_str("<h3>Confusion matrix</h3>\n");
        let confusion = stage_dirs
            .get(&StageKind::Eval)
            .map(|d| d.join("confusion.png"))
            .filter(|p| p.exists());
        match confusion {
            Some(source) => {
                let path = images.join("confusion.png");
                fs::copy(&source, &path).map_err(|cause| ReportError::Io {
                    path: source.clone(),
                    cause,
                })?;
                self.image(&path, "confusion matrix");
            }
            None => self.note("not evaluated"),
        }
        self.body.push_str("<h3>Per class</h3>\n");
        let summary = RunFolder::new(&run.dir).score_summary()?;
        self.per_class(run, summary.as_ref());
        self.body.push_str("</section>\n");
        Ok(())
    }

    /// Validation accuracy next to the training samples' cleaning, class by class.
    fn per_class(&mut self, run: &RunSummary, summary: Option<&ScoreSummary>) {
        let scored: BTreeMap<usize, &score::ClassSummary> = summary
            .map(|s| s.classes.iter().map(|c| (c.label as usize, c)).collect())
            .unwrap_or_default();
        let evaluated = run.results.as_ref().map(|m| m.per_class.as_slice());
        if evaluated.is_none() && scored.is_empty() {
            self.note("no per-class results");
            return;
        }
        let mut columns: Vec<(String, Align)> = [
            ("class", Align::Right),
            ("name", Align::Left),
            ("val images", Align::Right),
            ("top-1", Align::Right),
            ("top-5", Align::Right),
            ("train samples", Align::Right),
            ("kept", Align::Right),
            ("mean score", Align::Right),
            ("noise AUC", Align::Right),
        ]
        .into_iter()
        .map(|(n, a)| (n.to_string(), a))
        .collect();
        // With several signals, each signal's noise AUC in the class beside the score's.
        let names = score::measured_names(scored.values().map(|c| c.signals.as_slice()));
        columns.extend(
            names
                .iter()
                .map(|name| (format!("AUC {name}"), Align::Right)),
        );
        let labels: Vec<usize> = match evaluated {
            Some(classes) => classes.iter().map(|c| c.class).collect(),
            None => scored.keys().copied().collect(),
        };
        let rows: Vec<Vec<String>> = labels
            .iter()
            .map(|&label| {
                let eval = evaluated.and_then(|c| c.iter().find(|c| c.class == label));
                let score = scored.get(&label);
                let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                let mut row = vec![
                    label.to_string(),
                    or_dash(
                        eval.map(|e| e.name.clone())
                            .or(score.map(|s| s.name.clone())),
                    ),
                    or_dash(eval.map(|e| e.samples.to_string())),
                    percent(eval.and_then(|e| e.top1)),
                    percent(eval.and_then(|e| e.top5)),
                    or_dash(score.map(|s| s.samples.to_string())),
                    or_dash(score.map(|s| s.kept.to_string())),
                    or_dash(score.map(|s| format!("{:.3}", s.mean_score))),
                    or_dash(score.and_then(|s| s.auc).map(|a| format!("{a:.3}"))),
                ];
                row.extend(names.iter().map(|name| {
                    or_dash(
                        score
                            .and_then(|s| s.signal_auc(name))
                            .map(|a| format!("{a:.3}")),
                    )
                }));
                row
            })
            .collect();
        self.body.push_str(&table(&columns, &rows));
    }

    fn scores(
        &mut self,
        score_dir: &Path,
        ingest: Option<&Path>,
        truth: Option<PathBuf>,
        anchor: &str,
        runs: &[String],
        images: &Path,
    ) -> Result<(), ReportError> {
        self.section(anchor, &format!("Scores of {}", runs.join(", ")));
        self.note(&score_dir.display().to_string());
        let histogram = score_dir.join(score::HISTOGRAM_FILE);
        if histogram.exists() {
            let path = images.join(score::HISTOGRAM_FILE);
            fs::copy(&histogram, &path).map_err(|cause| ReportError::Io {
                path: histogram.clone(),
                cause,
            })?;
            self.image(&path, "score histogram");
        }
        let agreement = ScoreSummary::load(score_dir)?.agreement;
        if !agreement.is_empty() {
            let parts: Vec<String> = agreement
                .iter()
                .map(|a| format!("{} {:.2}", a.signal, a.agreement))
                .collect();
            self.note(&format!(
                "Agreement of each weighed signal with the others (correlation of their ranks in \
                 the class; no truth file): {}. Below {} a signal may carry no evidence on this \
                 dataset.",
                parts.join(" · "),
                score::LOW_AGREEMENT
            ));
        }
        let table = ScoreTable::load(score_dir)?;
        let store = match ingest {
            Some(ingest) => Store::open(ingest)?,
            None => {
                self.note("the store is gone: no images to show");
                self.body.push_str("</section>\n");
                return Ok(());
            }
        };
        let truth = match truth.or_else(|| store.truth_file()) {
            Some(path) => Some(score::read_truth(&path)?),
            None => None,
        };
        let class_names = store.header().class_names();
        let scores: Vec<f64> = table.rows().iter().map(|r| r.score).collect();
        let labels: Vec<u32> = table.rows().iter().map(|r| r.label).collect();
        let ranks = score::Signals::load(score_dir)?.map(|s| s.ranks(&labels, class_names.len()));
        let by_class = score::by_class_ascending(&scores, &labels, class_names.len());
        let reader = store.reader()?;
        self.body
            .push_str("<h3>Lowest-scored training images of each class</h3>\n");
        for (label, members) in by_class.iter().enumerate().take(CLASSES_SHOWN) {
            let kept = members.iter().filter(|&&i| table.rows()[i].kept).count();
            let _ = writeln!(
                self.body,
                "<h4>{label} {} · kept {kept} of {}</h4>\n<div class=\"sheet\">",
                escape(&class_names[label]),
                members.len()
            );
            for (rank, &i) in members.iter().enumerate().take(LOWEST_SHOWN) {
                let row = &table.rows()[i];
                let meta: SampleMeta = reader.meta(Split::Train, row.id)?;
                let verdict = truth
                    .as_ref()
                    .and_then(|t| t.noisy_by_sample(std::slice::from_ref(&meta.path))[0]);
                let thumb = images.join(format!("{}.png", row.id));
                let shown = match reader.image(Split::Train, row.id) {
                    Ok(image) => {
                        plot::save_png(&thumb, &plot::thumbnail(&image, THUMBNAIL))?;
                        true
                    }
                    // Web data: an image that cannot be read is shown as missing, not fatal.
                    Err(_) => false,
                };
                let signals = ranks.as_ref().map(|r| r.described(i));
                self.figure(
                    &thumb,
                    shown,
                    row,
                    rank,
                    members.len(),
                    verdict,
                    signals,
                    &meta,
                );
            }
            self.body.push_str("</div>\n");
        }
        if by_class.len() > CLASSES_SHOWN {
            self.note(&format!(
                "{} more classes are not shown: see {}",
                by_class.len() - CLASSES_SHOWN,
                score_dir.join(score::CLASSES_FILE).display()
            ));
        }
        self.body.push_str("</section>\n");
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn figure(
        &mut self,
        thumb: &Path,
        shown: bool,
        row: &score::ScoreRow,
        rank: usize,
        members: usize,
        noisy: Option<bool>,
        signal_ranks: Option<String>,
        meta: &SampleMeta,
    ) {
        let text = meta.text.joined();
        let short: String = text.chars().take(TEXT_SHOWN).collect();
        let ellipsis = if short.len() < text.len() { "…" } else { "" };
        self.body.push_str("<figure>");
        if shown {
            self.image(thumb, &meta.path);
        } else {
            self.body
                .push_str("<p class=\"note\">(image unreadable)</p>");
        }
        let verdict = match noisy {
            Some(true) => " · <span class=\"noisy\">noisy (truth)</span>",
            Some(false) => " · <span class=\"clean\">clean (truth)</span>",
            None => "",
        };
        let kept = if row.kept { "kept" } else { "discarded" };
        // Each measured signal's rank in the class (0 its lowest, 1 its highest).
        let signals =
            signal_ranks.map_or(String::new(), |ranks| format!("<br>class rank by {ranks}"));
        let _ = writeln!(
            self.body,
            "<figcaption>#{} · score {:.3} · rank {}/{members} · {kept}{verdict}{signals}<br><code>{}</code><br><span title=\"{}\">{}{ellipsis}</span></figcaption></figure>",
            row.id,
            row.score,
            rank + 1,
            escape(&meta.path),
            escape(&text),
            escape(&short),
        );
    }

    /// The whole page; image paths become relative to `dir`, where the page lies.
    fn finish(self, dir: &Path) -> String {
        let prefix = format!("src=\"{}/", escape(&dir.to_string_lossy()));
        let body = self.body.replace(&prefix, "src=\"");
        let mut nav = String::from("<nav>");
        for (anchor, title) in &self.nav {
            let _ = write!(nav, "<a href=\"#{anchor}\">{}</a>", escape(title));
        }
        nav.push_str("</nav>");
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>websieve report</title><style>{STYLE}</style></head><body>\n\
             <h1>websieve report</h1>\n{nav}\n{body}</body></html>\n"
        )
    }
}

/// A chart of the training curves.
struct Chart {
    title: String,
    y: &'static str,
    series: Vec<Series>,
    log_y: bool,
}

/// The charts of a `metrics.jsonl`: the loss and each of its terms (log scale), the learning
/// rate, and every accuracy logged during training (keys with `top1`/`top5` in their name).
/// Each point's y replaced by the mean of the `window` points up to and including it.
fn trailing_mean(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let mut sum = 0.0;
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, y))| {
            sum += y;
            if i >= window {
                sum -= points[i - window].1;
            }
            (x, sum / (i + 1).min(window) as f64)
        })
        .collect()
}

fn curves(metrics: &str) -> Vec<(&'static str, Chart)> {
    let mut loss: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut lr = Vec::new();
    let mut accuracy: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for line in metrics.lines() {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(step), Some(fields)) = (record["step"].as_f64(), record.as_object()) else {
            continue;
        };
        if let Some(v) = record["loss"].as_f64() {
            loss.entry("total".into()).or_default().push((step, v));
        }
        if let Some(terms) = record["losses"].as_object() {
            for (name, v) in terms {
                if let Some(v) = v.as_f64() {
                    loss.entry(name.clone()).or_default().push((step, v));
                }
            }
        }
        if let Some(v) = record["lr"].as_f64() {
            lr.push((step, v));
        }
        for (name, v) in fields {
            if let (true, Some(v)) = (name.contains("top1") || name.contains("top5"), v.as_f64()) {
                accuracy.entry(name.clone()).or_default().push((step, v));
            }
        }
    }
    let series = |map: BTreeMap<String, Vec<(f64, f64)>>| -> Vec<Series> {
        map.into_iter()
            .map(|(name, points)| Series { name, points })
            .collect()
    };
    // About 50 windows over the run: per-step losses are too jagged to show a trend.
    let window = (loss.values().map(Vec::len).max().unwrap_or(0) / 50).max(1);
    let loss_title = match window {
        1 => "training loss, total and per head/task".to_string(),
        n => format!("training loss, total and per head/task (mean of the last {n} steps)"),
    };
    let loss = loss
        .into_iter()
        .map(|(name, points)| (name, trailing_mean(&points, window)))
        .collect();
    let mut charts = vec![
        (
            "loss",
            Chart {
                title: loss_title,
                y: "loss",
                series: series(loss),
                log_y: true,
            },
        ),
        (
            "lr",
            Chart {
                title: "learning rate".into(),
                y: "lr",
                series: vec![Series {
                    name: "lr".into(),
                    points: lr,
                }],
                log_y: false,
            },
        ),
    ];
    if !accuracy.is_empty() {
        charts.push((
            "accuracy",
            Chart {
                title: "accuracy during training".into(),
                y: "accuracy",
                series: series(accuracy),
                log_y: false,
            },
        ));
    }
    charts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_follow_the_metrics_lines() {
        let metrics = concat!(
            r#"{"step":1,"lr":0.01,"loss":2.0,"losses":{"main":1.5,"aux1":0.5}}"#,
            "\n",
            r#"{"step":2,"event":"rollback"}"#,
            "\nnot json\n",
            r#"{"step":3,"lr":0.005,"loss":1.0,"losses":{"main":0.8,"aux1":0.2},"val_top1":0.4}"#,
            "\n"
        );
        let charts = curves(metrics);
        let names: Vec<&str> = charts.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["loss", "lr", "accuracy"]);
        let loss = &charts[0].1.series;
        let total = loss.iter().find(|s| s.name == "total").unwrap();
        assert_eq!(total.points, [(1.0, 2.0), (3.0, 1.0)]);
        assert_eq!(loss.len(), 3);
        assert_eq!(charts[1].1.series[0].points, [(1.0, 0.01), (3.0, 0.005)]);
        assert_eq!(charts[2].1.series[0].points, [(3.0, 0.4)]);
    }

    #[test]
    fn the_trailing_mean_averages_the_window_up_to_each_point() {
        let points: Vec<(f64, f64)> = [4.0, 2.0, 6.0, 1.0]
            .iter()
            .enumerate()
            .map(|(i, &y)| (i as f64, y))
            .collect();
        assert_eq!(
            trailing_mean(&points, 2),
            [(0.0, 4.0), (1.0, 3.0), (2.0, 4.0), (3.0, 3.5)]
        );
        assert_eq!(trailing_mean(&points, 1), points);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
