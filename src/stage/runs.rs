//! Run folders: `runs/<name>/` holds the resolved recipe, the command line, the version and
//! git revision, a JSON log, metrics, and `stages.json` pointing at the stage outputs used.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::json;

use super::cache::{Outcome, Partial};
use super::{exec, StageError, StageKind, Workspace};
use crate::eval;
use crate::recipe::Recipe;

/// How `runner` was called, for the run folder.
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    pub command_line: String,
    /// Show progress bars (they also hide themselves when stderr is not a terminal).
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub run: String,
    pub run_dir: PathBuf,
    pub stages: Vec<(StageKind, PathBuf, Outcome)>,
    /// The evaluation table (top-1/top-5 overall and per class), when the run evaluated.
    pub table: Option<String>,
}

/// Events with this target go to the run's JSON log only; `runner` hides them on stderr.
pub const RUN_LOG_ONLY: &str = "websieve::run_log_only";

static RUN_LOG: Mutex<Option<fs::File>> = Mutex::new(None);

/// A `tracing` writer into the current run's `log.jsonl` (nothing between runs). `runner`
/// installs it as a JSON layer beside the human log on stderr.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunLog;

impl Write for RunLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match RUN_LOG.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            Some(file) => file.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match RUN_LOG.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

fn set_run_log(file: Option<fs::File>) {
    *RUN_LOG.lock().unwrap_or_else(|e| e.into_inner()) = file;
}

fn folder_err(path: &Path) -> impl FnOnce(io::Error) -> StageError + '_ {
    move |source| StageError::RunFolder {
        path: path.to_path_buf(),
        source,
    }
}

/// The stage folders a finished run used, from its `stages.json`.
pub fn read_stage_dirs(path: &Path) -> io::Result<BTreeMap<String, PathBuf>> {
    let text = fs::read_to_string(path)?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(io::Error::other)?;
    Ok(value
        .get("stages")
        .and_then(|s| s.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), PathBuf::from(v.get("dir")?.as_str()?))))
                .collect()
        })
        .unwrap_or_default())
}

pub(super) fn run(
    ws: &Workspace,
    recipe: &Recipe,
    until: StageKind,
    ctx: &RunContext,
) -> Result<RunSummary, StageError> {
    let run_dir = ws.run_dir(&recipe.name);
    fs::create_dir_all(&run_dir).map_err(folder_err(&run_dir))?;
    let log_path = run_dir.join("log.jsonl");
    set_run_log(Some(
        fs::File::create(&log_path).map_err(folder_err(&log_path))?,
    ));
    write_run_files(&run_dir, recipe, ctx)?;
    let result = run_stages(ws, recipe, until, ctx, &run_dir);
    if let Err(e) = &result {
        // The error reaches the user on stderr from `runner`; here it goes to the JSON log.
        tracing::error!(target: RUN_LOG_ONLY, run = %recipe.name, error = %e, "run failed");
    }
    set_run_log(None);
    result
}

fn run_stages(
    ws: &Workspace,
    recipe: &Recipe,
    until: StageKind,
    ctx: &RunContext,
    run_dir: &Path,
) -> Result<RunSummary, StageError> {
    let plan = ws.plan(recipe, until)?;
    let mut done: Vec<(StageKind, PathBuf, Outcome)> = Vec::new();
    for stage in &plan.stages {
        let upstream: Vec<(StageKind, PathBuf)> = done
            .iter()
            .filter(|(k, _, _)| exec::reads(stage.kind).contains(k))
            .map(|(k, d, _)| (*k, d.clone()))
            .collect();
        let partial = match stage.kind {
            StageKind::Ingest | StageKind::Train => Partial::Resume,
            _ => Partial::Discard,
        };
        tracing::info!(run = %recipe.name, stage = %stage.kind, key = %stage.key, cached = stage.cached, "stage");
        let (dir, outcome) = ws
            .cache
            .ensure(
                stage.kind.name(),
                &stage.key,
                &stage.inputs,
                partial,
                |out| {
                    exec::execute(
                        recipe,
                        stage.kind,
                        &upstream,
                        plan.init.as_ref(),
                        out,
                        ctx.progress,
                    )
                },
            )
            .map_err(|e| match e {
                super::CacheError::Build(source) => match source.downcast::<StageError>() {
                    Ok(stage_error) => *stage_error,
                    Err(source) => StageError::Failed {
                        stage: stage.kind,
                        run: recipe.name.clone(),
                        source,
                    },
                },
                other => StageError::Cache(other),
            })?;
        done.push((stage.kind, dir, outcome));
    }
    // Written once all stages are done, so a failed run never clobbers the pointers of the
    // last good run of the same name (which `train.init` and ensembles read).
    write_stage_pointers(run_dir, &done)?;
    let table =
        collect_results(ws, recipe, run_dir, &done).map_err(|source| StageError::Failed {
            stage: StageKind::Eval,
            run: recipe.name.clone(),
            source,
        })?;
    Ok(RunSummary {
        run: recipe.name.clone(),
        run_dir: run_dir.to_path_buf(),
        stages: done,
        table,
    })
}

/// Copies the training and evaluation metrics into the run folder, evaluates the ensemble the
/// recipe names, and renders the results table.
fn collect_results(
    ws: &Workspace,
    recipe: &Recipe,
    run_dir: &Path,
    done: &[(StageKind, PathBuf, Outcome)],
) -> Result<Option<String>, Box<dyn std::error::Error + Send + Sync>> {
    let dir_of = |kind: StageKind| {
        done.iter()
            .find(|(k, _, _)| *k == kind)
            .map(|(_, d, _)| d.as_path())
    };
    if let Some(train) = dir_of(StageKind::Train) {
        let metrics = train.join("metrics.jsonl");
        if metrics.is_file() {
            fs::copy(&metrics, run_dir.join("metrics.jsonl"))?;
        }
    }
    let Some(eval_dir) = dir_of(StageKind::Eval) else {
        return Ok(None);
    };
    fs::copy(eval_dir.join("metrics.json"), run_dir.join("metrics.json"))?;
    let ingest = dir_of(StageKind::Ingest).expect("eval reads ingest");
    let class_names = crate::store::Store::open(ingest)?.header().class_names();
    let own = eval::load_predictions(eval_dir)?;
    let mut table = eval::render_table(&eval::metrics(&own, &class_names)?, true);
    if !recipe.eval.ensemble.is_empty() {
        let mut members = vec![own];
        for member in &recipe.eval.ensemble {
            let stages = ws.run_dir(member).join("stages.json");
            let dir = read_stage_dirs(&stages)
                .ok()
                .and_then(|d| d.get(StageKind::Eval.name()).cloned())
                .ok_or_else(|| format!("eval.ensemble names run {member:?}, which has not been evaluated ({} is missing)", stages.display()))?;
            members.push(eval::load_predictions(&dir)?);
        }
        let combined = eval::ensemble(&members)?;
        let metrics = eval::metrics(&combined, &class_names)?;
        eval::write_outputs(&run_dir.join("ensemble"), &combined, &metrics, &class_names)?;
        table.push_str(&format!(
            "\nensemble of {} runs ({}):\n{}",
            members.len(),
            std::iter::once(recipe.name.as_str())
                .chain(recipe.eval.ensemble.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(", "),
            eval::render_table(&metrics, false)
        ));
    }
    Ok(Some(table))
}

fn write_run_files(run_dir: &Path, recipe: &Recipe, ctx: &RunContext) -> Result<(), StageError> {
    let files = [
        ("recipe.resolved.toml", recipe.resolved_toml()),
        ("command.txt", format!("{}\n", ctx.command_line)),
        (
            "version.json",
            serde_json::to_string_pretty(&json!({
                "websieve": env!("CARGO_PKG_VERSION"),
                "recipe": recipe.path,
                "recipe_git": git_revision(&recipe.path),
            }))
            .expect("JSON serializes"),
        ),
    ];
    for (name, text) in files {
        let path = run_dir.join(name);
        fs::write(&path, text).map_err(folder_err(&path))?;
    }
    Ok(())
}

fn write_stage_pointers(
    run_dir: &Path,
    done: &[(StageKind, PathBuf, Outcome)],
) -> Result<(), StageError> {
    let stages: serde_json::Map<String, serde_json::Value> = done
        .iter()
        .map(|(kind, dir, outcome)| {
            let dir = dir.canonicalize().unwrap_or_else(|_| dir.clone());
            (
                kind.name().to_string(),
                json!({ "dir": dir, "reused": *outcome == Outcome::Hit }),
            )
        })
        .collect();
    let path = run_dir.join("stages.json");
    let text = serde_json::to_string_pretty(&json!({ "stages": stages })).expect("JSON serializes");
    fs::write(&path, text).map_err(folder_err(&path))
}

/// The git revision of the repository holding `path` (the recipe), with `-dirty` when it has
/// uncommitted changes; `None` outside git.
fn git_revision(path: &Path) -> Option<String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let rev = git(&["rev-parse", "HEAD"])?;
    let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{rev}-dirty") } else { rev })
}
