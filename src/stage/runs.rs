//! Running a plan: each stage is found in the cache or built, then the run folder (see
//! [`RunFolder`]) gets the stage pointers, the metrics and the results table. The run's JSON
//! log (`log.jsonl`) gets a run-started event, one event per stage with its duration, and a
//! run-finished (or run-failed) event.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use super::cache::{Cache, Outcome, Partial};
use super::error::{StageError, StageFailure};
use super::folder::{RunFolder, RunState, RunStatus, StageRecord};
use super::kind::StageKind;
use super::plan::{Plan, PlannedStage};
use super::stages::{
    spec, BuildContext, Parallel, BEST_EPOCH_FILE, BEST_EVAL_DIR, SECOND_VAL_EVAL_DIR,
};
use crate::eval;
use crate::recipe::Recipe;
use crate::runtime::{RuntimeError, World};

/// How `runner` was called, for the run folder.
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    pub command_line: String,
    /// Show progress bars (they also hide themselves when stderr is not a terminal).
    pub progress: bool,
    /// Build this stage and every later one again, replacing their cached outputs.
    pub rebuild_from: Option<StageKind>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub run: String,
    pub run_dir: PathBuf,
    pub stages: Vec<StageRecord>,
    /// The evaluation table (top-1/top-5 overall and per class), when the run evaluated.
    pub table: Option<String>,
    /// Where an earlier run of a different recipe under the same name was moved.
    pub kept_earlier_run: Option<PathBuf>,
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

/// Runs `plan` for `recipe`, writing the run folder `run_dir` (locked meanwhile; an earlier
/// run of a different recipe there is kept under a numbered name).
///
/// Launched on several ranks (torchrun, Slurm, or `runner`'s own workers), rank 0 does
/// everything above and builds the stages before training alone; it then tells the other
/// ranks whether they succeeded, all ranks train together, and rank 0 evaluates. The other
/// ranks write nothing (see [`run_other_rank`]).
pub fn run(
    cache: &Cache,
    runs: &Path,
    recipe: &Recipe,
    plan: &Plan,
    ctx: &RunContext,
) -> Result<RunOutcome, StageError> {
    let runtime_failed = |e: RuntimeError| StageError::Failed {
        stage: StageKind::Train,
        run: recipe.name.clone(),
        failure: Box::new(e.into()),
    };
    let world = World::from_env().map_err(runtime_failed)?;
    if world.rank != 0 {
        return run_other_rank(cache, runs, recipe, plan, &world);
    }
    let folder = RunFolder::new(runs.join(&recipe.name));
    let _lock = folder.lock()?;
    let parallel = match plan.stage(StageKind::Train) {
        Some(_) => Parallel::connect(recipe).map_err(runtime_failed)?,
        None => None,
    };
    let kept_earlier_run = folder.keep_other_run(&recipe.resolved_toml())?;
    let mut status = RunStatus::new(plan.until);
    set_run_log(Some(folder.start(recipe, &ctx.command_line, &status)?));
    if let Some(kept) = &kept_earlier_run {
        tracing::warn!(
            run = %recipe.name,
            kept = %kept.display(),
            "the run folder held a run of a different recipe: kept it under a new name"
        );
    }
    tracing::info!(target: RUN_LOG_ONLY, run = %recipe.name, until = %plan.until, "run started");
    let started = Instant::now();
    let job = Job {
        cache,
        runs,
        recipe,
        plan,
        ctx,
    };
    let result = run_stages(&job, &folder, &mut status, parallel.as_ref());
    status.state = match &result {
        Ok(_) => RunState::Finished,
        Err(_) => RunState::Failed,
    };
    if let Err(e) = &result {
        status.error = Some(e.to_string());
        // The error reaches the user on stderr from `runner`; here it goes to the JSON log.
        tracing::error!(target: RUN_LOG_ONLY, run = %recipe.name, error = %e, "run failed");
    } else {
        let durations: BTreeMap<&str, f64> = status
            .stages
            .iter()
            .map(|s| (s.stage.as_str(), s.seconds))
            .collect();
        tracing::info!(
            target: RUN_LOG_ONLY,
            run = %recipe.name,
            seconds = started.elapsed().as_secs_f64(),
            stage_seconds = %serde_json::to_string(&durations).expect("JSON serializes"),
            "run finished"
        );
    }
    let written = folder.write_status(&status);
    set_run_log(None);
    let table = result?;
    written?;
    Ok(RunOutcome {
        run: recipe.name.clone(),
        run_dir: folder.dir().to_path_buf(),
        stages: status.stages,
        table,
        kept_earlier_run,
    })
}

/// What one run works from.
#[derive(Clone, Copy)]
struct Job<'a> {
    cache: &'a Cache,
    runs: &'a Path,
    recipe: &'a Recipe,
    plan: &'a Plan,
    ctx: &'a RunContext,
}

fn run_stages(
    job: &Job,
    folder: &RunFolder,
    status: &mut RunStatus,
    parallel: Option<&Parallel>,
) -> Result<Option<String>, StageError> {
    let Job {
        cache,
        runs,
        recipe,
        plan,
        ctx,
    } = *job;
    let mut dirs: BTreeMap<StageKind, PathBuf> = BTreeMap::new();
    for stage in &plan.stages {
        let started = Instant::now();
        let rebuild = ctx.rebuild_from.is_some_and(|from| stage.kind >= from);
        if let (StageKind::Train, Some(p)) = (stage.kind, parallel) {
            // The data stages are built: the other ranks may read them and train with us.
            let cached = !rebuild && cache.is_complete(stage.kind.name(), &stage.key);
            p.broadcast_flags(&[1.0, f32::from(u8::from(cached))])
                .map_err(|e| StageError::Failed {
                    stage: stage.kind,
                    run: recipe.name.clone(),
                    failure: Box::new(e.into()),
                })?;
        }
        let built = build_stage(job, stage, &dirs, parallel);
        let (dir, outcome) = match built {
            Ok(done) => done,
            Err(e) => {
                if let (true, Some(p)) = (stage.kind < StageKind::Train, parallel) {
                    // Release the ranks waiting for the data stages; they fail too. Our
                    // own error is the one to report, so theirs is not awaited.
                    let _ = p.broadcast_flags(&[0.0, 0.0]);
                }
                return Err(e);
            }
        };
        let record = StageRecord {
            stage: stage.kind.name().to_string(),
            key: stage.key.clone(),
            dir: dir.clone(),
            reused: outcome == Outcome::Hit,
            seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            target: RUN_LOG_ONLY,
            stage = %stage.kind,
            key = %stage.key,
            reused = record.reused,
            seconds = record.seconds,
            "stage done"
        );
        status.stages.push(record);
        folder.write_status(status)?;
        if stage.kind == StageKind::Score {
            // Noise detection is a result of its own: a run that fails later still has it.
            folder.copy_in(&dir, crate::score::SUMMARY_FILE, RunFolder::SCORE_SUMMARY)?;
        }
        dirs.insert(stage.kind, dir);
    }
    folder.write_stage_dirs(&status.stages)?;
    collect_results(runs, recipe, folder, &dirs).map_err(|failure| StageError::Failed {
        stage: StageKind::Eval,
        run: recipe.name.clone(),
        failure: Box::new(failure),
    })
}

/// Finds `stage` in the cache or builds it (after discarding it, for `--rebuild`).
fn build_stage(
    job: &Job,
    stage: &PlannedStage,
    dirs: &BTreeMap<StageKind, PathBuf>,
    parallel: Option<&Parallel>,
) -> Result<(PathBuf, Outcome), StageError> {
    let Job {
        cache,
        recipe,
        plan,
        ctx,
        ..
    } = *job;
    let spec = spec(stage.kind);
    let rebuild = ctx.rebuild_from.is_some_and(|from| stage.kind >= from);
    let upstream = upstream_dirs(stage.kind, |kind| dirs.get(&kind).cloned());
    if rebuild {
        cache.discard(stage.kind.name(), &stage.key)?;
    }
    let partial = match spec.resumes && !rebuild {
        true => Partial::Resume,
        false => Partial::Discard,
    };
    tracing::info!(run = %recipe.name, stage = %stage.kind, key = %stage.key, cached = stage.cached, "stage");
    cache.ensure(
        stage.kind.name(),
        &stage.key,
        &stage.inputs,
        partial,
        spec.outputs,
        |out| {
            (spec.build)(&BuildContext {
                recipe,
                upstream: &upstream,
                init: plan.init.as_ref(),
                out,
                progress: ctx.progress,
                parallel,
            })
            .map_err(|failure| StageError::Failed {
                stage: stage.kind,
                run: recipe.name.clone(),
                failure: Box::new(failure),
            })
        },
    )
}

/// The folders of the stages `kind` reads, as `dir_of` finds them.
fn upstream_dirs(
    kind: StageKind,
    dir_of: impl Fn(StageKind) -> Option<PathBuf>,
) -> BTreeMap<StageKind, PathBuf> {
    spec(kind)
        .reads
        .iter()
        .filter_map(|k| dir_of(*k).map(|d| (*k, d)))
        .collect()
}

/// A rank other than 0: waits for rank 0's word on the stages before training (built, or
/// failed), then trains with the others into rank 0's partial train folder, writing nothing
/// itself. Before-train runs (`--until score`) are rank 0's alone.
fn run_other_rank(
    cache: &Cache,
    runs: &Path,
    recipe: &Recipe,
    plan: &Plan,
    world: &World,
) -> Result<RunOutcome, StageError> {
    let outcome = RunOutcome {
        run: recipe.name.clone(),
        run_dir: runs.join(&recipe.name),
        stages: Vec::new(),
        table: None,
        kept_earlier_run: None,
    };
    let Some(train) = plan.stage(StageKind::Train) else {
        tracing::info!(
            rank = world.rank,
            "the stages before training run on rank 0 alone"
        );
        return Ok(outcome);
    };
    let failed = |failure: StageFailure| StageError::Failed {
        stage: StageKind::Train,
        run: recipe.name.clone(),
        failure: Box::new(failure),
    };
    let parallel = Parallel::connect(recipe)
        .map_err(|e| failed(e.into()))?
        .expect("a rank other than 0 is one of several");
    let flags = parallel
        .broadcast_flags(&[0.0, 0.0])
        .map_err(|e| failed(e.into()))?;
    if flags[0] == 0.0 {
        return Err(StageError::RankZeroFailed {
            run: recipe.name.clone(),
            rank: world.rank,
        });
    }
    if flags[1] == 1.0 {
        return Ok(outcome);
    }
    let upstream = upstream_dirs(StageKind::Train, |kind| {
        plan.stage(kind).map(|s| cache.dir(kind.name(), &s.key))
    });
    let out = cache.partial_dir(StageKind::Train.name(), &train.key);
    (spec(StageKind::Train).build)(&BuildContext {
        recipe,
        upstream: &upstream,
        init: plan.init.as_ref(),
        out: &out,
        progress: false,
        parallel: Some(&parallel),
    })
    .map_err(failed)?;
    Ok(outcome)
}

/// Copies the training and evaluation metrics into the run folder, evaluates the ensemble the
/// recipe names, and renders the results table: the last epoch's evaluation, and with a
/// holdout the best epoch's after it, each on the validation split and the second set.
fn collect_results(
    runs: &Path,
    recipe: &Recipe,
    folder: &RunFolder,
    dirs: &BTreeMap<StageKind, PathBuf>,
) -> Result<Option<String>, StageFailure> {
    let copy_in = |from: &Path, name: &str| {
        fs::copy(from, folder.file(name))
            .map(drop)
            .map_err(StageFailure::io(&folder.file(name)))
    };
    if let Some(train) = dirs.get(&StageKind::Train) {
        copy_in(
            &train.join(RunFolder::TRAIN_METRICS),
            RunFolder::TRAIN_METRICS,
        )?;
    }
    let Some(eval_dir) = dirs.get(&StageKind::Eval) else {
        return Ok(None);
    };
    let ingest = dirs.get(&StageKind::Ingest).expect("eval reads ingest");
    let class_names = crate::store::Store::open(ingest)?.header().class_names();
    // Which weights, the eval stage's folder of their results, their copies in the run folder.
    let mut evaluated = vec![(
        "last epoch".to_string(),
        eval_dir.clone(),
        [RunFolder::EVAL_METRICS, RunFolder::SECOND_VAL_METRICS],
    )];
    if recipe.train.holdout.is_some() {
        let dir = eval_dir.join(BEST_EVAL_DIR);
        let epoch = dir.join(BEST_EPOCH_FILE);
        let text = fs::read_to_string(&epoch).map_err(StageFailure::io(&epoch))?;
        let best: crate::train::BestEpoch =
            serde_json::from_str(&text).map_err(|cause| StageFailure::Json {
                path: epoch.clone(),
                cause,
            })?;
        copy_in(&epoch, RunFolder::BEST_EPOCH)?;
        evaluated.push((
            format!(
                "best epoch on the holdout (epoch {}, holdout top-1 {})",
                best.epoch,
                crate::table::percent(Some(best.top1))
            ),
            dir,
            [RunFolder::BEST_METRICS, RunFolder::BEST_SECOND_VAL_METRICS],
        ));
    }
    let labelled = evaluated.len() > 1;
    let mut table = String::new();
    for (i, (what, dir, [val_copy, second_copy])) in evaluated.iter().enumerate() {
        copy_in(&dir.join(eval::METRICS_FILE), val_copy)?;
        let metrics = eval::metrics(&eval::load_predictions(dir)?, &class_names)?;
        if labelled {
            table.push_str(&format!("{}{what}:\n", if i > 0 { "\n" } else { "" }));
        }
        table.push_str(&eval::render_table(&metrics, i == 0));
        if let Some(second) = &recipe.dataset.second_val {
            let dir = dir.join(SECOND_VAL_EVAL_DIR);
            copy_in(&dir.join(eval::METRICS_FILE), second_copy)?;
            let metrics = eval::metrics(&eval::load_predictions(&dir)?, &class_names)?;
            let name = match labelled {
                true => format!("{}, {what}", second.name),
                false => second.name.clone(),
            };
            table.push_str(&format!(
                "\n{name}:\n{}",
                eval::render_table(&metrics, false)
            ));
        }
    }
    let own = eval::load_predictions(eval_dir)?;
    if !recipe.eval.ensemble.is_empty() {
        let mut members = vec![own];
        for member in &recipe.eval.ensemble {
            let other = RunFolder::new(runs.join(member));
            let dir = other
                .stage_dirs()
                .ok()
                .and_then(|d| d.get(&StageKind::Eval).cloned())
                .ok_or_else(|| StageFailure::EnsembleMember {
                    member: member.clone(),
                    looked: other.file(RunFolder::STAGES),
                })?;
            members.push(eval::load_predictions(&dir)?);
        }
        let combined = eval::ensemble(&members)?;
        let metrics = eval::metrics(&combined, &class_names)?;
        eval::write_outputs(
            &folder.file(RunFolder::ENSEMBLE),
            &combined,
            &metrics,
            &class_names,
        )?;
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
