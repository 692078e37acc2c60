//! The stage graph (ingest → lda → score → train → eval), its content-addressed cache and run
//! folders. In: validated recipes. Out: stage folders under the cache and `runs/<name>/`.
//!
//! - [`stages`]: one description per stage kind (what it reads, which settings enter its key,
//!   which files it leaves, whether it resumes, how it runs); everything else reads it.
//! - [`plan`]: a recipe's stages with their keys and cache state (`runner plan`).
//! - [`cache`]: `<cache>/<stage>/<key>/`, built in a partial folder under a lock.
//! - [`runs`]: executes a plan and fills the run folder, whose files [`folder`] owns.
//! - [`Workspace::run_each`]: several runs (globs, sweeps), each ending on its own, each after
//!   the runs it starts from or averages ([`order`]).
//!
//! Each stage's key hashes its own settings, the keys of the stages it reads and the stage's
//! format version, so a sweep over `train.*` reuses one ingest and one LDA.

pub mod cache;
mod error;
pub mod folder;
mod kind;
pub mod order;
pub mod plan;
mod runs;
pub mod stages;

use std::path::PathBuf;

pub use cache::{Cache, CacheError, Outcome, Partial};
pub use error::{StageError, StageFailure};
pub use folder::{RunFolder, RunState, RunStatus, StageRecord};
pub use kind::StageKind;
pub use plan::{Plan, PlannedStage};
pub use runs::{RunContext, RunLog, RunOutcome, RUN_LOG_ONLY};
pub use stages::{local_workers, train_world_size, Parallel};

use crate::recipe::Recipe;

/// How one run of several ended.
#[derive(Debug)]
pub enum RunEnd {
    Finished(Box<RunOutcome>),
    /// Already finished by an earlier call, with every stage still cached: not run again.
    Skipped {
        run: String,
    },
    Failed {
        run: String,
        error: String,
    },
}

impl RunEnd {
    pub fn run(&self) -> &str {
        match self {
            RunEnd::Finished(outcome) => &outcome.run,
            RunEnd::Skipped { run } | RunEnd::Failed { run, .. } => run,
        }
    }
}

/// Where things live: the stage cache and the run folders.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub cache: Cache,
    pub runs: PathBuf,
}

impl Workspace {
    pub fn new(cache: impl Into<PathBuf>, runs: impl Into<PathBuf>) -> Self {
        Workspace {
            cache: Cache::new(cache),
            runs: runs.into(),
        }
    }

    /// The folder of the run named `run`.
    pub fn run_folder(&self, run: &str) -> RunFolder {
        RunFolder::new(self.runs.join(run))
    }

    /// The stages of `recipe` up to and including `until`.
    pub fn plan(&self, recipe: &Recipe, until: StageKind) -> Result<Plan, StageError> {
        plan::plan(&self.cache, &self.runs, recipe, until)
    }

    /// Whether `recipe`'s run folder already holds it, finished up to `until`, with every
    /// stage still in the cache: running it again would only rewrite the folder.
    pub fn is_finished(&self, recipe: &Recipe, until: StageKind) -> bool {
        let folder = self.run_folder(&recipe.name);
        let same_recipe = std::fs::read_to_string(folder.file(RunFolder::RECIPE))
            .is_ok_and(|text| text == recipe.resolved_toml());
        let finished = matches!(folder.status(), Ok(Some(status))
            if status.state == RunState::Finished && status.until == until.name());
        same_recipe
            && finished
            && self
                .plan(recipe, until)
                .is_ok_and(|plan| plan.stages.iter().all(|s| s.cached))
    }

    /// Runs each recipe in turn up to `until`, skipping those already finished; a run that
    /// fails does not stop the others, except those that wait for it ([`order`]), which end
    /// failed without running. `ended` hears of each run as it ends, in the order they run.
    pub fn run_each(
        &self,
        recipes: &[Recipe],
        until: StageKind,
        ctx: &RunContext,
        ended: &mut dyn FnMut(&RunEnd),
    ) -> Result<Vec<RunEnd>, StageError> {
        let waits = order::waits_for(recipes)?;
        let mut failed = vec![false; recipes.len()];
        let mut ends = Vec::with_capacity(recipes.len());
        for i in order::order(&waits) {
            let recipe = &recipes[i];
            let run = || recipe.name.clone();
            let end = if let Some(&j) = waits[i].iter().find(|&&j| failed[j]) {
                RunEnd::Failed {
                    run: run(),
                    error: order::not_run_because(&recipes[j].name),
                }
            } else if self.is_finished(recipe, until) {
                RunEnd::Skipped { run: run() }
            } else {
                match self.run(recipe, until, ctx) {
                    Ok(outcome) => RunEnd::Finished(Box::new(outcome)),
                    Err(error) => RunEnd::Failed {
                        run: run(),
                        error: error.to_string(),
                    },
                }
            };
            failed[i] = matches!(end, RunEnd::Failed { .. });
            ended(&end);
            ends.push(end);
        }
        Ok(ends)
    }

    /// Checks what validation cannot (files exist, devices are usable) so that a call with
    /// several recipes fails before any of them starts work.
    pub fn preflight(&self, recipe: &Recipe, until: StageKind) -> Result<(), StageError> {
        stages::preflight(recipe, until)
    }

    /// Runs `recipe` up to `until`: builds what the cache lacks, then writes the run folder.
    pub fn run(
        &self,
        recipe: &Recipe,
        until: StageKind,
        ctx: &RunContext,
    ) -> Result<RunOutcome, StageError> {
        let plan = self.plan(recipe, until)?;
        runs::run(&self.cache, &self.runs, recipe, &plan, ctx)
    }
}
