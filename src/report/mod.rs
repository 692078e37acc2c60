//! Tables over runs: `runner report RUNS...`. In: run folders `runs/<name>/` (read through
//! [`RunFolder`]: the resolved recipe, the status and the evaluation results). Out: one text
//! table with a row per evaluated run, the settings whose values differ between the runs (as
//! dotted keys, e.g. `train.optimizer.lr`) and the results (top-1/top-5), then the runs that
//! have no results yet with their state (failed, stopped early, running). A folder without a
//! recipe stands for the runs below it, so a sweep's `runs/<recipe>/` reports all its points.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::eval::EvalMetrics;
use crate::recipe::{self, Recipe, RecipeError};
use crate::stage::{RunFolder, StageError};
use crate::table::{percent, Align, TextTable};

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
    /// The evaluation results, when the run has them.
    pub results: Option<EvalMetrics>,
    /// The run's state in words ("finished", "failed: …", …).
    pub state: String,
}

/// Finds the runs in `paths` (see [`find_runs`]), reads them and renders their table.
pub fn report(paths: &[PathBuf]) -> Result<String, ReportError> {
    let runs = find_runs(paths)?
        .iter()
        .map(|dir| load_run(dir))
        .collect::<Result<Vec<_>, _>>()?;
    if runs.is_empty() {
        return Err(ReportError::NoRuns);
    }
    Ok(render_report(&runs))
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

/// Reads a run folder: its resolved recipe, status and evaluation results.
pub fn load_run(dir: &Path) -> Result<RunSummary, ReportError> {
    let folder = RunFolder::new(dir);
    let mut loaded = recipe::load_file(&folder.file(RunFolder::RECIPE), &[])?;
    let recipe = match (loaded.pop(), loaded.is_empty()) {
        (Some(recipe), true) => recipe,
        _ => unreachable!("a resolved recipe has no sweep: it loads as one run"),
    };
    let results = folder.eval_metrics()?;
    let state = match folder.status()? {
        Some(status) => status.describe(),
        None if results.is_some() => "finished".to_string(),
        None => "no results and no status (not run by this version?)".to_string(),
    };
    let mut settings = recipe.settings();
    settings.remove("name");
    Ok(RunSummary {
        dir: dir.to_path_buf(),
        recipe,
        settings,
        results,
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

/// The table of the runs with results (see [`render_results`]), then the runs without
/// results, each with its folder and state.
pub fn render_report(all: &[RunSummary]) -> String {
    let runs: Vec<RunSummary> = all
        .iter()
        .filter(|r| r.results.is_some())
        .cloned()
        .collect();
    let pending: Vec<&RunSummary> = all.iter().filter(|r| r.results.is_none()).collect();
    let mut out = String::new();
    if !runs.is_empty() {
        out.push_str(&render_results(&runs));
    }
    if !pending.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str("without results:\n");
        let mut table = TextTable::new([
            ("run".to_string(), Align::Left),
            ("folder".to_string(), Align::Left),
            ("state".to_string(), Align::Left),
        ]);
        for run in pending {
            table.push_row(vec![
                run.recipe.name.clone(),
                run.dir.display().to_string(),
                run.state.clone(),
            ]);
        }
        out.push_str(&table.render());
    }
    out
}

/// One row per run: its name, its differing settings (`-` where a run lacks the key), top-1
/// and top-5; then how many settings all runs share.
fn render_results(runs: &[RunSummary]) -> String {
    let keys = differing_settings(runs);
    let columns = [("run".to_string(), Align::Left)]
        .into_iter()
        .chain(keys.iter().map(|k| (k.clone(), Align::Left)))
        .chain([
            ("top-1".to_string(), Align::Right),
            ("top-5".to_string(), Align::Right),
        ]);
    let mut table = TextTable::new(columns);
    for run in runs {
        let mut row = vec![run.recipe.name.clone()];
        row.extend(
            keys.iter()
                .map(|k| run.settings.get(k).cloned().unwrap_or_else(|| "-".into())),
        );
        let results = run.results.as_ref().expect("only runs with results");
        row.push(percent(Some(results.top1)));
        row.push(percent(Some(results.top5)));
        table.push_row(row);
    }
    let all_keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.settings.keys()).collect();
    let shared = all_keys.len() - keys.len();
    format!(
        "{}{shared} other setting(s) are the same in every run\n",
        table.render()
    )
}
