//! The stage graph (ingest → lda → score → train → eval), its content-addressed cache and run
//! folders. In: validated recipes. Out: stage folders under the cache and `runs/<name>/`.
//!
//! Each stage's key hashes its own settings, the keys of the stages it reads and the stage's
//! format version, so a sweep over `train.*` reuses one ingest and one LDA.

pub mod cache;
mod exec;
mod runs;

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::json;

pub use cache::{Cache, CacheError, Outcome, Partial};
pub use runs::{read_stage_dirs, RunContext, RunLog, RunSummary, RUN_LOG_ONLY};

use crate::recipe::Recipe;

/// A node of the stage graph, in execution order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Ingest,
    Lda,
    Score,
    Train,
    Eval,
}

impl StageKind {
    pub const ALL: [StageKind; 5] = [
        StageKind::Ingest,
        StageKind::Lda,
        StageKind::Score,
        StageKind::Train,
        StageKind::Eval,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StageKind::Ingest => "ingest",
            StageKind::Lda => "lda",
            StageKind::Score => "score",
            StageKind::Train => "train",
            StageKind::Eval => "eval",
        }
    }

    /// Bumped when a stage's output format or algorithm changes, so old outputs are not reused.
    fn format_version(self) -> u32 {
        1
    }
}

impl fmt::Display for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors of running a recipe's stages.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("stage `{stage}` of run {run}: {source}")]
    Failed {
        stage: StageKind,
        run: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("run {run}: train.init = {init:?} names no finished run or checkpoint file (looked for {})", looked.display())]
    MissingInit {
        run: String,
        init: String,
        looked: PathBuf,
    },
    #[error("run folder {}: {source}", path.display())]
    RunFolder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("run {run}: {message}")]
    Preflight { run: String, message: String },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// One stage as it would run for a recipe.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStage {
    pub kind: StageKind,
    pub key: String,
    /// Everything the key hashes.
    pub inputs: serde_json::Value,
    pub cached: bool,
    /// A killed earlier attempt left a partial folder.
    pub partial: bool,
}

/// A recipe's stages up to `until`, with their cache state.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub run: String,
    pub stages: Vec<PlannedStage>,
    /// `train.init` resolved once, before any stage runs (a run may init from its own
    /// earlier result, whose pointers the run then rewrites).
    #[serde(skip)]
    init: Option<exec::InitRef>,
}

impl Plan {
    pub fn stage(&self, kind: StageKind) -> Option<&PlannedStage> {
        self.stages.iter().find(|s| s.kind == kind)
    }

    /// Why each stage would or would not run, one line each, for `runner plan`.
    pub fn describe(&self) -> String {
        let mut out = format!("{}\n", self.run);
        let mut upstream_runs = false;
        for s in &self.stages {
            let (status, why) = if s.cached {
                ("cached", "output with these inputs exists".to_string())
            } else if upstream_runs {
                ("run", "an upstream stage runs first".to_string())
            } else if s.partial {
                (
                    "resume",
                    "a killed earlier attempt left a partial output".to_string(),
                )
            } else {
                ("run", "no output with these inputs yet".to_string())
            };
            upstream_runs |= !s.cached;
            out.push_str(&format!(
                "  {:<7} {}  {:<7} {}\n",
                s.kind.name(),
                s.key,
                status,
                why
            ));
        }
        out
    }
}

/// The key of a stage: the first 16 hex digits of the BLAKE3 hash of its inputs.
fn key_of(inputs: &serde_json::Value) -> String {
    let bytes = serde_json::to_vec(inputs).expect("JSON values serialize");
    blake3::hash(&bytes).to_hex()[..16].to_string()
}

/// The inputs a stage's key hashes. Settings that cannot change the output (loader threads,
/// checkpoint interval, ensemble members) are left out, so changing them reuses the cache.
fn stage_inputs(
    recipe: &Recipe,
    kind: StageKind,
    keys: &[(StageKind, String)],
    init: Option<&str>,
) -> serde_json::Value {
    let upstream: serde_json::Map<String, serde_json::Value> = keys
        .iter()
        .map(|(k, key)| (k.name().to_string(), json!(key)))
        .collect();
    let settings = match kind {
        StageKind::Ingest => json!({ "dataset": recipe.dataset }),
        StageKind::Lda => json!({ "text": recipe.text, "lda": recipe.lda }),
        StageKind::Score => json!({ "clean": recipe.clean, "labels": recipe.labels }),
        StageKind::Train => {
            let mut train = serde_json::to_value(&recipe.train).expect("params serialize");
            let map = train.as_object_mut().expect("train params are a table");
            map.remove("workers");
            map.remove("checkpoint_every");
            map.insert("init".into(), json!(init));
            json!({ "model": recipe.model, "train": train })
        }
        StageKind::Eval => {
            json!({ "crops": recipe.eval.crops, "batch_size": recipe.eval.batch_size })
        }
    };
    json!({
        "stage": kind.name(),
        "format_version": kind.format_version(),
        "settings": settings,
        "upstream": upstream,
    })
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

    pub fn run_dir(&self, run: &str) -> PathBuf {
        self.runs.join(run)
    }

    /// The stages of `recipe` up to and including `until`.
    pub fn plan(&self, recipe: &Recipe, until: StageKind) -> Result<Plan, StageError> {
        let init = exec::resolve_init(self, recipe)?;
        let mut keys: Vec<(StageKind, String)> = Vec::new();
        let mut stages = Vec::new();
        for kind in StageKind::ALL.into_iter().take_while(|k| *k <= until) {
            let upstream: Vec<(StageKind, String)> = keys
                .iter()
                .filter(|(k, _)| exec::reads(kind).contains(k))
                .cloned()
                .collect();
            let inputs = stage_inputs(
                recipe,
                kind,
                &upstream,
                init.as_ref().map(|i| i.key.as_str()),
            );
            let key = key_of(&inputs);
            stages.push(PlannedStage {
                kind,
                cached: self.cache.is_complete(kind.name(), &key),
                partial: self.cache.partial_dir(kind.name(), &key).exists(),
                key: key.clone(),
                inputs,
            });
            keys.push((kind, key));
        }
        Ok(Plan {
            run: recipe.name.clone(),
            stages,
            init,
        })
    }

    /// Checks what validation cannot (files exist, devices are usable) so that a call with
    /// several recipes fails before any of them starts work.
    pub fn preflight(&self, recipe: &Recipe, until: StageKind) -> Result<(), StageError> {
        exec::preflight(recipe, until)
    }

    /// Runs `recipe` up to `until`: builds what the cache lacks, then writes the run folder.
    pub fn run(
        &self,
        recipe: &Recipe,
        until: StageKind,
        ctx: &RunContext,
    ) -> Result<RunSummary, StageError> {
        runs::run(self, recipe, until, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_sensitive() {
        let a = json!({"a": 1, "b": [1, 2]});
        assert_eq!(key_of(&a), key_of(&json!({"a": 1, "b": [1, 2]})));
        assert_ne!(key_of(&a), key_of(&json!({"a": 1, "b": [2, 1]})));
        assert_eq!(key_of(&a).len(), 16);
    }
}
