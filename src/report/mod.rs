//! Tables over finished runs: `runner report RUNS...`. In: run folders `runs/<name>/`, each
//! with `recipe.resolved.toml` and the eval stage's `metrics.json`. Out: one text table with a
//! row per run, the settings whose values differ between the runs (as dotted keys, e.g.
//! `train.optimizer.lr`) and the results (top-1/top-5). A folder without a recipe stands for
//! the runs below it, so a sweep's `runs/<recipe>/` reports all its points.

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
    #[error("{}: no {RECIPE_FILE} in it or in any folder below it: not a run folder", path.display())]
    NotARun { path: PathBuf },
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

/// `runner report RUNS...`: the command line of a report.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  runner report runs/clean runs/softlabel\n  runner report runs/ablation   # every run below it, e.g. a sweep's points"
)]
pub struct ReportArgs {
    /// Run folders (with recipe.resolved.toml and metrics.json), or folders holding runs.
    #[arg(required = true, value_name = "RUNS")]
    pub runs: Vec<PathBuf>,
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
    if dir.join(RECIPE_FILE).is_file() {
        runs.push(dir.to_path_buf());
        return Ok(());
    }
    let io = |source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ReportArgs,
    }

    #[test]
    fn report_needs_at_least_one_run() {
        assert!(Cli::try_parse_from(["report"]).is_err());
        let cli = Cli::try_parse_from(["report", "runs/a", "runs/b"]).unwrap();
        assert_eq!(
            cli.args.runs,
            [PathBuf::from("runs/a"), PathBuf::from("runs/b")]
        );
    }

    #[test]
    fn nested_and_inline_tables_become_dotted_keys() {
        let table: toml::Table = toml::from_str(
            "name = \"x\"\n[train]\ndevices = { kind = \"cuda\", ids = [0, 1] }\nsteps = [10, 20]\n",
        )
        .unwrap();
        let mut flat = BTreeMap::new();
        flatten("", &table, &mut flat);
        let flat: Vec<(&str, &str)> = flat.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            flat,
            [
                ("name", "x"),
                ("train.devices.ids", "[0, 1]"),
                ("train.devices.kind", "cuda"),
                ("train.steps", "[10, 20]"),
            ]
        );
    }
}
