//! The stage graph (ingest → lda → score → train → eval), its content-addressed cache and run
//! folders. In: validated recipes. Out: stage folders under the cache and `runs/<name>/`.
//!
//! - [`stages`]: one description per stage kind (what it reads, which settings enter its key,
//!   which files it leaves, whether it resumes, how it runs); everything else reads it.
//! - [`plan`]: a recipe's stages with their keys and cache state (`runner plan`).
//! - [`cache`]: `<cache>/<stage>/<key>/`, built in a partial folder under a lock.
//! - [`runs`]: executes a plan and fills the run folder, whose files [`folder`] owns.
//!
//! Each stage's key hashes its own settings, the keys of the stages it reads and the stage's
//! format version, so a sweep over `train.*` reuses one ingest and one LDA.

pub mod cache;
mod error;
pub mod folder;
mod kind;
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
