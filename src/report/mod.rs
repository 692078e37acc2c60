//! Tables over finished runs: `runner report RUNS...`. In: run folders `runs/<name>/`, each
//! with `recipe.resolved.toml` and the eval stage's `metrics.json`. Out: one text table with a
//! row per run, the settings whose values differ between the runs (as dotted keys, e.g.
//! `train.optimizer.lr`) and the results (top-1/top-5).

pub mod table;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::eval::table::percent;
use table::{Align, TextTable};

pub const RECIPE_FILE: &str = "recipe.resolved.toml";
pub const METRICS_FILE: &str = "metrics.json";

/// What a report could not read, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no runs to report")]
    NoRuns,
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Toml {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The results of a run, as its `metrics.json` has them (fractions in [0, 1]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RunResults {
    pub samples: usize,
    pub top1: f64,
    pub top5: f64,
}

/// One run folder, read.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// The recipe's `name` (the folder's path when the recipe has none).
    pub name: String,
    /// Every setting of the resolved recipe but `name`, by dotted key, as text.
    pub settings: BTreeMap<String, String>,
    pub results: RunResults,
}

/// Reads the run folders and renders their table, in the order given.
pub fn report(dirs: &[PathBuf]) -> Result<String, ReportError> {
    let runs = dirs
        .iter()
        .map(|dir| load_run(dir))
        .collect::<Result<Vec<_>, _>>()?;
    if runs.is_empty() {
        return Err(ReportError::NoRuns);
    }
    Ok(render_report(&runs))
}

/// Reads `dir/recipe.resolved.toml` and `dir/metrics.json`.
pub fn load_run(dir: &Path) -> Result<RunSummary, ReportError> {
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path)
            .map(|text| (text, path.clone()))
            .map_err(|source| ReportError::Io { path, source })
    };
    let (text, path) = read(RECIPE_FILE)?;
    let recipe: toml::Table =
        toml::from_str(&text).map_err(|source| ReportError::Toml { path, source })?;
    let (text, path) = read(METRICS_FILE)?;
    let results: RunResults =
        serde_json::from_str(&text).map_err(|source| ReportError::Json { path, source })?;
    let mut settings = BTreeMap::new();
    flatten("", &recipe, &mut settings);
    let name = settings
        .remove("name")
        .unwrap_or_else(|| dir.display().to_string());
    Ok(RunSummary {
        name,
        settings,
        results,
    })
}

/// Tables become dotted keys; every other value is shown as TOML writes it (strings bare).
fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) {
    for (key, value) in table {
        let key = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => flatten(&key, inner, out),
            toml::Value::String(s) => {
                out.insert(key, s.clone());
            }
            other => {
                out.insert(key, other.to_string());
            }
        }
    }
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

/// One row per run: its name, its differing settings (`-` where a run lacks the key), top-1
/// and top-5; then how many settings all runs share.
pub fn render_report(runs: &[RunSummary]) -> String {
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
        let mut row = vec![run.name.clone()];
        row.extend(
            keys.iter()
                .map(|k| run.settings.get(k).cloned().unwrap_or_else(|| "-".into())),
        );
        row.push(percent(Some(run.results.top1)));
        row.push(percent(Some(run.results.top5)));
        table.push_row(row);
    }
    let all_keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.settings.keys()).collect();
    let shared = all_keys.len() - keys.len();
    format!(
        "{}{shared} other setting(s) are the same in every run\n",
        table.render()
    )
}
