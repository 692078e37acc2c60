//! Tables over runs: `runner report RUNS...`. In: run folders `runs/<name>/` (read through
//! [`RunFolder`]: the resolved recipe, the status, the score summary, the training metrics and
//! the evaluation results). Out: one table with a row per run: the settings whose values
//! differ between the runs (as dotted keys, e.g. `train.optimizer.lr`), images seen, top-1
//! and top-5 of the last epoch, with a holdout the best epoch on it and its top-1 and top-5,
//! the same on the second validation set where there is one, the ensemble's top-1 and top-5
//! for a recipe that averages runs (`eval.ensemble`), the noise-detection AUC (where a
//! truth file is known), wall time and state (finished, failed, stopped early, running); as
//! text, Markdown, CSV or JSON ([`ReportFormat`]). Each accuracy's column says which weights
//! it is of (`top-1 last`, `top-1 best`; CSV and JSON `top1_last`, `top1_best`). With
//! [`ReportOptions::group_by_seed`], runs that differ only in `train.seed` fold into one row of
//! mean ± standard deviation. A folder without a recipe stands for the runs below it, so a
//! sweep's `runs/<recipe>/` reports all its points.

mod html;

pub use html::{write_html, INDEX_FILE};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::eval::EvalMetrics;
use crate::recipe::{self, Recipe, RecipeError};
use crate::stage::{RunFolder, StageError};
use crate::table::{csv_line, percent, Align, TextTable};
use crate::train::BestEpoch;

/// What a report could not read, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no runs to report")]
    NoRuns,
    #[error("{}: no {} in it or in any folder below it: not a run folder", path.display(), RunFolder::RECIPE)]
    NotARun { path: PathBuf },
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{0}")]
    Recipe(#[from] RecipeError),
    #[error("{0}")]
    Folder(Box<StageError>),
    #[error("{0}")]
    Score(#[from] crate::score::ScoreError),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Plot(#[from] crate::plot::PlotError),
}

impl From<StageError> for ReportError {
    fn from(e: StageError) -> Self {
        ReportError::Folder(Box::new(e))
    }
}

/// One run folder, read.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub dir: PathBuf,
    /// The run's recipe, as it ran.
    pub recipe: Recipe,
    /// Every setting of the recipe but `name`, by dotted key, as text.
    pub settings: BTreeMap<String, String>,
    /// The last epoch's evaluation results, when the run has them.
    pub results: Option<EvalMetrics>,
    /// The last epoch's evaluation on the second validation set (`dataset.second_val`).
    pub second_val: Option<EvalMetrics>,
    /// With a holdout (`train.holdout`): the best epoch on it, and its evaluation.
    pub best: Option<BestResults>,
    /// With `eval.ensemble`: the evaluation of this run's predictions averaged with the
    /// members'.
    pub ensemble: Option<EvalMetrics>,
    /// Noise-detection AUC of the scores against the truth file, when known.
    pub noise_auc: Option<f64>,
    /// Images the training saw, when it trained.
    pub images: Option<u64>,
    /// Seconds the run's stages took (reused stages take almost none).
    pub seconds: Option<f64>,
    /// The run's state in words ("finished", "failed: …", …).
    pub state: String,
}

/// The best epoch on the holdout of a run, and its evaluation on each validation set.
#[derive(Debug, Clone, PartialEq)]
pub struct BestResults {
    pub epoch: BestEpoch,
    pub results: Option<EvalMetrics>,
    pub second_val: Option<EvalMetrics>,
}

/// How `report` writes its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReportFormat {
    /// Aligned columns for a terminal.
    #[default]
    Text,
    /// A Markdown table (for BENCHMARKS.md, issues, notebooks).
    Markdown,
    /// Comma-separated, numbers unformatted (accuracies as fractions, seconds).
    Csv,
    /// One JSON object per row, in an array.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportOptions {
    pub format: ReportFormat,
    /// Fold runs that differ only in `train.seed` into one row: mean ± standard deviation.
    pub group_by_seed: bool,
}

/// The setting that `group_by_seed` folds over.
const SEED_KEY: &str = "train.seed";

/// Finds the runs in `paths` (see [`find_runs`]), reads them and renders their table as text.
pub fn report(paths: &[PathBuf]) -> Result<String, ReportError> {
    report_with(paths, &ReportOptions::default())
}

/// [`report`] in the format and grouping of `options`.
pub fn report_with(paths: &[PathBuf], options: &ReportOptions) -> Result<String, ReportError> {
    let runs = find_runs(paths)?
        .iter()
        .map(|dir| load_run(dir))
        .collect::<Result<Vec<_>, _>>()?;
    if runs.is_empty() {
        return Err(ReportError::NoRuns);
    }
    Ok(render_report(&runs, options))
}

/// The run folders in `paths`, in the order given: a folder with `recipe.resolved.toml` is a
/// run; any other folder stands for the runs below it, in name order.
pub fn find_runs(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ReportError> {
    let mut runs = Vec::new();
    for path in paths {
        let before = runs.len();
        collect_runs(path, &mut runs)?;
        if runs.len() == before {
            return Err(ReportError::NotARun { path: path.clone() });
        }
    }
    Ok(runs)
}

fn collect_runs(dir: &Path, runs: &mut Vec<PathBuf>) -> Result<(), ReportError> {
    if RunFolder::is_run(dir) {
        runs.push(dir.to_path_buf());
        return Ok(());
    }
    let io = |cause| ReportError::Io {
        path: dir.to_path_buf(),
        cause,
    };
    let mut below = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            below.push(path);
        }
    }
    below.sort();
    below.iter().try_for_each(|sub| collect_runs(sub, runs))
}

/// Reads a run folder: its resolved recipe, status and results.
pub fn load_run(dir: &Path) -> Result<RunSummary, ReportError> {
    let folder = RunFolder::new(dir);
    let mut loaded = recipe::load_file(&folder.file(RunFolder::RECIPE), &[])?;
    let recipe = match (loaded.pop(), loaded.is_empty()) {
        (Some(recipe), true) => recipe,
        _ => unreachable!("a resolved recipe has no sweep: it loads as one run"),
    };
    let results = folder.eval_metrics()?;
    let status = folder.status()?;
    let state = match &status {
        Some(status) => status.describe(),
        None if results.is_some() => "finished".to_string(),
        None => "no results and no status (not run by this version?)".to_string(),
    };
    let seconds = status
        .as_ref()
        .filter(|s| !s.stages.is_empty())
        .map(|s| s.stages.iter().map(|stage| stage.seconds).sum());
    let noise_auc = folder
        .score_summary()?
        .and_then(|summary| summary.noise?.auc);
    let mut settings = recipe.settings();
    settings.remove("name");
    let best = match folder.best_epoch()? {
        Some(epoch) => Some(BestResults {
            epoch,
            results: folder.best_metrics()?,
            second_val: folder.best_second_val_metrics()?,
        }),
        None => None,
    };
    Ok(RunSummary {
        dir: dir.to_path_buf(),
        recipe,
        settings,
        results,
        second_val: folder.second_val_metrics()?,
        best,
        ensemble: folder.ensemble_metrics()?,
        noise_auc,
        images: folder.images_seen()?,
        seconds,
        state,
    })
}

/// The dotted keys whose values differ between the runs, a key missing from some run
/// included, sorted.
pub fn differing_settings(runs: &[RunSummary]) -> Vec<String> {
    let keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.settings.keys()).collect();
    keys.into_iter()
        .filter(|key| {
            let first = runs[0].settings.get(*key);
            runs.iter().any(|r| r.settings.get(*key) != first)
        })
        .cloned()
        .collect()
}

/// A measured quantity of a row: one run's value, or the mean and standard deviation of a
/// group's runs that have it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Measure {
    mean: f64,
    /// Sample standard deviation; `None` for a single value.
    sd: Option<f64>,
    runs: usize,
}

impl Measure {
    fn of(values: impl IntoIterator<Item = f64>) -> Option<Measure> {
        let values: Vec<f64> = values.into_iter().collect();
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let sd = (n > 1).then(|| {
            let square_sum: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
            (square_sum / (n - 1) as f64).sqrt()
        });
        Some(Measure { mean, sd, runs: n })
    }

    fn text(&self, one: impl Fn(f64) -> String) -> String {
        match self.sd {
            Some(sd) => format!("{} ± {}", one(self.mean), one(sd)),
            None => one(self.mean),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self.sd {
            Some(sd) => serde_json::json!({ "mean": self.mean, "sd": sd, "runs": self.runs }),
            None => serde_json::json!(self.mean),
        }
    }
}

/// A measured column of the table: its header (text, Markdown, HTML), its key (CSV, JSON),
/// a run's value and how one value is written.
struct Column {
    header: String,
    key: &'static str,
    value: fn(&RunSummary) -> Option<f64>,
    text: fn(f64) -> String,
}

fn accuracy_text(v: f64) -> String {
    percent(Some(v))
}

fn count_text(v: f64) -> String {
    format!("{v:.0}")
}

/// The measured columns over `runs`: images, top-1/top-5 of the last epoch, noise AUC and time
/// always; the ensemble's top-1/top-5, the best epoch on the holdout with its top-1/top-5, and
/// the same on the second validation set, where some run has them. Each accuracy says which
/// weights it is of.
fn columns(runs: &[RunSummary]) -> Vec<Column> {
    let column = |header: &str, key, value, text| Column {
        header: header.to_string(),
        key,
        value,
        text,
    };
    let mut columns = vec![
        column(
            "images",
            "images",
            |r| r.images.map(|i| i as f64),
            count_text,
        ),
        column(
            "top-1 last",
            "top1_last",
            |r| Some(r.results.as_ref()?.top1),
            accuracy_text,
        ),
        column(
            "top-5 last",
            "top5_last",
            |r| Some(r.results.as_ref()?.top5),
            accuracy_text,
        ),
    ];
    if runs.iter().any(|r| r.ensemble.is_some()) {
        columns.extend([
            column(
                "top-1 ensemble",
                "top1_ensemble",
                |r| Some(r.ensemble.as_ref()?.top1),
                accuracy_text,
            ),
            column(
                "top-5 ensemble",
                "top5_ensemble",
                |r| Some(r.ensemble.as_ref()?.top5),
                accuracy_text,
            ),
        ]);
    }
    if runs.iter().any(|r| r.best.is_some()) {
        columns.extend([
            column(
                "best epoch",
                "best_epoch",
                |r| Some(r.best.as_ref()?.epoch.epoch as f64),
                count_text,
            ),
            column(
                "top-1 best",
                "top1_best",
                |r| Some(r.best.as_ref()?.results.as_ref()?.top1),
                accuracy_text,
            ),
            column(
                "top-5 best",
                "top5_best",
                |r| Some(r.best.as_ref()?.results.as_ref()?.top5),
                accuracy_text,
            ),
        ]);
    }
    let second_names: BTreeSet<&str> = runs
        .iter()
        .filter_map(|r| Some(r.recipe.dataset.second_val.as_ref()?.name.as_str()))
        .collect();
    if !second_names.is_empty() {
        // The set's name when every run has the same one.
        let name = match second_names.len() {
            1 => second_names.first().expect("one name"),
            _ => "second val",
        };
        let of = |what: &str| format!("{name} {what}");
        columns.extend([
            column(
                &of("top-1 last"),
                "second_val_top1_last",
                |r| Some(r.second_val.as_ref()?.top1),
                accuracy_text,
            ),
            column(
                &of("top-5 last"),
                "second_val_top5_last",
                |r| Some(r.second_val.as_ref()?.top5),
                accuracy_text,
            ),
        ]);
        if runs
            .iter()
            .any(|r| r.best.as_ref().is_some_and(|b| b.second_val.is_some()))
        {
            columns.extend([
                column(
                    &of("top-1 best"),
                    "second_val_top1_best",
                    |r| Some(r.best.as_ref()?.second_val.as_ref()?.top1),
                    accuracy_text,
                ),
                column(
                    &of("top-5 best"),
                    "second_val_top5_best",
                    |r| Some(r.best.as_ref()?.second_val.as_ref()?.top5),
                    accuracy_text,
                ),
            ]);
        }
    }
    columns.extend([
        column(
            "noise AUC",
            "noise_auc",
            |r| r.noise_auc,
            |v| format!("{v:.3}"),
        ),
        column("time", "seconds", |r| r.seconds, seconds_text),
    ]);
    columns
}

/// One row of the table: a run, or a group of runs that differ only in their seed.
struct Row {
    run: String,
    seeds: Vec<String>,
    settings: Vec<Option<String>>,
    /// One per column of [`columns`].
    measures: Vec<Option<Measure>>,
    state: String,
}

impl Row {
    fn of(runs: &[&RunSummary], keys: &[String], columns: &[Column]) -> Row {
        let state = match runs {
            [one] => one.state.clone(),
            _ => {
                let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
                for run in runs {
                    let word = run.state.split(':').next().unwrap_or_default();
                    *counts.entry(word).or_default() += 1;
                }
                let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
                parts.join(", ")
            }
        };
        Row {
            run: match runs {
                [one] => one.recipe.name.clone(),
                _ => without_seed(&runs[0].recipe.name),
            },
            seeds: match runs {
                [_] => Vec::new(),
                _ => runs
                    .iter()
                    .filter_map(|r| r.settings.get(SEED_KEY).cloned())
                    .collect(),
            },
            settings: keys
                .iter()
                .map(|k| runs[0].settings.get(k).cloned())
                .collect(),
            measures: columns
                .iter()
                .map(|c| Measure::of(runs.iter().filter_map(|r| (c.value)(r))))
                .collect(),
            state,
        }
    }
}

/// The table of `runs` in `options`' format: a row per run (or seed group), the settings
/// that differ between them, then the results; in text and Markdown, how many settings all
/// runs share.
pub fn render_report(runs: &[RunSummary], options: &ReportOptions) -> String {
    let Grouped {
        rows,
        keys,
        columns,
        grouped,
        footer,
    } = group_rows(runs, options);
    match options.format {
        ReportFormat::Text | ReportFormat::Markdown => {
            let (headers, body) = display_cells(&rows, &keys, &columns, grouped);
            let table = match options.format {
                ReportFormat::Markdown => markdown(&headers, &body),
                _ => {
                    let mut table = TextTable::new(headers);
                    body.into_iter().for_each(|r| table.push_row(r));
                    table.render()
                }
            };
            format!("{table}{footer}")
        }
        ReportFormat::Csv => {
            let mut header = vec!["run".to_string()];
            if grouped {
                header.push("seeds".into());
            }
            header.extend(keys.iter().cloned());
            header.extend(columns.iter().map(|c| c.key.to_string()));
            header.push("state".into());
            let mut out = csv_line(&header);
            for row in &rows {
                let mut line = vec![row.run.clone()];
                if grouped {
                    line.push(row.seeds.join(" "));
                }
                line.extend(row.settings.iter().map(|v| v.clone().unwrap_or_default()));
                line.extend(
                    row.measures
                        .iter()
                        .map(|m| m.map_or(String::new(), |m| m.mean.to_string())),
                );
                line.push(row.state.clone());
                out.push_str(&csv_line(&line));
            }
            out
        }
        ReportFormat::Json => {
            let objects: Vec<serde_json::Value> = rows
                .iter()
                .map(|row| {
                    let settings: serde_json::Map<String, serde_json::Value> = keys
                        .iter()
                        .zip(&row.settings)
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.clone().map_or(serde_json::Value::Null, Into::into),
                            )
                        })
                        .collect();
                    let mut object = serde_json::json!({
                        "run": row.run,
                        "seeds": row.seeds,
                        "settings": settings,
                    });
                    for (column, m) in columns.iter().zip(&row.measures) {
                        object[column.key] = m.map_or(serde_json::Value::Null, |m| m.json());
                    }
                    object["state"] = row.state.clone().into();
                    object
                })
                .collect();
            let mut text = serde_json::to_string_pretty(&objects).expect("JSON serializes");
            text.push('\n');
            text
        }
    }
}

/// The rows of a report, with the setting keys and measured columns they show, whether some
/// fold several seeds, and the footer saying how many settings all runs share.
struct Grouped {
    rows: Vec<Row>,
    keys: Vec<String>,
    columns: Vec<Column>,
    grouped: bool,
    footer: String,
}

fn group_rows(runs: &[RunSummary], options: &ReportOptions) -> Grouped {
    let differing = differing_settings(runs);
    let mut keys = differing.clone();
    let groups: Vec<Vec<&RunSummary>> = if options.group_by_seed {
        keys.retain(|k| k != SEED_KEY);
        let mut groups: Vec<Vec<&RunSummary>> = Vec::new();
        for run in runs {
            let same = |other: &&RunSummary| {
                keys.iter()
                    .all(|k| other.settings.get(k) == run.settings.get(k))
            };
            match groups.iter_mut().find(|g| same(&g[0])) {
                Some(group) => group.push(run),
                None => groups.push(vec![run]),
            }
        }
        groups
    } else {
        runs.iter().map(|r| vec![r]).collect()
    };
    let columns = columns(runs);
    let rows: Vec<Row> = groups.iter().map(|g| Row::of(g, &keys, &columns)).collect();
    let grouped = rows.iter().any(|r| !r.seeds.is_empty());
    let all_keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.settings.keys()).collect();
    let shared = all_keys.len() - differing.len();
    let footer = format!("{shared} other setting(s) are the same in every run\n");
    Grouped {
        rows,
        keys,
        columns,
        grouped,
        footer,
    }
}

/// Column headers and formatted cells of the text, Markdown and HTML tables.
fn display_cells(
    rows: &[Row],
    keys: &[String],
    columns: &[Column],
    grouped: bool,
) -> (Vec<(String, Align)>, Vec<Vec<String>>) {
    let mut headers: Vec<(String, Align)> = vec![("run".into(), Align::Left)];
    if grouped {
        headers.push(("seeds".into(), Align::Left));
    }
    headers.extend(keys.iter().map(|k| (k.clone(), Align::Left)));
    headers.extend(columns.iter().map(|c| (c.header.clone(), Align::Right)));
    headers.push(("state".into(), Align::Left));
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut cells = vec![row.run.clone()];
            if grouped {
                cells.push(if row.seeds.is_empty() {
                    "-".into()
                } else {
                    row.seeds.join(",")
                });
            }
            cells.extend(
                row.settings
                    .iter()
                    .map(|v| v.clone().unwrap_or_else(|| "-".into())),
            );
            for (column, m) in columns.iter().zip(&row.measures) {
                cells.push(m.map_or_else(|| "-".to_string(), |m| m.text(column.text)));
            }
            cells.push(row.state.clone());
            cells
        })
        .collect();
    (headers, body)
}

/// A sweep point's name without its `train.seed=…` part: `clean/train.seed=0` → `clean`,
/// `clean/lr=0.1,train.seed=2` → `clean/lr=0.1`.
fn without_seed(name: &str) -> String {
    let Some((recipe, point)) = name.rsplit_once('/') else {
        return name.to_string();
    };
    let kept: Vec<&str> = point
        .split(',')
        .filter(|part| !part.starts_with(&format!("{SEED_KEY}=")))
        .collect();
    match kept.is_empty() {
        true => recipe.to_string(),
        false => format!("{recipe}/{}", kept.join(",")),
    }
}

/// `95 s`, `12.3 min`, `2.1 h`.
fn seconds_text(seconds: f64) -> String {
    match seconds {
        s if s < 100.0 => format!("{s:.0} s"),
        s if s < 6000.0 => format!("{:.1} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

fn markdown(columns: &[(String, Align)], rows: &[Vec<String>]) -> String {
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<String> = cells.map(|c| c.replace('|', "\\|")).collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut out = line(&mut columns.iter().map(|(h, _)| h.as_str()));
    let rules: Vec<&str> = columns
        .iter()
        .map(|(_, a)| match a {
            Align::Left => "---",
            Align::Right => "---:",
        })
        .collect();
    out.push_str(&line(&mut rules.into_iter()));
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_named_without_its_seed() {
        assert_eq!(without_seed("clean/train.seed=0"), "clean");
        assert_eq!(without_seed("clean/lr=0.1,train.seed=2"), "clean/lr=0.1");
        assert_eq!(without_seed("clean/train.seed=2,lr=0.1"), "clean/lr=0.1");
        assert_eq!(without_seed("clean"), "clean");
    }
}
